"""The statistics protocol of the batch path: what ``rankax.batch_loss`` asks of a loss.

``rankax.batch_loss`` (and its sharded and cross-batch-memory versions) never reduces
per-query values itself: it asks the loss for additive per-list *statistics*, sums them over
query blocks (and devices), and turns the totals into the loss. For an ordinary list loss the
statistics are ``{"sum": value of the lists with a positive, "count": 1 for such lists}`` and
the loss is sum / count. A loss pooled over the pairs of the batch (ROADMAP's calibration
term) publishes, through :func:`rankax._core.listfn.list_function`,

    loss_fn.list_statistics(lists: Lists, **hparams) -> dict[str, [...]]
    loss_fn.from_statistics(totals: dict[str, scalar], **hparams) -> scalar

so that the batch value is pooled over all pairs exactly as the paper's code does.

Any other callable ``loss_fn(scores, labels, *, where, reduce_fn, max_positives, **hparams)``
works too: it is called with ``reduce_fn=None`` on the raw lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rankax._core import listfn, positives, validation

Array = jax.Array


def hparams_of(
    loss_fn: Callable[..., Array], given: dict[str, Any], *, caller: str, warn: bool = True
) -> dict[str, Any]:
    """``given`` hyperparameters of ``loss_fn``, checked and completed with its defaults (a
    rankax list function), or as given (any other callable)."""
    checker = getattr(loss_fn, "hparams", None)
    if checker is not None:
        return checker(given, caller=caller, warn=warn)
    return dict(given)  # a user's loss: its keywords as given (rankax's renames are rankax's)


def list_statistics(
    loss_fn: Callable[..., Array],
    scores: Array,
    labels: Array,
    where: Array,
    *,
    capacity: int,
    hparams: dict[str, Any],
    caller: str,
    slots: positives.Slots | None = None,
) -> dict[str, Array]:
    """Additive per-list statistics (``[...]`` arrays) of ``loss_fn`` on lists whose largest
    positive count is ``capacity``; ``hparams`` from :func:`hparams_of`; ``slots``: where the
    positives are, when the caller knows (a user's own list loss ignores them)."""
    unchecked = getattr(loss_fn, "unchecked", None)
    custom = getattr(loss_fn, "list_statistics", None)
    if unchecked is None and custom is None:  # a user's own list loss
        values = loss_fn(scores, labels, where=where, reduce_fn=None, max_positives=capacity, **hparams)
        valid = positives.has_positive(labels, where)
        if jnp.shape(values) != valid.shape:
            raise TypeError(
                f"{validation.prefix(caller)}loss_fn(..., reduce_fn=None) must return one value per "
                f"list, shape {valid.shape} here, got {jnp.shape(values)}"
            )
        return {"sum": jnp.where(valid, values, 0.0), "count": valid.astype(jnp.float32)}
    graded = bool(getattr(loss_fn, "graded", False))
    lists = listfn.check(
        scores, labels, where, capacity, graded=graded, exact_capacity=True, caller=caller, slots=slots
    )
    if custom is not None:
        return custom(lists, **hparams)
    valid = lists.has_positive
    return {"sum": jnp.where(valid, unchecked(lists, **hparams), 0.0), "count": valid.astype(jnp.float32)}


def from_statistics(
    loss_fn: Callable[..., Array], totals: dict[str, Array], hparams: dict[str, Any]
) -> Array:
    """The batch loss from statistics summed over all lists."""
    custom = getattr(loss_fn, "from_statistics", None)
    if custom is not None:
        return custom(totals, **hparams)
    return totals["sum"] / jnp.maximum(totals["count"], 1.0)
