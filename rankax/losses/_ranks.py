"""Smooth ranks shared by the SupAP family (SupAP, ROADMAP, SupR@k, H-AP, SupNDCG).

All of them smooth the step of some items with ROADMAP's upper bound ``h``
(:func:`rankax.ranking.roadmap_step`), whose six parameters travel together as
:data:`ROADMAP_STEP`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rankax import ranking

Array = jax.Array

#: The parameters of ROADMAP's step ``h``, as named in every loss that uses it.
ROADMAP_STEP = ("temperature", "rho", "delta", "start", "offset", "variant")
#: The option check of those losses (``variant`` is one of the two published forms).
ROADMAP_CHOICES = {"variant": ranking.ROADMAP_VARIANTS}


def roadmap_step_args(hparams: dict[str, Any]) -> dict[str, Any]:
    """The :data:`ROADMAP_STEP` entries of a loss's hyperparameters."""
    return {name: hparams[name] for name in ROADMAP_STEP}


def supap_ranks(
    scores: Array, labels: Array, where: Array, positives: ranking.Positives, **step: Any
) -> tuple[Array, Array]:
    """SupAP's rank of the gathered positives for binary relevance, ``[..., C]`` each.

    Returns ``(rank, rank_pos)``: ``rank_pos = 1 + sum_{j in P, j != k} H(s_j - s_k)`` is exact
    and carries no gradient; ``rank = rank_pos + sum_{j in Neg} h(s_j - s_k)`` with ROADMAP's
    upper bound ``h`` (``step``: :data:`ROADMAP_STEP`) for the negatives.
    """
    diff, others = ranking.pairwise_differences(scores, where, positives)
    is_pos = (labels > 0)[..., None, :]
    rank_pos = 1.0 + jnp.sum(others & is_pos & (diff >= 0), axis=-1).astype(jnp.float32)
    neg_step = ranking.roadmap_step(diff, **step)
    rank_neg = jnp.sum(jnp.where(others & ~is_pos, neg_step, 0.0), axis=-1)
    return rank_pos + rank_neg, rank_pos


def graded_ranks(
    scores: Array, labels: Array, where: Array, positives: ranking.Positives, **step: Any
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
    step_values = jnp.where(less, ranking.roadmap_step(diff, **step), ranking.heaviside(diff))
    rank = 1.0 + jnp.sum(jnp.where(others, step_values, 0.0), axis=-1)
    return rank, diff, others
