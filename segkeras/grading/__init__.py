"""The grader: each answer runs where the judge cannot be reached (a worker process), the judge
compares in the grading process with references only it holds. In the notebook the same judges
give feedback through :class:`~segkeras.grading.answer.LocalAnswer`."""

# The lab modules import this package's answer and probes; loading them first keeps the import
# order one way round whichever module is imported first.
import segkeras.checks  # noqa: E402, F401
