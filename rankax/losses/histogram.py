"""Histogram (quantised) AP losses: the listwise AP of Revaud et al. and FastAP.

Both replace ranks by soft histograms: each item spreads a unit mass over the two nearest of
``M`` bins with triangular kernels (a partition of unity), bins are scanned from the best
(most similar) to the worst, and AP is read from cumulative soft counts,

.. math::
    c_m = \\sum_j \\delta_m(s_j), \\quad c^+_m = \\sum_{j \\in P} \\delta_m(s_j), \\quad
    C_m = \\sum_{m' \\le m} c_{m'}, \\quad C^+_m = \\sum_{m' \\le m} c^+_{m'},
    \\qquad \\mathrm{AP} \\approx \\frac{1}{|P|} \\sum_m c^+_m \\frac{C^+_m}{C_m}.

Cost is ``O(N M)`` per list; no positive ranks are needed, and ``max_positives`` is unused.
In ``batch_loss``, which finds every list's positives with one sort, both build the positives'
histogram from their slots and the negatives' from the list; given lists, they make two
masked passes instead (locating the positives would cost more than the pass it saves).
When every score sits on a distinct bin centre the histogram AP is the exact AP; an item
between two centres is split between them, which leaves an error of at most
:math:`w(1-w)/(C+1)` per positive whatever ``M`` (see ``docs/losses.md``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rankax import ranking
from rankax._core import listfn, positives, validation

Array = jax.Array


def _bin_counts(
    scores: Array, mask: Array, *, num_bins: int, score_range: tuple[float, float]
) -> Array:
    """Soft counts ``[..., M]`` of the items ``mask`` selects among ``scores [..., K]``: the
    triangles' sums over them by :func:`rankax.ranking.step_sums` with the bin centres as
    anchors (``O(K M)`` per list, no ``[..., K, M]`` weights kept). The end bins extend flat
    beyond the range: a score outside it counts as the range's end, with no gradient (at ``hi``
    and ``lo`` exactly too)."""
    lo, hi = score_range
    width = (hi - lo) / (num_bins - 1)
    centres = hi - width * jnp.arange(num_bins, dtype=scores.dtype)  # best bin first
    anchors = jnp.broadcast_to(centres, scores.shape[:-1] + centres.shape)
    triangle = lambda x: jax.nn.relu(1.0 - jnp.abs(x) / width)  # noqa: E731
    inside = jnp.where(scores >= hi, hi, jnp.where(scores <= lo, lo, scores)).astype(scores.dtype)
    items = jnp.where(mask, inside, -jnp.inf)  # left out: the triangle is 0 at -inf
    return ranking.step_sums(triangle, items, anchors, constant_anchors=True)


def _quantised_ap(count: Array, count_pos: Array, tie_aware: bool) -> Array:
    cum = jnp.cumsum(count, axis=-1)
    cum_pos = jnp.cumsum(count_pos, axis=-1)
    num_pos = cum_pos[..., -1]
    if not tie_aware:
        precision = positives.safe_divide(cum_pos, cum)
        return positives.safe_divide(jnp.sum(count_pos * precision, axis=-1), num_pos)
    # Tie-aware AP (He et al. 2018): the items of a bin are tied, each positive of the bin is
    # at a uniformly random position among them. With C_ = C_{m-1}, the bin's positives then
    # have mean precision (1/c) \int_{C_+1}^{C_m+1} (C+_ + 1 + r (u - C_ - 1)) / u du, where
    # r = (c+ - 1)/(c - 1) is the chance that another item of the bin is positive.
    prev = cum - count
    prev_pos = cum_pos - count_pos
    ratio = positives.safe_divide(jax.nn.relu(count_pos - 1.0), jax.nn.relu(count - 1.0))
    log_term = jnp.log((cum + 1.0) / (prev + 1.0))
    integral = count * ratio + (prev_pos + 1.0 - ratio * (prev + 1.0)) * log_term
    mean_precision = positives.safe_divide(integral, count)
    return positives.safe_divide(jnp.sum(count_pos * mean_precision, axis=-1), num_pos)


def _histogram_ap_kernel(scores, labels, where, positives=None, *, num_bins, score_range, tie_aware):
    """``positives``: the gathered positives (``batch_loss``, which knows where they are from one
    sort): their histogram from the slots, the negatives' from the list, as FastAP's. None: both
    from masked passes over the list, which needs no search for the positives."""
    counts = functools.partial(_bin_counts, num_bins=num_bins, score_range=score_range)
    count_pos = counts(*_positives_of(scores, labels, where, positives))
    count = counts(scores, where & (labels <= 0)) + count_pos
    return 1.0 - _quantised_ap(count, count_pos, tie_aware)


def _histogram_ap_values(
    lists: listfn.Lists, *, num_bins: int, score_range: tuple[float, float], tie_aware: bool
) -> Array:
    lo, hi = score_range
    kernel = functools.partial(
        _histogram_ap_kernel, num_bins=num_bins, score_range=(float(lo), float(hi)), tie_aware=bool(tie_aware)
    )
    return _histogram_values(lists, kernel)


def _positives_of(scores, labels, where, positives) -> tuple[Array, Array]:
    """``(scores, mask)`` of the positives: their slots where ``batch_loss`` gave them, else the
    list's own scores with the positives masked in."""
    if positives is None:
        return scores, where & (labels > 0)
    return positives.scores, positives.mask


