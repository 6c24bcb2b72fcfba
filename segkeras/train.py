"""The transfer-learning -> fine-tuning recipe for segmentation models.

Stage 1 trains the decoder on a frozen ImageNet encoder; stage 2 unfreezes the encoder
(:func:`segkeras.backbones.unfreeze`) and fine-tunes everything at a lower learning rate, as FCN
did with its ImageNet classifiers (Long, Shelhamer & Darrell, CVPR 2015; Yosinski et al.,
"How transferable are features in deep neural networks?", NeurIPS 2014).

Precision and devices are chosen before the model exists:

1. :func:`configure_precision` sets the global dtype policy (``mixed_float16`` on a GPU). Keras
   reads the policy when a layer is *created*, so call it before building the model.
2. :func:`make_strategy` returns a ``tf.distribute`` strategy (several GPUs of one machine, or
   several machines described by ``TF_CONFIG``); build the model inside ``strategy.scope()`` and
   pass the strategy to :func:`fit_two_stage`, which compiles inside the same scope.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zipfile
from dataclasses import dataclass, field

import keras

from segkeras import backbones
from segkeras.data.core import IGNORE_LABEL
from segkeras.errors import SegkerasError

STRATEGIES = ("mirrored", "multiworker")
SCHEDULES = ("constant", "cosine")


def gpu_available() -> bool:
    """Whether the current Keras backend sees a GPU."""
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if name == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if name == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def configure_precision(policy: str = "auto") -> str:
    """Set the global Keras dtype policy and return its name.

    ``"auto"`` picks the ``SEGKERAS_PRECISION`` environment variable when it is set (CI forces
    ``mixed_float16`` on a CPU this way, to test the path students take on a GPU), else
    ``"mixed_float16"`` when a GPU is present (float16 compute, float32 weights; Keras wraps the
    optimizer in a ``LossScaleOptimizer`` at compile time) and ``"float32"`` otherwise. The policy
    applies to layers created afterwards: call this BEFORE building the model. segkeras models
    keep their last layer in float32, so logits and losses stay full precision.
    """
    if policy == "auto":
        policy = os.environ.get("SEGKERAS_PRECISION") or (
            "mixed_float16" if gpu_available() else "float32")
    try:
        keras.config.set_dtype_policy(policy)
    except ValueError as error:
        raise SegkerasError(
            f"Unknown precision policy {policy!r}; use 'auto', 'float32', 'mixed_float16' or "
            "'mixed_bfloat16'."
        ) from error
    return keras.config.dtype_policy().name


def make_strategy(name: str | None, devices: list[str] | None = None):
    """A ``tf.distribute`` strategy for ``name``, or None for ``None``/``"none"``.

    ``"mirrored"``: synchronous data parallelism over ``devices`` (default: all local GPUs, or the
    CPU when there is none). ``"multiworker"``: the same over several machines (or processes),
    ``tf.distribute.MultiWorkerMirroredStrategy``; every worker runs the same command with its own
    ``TF_CONFIG`` (the cluster's addresses and this worker's index), and only the chief
    (:func:`is_chief`) writes outputs. Create it first thing, before any other TensorFlow work.
    Build the model inside ``strategy.scope()`` and pass the strategy to :func:`fit_two_stage`;
    the batch size is the global one, split across the replicas. TensorFlow backend only.
    """
    if name in (None, "none"):
        return None
    if name not in STRATEGIES:
        raise SegkerasError(f"Unknown distribution strategy {name!r}; use one of {STRATEGIES}.")
    if keras.backend.backend() != "tensorflow":
        raise SegkerasError(
            f"--distribute {name} uses tf.distribute and needs the TensorFlow backend; this is "
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow (JAX users: see "
            "keras.distribution.DataParallel)."
        )
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    _cluster_task()  # refuse a missing or malformed TF_CONFIG before TensorFlow waits for peers
    return _multi_worker_strategy(tf)


def _multi_worker_strategy(tf):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` also takes what Keras 3's ``fit`` gives it.

    Keras 3.15's TensorFlow trainer reduces its per-replica logs (scalars) with ``axis=0`` and its
    first batch (a nested structure) in one call, which the plain strategy refuses
    (keras-team/keras#20585). Here a scalar is averaged across replicas without an axis and a
    structure is reduced leaf by leaf: the same numbers, the strategy itself unchanged.
    """

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            def reduce_one(leaf):
                local = self.experimental_local_results(leaf)[0]
                leaf_axis = None if getattr(local, "shape", None) is not None and \
                    len(local.shape) == 0 else axis
                return super(MultiWorkerMirroredStrategy, self).reduce(reduce_op, leaf, leaf_axis)

            return tf.nest.map_structure(reduce_one, value)

    return MultiWorkerMirroredStrategy()


