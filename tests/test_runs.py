"""Run folders (issue 24): run ids pairing a model with its metrics, locks, kept runs, output
names that never hit an input, --json refusals, a full disk, and real processes killed while
saving or training."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
from PIL import Image

from segkeras import runs
from segkeras.errors import SegkerasError


def small_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    image = keras.Input((8, 8, 3))
    return keras.Model(image, keras.layers.Conv2D(2, 1, name="head")(image), name="small")


# ----------------------------------------------------------------------------- run ids


def test_save_run_pairs_model_history_and_metrics(tmp_path):
    run_id = runs.save_run(tmp_path, small_model(), {"history": {}}, {"classes": ["a", "b"]})
    assert runs.model_run_id(tmp_path / "model.keras") == run_id
    for name in ("history.json", "metrics.json"):
        assert json.loads((tmp_path / name).read_text())["run_id"] == run_id
    assert runs.training_metrics(tmp_path / "model.keras", 1)["classes"] == ["a", "b"]
    keras.saving.load_model(tmp_path / "model.keras")  # the run entry does not disturb Keras
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporaries left


def test_stale_pair_is_one_line(tmp_path):
    """A kill between saving the model and scoring it: the new model beside the old metrics."""
    runs.save_run(tmp_path, small_model(), {}, {"classes": ["bg", "cat", "dog", "bird"],
                                                "category_ids": [17, 18, 19]})
    runs.save_model(small_model(1), tmp_path / "model.keras", runs.new_run_id())
    with pytest.raises(SegkerasError, match=r"metrics.json belongs to another run than .*"
                                            r"model.keras .*interrupted between saving"):
        runs.training_metrics(tmp_path / "model.keras")


@pytest.mark.parametrize("content, expected", [
    ('{"classes": ["a", "b"], "run_', "unreadable"),
    ("[1, 2]", "holds a JSON list"),
    ('{"category_ids": [1], "classes": ["bg", "a"]}', r"has 1 category_ids but the model "
                                                       r"predicts 3"),
    ('{"category_ids": "1,2,3"}', "category_ids is 1,2,3, not a list"),
])
def test_unreadable_metrics_beside_a_model_is_one_line(tmp_path, content, expected):
    runs.save_model(small_model(), tmp_path / "model.keras")  # no run id: a legacy pair
    (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(SegkerasError, match=expected) as caught:
        runs.training_metrics(tmp_path / "model.keras", num_categories=3)
    assert "\n" not in str(caught.value)


def test_full_disk_keeps_the_old_model(tmp_path, monkeypatch):
    target = tmp_path / "model.keras"
    runs.save_model(small_model(), target)
    before = target.read_bytes()
    model = small_model(1)

    def no_space(path, *args, **kwargs):
        with open(path, "wb") as file:
            file.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save", no_space)
    with pytest.raises(SegkerasError, match=r"no space left .*model.keras; the previous "
                                            r"model.keras \(if any\) is intact"):
        runs.save_model(model, target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.keras"]


# ----------------------------------------------------------------------------- folders


def test_existing_run_is_kept_unless_overwrite(tmp_path):
    runs.check_existing_run(tmp_path, overwrite=False)  # empty: fine
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(SegkerasError, match="already holds a run .*pass --overwrite"):
        runs.check_existing_run(tmp_path, overwrite=False)
    runs.check_existing_run(tmp_path, overwrite=True)
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "checkpoint.npz").write_bytes(b"")  # an interrupted run: resume or overwrite
    with pytest.raises(SegkerasError, match=r"already holds a run \(checkpoint.npz\); pass "
                                            "--overwrite to replace it, --resume to continue it"):
        runs.check_existing_run(tmp_path, overwrite=False)


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    with runs.run_lock(tmp_path) as lock:
        assert lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(SegkerasError, match=r"in use by another segkeras run \(process "
                                                f"{os.getpid()}"):
            with runs.run_lock(tmp_path):
                pass
    assert not lock.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock.write_text(f"{dead.stdout.strip()} {os.uname().nodename}")
    with runs.run_lock(tmp_path):
        assert lock.read_text().split()[0] == str(os.getpid())


def test_lock_between_two_processes(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from segkeras import runs
        with runs.run_lock({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SegkerasError, match=f"process {holder.pid}"):
            with runs.run_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with runs.run_lock(tmp_path):  # killed: its lock is stale and taken over
        pass


# ----------------------------------------------------------------------------- outputs


def test_output_names_never_hit_inputs_or_each_other(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cat_a, cat_b = str(tmp_path / "a" / "cat.png"), str(tmp_path / "b" / "cat.png")
    overlay = str(tmp_path / "a" / "cat_instances.png")
    plan = runs.output_paths([cat_a, overlay, cat_b], ("_instances.png",))
    assert plan[cat_a]["_instances.png"] == str(tmp_path / "a" / "a_cat_instances.png")
    assert plan[overlay]["_instances.png"] == str(tmp_path / "a" / "cat_instances_instances.png")
    assert plan[cat_b]["_instances.png"] == str(tmp_path / "b" / "cat_instances.png")
    into = runs.output_paths([cat_a, cat_b], ("_mask.png", "_overlay.png"), out=str(tmp_path))
    names = [path for targets in into.values() for path in targets.values()]
    assert len(set(names)) == 4
    assert into[cat_a]["_mask.png"] == str(tmp_path / "cat_mask.png")
    assert into[cat_b]["_mask.png"] == str(tmp_path / "b_cat_mask.png")


def test_json_refuses_models_images_inputs_and_foreign_files(tmp_path):
    model = tmp_path / "model.keras"
    runs.save_model(small_model(), model)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(photo)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    for path in (model, photo, notes):
        with pytest.raises(SegkerasError, match="exists and was not written by segkeras"):
            runs.check_json_target(path)
    with pytest.raises(SegkerasError, match="is one of the input files"):
        runs.check_json_target(tmp_path / "new.json", inputs=[str(tmp_path / "new.json")])
    runs.check_json_target(tmp_path / "new.json")
    runs.write_json(tmp_path / "scores.json", {"mean_iou": 0.5}, run_id="x")
    runs.check_json_target(tmp_path / "scores.json")  # its own output: replaced
    (tmp_path / "detections.json").write_text('[{"image_id": 1, "category_id": 2, "score": 0.9}]')
    runs.check_json_target(tmp_path / "detections.json")


# ----------------------------------------------------------------------------- killed processes

ENV = {**os.environ, "PYTHONPATH": os.getcwd(), "TF_CPP_MIN_LOG_LEVEL": "3"}

SAVER = textwrap.dedent("""
    import sys
    import keras
    from segkeras import runs
    image = keras.Input((64, 64, 3))
    x = image
    for i in range(6):
        x = keras.layers.Conv2D(128, 3, padding="same")(x)
    model = keras.Model(image, x)
    print("saving", flush=True)
    while True:
        runs.save_model(model, sys.argv[1])
