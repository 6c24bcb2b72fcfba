"""Behavioural checks for the lab exercises: each builds or runs the student's answer and tests
what it must do, printing ✓ or ✗ with the points and, on ✗, a hint.

Usage in a notebook::

    from segkeras import checks
    checks.fcn.convolutionize(my_function)   # one check after each exercise
    checks.total()                           # last cell: the score so far

One module per lab, all sharing :mod:`segkeras.checks.core`.
"""

from segkeras.checks import deconv, fcn, hourglass, mask_head, unet
from segkeras.checks.core import CheckFailed, CheckResult, reset, results, total

__all__ = [
    "CheckFailed", "CheckResult", "deconv", "fcn", "hourglass", "mask_head", "reset", "results",
    "total", "unet",
]
