"""The fork server the grading workers start from.

Starting a fresh interpreter per answer costs seconds (importing TensorFlow, Keras and segkeras);
grading a class means hundreds of answers. So one server process, started with the workers' clean
environment, imports all of that once and holds no student code; each answer's worker is a fork
of it (a fraction of a second) in its own session, with its own folder and only the three pipes it
was given. A worker therefore starts from the same pristine state a fresh interpreter would have,
and what one answer does never reaches the server or another answer.

Protocol: one ``AF_UNIX``/``SOCK_SEQPACKET`` socket, one JSON message per packet, one request
at a time (:class:`ForkServer` serialises them):

- ``{"op": "fork", "folder": F}`` with three descriptors (requests in, replies out, stderr) ->
  ``{"pid": P}``: the worker runs :func:`segkeras.grading.worker.run` on ``F``;
- ``{"op": "poll", "pid": P}`` -> ``{"code": C}`` (None while it runs);
- ``{"op": "wait", "pid": P, "grace": S}`` -> ``{"code": C}``, the worker killed after S seconds.

Exit codes read as :attr:`subprocess.Popen.returncode` does (negative: killed by that signal).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from importlib import resources
from pathlib import Path

STARTUP_TIMEOUT = 240  # seconds to start the server (imports); each request is answered at once
_PACKET = 1 << 16


def _exit_code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


# --- the server -----------------------------------------------------------------------------------


def _preload() -> None:
    """Import what every worker needs: Keras and its backend, segkeras, every lab's checks, the
    worker's modules and the modules the labs' grading setups import."""
    import keras  # noqa: F401 (and its backend)

    import segkeras  # noqa: F401
    from segkeras.checks import core
    from segkeras.grading import answer, probes, wire, worker  # noqa: F401

    core.private_targets()  # imports every lab's checks module
    importlib.import_module("IPython.core.inputtransformer2")
    for setup in resources.files("segkeras.resources.grading").iterdir():
        if not setup.name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(setup.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                with contextlib.suppress(ImportError):
                    importlib.import_module(name)


def _worker(connection: socket.socket, folder: str, descriptors: list[int]) -> None:
    """In the forked child: become the worker of the answer in ``folder``; never returns."""
    code = 1
    try:
        connection.close()
        requests, replies, stderr = descriptors
        os.setsid()  # its own process group: the grader kills the worker and all it started
        os.dup2(requests, 0)
        os.dup2(stderr, 2)
        os.close(requests)
        os.close(stderr)
        os.chdir(Path(folder) / "work")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from segkeras.grading import worker

        code = worker.run(Path(folder), replies)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 (reported on the worker's stderr)
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap(pid: int, finished: dict[int, int], grace: float | None) -> int | None:
    """The worker's exit code; None if it still runs (``grace`` None: do not wait)."""
    if pid in finished:
        return finished[pid]
    deadline = time.monotonic() + (grace or 0.0)
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return finished.setdefault(pid, -signal.SIGKILL)
        if done:
            finished[pid] = _exit_code(status)
            return finished[pid]
        if grace is None:
            return None
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            finished[pid] = _exit_code(status)
            return finished[pid]
        time.sleep(0.05)


def serve(connection: socket.socket) -> None:
    """Answer the grader's requests until it closes the connection."""
    _preload()
    finished: dict[int, int] = {}
    connection.send(json.dumps({"ready": True}).encode())
    while True:
        message, descriptors, _, _ = socket.recv_fds(connection, _PACKET, 3)
        if not message:
            return
        request = json.loads(message)
        if request["op"] == "fork":
            pid = os.fork()
            if pid == 0:
                _worker(connection, request["folder"], descriptors)
            for descriptor in descriptors:
                os.close(descriptor)
            reply = {"pid": pid}
        else:
            grace = float(request.get("grace", 0)) if request["op"] == "wait" else None
            reply = {"code": _reap(int(request["pid"]), finished, grace)}
        connection.send(json.dumps(reply).encode())


def main(argv: list[str] | None = None) -> int:
    descriptor = int((argv if argv is not None else sys.argv[1:])[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the grader decides when the server ends
    serve(socket.socket(fileno=descriptor))
    return 0


# --- the grader's side ----------------------------------------------------------------------------


class ForkServer:
    """The grader's handle on one server process (started on creation, ended by :meth:`close`
    or when the grader exits)."""

    def __init__(self, environment: dict[str, str], stderr_path: Path) -> None:
        self.environment = environment
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "segkeras.grading.zygote", str(theirs.fileno())],
            stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
            env=environment, pass_fds=(theirs.fileno(),), start_new_session=True)
        theirs.close()
        self.connection, self.stderr_path = ours, stderr_path
        self._lock = threading.Lock()
        self._ready = False

    def _receive(self, timeout: float) -> dict:
        self.connection.settimeout(timeout)
        try:
            data = self.connection.recv(_PACKET)
        except TimeoutError:
            data = b""
        if not data:
            tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError("the grader's worker server stopped: " + " | ".join(tail))
        return json.loads(data)

    def request(self, message: dict, descriptors: tuple[int, ...] = ()) -> dict:
        with self._lock:
            if not self._ready:
                self._receive(STARTUP_TIMEOUT)
                self._ready = True
            socket.send_fds(self.connection, [json.dumps(message).encode()], list(descriptors))
            return self._receive(STARTUP_TIMEOUT)

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        self.connection.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


class ForkedWorker:
    """A worker forked by the server, with the interface of :class:`subprocess.Popen` the grader
    uses: ``pid``, ``stdin``, ``poll()``, ``wait()``."""

    def __init__(self, server: ForkServer, folder: Path, stderr) -> None:
        requests_in, requests_out = os.pipe()
        self.replies, replies_out = os.pipe()
        try:
            self.pid = server.request({"op": "fork", "folder": str(folder)},
                                      (requests_in, replies_out, stderr.fileno()))["pid"]
        finally:
            os.close(requests_in)
            os.close(replies_out)
        self.server = server
        self.stdin = os.fdopen(requests_out, "wb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._ask({"op": "poll", "pid": self.pid})
        return self.returncode

    def wait(self, grace: float = 5.0) -> int:
        """The exit code, waiting up to ``grace`` seconds before killing the worker."""
        if self.returncode is None:
            self.returncode = self._ask({"op": "wait", "pid": self.pid, "grace": grace})
        return self.returncode

    def _ask(self, message: dict) -> int | None:
        """The server's answer about this worker; if the server is gone (an answer may kill its
        parent), the worker is killed and reads as killed."""
        try:
            return self.server.request(message)["code"]
        except (OSError, RuntimeError):
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(self.pid, signal.SIGKILL)
            return -signal.SIGKILL

if __name__ == "__main__":
    sys.exit(main())
