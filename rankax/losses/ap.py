"""AP surrogates built on a smooth rank: Smooth-AP, SupAP and ROADMAP (SupAP + calibration).

Both write average precision of one list as

.. math::  \\mathrm{AP} = \\frac{1}{|P|} \\sum_{k \\in P} \\frac{\\mathrm{rank}^+(k)}{\\mathrm{rank}(k)}

and replace the Heaviside step in the ranks by a surrogate; the loss is ``1 - AP``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rankax import metrics, ranking
from rankax._core import listfn, validation
from rankax.losses import _ranks, pairs

Array = jax.Array


def _smooth_ap_kernel(scores, labels, where, positives, *, temperature):
    rank, rank_pos = _ranks.sigmoid_ranks(scores, labels, where, positives, temperature)
    return 1.0 - _ap(rank, rank_pos, positives)


def _ap(rank: Array, rank_pos: Array, positives: ranking.Positives) -> Array:
    """AP from the ranks of the gathered positives (every positive has a slot)."""
    return metrics.ap_from_ranks(rank, rank_pos, positives.mask, jnp.sum(positives.mask, axis=-1))


def _smooth_ap_values(lists: listfn.Lists, *, temperature: float) -> Array:
    return lists.gather(functools.partial(_smooth_ap_kernel, temperature=temperature))


@listfn.list_function(_smooth_ap_values)
def smooth_ap_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    temperature: float = 0.01,
) -> Array:
    """Smooth-AP loss, ``1 - AP`` with sigmoid ranks.

    .. math::
        \\mathcal{L} = 1 - \\frac{1}{|P|} \\sum_{k \\in P}
        \\frac{1 + \\sum_{j \\in P, j \\ne k} \\sigma((s_j - s_k)/\\tau)}
             {1 + \\sum_{j \\ne k} \\sigma((s_j - s_k)/\\tau)}

    Tends to ``1 - AP`` (exact, tie-free lists) as ``temperature -> 0``.

    Args:
      scores: ``[..., N]`` similarities of one query to N items (query excluded).
      labels: ``[..., N]`` relevance; items with ``labels > 0`` are positives.
      where: optional ``[..., N]`` boolean mask of valid items.
      reduce_fn: ``jnp.mean`` (over lists with a positive), ``jnp.sum`` or ``None``
        (``[...]`` per-list values, 0 for lists without a positive); any other callable is
        called as ``reduce_fn(values, where=has_positive)``.
      max_positives: static number of positive slots per list (``None``: the default ladder);
        a call whose lists have more positives takes the next rung of the capacity ladder
        (4x the slots), so the value is exact either way.
      temperature: :math:`\\tau`, 0.01 in the paper.

    Returns:
      The reduced loss (scalar) or per-list losses ``[...]``.

    References:
      Brown, Xie, Kalogeiton, Zisserman. "Smooth-AP: Smoothing the Path Towards Large-Scale
      Image Retrieval." ECCV 2020.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="smooth_ap_loss")
    return lists.reduce(_smooth_ap_values(lists, temperature=temperature), reduce_fn)


def _supap_kernel(scores, labels, where, positives, **step):
    # rank+ is exact and carries no gradient; negatives get the piecewise upper bound.
    rank, rank_pos = _ranks.supap_ranks(scores, labels, where, positives, **step)
    return 1.0 - _ap(rank, rank_pos, positives)


def _supap_values(lists: listfn.Lists, **step: Any) -> Array:
    """Per-list SupAP loss; ``step``: ROADMAP's step parameters (``_ranks.ROADMAP_STEP``)."""
    return lists.gather(functools.partial(_supap_kernel, **step))


