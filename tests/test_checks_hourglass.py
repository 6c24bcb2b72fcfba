"""Lab 04 checks: the solutions pass, typical wrong answers fail with a hint that names the idea,
answers that call the library fail with "write it yourself", the fallbacks are segkeras'."""

import functools
import importlib
import sys

import keras
import pytest
from keras import layers

from segkeras import train
from segkeras.checks import core
from segkeras.checks import hourglass as check
from segkeras.grading.answer import LocalAnswer

library = importlib.import_module("segkeras.models.hourglass")


def residual(x, filters, name):
    """The lab's bottleneck residual module (pre-activation), as given in the notebook."""
    shortcut = x if x.shape[-1] == filters else layers.Conv2D(filters, 1, name=f"{name}_skip")(x)
    for i, (width, kernel) in enumerate(((filters // 2, 1), (filters // 2, 3), (filters, 1)), 1):
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
        x = layers.Conv2D(width, kernel, padding="same", name=f"{name}_conv{i}")(x)
    return layers.Add(name=f"{name}_add")([shortcut, x])


def make_module(bottom_depth=1, pool=layers.MaxPooling2D, interpolation="nearest",
                full_resolution_residual=True, upsample_first=False, concatenate=False):
    """The solution, and wrong variants of it (each keyword: one typical mistake)."""

    def module(x, depth, filters, name):
        prefix = f"{name}_d{depth}"
        branch = residual(x, filters, f"{prefix}_skip") if full_resolution_residual else x
        low = pool(2, name=f"{prefix}_pool")(x)
        low = residual(low, filters, f"{prefix}_down")
        if depth > bottom_depth:
            low = module(low, depth - 1, filters, name)
        else:
            low = residual(low, filters, f"{prefix}_bottom")
        upsample = layers.UpSampling2D(2, interpolation=interpolation, name=f"{prefix}_upsample")
        if upsample_first:
            low = residual(upsample(low), filters, f"{prefix}_up")
        else:
            low = upsample(residual(low, filters, f"{prefix}_up"))
        if concatenate:
            return layers.Concatenate(name=f"{prefix}_concat")([branch, low])
        return layers.Add(name=f"{prefix}_add")([branch, low])

    return module


def iterative_module(x, depth, filters, name):
    """The same layers as the solution, written as two loops instead of the recursion."""
    branches = []
    for level in range(depth, 0, -1):
        branches.append(residual(x, filters, f"{name}_d{level}_skip"))
        x = residual(layers.MaxPooling2D(2, name=f"{name}_d{level}_pool")(x), filters,
                     f"{name}_d{level}_down")
    x = residual(x, filters, f"{name}_d1_bottom")
    for level in range(1, depth + 1):
        x = layers.UpSampling2D(2, name=f"{name}_d{level}_upsample")(
            residual(x, filters, f"{name}_d{level}_up"))
        x = layers.Add(name=f"{name}_d{level}_add")([branches.pop(), x])
    return x


def concatenate_and_project(x, depth, filters, name):
    """U-Net's choice: concatenate the branches, then a 1x1 convolution back to ``filters``."""
    joined = make_module(concatenate=True)(x, depth, filters, name)
    return layers.Conv2D(filters, 1, name=f"{name}_d{depth}_project")(joined)


def stack_losses(model):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    return ({name: loss for name in model.output_names},
            {name: 1.0 for name in model.output_names})


def final_stack(model):
    return keras.Model(model.input, model.get_layer(f"stack_{len(model.output_names)}").output)


def stub(*args):
    raise NotImplementedError()


def _fails_with(result, *words):
    assert not result and result.points == 0
    for word in words:
        assert word in result.message, result.message


@pytest.fixture(autouse=True)
def _fresh_score():
    check.start()
    yield
    core.reset()


@pytest.mark.fast
def test_the_solutions_get_every_point(capsys):
    assert check.hourglass_module(make_module())
    assert check.intermediate_supervision(stack_losses)
    assert check.final_stack(final_stack)
    assert check.total() == (6, 6)
    assert capsys.readouterr().out.count("✓") == 3


def test_the_solution_passes_with_plus():
    def with_plus(x, depth, filters, name):
        low = residual(layers.MaxPooling2D(2)(x), filters, f"{name}_{depth}_down")
        low = (with_plus(low, depth - 1, filters, name) if depth > 1
               else residual(low, filters, f"{name}_{depth}_bottom"))
        low = layers.UpSampling2D(2)(residual(low, filters, f"{name}_{depth}_up"))
        return residual(x, filters, f"{name}_{depth}_skip") + low

    assert check.hourglass_module(with_plus)


def test_recursions_pass_however_they_are_wrapped_or_where_they_stop():
    def down_to_zero(x, depth, filters, name):
        """Recurses once more and puts the bottom residual at depth 0: the same layers."""
        if depth == 0:
            return residual(x, filters, f"{name}_bottom")
        low = residual(layers.MaxPooling2D(2)(x), filters, f"{name}_{depth}_down")
        low = residual(down_to_zero(low, depth - 1, filters, name), filters, f"{name}_{depth}_up")
        return layers.Add()([residual(x, filters, f"{name}_{depth}_skip"),
                             layers.UpSampling2D(2)(low)])

    assert check.hourglass_module(down_to_zero)
    for wrapped in (functools.partial(make_module()), lambda *args: make_module()(*args)):
        assert _nesting(wrapped, 3) == 3
    assert _nesting(iterative_module, 3) == 1


def _nesting(module, depth):
    answer = LocalAnswer("hourglass_module", (module,))
    return answer.probe(check._probe_module, depth)["nesting"]


def test_a_stub_is_not_answered_yet_and_scores_zero_of_the_full_total():
    _fails_with(check.hourglass_module(stub), "not answered yet")
    _fails_with(check.intermediate_supervision(stub), "not answered yet")
    assert check.total() == (0, 6)  # final_stack never checked: 0 of its point, still counted


def _unprofiled(x, depth, filters, name):
    sys.setprofile(None)
    return iterative_module(x, depth, filters, name)


WRONG_MODULES = {
    "not recursive (two loops)": (iterative_module, ["recursive", "nests at most 1 call"]),
    "two loops behind functools.partial (no __code__)": (
        functools.partial(iterative_module), ["recursive", "nests at most 1 call"]),
    "two loops behind a keyword partial": (
        functools.partial(lambda x, depth, filters, name, unused=None:
                          iterative_module(x, depth, filters, name), unused=0),
        ["recursive", "nests at most 1 call"]),
    "the profiler switched off": (_unprofiled, ["changed the profiler"]),
    "concatenation instead of addition": (make_module(concatenate=True),
                                          ["adds the full-resolution branch", "concatenate"]),
    "concatenation, then a projection": (concatenate_and_project, ["concatenate"]),
    "upsampling before the residual": (make_module(upsample_first=True),
                                       ["residual modules per resolution", "only then upsample"]),
    "recursing one level too deep": (make_module(bottom_depth=0),
                                     ["depth=1 should pool 1 time(s)", "down to 4x4"]),
    "no residual on the full-resolution branch": (make_module(full_resolution_residual=False),
                                                  ["should hold 4 residual modules"]),
    "bilinear upsampling": (make_module(interpolation="bilinear"),
                            ["max-pool 2x2", "nearest upsampling", "largest difference"]),
    "average pooling": (make_module(pool=layers.AveragePooling2D), ["max-pool 2x2"]),
    "no upsampling (shape changes)": (
        lambda x, depth, filters, name: residual(layers.MaxPooling2D(2)(x), filters, name),
        ["input's shape", "(8, 8, 8)"]),
    "the library's module": (library.hourglass_module,
                             ["write it yourself", "segkeras.models.hourglass.hourglass_module"]),
}


@pytest.mark.parametrize("wrong", list(WRONG_MODULES))
def test_wrong_hourglass_modules_fail_with_the_idea_in_the_hint(wrong):
    module, words = WRONG_MODULES[wrong]
    _fails_with(check.hourglass_module(module), *words)


def _last_only(model):
    losses, weights = stack_losses(model)
    last = model.output_names[-1]
    return {last: losses[last]}, {last: weights[last]}


def _two_stacks(model):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    return {"stack_1": loss, "stack_2": loss}, {"stack_1": 1.0, "stack_2": 1.0}


def _lists(model):
    losses, weights = stack_losses(model)
    return list(losses.values()), list(weights.values())


def _on_probabilities(model):
    loss = keras.losses.SparseCategoricalCrossentropy(ignore_class=255)
    return ({name: loss for name in model.output_names},
            {name: 1.0 for name in model.output_names})


def _not_ignoring(model):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return ({name: loss for name in model.output_names},
            {name: 1.0 for name in model.output_names})


def _first_unweighted(model):
    losses, weights = stack_losses(model)
    weights[model.output_names[0]] = 0.0
    return losses, weights


def _intermediate_off(model):
    losses, weights = stack_losses(model)
    return losses, {name: 1e-9 for name in weights} | {f"stack_{len(weights)}": 1.0}


def _all_tiny(model):
    losses, weights = stack_losses(model)
    return losses, {name: 1e-9 for name in weights}


def _library_losses(model):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    return train.per_output(model, loss), train.per_output(model, 1.0)


def _library_default_loss(model):
    loss = train.default_loss()
    return {n: loss for n in model.output_names}, {n: 1.0 for n in model.output_names}


WRONG_LOSSES = {
    "a loss on the last stack only": (_last_only, ["one entry per model output",
                                                   "stack_1, stack_2, stack_3"]),
    "two stacks hard-coded": (_two_stacks, ["keyed by", "3-stack model"]),
    "lists instead of dicts": (_lists, ["must be a dict", "got list"]),
    "probabilities instead of logits": (_on_probabilities, ["from_logits=True"]),
    "the ignore label counted": (_not_ignoring, ["ignore_class=255"]),
    "an unsupervised stack": (_first_unweighted, ["weight 1.0", "'stack_1': 0.0"]),
    "intermediate stacks weighted 1e-9": (_intermediate_off, ["weight 1.0", "1e-09"]),
    "every stack weighted 1e-9": (_all_tiny, ["weight 1.0"]),
    "the check's own fallback": (check._library_stack_losses, [
        "write it yourself", "segkeras.checks.hourglass._library_stack_losses"]),
    "the library's per-output losses": (_library_losses, ["write it yourself",
                                                           "segkeras.train.per_output"]),
    "the library's default loss": (_library_default_loss, ["write it yourself",
                                                            "segkeras.train.default_loss"]),
}


@pytest.mark.parametrize("wrong", list(WRONG_LOSSES))
def test_wrong_stack_losses_fail_with_the_idea_in_the_hint(wrong):
    answer, words = WRONG_LOSSES[wrong]
    _fails_with(check.intermediate_supervision(answer), *words)


WRONG_FINALS = {
    "every stack": (lambda model: model, ["one output", "it has 10"]),
    "the first stack": (lambda model: keras.Model(model.input, model.get_layer("stack_1").output),
                        ["last stack's logits", "stack_10"]),
    "max(output_names)": (lambda model: keras.Model(
        model.input, model.get_layer(max(model.output_names)).output),
        ["outputs stack_9", "alphabetical order", "the last is stack_10"]),
    "output_names[-1]": (lambda model: keras.Model(
        model.input, model.get_layer(model.output_names[-1]).output), ["alphabetical order"]),
    "not a model": (lambda model: model.outputs[-1], ["Return a keras.Model", "KerasTensor"]),
    "copied weights": (lambda model: keras.models.clone_model(final_stack(model)),
                       ["weights of its own"]),
    "the library's final_stack_model": (library.final_stack_model,
                                        ["write it yourself", "final_stack_model"]),
}


@pytest.mark.parametrize("wrong", list(WRONG_FINALS))
def test_wrong_final_models_fail_with_the_idea_in_the_hint(wrong):
    answer, words = WRONG_FINALS[wrong]
    _fails_with(check.final_stack(answer), *words)


def test_the_library_works_again_after_a_refused_answer():
    _fails_with(check.final_stack(library.final_stack_model), "write it yourself")
    model = library.hourglass(3, num_stacks=2, depth=1, filters=8, input_shape=(16, 16, 3))
    assert library.final_stack_model(model).output_names == ["stack_2"]
    assert check.intermediate_supervision(stack_losses)


def test_use_returns_the_answer_once_passed_else_segkeras_version(capsys):
    assert check.use("final_stack", final_stack) is final_stack
    assert check.use("hourglass_module", stub) is library.hourglass_module
    assert "hourglass_module has not passed its check yet" in capsys.readouterr().out
    losses, weights = check.use("intermediate_supervision", _lists)(
        library.hourglass(3, num_stacks=2, depth=1, filters=8, input_shape=(16, 16, 3)))
    assert sorted(losses) == sorted(weights) == ["stack_1", "stack_2"]


def test_a_network_built_from_the_students_module_trains():
    model = library.hourglass(3, num_stacks=2, depth=2, filters=8, input_shape=(32, 32, 3),
                              module=check.use("hourglass_module", make_module()))
    assert any(layer.name == "hg2_d2_skip_conv2" for layer in model.layers)


def test_checks_compute_in_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        assert check.hourglass_module(make_module())
        assert keras.config.dtype_policy().name == "mixed_float16"
    finally:
        keras.config.set_dtype_policy("float32")
