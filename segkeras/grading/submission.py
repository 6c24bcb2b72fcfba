"""Reading notebooks for the grader: which statements of a cell define things (the lab setup and
the answers keep only those), the lab's grading spec, and each exercise's answer source in a
submitted notebook."""

from __future__ import annotations

import ast
import builtins
import json
from importlib import resources
from pathlib import Path

import nbformat

from segkeras.errors import SegkerasError

SOLUTION_MARK = "### BEGIN SOLUTION"


def python_source(cell_source: str) -> str:
    """A cell's source as plain Python: IPython magics become ``get_ipython()`` calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(cell_source)


def _calls(node: ast.AST) -> bool:
    return any(isinstance(child, ast.Call) for child in ast.walk(node))


def _plain_targets(targets) -> bool:
    """Assignment targets that are names (or tuples of names), not attributes or items."""
    return all(isinstance(target, ast.Name)
               or (isinstance(target, (ast.Tuple, ast.List)) and _plain_targets(target.elts))
               for target in targets)


def definitions(source: str, drop_functions=(), drop_imports=("checks",),
                defined: set[str] | None = None) -> str:
    """The statements of ``source`` that define things: imports (minus the names in
    ``drop_imports``), functions and classes (minus ``drop_functions``), and assignments to plain
    names whose value calls nothing (constants; with ``defined``, the names defined so far, only
    those whose value reads defined names, and ``defined`` grows). Everything else (calls,
    attribute or item assignments, loops...) is left out. A cell that does not parse gives
    ``""``."""
    try:
        tree = ast.parse(python_source(source))
    except SyntaxError:
        return ""
    known = set(dir(builtins)) | (defined if defined is not None else set())
    kept = []
    for node in tree.body:
        names: set[str] = set()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            node.names = [alias for alias in node.names
                          if (alias.asname or alias.name).split(".")[0] not in drop_imports]
            if not node.names:
                continue
            names = {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            evaluated = [*node.decorator_list, *getattr(node, "bases", ())]
            if not isinstance(node, ast.ClassDef):
                evaluated += [*node.args.defaults, *filter(None, node.args.kw_defaults)]
            reads = {child.id for value in evaluated for child in ast.walk(value)
                     if isinstance(child, ast.Name)}
            if node.name in drop_functions or (defined is not None and not reads <= known):
                continue
            names = {node.name}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None \
                and not _calls(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            reads = {child.id for child in ast.walk(node.value) if isinstance(child, ast.Name)}
            if not _plain_targets(targets) or (defined is not None and not reads <= known):
                continue
            names = {child.id for target in targets for child in ast.walk(target)
                     if isinstance(child, ast.Name)}
        else:
            continue
        known |= names
        if defined is not None:
            defined |= names
        kept.append(node)
    return "\n".join(("\n\n" + ast.unparse(node) + "\n\n")
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     else ast.unparse(node) for node in kept).strip()


def check_arguments(source: str) -> tuple[str, str, list[str]] | None:
    """``(lab module, check, [function names])`` if the cell is one ``checks.<lab>.<check>(f, ...)``
    call, else None."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        return None
    call = tree.body[0].value
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
        return None
    owner = call.func.value
    if isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name) \
            and owner.value.id == "checks":
        names = [arg.id for arg in call.args if isinstance(arg, ast.Name)]
        return owner.attr, call.func.attr, names
    return None


def _is_solution(cell) -> bool:
    grading = cell.get("metadata", {}).get("nbgrader", {})
    return bool(grading.get("solution")) or SOLUTION_MARK in cell.source


def lab_setup(notebook: nbformat.NotebookNode, exercise_functions) -> str:
    """The code a worker runs before an answer: the parameters cell (QUICK forced on), then the
    definitions (:func:`definitions`) of every code cell, without the exercises' functions."""
    parts, defined = [], set()
    for cell in notebook.cells:
        if cell.cell_type != "code" or "setup" in cell.get("metadata", {}).get("tags", []):
            continue
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            parts.append(python_source(cell.source).strip() + "\nQUICK = True")
            defined |= _assigned(cell.source)
            continue
        kept = definitions(cell.source, drop_functions=exercise_functions, defined=defined)
        if kept:
            parts.append(kept)
    return "\n\n".join(parts) + "\n"


