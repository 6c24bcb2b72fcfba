"""segkeras: Keras 3 builders, data and graded labs for semantic and instance segmentation.

The lecture's architectures (FCN, transposed-convolution decoders, U-Net, stacked hourglass,
Mask R-CNN's mask head) over ImageNet-pretrained ``keras.applications`` backbones.

``import segkeras`` registers every serializable class (layers, losses, metrics, the encoder and
the models' own layers), so ``keras.saving.load_model(path)`` reloads a segkeras model without
``custom_objects``.
"""

from segkeras._tf_logs import info_lines_dropped
from segkeras.errors import DataUnavailableError, SegkerasError, WeightsUnavailableError

with info_lines_dropped():
    import keras  # noqa: F401  (TensorFlow loads here)

# Imported for their registration with keras.saving.
from segkeras import backbones, layers, losses, metrics, models  # noqa: E402, F401

__version__ = "0.1.0"
__all__ = ["SegkerasError", "WeightsUnavailableError", "DataUnavailableError", "__version__"]
