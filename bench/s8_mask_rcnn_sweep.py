"""Section 8's side by side: the same learning-rate sweep and seeds for segkeras and torchvision.

    python bench/s8_mask_rcnn_sweep.py --torch-python /work/venvs/mrcnn/bin/python \\
        [--minutes 10] [--learning-rates 5e-4 1e-3 2e-3 4e-3] [--seeds 0 1 2] [--models DIR]

Phase 1 trains both systems at every learning rate with the first seed; phase 2 trains each
system at its own best rate (the highest box AP + mask AP of phase 1) with the other seeds. Every
run is one process on one thread (``--threads 1``) with the same CPU budget, two at a time
(this machine has 2 cores); each stores its record under ``{system} lr={rate:g} seed={seed}`` in
``bench/results/mask_rcnn.json`` (``bench/s8_mask_rcnn.py`` renders them) and its trained model
in ``--models``. A run whose record exists is skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from s8_mask_rcnn_record import best_rate, run_key, stored

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEMS = {"segkeras": "s8_mask_rcnn_train.py", "torchvision": "s8_mask_rcnn_torchvision.py"}


def run(system: str, rate: float, seed: int, args) -> None:
    name = run_key(system, rate, seed)
    if name in stored():
        print(f"{name}: recorded, skipped", flush=True)
        return
    python = sys.executable if system == "segkeras" else args.torch_python
    suffix = ".keras" if system == "segkeras" else ".pt"
    model_file = os.path.join(args.models, name.replace(" ", "_") + suffix)
    command = [python, os.path.join(HERE, SYSTEMS[system]), "--minutes", str(args.minutes),
               "--learning-rate", str(rate), "--seed", str(seed), "--threads", "1",
               "--key", name, "--save", model_file]
    log = os.path.join(args.models, name.replace(" ", "_") + ".log")
    print(f"{name}: started, log {log}", flush=True)
    environment = {**os.environ, "PYTHONPATH": os.path.dirname(HERE)}
    with open(log, "w") as output:
        result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=environment,
                                cwd=HERE)
    print(f"{name}: {'done' if result.returncode == 0 else f'FAILED ({result.returncode})'}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", required=True,
                        help="the Python of a venv with torch and torchvision")
    parser.add_argument("--minutes", type=float, default=10.0, help="CPU minutes per run")
    parser.add_argument("--learning-rates", type=float, nargs="+",
                        default=[5e-4, 1e-3, 2e-3, 4e-3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", default="s8_models", help="folder for models and logs")
    args = parser.parse_args()
    os.makedirs(args.models, exist_ok=True)
    args.models = os.path.abspath(args.models)
    first, *others = args.seeds
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda job: run(*job, args), [
            (system, rate, first) for rate in args.learning_rates for system in SYSTEMS]))
        best = {system: best_rate(stored(), system, first) for system in SYSTEMS}
        if None in best.values():
            raise SystemExit(f"a system has no finished run of phase 1 ({best}); see the logs in "
                             f"{args.models}")
        print(f"best learning rates: {best}", flush=True)
        list(pool.map(lambda job: run(*job, args), [
            (system, best[system], seed) for seed in others for system in SYSTEMS]))


if __name__ == "__main__":
    main()
