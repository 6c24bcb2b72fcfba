"""Files that are never half-written: every write goes to a temporary file in the target's own
folder, is flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX and
Windows), so a kill at any moment leaves either the old file or the new one, never a truncated one.

Shared by the CLI, training, the grader and the labs (DESIGN.md, "Runs and files").
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write to (by any library: ``model.save``,
    ``figure.savefig``...); on success it replaces ``target`` in one step, on error it is removed
    and ``target`` is untouched. The temporary name keeps ``target``'s suffix, which some writers
    check (``.keras``, ``.png``)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}",
                                    dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as written:  # on disk before the rename makes it visible
            os.fsync(written.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically; returns ``target`` as a Path."""
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``target`` atomically; returns ``target`` as a Path."""
    return atomic_write_bytes(target, text.encode(encoding))
