"""Exact list-level retrieval metrics, with the losses' signature.

All metrics use the exact rank with the tie convention :math:`H(0) = 1` (a tied item counts
as ranked before), computed without sorting from the ``[C, N]`` comparisons of the positives
with every item (``rankax.ranking``). Values are per list; ``reduce_fn=jnp.mean`` averages
over the lists that have a positive.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rankax import _lists, ranking

Array = jax.Array


def _metric(kernel, scores, labels, where, reduce_fn, max_positives):
    scores, labels, where = _lists.check_lists(scores, labels, where, graded=True)
    values = _lists.apply_kernel(kernel, scores, labels, where, max_positives)
    return _lists.reduce_lists(values, _lists.has_positive(labels, where), reduce_fn)


def _num_positives(positives: ranking.Positives, labels: Array, where: Array) -> Array:
    return jnp.sum((labels > 0) & where, axis=-1).astype(jnp.float32)


def _ap_kernel(scores, labels, where, positives):
    rank, rank_pos = ranking.exact_ranks(scores, labels, where, positives)
    ratio = jnp.where(positives.mask, rank_pos / rank, 0.0)
    return _lists.safe_divide(jnp.sum(ratio, axis=-1), _num_positives(positives, labels, where))


def average_precision(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: _lists.ReduceFn = jnp.mean,
    max_positives: int | None = None,
) -> Array:
    """Average precision, :math:`\\frac{1}{|P|}\\sum_{k \\in P} \\mathrm{rank}^+(k)/\\mathrm{rank}(k)`.

    Equals scikit-learn's ``average_precision_score`` (ties grouped) per list.

    Args:
      scores: ``[..., N]``; labels: ``[..., N]`` relevance (> 0 is positive);
      where: optional ``[..., N]`` mask; reduce_fn: ``jnp.mean`` / ``jnp.sum`` / ``None``;
      max_positives: static positive slots (``None`` = N; exact either way).
    """
    return _metric(_ap_kernel, scores, labels, where, reduce_fn, max_positives)


def _recall_kernel(scores, labels, where, positives, *, k):
    rank, _ = ranking.exact_ranks(scores, labels, where, positives)
    hit = positives.mask & (rank <= k)
    return jnp.any(hit, axis=-1).astype(jnp.float32)


def recall_at_k(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    k: int = 1,
    where: ArrayLike | None = None,
    reduce_fn: _lists.ReduceFn = jnp.mean,
    max_positives: int | None = None,
) -> Array:
    """Metric-learning Recall@k: 1 if a positive is among the first ``k`` items, else 0.

    With :math:`H(0) = 1` a positive tied with negatives takes the last of the tied places
    (a pessimistic tie rule). This is the R@k of image-retrieval papers (Musgrave et al.,
    "A Metric Learning Reality Check", ECCV 2020), not the IR recall fraction.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    kernel = functools.partial(_recall_kernel, k=k)
    return _metric(kernel, scores, labels, where, reduce_fn, max_positives)


def _map_at_r_kernel(scores, labels, where, positives):
    rank, rank_pos = ranking.exact_ranks(scores, labels, where, positives)
    r = _num_positives(positives, labels, where)
    in_top_r = positives.mask & (rank <= r[..., None])
    ratio = jnp.where(in_top_r, rank_pos / rank, 0.0)
    return _lists.safe_divide(jnp.sum(ratio, axis=-1), r)


def map_at_r(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: _lists.ReduceFn = jnp.mean,
    max_positives: int | None = None,
) -> Array:
    """MAP@R (Musgrave et al., ECCV 2020): AP truncated at R = number of positives.

    .. math::  \\mathrm{MAP@R} = \\frac{1}{R} \\sum_{i=1}^{R} P(i)\\,\\mathrm{rel}(i)
        = \\frac{1}{R} \\sum_{k \\in P,\\ \\mathrm{rank}(k) \\le R}
          \\frac{\\mathrm{rank}^+(k)}{\\mathrm{rank}(k)}
    """
    return _metric(_map_at_r_kernel, scores, labels, where, reduce_fn, max_positives)


def _r_precision_kernel(scores, labels, where, positives):
    rank, _ = ranking.exact_ranks(scores, labels, where, positives)
    r = _num_positives(positives, labels, where)
    hits = jnp.sum(positives.mask & (rank <= r[..., None]), axis=-1)
    return _lists.safe_divide(hits.astype(jnp.float32), r)


def r_precision(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: _lists.ReduceFn = jnp.mean,
    max_positives: int | None = None,
) -> Array:
    """R-precision: the fraction of positives among the first R = |P| items."""
    return _metric(_r_precision_kernel, scores, labels, where, reduce_fn, max_positives)
