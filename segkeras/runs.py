"""Files that are never half-written: every write goes to a temporary file in the target's own
folder, is flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX and
Windows), so a kill at any moment leaves either the old file or the new one, never a truncated one.

Shared by the CLI, training, the grader and the labs (DESIGN.md, "Runs and files").
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

from segkeras.errors import SegkerasError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write to (by any library: ``model.save``,
    ``figure.savefig``...); on success it replaces ``target`` in one step, on error it is removed
    and ``target`` is untouched. The temporary name keeps ``target``'s suffix, which some writers
    check (``.keras``, ``.png``)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}",
                                    dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as written:  # on disk before the rename makes it visible
            os.fsync(written.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically; returns ``target`` as a Path."""
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``target`` atomically; returns ``target`` as a Path."""
    return atomic_write_bytes(target, text.encode(encoding))


# ----------------------------------------------------------------------------- run folders

RUN_FILE = "segkeras_run.json"
"""The entry a run's id is stored under inside a saved ``.keras`` archive (Keras ignores it)."""
MODEL, METRICS, HISTORY = "model.keras", "metrics.json", "history.json"
RUN_FILES = (MODEL, METRICS, HISTORY, "history.png", "checkpoint.npz")
LOCK = ".segkeras.lock"


def new_run_id() -> str:
    """A fresh id for one training run: UTC time and 8 random hex digits."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def _no_space(error: OSError) -> bool:
    return getattr(error, "errno", None) == errno.ENOSPC


@contextlib.contextmanager
def full_disk_reported(target: str | os.PathLike) -> Iterator[None]:
    """Turn ENOSPC inside the block (an atomic write of ``target``) into one SegkerasError line
    saying that the previous file is intact."""
    try:
        yield
    except OSError as error:
        if not _no_space(error):
            raise
        raise SegkerasError(f"no space left on the device to write {target}; the previous "
                            f"{Path(target).name} (if any) is intact: free some space and run "
                            "again") from error


def save_model(model, target: str | os.PathLike, run_id: str | None = None) -> Path:
    """``model.save`` to ``target`` atomically; with ``run_id``, the id is stored inside the
    archive (:func:`model_run_id` reads it). A full disk leaves the previous file intact and is
    one SegkerasError line."""
    target = Path(target)
    with full_disk_reported(target), atomic_path(target) as temporary:
        model.save(temporary)
        if run_id is not None:
            with zipfile.ZipFile(temporary, "a") as archive:
                archive.writestr(RUN_FILE, json.dumps({"run_id": run_id}))
    return target


def model_run_id(path: str | os.PathLike) -> str | None:
    """The run id stored in a ``.keras`` archive by :func:`save_model`, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(RUN_FILE)).get("run_id")
    except (KeyError, OSError, zipfile.BadZipFile, ValueError, AttributeError):
        return None


def write_json(target: str | os.PathLike, content, run_id: str | None = None) -> Path:
    """``content`` as indented JSON, atomically; a dict gets ``run_id`` added when given."""
    if run_id is not None and isinstance(content, dict):
        content = {**content, "run_id": run_id}
    with full_disk_reported(target):
        return atomic_write_text(target, json.dumps(content, indent=2))


def save_run(out: str | os.PathLike, model, history: dict, metrics: dict, figure=None,
             run_id: str | None = None) -> str:
    """A run's files in ``out``, each written atomically and each carrying the same run id:
    the model first, then ``history.json`` (and ``history.png``), ``metrics.json`` last, so that
    a kill at any moment leaves a pair that :func:`training_metrics` recognises as stale rather
    than a new model beside the old run's class names. ``model=None``: already saved with
    ``run_id`` (e.g. before scoring, so that a failed scoring loses no training). Returns the
    run id."""
    run_id = run_id or new_run_id()
    out = Path(out)
    if model is not None:
        save_model(model, out / MODEL, run_id)
    write_json(out / HISTORY, history, run_id)
    if figure is not None:
        with atomic_path(out / "history.png") as temporary:
            figure.savefig(temporary, dpi=100)
    write_json(out / METRICS, metrics, run_id)
    return run_id


