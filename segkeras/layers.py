"""Small serializable layers and initialisers shared by the segmentation heads.

Everything here uses ``keras.ops`` only, so it runs on the TensorFlow, JAX and PyTorch backends,
and is registered so that ``.keras`` files reload without ``custom_objects``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

# Per-channel constants of the ImageNet preprocessing conventions used by keras.applications.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")


@keras.saving.register_keras_serializable(package="segkeras")
class Preprocess(keras.layers.Layer):
    """Map raw RGB in [0, 255] to what an ImageNet backbone was trained on.

    Modes follow ``keras.applications.imagenet_utils.preprocess_input``:
    ``"caffe"`` (RGB -> BGR, subtract the ImageNet mean; VGG, ResNet),
    ``"tf"`` (scale to [-1, 1]; ResNetV2, MobileNetV2),
    ``"torch"`` (scale to [0, 1], normalise by the ImageNet mean/std; DenseNet),
    ``"none"`` (the backbone preprocesses inside itself; EfficientNet, MobileNetV3, ConvNeXt).
    """

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"Preprocess mode must be one of {PREPROCESSING_MODES}, got {mode!r}.")
        self.mode = mode

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_BGR_MEAN, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def bilinear_kernel(size: int, channels_out: int, channels_in: int) -> np.ndarray:
    """The bilinear interpolation kernel FCN initialises its upsampling layers with.

    Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015.
    Returned in Keras' ``Conv2DTranspose`` layout ``(size, size, channels_out, channels_in)``; channel
    ``c`` is upsampled from channel ``c`` only. With ``kernel_size = 2 * stride`` and ``padding="same"``
    the layer reproduces half-pixel-centred bilinear resizing away from the borders.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1.0 - np.abs(np.arange(size) - center) / factor
    kernel_2d = np.outer(taps, taps)
    kernel = np.zeros((size, size, channels_out, channels_in), dtype="float32")
    for c in range(min(channels_out, channels_in)):
        kernel[:, :, c, c] = kernel_2d
    return kernel


@keras.saving.register_keras_serializable(package="segkeras")
class BilinearUpsampling(keras.initializers.Initializer):
    """Initialiser for ``Conv2DTranspose`` kernels: bilinear upsampling (FCN, Long et al. 2015)."""

    def __call__(self, shape, dtype=None):
        size_h, size_w, channels_out, channels_in = shape
        if size_h != size_w:
            raise ValueError(f"BilinearUpsampling needs a square kernel, got {size_h}x{size_w}.")
        return ops.convert_to_tensor(bilinear_kernel(size_h, channels_out, channels_in), dtype=dtype)

    def get_config(self):
        return {}
