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


def positive_int(text: str) -> int:
    """``"4096"`` -> 4096; at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def ints(text: str) -> list[int]:
    """``"1024,4096"`` -> ``[1024, 4096]``; each at least 1."""
    return [positive_int(item) for item in _items(text)]


def ints_or_none(text: str) -> list[int]:
    """As :func:`ints`, with ``""`` -> ``[]`` (a flag whose empty value skips a section)."""
    return [positive_int(item) for item in _items(text, empty_ok=True)]


def fractions(text: str) -> list[float]:
    """``"0.4,0.5"`` -> ``[0.4, 0.5]``; each in ``(0, 1]``."""
    out = []
    for item in _items(text):
        try:
            value = float(item)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 1:  # also refuses nan
            raise argparse.ArgumentTypeError(f"expected fractions in (0, 1], got {item!r} in {text!r}")
        out.append(value)
    return out


def size(text: str, min_rows: int = 1) -> tuple[int, int]:
    """``"60000x512"`` -> ``(60000, 512)``: rows x columns, at least ``min_rows`` x 1."""
    try:
        n, d = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two integers joined by x, such as 60000x512, got {text!r}"
        ) from None
    if n < min_rows or d < 1:
        raise argparse.ArgumentTypeError(f"expected at least {min_rows} rows and 1 column, got {text!r}")
    return n, d


def sizes(text: str) -> list[tuple[int, int]]:
    """``"20000x128,60000x512"`` -> ``[(20000, 128), (60000, 512)]``."""
    return [size(item) for item in _items(text)]


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