def _cluster_task() -> tuple[dict, str, int]:
    """``(cluster, task type, task index)`` from the ``TF_CONFIG`` environment variable."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise SegkerasError(
            "--distribute multiworker needs TF_CONFIG on every worker, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}; see README "Several machines".')
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task["index"])
        if len(cluster[kind]) <= index or index < 0:
            raise IndexError(f"task index {index} but {len(cluster[kind])} {kind} address(es)")
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise SegkerasError(
            f"TF_CONFIG is not a valid cluster description ({error}); it needs "
            '"cluster": {"worker": [...]} and "task": {"type": "worker", "index": N}.'
        ) from error
    return cluster, kind, index


def is_chief(strategy=None) -> bool:
    """Whether this process writes outputs: always without a multi-worker strategy; with one, the
    ``chief`` task, or worker 0 when the cluster has no chief."""
    if strategy is None or not os.environ.get("TF_CONFIG"):
        return True
    cluster, kind, index = _cluster_task()
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


def model_num_classes(model: keras.Model) -> int:
    """The channels of the (last) logits map: the number of classes including background."""
    return int(model.outputs[-1].shape[-1])


def default_loss() -> keras.losses.Loss:
    """Sparse categorical cross-entropy on logits that skips ignore-labelled (255) pixels."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE_LABEL)


def default_metrics(num_classes: int) -> list:
    """Pixel accuracy and IoU metrics of :func:`segkeras.metrics.segmentation_metrics`."""
    from segkeras.metrics import segmentation_metrics

    return segmentation_metrics(num_classes)


def per_output(model: keras.Model, value, last_only: bool = False):
    """Key a loss (or metric list) by output name for multi-output models (e.g. one loss per
    hourglass stack: intermediate supervision).

    A dict passes through; a list/tuple with one entry per output is zipped with the output names;
    anything else goes to every output (``last_only``: to the last output only). Single-output
    models get ``value`` unchanged.
    """
    names = model.output_names
    if len(names) == 1 or isinstance(value, dict):
        return value
    if isinstance(value, (list, tuple)) and len(value) == len(names) and not last_only:
        return dict(zip(names, value, strict=True))
    if last_only:
        return {names[-1]: value}
    return {name: value for name in names}


def steps_per_epoch(dataset) -> int | None:
    """Batches per epoch of a finite ``tf.data.Dataset`` (or anything with ``len``), else None."""
    if hasattr(dataset, "cardinality"):
        steps = int(dataset.cardinality())
        return steps if steps > 0 else None
    try:
        return len(dataset)
    except TypeError:
        return None


def _learning_rate(base: float, schedule: str, epochs: int, steps: int | None):
    if schedule not in SCHEDULES:
        raise SegkerasError(f"Unknown schedule {schedule!r}; use one of {SCHEDULES}.")
    if schedule == "constant" or not steps:
        return base
    return keras.optimizers.schedules.CosineDecay(base, decay_steps=max(1, epochs * steps))


