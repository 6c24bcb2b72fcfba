"""segkeras benchmarks: measure the sections of BENCHMARKS.md and write the file.

    python bench/run.py                          # quick (make bench): every section below
    python bench/run.py --sections demo flops    # re-measure some sections, keep the others
    python bench/run.py --full                   # every architecture x backbone x size x batch
    python bench/run.py --smoke                  # every section tiny, into a scratch folder
    python bench/run.py --render                 # measure nothing: rewrite BENCHMARKS.md

Each section is one script, ``bench/sN_KEY.py`` (``--help`` lists them); section 2's mIoU comes
from the stored runs of ``bench/s2_versus_runs.py quality`` and section 8 from
``bench/s8_mask_rcnn_sweep.py`` (hours of runs, never started here). Every section starts with the
line saying when, by which command and script it was measured, the load average around it, the wall
and CPU seconds of its worker processes and this machine's matmul calibration
(:mod:`segkeras.calibration`); a section measured before the code it measures last changed says so
first. The file opens with a summary table of each section's headline number. Notes below the
marker are hand-written and kept.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import s1_throughput  # noqa: E402
import s2_versus  # noqa: E402
import s3_pipeline  # noqa: E402
import s4_scaling  # noqa: E402
import s5_roi_align  # noqa: E402
import s6_flops  # noqa: E402
import s7_demo  # noqa: E402
import s8_mask_rcnn  # noqa: E402
import s9_grading  # noqa: E402
import s10_nms  # noqa: E402

SECTIONS = {"throughput": s1_throughput, "versus": s2_versus, "pipeline": s3_pipeline,
            "scaling": s4_scaling, "roi_align": s5_roi_align, "flops": s6_flops,
            "demo": s7_demo, "grading": s9_grading, "nms": s10_nms}
"""The sections this script measures, by the name ``--sections`` takes, in the report's order."""
MEASURE_ORDER = ("demo", "throughput", "versus", "scaling", "roi_align", "pipeline", "flops",
                 "grading", "nms")
"""Pipeline and FLOPs read section 1's stored result, so they come after it."""
NOTES_MARKER = "<!-- hand-written notes below are kept by bench/run.py -->"


def script(module) -> str:
    return f"bench/{module.__name__}.py"


def _use_scratch_folder() -> None:
    """--smoke: write results and the report under a temporary folder (seeded with the stored
    results, so that sections not re-measured still render), never over the real ones."""
    scratch = os.environ.get("SEGKERAS_BENCH_SCRATCH") or tempfile.mkdtemp(prefix="bench_smoke_")
    shutil.copytree(common.PATHS["results"], os.path.join(scratch, "results"), dirs_exist_ok=True)
    if os.path.exists(common.PATHS["report"]):
        shutil.copy(common.PATHS["report"], os.path.join(scratch, "BENCHMARKS.md"))
    common.OPTIONS["smoke"] = True
    common.PATHS.update(results=os.path.join(scratch, "results"),
                        report=os.path.join(scratch, "BENCHMARKS.md"))


def _old_report() -> str:
    if not os.path.exists(common.PATHS["report"]):
        return ""
    with open(common.PATHS["report"], encoding="utf-8") as old:
        return old.read()


def _section(module, stored: dict | None) -> tuple[str, list[str] | None]:
    """The section's Markdown and its summary row (None when not measured yet)."""
    title = module.TITLE
    if stored is None:
        name = next(key for key, value in SECTIONS.items() if value is module)
        return (f"## {title}\n\nNot measured yet: `python bench/run.py --sections {name}` "
                f"(`{script(module)}`).", None)
    measured = stored["provenance"]["measured"]
    stale = common.staleness(measured, module.CODE)
    text = (f"## {title}\n\n" + (f"{stale}\n\n" if stale else "")
            + f"{common.provenance_line(stored['provenance'], script(module))}\n\n"
            + module.render(stored["data"]))
    number, compared = module.headline(stored["data"])
    return text, [title.split(".")[0], number, compared,
                  measured[:10] + (" (older than the code)" if stale else "")]


