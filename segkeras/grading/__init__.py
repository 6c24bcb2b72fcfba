"""The grader: each answer runs where the judge cannot be reached (a worker process), the judge
compares in the grading process with references only it holds. In the notebook the same judges
give feedback through :class:`~segkeras.grading.answer.LocalAnswer`."""
