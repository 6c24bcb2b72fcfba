"""The worker: runs ONE answer of one exercise, in a process forked for it by the grader's fork
server (:mod:`segkeras.grading.zygote`).

It reads ``JOB_DIR/job.json`` (lab, exercise, function names, the lab's setup source, the answer's
source), swaps out the exercise's forbidden functions and every lab's
private references for good, refuses answer sources that reach for the grader's internals, runs
the lab setup then the answer in one namespace, and serves ``call``/``probe`` requests (JSON lines
on stdin) with replies on the reply descriptor (:mod:`segkeras.grading.wire`). What the student's
code prints goes to stderr (fd 1 is pointed at fd 2), so it cannot corrupt the protocol.
"""

from __future__ import annotations

import ast
import functools
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

# Modules an answer may not import, names it may not use, attributes it may not touch: the
# grader's internals and the ways to undo a swap or reach the worker's frames.
REFUSED_MODULES = ("segkeras.checks", "segkeras.grading", "keras.src", "importlib", "ctypes", "gc")
REFUSED_NAMES = {"__import__", "reload", "eval", "exec", "compile", "globals", "breakpoint"}
REFUSED_ATTRIBUTES = {"__code__", "__closure__", "__globals__", "__subclasses__", "__builtins__",
                      "modules", "checks", "grading", "_getframe", "f_back", "f_locals",
                      "f_globals", "tb_frame", "gi_frame", "cr_frame", "setprofile", "settrace"}


def refusal(source: str) -> str | None:
    """Why the answer's ``source`` is refused (one line), or None."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None  # reported when the source runs, with the line
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for module in modules:
            if any(module == refused or module.startswith(refused + ".")
                   for refused in REFUSED_MODULES):
                return (f"your answer imports {module}: answers may not use the checks, the "
                        "grader or Keras' internals (keras.src)")
        if isinstance(node, ast.Name) and node.id in REFUSED_NAMES:
            return f"your answer uses {node.id}, which the grader does not allow in answers"
        if isinstance(node, ast.Attribute) and node.attr in REFUSED_ATTRIBUTES:
            return (f"your answer uses .{node.attr}, which the grader does not allow in answers "
                    "(it reaches into the checks or into Python's internals)")
    return None


def _ipython_stub():
    class Shell:
        def run_line_magic(self, *args, **kwargs):
            return None

        run_cell_magic = system = getoutput = run_line_magic

    shell = Shell()
    return lambda: shell


def _cell_code(source: str) -> str:
    """A notebook cell's source as plain Python (IPython magics turned into calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