@keras.saving.register_keras_serializable(package="segkeras")
class CosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """keras' ``CosineDecay`` (from ``initial_learning_rate`` down to ``alpha`` times it over
    ``decay_steps``, then constant) with its length in a variable, so that :func:`start_over`
    can train a compiled model again for another number of steps without tracing its train step
    again (a lab's ablation: a few short runs for the price of none)."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0):
        if decay_steps < 1:
            raise SegkerasError(f"decay_steps must be at least 1, got {decay_steps!r}.")
        self.initial_learning_rate = float(initial_learning_rate)
        self.alpha = float(alpha)
        self.decay_steps = keras.Variable(float(decay_steps), dtype="float32", trainable=False,
                                          name="decay_steps")

    def __call__(self, step):
        progress = keras.ops.minimum(keras.ops.cast(step, "float32"), self.decay_steps)
        cosine = 0.5 * (1.0 + keras.ops.cos(math.pi * progress / self.decay_steps))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate, "alpha": self.alpha,
                "decay_steps": int(keras.ops.convert_to_numpy(self.decay_steps))}


def start_over(model: keras.Model, weights: list, decay_steps: int) -> None:
    """Make a compiled ``model`` train again from scratch, reusing its compiled train step: its
    weights set to ``weights`` (e.g. ``model.get_weights()`` of a freshly built twin), its
    optimizer state zeroed (step count, moments) and its :class:`CosineDecay` stretched over
    ``decay_steps``. With TensorFlow the next ``fit`` runs at once, untraced (JAX compiles the
    schedule's length in as a constant: there the train step is compiled again)."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # mixed precision
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, CosineDecay):
        raise SegkerasError("start_over needs a model compiled with an optimizer whose learning "
                            "rate is segkeras.train.CosineDecay(...); compile it with one.")
    if decay_steps < 1:
        raise SegkerasError(f"decay_steps must be at least 1, got {decay_steps!r}.")
    model.set_weights(weights)
    for variable in optimizer.variables:  # a loss scale (mixed precision) is kept
        variable.assign(keras.ops.zeros(variable.shape, variable.dtype))
    schedule.decay_steps.assign(float(decay_steps))
    if keras.backend.backend() == "jax":
        model.make_train_function(force=True)


