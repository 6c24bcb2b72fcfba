"""Multi-worker training: two worker processes on localhost train one model together."""

import json
import os
import socket
import subprocess
import sys

import pytest

from segkeras import train
from segkeras.errors import SegkerasError


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _tf_config(addresses: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": addresses},
                       "task": {"type": "worker", "index": index}})


def test_two_workers_train_one_model(tmp_path):
    pytest.importorskip("tensorflow")
    addresses = [f"localhost:{port}" for port in _free_ports(2)]
    workers = []
    for index in range(2):
        environment = dict(os.environ, TF_CONFIG=_tf_config(addresses, index),
                           KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
                           CUDA_VISIBLE_DEVICES="")
        # a VGG16 U-Net: the model whose training step traces fastest (19 encoder layers)
        command = [sys.executable, "-m", "segkeras", "train", "--distribute", "multiworker",
                   "--model", "unet", "--backbone", "vgg16", "--weights", "none",
                   "--data", "shapes", "--n", "24", "--image-size", "64", "--batch-size", "4",
                   "--epochs", "1", "--out", str(tmp_path / f"out{index}")]
        workers.append(subprocess.Popen(command, env=environment, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    outputs = []
    for worker in workers:
        try:
            output, _ = worker.communicate(timeout=420)
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            raise
        outputs.append(output)
        assert worker.returncode == 0, output[-3000:]
    # Worker 0 is the chief: it alone writes the model; worker 1 says so and writes nothing
    # (its --out was only checked to be writable, up front, like every command's).
    assert (tmp_path / "out0" / "model.keras").is_file(), outputs[0][-2000:]
    assert not (tmp_path / "out1" / "model.keras").exists()
    assert "the chief evaluates and writes" in outputs[1]
    # Both workers ran the same steps in lock step: 19 training images in full global batches of
    # 4 -> 4 steps an epoch, each worker computing 2 images of every batch.
    for output in outputs:
        assert "4/4" in output, output[-2000:]
    assert "mean IoU" in outputs[0] or "mean_iou" in outputs[0]


@pytest.mark.parametrize("config, words", [
    (None, "needs TF_CONFIG on every worker"),
    ("{not json", "TF_CONFIG is not a valid cluster description"),
    (json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}),
     "task index 3 but 1 worker"),
])
def test_bad_tf_config_is_refused(monkeypatch, config, words):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", config)
    with pytest.raises(SegkerasError, match=words):
        train.make_strategy("multiworker")


def test_chief_is_worker_zero_without_a_chief(monkeypatch):
    addresses = ["localhost:1", "localhost:2"]
    monkeypatch.setenv("TF_CONFIG", _tf_config(addresses, 0))
    assert train.is_chief(object())
    monkeypatch.setenv("TF_CONFIG", _tf_config(addresses, 1))
    assert not train.is_chief(object())
    assert train.is_chief(None)  # no multi-worker strategy: this process writes
