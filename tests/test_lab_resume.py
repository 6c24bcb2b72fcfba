"""The labs' training cells resume after a disconnect (issue 24): ``train.resumable_fit``."""

import keras
import numpy as np
import pytest

from segkeras import train
from segkeras.data import shapes
from segkeras.data.pipeline import make_dataset
from segkeras.errors import SegkerasError

SIZE, EPOCHS = 32, 3


def lab_model(width: int = 4) -> keras.Model:
    """Built and compiled as a lab cell does: seed, model, Adam with a cosine schedule."""
    keras.utils.set_random_seed(0)
    image = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(image)
    x = keras.layers.Conv2D(width, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(image, keras.layers.Conv2D(4, 1, dtype="float32")(x))
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=EPOCHS * 3)
    model.compile(keras.optimizers.Adam(schedule), train.default_loss(), metrics=["accuracy"])
    return model


def lab_data():
    """Shuffled and augmented: the order and the augmentation differ every epoch."""
    data = shapes.generate(12, image_size=SIZE, seed=0)
    return make_dataset(data, image_size=SIZE, batch_size=4, num_classes=4, augment=True,
                        shuffle=True, seed=3)


class Disconnect(Exception):
    pass


class DisconnectIn(keras.callbacks.Callback):
    """Raise in the second batch of ``epoch`` (0-based), as a lost runtime ends the cell."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch, self.current = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:
            raise Disconnect


def run(folder, data=None, **arguments):
    model = lab_model()
    history = train.resumable_fit(model, lab_data() if data is None else data(), folder, "lab",
                                  epochs=EPOCHS, verbose=0, shuffle=False, **arguments)
    return model, history


def assert_same_weights(one: keras.Model, other: keras.Model) -> None:
    for a, b in zip(one.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_cell_rerun_after_a_disconnect_reaches_the_uninterrupted_weights(tmp_path, capsys):
    whole, expected = run(tmp_path / "whole")
    assert capsys.readouterr().out == ""  # a fresh run prints what model.fit prints
    with pytest.raises(Disconnect):
        run(tmp_path / "cut", callbacks=[DisconnectIn(epoch=1)])
    [checkpoint] = (tmp_path / "cut").iterdir()
    assert train.load_checkpoint(checkpoint)[0]["epochs_done"] == 1

    resumed, history = run(tmp_path / "cut")
    assert "resuming from" in capsys.readouterr().out
    assert_same_weights(whole, resumed)
    assert history.epoch == expected.epoch == [0, 1, 2]
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-5)


def test_a_finished_run_leaves_no_checkpoint_and_a_rerun_trains_afresh(tmp_path, capsys):
    """Re-running a finished cell (e.g. after fixing an answer) never reloads weights trained
    with the old code: it trains again, from the same start."""
    first, expected = run(tmp_path)
    assert not list(tmp_path.iterdir())
    again, history = run(tmp_path)
    assert "resuming" not in capsys.readouterr().out
    assert_same_weights(first, again)
    assert history.history == expected.history


def test_an_endless_dataset_resumes_at_the_next_batch(tmp_path):
    def endless():
        return lab_data().repeat()

    whole, _ = run(tmp_path / "whole", endless, steps_per_epoch=3)
    with pytest.raises(Disconnect):
        run(tmp_path / "cut", endless, steps_per_epoch=3, callbacks=[DisconnectIn(epoch=2)])
    resumed, _ = run(tmp_path / "cut", endless, steps_per_epoch=3)
    assert_same_weights(whole, resumed)


def test_quick_and_full_mode_keep_their_own_checkpoints(tmp_path):
    with pytest.raises(Disconnect):
        run(tmp_path, callbacks=[DisconnectIn(epoch=1)])
    with pytest.raises(Disconnect):
        train.resumable_fit(lab_model(), lab_data().take(2), tmp_path, "lab", epochs=EPOCHS,
                            verbose=0, callbacks=[DisconnectIn(epoch=1)])
    assert len(list(tmp_path.iterdir())) == 2


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tmp_path):
    with pytest.raises(Disconnect):
        run(tmp_path, callbacks=[DisconnectIn(epoch=1)])
    with pytest.raises(SegkerasError, match=r"another model or optimizer; delete it") as error:
        train.resumable_fit(lab_model(width=8), lab_data(), tmp_path, "lab", epochs=EPOCHS)
    assert "\n" not in str(error.value)


def test_a_wrapped_optimizer_of_another_name_is_the_same_setting(tmp_path):
    """Mixed precision wraps the optimizer (LossScaleOptimizer); its inner name counts up."""
    def wrapped():
        model = lab_model()
        model.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-2)),
                      train.default_loss())
        return model

    train.resumable_fit(wrapped(), lab_data(), tmp_path, "lab", epochs=1, verbose=0)
    keras.optimizers.Adam()  # the next one is adam_<n + 1>
    train.resumable_fit(wrapped(), lab_data(), tmp_path, "lab", epochs=1, verbose=0)
