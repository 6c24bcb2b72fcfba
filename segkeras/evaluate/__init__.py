"""Evaluation: semantic segmentation scores (IoU tables), instance segmentation (COCO mask AP)."""

from segkeras.evaluate.instances import detection_ap, mask_ap
from segkeras.evaluate.semantic import evaluate_semantic, format_table, save_json

__all__ = ["detection_ap", "evaluate_semantic", "format_table", "mask_ap", "save_json"]
