"""Lab 3's transfer-learning experiments over several seeds: are the orderings robust?

On a small labelled shapes set, U-Nets trained at equal budget (same epochs, data, batch,
optimizer, decoder):

* ``recipes`` (part 2), on the same encoder architecture (segkeras.pretrain's shapesnet):
  (a) from scratch end to end, (b) counting-pretrained encoder frozen + new decoder,
  (c) (b)'s first HEAD epochs, then fine-tuned end to end (BatchNorm frozen) at lr / 10;
* ``backbones`` (part 3): each counting-pretrained encoder of segkeras.pretrain.ENCODERS frozen
  + new decoder, as (b).

    PYTHONPATH=. python experiments/transfer_learning.py recipes --seeds 0 1 2
    PYTHONPATH=. python experiments/transfer_learning.py backbones --seeds 0 1

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
SIZE = 64
SHAPE = (SIZE, SIZE, 3)


def datasets(seed: int, n_labelled: int, n_val: int, batch: int):
    """The lab's split of one generated set: validation first, then the labelled images."""
    data = shapes.generate(n_val + n_labelled, SIZE, seed=seed)
    val_data, train_data = data.subset(range(n_val)), data.subset(range(n_val, len(data)))
    return (make_dataset(train_data, SIZE, batch, augment=True, shuffle=True, seed=seed),
            make_dataset(val_data, SIZE, batch))


def fit(model: keras.Model, train_ds, val_ds, epochs: int, learning_rate: float | None = None
        ) -> float:
    """Train (compiled afresh at ``learning_rate``, or on as compiled when None); mean IoU."""
    if learning_rate is not None:
        model.compile(keras.optimizers.Adam(learning_rate), SparseCEDice(4))
    model.fit(train_ds, epochs=epochs, verbose=0)
    return evaluate_semantic(model, val_ds)["mean_iou"]


def recipes(seed: int, train_ds, val_ds, head: int, finetune: int, rate: float) -> dict:
    result = {}
    keras.utils.set_random_seed(seed)
    result["a_scratch"] = fit(unet(4, pretrain.random_encoder(SHAPE), FILTERS), train_ds, val_ds,
                              head + finetune, rate)
    keras.utils.set_random_seed(seed)
    frozen = unet(4, pretrain.pretrained_encoder(SHAPE), FILTERS)
    result["b_head_only_half"] = fit(frozen, train_ds, val_ds, head, rate)
    snapshot = frozen.get_weights()
    result["b_frozen"] = fit(frozen, train_ds, val_ds, finetune)  # same optimizer, as the lab
    tuned = unet(4, pretrain.pretrained_encoder(SHAPE), FILTERS)
    tuned.set_weights(snapshot)
    backbones.unfreeze(backbones.find_encoder(tuned))
    result["c_finetuned"] = fit(tuned, train_ds, val_ds, finetune, rate / 10)
    return result


def compare_backbones(seed: int, train_ds, val_ds, head: int, finetune: int,
                      rate: float) -> dict:
    result = {}
    for architecture in pretrain.ENCODERS:
        keras.utils.set_random_seed(seed)
        model = unet(4, pretrain.pretrained_encoder(SHAPE, architecture=architecture), FILTERS)
        start = time.process_time()
        result[architecture] = fit(model, train_ds, val_ds, head + finetune, rate)
        result[f"{architecture}_cpu_s"] = time.process_time() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=("recipes", "backbones"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labelled", type=int, default=96)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--head", type=int, default=10)
    parser.add_argument("--finetune", type=int, default=10)
    parser.add_argument("--rate", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    print(f"{args}")
    experiment = recipes if args.experiment == "recipes" else compare_backbones
    for seed in args.seeds:
        train_ds, val_ds = datasets(seed, args.labelled, args.val, args.batch)
        start = time.time()
        result = experiment(seed, train_ds, val_ds, args.head, args.finetune, args.rate)
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items())
              + f", seconds {time.time() - start:.0f}", flush=True)


if __name__ == "__main__":
    main()
