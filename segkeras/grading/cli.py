"""``python -m segkeras grade LAB SUBMISSIONS... [--out DIR] [--seed N] [--timeout S]``: grade a
class's notebooks out of process into ``DIR/grades.csv`` and ``DIR/feedback/<student>.md``."""

from __future__ import annotations

import argparse
import sys
import time

from segkeras.errors import SegkerasError

EXIT_USAGE = 2


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``grade`` command to ``subparsers``."""
    parser = subparsers.add_parser(
        "grade", help="grade submitted notebooks of a lab (CSV + feedback per student)",
        description=__doc__)
    parser.add_argument("lab", help="the lab, e.g. 06_boxes_to_masks (or its checks module, "
                                    "detection)")
    parser.add_argument("submissions", nargs="+",
                        help="notebooks, or folders searched for them (nbgrader's submitted/)")
    parser.add_argument("--out", default="grades", help="output folder (default: grades)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the inputs' seed (default: a hidden one drawn now)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per exercise (default: the lab's, 30 s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier grading in --out")
    return parser


def run(args: argparse.Namespace) -> int:
    """Grade every submission; print one line per student; 0, or 2 with one line on error."""
    from segkeras.grading import grade, report, submission

    try:
        lab = submission.lab_name(args.lab)
        report.check_out(args.out, args.overwrite)
        students = report.find_submissions(args.submissions)
        seed = grade.draw_seed() if args.seed is None else args.seed
        results = {}
        for student, notebook in students:
            started = time.perf_counter()
            try:
                grades = grade.grade_notebook(notebook, lab, seed, args.timeout)
            except SegkerasError as error:  # this notebook only: 0 with the reason
                _, spec = submission.shipped(lab)
                grades = [grade.ExerciseGrade(name, 0, info["points"], str(error))
                          for name, info in spec["exercises"].items()]
            results[student] = grades
            points = sum(item.points for item in grades)
            maximum = sum(item.max_points for item in grades)
            print(f"{student}: {points}/{maximum} points ({time.perf_counter() - started:.0f} s)",
                  flush=True)
        path = report.write_report(args.out, lab, results, args.overwrite)
    except SegkerasError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {path} and {len(results)} feedback files in {path.parent / 'feedback'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segkeras.grading")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))
