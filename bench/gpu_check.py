"""The GPU check: every solution notebook in full mode on this machine's GPU, timed.

    python bench/gpu_check.py            # or: make gpu-check

Run it on a machine with a GPU (Colab, a lab machine, a lent accelerator). It executes each
solution top to bottom in full mode (``SEGKERAS_QUICK=0``) with ImageNet weights when they can be
downloaded (else ``SEGKERAS_WEIGHTS=none``, and the table says so), into a scratch copy — the
committed notebooks are not touched — and writes the measured table into BENCHMARKS.md between the
``gpu-check`` markers, with the GPU's name and the software versions. On a machine without a GPU it
exits with status 2 and changes nothing: GPU figures are measured here or labelled estimates.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- gpu-check: begin -->", "<!-- gpu-check: end -->"
# A small ImageNet file that every lab's default backbone family needs; fetching it proves access.
PROBE_WEIGHTS = ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5",
                 "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/")


def gpu_name() -> str | None:
    """The first GPU's name from nvidia-smi, or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True)
    lines = query.stdout.strip().splitlines()
    return lines[0].strip() if query.returncode == 0 and lines else None


def imagenet_reachable() -> bool:
    """Whether Keras can download (or already has) ImageNet weights."""
    import keras

    name, base = PROBE_WEIGHTS
    try:
        keras.utils.get_file(name, base + name, cache_subdir="models")
    except Exception:  # offline: URLError, HTTP errors, timeouts...
        return False
    return True


def run_solution(path: Path, weights: str, scratch: Path) -> tuple[float, str]:
    """Execute a copy of ``path`` in full mode; returns (seconds, "ok" or the error's last line)."""
    copy = scratch / path.name
    shutil.copy(path, copy)
    environment = dict(os.environ, SEGKERAS_QUICK="0", SEGKERAS_WEIGHTS=weights)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
         "--ExecutePreprocessor.timeout=3600", str(copy)],
        cwd=scratch, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    status = "ok" if result.returncode == 0 else (result.stderr.strip().splitlines() or ["?"])[-1]
    return seconds, status


def versions() -> str:
    import keras
    import tensorflow as tf

    return (f"Python {platform.python_version()}, TensorFlow {tf.__version__}, "
            f"Keras {keras.__version__} (backend {keras.backend.backend()})")


def write_section(table: str) -> None:
    """Replace the text between the gpu-check markers of BENCHMARKS.md (append them if absent)."""
    text = REPORT.read_text(encoding="utf-8") if REPORT.exists() else "# Benchmarks\n"
    section = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    REPORT.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="solutions to run (default: all), e.g. 01_fcn")
    args = parser.parse_args(argv)
    gpu = gpu_name()
    if gpu is None:
        print("error: no GPU here (nvidia-smi finds none); run this on a GPU machine.",
              file=sys.stderr)
        return 2
    paths = sorted((ROOT / "solutions").glob("*.ipynb"))
    if args.names:
        paths = [path for path in paths if path.stem in args.names or path.name in args.names]
    weights = "imagenet" if imagenet_reachable() else "none"
    rows = []
    with tempfile.TemporaryDirectory(prefix="segkeras-gpu-check-") as scratch:
        for path in paths:
            print(f"running {path.name} in full mode (weights {weights})...", flush=True)
            seconds, status = run_solution(path, weights, Path(scratch))
            print(f"  {seconds:.0f} s, {status}", flush=True)
            rows.append(f"| {path.stem} | {seconds / 60:.1f} | {weights} | {status} |")
    table = "\n".join([
        "## GPU check (measured)", "",
        f"Date: {datetime.date.today()}; GPU: {gpu}; {versions()}; command: "
        "`python bench/gpu_check.py`. Each solution in full mode, top to bottom, mixed precision "
        "as the notebooks choose it (`configure_precision`).", "",
        "| solution | full mode, min | weights | result |", "|---|---|---|---|", *rows])
    write_section(table)
    print(f"wrote the table to {REPORT}")
    return 0 if all(row.endswith("| ok |") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
