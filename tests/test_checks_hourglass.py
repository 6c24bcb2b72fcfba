"""Lab 04 checks: the solutions pass, typical wrong answers fail with a hint that says why."""

import keras
import pytest
from keras import layers

from segkeras.checks import core
from segkeras.checks import hourglass as check


def residual(x, filters, name):
    """The lab's bottleneck residual module (pre-activation), as given in the notebook."""
    shortcut = x if x.shape[-1] == filters else layers.Conv2D(filters, 1, name=f"{name}_skip")(x)
    for i, (width, kernel) in enumerate(((filters // 2, 1), (filters // 2, 3), (filters, 1)), 1):
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
        x = layers.Conv2D(width, kernel, padding="same", name=f"{name}_conv{i}")(x)
    return layers.Add(name=f"{name}_add")([shortcut, x])


def make_module(bottom_depth=1, pool=layers.MaxPooling2D, interpolation="nearest",
                full_resolution_residual=True):
    """The solution, and wrong variants of it."""

    def module(x, depth, filters, name):
        prefix = f"{name}_d{depth}"
        branch = residual(x, filters, f"{prefix}_skip") if full_resolution_residual else x
        low = pool(2, name=f"{prefix}_pool")(x)
        low = residual(low, filters, f"{prefix}_down")
        if depth > bottom_depth:
            low = module(low, depth - 1, filters, name)
        else:
            low = residual(low, filters, f"{prefix}_bottom")
        low = residual(low, filters, f"{prefix}_up")
        low = layers.UpSampling2D(2, interpolation=interpolation, name=f"{prefix}_up")(low)
        return layers.Add(name=f"{prefix}_add")([branch, low])

    return module


def stack_losses(model):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    return ({name: loss for name in model.output_names},
            {name: 1.0 for name in model.output_names})


def final_stack(model):
    return keras.Model(model.input, model.get_layer(model.output_names[-1]).output)


def stub(*args):
    raise NotImplementedError()


def _fails_with(result, *words):
    assert not result and result.points == 0
    for word in words:
        assert word in result.message, result.message


@pytest.fixture(autouse=True)
def _fresh_score():
    core.reset()
    yield
    core.reset()


@pytest.mark.fast
def test_the_solutions_get_every_point(capsys):
    assert check.hourglass_module(make_module(), residual)
    assert check.intermediate_supervision(stack_losses)
    assert check.final_stack(final_stack)
    assert core.total() == (6, 6)
    assert capsys.readouterr().out.count("✓") == 3


def test_a_stub_is_not_answered_yet():
    _fails_with(check.hourglass_module(stub, residual), "not answered yet")
    _fails_with(check.intermediate_supervision(stub), "not answered yet")
    _fails_with(check.final_stack(stub), "not answered yet")
    assert core.total() == (0, 6)


@pytest.mark.fast
def test_recursing_one_level_too_deep_fails():
    _fails_with(check.hourglass_module(make_module(bottom_depth=0), residual),
                "depth=1 should pool 1 time(s)", "down to 4x4")


def test_a_module_without_the_full_resolution_residual_fails():
    _fails_with(check.hourglass_module(make_module(full_resolution_residual=False), residual),
                "should hold 4 residual modules")


@pytest.mark.parametrize("variant", [{"interpolation": "bilinear"},
                                     {"pool": layers.AveragePooling2D}])
def test_bilinear_upsampling_or_average_pooling_fails(variant):
    _fails_with(check.hourglass_module(make_module(**variant), residual),
                "max-pool 2x2", "nearest upsampling", "largest difference")


def test_a_module_that_changes_the_shape_fails():
    def no_upsampling(x, depth, filters, name):
        return residual(layers.MaxPooling2D(2, name=f"{name}_pool")(x), filters, name)

    _fails_with(check.hourglass_module(no_upsampling, residual), "input's shape", "(8, 8, 8)")


@pytest.mark.fast
def test_a_loss_for_the_last_stack_only_fails():
    def last_only(model):
        losses, weights = stack_losses(model)
        last = model.output_names[-1]
        return {last: losses[last]}, {last: weights[last]}

    _fails_with(check.intermediate_supervision(last_only), "one entry per model output",
                "stack_1, stack_2, stack_3")


def test_hard_coded_two_stacks_or_lists_fail():
    def two_stacks(model):
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
        return {"stack_1": loss, "stack_2": loss}, {"stack_1": 1.0, "stack_2": 1.0}

    def lists(model):
        losses, weights = stack_losses(model)
        return list(losses.values()), list(weights.values())

    _fails_with(check.intermediate_supervision(two_stacks), "keyed by", "3-stack model")
    _fails_with(check.intermediate_supervision(lists), "must be a dict", "got list")


def test_probabilities_instead_of_logits_or_no_ignore_fail():
    def on_probabilities(model):
        loss = keras.losses.SparseCategoricalCrossentropy(ignore_class=255)
        return ({name: loss for name in model.output_names},
                {name: 1.0 for name in model.output_names})

    def not_ignoring(model):
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return ({name: loss for name in model.output_names},
                {name: 1.0 for name in model.output_names})

    _fails_with(check.intermediate_supervision(on_probabilities), "from_logits=True")
    _fails_with(check.intermediate_supervision(not_ignoring), "ignore_class=255")


def test_an_unsupervised_stack_fails():
    def first_unweighted(model):
        losses, weights = stack_losses(model)
        weights[model.output_names[0]] = 0.0
        return losses, weights

    _fails_with(check.intermediate_supervision(first_unweighted), "positive loss weight")


@pytest.mark.fast
def test_a_final_model_with_every_stack_or_the_first_fails():
    def first_stack(model):
        return keras.Model(model.input, model.get_layer("stack_1").output)

    _fails_with(check.final_stack(lambda model: model), "one output", "it has 3")
    _fails_with(check.final_stack(first_stack), "last stack's logits", "stack_3")


def test_a_final_model_with_copied_weights_fails():
    def copied(model):
        return keras.models.clone_model(final_stack(model))

    _fails_with(check.final_stack(copied), "weights of its own")


def test_checks_compute_in_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        assert check.hourglass_module(make_module(), residual)
        assert keras.config.dtype_policy().name == "mixed_float16"
    finally:
        keras.config.set_dtype_policy("float32")
