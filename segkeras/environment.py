"""Switches the labs read from the environment, parsed in one place: a value the labs do not know
is refused in one line, never silently read as "off"."""

from __future__ import annotations

from segkeras.errors import SegkerasError

ON, OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def quick_mode(value) -> bool:
    """A lab's ``QUICK`` parameter (the ``SEGKERAS_QUICK`` environment variable's text, or a
    papermill value) as a bool: 1/true/yes/on (any case) turn the quick mode on; 0/false/no/off,
    empty or unset leave it off; anything else is a SegkerasError."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ON or text in OFF:
        return text in ON
    raise SegkerasError(f"SEGKERAS_QUICK={value!r} is neither on (1, true, yes) nor off (0, false, "
                        "no); set one of those, or leave it unset for the full lab")
