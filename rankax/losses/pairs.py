"""Pair and triplet losses on cosine similarities: calibration (ROADMAP), contrastive,
triplet (batch-hard, semi-hard) and multi-similarity.

A list is one query's similarities ``s[N]`` to N items with relevance ``labels[N]``
(> 0: positive pair, 0: negative pair). Two reductions occur, as in the papers' code:

* **pooled over pairs** (``calibration_loss``, ``contrastive_loss``): the terms of all pairs of
  the batch are averaged together, not per query. These losses publish
  ``list_statistics``/``from_statistics`` so ``rankax.batch_loss`` pools them over every pair
  ``i != j`` of the batch; called on lists with ``reduce_fn=jnp.mean`` they pool over all pairs
  of all lists, the same number.
* **per anchor** (``triplet_loss``, ``multi_similarity_loss``): each query (anchor) has its own
  loss built from its hardest/mined pairs, and the batch value is the mean over the anchors
  that have a positive -- what the reference implementations do (Hermans et al.'s batch-hard
  mean over anchors; the multi-similarity code's sum over anchors divided by the batch size,
  identical for P x K batches where every anchor has a positive).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rankax import ranking
from rankax._core import listfn, positives, validation

Array = jax.Array

TRIPLET_MININGS = ("batch_hard", "semi_hard")


# ----------------------------------------------------------------------------- calibration


def calibration_statistics(lists: listfn.Lists, *, pos_margin: float, neg_margin: float) -> dict[str, Array]:
    """Per-list sums and counts of the active (non-zero) terms :math:`[m^+ - s_j]_+` of the
    positives and :math:`[s_j - m^-]_+` of the negatives. The items outside each sum enter at
    ``+inf`` / ``-inf`` (:func:`rankax.ranking.negative_scores`), where the term and its gradient
    are 0: the sums need no per-pair mask."""
    scores, labels, where = lists.scores, lists.labels, lists.where
    pos_terms = jax.nn.relu(pos_margin - jnp.where((labels > 0) & where, scores, jnp.inf))
    neg_terms = jax.nn.relu(ranking.negative_scores(scores, labels, where) - neg_margin)
    f32 = jnp.float32
    return {
        "calib_pos_sum": jnp.sum(pos_terms, axis=-1),
        "calib_pos_active": jnp.sum((pos_terms > 0).astype(f32), axis=-1),
        "calib_neg_sum": jnp.sum(neg_terms, axis=-1),
        "calib_neg_active": jnp.sum((neg_terms > 0).astype(f32), axis=-1),
    }


def calibration_from_statistics(totals: dict[str, Array], **unused: Any) -> Array:
    del unused
    pos = positives.safe_divide(totals["calib_pos_sum"], totals["calib_pos_active"])
    neg = positives.safe_divide(totals["calib_neg_sum"], totals["calib_neg_active"])
    return pos + neg


def _calibration_values(lists: listfn.Lists, *, pos_margin: float, neg_margin: float) -> Array:
    stats = calibration_statistics(lists, pos_margin=pos_margin, neg_margin=neg_margin)
    return calibration_from_statistics(stats)


def reduce_calibration(
    lists: listfn.Lists, reduce_fn: validation.ReduceFn, *, pos_margin: float, neg_margin: float
) -> Array:
    """The calibration loss of ``lists``: pooled over all pairs for ``jnp.mean``, else per list."""
    stats = calibration_statistics(lists, pos_margin=pos_margin, neg_margin=neg_margin)
    valid = jnp.any(lists.where, axis=-1)
    return positives.pooled_or_per_list(
        stats, calibration_from_statistics, valid, reduce_fn, caller=lists.caller
    )


@listfn.list_function(
    _calibration_values,
    statistics=calibration_statistics,
    from_statistics=calibration_from_statistics,
)
def calibration_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    pos_margin: float = 0.9,
    neg_margin: float = 0.6,
) -> Array:
    """ROADMAP's calibration loss (its decomposability term), a double-margin contrastive loss.

    .. math::
        \\mathcal{L} = \\frac{\\sum_{(i,j) \\in P} [m^+ - s_{ij}]_+}{\\#\\{(i,j) \\in P :
        s_{ij} < m^+\\}} + \\frac{\\sum_{(i,j) \\in Neg} [s_{ij} - m^-]_+}{\\#\\{(i,j) \\in Neg :
        s_{ij} > m^-\\}}

    Each half is the mean of its *non-zero* terms, pooled over all pairs (through
    ``rankax.batch_loss``: every pair ``i != j`` of the batch), and the halves are summed,
    as the official code does (pytorch-metric-learning's contrastive loss on dot-product
    similarity with its average-non-zero reducer). A half with no active term is 0.
    SupRank's decomposability loss is the same function (use it on one level of a label
    hierarchy by passing that level's binary labels).

    Args:
      scores: ``[..., N]`` cosine similarities of a query to its items.
      labels: ``[..., N]`` relevance (> 0 positive pair).
      where: optional ``[..., N]`` mask of valid pairs.
      reduce_fn: ``jnp.mean`` pools over all pairs of all lists; ``None`` gives each list's
        value on its own pairs (0 when it has no active term); ``jnp.sum`` sums those.
      max_positives: accepted for the common signature; unused (no ranks are needed).
      pos_margin, neg_margin: :math:`m^+ = 0.9`, :math:`m^- = 0.6` (ROADMAP/SupRank configs).

    References:
      Ramzi et al. "Robust and Decomposable Average Precision for Image Retrieval." NeurIPS
      2021; Ramzi et al. "Optimization of Rank Losses for Image Retrieval." arXiv:2309.08250.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="calibration_loss")
    return reduce_calibration(lists, reduce_fn, pos_margin=pos_margin, neg_margin=neg_margin)


