"""Lab 3's transfer-learning comparison over several seeds: is the ordering robust?

On a small labelled shapes set, U-Nets on the same encoder architecture (segkeras.pretrain's
shapesnet) trained at equal budget (same epochs, data, batch, optimizer):
(a) from scratch end to end, (b) counting-pretrained encoder frozen + new decoder,
(c) (b)'s first HEAD epochs, then fine-tuned end to end (BatchNorm frozen) at lr / 10.

    PYTHONPATH=. python bench/transfer_learning.py --seeds 0 1 2

Prints validation mean IoU per run and seed (each seed: another labelled set and initialisation).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from segkeras import backbones, pretrain  # noqa: E402
from segkeras.data import shapes  # noqa: E402
from segkeras.data.pipeline import make_dataset  # noqa: E402
from segkeras.evaluate.semantic import evaluate_semantic  # noqa: E402
from segkeras.losses import SparseCEDice  # noqa: E402
from segkeras.models.unet import unet  # noqa: E402

FILTERS = (64, 48, 32, 16, 16)


def run(seed: int, n_labelled: int, n_val: int, head: int, finetune: int, rate: float,
        batch: int, size: int = 64) -> dict:
    data = shapes.generate(n_val + n_labelled, size, seed=seed)  # split as the lab splits
    val_data, train_data = data.subset(range(n_val)), data.subset(range(n_val, len(data)))
    train_ds = make_dataset(train_data, size, batch, augment=True, shuffle=True, seed=seed)
    val_ds = make_dataset(val_data, size, batch)
    shape = (size, size, 3)

    def fit(model, epochs, learning_rate):
        model.compile(keras.optimizers.Adam(learning_rate), SparseCEDice(4))
        model.fit(train_ds, epochs=epochs, verbose=0)
        return evaluate_semantic(model, val_ds)["mean_iou"]

    result, start = {}, time.time()
    keras.utils.set_random_seed(seed)
    result["a_scratch"] = fit(unet(4, pretrain.random_encoder(shape), FILTERS), head + finetune,
                              rate)
    keras.utils.set_random_seed(seed)
    frozen = unet(4, pretrain.pretrained_encoder(shape), FILTERS)
    result["b_head_only_half"] = fit(frozen, head, rate)
    snapshot = frozen.get_weights()
    result["b_frozen"] = fit(frozen, finetune, rate)
    tuned = unet(4, pretrain.pretrained_encoder(shape), FILTERS)
    tuned.set_weights(snapshot)
    backbones.unfreeze(backbones.find_encoder(tuned))
    result["c_finetuned"] = fit(tuned, finetune, rate / 10)
    result["seconds"] = time.time() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labelled", type=int, default=96)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--head", type=int, default=10)
    parser.add_argument("--finetune", type=int, default=10)
    parser.add_argument("--rate", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    print(f"{args}")
    for seed in args.seeds:
        result = run(seed, args.labelled, args.val, args.head, args.finetune, args.rate,
                     args.batch)
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