@listfn.list_function(_supap_values, choices=_ranks.ROADMAP_CHOICES)
def supap_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    temperature: float = 0.01,
    rho: float = 100.0,
    delta: float = 0.05,
    start: float = 0.5,
    offset: float = 1.44,
    variant: str = "fixed",
) -> Array:
    """SupAP, the robust AP surrogate of ROADMAP: ``1 - AP`` with an upper-bounding rank.

    .. math::
        \\mathrm{rank}^+(k) = 1 + \\sum_{j \\in P, j \\ne k} H(s_j - s_k), \\quad
        \\mathrm{rank}^-(k) = \\sum_{j \\in Neg} h(s_j - s_k), \\quad
        \\mathcal{L} = 1 - \\frac{1}{|P|}\\sum_{k \\in P}
            \\frac{\\mathrm{rank}^+(k)}{\\mathrm{rank}^+(k) + \\mathrm{rank}^-(k)}

    with ``h = rankax.ranking.roadmap_step`` (see there for the two ``variant`` forms). The
    positives' rank is exact, so only negatives are pushed; with the default ``start=0.5``
    and tie-free scores :math:`\\mathcal{L} \\ge 1 - \\mathrm{AP}`.

    Args:
      scores, labels, where, reduce_fn, max_positives: as in :func:`smooth_ap_loss`.
      temperature, rho, delta, start, offset, variant: the surrogate's parameters; defaults are the
        SOP/CUB values of the paper (iNaturalist: ``start=0.0, offset=1.0``).

    References:
      Ramzi, Thome, Rambour, Audebert, Bitot. "Robust and Decomposable Average Precision for
      Image Retrieval." NeurIPS 2021.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="supap_loss")
    step = _ranks.roadmap_step_args(locals())
    return lists.reduce(_supap_values(lists, **step), reduce_fn)


# ----------------------------------------------------------------------------- ROADMAP


def _roadmap_statistics(
    lists: listfn.Lists,
    *,
    pos_margin: float,
    neg_margin: float,
    supap_weight: float,
    calibration_weight: float,
    **step: Any,
) -> dict[str, Array]:
    """SupAP's ``{"sum", "count"}`` and the calibration statistics, per list."""
    del supap_weight, calibration_weight
    valid = lists.has_positive
    stats = {
        "sum": jnp.where(valid, _supap_values(lists, **step), 0.0),
        "count": valid.astype(jnp.float32),
    }
    stats.update(pairs.calibration_statistics(lists, pos_margin=pos_margin, neg_margin=neg_margin))
    return stats


def _roadmap_from_statistics(
    totals: dict[str, Array], *, supap_weight: float, calibration_weight: float, **unused: Any
) -> Array:
    del unused
    supap = totals["sum"] / jnp.maximum(totals["count"], 1.0)
    calibration = pairs.calibration_from_statistics(totals)
    return supap_weight * supap + calibration_weight * calibration


def _roadmap_values(lists: listfn.Lists, **hparams: Any) -> Array:
    """Per-list ``w1 * SupAP + w2 * calibration`` (each list on its own pairs)."""
    return _roadmap_from_statistics(_roadmap_statistics(lists, **hparams), **hparams)


@listfn.list_function(
    _roadmap_values,
    choices=_ranks.ROADMAP_CHOICES,
    statistics=_roadmap_statistics,
    from_statistics=_roadmap_from_statistics,
)
def roadmap_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    supap_weight: float = 1.0,
    calibration_weight: float = 1.0,
    pos_margin: float = 0.9,
    neg_margin: float = 0.6,
    temperature: float = 0.01,
    rho: float = 100.0,
    delta: float = 0.05,
    start: float = 0.5,
    offset: float = 1.44,
    variant: str = "fixed",
) -> Array:
    """ROADMAP: SupAP plus the calibration (decomposability) loss.

    .. math::
        \\mathcal{L} = w_1 \\, \\mathcal{L}_{\\mathrm{SupAP}} + w_2 \\, \\mathcal{L}_{\\mathrm{calib}}

    SupAP is averaged over the queries that have a positive and the calibration term is pooled
    over all pairs (of all lists here; of the whole batch through ``rankax.batch_loss``), as
    in the official code. ROADMAP's configs use ``w1 = w2 = 1``; SupRank's use 0.9 / 0.1.

    Args:
      scores, labels, where, max_positives: as in :func:`supap_loss`.
      reduce_fn: ``jnp.mean`` (SupAP mean over lists + pooled calibration), ``None``
        (per-list ``w1 * supap + w2 * calibration`` on the list's own pairs) or ``jnp.sum``.
      supap_weight, calibration_weight: :math:`w_1, w_2`.
      pos_margin, neg_margin: calibration margins (0.9, 0.6).
      temperature, rho, delta, start, offset, variant: SupAP's surrogate, see :func:`supap_loss`.

    References:
      Ramzi, Thome, Rambour, Audebert, Bitot. "Robust and Decomposable Average Precision for
      Image Retrieval." NeurIPS 2021.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="roadmap_loss")
    supap = lists.reduce(_supap_values(lists, **_ranks.roadmap_step_args(locals())), reduce_fn)
    calibration = pairs.reduce_calibration(
        lists, reduce_fn, pos_margin=pos_margin, neg_margin=neg_margin
    )
    return supap_weight * supap + calibration_weight * calibration
