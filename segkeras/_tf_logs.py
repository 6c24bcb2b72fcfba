"""TensorFlow's import-time INFO lines, kept off stderr.

TensorFlow >= 2.19 writes INFO lines from C++ ("oneDNN custom operations are on", "Could not find
cuda drivers") straight to file descriptor 2 when it loads, even with TF_CPP_MIN_LOG_LEVEL=3
(tensorflow/tensorflow#100442). ``import segkeras`` loads Keras (and so TensorFlow) to register its
serializable classes; the command line promises one line on stderr per error. Warnings and errors
(absl ``W``/``E``/``F`` lines) and anything else written meanwhile are passed on.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

_ABSL_LINE = re.compile(r"^([IWEF])\d{4} ")
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"


def _without_info(text: str) -> str:
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        prefix = _ABSL_LINE.match(line)
        if prefix:
            dropping = prefix.group(1) == "I"
        elif line.startswith(_ABSL_NOTICE):
            dropping = True
        # else: a continuation line goes with the line it continues
        if not dropping:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def info_lines_dropped():
    """Capture file descriptor 2 meanwhile; afterwards write it back without absl INFO lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            sys.stderr.write(_without_info(capture.read().decode(errors="replace")))
            sys.stderr.flush()