def compile_model(
    model: keras.Model,
    learning_rate=1e-3,
    loss=None,
    metrics=None,
    jit_compile="auto",
    optimizer: str = "adam",
    loss_weights=None,
    steps_per_execution: int = 1,
) -> keras.Model:
    """Compile ``model`` for segmentation with sensible defaults and return it.

    Args:
        learning_rate: a float or a ``keras.optimizers.schedules`` schedule.
        loss: a loss for every output, or a list/dict with one per output. Default: sparse
            cross-entropy on logits ignoring 255 (:func:`default_loss`).
        metrics: a list of metrics (attached to the last output of multi-output models) or a
            per-output list/dict. Default: :func:`default_metrics`.
        jit_compile: ``"auto"`` lets Keras use XLA where it helps and works: JAX, and TensorFlow
            on a GPU without ``tf.distribute`` (plain graphs on CPU-only TensorFlow, torch eager).
        optimizer: a Keras optimizer name (``"adam"``, ``"adamw"``, ``"sgd"``...).
        loss_weights: for multi-output models, one weight per output (list or dict by output
            name), e.g. ``{"stack_1": 1.0, "stack_2": 1.0}`` for a 2-stack hourglass.
    """
    num_classes = model_num_classes(model)
    loss = default_loss() if loss is None else loss
    metrics = default_metrics(num_classes) if metrics is None else metrics
    last_only = isinstance(metrics, (list, tuple)) and not any(
        isinstance(item, (list, tuple)) for item in metrics
    )
    model.compile(
        optimizer=keras.optimizers.get(
            {"class_name": optimizer, "config": {"learning_rate": learning_rate}}
        ),
        loss=per_output(model, loss),
        metrics=per_output(model, metrics, last_only=last_only),
        loss_weights=loss_weights,
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


def targets_for_outputs(model: keras.Model, data):
    """Give every output of a multi-output model the same mask (e.g. each hourglass stack).

    ``data``: a ``tf.data.Dataset`` of ``(image, mask)`` pairs, mapped lazily to
    ``(image, {output_name: mask})``, or a mask array, returned as ``{output_name: mask}``.
    Single-output models, ``None`` and datasets that already carry one target per output pass
    through.
    """
    names = model.output_names
    if len(names) == 1 or data is None:
        return data
    if not hasattr(data, "element_spec"):
        return {name: data for name in names}
    if isinstance(data.element_spec[1], (tuple, list, dict)):
        return data
    return data.map(lambda image, mask: (image, {name: mask for name in names}))


@dataclass
class TrainingHistory:
    """The epochs of both stages, like ``keras.callbacks.History``.

    ``history`` maps each logged quantity to one value per epoch (both stages concatenated),
    ``epoch`` lists the epoch indices, and ``stage_boundary`` is the index of the first
    fine-tuning epoch (``len(epoch)`` when there was no fine-tuning stage).
    """

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)
    stage_boundary: int = 0

    @property
    def stages(self) -> list[str]:
        """``"head"`` or ``"finetune"`` for each epoch."""
        return ["head" if e < self.stage_boundary else "finetune" for e in self.epoch]

    def extend(self, history: keras.callbacks.History) -> None:
        """Append the epochs of one ``model.fit`` call."""
        done = len(self.epoch)
        for key in dict.fromkeys([*self.history, *history.history]):
            values = self.history.setdefault(key, [math.nan] * done)
            new = history.history.get(key, [math.nan] * len(history.epoch))
            values.extend(float(v) for v in new)
        self.epoch.extend(range(done, done + len(history.epoch)))

    def to_dict(self) -> dict:
        """A JSON-ready dict (``history``, ``epoch``, ``stage_boundary``, ``stages``)."""
        return {
            "history": self.history,
            "epoch": self.epoch,
            "stage_boundary": self.stage_boundary,
            "stages": self.stages,
        }


def encoder_or_none(model: keras.Model) -> keras.Model | None:
    """The model's nested ``*_encoder`` layer, or None (e.g. a hourglass on its own stem)."""
    try:
        return backbones.find_encoder(model)
    except SegkerasError:
        return None


