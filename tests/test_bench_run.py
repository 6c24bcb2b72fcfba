"""bench/run.py: --help lists every section with its script, and rendering the stored results
(nothing measured, into a scratch folder) gives a summary table and sections that each name the
script and date that made them."""

import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
BENCH = os.path.join(ROOT, "bench")


def run(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def section_scripts() -> list[str]:
    """The section scripts bench/run.py drives: bench/sN_KEY.py, one per section number."""
    # Scripts that a section's own commands run (long measurements), not bench/run.py:
    helpers = r"_(runs|train|torchvision|record|sweep|multiscale)\.py$"
    return sorted(name for name in os.listdir(BENCH)
                  if re.fullmatch(r"s\d+_[a-z_]+\.py", name) and not re.search(helpers, name))


def test_help_lists_every_section_and_its_script():
    done = run("--help")
    assert done.returncode == 0, done.stderr
    for script in section_scripts():
        assert f"(bench/{script})" in done.stdout, script
    assert len(section_scripts()) == 10


def test_render_writes_a_summary_and_dated_sections_naming_their_scripts(tmp_path):
    done = run("--smoke", "--render", env={"SEGKERAS_BENCH_SCRATCH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "BENCHMARKS.md").read_text()
    summary = report.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in summary.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [row.split("|")[1].strip() for row in rows] == [str(n) for n in range(1, 11)]
    assert all(re.search(r"\| 20\d\d-\d\d-\d\d", row) for row in rows)
    sections = re.split(r"\n## (?=\d+\. )", report)[1:]
    assert len(sections) == 10
    for section in sections:
        assert re.search(r"Measured 20\d\d-\d\d-\d\d", section), section[:80]
        assert re.search(r"`bench/s\d+_[a-z_]+\.py`", section), section[:80]
    assert "## Notes (hand-written" in report  # the notes are kept
