"""``argparse`` types of the experiment scripts' list and size flags.

Each parses one flag's text or raises ``argparse.ArgumentTypeError``, which ``argparse``
prints as ``error: argument --flag: <message>`` with exit status 2 (a usage error, not a
traceback). ``argparse`` applies a ``type`` to a string default too, so a script's default
is written as the user would type it (``default="1024,4096"``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable


def _items(text: str, empty_ok: bool = False) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items and not empty_ok:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """``"4096"`` -> 4096; at least 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """``"0"`` -> 0; at least 0 (where 0 means none)."""
    return _int_at_least(text, 0)


def fractions(text: str) -> list[float]:
    """``"0.4,0.5"`` -> ``[0.4, 0.5]``; each in ``(0, 1]`` (``""`` -> ``[]``: none)."""
    out = []
    for item in _items(text, empty_ok=True):
        try:
            value = float(item)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 1:  # also refuses nan
            raise argparse.ArgumentTypeError(f"expected fractions in (0, 1], got {item!r} in {text!r}")
        out.append(value)
    return out


def multiple(m: int) -> Callable[[str], int]:
    """A type for an integer that is a positive multiple of ``m``."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value % m:
            raise argparse.ArgumentTypeError(f"expected a multiple of {m}, got {text!r}")
        return value

    return parse


def multiples(m: int, empty_ok: bool = False) -> Callable[[str], list[int]]:
    """A type for ``"a,b"`` lists of positive multiples of ``m`` (``""`` -> ``[]`` when ``empty_ok``)."""
    one = multiple(m)
    return lambda text: [one(item) for item in _items(text, empty_ok)]


def size(text: str, min_first: int = 1) -> tuple[int, int]:
    """``"60000x512"`` -> ``(60000, 512)``: two integers, at least ``min_first`` and 1."""
    try:
        n, d = (int(v) for v in text.strip().lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two integers joined by x, such as 60000x512, got {text!r}"
        ) from None
    if n < min_first or d < 1:
        raise argparse.ArgumentTypeError(f"expected at least {min_first}x1, got {text!r}")
    return n, d


def sizes(text: str, min_first: int = 1, empty_ok: bool = False) -> list[tuple[int, int]]:
    """``"20000x128,60000x512"`` -> ``[(20000, 128), (60000, 512)]``."""
    return [size(item, min_first) for item in _items(text, empty_ok)]


def names(valid: Iterable[str], empty_ok: bool = False) -> Callable[[str], list[str]]:
    """A type for ``"a,b"`` lists whose items are all in ``valid`` (``""`` -> ``[]`` when
    ``empty_ok``, as for a ``--skip`` flag)."""
    valid = tuple(valid)

    def parse(text: str) -> list[str]:
        items = _items(text, empty_ok)
        unknown = [item for item in items if item not in valid]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
        return items

    return parse