# ----------------------------------------------------------------------------- contrastive


def _contrastive_statistics(lists: listfn.Lists, *, margin: float) -> dict[str, Array]:
    scores, labels, where = lists.scores, lists.labels, lists.where
    pos = (labels > 0) & where
    neg = (labels <= 0) & where
    # Squared Euclidean distance of unit vectors; the floor keeps sqrt's gradient finite at 0.
    sq_dist = ranking.unit_squared_distance(scores)
    dist = jnp.sqrt(jnp.maximum(sq_dist, 1e-12))
    terms = jnp.where(pos, 0.5 * sq_dist, 0.0) + jnp.where(neg, 0.5 * jax.nn.relu(margin - dist) ** 2, 0.0)
    return {
        "contrastive_sum": jnp.sum(terms, axis=-1),
        "contrastive_pairs": jnp.sum(where, axis=-1).astype(jnp.float32),
    }


def _contrastive_from_statistics(totals: dict[str, Array], **unused: Any) -> Array:
    del unused
    return positives.safe_divide(totals["contrastive_sum"], totals["contrastive_pairs"])


def _contrastive_values(lists: listfn.Lists, *, margin: float) -> Array:
    return _contrastive_from_statistics(_contrastive_statistics(lists, margin=margin))


@listfn.list_function(
    _contrastive_values,
    statistics=_contrastive_statistics,
    from_statistics=_contrastive_from_statistics,
)
def contrastive_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    margin: float = 1.0,
) -> Array:
    """Contrastive loss (Hadsell, Chopra, LeCun) on L2-normalised embeddings.

    With the Euclidean distance of unit vectors :math:`d_{ij} = \\sqrt{2 - 2 s_{ij}}`:

    .. math::
        \\mathcal{L} = \\frac{1}{|\\mathcal{P}|} \\sum_{(i,j) \\in \\mathcal{P}}
        \\Big( y_{ij} \\tfrac12 d_{ij}^2 + (1 - y_{ij}) \\tfrac12 [m - d_{ij}]_+^2 \\Big)

    averaged over all pairs :math:`\\mathcal{P}` (pooled over the batch, like the paper's
    sum over pairs, normalised). ``margin`` ``m = 1.0`` by default (the paper leaves it free;
    distances of unit vectors lie in [0, 2]).

    Args:
      scores, labels, where: ``[..., N]`` as in :func:`calibration_loss`.
      reduce_fn: ``jnp.mean`` pools over all pairs; ``None`` per-list means over each list's
        pairs; ``jnp.sum`` sums the per-list values.
      max_positives: unused (common signature).
      margin: :math:`m`.

    References:
      Hadsell, Chopra, LeCun. "Dimensionality Reduction by Learning an Invariant Mapping."
      CVPR 2006.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="contrastive_loss")
    stats = _contrastive_statistics(lists, margin=margin)
    valid = jnp.any(lists.where, axis=-1)
    return positives.pooled_or_per_list(
        stats, _contrastive_from_statistics, valid, reduce_fn, caller=lists.caller
    )


# ----------------------------------------------------------------------------- triplet


def _triplet_kernel(scores, labels, where, *, margin, mining):
    pos = (labels > 0) & where
    neg = (labels <= 0) & where
    if mining == "batch_hard":
        hardest_pos = jnp.min(jnp.where(pos, scores, jnp.inf), axis=-1)
        hardest_neg = jnp.max(jnp.where(neg, scores, -jnp.inf), axis=-1)
        ok = jnp.any(pos, axis=-1) & jnp.any(neg, axis=-1)
        gap = jnp.where(ok, hardest_neg - hardest_pos, 0.0)
        return jnp.where(ok, jax.nn.relu(margin + gap), 0.0)
    # semi_hard: for each positive p, the most similar negative that is still less similar
    # than p; if there is none, the least similar negative (FaceNet / TF-Addons rule). Found by
    # binary search in the sorted negative scores: O(N log N) per list, no [N, N] array.
    neg_sorted = jnp.sort(jnp.where(neg, scores, jnp.inf), axis=-1)
    below = _searchsorted_left(jax.lax.stop_gradient(neg_sorted), jax.lax.stop_gradient(scores))
    semi = jnp.take_along_axis(neg_sorted, jnp.maximum(below - 1, 0), axis=-1)
    chosen = jnp.where(below > 0, semi, neg_sorted[..., :1])
    has_neg = jnp.any(neg, axis=-1, keepdims=True)
    chosen = jnp.where(has_neg, chosen, 0.0)
    per_pos = jax.nn.relu(margin + chosen - scores)
    return positives.masked_mean(per_pos, pos & has_neg)


_searchsorted_left = jnp.vectorize(
    functools.partial(jnp.searchsorted, side="left"), signature="(n),(m)->(m)"
)


def _triplet_values(lists: listfn.Lists, *, margin: float, mining: str) -> Array:
    return _triplet_kernel(lists.scores, lists.labels, lists.where, margin=margin, mining=mining)


@listfn.list_function(_triplet_values, choices={"mining": TRIPLET_MININGS})
def triplet_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    margin: float = 0.1,
    mining: str = "batch_hard",
) -> Array:
    """Triplet margin loss on cosine similarities with in-batch mining, per anchor.

    * ``"batch_hard"`` (Hermans et al.): the hardest positive and hardest negative,
      :math:`[m + \\max_{n} s_{an} - \\min_{p} s_{ap}]_+`.
    * ``"semi_hard"`` (Schroff et al., FaceNet): for every positive ``p`` the most similar
      negative with :math:`s_{an} < s_{ap}` (the least similar negative if none is),
      :math:`[m + s_{an} - s_{ap}]_+`, averaged over the anchor's positives.

    ``margin = 0.1`` in cosine units is FaceNet's :math:`\\alpha = 0.2` on squared distances of
    unit vectors (:math:`\\|a - b\\|^2 = 2 - 2 s`). Lists without a negative have loss 0.

    Args:
      scores: ``[..., N]`` cosine similarities of an anchor to N items.
      labels: ``[..., N]`` relevance (> 0 positive).
      where, reduce_fn: as for every list loss (``jnp.mean`` over anchors with a positive).
      max_positives: unused (common signature).
      margin: :math:`m`.
      mining: ``"batch_hard"`` or ``"semi_hard"``.

    References:
      Hermans, Beyer, Leibe. "In Defense of the Triplet Loss for Person Re-Identification."
      arXiv:1703.07737, 2017. Schroff, Kalenichenko, Philbin. "FaceNet." CVPR 2015.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="triplet_loss")
    return lists.reduce(_triplet_values(lists, margin=margin, mining=mining), reduce_fn)


