"""Section 1: training and inference img/s, parameters and peak memory per architecture.

Each configuration trains and predicts in its own process (``worker``) with random weights and
the encoder frozen (the transfer-learning stage), after two untimed steps.
"""

from __future__ import annotations

import time

from common import NUM_CLASSES, peak_rss_mib, run_worker, smoke, table

TITLE = "1. Throughput and memory per architecture"
CODE = ("segkeras/models/fcn.py", "segkeras/models/deconv.py", "segkeras/models/unet.py",
        "segkeras/models/hourglass.py", "segkeras/models/mask_head.py",
        "segkeras/models/common.py", "segkeras/backbones.py", "segkeras/layers.py")
MASK_HEAD = "mask_head"  # the instance head: not a semantic builder, so not in the registry
ARCH_OPTIONS = {"hourglass": {"num_stacks": 2}, "deconvnet": {"skips": True}}


def architectures() -> list[str]:
    """The registry's semantic builders, then the mask head (Mask R-CNN has section 8)."""
    from segkeras.models import registry

    return [*registry.names("semantic"), MASK_HEAD]


def build(arch: str, backbone: str, size: int, trainable: bool = False):
    from segkeras.models import registry
    from segkeras.models.mask_head import instance_segmenter

    options = dict(weights=None, encoder_trainable=trainable, input_shape=(size, size, 3))
    if arch == MASK_HEAD:
        return instance_segmenter(NUM_CLASSES, backbone, **options)
    return registry.build(arch, NUM_CLASSES, backbone=backbone, **options,
                          **ARCH_OPTIONS.get(arch, {}))


def _batch_for(model, arch: str, batch: int, size: int):
    """Random inputs and targets with the structure ``model`` trains on, and its loss."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    if arch == MASK_HEAD:
        from segkeras.models.mask_head import MaskedBinaryCrossentropy

        count = model.input["boxes"].shape[1]
        corners = rng.uniform(0, size * 0.5, (batch, count, 2))
        boxes = np.concatenate([corners, corners + size * 0.4], axis=-1).astype("float32")
        class_ids = rng.integers(1, NUM_CLASSES, (batch, count)).astype("int32")
        targets = rng.integers(0, 2, (batch, count, 28, 28)).astype("float32")
        inputs = {"image": images, "boxes": boxes, "class_ids": class_ids}
        return inputs, targets, MaskedBinaryCrossentropy()
    masks = rng.integers(0, NUM_CLASSES, (batch, size, size)).astype("int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    if len(model.outputs) > 1:
        return images, [masks] * len(model.outputs), [loss] * len(model.outputs)
    return images, masks, loss


def _rate(step, batch: int, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def worker(arch: str, backbone: str, size: int, batch: int, steps: int) -> dict:
    """Train and inference img/s, parameters and peak RSS of one config (encoder frozen)."""
    import keras

    model = build(arch, backbone, size)
    inputs, targets, loss = _batch_for(model, arch, batch, size)
    model.compile(keras.optimizers.Adam(1e-3), loss)
    train = _rate(lambda: model.train_on_batch(inputs, targets), batch, steps)
    infer = _rate(lambda: model.predict_on_batch(inputs), batch, steps)
    return {"params": model.count_params(), "train": train, "infer": infer,
            "rss": peak_rss_mib()}


def measure(full: bool) -> list[dict]:
    backbones = ("mobilenetv2", "resnet50")
    plan = [(a, b, s, n) for a in architectures() for b in backbones
            for s in (128, 256) for n in (8, 16)]
    if not full:
        plan = [(a, b, 128, 8) for a in architectures() for b in backbones]
    if smoke():
        plan = [("unet", "mobilenetv2", 128, 8), (MASK_HEAD, "mobilenetv2", 64, 2)]
    return [{"arch": arch, "backbone": backbone, "size": size, "batch": batch,
             **run_worker("s1_throughput", arch=arch, backbone=backbone, size=size, batch=batch,
                          steps=1 if smoke() else 10 if full else 5)}
            for arch, backbone, size, batch in plan]


def render(rows: list[dict]) -> str:
    return ("Encoder frozen (the transfer-learning stage); deconvnet with skips; hourglass: 2 "
            "stacks on the backbone's P2; mask head: 8 boxes per image. Training FLOPs and the "
            "GFLOP/s these rates achieve: section 6.\n\n"
            + table(["model", "backbone", "size", "batch", "params", "train img/s",
                     "inference img/s", "peak RSS MiB"],
                    [[r["arch"], r["backbone"], f"{r['size']}²", r["batch"],
                      f"{r['params'] / 1e6:.1f}M", f"{r['train']:.1f}", f"{r['infer']:.1f}",
                      f"{r['rss']:.0f}"] for r in rows]))


def headline(rows: list[dict]) -> tuple[str, str]:
    """The U-Net (MobileNetV2, 128², batch 8) row, the one the other sections refer to."""
    unet = unet_row(rows)
    fastest = max(rows, key=lambda r: r["train"])
    return (f"U-Net (MobileNetV2, 128², batch 8) trains at {unet['train']:.1f} img/s, "
            f"{unet['rss']:.0f} MiB peak",
            f"the other {len(rows) - 1} architecture x backbone rows (fastest: {fastest['arch']} "
            f"{fastest['backbone']}, {fastest['train']:.1f} img/s)")


def unet_row(rows: list[dict]) -> dict:
    return next(r for r in rows if (r["arch"], r["backbone"], r["size"], r["batch"])
                == ("unet", "mobilenetv2", 128, 8))
