"""Parameter counts and training speed of the semantic-segmentation builders.

    python experiments/bench_models.py                      # 128x128, batch 8, frozen encoder
    python experiments/bench_models.py --xla --steps 5      # with model.compile(jit_compile=True)
    python experiments/bench_models.py --only unet --backbones resnet50

Random weights (no download); the encoder is frozen (the transfer-learning phase), so img/s is
the speed of training the head. Each model takes ``--warmup`` untimed steps (graph tracing, XLA
compilation), then ``--steps`` timed ``train_on_batch`` calls.
"""

from __future__ import annotations

import argparse
import os
import time

import keras
import numpy as np

from segkeras.losses import SparseCEDice
from segkeras.models.deconv import deconvnet
from segkeras.models.fcn import fcn
from segkeras.models.unet import unet

BUILDERS = {
    "fcn32s": lambda c, b, **kw: fcn(c, b, variant="32s", **kw),
    "fcn16s": lambda c, b, **kw: fcn(c, b, variant="16s", **kw),
    "fcn8s": lambda c, b, **kw: fcn(c, b, variant="8s", **kw),
    "deconvnet": lambda c, b, **kw: deconvnet(c, b, **kw),
    "deconvnet_skips": lambda c, b, **kw: deconvnet(c, b, skips=True, **kw),
    "unet_transpose": lambda c, b, **kw: unet(c, b, upsampling="transpose", **kw),
    "unet_bilinear": lambda c, b, **kw: unet(c, b, upsampling="bilinear", **kw),
}
DEFAULT_PLAN = {
    "mobilenetv2": tuple(BUILDERS),
    "vgg16": tuple(BUILDERS),
    "resnet50": ("unet_transpose", "unet_bilinear"),
}


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def measure(builder: str, backbone: str, args) -> tuple[str, int, int, float, float]:
    """Model name, total and trainable parameters, training images per second of wall-clock time
    and per CPU-second of this process (the latter is less disturbed by other processes)."""
    model = BUILDERS[builder](
        args.num_classes, backbone, weights=None, input_shape=(args.size, args.size, 3)
    )
    model.compile(
        keras.optimizers.Adam(1e-3), SparseCEDice(args.num_classes), jit_compile=args.xla
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    masks = rng.integers(0, args.num_classes, (args.batch, args.size, args.size)).astype("int32")
    for _ in range(args.warmup):
        model.train_on_batch(images, masks)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        model.train_on_batch(images, masks)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    images_seen = args.steps * args.batch
    return model.name, model.count_params(), trainable, images_seen / wall, images_seen / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=21, help="21: PASCAL VOC, as in FCN")
    parser.add_argument("--xla", action="store_true", help="model.compile(jit_compile=True)")
    parser.add_argument("--only", nargs="*", choices=tuple(BUILDERS), help="builders to run")
    parser.add_argument("--backbones", nargs="*", help="backbones (default: the report's plan)")
    args = parser.parse_args()

    plan = {name: tuple(BUILDERS) for name in args.backbones} if args.backbones else DEFAULT_PLAN
    print(f"backend={keras.backend.backend()} size={args.size} batch={args.batch} "
          f"classes={args.num_classes} xla={args.xla} encoder=frozen "
          f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    print(f"{'model':32s} {'params':>8s} {'trainable':>9s} {'train img/s':>11s} {'img/cpu-s':>9s}")
    for backbone, builders in plan.items():
        for builder in builders:
            if args.only and builder not in args.only:
                continue
            name, total, trainable, speed, cpu_speed = measure(builder, backbone, args)
            label = name + (" (bilinear)" if builder == "unet_bilinear" else "")
            print(f"{label:32s} {_millions(total):>8s} {_millions(trainable):>9s} {speed:11.1f} "
                  f"{cpu_speed:9.1f}", flush=True)
            keras.backend.clear_session()


if __name__ == "__main__":
    main()
