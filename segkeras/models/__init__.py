"""Builders for the lecture's architectures; each returns a named ``keras.Model`` with logits out.

All share ``num_classes, backbone, weights, encoder_trainable, input_shape`` and reload from
``.keras`` files without ``custom_objects``. :mod:`segkeras.models.registry` names them
(``registry.build("fcn8s", 21)``) for the command line, the benchmarks and the tests.
"""

from segkeras.models import mask_rcnn, registry
from segkeras.models.deconv import deconvnet
from segkeras.models.fcn import fcn
from segkeras.models.hourglass import final_stack_model, hourglass
from segkeras.models.mask_head import instance_segmenter, predict_masks_in_boxes
from segkeras.models.unet import unet

__all__ = [
    "deconvnet", "fcn", "final_stack_model", "hourglass", "instance_segmenter", "mask_rcnn",
    "predict_masks_in_boxes", "registry", "unet",
]
