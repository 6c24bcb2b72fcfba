"""The grader's side of a worker: start it with a clean environment, send requests, enforce the
exercise's time limit and a memory cap, and turn replies into values or exceptions for the judge
(:class:`RemoteAnswer`)."""

from __future__ import annotations

import atexit
import builtins
import json
import os
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path

import numpy as np

import segkeras
from segkeras.checks.core import CheckFailed, OutOfTime
from segkeras.grading.answer import check_probe
from segkeras.grading.wire import Encoder, WireError, loads
from segkeras.grading.zygote import ForkedWorker, ForkServer

MEMORY_LIMIT = 6 * 2**30  # bytes of resident memory a worker may use
SETUP_TIMEOUT = 240  # seconds to run the lab setup (not counted in the answer's time)
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


_SERVERS: dict[tuple, ForkServer] = {}


def fork_server() -> ForkServer:
    """The fork server for the current worker environment, started on first use (the imports
    take seconds once) and ended when the grader exits."""
    environment = worker_environment()
    key = tuple(sorted(environment.items()))
    server = _SERVERS.get(key)
    if server is None or not server.alive():
        folder = Path(tempfile.mkdtemp(prefix="segkeras-grade-server-"))
        server = _SERVERS[key] = ForkServer(environment, folder / "stderr.txt")
        atexit.register(_stop_server, server, folder)
    return server


def _stop_server(server: ForkServer, folder: Path) -> None:
    server.close()
    shutil.rmtree(folder, ignore_errors=True)


class Worker:
    """One worker process holding the lab setup and one exercise's answer."""

    def __init__(self, lab: str, exercise: str, functions: list[str], setup: str, answer: str,
                 exercises: dict[str, list[str]], timeout: float) -> None:
        self.exercise, self.timeout, self.budget = exercise, timeout, float(timeout)
        self.folder = Path(tempfile.mkdtemp(prefix=f"segkeras-grade-{exercise}-"))
        (self.folder / "work").mkdir()
        job = {"lab": lab, "exercise": exercise, "functions": functions, "setup": setup,
               "answer": answer, "exercises": exercises}
        (self.folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
        self.stderr = open(self.folder / "stderr.txt", "wb")  # noqa: SIM115 (closed in close())
        self.process = ForkedWorker(fork_server(), self.folder, self.stderr)
        self.replies, self.buffer, self.sent = self.process.replies, b"", 0
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
            reply = self._reply(False, SETUP_TIMEOUT)
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
            for kill, target in ((os.killpg, self.process.pid), (os.kill, self.process.pid)):
                try:  # its process group; the worker alone if it has none yet
                    kill(target, signal.SIGKILL)
                    break
                except (ProcessLookupError, PermissionError):
                    continue
            self.process.wait()

    def close(self) -> None:
        """Stop the worker (asked first, killed after 5 s) and remove its folder."""
        if self.process.poll() is None and self.failure is None and self.state == "ready":
            try:
                self.process.stdin.write(b'{"op": "stop"}\n')
                self.process.stdin.flush()
            except OSError:
                pass
            self.process.wait(grace=5)
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