class Session:
    """The answer loaded in this process, serving requests."""

    def __init__(self, job: dict, folder: Path, reply) -> None:
        from segkeras.checks import core

        self.core, self.job, self.folder, self.reply = core, job, folder, reply
        self.exercise = job["exercise"]
        self.sent = 0
        lab = core.lab_module(job["lab"]).LAB
        # For good, before any student code runs: capturing __code__ captures the stub.
        self.swaps = core.swap_out(lab.forbidden[self.exercise] + core.private_targets())
        self.namespace = {"__name__": "__main__", "get_ipython": _ipython_stub(),
                          "display": print}
        self.lab = lab

    def _unswapped(self, function: Callable) -> Callable:
        """``function`` (a fallback: the library's answer to another exercise) with the swaps
        off while it runs, so an answer can build on the earlier exercises."""
        swaps = self.swaps

        @functools.wraps(function)
        def run(*args, **kwargs):
            for swap in swaps:
                swap.off()
            try:
                return function(*args, **kwargs)
            finally:
                for swap in swaps:
                    swap.on()

        return run

    def send(self, message: dict) -> None:
        from segkeras.grading.wire import Encoder, WireError

        self.sent += 1
        try:
            line = Encoder(self.folder, "reply", self.sent).dumps(message)
        except WireError as error:
            line = Encoder(self.folder, "reply", self.sent).dumps(
                {"ok": False, "kind": "failed",
                 "message": f"your {self.exercise} returned something the grader cannot read "
                            f"({error})."})
        self.reply.write(line)
        self.reply.flush()

    def guarded(self, run: Callable[[], object]) -> dict:
        """Run student code: its result, or what went wrong, as a reply."""
        from segkeras.checks.core import CheckFailed
        from segkeras.grading.answer import as_data

        forbidden = self.core._FORBIDDEN_CALLS
        start = len(forbidden)
        try:
            reply = {"ok": True, "value": as_data(run(), self.exercise)}
        except CheckFailed as failure:
            reply = {"ok": False, "kind": "failed", "message": str(failure)}
        except Exception as error:
            reply = {"ok": False, "kind": "error", "type": type(error).__name__,
                     "message": str(error)}
        except BaseException as error:  # SystemExit, KeyboardInterrupt...
            detail = f": {error}" if str(error) else ""
            reply = {"ok": False, "kind": "ended", "message": f"{type(error).__name__}{detail}"}
        called = forbidden[start:]
        del forbidden[start:]
        if called:  # however the answer handled the error
            reply = {"ok": False, "kind": "failed",
                     "message": self.core._write_it_yourself(called[0])}
        return reply

    def load(self) -> dict:
        why = refusal(self.job["answer"])
        if why:
            return {"ok": False, "kind": "failed", "message": why}
        exec(compile(_cell_code(self.job["setup"]), "<lab setup>", "exec"), self.namespace)  # noqa: S102
        for name, fallback in self.lab.fallbacks.items():
            functions = self.job["exercises"].get(name) or [name]
            if name != self.exercise:
                self.namespace[functions[0]] = self._unswapped(fallback)
        self.send({"ok": True, "setup": True})
        code = _cell_code(self.job["answer"])
        loaded = self.guarded(lambda: exec(compile(code, "<answer>", "exec"), self.namespace))  # noqa: S102
        if not loaded["ok"]:
            return loaded
        missing = [name for name in self.job["functions"]
                   if not callable(self.namespace.get(name))]
        if missing:
            return {"ok": False, "kind": "failed",
                    "message": f"your answer defines no function {missing[0]}"}
        return {"ok": True, "ready": True}

    def serve(self, requests) -> None:
        from segkeras.grading.wire import loads

        functions = [self.namespace[name] for name in self.job["functions"]]
        for line in requests:
            request = loads(line, self.folder)
            if request["op"] == "stop":
                return
            self.send(self.guarded(self.task(request, functions[request.get("index", 0)])))

    @staticmethod
    def task(request: dict, function: Callable) -> Callable[[], object]:
        """What a ``call`` or ``probe`` request runs."""
        from segkeras.grading.answer import check_probe
        from segkeras.grading.probes import PROBES

        args, kwargs = request.get("args", ()), request.get("kwargs", {})
        if request["op"] == "call":
            return lambda: function(*args, **kwargs)
        if request["op"] != "probe":
            raise ValueError(f"unknown request {request['op']!r}")
        key = str(request["probe"])
        module = key.partition(":")[0]
        if module != "segkeras.grading.probes" and not module.startswith("segkeras.checks."):
            raise ValueError(f"refused probe {key}")
        importlib.import_module(module)
        probe_fn = PROBES[key]
        check_probe(probe_fn)
        return lambda: probe_fn(function, *args, **kwargs)


def run(folder: Path, reply_fd: int) -> int:
    """Serve the answer of the job in ``folder``: requests on stdin, replies on ``reply_fd``."""
    job = json.loads((folder / "job.json").read_text(encoding="utf-8"))
    reply = os.fdopen(reply_fd, "w", encoding="utf-8")
    requests = sys.stdin
    os.dup2(2, 1)  # the student's prints go to stderr
    session = Session(job, folder, reply)
    loaded = session.load()
    session.send(loaded)
    if loaded["ok"]:
        session.serve(requests)
    return 0

