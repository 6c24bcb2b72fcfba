"""Behavioural checks for the lab exercises: each builds or runs the student's answer and tests
what it must do, printing ✓ or ✗ with the points and, on ✗, a hint.

Usage in a notebook::

    from segkeras import checks
    checks.fcn.score_layer(my_score_layer)   # one check after each exercise
    checks.total()                           # last cell: the score so far

One module per lab (``checks.fcn``, ``checks.deconv``, ...), all sharing :mod:`segkeras.checks.core`.
"""

from segkeras.checks.core import CheckFailed, CheckResult, reset, results, total

__all__ = ["CheckFailed", "CheckResult", "reset", "results", "total"]
