"""Datasets (built-in synthetic shapes, Oxford-IIIT Pet, COCO format) and the tf.data pipeline."""