""")


def test_sigkill_while_saving_leaves_the_previous_model(tmp_path):
    target = tmp_path / "model.keras"
    runs.save_model(small_model(), target, "previous")
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(target)], stdout=subprocess.PIPE,
                             text=True, env=ENV)
    assert saver.stdout.readline().strip() == "saving"
    for _ in range(5):  # kill at several moments of the save loop; each leaves a whole model
        time.sleep(0.3)
        assert target.stat().st_size > 0
        keras.saving.load_model(target)
    saver.send_signal(signal.SIGKILL)
    saver.wait()
    assert runs.model_run_id(target) in ("previous", None)
    keras.saving.load_model(target)


TRAINER_EPOCHS = 10_000
"""Far more epochs than a test waits for: the trainer is still training when its signal comes,
however long a loaded machine keeps the test from reading its output."""
TRAINER = textwrap.dedent(f"""
    import sys
    import keras
    from segkeras import runs, train
    from segkeras.data import shapes
    from segkeras.data.pipeline import make_dataset

    class Announce(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            print("epoch", epoch, flush=True)

    data = shapes.generate(64, image_size=32, seed=0)
    dataset = make_dataset(data, image_size=32, batch_size=2, num_classes=4, shuffle=True)
    image = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(keras.layers.Rescaling(1 / 255)(image))
    model = keras.Model(image, keras.layers.Conv2D(4, 1)(x))
    try:
        with runs.interruptible():
            train.fit_two_stage(model, dataset, head_epochs=0, finetune_epochs={TRAINER_EPOCHS},
                                checkpoint=sys.argv[1], callbacks=[Announce()], verbose=0)
    except runs.Interrupted as interrupted:
        print(train.interrupted_message(interrupted, sys.argv[1]), file=sys.stderr)
        sys.exit(interrupted.exit_code)
""")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_epoch_keeps_the_checkpoint_and_exits(tmp_path, signum, code):
    checkpoint = tmp_path / "checkpoint.npz"
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(checkpoint)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in trainer.stdout:
            if line.strip() == "epoch 2":
                break
        time.sleep(0.2)  # inside epoch 3
        trainer.send_signal(signum)
        _, stderr = trainer.communicate(timeout=120)
    finally:
        trainer.kill()  # a trainer that ignored its signal must not outlive the test
    assert trainer.returncode == code, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr and "--resume" in last
    from segkeras.train import load_checkpoint

    state, weights, optimizer = load_checkpoint(checkpoint)
    assert state["epochs_done"] >= 2 and len(weights) == 4 and optimizer
    assert f"epochs 1-{state['epochs_done']} of {TRAINER_EPOCHS} are saved" in last


def test_sigkill_during_training_leaves_a_whole_checkpoint(tmp_path):
    """SIGKILL (no handler runs) at several moments of a training that saves every epoch: the
    checkpoint on disk is always a whole one, never a truncated file."""
    checkpoint = tmp_path / "checkpoint.npz"
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(checkpoint)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env=ENV)
    from segkeras.train import load_checkpoint

    seen = 0
    for line in trainer.stdout:
        if line.startswith("epoch") and int(line.split()[1]) >= 2:
            state, weights, _ = load_checkpoint(checkpoint)  # read while the next one is written
            assert len(weights) == 4
            seen += 1
            if seen == 3:
                break
    time.sleep(0.05)
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    state, weights, optimizer = load_checkpoint(checkpoint)
    assert state["epochs_done"] >= 3 and len(weights) == 4 and optimizer
