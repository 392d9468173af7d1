"""Plumbing shared by the loss modules: the contract of ``rankax._lists`` in two calls.

A loss module defines a kernel (the formula) and hands it to :func:`list_loss` (kernels on the
gathered ``[..., C, N]`` positive-vs-item differences) or :func:`dense_list_loss` (kernels that
look at the whole list at once: histograms, sorts, hardest pairs). Pair-pooled losses use
:func:`attach_statistics` to publish the batch statistics protocol of ``rankax._lists``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rankax import _lists, ranking

Array = jax.Array
DenseKernel = Callable[[Array, Array, Array], Array]


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{_lists.error_prefix()}{name} must be one of {choices}, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    """Raises if a concrete hyperparameter is not > 0 (traced values pass unchecked)."""
    _lists.check_number(name, value, "positive")


validated = _lists.validated
check_hparams = _lists.check_hparams


def list_loss(
    kernel: _lists.Kernel,
    scores: ArrayLike,
    labels: ArrayLike,
    where: ArrayLike | None,
    reduce_fn: _lists.ReduceFn,
    max_positives: int | None,
    *,
    graded: bool = False,
) -> Array:
    """Checks inputs, runs ``kernel`` on gathered positives (exactly), reduces over lists."""
    return _lists.kernel_lists(
        kernel, scores, labels, where, reduce_fn, max_positives, graded=graded
    )


def dense_list_loss(
    kernel: DenseKernel,
    scores: ArrayLike,
    labels: ArrayLike,
    where: ArrayLike | None,
    reduce_fn: _lists.ReduceFn,
    max_positives: int | None,
    *,
    graded: bool = False,
) -> Array:
    """As :func:`list_loss` for kernels ``(scores, labels, where) -> [...]`` that need no
    gathered positives; ``max_positives`` is validated and otherwise unused."""
    _lists.check_capacity(max_positives)
    scores, labels, where = _lists.check_lists(scores, labels, where, graded=graded)
    values = kernel(scores, labels, where)
    return _lists.reduce_lists(values, _lists.has_positive(labels, where), reduce_fn)


def masked_mean(values: Array, mask: Array, axis: int = -1) -> Array:
    """Mean of ``values`` over ``mask`` along ``axis`` (0 where the mask is empty)."""
    total = jnp.sum(jnp.where(mask, values, 0.0), axis=axis)
    return _lists.safe_divide(total, jnp.sum(mask, axis=axis).astype(total.dtype))


def supap_ranks(
    scores: Array, labels: Array, where: Array, positives: ranking.Positives, **step_kwargs: Any
) -> tuple[Array, Array]:
    """SupAP's rank of the gathered positives for binary relevance, ``[..., C]`` each.

    Returns ``(rank, rank_pos)``: ``rank_pos = 1 + sum_{j in P, j != k} H(s_j - s_k)`` is exact
    and carries no gradient; ``rank = rank_pos + sum_{j in Neg} h(s_j - s_k)`` with ROADMAP's
    upper bound ``h`` (``rankax.ranking.roadmap_step``) for the negatives.
    """
    diff, others = ranking.pairwise_differences(scores, where, positives)
    is_pos = (labels > 0)[..., None, :]
    rank_pos = 1.0 + jnp.sum(others & is_pos & (diff >= 0), axis=-1).astype(jnp.float32)
    neg_step = ranking.roadmap_step(diff, **step_kwargs)
    rank_neg = jnp.sum(jnp.where(others & ~is_pos, neg_step, 0.0), axis=-1)
    return rank_pos + rank_neg, rank_pos


def graded_ranks(
    scores: Array, labels: Array, where: Array, positives: ranking.Positives, **step_kwargs: Any
) -> tuple[Array, Array, Array]:
    """SupRank's rank of the gathered positives for graded relevance, ``[..., C]`` each.

    For a positive ``k`` the items less relevant than ``k`` (``rel_j < rel_k``, negatives
    included) enter through ROADMAP's smooth upper bound ``h`` and all others through the exact
    step ``H``:  :math:`\\mathrm{rank}(k) = 1 + \\sum_{j \\ne k} [H \\text{ if } rel_j \\ge
    rel_k \\text{ else } h](s_j - s_k)`. Returns ``(rank, diff, others)`` so callers can build
    their numerators on the same differences.
    """
    diff, others = ranking.pairwise_differences(scores, where, positives)
    less = labels[..., None, :] < positives.labels[..., :, None]
    step = jnp.where(less, ranking.roadmap_step(diff, **step_kwargs), ranking.heaviside(diff))
    rank = 1.0 + jnp.sum(jnp.where(others, step, 0.0), axis=-1)
    return rank, diff, others


def attach_statistics(
    loss_fn: Callable[..., Array],
    statistics_fn: Callable[..., dict[str, Array]],
    from_statistics_fn: Callable[..., Array],
) -> Callable[..., Array]:
    """Publishes the batch statistics protocol of ``rankax._lists`` on ``loss_fn``.

    The statistics function is called by ``rankax.batch_loss`` instead of ``loss_fn``, so it
    gets the same hyperparameter checks and error names (the batch path guards NaN itself).
    """
    fn_name = loss_fn.__name__

    @functools.wraps(statistics_fn)
    def statistics(scores: Array, labels: Array, where: Array, **kwargs: Any) -> dict[str, Array]:
        check_hparams(fn_name, {k: v for k, v in kwargs.items() if k != "max_positives"})
        with _lists.calling(fn_name):
            return statistics_fn(scores, labels, where, **kwargs)

    loss_fn.list_statistics = statistics  # type: ignore[attr-defined]
    loss_fn.from_statistics = from_statistics_fn  # type: ignore[attr-defined]
    return loss_fn


def pooled_or_per_list(
    statistics: dict[str, Array],
    per_list: Callable[[dict[str, Array]], Array],
    valid: Array,
    reduce_fn: _lists.ReduceFn,
) -> Array:
    """Reduction of a pair-pooled loss called on lists directly.

    ``reduce_fn=jnp.mean`` pools the statistics over all lists (the value ``batch_loss``
    gives); ``None`` returns the loss of each list on its own pairs; another callable is
    applied to those per-list values over ``valid`` lists.
    """
    if reduce_fn is jnp.mean:
        totals = jax.tree.map(lambda v: jnp.sum(v), statistics)
        return per_list(totals)
    values = per_list(statistics)
    return _lists.reduce_lists(values, valid, reduce_fn)
