"""Shared wording for one-line model errors, so every spec form suggests and quotes the same way."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """``"; closest: a, b"`` for a mistyped name, or ``""``: appended to an error so the fix is one edit away."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f"; closest: {', '.join(matches)}" if matches else ""


def first_line(err: BaseException) -> str:
    """The first line of an exception's text (or its type): library errors can span many lines, ours span one."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
