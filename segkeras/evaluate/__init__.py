"""Evaluation: semantic segmentation scores (IoU tables) and instance segmentation (COCO mask AP)."""