def training_metrics(model_path: str | os.PathLike, num_categories: int | None = None) -> dict:
    """The ``metrics.json`` written beside ``model_path`` by the same run, or {} when there is
    none. SegkerasError (one line) when it is unreadable (truncated, not an object, too few
    ``category_ids`` for ``num_categories``) or belongs to another run than the model."""
    model_path = Path(model_path)
    path = model_path.parent / METRICS
    if not path.is_file():
        return {}
    fix = (f"re-run `segkeras train` into {model_path.parent}, or delete {path} (class names are "
           "then not shown)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise SegkerasError(f"{path} beside the model is unreadable ({error}); {fix}") from error
    if not isinstance(metrics, dict):
        raise SegkerasError(f"{path} beside the model holds a JSON {type(metrics).__name__}, not "
                            f"the object `train` writes; {fix}")
    model_id, metrics_id = model_run_id(model_path), metrics.get("run_id")
    if model_id != metrics_id:
        raise SegkerasError(f"{path} belongs to another run than {model_path} (run "
                            f"{metrics_id or 'unknown'} vs {model_id or 'unknown'}): the run was "
                            f"interrupted between saving the model and scoring it; {fix}")
    for key in ("classes", "category_ids"):
        value = metrics.get(key)
        if value is not None and not (isinstance(value, list) and all(
                isinstance(item, (str, int)) and not isinstance(item, bool) for item in value)):
            raise SegkerasError(f"{path}: {key} is {str(value)[:40]}, not a list; {fix}")
    if num_categories is not None:
        for key, expected in (("category_ids", num_categories), ("classes", num_categories + 1)):
            if key in metrics and len(metrics[key]) != expected:
                raise SegkerasError(f"{path} has {len(metrics[key])} {key} but the model "
                                    f"predicts {expected}; {fix}")
    return metrics


DATASET_FILES = ("annotations.json", "images", "masks")
"""What ``segkeras data shapes`` writes into its ``--out`` folder."""


def check_existing_run(out: str | os.PathLike, overwrite: bool, flag: str = "--out",
                       names: tuple[str, ...] = RUN_FILES, resumable: bool = True) -> None:
    """SegkerasError when ``out`` already holds any of ``names`` (by default a run's model,
    metrics, history) and ``overwrite`` is False: earlier results are never replaced without
    being asked (``DATASET_FILES`` with ``resumable=False`` for a written dataset)."""
    found = [name for name in names if (Path(out) / name).exists()]
    if found and not overwrite:
        what = "a run" if resumable else "a dataset"
        resume = ", --resume to continue it" if resumable else ""
        raise SegkerasError(f"{flag} {out} already holds {what} ({', '.join(found)}); pass "
                            f"--overwrite to replace it{resume}, or choose another {flag}")


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, flag: str = "--out") -> Iterator[Path]:
    """Hold ``folder/.segkeras.lock`` for the block: a second run into the same folder is refused
    with one line while this one lives; the lock of a process that died is taken over."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    me = f"{os.getpid()} {socket.gethostname()}"
    while True:
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None:
                raise SegkerasError(f"{flag} {folder} is in use by another segkeras run (process "
                                    f"{holder}); wait for it to finish or choose another "
                                    f"{flag}") from None
            lock.unlink(missing_ok=True)  # a dead process' lock: take it over
            continue
        with os.fdopen(handle, "w") as file:
            file.write(me)
        break
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text() == me:
                lock.unlink()


def _lock_holder(lock: Path) -> int | None:
    """The pid holding ``lock`` if that process is alive on this host, else None (stale)."""
    try:
        pid_text, host = lock.read_text().split(maxsplit=1)
        pid = int(pid_text)
    except (OSError, ValueError):
        return None  # half-written or unreadable: its writer died before finishing
    if host != socket.gethostname():
        return pid  # another machine's process: cannot tell, so it is respected
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    return pid


# ----------------------------------------------------------------------------- interruptions


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM arrived inside :func:`interruptible`; ``exit_code`` is 130 or
    143, as a shell reports a process ended by that signal."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        self.message = f"interrupted by {signal.Signals(signum).name}"
        """The one line to print; a command that saved something says what and where."""
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` inside the block (main thread only),
    so that the caller can say what was saved in one line and exit 130 or 143."""
    def handler(signum, frame):
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# ----------------------------------------------------------------------------- outputs


def output_paths(inputs: list[str], suffixes: tuple[str, ...], out: str | None = None
                 ) -> dict[str, dict[str, str]]:
    """{input: {suffix: output path}} for each input file: ``STEM{suffix}`` in ``out`` (else
    beside the input), made unique: names that would clash with each other or with any input
    take the input's parent folders as a prefix (``b_cat_mask.png``), then a number."""
    given = {os.path.realpath(path) for path in inputs}
    taken: set[str] = set()
    plan: dict[str, dict[str, str]] = {}
    for path in dict.fromkeys(inputs):
        folder = out or os.path.dirname(os.path.abspath(path))
        stem = os.path.splitext(os.path.basename(path))[0]
        parents = [part for part in Path(os.path.abspath(path)).parent.parts[::-1] if part != "/"]
        candidates = [stem] + ["_".join([*parents[:depth][::-1], stem])
                               for depth in range(1, len(parents) + 1)]
        candidates += [f"{stem}-{number}" for number in range(2, len(inputs) + 3)]
        for name in candidates:
            targets = {suffix: os.path.join(folder, f"{name}{suffix}") for suffix in suffixes}
            real = {os.path.realpath(target) for target in targets.values()}
            if not real & (given | taken):
                break
        taken |= real
        plan[path] = targets
    return plan


_RESULT_KEYS = {"image_id", "category_id", "score"}


def check_json_target(path: str | os.PathLike, inputs=(), flag: str = "--json") -> None:
    """SegkerasError unless ``path`` is new or a JSON file segkeras wrote (a dict with a
    ``run_id``, or a COCO results list), and is none of ``inputs``: ``--json`` never replaces a
    model, an image or a file it did not write."""
    path = Path(path)
    if os.path.realpath(path) in {os.path.realpath(item) for item in inputs}:
        raise SegkerasError(f"{flag} {path} is one of the input files; pass a new file name, "
                            "e.g. scores.json")
    if not path.exists():
        return
    refuse = SegkerasError(f"{flag} {path} exists and was not written by segkeras (a model, an "
                           "image or another file); pass a new file name, e.g. scores.json")
    if path.stat().st_size > 512 * 2**20:
        raise refuse
    try:
        content = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, OSError):
        raise refuse from None
    ours = (isinstance(content, dict) and "run_id" in content) or (
        isinstance(content, list) and all(
            isinstance(item, dict) and _RESULT_KEYS <= set(item) for item in content))
    if not ours:
        raise refuse