def _mask_rcnn_section() -> tuple[str, list[str] | None]:
    results = common.load_results("mask_rcnn")
    text = f"## {s8_mask_rcnn.TITLE}\n\n"
    if not results:
        return text + s8_mask_rcnn.render(results), None
    measured = s8_mask_rcnn.measured(results)
    stale = common.staleness(measured, s8_mask_rcnn.CODE)
    text += ((f"{stale}\n\n" if stale else "") + f"_Measured {measured[:10]} by "
             f"`{s8_mask_rcnn.MEASURED_BY[0]}` (each run's command is in "
             "`bench/results/mask_rcnn.json`); rendered by "
             f"`{script(s8_mask_rcnn)}`, never re-measured by `bench/run.py`._\n\n"
             + s8_mask_rcnn.render(results))
    number, compared = s8_mask_rcnn.headline(results)
    return text, ["8", number, compared,
                  measured[:10] + (" (older than the code)" if stale else "")]


def write_report(last_run: str) -> None:
    """BENCHMARKS.md from the stored results: header, summary table, sections, kept notes."""
    numbered = [(int(module.TITLE.split(".")[0]), _section(module, common.load_results(name)))
                 for name, module in SECTIONS.items()]
    numbered.append((int(s8_mask_rcnn.TITLE.split(".")[0]), _mask_rcnn_section()))
    ordered = [section for _, section in sorted(numbered, key=lambda item: item[0])]
    sections, rows = [text for text, _ in ordered], [row for _, row in ordered]
    summary = common.table(["section", "headline", "compared with", "measured"],
                           [row for row in rows if row])
    header = (f"# Benchmarks\n\nMachine: {common.machine()}\n\n{last_run}\n\n"
              "## Summary\n\nEach section's headline number, what it is held against, and when "
              "it was measured (the section says by which command and script). Regenerate with "
              "`make bench` (quick), `python bench/run.py --full`, or one section with "
              "`python bench/run.py --sections NAME` (`--help` lists them).\n\n" + summary + "\n")
    notes = _old_report().partition(NOTES_MARKER)[2] or "\n"
    with open(common.PATHS["report"], "w", encoding="utf-8") as report:
        report.write("\n\n".join([header, *sections]) + f"\n\n{NOTES_MARKER}{notes}")


def _parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<11} {module.TITLE} ({script(module)})"
                        for name, module in SECTIONS.items())
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"sections (--sections NAME ...):\n{listing}\n  (not measured here) "
               f"{s8_mask_rcnn.TITLE} ({script(s8_mask_rcnn)})")
    parser.add_argument("--full", action="store_true", help="every configuration, longer budgets")
    parser.add_argument("--sections", nargs="*", choices=tuple(SECTIONS), default=list(SECTIONS),
                        metavar="NAME", help="sections to measure (default: all); the others are "
                        "rendered from their stored results in bench/results/")
    parser.add_argument("--smoke", action="store_true",
                        help="every chosen section at a tiny setting, results and report in a "
                             "scratch folder (checks the scripts in a few minutes)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite BENCHMARKS.md from bench/results/")
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        _use_scratch_folder()
    if args.render:
        last = next((line.partition(" at its end.")[0] + " at its end."
                     for line in _old_report().splitlines() if line.startswith("Last run:")),
                    "Last run: none recorded.")
        write_report(last)
        print(f"wrote {os.path.normpath(common.PATHS['report'])} (nothing measured)")
        return
    from segkeras.calibration import matmul_gflops

    start = time.perf_counter()
    command = "python bench/run.py" + (" --full" if args.full else "") + (
        " --smoke" if args.smoke else "") + (
        "" if set(args.sections) == set(SECTIONS) else
        " --sections " + (" ".join(args.sections) or "(none)"))
    calibration = matmul_gflops()
    print(calibration, flush=True)
    for name in MEASURE_ORDER:
        if name in args.sections:
            print(SECTIONS[name].TITLE, flush=True)
            common.measure(name, command, calibration,
                           lambda module=SECTIONS[name]: module.measure(args.full))
    end = matmul_gflops()
    print(end, flush=True)
    write_report(f"Last run: {datetime.date.today()}, `{command}` "
                 f"({(time.perf_counter() - start) / 60:.1f} min); {calibration} at its start, "
                 f"{end.gflops:.0f} GFLOP/s (load average {end.load_average:.1f}) at its end.")
    print(f"wrote {os.path.normpath(common.PATHS['report'])} in "
          f"{(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