def _histogram_values(lists: listfn.Lists, kernel) -> Array:
    """``kernel`` on the slots of ``lists``' positives where ``batch_loss``'s sort found them,
    else on the lists alone: locating each list's positives costs more than the second
    ``[N, M]`` pass the slots save (the list API, and ``batch_loss`` with its own
    ``relevance_fn``)."""
    if lists.slots is None:
        return kernel(lists.scores, lists.labels, lists.where)
    return lists.gather(kernel)


def _check_score_range(hparams: dict[str, Any], caller: str) -> None:
    """``score_range``: two finite numbers, max > min; ``tie_aware``: a bool."""
    p, value = validation.prefix(caller), hparams["score_range"]
    if isinstance(value, np.ndarray) and value.shape == (2,):
        value = tuple(value.tolist())
    pair = isinstance(value, tuple | list) and len(value) == 2
    if pair and any(isinstance(v, jax.core.Tracer) for v in value):
        raise validation.not_static("score_range", "(min, max) pair", caller)
    numbers = pair and all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in value)
    if not (numbers and np.isfinite(value).all() and value[1] > value[0]):
        raise ValueError(f"{p}score_range must be (min, max), finite numbers with max > min, got {value!r}")
    if isinstance(hparams["tie_aware"], jax.core.Tracer):
        raise validation.not_static("tie_aware", "bool", caller)
    if not isinstance(hparams["tie_aware"], bool | np.bool_):
        raise TypeError(f"{p}tie_aware must be True or False, got {hparams['tie_aware']!r}")


