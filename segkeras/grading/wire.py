"""What crosses between the grader and a worker: JSON lines whose values are JSON scalars and
structures, arrays in ``.npz`` files (read with ``allow_pickle=False``), Keras models as ``.keras``
files and Keras layers/objects as their configuration (deserialized with ``safe_mode=True``).
Nothing is ever unpickled."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import keras
import numpy as np

from segkeras.grading.answer import _is_keras_object

_FILE = re.compile(r"^[a-z]+-\d+-\d+\.(npz|keras)$")


class WireError(ValueError):
    """A value that cannot cross (the message says which)."""


class Encoder:
    """Encode values into JSON, writing arrays and models into ``folder`` (names
    ``<prefix>-<message>-<item>``)."""

    def __init__(self, folder: Path, prefix: str, message: int) -> None:
        self.folder, self.prefix, self.message = Path(folder), prefix, message
        self.arrays: dict[str, np.ndarray] = {}
        self.count = 0

    def _name(self, suffix: str) -> str:
        self.count += 1
        return f"{self.prefix}-{self.message}-{self.count}.{suffix}"

    def _array(self, value) -> str:
        array = np.asarray(value)
        if array.dtype.kind in "OV":
            raise WireError(f"an array of {array.dtype} objects cannot cross")
        key = f"a{len(self.arrays)}"
        self.arrays[key] = array
        return key

    def encode(self, value):
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, (np.ndarray, np.generic)):
            return {"__array__": self._array(value)}
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(item) for item in value]}
        if isinstance(value, list):
            return [self.encode(item) for item in value]
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                raise WireError("a dict whose keys are not all strings cannot cross")
            return {"__dict__": {key: self.encode(item) for key, item in value.items()}}
        if isinstance(value, keras.Model):
            name = self._name("keras")
            value.save(self.folder / name)
            return {"__model__": name}
        if isinstance(value, keras.layers.Layer):
            return {"__layer__": keras.saving.serialize_keras_object(value),
                    "weights": [self._array(weight) for weight in value.get_weights()]}
        if _is_keras_object(value):
            return {"__keras__": keras.saving.serialize_keras_object(value)}
        if keras.ops.is_tensor(value) and not isinstance(value, keras.KerasTensor):
            return {"__array__": self._array(keras.ops.convert_to_numpy(value))}
        raise WireError(f"a {type(value).__name__} cannot cross")

    def dumps(self, message: dict) -> str:
        """``message`` (its values encoded) as one JSON line; arrays saved beside."""
        encoded = {key: self.encode(value) if key in ("value", "args", "kwargs") else value
                   for key, value in message.items()}
        if self.arrays:
            encoded["arrays"] = self._name("npz")
            np.savez(self.folder / encoded["arrays"], **self.arrays)
        return json.dumps(encoded, allow_nan=False) + "\n"


def _file(folder: Path, name) -> Path:
    if not isinstance(name, str) or not _FILE.match(name):
        raise WireError(f"bad file name {name!r}")
    return Path(folder) / name


def loads(line: str, folder: Path) -> dict:
    """A message from :meth:`Encoder.dumps`, its values decoded (arrays without pickle, models
    and layers with ``safe_mode=True``)."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise WireError("a message is a JSON object")
    arrays = {}
    if "arrays" in message:
        with np.load(_file(folder, message["arrays"]), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}

    def decode(value):
        if isinstance(value, list):
            return [decode(item) for item in value]
        if not isinstance(value, dict):
            return value
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__float__" in value:
            return float(value["__float__"])
        if "__tuple__" in value:
            return tuple(decode(item) for item in value["__tuple__"])
        if "__dict__" in value:
            return {key: decode(item) for key, item in value["__dict__"].items()}
        if "__model__" in value:
            return keras.saving.load_model(_file(folder, value["__model__"]), safe_mode=True)
        if "__layer__" in value:
            layer = keras.saving.deserialize_keras_object(value["__layer__"], safe_mode=True)
            if not isinstance(layer, keras.layers.Layer):
                raise WireError("not a layer")
            layer.set_weights([arrays[key] for key in value["weights"]])
            return layer
        if "__keras__" in value:
            return keras.saving.deserialize_keras_object(value["__keras__"], safe_mode=True)
        raise WireError(f"unknown value {sorted(value)}")

    return {key: decode(value) if key in ("value", "args", "kwargs") else value
            for key, value in message.items()}
