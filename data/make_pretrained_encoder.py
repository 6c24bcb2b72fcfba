"""Make segkeras/resources/pretrained/<architecture>_counting.weights.h5: offline stand-ins for
ImageNet weights, shipped in the package.

A small encoder (segkeras.pretrain.ENCODERS: the VGG-style shapesnet, its half-width variant, its
residual variant) learns to count the circles, rectangles and triangles in 16,000 generated 64x64
shapes images (segkeras.pretrain.RECIPE; seed 1000, which no lab uses). Lab 3 transfers them to
segmentation on a small labelled set and compares them.

    PYTHONPATH=. python data/make_pretrained_encoder.py [shapesnet ...]  # 5-20 min each, 2 CPUs

Without names, makes all three. Writes the weights and a JSON report each (recipe, held-out
counting accuracy, training time, parameters).
"""

import argparse
import json

from segkeras import pretrain

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("architectures", nargs="*", choices=sorted(pretrain.ENCODERS))
    for architecture in parser.parse_args().architectures or list(pretrain.ENCODERS):
        encoder, report = pretrain.pretrain(architecture, **pretrain.RECIPE)
        report = pretrain.save_checkpoint(encoder, report, pretrain.RECIPE,
                                           pretrain.shipped_checkpoint(architecture))
        print(architecture, json.dumps(report, indent=2), flush=True)