@listfn.list_function(_histogram_ap_values, check_hparams=_check_score_range)
def histogram_ap_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    num_bins: int = 25,
    score_range: tuple[float, float] = (0.0, 1.0),
    tie_aware: bool = False,
) -> Array:
    """Listwise AP loss with histogram binning, ``1 - AP^Q`` (Revaud et al., ICCV 2019).

    ``M = num_bins`` centres evenly spaced on ``score_range`` from high to low, triangular
    kernels of half-width equal to the spacing; the end bins absorb scores outside the range.
    ``tie_aware=False``: :math:`AP^Q = \\frac{1}{|P|}\\sum_m c^+_m C^+_m / C_m` (the paper's
    AP). ``tie_aware=True``: the items of a bin are treated as tied and each positive gets its
    expected precision over a random order of the tie (He et al.'s tie-aware AP, the
    ``TAPLoss`` of the authors' code).

    Args:
      scores, labels, where, reduce_fn: as for every list loss.
      max_positives: unused (common signature): the positives' histogram comes from a
        masked pass over the list (``batch_loss`` takes it from the slots of its sort).
      num_bins: ``M >= 2`` (25 in the paper's code on [0, 1]; 20 on [-1, 1] is also common).
      score_range: ``(min, max)`` of the quantiser.
      tie_aware: see above.

    References:
      Revaud, Almazan, Rezende, de Souza. "Learning with Average Precision: Training Image
      Retrieval with a Listwise Loss." ICCV 2019. He, Lu, Sclaroff. "Local Descriptors
      Optimized for Average Precision." CVPR 2018.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="histogram_ap_loss")
    values = _histogram_ap_values(lists, num_bins=num_bins, score_range=score_range, tie_aware=tie_aware)
    return lists.reduce(values, reduce_fn)


def _fast_ap_kernel(scores, labels, where, positives=None, *, num_bins):
    """``positives`` as for :func:`_histogram_ap_kernel`: the slots ``batch_loss`` found, or None
    (a masked pass over the list)."""
    width = 4.0 / num_bins
    centres = width * jnp.arange(num_bins + 1, dtype=scores.dtype)  # distance 0 = best
    # Each bin's soft count is a sum over the items of the triangle at the bin's centre
    # (ranking.step_sums with the bins as anchors). Items left out are at distance +inf, where
    # the triangle and its slope are 0.
    triangle = lambda x: jax.nn.relu(1.0 - jnp.abs(x) / width)  # noqa: E731
    anchors = jnp.broadcast_to(centres, scores.shape[:-1] + centres.shape)
    # The squared distance of unit vectors, never negative: a score a rounding above 1
    # (duplicated embeddings) is at distance 0, not in the band below bin 0 where the
    # triangle's slope would push a top-ranked positive down.
    distance = ranking.unit_squared_distance
    negatives = distance(ranking.negative_scores(scores, labels, where))
    positive_scores, is_positive = _positives_of(scores, labels, where, positives)
    positive_distance = jnp.where(is_positive, distance(positive_scores), jnp.inf)
    count_pos = ranking.step_sums(triangle, positive_distance, anchors, constant_anchors=True)
    count = ranking.step_sums(triangle, negatives, anchors, constant_anchors=True) + count_pos
    return 1.0 - _quantised_ap(count, count_pos, tie_aware=False)


def _fast_ap_values(lists: listfn.Lists, *, num_bins: int) -> Array:
    return _histogram_values(lists, functools.partial(_fast_ap_kernel, num_bins=num_bins))


@listfn.list_function(_fast_ap_values)
def fast_ap_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    num_bins: int = 10,
) -> Array:
    """FastAP loss, ``1 - FastAP`` on histograms of squared Euclidean distances.

    For L2-normalised embeddings the squared distance is :math:`d_j = 2 - 2 s_j \\in [0, 4]`;
    ``num_bins + 1`` centres :math:`z_l = l \\Delta`, :math:`\\Delta = 4 / \\mathrm{num\\_bins}`,
    with triangular kernels (no flat end bins, as in the authors' code), scanned from distance
    0 upwards:

    .. math::  \\mathrm{FastAP} = \\frac{1}{|P|} \\sum_l \\frac{h^+_l H^+_l}{H_l}

    Args:
      scores, labels, where, reduce_fn: as for every list loss (scores are cosine
        similarities in [-1, 1]).
      max_positives: unused (common signature), as for :func:`histogram_ap_loss`.
      num_bins: number of intervals of [0, 4] (10 in the paper).

    References:
      Cakir, He, Xia, Kulis, Sclaroff. "Deep Metric Learning to Rank." CVPR 2019.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="fast_ap_loss")
    return lists.reduce(_fast_ap_values(lists, num_bins=num_bins), reduce_fn)
