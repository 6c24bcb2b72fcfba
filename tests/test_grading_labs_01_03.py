"""Labs 01-03 graded out of process (a worker per answer, hidden-seed inputs, RemoteAnswer): each
solution notebook gets full marks (its written answers are left to the instructor), and each
wrong answer of issue 21 for these labs (and the ways around the kernel's checks that only the
worker's order of events closes) loses exactly its exercise's points. The same wrong answers
fail in the kernel (tests/test_checks_fcn.py, ...).
"""

import time
from pathlib import Path

import pytest

from segkeras.checks.core import lab_module
from segkeras.grading.grade import grade_answers, grade_notebook

SOLUTIONS = Path(__file__).resolve().parents[1] / "solutions"
SEED = 21

# --- lab 01 ---------------------------------------------------------------------------------

KEPT_CODE_CONVOLUTIONIZE = '''import inspect
import types

from segkeras.models.fcn import convolutionize as _library

_CODE = getattr(_library, "__co" + "de__")  # kept before the check could swap it


def convolutionize(dense, window=(1, 1)):
    return types.FunctionType(_CODE, vars(inspect.getmodule(_library)))(dense, window)
'''
DEAD_TRANSPOSED_FUSION = '''def fuse_skip(scores, skip, level):
    num_classes = scores.shape[-1]
    fixed = layers.UpSampling2D(2, interpolation="bilinear")(scores)
    learned = layers.Conv2DTranspose(num_classes, 4, strides=2, padding="same", use_bias=False,
                                     kernel_initializer={init},
                                     name=f"upscore_to_{{level}}")(scores)
    upsampled = layers.Add()([fixed, layers.Rescaling({factor})(learned)])
    skip_scores = layers.Conv2D(num_classes, 1, kernel_initializer="zeros",
                                name=f"score_{{level}}")(skip)
    return layers.Add(name=f"fuse_{{level}}")([upsampled, skip_scores])
'''
FIXED_RESIZE_HEAD = '''def fcn_head(features, num_classes, variant, fuse=None):
    scores = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_fr")(
        features["P5"])
    skips = {"32s": (), "16s": ("P4",), "8s": ("P4", "P3")}[variant]
    for level in skips:  # its own fusion with a fixed resize, not `fuse`
        upsampled = layers.UpSampling2D(2, interpolation="bilinear")(scores)
        skip_scores = layers.Conv2D(num_classes, 1, kernel_initializer="zeros",
                                    name=f"score_{level}")(features[level])
        scores = layers.Add()([upsampled, skip_scores])
    stride = 32 // 2 ** len(skips)
    return layers.UpSampling2D(stride, interpolation="bilinear")(scores)
'''

# --- lab 02 ---------------------------------------------------------------------------------

KERAS_INTERNAL_SIZE = '''def transposed_output_size(size, kernel, stride, padding):
    utils = getattr(keras, "src").backend.common.backend_utils
    return utils.compute_conv_transpose_output_shape((1, size, size, 1), (kernel, kernel), 1,
                                                     stride, padding)[1]
'''
REFERENCE = '''import segkeras


def {name}(*args):
    return getattr(segkeras, "che" + "cks").deconv.{reference}(*args)
'''
NOT_TRANSPOSED = '''def transposed_conv_matrix(kernel, size, stride, padding):
    k = len(kernel)
    if padding == "same":
        out = -(-size // stride)
        top = max((out - 1) * stride + k - size, 0) // 2
    else:
        out, top = (size - k) // stride + 1, 0
    conv = np.zeros((out * out, size * size))
    for i, j, a, b in np.ndindex(out, out, k, k):
        y, x = i * stride - top + a, j * stride - top + b
        if 0 <= y < size and 0 <= x < size:
            conv[i * out + j, y * size + x] = kernel[a, b]
    return conv  # the convolution's matrix, not its transpose
'''
RELU_BEFORE_BATCHNORM = '''def upsampling_block(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False,
                               name=f"{name}_deconv")(x)
    if skip is not None:
        x = layers.Add(name=f"{name}_add")(
            [x, layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(skip)])
    x = layers.ReLU(name=f"{name}_relu")(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)
'''

# --- lab 03 ---------------------------------------------------------------------------------

