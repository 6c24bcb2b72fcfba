"""Resumable training (issue 24): a checkpoint at every epoch end, and a resumed run that reaches
the uninterrupted run's weights (same seed, same data order: shuffled and augmented)."""

import keras
import numpy as np
import pytest

from segkeras import train
from segkeras.data import shapes
from segkeras.data.pipeline import make_dataset
from segkeras.errors import SegkerasError

SIZE = 32


def tiny_model() -> keras.Model:
    keras.utils.set_random_seed(1)
    image = keras.Input((SIZE, SIZE, 3))
    inner = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inner)
    x = keras.layers.Conv2D(4, 3, padding="same", name="enc_conv")(x)
    x = keras.layers.BatchNormalization(name="enc_bn")(x)
    features = keras.Model(inner, {"P1": x}, name="tiny_encoder")(image)["P1"]
    logits = keras.layers.Conv2D(4, 1, dtype="float32", name="head")(features)
    return keras.Model(image, logits, name="tiny")


def training_data():
    """Shuffled and augmented: the order and the augmentation differ every epoch."""
    data = shapes.generate(12, image_size=SIZE, seed=0)
    return make_dataset(data, image_size=SIZE, batch_size=4, num_classes=4, augment=True,
                        shuffle=True, seed=3)


class StopAt(keras.callbacks.Callback):
    """Raise (as a kill would end the process) at a batch of an epoch."""

    def __init__(self, epoch: int, batch: int = 1):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise KeyboardInterrupt


FIT = {"head_epochs": 1, "finetune_epochs": 2, "learning_rate": 1e-2, "schedule": "cosine",
       "verbose": 0, "metrics": [keras.metrics.SparseCategoricalAccuracy(name="acc")]}


@pytest.mark.parametrize("stop_epoch", [1, 2])  # in the fine-tuning stage; in its 2nd epoch
def test_resumed_run_reaches_the_uninterrupted_weights(tmp_path, stop_epoch):
    whole = tiny_model()
    expected = train.fit_two_stage(whole, training_data(), **FIT)

    checkpoint = tmp_path / train.CHECKPOINT
    interrupted = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        train.fit_two_stage(interrupted, training_data(), checkpoint=checkpoint,
                            callbacks=[StopAt(stop_epoch)], **FIT)
    state, _, _ = train.load_checkpoint(checkpoint)
    assert state["epochs_done"] == stop_epoch

    resumed = tiny_model()
    history = train.fit_two_stage(resumed, training_data(), checkpoint=checkpoint, resume=True,
                                  **FIT)
    for got, want in zip(resumed.get_weights(), whole.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert history.epoch == expected.epoch == [0, 1, 2] and history.stage_boundary == 1
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-5)


def test_resume_refuses_other_settings_and_a_missing_checkpoint(tmp_path):
    checkpoint = tmp_path / train.CHECKPOINT
    with pytest.raises(SegkerasError, match="nothing to resume"):
        train.fit_two_stage(tiny_model(), training_data(), checkpoint=checkpoint, resume=True,
                            **FIT)
    train.fit_two_stage(tiny_model(), training_data(), checkpoint=checkpoint,
                        **{**FIT, "finetune_epochs": 0})
    with pytest.raises(SegkerasError, match="made with other settings"):
        train.fit_two_stage(tiny_model(), training_data(), checkpoint=checkpoint, resume=True,
                            **FIT)
    checkpoint.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SegkerasError, match="checkpoint is unreadable"):
        train.fit_two_stage(tiny_model(), training_data(), checkpoint=checkpoint, resume=True,
                            **FIT)
