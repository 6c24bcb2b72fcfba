"""Behavioural checks for the lab exercises: each builds or runs the student's answer and tests
what it must do, printing ✓ or ✗ with the points and, on ✗, a hint.

Usage in a notebook::

    from segkeras import checks
    checks.fcn.start()                       # first cell: the lab's exercises and points
    checks.fcn.convolutionize(my_function)   # one check after each exercise
    checks.total()                           # last cell: the score out of the lab's total

One module per lab, all sharing :mod:`segkeras.checks.core`. These checks are feedback: the
grade comes from :mod:`segkeras.grading`, which runs the same judges on each answer out of the
student's kernel.
"""

from segkeras.checks import deconv, detection, fcn, hourglass, mask_head, unet
from segkeras.checks.core import (
    CheckFailed,
    CheckResult,
    Lab,
    reset,
    results,
    total,
)

__all__ = [
    "CheckFailed", "CheckResult", "Lab", "deconv", "detection", "fcn",
    "hourglass", "mask_head", "reset", "results", "total", "unet",
]