# ----------------------------------------------------------------------------- multi-similarity


def _log1p_sum_exp(x: Array, mask: Array) -> Array:
    """:math:`\\log(1 + \\sum_{mask} e^{x})` along the last axis, stably."""
    x = jnp.where(mask, x, -jnp.inf)
    zero = jnp.zeros(x.shape[:-1] + (1,), x.dtype)
    return jax.nn.logsumexp(jnp.concatenate([zero, x], axis=-1), axis=-1)


def _multi_similarity_kernel(scores, labels, where, *, alpha, beta, base, epsilon):
    pos = (labels > 0) & where
    neg = (labels <= 0) & where
    # Pair mining (stop-gradient: selection only).
    s = jax.lax.stop_gradient(scores)
    max_neg = jnp.max(jnp.where(neg, s, -jnp.inf), axis=-1, keepdims=True)
    min_pos = jnp.min(jnp.where(pos, s, jnp.inf), axis=-1, keepdims=True)
    keep_pos = pos & (s - epsilon < max_neg)
    keep_neg = neg & (s + epsilon > min_pos)
    pos_term = _log1p_sum_exp(-alpha * (scores - base), keep_pos) / alpha
    neg_term = _log1p_sum_exp(beta * (scores - base), keep_neg) / beta
    active = jnp.any(keep_pos, axis=-1) & jnp.any(keep_neg, axis=-1)
    return jnp.where(active, pos_term + neg_term, 0.0)