NEAREST_THEN_1X1_TRANSPOSED = '''def decoder_block(x, skip, filters, name):
    x = layers.UpSampling2D(2, name=f"{name}_up")(x)
    x = layers.Conv2DTranspose(filters, 1, strides=1, name=f"{name}_upconv")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    for part in ("a", "b"):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_{part}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_{part}_bn")(x)
        x = layers.ReLU(name=f"{name}_{part}_relu")(x)
    return x
'''
NO_RELU_BETWEEN = '''def decoder_block(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    for part in ("a", "b"):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_{part}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_{part}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)
'''
FINETUNING_RATE = '''def prepare_finetuning(model, learning_rate):
    encoder = backbones.find_encoder(model)
    encoder.trainable = True
    for layer in encoder.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(learning_rate / {divisor}),
                  loss=SparseCEDice(model.output.shape[-1]))
    return model
'''
FREEZE_EVERYTHING = '''def freeze_encoder(model):
    model.trainable = False
    return model
'''
FREEZE_CONVOLUTIONS_ONLY = '''def freeze_encoder(model):
    for layer in backbones.find_encoder(model).layers:
        if not isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    return model
'''

SOLUTION_NOTEBOOKS = {"01_fcn": 9, "02_transposed_convolutions": 15,
                      "03_unet_transfer_learning": 7}

# (lab, answers) -> {exercise: words of the hint}; each run grades only the exercises it names
# (the others count as not answered and start no worker).
WRONG = [
    ("01_fcn", {"convolutionize": KEPT_CODE_CONVOLUTIONIZE,
                "fuse_skip": DEAD_TRANSPOSED_FUSION.format(init="BilinearUpsampling()",
                                                           factor=0.0),
                "fcn_head": FIXED_RESIZE_HEAD},
     {"convolutionize": "write it yourself", "fuse_skip": "the transposed convolution itself",
      "fcn_head": "x2 upsamplings are learned"}),
    ("02_transposed_convolutions", {
        "transposed_conv_matrix": NOT_TRANSPOSED,
        "transposed_output_size": KERAS_INTERNAL_SIZE,
        "overlap_counts": REFERENCE.format(name="overlap_counts",
                                           reference="reference_overlap_counts"),
        "bilinear_kernel": REFERENCE.format(name="bilinear_kernel",
                                            reference="reference_bilinear_kernel"),
        "upsampling_block": RELU_BEFORE_BATCHNORM,
        "max_unpool": REFERENCE.format(name="max_unpool", reference="reference_max_unpool")},
     {"transposed_conv_matrix": "the convolution's matrix C",
      "transposed_output_size": "write it yourself", "overlap_counts": "write it yourself",
      "bilinear_kernel": "write it yourself", "upsampling_block": "no activation before",
      "max_unpool": "write it yourself"}),
    ("03_unet_transfer_learning", {"decoder_block": NEAREST_THEN_1X1_TRANSPOSED,
                                   "freeze_encoder": FREEZE_EVERYTHING,
                                   "prepare_finetuning": FINETUNING_RATE.format(divisor=1000)},
     {"decoder_block": "double the resolution of x", "freeze_encoder": "decoder must stay",
      "prepare_finetuning": "(1e+03x lower)"}),
    ("03_unet_transfer_learning", {"decoder_block": NO_RELU_BETWEEN,
                                   "freeze_encoder": FREEZE_CONVOLUTIONS_ONLY,
                                   "prepare_finetuning": FINETUNING_RATE.format(divisor=2)},
     {"decoder_block": "ReLU between the two 3x3", "freeze_encoder": "still trainable",
      "prepare_finetuning": "(2x lower)"}),
]


@pytest.mark.parametrize("lab", SOLUTION_NOTEBOOKS)
def test_the_solution_gets_full_marks_out_of_process(lab, capsys):
    started = time.perf_counter()
    grades = grade_notebook(SOLUTIONS / f"{lab}.ipynb", seed=SEED)
    seconds = time.perf_counter() - started
    assert all(grade.passed for grade in grades), [str(grade) for grade in grades]
    assert sum(grade.points for grade in grades) == SOLUTION_NOTEBOOKS[lab]
    # the written answers (manually graded markdown cells) are not the grader's
    assert [grade.exercise for grade in grades] == list(lab_module(lab).LAB.exercises)
    with capsys.disabled():
        print(f"\n{lab}: the solution graded out of process in {seconds:.0f} s")


@pytest.mark.parametrize("lab, answers, hints", WRONG,
                         ids=[f"{lab[:2]}-{'+'.join(answers)}" for lab, answers, _ in WRONG])
def test_each_wrong_answer_loses_exactly_its_points_out_of_process(lab, answers, hints):
    grades = {grade.exercise: grade for grade in grade_answers(lab, answers, seed=SEED)}
    for exercise, grade in grades.items():
        assert grade.points == 0, str(grade)
        if exercise in hints:
            assert hints[exercise] in grade.message, str(grade)
        else:
            assert "not answered" in grade.message