def distributable(dataset, strategy, batch_size: int, num_examples: int):
    """``dataset`` ready for ``strategy``: full global batches only, each split evenly over the
    replicas (a partial last batch would leave some replica, or some worker of a multi-worker
    cluster, with nothing to do), and sharded by example (in-memory data has no files to split).
    Without a strategy, ``dataset`` as it is. The images of a partial last batch are skipped;
    ``num_examples`` (the images in ``dataset``) tells Keras how many steps an epoch has."""
    if strategy is None or dataset is None:
        return dataset
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise SegkerasError(
            f"--batch-size {batch_size} does not split evenly over {replicas} replicas; use a "
            f"multiple of {replicas}.")
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    steps = tf.data.experimental.assert_cardinality(num_examples // batch_size)
    return dataset.unbatch().batch(batch_size, drop_remainder=True).apply(steps).with_options(
        options)


def single_process_copy(model: keras.Model) -> keras.Model:
    """A copy of ``model`` (architecture and weights) outside any ``tf.distribute`` strategy, e.g.
    to evaluate on one worker after multi-worker training, when the others have finished."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


CHECKPOINT = "checkpoint.npz"
"""The checkpoint file a resumable run writes in its output folder at every epoch end."""


def save_checkpoint(path, model: keras.Model, state: dict) -> None:
    """One file, written atomically: the model's weights, its optimizer's variables (moments,
    iteration count: the schedule continues where it was) and ``state`` (JSON: epochs done,
    history so far, the run's plan)."""
    import numpy as np

    from segkeras.runs import atomic_path, full_disk_reported

    arrays = {f"w{i}": value for i, value in enumerate(model.get_weights())}
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        arrays.update({f"o{i}": keras.ops.convert_to_numpy(variable)
                       for i, variable in enumerate(optimizer.variables)})
    with full_disk_reported(path), atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, state=np.array(json.dumps(state)), **arrays)


def load_checkpoint(path) -> tuple[dict, list, list]:
    """(state, model weights, optimizer values) of a :func:`save_checkpoint` file."""
    import numpy as np

    try:
        with np.load(path) as archive:
            state = json.loads(str(archive["state"]))
            weights = [archive[f"w{i}"] for i in range(sum(k[0] == "w" for k in archive.files))]
            optimizer = [archive[f"o{i}"] for i in range(sum(k[0] == "o" for k in archive.files))]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise SegkerasError(f"cannot resume from {path}: the checkpoint is unreadable ({error}); "
                            "start again without --resume") from error
    return state, weights, optimizer


def restore_checkpoint(model: keras.Model, weights: list, optimizer_values: list, path) -> None:
    """Put a checkpoint's weights into ``model`` and its optimizer state into the optimizer
    ``model`` was just compiled with (built here, before ``fit`` would)."""
    try:
        model.set_weights(weights)
    except ValueError as error:
        raise SegkerasError(f"cannot resume from {path}: it holds another model's weights "
                            f"({error}); use the same --model and options, or start again "
                            "without --resume") from error
    if not optimizer_values:
        return
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    if len(optimizer.variables) != len(optimizer_values):
        raise SegkerasError(f"cannot resume from {path}: its optimizer state does not fit this "
                            "model; use the same options, or start again without --resume")
    for variable, value in zip(optimizer.variables, optimizer_values, strict=True):
        variable.assign(value)


ITERATORS_PER_EPOCH = 2
"""Iterators Keras 3's TensorFlow trainer opens on a finite training dataset per epoch of
``fit`` (measured on Keras 3.15; ``tests/test_resume.py`` fails if that changes)."""


def skip_epochs(dataset, epochs: int) -> None:
    """Advance a ``tf.data`` dataset's per-epoch randomness (shuffle order, augmentation seeds)
    by ``epochs`` epochs of ``fit`` without reading it: each new iterator draws new seeds, so a
    resumed run sees the same data order as an uninterrupted one."""
    if hasattr(dataset, "element_spec"):
        for _ in range(epochs * ITERATORS_PER_EPOCH):
            iter(dataset)


class EpochCheckpoint(keras.callbacks.Callback):
    """Save a :func:`save_checkpoint` file at every epoch end: weights, optimizer and ``state``
    with ``epochs_done`` and the history so far (``record``'s epochs plus this fit's)."""

    def __init__(self, path, record: TrainingHistory, state: dict):
        super().__init__()
        self.path, self.record, self.state = path, record, state
        self.logs: dict[str, list[float]] = {}

    def on_train_begin(self, logs=None):
        self.logs = {}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.logs.setdefault(key, []).append(float(value))
        if not math.isfinite(self.logs.get("loss", [0.0])[-1]):
            return  # a diverged epoch: the last good checkpoint stays
        history = keras.callbacks.History()
        history.history, history.epoch = self.logs, list(range(len(next(iter(
            self.logs.values()), []))))
        so_far = TrainingHistory(
            {k: list(v) for k, v in self.record.history.items()}, list(self.record.epoch),
            self.record.stage_boundary)
        so_far.extend(history)
        save_checkpoint(self.path, self.model, {
            **self.state, "epochs_done": epoch + 1, "history": so_far.history,
            "stage_boundary": self.record.stage_boundary})


def interrupted_message(interrupted, checkpoint) -> str:
    """One line for a run stopped by Ctrl-C or SIGTERM (:class:`segkeras.runs.Interrupted`):
    which epochs the checkpoint holds and how to continue."""
    name = str(interrupted)
    if checkpoint is None or not os.path.isfile(checkpoint):
        return f"interrupted by {name} before the first epoch ended; nothing was saved"
    state, _, _ = load_checkpoint(checkpoint)
    plan = state.get("plan", {})
    total = plan.get("head_epochs", 0) + plan.get("finetune_epochs", 0) or plan.get("epochs")
    done = state["epochs_done"]
    saved = f"epochs 1-{done} of {total} are" if done > 1 else f"epoch 1 of {total} is"
    return (f"interrupted by {name}: {saved} saved in {checkpoint}; run the same command with "
            "--resume to continue")


def _resume_point(checkpoint, plan: dict) -> tuple[int, dict, list, list]:
    """(epochs done, history, weights, optimizer values) of ``checkpoint`` if its plan is
    ``plan``; SegkerasError when there is no checkpoint or it was made with other settings."""
    if checkpoint is None or not os.path.isfile(checkpoint):
        raise SegkerasError(f"nothing to resume: no checkpoint {checkpoint}; start without "
                            "--resume")
    state, weights, optimizer = load_checkpoint(checkpoint)
    if state.get("plan") != plan:
        raise SegkerasError(f"cannot resume from {checkpoint}: it was made with other settings "
                            f"({state.get('plan')} vs {plan}); use the same options, or start "
                            "again without --resume")
    return int(state["epochs_done"]), state.get("history", {}), weights, optimizer


class ResumableRun:
    """The epochs of one training run (one or several ``fit`` calls, e.g. two stages), with a
    checkpoint at every epoch end and, with ``resume``, continued from it: the finished epochs
    are skipped, their history, weights and (inside a stage) optimizer state restored, and the
    training data's per-epoch order advanced past them (:func:`skip_epochs`). ``plan`` (the
    settings that shape the run) must be the checkpoint's."""

    def __init__(self, checkpoint, plan: dict, resume: bool = False, train=None):
        self.checkpoint, self.plan = checkpoint, plan
        self.history = TrainingHistory()
        self._restored = None
        if resume:
            done, self.history.history, *self._restored = _resume_point(checkpoint, plan)
            self.history.epoch = list(range(done))
            skip_epochs(train, done)

    def fit(self, model: keras.Model, train, first: int, epochs: int, callbacks=None,
            **fit_arguments) -> None:
        """``model.fit`` (compiled for these epochs) over the run's epochs ``first`` to
        ``first + epochs``, skipping those already done."""
        start = max(first, len(self.history.epoch))
        if start >= first + epochs:
            return  # finished before the interruption
        callbacks = list(callbacks or [])
        if self.checkpoint is not None:
            callbacks.append(EpochCheckpoint(self.checkpoint, self.history, {"plan": self.plan}))
        if self._restored is not None:  # the optimizer state only inside its own stage
            weights, optimizer_values = self._restored
            restore_checkpoint(model, weights, optimizer_values if start > first else [],
                               self.checkpoint)
            self._restored = None
        history = model.fit(train, initial_epoch=start, epochs=first + epochs,
                            callbacks=callbacks, shuffle=False, **fit_arguments)
        self.history.extend(history)

    def finish(self, model: keras.Model) -> TrainingHistory:
        """The run's history; a run resumed after its last epoch gets the checkpoint's
        weights."""
        if self._restored is not None:
            model.set_weights(self._restored[0])
            self._restored = None
        return self.history


def fit_two_stage(
    model: keras.Model,
    train,
    val=None,
    head_epochs: int = 5,
    finetune_epochs: int = 5,
    learning_rate: float = 1e-3,
    finetune_learning_rate: float | None = None,
    loss=None,
    metrics=None,
    loss_weights=None,
    schedule: str = "constant",
    unfreeze_from: str | None = None,
    keep_batchnorm_frozen: bool | None = None,
    jit_compile="auto",
    strategy=None,
    callbacks: list | None = None,
    verbose="auto",
    steps_per_execution: int = 1,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainingHistory:
    """Train the head on a frozen encoder, then fine-tune the whole model.

    Args:
        model: a segkeras model (its encoder is the nested ``*_encoder`` layer; a model without
            one, like the stacked hourglass on its own stem, trains end to end).
        train, val: ``tf.data`` datasets of ``(image, mask)`` batches
            (:func:`segkeras.data.pipeline.make_dataset`); multi-output models get the mask for
            every output.
        head_epochs: stage 1 epochs, encoder frozen. 0: skip stage 1 and train end to end (what a
            randomly initialised encoder needs).
        finetune_epochs: stage 2 epochs, encoder unfrozen. 0: stage 1 only.
        learning_rate: stage 1 learning rate (and stage 2's when ``head_epochs`` is 0).
        finetune_learning_rate: stage 2 learning rate; default ``learning_rate / 10`` after a
            head stage, ``learning_rate`` when training end to end from the start.
        loss, metrics, loss_weights, jit_compile, steps_per_execution: see
            :func:`compile_model`.
        schedule: ``"constant"`` or ``"cosine"`` (decay to 0 over each stage).
        unfreeze_from: fine-tune only this encoder layer and the ones after it.
        keep_batchnorm_frozen: whether the encoder's BatchNorm layers stay frozen in stage 2.
            Default: frozen after a head stage (the encoder is pretrained); when training end to
            end from the start, as the encoder was built: trained if it starts from random
            weights (``weights=None, encoder_trainable=True``: see
            :func:`segkeras.backbones.train_from_scratch`), else frozen.
        strategy: a ``tf.distribute`` strategy whose scope the model was built in
            (:func:`make_strategy`); compilation and training then happen in that scope too.
            Prepare the datasets with :func:`distributable`.
        callbacks: Keras callbacks for both stages.
        checkpoint: a file (e.g. ``OUT/checkpoint.npz``) written atomically at every epoch end
            (:func:`save_checkpoint`: weights, optimizer state, epochs done, history).
        resume: continue from ``checkpoint``: the finished epochs are skipped, their weights,
            optimizer state (so the schedule continues) and history restored, and the training
            data's per-epoch order advanced past them (:func:`skip_epochs`), so the result is
            the uninterrupted run's, given the same model, data, seed and settings.

    Returns:
        A :class:`TrainingHistory` with both stages' epochs and the stage boundary.
    """
    if head_epochs < 0 or finetune_epochs < 0 or head_epochs + finetune_epochs == 0:
        raise SegkerasError(
            f"Need head_epochs >= 0 and finetune_epochs >= 0, not both 0; got {head_epochs} "
            f"and {finetune_epochs}."
        )
    encoder = encoder_or_none(model)
    if head_epochs and encoder is None:
        raise SegkerasError(
            f"Model {model.name!r} has no pretrained encoder to freeze; train it end to end "
            "(head_epochs=0)."
        )
    if keep_batchnorm_frozen is None:
        keep_batchnorm_frozen = bool(head_epochs) or encoder is None or not any(
            layer.trainable for layer in encoder.layers
            if isinstance(layer, keras.layers.BatchNormalization))
    train, val = targets_for_outputs(model, train), targets_for_outputs(model, val)
    steps = steps_per_epoch(train)
    if finetune_learning_rate is None:
        finetune_learning_rate = learning_rate / 10 if head_epochs else learning_rate
    plan = {"head_epochs": head_epochs, "finetune_epochs": finetune_epochs,
            "learning_rate": learning_rate, "finetune_learning_rate": finetune_learning_rate,
            "schedule": schedule, "steps": steps}
    run = ResumableRun(checkpoint, plan, resume, train)
    scope = strategy.scope if strategy is not None else contextlib.nullcontext

    def run_stage(epochs: int, rate: float, first: int) -> None:
        with scope():
            compile_model(model, _learning_rate(rate, schedule, epochs, steps), loss, metrics,
                          jit_compile, loss_weights=loss_weights,
                          steps_per_execution=steps_per_execution)
            run.fit(model, train, first, epochs, callbacks, validation_data=val,
                    verbose=verbose)

    if head_epochs:
        backbones.freeze(encoder)
        run_stage(head_epochs, learning_rate, 0)
    run.history.stage_boundary = head_epochs
    if finetune_epochs:
        if encoder is not None:
            backbones.unfreeze(encoder, from_layer=unfreeze_from,
                               keep_batchnorm_frozen=keep_batchnorm_frozen)
        run_stage(finetune_epochs, finetune_learning_rate, head_epochs)
    return run.finish(model)


def _lab_plan(model: keras.Model, data, epochs: int, steps: int | None) -> tuple[dict, dict]:
    """(key, plan) of a lab's training: the key (epochs, steps per epoch, batch shapes: quick and
    full mode differ) names the checkpoint file; the plan adds what must also match to resume
    (the model's weight shapes, the optimizer and its schedule)."""
    spec = getattr(data, "element_spec", None)
    key = {"epochs": epochs, "steps": steps, "batches": str(spec)}
    optimizer = getattr(model, "optimizer", None)
    plan = {**key, "weights": [list(w.shape) for w in model.weights],
            "optimizer": None if optimizer is None else optimizer.get_config()}
    return key, _without_names(json.loads(json.dumps(plan, sort_keys=True, default=str)))


def _without_names(config):
    """``config`` without its ``name`` entries (adam, adam_1...: a counter, not a setting)."""
    if isinstance(config, dict):
        return {k: _without_names(v) for k, v in config.items() if k != "name"}
    if isinstance(config, list):
        return [_without_names(v) for v in config]
    return config


def resumable_fit(model: keras.Model, data, checkpoints: str | os.PathLike, name: str,
                  epochs: int, **fit_arguments) -> keras.callbacks.History:
    """``model.fit(data, epochs=epochs, **fit_arguments)`` for a lab cell that survives a Colab
    disconnect: a checkpoint in the folder ``checkpoints`` at every epoch end (weights, optimizer
    state, history; :class:`EpochCheckpoint`), and re-run after an interruption, the finished
    epochs are skipped and training continues from the last one with the same data order. A run
    that finishes removes its checkpoint, so re-running the cell trains afresh: a student who
    edited an answer never gets weights trained with the old one. The file is named by ``name``
    and the run's shape
    (epochs, steps, batch shapes), so quick and full mode never mix; one made with another model
    or optimizer is refused. Returns the whole run's History (restored epochs included)."""
    import hashlib
    import re

    fit_arguments.pop("shuffle", None)  # the datasets shuffle themselves; see ResumableRun.fit
    steps = fit_arguments.get("steps_per_epoch") or steps_per_epoch(data)
    key, plan = _lab_plan(model, data, epochs, steps)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    stem = re.sub(r"[^\w.-]+", "_", name)
    path = os.path.join(os.fspath(checkpoints), f"{stem}-{digest}.npz")
    resume = os.path.isfile(path)
    if resume:
        state, _, _ = load_checkpoint(path)
        if state.get("plan") != plan:
            raise SegkerasError(f"{path} was made with another model or optimizer; delete it "
                                "(or set CHECKPOINTS to another folder) to train from scratch")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    infinite = hasattr(data, "cardinality") and int(data.cardinality()) < 0
    run = ResumableRun(path, plan, resume, None if infinite else data)
    done = len(run.history.epoch)
    if infinite and done:  # one iterator over all epochs: skip the batches already seen
        data = data.skip(done * steps)
    if done:
        print(f"resuming from {path}: {done} of {epochs} epochs were done")
    run.fit(model, data, 0, epochs, fit_arguments.pop("callbacks", None), **fit_arguments)
    history = keras.callbacks.History()
    history.history, history.epoch = run.finish(model).history, run.history.epoch
    if os.path.exists(path):  # finished: nothing to resume
        os.remove(path)
    history.set_model(model)
    return history