def _multi_similarity_values(lists: listfn.Lists, **hparams: float) -> Array:
    return _multi_similarity_kernel(lists.scores, lists.labels, lists.where, **hparams)


@listfn.list_function(_multi_similarity_values)
def multi_similarity_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
) -> Array:
    """Multi-similarity loss with its pair mining, per anchor.

    Mining keeps positives with :math:`s_{ap} - \\epsilon < \\max_n s_{an}` and negatives with
    :math:`s_{an} + \\epsilon > \\min_p s_{ap}`; then

    .. math::
        \\mathcal{L}_a = \\frac{1}{\\alpha} \\log\\Big(1 + \\sum_{p \\in \\tilde P}
        e^{-\\alpha (s_{ap} - \\lambda)}\\Big) + \\frac{1}{\\beta} \\log\\Big(1 +
        \\sum_{n \\in \\tilde N} e^{\\beta (s_{an} - \\lambda)}\\Big)

    and an anchor with no mined positive or no mined negative contributes 0 (as the authors'
    code skips it). Defaults :math:`\\alpha = 2, \\beta = 50, \\lambda = 0.5, \\epsilon = 0.1`
    (pytorch-metric-learning's loss and miner defaults; not checked here against the authors'
    per-dataset configs, which may differ).

    Args:
      scores, labels, where, reduce_fn: as for every list loss.
      max_positives: unused (common signature).
      alpha, beta, base, epsilon: :math:`\\alpha, \\beta, \\lambda, \\epsilon`.

    References:
      Wang, Han, Huang, Dong, Scott. "Multi-Similarity Loss with General Pair Weighting for
      Deep Metric Learning." CVPR 2019.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="multi_similarity_loss")
    values = _multi_similarity_values(lists, alpha=alpha, beta=beta, base=base, epsilon=epsilon)
    return lists.reduce(values, reduce_fn)
