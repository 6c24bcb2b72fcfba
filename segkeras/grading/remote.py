"""The grader's side of a worker: start it with a clean environment, send requests, enforce the
exercise's time limit and a memory cap, and turn replies into values or exceptions for the judge
(:class:`RemoteAnswer`)."""

from __future__ import annotations

import builtins
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import segkeras
from segkeras.checks.core import CheckFailed, OutOfTime
from segkeras.grading.answer import check_probe
from segkeras.grading.wire import Encoder, WireError, loads

MEMORY_LIMIT = 6 * 2**30  # bytes of resident memory a worker may use
STARTUP_TIMEOUT = 240  # seconds to import segkeras and run the lab setup (not the answer's time)
_POLL = 0.2


class AnswerError(RuntimeError):
    """An exception of the student's code whose class is not a builtin (its name is kept)."""


def _exception(name: str, message: str) -> Exception:
    """The student's exception as the judge sees it: the builtin class of that name, else an
    :class:`AnswerError` subclass with that name."""
    found = getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, Exception):
        return found(message)
    safe = name if name.isidentifier() else "AnswerError"
    return type(safe, (AnswerError,), {})(message)


def worker_environment() -> dict[str, str]:
    """The worker's environment: nothing a submission could have set reaches it."""
    environment = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "KERAS_BACKEND")
                   if key in os.environ}
    environment.update(SEGKERAS_QUICK="1", SEGKERAS_WEIGHTS="none", TF_CPP_MIN_LOG_LEVEL="3",
                       CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(Path(segkeras.__file__).parents[1]),
                       PYTHONDONTWRITEBYTECODE="1")
    return environment


def _resident_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class Worker:
    """One worker process holding the lab setup and one exercise's answer."""

    def __init__(self, lab: str, exercise: str, functions: list[str], setup: str, answer: str,
                 exercises: dict[str, list[str]], timeout: float) -> None:
        self.exercise, self.timeout, self.budget = exercise, timeout, float(timeout)
        self.folder = Path(tempfile.mkdtemp(prefix=f"segkeras-grade-{exercise}-"))
        (self.folder / "work").mkdir()
        read_end, write_end = os.pipe()
        job = {"lab": lab, "exercise": exercise, "functions": functions, "setup": setup,
               "answer": answer, "exercises": exercises, "reply_fd": write_end}
        (self.folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
        self.stderr = open(self.folder / "stderr.txt", "wb")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "segkeras.grading.worker", str(self.folder)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.stderr,
            cwd=self.folder / "work", env=worker_environment(), pass_fds=(write_end,),
            start_new_session=True)
        os.close(write_end)
        self.replies, self.buffer, self.sent = read_end, b"", 0
        self.failure: BaseException | None = None
        self.state = "starting"

    # --- reading replies ----------------------------------------------------------------------

    def _fail(self, failure: BaseException) -> BaseException:
        self.failure = failure
        self.kill()
        return failure

    def _line(self, seconds: float) -> str:
        """The next reply line within ``seconds`` (killing the worker past it or past the memory
        cap)."""
        deadline = time.monotonic() + seconds
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(OutOfTime(self.timeout))
            ready, _, _ = select.select([self.replies], [], [], min(_POLL, left))
            if _resident_bytes(self.process.pid) > MEMORY_LIMIT:
                raise self._fail(CheckFailed(
                    f"your code used more than {MEMORY_LIMIT / 2**30:.0f} GB of memory: the "
                    "grader stopped it."))
            if ready:
                chunk = os.read(self.replies, 1 << 16)
                if not chunk:
                    code = self.process.wait()
                    raise self._fail(CheckFailed(
                        f"your code ended the process (exit code {code})"))
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8")

    def _reply(self, budgeted: bool, seconds: float | None = None) -> dict:
        started = time.monotonic()
        try:
            line = self._line(self.budget if budgeted else seconds)
        finally:
            if budgeted:
                self.budget -= time.monotonic() - started
        try:
            return loads(line, self.folder)
        except (ValueError, KeyError, OSError, TypeError, WireError) as error:
            raise self._fail(CheckFailed(f"the grader could not read your answer's result "
                                         f"({type(error).__name__}: {error})")) from None

    @staticmethod
    def _raise(reply: dict) -> None:
        kind, message = reply.get("kind"), str(reply.get("message", ""))
        if kind == "error":
            raise _exception(str(reply.get("type", "AnswerError")), message)
        if kind == "ended":
            raise CheckFailed(f"your code ended the process ({message})")
        raise CheckFailed(message)

    def ready(self) -> None:
        """Wait until the setup ran (not counted in the answer's time) and the answer loaded."""
        if self.failure is not None:
            raise self.failure
        if self.state == "starting":
            reply = self._reply(False, STARTUP_TIMEOUT)
            if not reply.get("ok"):
                self.state = "loaded"
                raise self._fail(CheckFailed(str(reply.get("message"))))
            self.state = "setup"
        if self.state == "setup":
            reply = self._reply(True)
            self.state = "loaded"
            if not reply.get("ok"):
                try:
                    self._raise(reply)
                except Exception as error:
                    self.failure = error
                    raise
            self.state = "ready"
        if self.state != "ready":
            raise self.failure or CheckFailed("the answer could not be loaded")

    def request(self, message: dict):
        self.ready()
        self.sent += 1
        try:
            line = Encoder(self.folder, "request", self.sent).dumps(message)
            self.process.stdin.write(line.encode("utf-8"))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            code = self.process.wait()
            raise self._fail(CheckFailed(f"your code ended the process (exit code {code})")) \
                from None
        reply = self._reply(True)
        if not reply.get("ok"):
            self._raise(reply)
        return reply.get("value")

    # --- ending -------------------------------------------------------------------------------

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.process.kill()
            self.process.wait()

    def close(self) -> None:
        """Stop the worker and remove its folder."""
        if self.process.poll() is None and self.failure is None and self.state == "ready":
            try:
                self.process.stdin.write(b'{"op": "stop"}\n')
                self.process.stdin.flush()
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        for stream in (self.process.stdin, self.stderr):
            try:
                stream.close()
            except OSError:
                pass
        os.close(self.replies)
        shutil.rmtree(self.folder, ignore_errors=True)

    def stderr_tail(self, lines: int = 20) -> str:
        path = self.folder / "stderr.txt"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class RemoteAnswer:
    """The student's function(s) in a :class:`Worker`: the same interface as ``LocalAnswer``
    (see :mod:`segkeras.grading.answer`), values crossing as data."""

    grading = True

    def __init__(self, worker: Worker, exercise: str, rng: np.random.Generator,
                 index: int = 0) -> None:
        self.worker, self.exercise, self.rng, self.index = worker, exercise, rng, index

    def using(self, index: int) -> RemoteAnswer:
        return RemoteAnswer(self.worker, self.exercise, self.rng, index)

    def __call__(self, *args, **kwargs):
        return self.worker.request({"op": "call", "index": self.index, "args": tuple(args),
                                    "kwargs": dict(kwargs)})

    def probe(self, probe_fn, *args, **kwargs):
        return self.worker.request({"op": "probe", "probe": check_probe(probe_fn),
                                    "index": self.index, "args": tuple(args),
                                    "kwargs": dict(kwargs)})
