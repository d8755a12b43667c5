"""Exceptions scadv raises for bad input."""

from __future__ import annotations


class ScadvInputError(ValueError):
    """The input cannot be used as given; the message names the problem and the fix.

    Subclasses :class:`ValueError` so ``except ValueError`` keeps working.
    """
