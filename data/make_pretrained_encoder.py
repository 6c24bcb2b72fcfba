"""Make data/pretrained/shapesnet_counting.weights.h5: the offline stand-in for ImageNet weights.

A small VGG-style encoder (segkeras.pretrain.shapesnet_encoder) learns to count the circles,
rectangles and triangles in 16,000 generated 64x64 shapes images (segkeras.pretrain.RECIPE; seed
1000, which no lab uses). Lab 3 transfers it to segmentation on a small labelled set.

    PYTHONPATH=. python data/make_pretrained_encoder.py      # about 15 min on a 2-core CPU

Writes the weights and a JSON report (recipe, held-out counting accuracy, training time).
"""

import json

from segkeras import pretrain

if __name__ == "__main__":
    encoder, report = pretrain.pretrain(**pretrain.RECIPE)
    out = pretrain.SHIPPED_CHECKPOINT
    out.parent.mkdir(parents=True, exist_ok=True)
    encoder.save_weights(out)
    report = {"recipe": pretrain.RECIPE, **report, "parameters": encoder.count_params()}
    out.with_name(pretrain.CHECKPOINT_NAME.replace(".weights.h5", ".json")).write_text(
        json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