def grading_spec(notebook: nbformat.NotebookNode, name: str) -> tuple[str, dict]:
    """``(setup source, spec)`` of a solution notebook; the spec: the lab's name, its checks
    module, and each exercise's function names, points and parts."""
    from segkeras.checks import core

    module, exercises = None, {}
    for cell in notebook.cells:
        found = check_arguments(cell.source) if cell.cell_type == "code" else None
        if found is None or found[1] in ("start", "total", "use", "guard"):
            continue
        module, check_name, functions = found
        check = getattr(core.lab_module(module), check_name)
        exercises[check.exercise] = functions or [check.exercise]
    if module is None:
        raise SegkerasError(f"{name}: no checks.<lab>.<exercise>(...) cell: nothing to grade")
    lab = core.lab_module(module).LAB
    spec = {"lab": lab.name, "module": module, "notebook": name,
            "exercises": {exercise: {"functions": exercises.get(exercise, [exercise]),
                                     "points": lab.exercises[exercise],
                                     "parts": lab.parts[exercise]}
                          for exercise in lab.exercises}}
    functions = [function for info in spec["exercises"].values() for function in info["functions"]]
    return lab_setup(notebook, functions), spec


def lab_name(lab: str) -> str:
    """The lab's name (``06_boxes_to_masks``) from it or its checks module's (``detection``)."""
    from segkeras.checks import core

    try:
        return core.lab_module(lab).LAB.name
    except KeyError:
        known = ", ".join(f"{name}" for name in core.labs())
        raise SegkerasError(f"no lab {lab!r}: one of {known}") from None


def shipped(lab: str) -> tuple[str, dict]:
    """The shipped ``(setup source, spec)`` of lab ``lab`` (``segkeras/resources/grading``)."""
    folder = resources.files("segkeras") / "resources" / "grading"
    lab = lab_name(lab)
    try:
        setup = (folder / f"{lab}.py").read_text(encoding="utf-8")
        spec = json.loads((folder / f"{lab}.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = sorted(Path(str(path)).stem for path in folder.iterdir()
                       if str(path).endswith(".json")) if folder.is_dir() else []
        raise SegkerasError(f"no grading setup for lab {lab!r}: one of {', '.join(known)} "
                            "(or run `python -m segkeras.notebooks`)") from None
    return setup, spec


def lab_of(notebook: nbformat.NotebookNode, trust_metadata: bool = True) -> str | None:
    """The lab a notebook belongs to: its ``metadata.segkeras.lab`` (unless not
    ``trust_metadata``), else its check cells'."""
    stamped = notebook.get("metadata", {}).get("segkeras", {}).get("lab")
    if stamped and trust_metadata:
        return str(stamped)
    from segkeras.checks import core

    for cell in notebook.cells:
        found = check_arguments(cell.source) if cell.cell_type == "code" else None
        if found is not None:
            try:
                return core.lab_module(found[0]).LAB.name
            except KeyError:
                continue
    return None


def answer_sources(notebook: nbformat.NotebookNode, spec: dict) -> dict[str, str | None]:
    """Each exercise's answer in a submitted notebook: the definitions (:func:`definitions`) of
    its solution cells (nbgrader ``grade_id`` one of the exercise's function names), else of the
    last code cell defining each function; None if no cell defines them."""
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    sources = {}
    for exercise, info in spec["exercises"].items():
        names = info["functions"]
        cells = [cell for cell in code if _is_solution(cell)
                 and cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") in names]
        if not cells:
            for name in names:
                defining = [cell for cell in code
                            if f"def {name}(" in cell.source
                            and name in _defined(cell.source)]
                if defining and defining[-1] not in cells:
                    cells.append(defining[-1])
            cells.sort(key=code.index)
        kept = [definitions(cell.source) if _parses(cell.source) else python_source(cell.source)
                for cell in cells]  # a syntax error is the answer's to report
        sources[exercise] = "\n\n".join(kept) + "\n" if any(kept) else None
    return sources


def _assigned(source: str) -> set[str]:
    tree = ast.parse(python_source(source))
    return {child.id for child in ast.walk(tree)
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store)}


def _parses(source: str) -> bool:
    try:
        ast.parse(python_source(source))
    except SyntaxError:
        return False
    return True


def _defined(source: str) -> set[str]:
    try:
        tree = ast.parse(python_source(source))
    except SyntaxError:
        return set()
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
