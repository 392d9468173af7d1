"""Deprecated argument spellings, mapped to the current names in one place.

The vocabulary rule (``docs/losses.md``, "One vocabulary"): the temperature of a sigmoid
applied to score differences is ``temperature`` everywhere (as in optax, rax and
pytorch-metric-learning); the second temperature of the recall surrogates, applied to
``k - rank``, is ``k_temperature``. ``tau``, ``tau1`` and ``tau2`` are accepted for one
release with a ``DeprecationWarning``.

:func:`rename_kwargs` is called by ``rankax._core.listfn.list_function`` (every public list loss and
metric), by the batch statistics path and by ``rankax.ranking``'s step functions, so a loss
module only spells the new names.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Container
from typing import Any

from rankax._core import validation

# old spelling -> new name (applied only where the function takes the new name)
DEPRECATED: dict[str, str] = {
    "tau": "temperature",
    "tau1": "temperature",
    "tau2": "k_temperature",
}
REMOVAL = "rankax 0.3"


def new_name(old: str, params: Container[str]) -> str | None:
    """The current name of the deprecated argument ``old`` of a function taking ``params``."""
    new = DEPRECATED.get(old)
    return new if new is not None and new in params and old not in params else None


def rename_kwargs(
    fn_name: str, params: Container[str], kwargs: dict[str, Any], *, warn: bool = True, stacklevel: int = 3
) -> dict[str, Any]:
    """``kwargs`` with deprecated spellings replaced by the names ``params`` takes (a
    ``DeprecationWarning`` unless ``warn=False``, attributed to the frame ``stacklevel`` levels
    up: 3, the caller of the public function that called this one). Two spellings of one
    argument at once (``tau`` and ``temperature``, or ``tau`` and ``tau1``) raise ``TypeError``."""
    if not any(k in DEPRECATED for k in kwargs):
        return kwargs
    renames = {old: new for old in kwargs if (new := new_name(old, params)) is not None}
    for old, new in renames.items():  # every conflict first: no warning before the error
        if new in kwargs or list(renames.values()).count(new) > 1:
            raise TypeError(f"{fn_name}() got {old!r} and another spelling of {new!r}; pass {new!r} only")
    out = dict(kwargs)
    for old, new in renames.items():
        if warn:
            warnings.warn(
                f"{fn_name}(): argument {old!r} is deprecated, use {new!r} (the old spelling goes in "
                f"{REMOVAL})",
                DeprecationWarning,
                stacklevel=stacklevel,
            )
        out[new] = out.pop(old)
    return out


def accepts_deprecated(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator of public functions that are not list losses or metrics: ``fn`` also accepts
    the deprecated spellings of its keyword arguments, and an unknown keyword raises
    ``TypeError`` naming the closest argument (as ``list_function`` does for the list API)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs = rename_kwargs(fn.__name__, signature.parameters, kwargs)
        validation.bind(fn.__name__, signature, args, kwargs)
        return fn(*args, **kwargs)

    return wrapper
