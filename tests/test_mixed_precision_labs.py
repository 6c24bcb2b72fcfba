"""The path students take on a GPU: every solution's exercises and checks under mixed_float16.

Run by .ci/run's mixed-precision pass (``SEGKERAS_PRECISION=mixed_float16``), skipped otherwise.
Executing the whole notebooks in float16 takes ~20 minutes on a CPU (float16 is emulated), so this
runs each solution's setup, the code the exercises need (imports, parameters, definitions), the
exercise cells and their checks — not the training runs — and requires full marks.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

SOLUTIONS = sorted((Path(__file__).parent.parent / "solutions").glob("*.ipynb"))
CHECK_CALL = re.compile(r"^checks\.(\w+\.)?\w+\(", re.MULTILINE)
_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)

pytestmark = pytest.mark.skipif(
    os.environ.get("SEGKERAS_PRECISION") != "mixed_float16",
    reason="CI's mixed-precision pass sets SEGKERAS_PRECISION=mixed_float16")


def _code(cell) -> str:
    """A cell's Python, without IPython magics."""
    return "\n".join(line for line in cell.source.splitlines()
                     if not line.lstrip().startswith(("%", "!")))


def _only_definitions(code: str) -> bool:
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(node, _DEFINITIONS) for node in body)


def exercise_script(path: Path) -> str:
    """The cells of ``path`` that the exercises and their checks need, as one script."""
    cells = [cell for cell in nbformat.read(path, as_version=4).cells
             if cell.cell_type == "code" and "setup" not in cell.metadata.get("tags", [])]
    parameters = next(i for i, cell in enumerate(cells)
                      if "parameters" in cell.metadata.get("tags", []))
    chosen = []
    for index, cell in enumerate(cells):
        code = _code(cell)
        if (index in (parameters, parameters + 1) or "### BEGIN SOLUTION" in code
                or CHECK_CALL.search(code) or _only_definitions(code)):
            chosen.append(code)
    return "\n\n".join(chosen) + (
        "\n\npoints, maximum = checks.total()\n"
        "assert points == maximum, f'{points}/{maximum} under mixed_float16'\n")


@pytest.mark.parametrize("path", SOLUTIONS, ids=[path.stem for path in SOLUTIONS])
def test_exercises_pass_under_mixed_float16(path, tmp_path):
    script = tmp_path / f"{path.stem}.py"
    script.write_text(exercise_script(path), encoding="utf-8")
    environment = dict(os.environ, SEGKERAS_QUICK="1", SEGKERAS_WEIGHTS="none",
                       SEGKERAS_PRECISION="mixed_float16", MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, str(script)], cwd=path.parent, env=environment,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "mixed_float16" in result.stdout or "✓" in result.stdout
