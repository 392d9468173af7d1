"""NaN/inf inputs give NaN values and NaN gradients, never a silently finite number.

``jax.grad`` through ``jnp.where`` and through custom backward passes can turn a NaN input
into a finite gradient. The two identities here, each with a custom VJP, mark the lists that
had a non-finite score at a valid position: :func:`propagate_nonfinite` poisons the output
(and its cotangent), :func:`poison_cotangent` the cotangent of the scores.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

Array = jax.Array


def nonfinite_lists(scores: ArrayLike, where: ArrayLike | None) -> Array:
    """``[...]`` True for the lists (rows) with a NaN/inf entry at a valid position (``where``
    broadcasts against ``scores``: ``mask[:, None]`` selects whole rows)."""
    scores = jnp.asarray(scores)
    bad = ~jnp.isfinite(scores)
    if where is not None:
        bad = bad & jnp.asarray(where, bool)
    return jnp.any(bad, axis=-1)


def nonfinite_or_none(scores: Any, where: Any) -> Array | None:
    """:func:`nonfinite_lists` for well-formed floating inputs, else ``None`` (the function
    called next raises the shape or dtype error)."""
    try:
        s = jnp.asarray(scores)
    except (TypeError, ValueError):  # None, strings, objects
        return None
    if not jnp.issubdtype(s.dtype, jnp.floating) or s.ndim == 0:
        return None
    if where is not None and (np.shape(where) != s.shape or jnp.asarray(where).dtype != jnp.bool_):
        return None
    return nonfinite_lists(s, where)


@jax.custom_vjp
def _poison(x: Array, bad: Array) -> Array:
    return jnp.where(bad, jnp.nan, x)


def _poison_fwd(x, bad):
    return _poison(x, bad), bad


def _poison_bwd(bad, g):
    return jnp.where(bad, jnp.nan, g), None


_poison.defvjp(_poison_fwd, _poison_bwd)


@jax.custom_vjp
def poison_cotangent(scores: Array, bad_lists: Array) -> Array:
    """Identity whose cotangent is NaN on the lists marked bad (for custom-gradient losses,
    e.g. BlackBox AP, whose backward pass would turn a NaN cotangent into finite numbers)."""
    return scores


def _poison_cotangent_fwd(scores, bad_lists):
    return scores, bad_lists


def _poison_cotangent_bwd(bad_lists, g):
    return jnp.where(bad_lists[..., None], jnp.nan, g), None


poison_cotangent.defvjp(_poison_cotangent_fwd, _poison_cotangent_bwd)


def propagate_nonfinite(out: Array, bad_lists: Array) -> Array:
    """Makes ``out`` (and everything differentiated through it) NaN where an input was not finite.

    ``out`` is either per list (the shape of ``bad_lists``) or reduced (any other shape: it
    becomes NaN if any list is bad). The cotangent is NaN there too, so ``jax.grad`` of a loss
    of non-finite scores is non-finite instead of a silently finite, wrong number.
    """
    out = jnp.asarray(out)
    bad = bad_lists if out.shape == bad_lists.shape else jnp.broadcast_to(jnp.any(bad_lists), out.shape)
    if not jnp.issubdtype(out.dtype, jnp.floating):
        return out
    return _poison(out, bad)
