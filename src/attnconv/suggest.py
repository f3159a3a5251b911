"""The "did you mean" of every error message about an unknown name (model, option, config key)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The choice most similar to ``word`` (``difflib`` ratio >= ``cutoff``), or None."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str], *, cutoff: float = 0.5) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    match = closest(word, choices, cutoff=cutoff)
    return "" if match is None else f" (did you mean {match!r}?)"
