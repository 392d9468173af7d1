"""Input checking, positive-capacity handling and reduction shared by list-level functions.

Every list-level loss and metric of rankax has the signature

    fn(scores, labels, *, where=None, reduce_fn=jnp.mean, max_positives=None, **hparams)

with lists on the last axis. This module holds the parts of that contract that are the same
for all of them, so that a loss module contains only its formula.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rankax import ranking

Array = jax.Array
ReduceFn = Callable[..., Array] | None

# A kernel maps (scores, labels, where, positives) of lists [..., N] to per-list values [...].
Kernel = Callable[[Array, Array, Array, ranking.Positives], Array]


# Set (at trace time) by callers that have already checked that no list has more positives
# than ``max_positives`` -- ``rankax.batch_loss`` dispatches on the true count itself. Inside,
# ``apply_kernel`` does not build its ``N``-slot fallback branch: XLA sizes a ``lax.cond`` for
# its larger branch, so the unused fallback would cost ``O(N^2)`` memory per list.
_CAPACITY_CHECKED = contextvars.ContextVar("rankax_capacity_checked", default=False)


@contextlib.contextmanager
def capacity_checked() -> Iterator[None]:
    """Trace-time context: the caller guarantees ``max_positives`` is never exceeded."""
    token = _CAPACITY_CHECKED.set(True)
    try:
        yield
    finally:
        _CAPACITY_CHECKED.reset(token)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_lists(
    scores: ArrayLike,
    labels: ArrayLike,
    where: ArrayLike | None,
    *,
    graded: bool = False,
) -> tuple[Array, Array, Array]:
    """Validates and normalises the three list arrays.

    Scores are computed in float32 at least (bfloat16/float16 inputs are upcast, so sums of
    many smooth steps keep their precision); labels become float32 relevances; ``where``
    becomes boolean (all True when None).

    Raises:
      TypeError: ``scores`` is not a floating/integer array, or ``where`` is not boolean.
      ValueError: ``scores`` is a scalar; ``labels``/``where`` do not have the shape of
        ``scores``; concrete (non-traced) scores contain NaN/inf; concrete labels are negative.
    """
    scores_arr = jnp.asarray(scores)
    if not (jnp.issubdtype(scores_arr.dtype, jnp.floating) or jnp.issubdtype(scores_arr.dtype, jnp.integer)):
        raise TypeError(f"scores must be a real-valued array, got dtype {scores_arr.dtype}")
    if scores_arr.ndim == 0:
        raise ValueError("scores must have at least one axis (the list axis), got a scalar")
    scores_arr = scores_arr.astype(jnp.promote_types(scores_arr.dtype, jnp.float32))
    if jnp.issubdtype(scores_arr.dtype, jnp.integer):
        scores_arr = scores_arr.astype(jnp.float32)
    labels_arr = jnp.asarray(labels)
    if labels_arr.shape != scores_arr.shape:
        raise ValueError(f"labels must have the shape of scores {scores_arr.shape}, got {labels_arr.shape}")
    if labels_arr.dtype == jnp.bool_ or not jnp.issubdtype(labels_arr.dtype, jnp.floating):
        labels_arr = labels_arr.astype(jnp.float32)
    labels_arr = labels_arr.astype(jnp.promote_types(labels_arr.dtype, jnp.float32))
    if where is None:
        where_arr = jnp.ones(scores_arr.shape, dtype=bool)
    else:
        where_arr = jnp.asarray(where)
        if where_arr.shape != scores_arr.shape:
            raise ValueError(f"where must have the shape of scores {scores_arr.shape}, got {where_arr.shape}")
        if where_arr.dtype != jnp.bool_:
            raise TypeError(f"where must be a boolean mask, got dtype {where_arr.dtype}")
    if _is_concrete(scores_arr) and _is_concrete(where_arr):
        bad = ~np.isfinite(np.asarray(scores_arr)) & np.asarray(where_arr)
        if bad.any():
            raise ValueError(f"scores contain {int(bad.sum())} NaN/inf values at valid positions")
    if _is_concrete(labels_arr):
        lab = np.asarray(labels_arr)
        if np.isnan(lab).any() or (lab < 0).any():
            kind = "graded relevance" if graded else "binary labels"
            raise ValueError(f"labels must be {kind} >= 0 without NaN, got min {np.nanmin(lab)}")
    return scores_arr, labels_arr, where_arr


def check_capacity(max_positives: int | None) -> None:
    if max_positives is not None and (not isinstance(max_positives, int | np.integer) or max_positives < 1):
        raise ValueError(f"max_positives must be a positive int or None, got {max_positives!r}")


def has_positive(labels: Array, where: Array) -> Array:
    """``[...]`` True for lists with at least one valid item of relevance > 0."""
    return jnp.any((labels > 0) & where, axis=-1)


def apply_kernel(
    kernel: Kernel,
    scores: Array,
    labels: Array,
    where: Array,
    max_positives: int | None,
) -> Array:
    """Runs ``kernel`` on the positives gathered to ``max_positives`` slots, exactly.

    ``max_positives=None`` uses ``N`` slots (always exact, ``O(N^2)`` per list). With a
    smaller capacity the cost is ``O(C * N)`` per list; if some list has more positives than
    slots the whole call takes the exact ``N``-slot path instead (``lax.cond``), so positives
    are never dropped -- a capacity that is too small costs time, never correctness.
    """
    check_capacity(max_positives)
    n = scores.shape[-1]

    def run(capacity: int) -> Array:
        positives, _ = ranking.gather_positives(scores, labels, where, capacity)
        return kernel(scores, labels, where, positives)

    if max_positives is None or max_positives >= n:
        return run(n)
    if _CAPACITY_CHECKED.get():
        return run(max_positives)
    num_pos = jnp.sum((labels > 0) & where, axis=-1)
    overflow = jnp.any(num_pos > max_positives)
    return jax.lax.cond(overflow, lambda: run(n), lambda: run(max_positives))


def reduce_lists(values: Array, valid: Array, reduce_fn: ReduceFn) -> Array:
    """Reduces per-list values over the valid lists.

    ``reduce_fn=jnp.mean`` divides by the number of valid lists (0 when there is none);
    ``None`` returns the per-list values with 0 for invalid lists; any other callable is
    called as ``reduce_fn(values, where=valid)`` (``jnp.sum`` works).
    """
    values = jnp.where(valid, values, 0.0)
    if reduce_fn is None:
        return values
    if reduce_fn is jnp.mean:
        return jnp.sum(values) / jnp.maximum(jnp.sum(valid), 1)
    return reduce_fn(values, where=valid)


def safe_divide(num: Array, den: Array) -> Array:
    """``num / den`` with 0 where ``den == 0`` and a gradient that stays finite there."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def kernel_lists(
    kernel: Kernel,
    scores: ArrayLike,
    labels: ArrayLike,
    where: ArrayLike | None,
    reduce_fn: ReduceFn,
    max_positives: int | None,
    *,
    graded: bool = False,
) -> Array:
    """Checks inputs, runs ``kernel`` on gathered positives (exactly), reduces over lists.

    The whole body of a gathered-positives metric or loss (``rankax.metrics``,
    ``rankax.losses._base.list_loss``).
    """
    scores, labels, where = check_lists(scores, labels, where, graded=graded)
    values = apply_kernel(kernel, scores, labels, where, max_positives)
    return reduce_lists(values, has_positive(labels, where), reduce_fn)


