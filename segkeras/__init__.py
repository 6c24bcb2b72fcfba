"""segkeras: Keras 3 builders, data and graded labs for semantic and instance segmentation.

The lecture's architectures (FCN, transposed-convolution decoders, U-Net, stacked hourglass,
Mask R-CNN's mask head) over ImageNet-pretrained ``keras.applications`` backbones.
"""

from segkeras.errors import DataUnavailableError, SegkerasError, WeightsUnavailableError

__version__ = "0.1.0"
__all__ = ["SegkerasError", "WeightsUnavailableError", "DataUnavailableError", "__version__"]
