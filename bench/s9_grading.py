"""Section 9: grading one submission of each lab out of process, as an instructor does.

``python -m segkeras grade LAB SOLUTION`` in a fresh process (quick mode, the grader's own start
included): every exercise's answer runs in its own worker, the judges compare in the grading
process. The solution must get full marks; the wall time is what one student of a class costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, smoke, table

TITLE = "9. Grading one submission per lab (quick mode, out of process)"
CODE = ("segkeras/grading", "segkeras/checks")
LABS = ("01_fcn", "02_transposed_convolutions", "03_unet_transfer_learning",
        "04_stacked_hourglass", "05_mask_rcnn_head", "06_boxes_to_masks")


def grade_once(lab: str) -> dict:
    """Wall seconds and points of ``segkeras grade`` on the lab's solution."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "grades"
        environment = {**os.environ, "SEGKERAS_QUICK": "1", "SEGKERAS_WEIGHTS": "none",
                       "TF_CPP_MIN_LOG_LEVEL": "3"}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "segkeras", "grade", lab,
                               str(Path(ROOT) / "solutions" / f"{lab}.ipynb"), "--out", str(out),
                               "--seed", "0"], capture_output=True, text=True, env=environment,
                              cwd=folder)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"grading {lab} failed:\n{done.stderr[-2000:]}")
        rows = (out / "grades.csv").read_text(encoding="utf-8").splitlines()[1:]
    points = maximum = 0
    for row in rows:
        fields = row.split(",")
        points, maximum = points + int(fields[2]), maximum + int(fields[3])
    return {"lab": lab, "seconds": round(seconds, 1), "points": points, "max": maximum,
            "exercises": len(rows)}


def measure(full: bool) -> list[dict]:
    labs = LABS[-1:] if smoke() else LABS
    return [grade_once(lab) for lab in labs]


def render(rows: list[dict]) -> str:
    slowest = max(rows, key=lambda row: row["seconds"])
    return (table(["lab", "exercises", "points", "wall s (one submission)"],
                  [[row["lab"], row["exercises"], f"{row['points']}/{row['max']}",
                    f"{row['seconds']:.0f}"] for row in rows])
            + f"\n\nA class of 100 takes at most {slowest['seconds'] * 100 / 3600:.1f} h per lab "
              f"at the slowest lab's pace ({slowest['lab']}); `segkeras grade` starts once for a "
              "whole class, so the real cost per student is a few seconds lower.")


def headline(rows: list[dict]) -> tuple[str, str]:
    slowest = max(rows, key=lambda row: row["seconds"])
    return (f"{slowest['seconds']:.0f} s for one submission of the slowest lab "
            f"({slowest['lab']})",
            "issue 21's target: ≤ 60 s per submission per lab in quick mode")


if __name__ == "__main__":
    print(json.dumps(measure(full=False), indent=1))
