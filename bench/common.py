"""What every section of BENCHMARKS.md shares: where results live, measuring in a fresh process,
provenance lines, tables, and the date the measured code last changed.

A section is a module ``bench/sN_KEY.py`` with ``TITLE``, ``CODE`` (the package files whose
speed or quality it measures), ``measure(full)`` -> data, ``render(data)`` -> Markdown and
``headline(data)`` -> the row of the summary table; :mod:`run` drives them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(BENCH_DIR, os.pardir))
PATHS = {"report": os.path.join(ROOT, "BENCHMARKS.md"), "results": os.path.join(BENCH_DIR,
                                                                                 "results")}
"""The report and the results folder (``--smoke`` points both at a scratch folder)."""
OPTIONS = {"smoke": False}
"""``smoke``: every section at a tiny setting (checks the scripts in a few minutes)."""
NUM_CLASSES = 4  # background + the three shapes every lab uses by default


def smoke() -> bool:
    return OPTIONS["smoke"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_worker(module: str, **kwargs) -> dict:
    """``module.worker(**kwargs)`` in a fresh Python process (so that peak RSS belongs to that
    configuration alone); returns its JSON result."""
    spec = json.dumps({"module": module, **kwargs})
    print("  ", module, kwargs, flush=True)
    done = subprocess.run([sys.executable, __file__, spec], capture_output=True, text=True,
                          cwd=BENCH_DIR)
    if done.returncode != 0:
        raise RuntimeError(f"{module} {kwargs} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    import keras
    import numpy
    import tensorflow

    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info
                     if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"TensorFlow {tensorflow.__version__}, Keras {keras.__version__} "
            f"(backend {keras.backend.backend()}), NumPy {numpy.__version__}")


def results_file(name: str) -> str:
    return os.path.join(PATHS["results"], f"{name}.json")


def load_results(name: str) -> dict | None:
    if not os.path.exists(results_file(name)):
        return None
    with open(results_file(name), encoding="utf-8") as file:
        return json.load(file)


def measure(name: str, command: str, calibration, body) -> dict:
    """Run ``body()`` (the section's data) and store it in ``results/<name>.json`` with its
    provenance: when, by which command, load average, wall and CPU seconds, calibration."""
    load, cpu, wall = os.getloadavg()[0], children_cpu(), time.perf_counter()
    data = body()
    stored = {"provenance": {
        "measured": f"{datetime.datetime.now():%Y-%m-%d %H:%M}", "command": command,
        "wall_s": round(time.perf_counter() - wall), "cpu_s": round(children_cpu() - cpu),
        "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(), "calibration": str(calibration),
        "calibration_gflops": round(calibration.gflops, 1)}, "data": data}
    os.makedirs(PATHS["results"], exist_ok=True)
    with open(results_file(name), "w", encoding="utf-8") as file:
        json.dump(stored, file, indent=1)
    return stored


def provenance_line(p: dict, script: str) -> str:
    """When, by which command and script, and on how busy a machine a section was measured."""
    made = f"_Measured {p['measured']} by `{p['command']}` (`{script}`)"
    if "note" in p:
        return f"{made}; {p['note']}._"
    return (f"{made}: worker wall {p['wall_s']} s, CPU (user+sys) {p['cpu_s']} s; load average "
            f"{p['load_before']} before, {p['load_after']} after ({p['cpus']} cores); "
            f"{p['calibration']}._")


UNAFFECTED = "[bench: unaffected]"


def code_changed(paths: tuple[str, ...]) -> str | None:
    """When (``YYYY-MM-DD HH:MM``, UTC) a commit last modified one of ``paths``, or None when git
    cannot tell. Files moved or split into new files do not count, nor commits whose message says
    :data:`UNAFFECTED` (a refactoring its author checked leaves every measured number as it
    was)."""
    try:
        done = subprocess.run(["git", "log", "-1", "--diff-filter=M", "--invert-grep",
                               "--fixed-strings", f"--grep={UNAFFECTED}",
                               "--date=format-local:%Y-%m-%d %H:%M", "--format=%cd", "--",
                               *paths], cwd=ROOT, capture_output=True, text=True, timeout=30,
                              env={**os.environ, "TZ": "UTC"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def staleness(measured: str, paths: tuple[str, ...]) -> str:
    """The first line of a section measured before the code it measures last changed, else ''."""
    changed = {path: code_changed((path,)) for path in paths}
    later = {path: when for path, when in changed.items() if when and when > measured}
    if not later:
        return ""
    return (f"**Older than the code it measures**: measured {measured}; modified since: "
            + ", ".join(f"`{path}` ({when})" for path, when in sorted(later.items(),
                                                                      key=lambda kv: kv[1]))
            + "; re-measure with the command below.")


if __name__ == "__main__":  # a worker: python bench/common.py '{"module": ..., kwargs}'
    sys.path.insert(0, BENCH_DIR)
    import importlib

    spec = json.loads(sys.argv[1])
    print(json.dumps(importlib.import_module(spec.pop("module")).worker(**spec)))