def num_positives(labels: Array, where: Array) -> Array:
    """``[...]`` float number of valid items with relevance > 0."""
    return jnp.sum((labels > 0) & where, axis=-1).astype(jnp.float32)


def ap_from_ranks(rank: Array, rank_pos: Array, positives: ranking.Positives) -> Array:
    """Mean of ``rank_pos / rank`` over the filled slots of each list (``[..., C] -> [...]``).

    With exact ranks this is average precision; empty slots neither count nor divide (the
    guard keeps gradients finite there)."""
    ratio = jnp.where(positives.mask, rank_pos / jnp.where(positives.mask, rank, 1.0), 0.0)
    return safe_divide(jnp.sum(ratio, axis=-1), jnp.sum(positives.mask, axis=-1))


# ----------------------------------------------------------------------------- batch protocol
#
# ``rankax.batch_loss`` (and its sharded/XBM versions) never sees a per-query value directly:
# it asks the loss for additive per-list *statistics*, sums them over query blocks (and
# devices), and turns the totals into the loss. For an ordinary list loss the statistics are
# ``{"sum": value of lists with a positive, "count": 1 for such lists}`` and the loss is
# sum / count. A loss pooled over the pairs of the batch (ROADMAP's calibration term) instead
# defines two attributes on the public function:
#
#   loss_fn.list_statistics(scores, labels, where, *, max_positives, **hparams) -> dict[str, [...]]
#   loss_fn.from_statistics(totals: dict[str, scalar], **hparams) -> scalar
#
# so that the batch value is pooled over all pairs exactly as the paper's code does.


def list_statistics(
    loss_fn: Callable[..., Array],
    scores: Array,
    labels: Array,
    where: Array,
    *,
    max_positives: int | None = None,
    **hparams: Any,
) -> dict[str, Array]:
    """Additive per-list statistics of ``loss_fn`` (``[...]`` arrays); see the note above."""
    custom = getattr(loss_fn, "list_statistics", None)
    if custom is not None:
        return custom(scores, labels, where, max_positives=max_positives, **hparams)
    values = loss_fn(scores, labels, where=where, reduce_fn=None, max_positives=max_positives, **hparams)
    valid = has_positive(labels, where)
    return {"sum": jnp.where(valid, values, 0.0), "count": valid.astype(jnp.float32)}


def from_statistics(loss_fn: Callable[..., Array], totals: dict[str, Array], **hparams: Any) -> Array:
    """The batch loss from statistics summed over all lists."""
    custom = getattr(loss_fn, "from_statistics", None)
    if custom is not None:
        return custom(totals, **hparams)
    return totals["sum"] / jnp.maximum(totals["count"], 1.0)
