"""Exact list-level retrieval metrics, with the losses' signature.

Every metric is ``fn(scores, labels, *, where=None, reduce_fn=jnp.mean, max_positives=None,
**options)`` with lists on the last axis (``[..., N]``), like the losses:

=====================  ====================================================================
``average_precision``  AP, equal to scikit-learn's ``average_precision_score``
``recall_at_k``        metric-learning R@k: 1 if a positive is in the first ``k``
``precision_at_k``     fraction of the first ``k`` places held by positives
``r_precision``        precision at R = number of positives
``map_at_r``           MAP@R (Musgrave et al., ECCV 2020)
``ndcg``               normalised DCG with gain ``2^rel - 1`` (graded relevance)
``hap``                hierarchical AP (Ramzi et al., SupRank / HAPPIER)
``asi``                average set intersection up to depth R (SupRank's evaluation)
=====================  ====================================================================

All of them use the exact rank with the tie convention :math:`H(0) = 1`,
:math:`\\mathrm{rank}(k) = 1 + \\sum_{j \\ne k} H(s_j - s_k)`: an item tied with ``k`` counts as
ranked before it, so tied items all take the *last* of the places they share. R@k, P@k,
R-precision and NDCG are then at most their value under any order of the ties, and below
every order where positives tie with each other (two identical positives tied first: R@1 =
0); AP, MAP@R and H-AP take each tied positive's precision at the group's end, as
scikit-learn's AP does, which can lie above or below every order (docs/evaluation.md).
Ranks are computed without sorting from the ``[C, N]`` comparisons of the ``C`` positives
with every item (``rankax.ranking``); ``max_positives`` bounds ``C`` statically (exact either
way). ``labels`` are relevances: > 0 is relevant, larger is more relevant where the metric
is graded (``ndcg``, ``hap``, ``asi``); binary metrics only look at ``labels > 0``.

Values are per list; lists without any relevant item get no value: ``reduce_fn=jnp.mean``
averages over the lists that have one (0 if none has), ``reduce_fn=None`` returns 0 for them
(mask with ``jnp.any(labels > 0, -1)``). For whole datasets use :mod:`rankax.retrieval`, which
computes the same quantities without building one list per query.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rankax import ranking
from rankax._core import listfn, validation
from rankax._core.positives import num_positives, safe_divide

Array = jax.Array


__all__ = [
    "ap_from_ranks",
    "asi",
    "asi_from_depths",
    "average_precision",
    "binary_from_ranks",
    "dcg",
    "hap",
    "hap_from_ranks",
    "harmonic",
    "ideal_positions",
    "map_at_r",
    "map_at_r_from_ranks",
    "ndcg",
    "ndcg_from_dcgs",
    "ndcg_gains",
    "precision_at_k",
    "r_precision",
    "r_precision_from_ranks",
    "recall_at_k",
    "recall_at_k_from_ranks",
]


def _check_k(hparams: dict, caller: str) -> None:
    validation.check_k(hparams["k"], caller=caller)


def _check_k_or_none(hparams: dict, caller: str) -> None:
    validation.check_k(hparams["k"], allow_none=True, caller=caller)


def _metric(kernel, caller, scores, labels, where, reduce_fn, max_positives):
    """Checks the lists, runs ``kernel`` on their gathered positives, reduces."""
    lists = listfn.check(scores, labels, where, max_positives, graded=True, caller=caller)
    return lists.reduce(lists.gather(kernel), reduce_fn)


# ----------------------------------------------------------------------------- from exact ranks
#
# The one implementation of each metric given the exact ranks of the positives. The list metrics
# below and the dataset-level evaluation (``rankax.retrieval``) both use these. The binary ones
# (AP, MAP@R, R-precision, R@k), which the evaluation calls on numpy float64 arrays, work on numpy
# and jax arrays alike (numpy in, numpy out); the graded ones (H-AP, DCG/NDCG, ASI) take either
# and return jax arrays.


#: A jax or numpy array: the from-ranks helpers run on both (device lists, host evaluation).
AnyArray = Array | np.ndarray


def _xp(x: AnyArray):
    return jnp if isinstance(x, jax.Array) else np


def _per_positive(x, mask, num_pos):
    """``sum(x over the filled slots) / num_pos`` (0 where ``num_pos = 0``)."""
    xp = _xp(x)
    return xp.sum(xp.where(mask, x, 0.0), axis=-1) / xp.maximum(num_pos, 1)


def ap_from_ranks(rank: AnyArray, rank_pos: AnyArray, mask: AnyArray, num_pos: AnyArray) -> AnyArray:
    """AP, :math:`\\frac{1}{R}\\sum_{p} \\mathrm{rank}^+(p)/\\mathrm{rank}(p)` over the ``[..., C]``
    slots (``mask``), ``R = num_pos [...]`` (all positives must be in the slots). Empty slots
    neither count nor divide (the guard keeps gradients finite there); with smooth ranks this
    is the AP of the Smooth-AP and SupAP losses.

    Args:
      rank: ``[..., C]`` rank of each positive among all items (1-based, exact or smooth).
      rank_pos: ``[..., C]`` its rank among the positives.
      mask: ``[..., C]`` bool, the filled slots.
      num_pos: ``[...]`` the number of positives ``R`` of each list.

    Returns ``[...]``, 0 for a list without positives (numpy in, numpy out).
    """
    xp = _xp(rank)
    return _per_positive(rank_pos / xp.where(mask, rank, 1.0), mask, num_pos)


def hap_from_ranks(h_rank: Array, rank: Array, mask: Array, rel_total: Array) -> Array:
    """H-AP, :math:`\\sum_{p} \\mathcal{H}\\text{-rank}(p)/\\mathrm{rank}(p) / \\sum_p rel(p)` over the
    ``[..., C]`` slots (``mask``); 0 where ``rel_total = 0``."""
    ratio = jnp.where(mask, h_rank / jnp.where(mask, rank, 1.0), 0.0)
    return safe_divide(jnp.sum(ratio, axis=-1), rel_total)


def ndcg_gains(relevance: Array, top: Array) -> Array:
    """NDCG's gain ``2^rel - 1`` divided by ``2^top`` (``top``: the list's largest relevance).

    NDCG is a ratio of two sums of gains, so the common factor cancels; scaled, the gains stay
    finite for any relevance (``2^rel`` overflows float32 from ``rel = 128``) and are exactly 0
    for ``rel = 0``. Below ``rel = 1`` the gain is ``2^-top * expm1(rel ln 2)``: the difference
    of two powers cancelled there (SupRank's "pop" relevance of about 5e-4 lost 1e-5 of it).
    """
    small = relevance < 1.0
    tiny = jnp.exp2(-top) * jnp.expm1(jnp.where(small, relevance, 0.0) * math.log(2.0))
    return jnp.where(small, tiny, jnp.exp2(relevance - top) - jnp.exp2(-top))


def dcg(gain: Array, rank: Array, mask: Array) -> Array:
    """Discounted cumulative gain :math:`\\sum_{p} g(p) / \\log_2(1 + \\mathrm{rank}(p))` over the
    ``[..., C]`` slots (``mask``)."""
    return jnp.sum(jnp.where(mask, gain / jnp.log2(1.0 + rank), 0.0), axis=-1)


def ndcg_from_dcgs(dcg_value: Array, ideal_dcg: Array) -> Array:
    """NDCG = DCG / IDCG, 0 where IDCG = 0, at most 1: the two sums hold the same gains in
    different orders, so a perfect ranking could round a float32 ulp above 1."""
    return jnp.minimum(safe_divide(dcg_value, ideal_dcg), 1.0)


def harmonic(n: ArrayLike) -> Array:
    """Harmonic number :math:`H_n = \\sum_{i=1}^n 1/i` (0 for n = 0), for real ``n >= 0``."""
    return jax.scipy.special.digamma(n + 1.0) + np.euler_gamma


def asi_from_depths(depth: Array, mask: Array, num_pos: Array) -> Array:
    """ASI up to depth R from the depth at which each positive enters the intersection of the
    retrieved and the ideal top-n (``[..., C]`` slots, ``R = num_pos [...]``; 0 where R = 0):

    .. math::
        \\mathrm{ASI} = \\frac1R \\sum_{p : d_p \\le R} (H_R - H_{d_p - 1})
            = 1 - \\frac1R \\sum_{m=1}^{R} \\big(H_{\\min(d_{(m)} - 1,\\, R)} - H_{m - 1}\\big)

    with :math:`d_{(m)}` the m-th smallest depth (:math:`+\\infty` past the filled slots), at
    least ``m`` because the ideal places are distinct; the two forms are equal since
    :math:`\\sum_{m=1}^{R} (H_R - H_{m-1}) = R`. Values below 1/2 come from the first form
    (exactly 0 when no positive enters by depth R, small values to their relative precision),
    the others from the second: a positive entering at its ideal depth adds exactly 0 to the
    deficit, so a perfect ranking scores exactly 1 although the float32 harmonic numbers (from
    the digamma function) are a few ulps off."""
    # float32 at least; float64 under x64 for float64 or integer inputs (the default float).
    dtype = jnp.promote_types(jnp.result_type(depth, num_pos, 1.0), jnp.float32)
    r = num_pos[..., None].astype(dtype)
    depth = depth.astype(dtype)
    # Direct form: exact 0 when no positive enters by depth R, and small values keep their
    # relative precision.
    direct = jnp.sum(jnp.where(mask & (depth <= r), harmonic(r) - harmonic(depth - 1.0), 0.0), axis=-1)
    # Deficit form: exact 1 for a perfect ranking.
    d = jnp.sort(jnp.where(mask, depth, jnp.inf), axis=-1)
    m = jnp.arange(1, d.shape[-1] + 1, dtype=dtype)
    deficit = jnp.where(m <= r, harmonic(jnp.minimum(d - 1.0, r)) - harmonic(m - 1.0), 0.0)
    # Places m > C (a list with fewer slots than positives, e.g. a truncated neighbour list):
    # sum_{m=C+1}^{R} (H_R - H_{m-1}) = (R - C) - C (H_R - H_C).
    c = jnp.asarray(d.shape[-1], dtype)
    rest = jnp.where(r > c, (r - c) - c * (harmonic(r) - harmonic(c)), 0.0)
    lost = jnp.sum(jnp.maximum(deficit, 0.0), axis=-1) + rest[..., 0]
    n = num_pos.astype(dtype)
    low, high = safe_divide(direct, n), 1.0 - safe_divide(lost, n)
    return jnp.where(num_pos > 0, jnp.clip(jnp.where(low < 0.5, low, high), 0.0, 1.0), 0.0)


def map_at_r_from_ranks(rank: AnyArray, rank_pos: AnyArray, mask: AnyArray, num_pos: AnyArray) -> AnyArray:
    """MAP@R: the AP sum restricted to positives with ``rank <= R``, divided by ``R``."""
    in_top_r = mask & (rank <= num_pos[..., None])
    return _per_positive(rank_pos / rank, in_top_r, num_pos)


def r_precision_from_ranks(rank: AnyArray, mask: AnyArray, num_pos: AnyArray) -> AnyArray:
    """R-precision: ``#{p : rank(p) <= R} / R``."""
    in_top_r = mask & (rank <= num_pos[..., None])
    return _per_positive(_xp(rank).ones_like(rank), in_top_r, num_pos)


def recall_at_k_from_ranks(rank: AnyArray, mask: AnyArray, k: int) -> AnyArray:
    """Metric-learning R@k: 1.0 where some positive has ``rank <= k`` (float: float32 at least)."""
    xp = _xp(rank)
    return xp.any(mask & (rank <= k), axis=-1).astype(xp.result_type(rank.dtype, xp.float32))


def binary_from_ranks(
    rank: AnyArray,
    rank_pos: AnyArray,
    mask: AnyArray,
    num_pos: AnyArray,
    ks: tuple[int, ...] = (),
    *,
    full: bool = True,
) -> dict[str, AnyArray]:
    """``{"map", "map@r", "r_precision", "recall@k"...}`` per list ``[...]`` from the exact ranks
    of the positives (arguments as in :func:`ap_from_ranks`; :math:`H(0) = 1`: a tie ranks
    every tied item last among them):

    * ``map``: :func:`ap_from_ranks`;
    * ``map@r`` (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020):
      :math:`\\frac1R \\sum_{p : \\mathrm{rank}(p) \\le R} \\mathrm{rank}^+(p)/\\mathrm{rank}(p)`;
    * ``r_precision``: :math:`\\#\\{p : \\mathrm{rank}(p) \\le R\\} / R`;
    * ``recall@k`` for each ``k`` of ``ks``: 1 if some positive has :math:`\\mathrm{rank} \\le k`.

    ``full=False`` leaves out ``"map"`` (for ranks known only down to some depth >= R).
    """
    out = {"map": ap_from_ranks(rank, rank_pos, mask, num_pos)} if full else {}
    out["map@r"] = map_at_r_from_ranks(rank, rank_pos, mask, num_pos)
    out["r_precision"] = r_precision_from_ranks(rank, mask, num_pos)
    for k in ks:
        out[f"recall@{k}"] = recall_at_k_from_ranks(rank, mask, k)
    return out


# ----------------------------------------------------------------------------- list metrics


def _ap_kernel(scores, labels, where, positives):
    # apply_kernel gathers every positive, so the filled slots are the |P| positives.
    rank, rank_pos = ranking.exact_ranks(scores, labels, where, positives)
    return ap_from_ranks(rank, rank_pos, positives.mask, num_positives(labels, where))


@listfn.list_function(None, graded=True)
def average_precision(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
) -> Array:
    """Average precision, :math:`\\frac{1}{|P|}\\sum_{k \\in P} \\mathrm{rank}^+(k)/\\mathrm{rank}(k)`.

    Equals scikit-learn's ``average_precision_score`` (ties grouped) per list.

    Args:
      scores: ``[..., N]``; labels: ``[..., N]`` relevance (> 0 is positive);
      where: optional ``[..., N]`` mask; reduce_fn: ``jnp.mean`` / ``jnp.sum`` / ``None``;
      max_positives: static positive slots (``None`` = N; exact either way).
    """
    return _metric(_ap_kernel, "average_precision", scores, labels, where, reduce_fn, max_positives)


def _recall_kernel(scores, labels, where, positives, *, k):
    rank, _ = ranking.exact_ranks(scores, labels, where, positives)
    return recall_at_k_from_ranks(rank, positives.mask, k)


@listfn.list_function(None, graded=True, check_hparams=_check_k)
def recall_at_k(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    k: int = 1,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
) -> Array:
    """Metric-learning Recall@k: 1 if a positive is among the first ``k`` items, else 0.

    With :math:`H(0) = 1` a positive tied with negatives takes the last of the tied places
    (a pessimistic tie rule). This is the R@k of image-retrieval papers (Musgrave et al.,
    "A Metric Learning Reality Check", ECCV 2020), not the IR recall fraction.
    """
    kernel = functools.partial(_recall_kernel, k=k)
    return _metric(kernel, "recall_at_k", scores, labels, where, reduce_fn, max_positives)


def _map_at_r_kernel(scores, labels, where, positives):
    rank, rank_pos = ranking.exact_ranks(scores, labels, where, positives)
    return map_at_r_from_ranks(rank, rank_pos, positives.mask, num_positives(labels, where))


@listfn.list_function(None, graded=True)
def map_at_r(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
) -> Array:
    """MAP@R (Musgrave et al., ECCV 2020): AP truncated at R = number of positives.

    .. math::  \\mathrm{MAP@R} = \\frac{1}{R} \\sum_{i=1}^{R} P(i)\\,\\mathrm{rel}(i)
        = \\frac{1}{R} \\sum_{k \\in P,\\ \\mathrm{rank}(k) \\le R}
          \\frac{\\mathrm{rank}^+(k)}{\\mathrm{rank}(k)}
    """
    return _metric(_map_at_r_kernel, "map_at_r", scores, labels, where, reduce_fn, max_positives)


def _r_precision_kernel(scores, labels, where, positives):
    rank, _ = ranking.exact_ranks(scores, labels, where, positives)
    return r_precision_from_ranks(rank, positives.mask, num_positives(labels, where))


@listfn.list_function(None, graded=True)
def r_precision(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
) -> Array:
    """R-precision, :math:`\\frac1R \\#\\{p \\in P : \\mathrm{rank}(p) \\le R\\}` with ``R = |P|``: the
    fraction of positives among the first ``R`` items (Musgrave et al., "A Metric Learning
    Reality Check", ECCV 2020). Exact ranks, :math:`H(0) = 1` (a positive tied with the item in
    place ``R`` does not count).

    Args:
      scores: ``[..., N]`` float scores of each list's items.
      labels: ``[..., N]`` relevance; ``> 0`` is positive.
      where: optional ``[..., N]`` bool, the valid items.
      reduce_fn: ``jnp.mean`` (default) over the lists, ``None`` per list.
      max_positives: optional hint of the largest positive count (speed only).

    Returns the reduced value (float32), 0 for a list without positives.
    """
    return _metric(_r_precision_kernel, "r_precision", scores, labels, where, reduce_fn, max_positives)


def _precision_kernel(scores, labels, where, positives, *, k):
    rank, _ = ranking.exact_ranks(scores, labels, where, positives)
    hits = jnp.sum(positives.mask & (rank <= k), axis=-1)
    return hits.astype(rank.dtype) / k


@listfn.list_function(None, graded=True, check_hparams=_check_k)
def precision_at_k(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    k: int = 1,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
) -> Array:
    """Precision@k, :math:`\\frac{1}{k} \\#\\{p \\in P : \\mathrm{rank}(p) \\le k\\}`.

    Always divides by ``k`` (also when the list has fewer than ``k`` items or positives).
    With :math:`H(0) = 1` a positive tied with the item in place ``k`` and beyond does not
    count. ``P@1`` equals ``R@1``.
    """
    kernel = functools.partial(_precision_kernel, k=k)
    return _metric(kernel, "precision_at_k", scores, labels, where, reduce_fn, max_positives)


def ideal_positions(positives: ranking.Positives) -> Array:
    """``[..., C]`` place of each gathered positive in the ideal order (relevance descending,
    equal relevance by list position): a permutation of ``1..P`` over the ``P`` filled slots.

    The ideal DCG is ``dcg(gain, ideal_positions(positives), positives.mask)``: items with
    relevance 0 have gain 0, so with every positive gathered this is the DCG of the whole
    list sorted by relevance, in ``O(C^2)`` per list instead of a sort of its ``N`` items."""
    lab_p = positives.labels[..., :, None]
    lab_o = positives.labels[..., None, :]
    idx_p = positives.index[..., :, None]
    idx_o = positives.index[..., None, :]
    before = (lab_o > lab_p) | ((lab_o == lab_p) & (idx_o < idx_p))
    before &= positives.mask[..., None, :]
    return 1.0 + jnp.sum(before, axis=-1).astype(jnp.float32)


def _ndcg_kernel(scores, labels, where, positives, *, k):
    rank, _ = ranking.exact_ranks(scores, labels, where, positives)
    ideal = ideal_positions(positives).astype(rank.dtype)
    rel = positives.labels.astype(rank.dtype)  # float64 gains for float64 scores
    top = jnp.max(jnp.where(positives.mask, rel, 0.0), axis=-1, keepdims=True)
    gain = jnp.where(positives.mask, ndcg_gains(rel, top), 0.0)
    in_dcg = positives.mask if k is None else positives.mask & (rank <= k)
    in_idcg = positives.mask if k is None else positives.mask & (ideal <= k)
    return ndcg_from_dcgs(dcg(gain, rank, in_dcg), dcg(gain, ideal, in_idcg))


@listfn.list_function(None, graded=True, check_hparams=_check_k_or_none)
def ndcg(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    k: int | None = None,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
) -> Array:
    """Normalised discounted cumulative gain with graded relevance.

    .. math::
        \\mathrm{DCG} = \\sum_{j : \\mathrm{rank}(j) \\le k} \\frac{2^{\\mathrm{rel}_j} - 1}
            {\\log_2(1 + \\mathrm{rank}(j))}, \\qquad
        \\mathrm{NDCG} = \\mathrm{DCG} / \\mathrm{IDCG},

    IDCG being the DCG of the list sorted by decreasing relevance (no ties there). Only items
    with ``rel > 0`` contribute (their gain is > 0). ``k=None`` (default) uses the whole
    list; an integer ``k`` gives NDCG@k. This is the NDCG of SupRank's evaluation (Ramzi et
    al., 2023), which there is applied to the number of shared hierarchy levels.
    """
    kernel = functools.partial(_ndcg_kernel, k=k)
    return _metric(kernel, "ndcg", scores, labels, where, reduce_fn, max_positives)


def _hap_kernel(scores, labels, where, positives):
    diff, others = ranking.pairwise_differences(scores, where, positives)
    before = (diff >= 0) & others
    rank = 1.0 + jnp.sum(before, axis=-1).astype(jnp.result_type(scores, jnp.float32))
    rel_p = positives.labels[..., :, None]
    is_pos = ((labels > 0) & where)[..., None, :]
    shared = jnp.minimum(labels[..., None, :], rel_p)
    h_rank = positives.labels + jnp.sum(jnp.where(before & is_pos, shared, 0.0), axis=-1)
    den = jnp.sum(jnp.where((labels > 0) & where, labels, 0.0), axis=-1)
    return hap_from_ranks(h_rank, rank, positives.mask, den)


@listfn.list_function(None, graded=True)
def hap(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
) -> Array:
    """Hierarchical average precision (H-AP) with graded relevance ``rel = labels``.

    .. math::
        \\mathcal{H}\\text{-rank}(k) = \\mathrm{rel}(k) + \\sum_{j \\in P, j \\ne k}
            \\min(\\mathrm{rel}(j), \\mathrm{rel}(k))\\, H(s_j - s_k), \\qquad
        \\text{H-AP} = \\frac{\\sum_{k \\in P} \\mathcal{H}\\text{-rank}(k) / \\mathrm{rank}(k)}
            {\\sum_{k \\in P} \\mathrm{rel}(k)}.

    With binary labels H-AP is AP. Relevances from label paths come from
    :func:`rankax.hierarchy.path_relevance`.

    References:
      Ramzi et al., "Hierarchical Average Precision Training for Pertinent Image Retrieval",
      ECCV 2022; "Optimization of Rank Losses for Image Retrieval" (SupRank), 2023.
    """
    return _metric(_hap_kernel, "hap", scores, labels, where, reduce_fn, max_positives)


def _asi_kernel(scores, labels, where, positives):
    rank, _ = ranking.exact_ranks(scores, labels, where, positives)
    mask_o = positives.mask[..., None, :]
    lab_p, lab_o = positives.labels[..., :, None], positives.labels[..., None, :]
    rank_p, rank_o = rank[..., :, None], rank[..., None, :]
    idx_p, idx_o = positives.index[..., :, None], positives.index[..., None, :]
    # Places before the level of p in the ideal order, and p's order within its level.
    higher = jnp.sum((lab_o > lab_p) & mask_o, axis=-1)
    earlier = (rank_o < rank_p) | ((rank_o == rank_p) & (idx_o < idx_p))
    order_in_level = 1 + jnp.sum((lab_o == lab_p) & earlier & mask_o, axis=-1)
    # p belongs to the intersection at every depth n >= depth.
    depth = jnp.maximum(rank, (higher + order_in_level).astype(rank.dtype))
    return asi_from_depths(depth, positives.mask, num_positives(labels, where))


@listfn.list_function(None, graded=True)
def asi(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
) -> Array:
    """Average set intersection up to depth R = number of relevant items.

    Items with the same relevance form a level. At depth ``n`` the retrieved multiset of
    levels (items with ``rank <= n``) is compared with the ideal one (the first ``n`` items
    of the list sorted by decreasing relevance):

    .. math::
        \\mathrm{SI}(n) = \\frac{1}{n} \\sum_{v > 0} \\min\\big(
            \\#\\{j : \\mathrm{rel}_j = v, \\mathrm{rank}(j) \\le n\\},\\;
            \\#\\{j : \\mathrm{rel}_j = v, \\mathrm{ideal}(j) \\le n\\}\\big), \\qquad
        \\mathrm{ASI} = \\frac{1}{R} \\sum_{n=1}^{R} \\mathrm{SI}(n).

    This is the ASI of SupRank's evaluation code (truncated at R, its default), which
    applies it to the number of shared hierarchy levels. With binary labels ASI is the mean
    of the precisions at depths 1..R. Computed without sorting: item ``j`` is in the
    intersection from depth ``max(rank(j), ideal place of the m-th item of its level)`` on,
    ``m`` its order within its level.

    References:
      Ramzi et al., "Optimization of Rank Losses for Image Retrieval" (SupRank), 2023.
    """
    return _metric(_asi_kernel, "asi", scores, labels, where, reduce_fn, max_positives)
