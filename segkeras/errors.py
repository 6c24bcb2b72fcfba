"""Errors segkeras raises for problems the user can fix; each message says how."""


class SegkerasError(ValueError):
    """Bad input or a missing resource. The message is one line that says what to do."""


class WeightsUnavailableError(SegkerasError):
    """Pretrained weights are neither cached nor downloadable (e.g. offline)."""


class DataUnavailableError(SegkerasError):
    """A dataset is neither on disk nor downloadable (e.g. offline)."""
