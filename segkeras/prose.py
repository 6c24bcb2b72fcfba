"""Numbers in a notebook's prose that come from its own outputs, and whether they still agree.

A number in a markdown cell that a run produced is followed by an HTML comment naming where it
comes from (students see the rendered markdown, not the comment)::

    FCN-8s ends at 0.77<!-- from: fcn8s: * 0.700 before training, {} after --> mean IoU.

The comment holds a **pattern** of the start of a line the notebook's code cells printed: ``{}``
is the number, ``*`` any text within the line, spaces any whitespace; a pattern without ``{}`` is
a key, short for ``key = {}`` (a cell that prints ``fcn8s_miou = 0.773``). The claim's source is
the nearest code cell above it whose output has a matching line (the first such line there).
:func:`disagreements` lists the claims whose number differs from that output at the prose's
precision (0.77 agrees with 0.773, not with 0.781) and those whose pattern matches no output
line above them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import nbformat

NUMBER = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_CLAIM = re.compile(rf"({NUMBER})(%?)\s*<!--\s*from:\s*(.+?)\s*-->")


@dataclass(frozen=True)
class Claim:
    """A number in the prose (as written) and the pattern of the output it comes from."""

    cell: int
    written: str
    pattern: str

    @property
    def decimals(self) -> int:
        return len(self.written.partition(".")[2])

    @property
    def value(self) -> float:
        return float(self.written.replace(",", ""))


def claims(notebook: nbformat.NotebookNode) -> list[Claim]:
    """Every marked number of the markdown cells, in order."""
    return [Claim(index, match.group(1), match.group(3))
            for index, cell in enumerate(notebook.cells) if cell.cell_type == "markdown"
            for match in _CLAIM.finditer(cell.source)]


def output_text(cell: nbformat.NotebookNode) -> str:
    """What a code cell printed (streams and plain-text results), one string."""
    parts = []
    for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif "text/plain" in output.get("data", {}):
            parts.append(output["data"]["text/plain"])
    return "\n".join(parts)


def source(notebook: nbformat.NotebookNode, claim: Claim) -> str | None:
    """The number the claim's pattern finds in the nearest code cell above it (None if none)."""
    regex = pattern_regex(claim.pattern)
    for cell in reversed(notebook.cells[:claim.cell]):
        found = regex.search(output_text(cell))
        if found is not None:
            return found.group(1)
    return None


def pattern_regex(pattern: str) -> re.Pattern:
    """The regular expression of an output pattern (``{}`` the number, ``*`` any text)."""
    if "{}" not in pattern:
        pattern = f"{pattern} = {{}}"
    if pattern.count("{}") != 1:
        raise ValueError(f"the pattern {pattern!r} must mark one number with {{}}")
    parts = [r"^[ \t]*"]  # the start of a line
    for piece in re.split(r"(\{\}|\*|\s+)", pattern):
        if piece == "{}":
            parts.append(f"({NUMBER})")
        elif piece == "*":
            parts.append(".*?")
        elif piece and piece.isspace():
            parts.append(r"\s+")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts), re.MULTILINE)


def disagreements(notebook: nbformat.NotebookNode) -> list[str]:
    """One line per claim that its notebook's outputs do not back (empty: prose and outputs
    agree)."""
    problems = []
    for claim in claims(notebook):
        where = f"cell {claim.cell}: {claim.written} <!-- from: {claim.pattern} -->"
        found = source(notebook, claim)
        if found is None:
            problems.append(f"{where}: no output line above it matches the pattern")
        elif abs(float(found.replace(",", "")) - claim.value) \
                > 0.5 * 10.0 ** -claim.decimals + 1e-12:
            problems.append(f"{where}: the output says {found}")
    return problems
