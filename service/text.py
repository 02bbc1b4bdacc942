"""Wording shared by messages and command output."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in the number it takes: ``counted(1, "slice")`` is "1 slice",
    ``counted(2, "study", "studies")`` is "2 studies" (the plural defaults to noun + "s")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
