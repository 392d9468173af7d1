"""Smooth ranks shared by the SupAP family (SupAP, ROADMAP, SupR@k, H-AP, SupNDCG).

All of them smooth the step of some items with ROADMAP's upper bound ``h``
(:func:`rankax.ranking.roadmap_step`), whose six parameters travel together as
:data:`ROADMAP_STEP`.
"""

from __future__ import annotations

import functools
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
    rank_pos = 1.0 + positive_counts(positives)
    return rank_pos + negative_steps(roadmap_h(**step), scores, labels, where, positives), rank_pos


def sigmoid_ranks(
    scores: Array, labels: Array, where: Array, positives: ranking.Positives, temperature: float
) -> tuple[Array, Array]:
    """Smooth-AP's sigmoid ranks of the gathered positives, ``[..., C]`` each.

    Returns ``(rank, rank_pos)``: ``rank_pos = 1 + sum_{j in P, j != k} sigma((s_j - s_k)/tau)``
    and ``rank = rank_pos + sum_{j in Neg} sigma((s_j - s_k)/tau)``, both differentiable.
    """
    sigmoid = functools.partial(ranking.sigmoid_step, temperature=temperature)
    diff, others = ranking.positive_differences(positives)
    rank_pos = 1.0 + jnp.sum(jnp.where(others, sigmoid(diff), 0.0), axis=-1)
    return rank_pos + negative_steps(sigmoid, scores, labels, where, positives), rank_pos


def roadmap_h(**step: Any) -> Any:
    """ROADMAP's ``h`` with the loss's :data:`ROADMAP_STEP` parameters, as a function of ``x``."""
    return functools.partial(ranking.roadmap_step, **step)


def positive_counts(positives: ranking.Positives) -> Array:
    """``[..., C]`` exact number of other positives scoring at least as high as each gathered
    positive, :math:`\\sum_{j \\in P, j \\ne k} H(s_j - s_k)` (no gradient)."""
    diff, others = ranking.positive_differences(positives)
    return jax.lax.stop_gradient(jnp.sum(others & (diff >= 0), axis=-1).astype(jnp.float32))


def negative_steps(
    step: Any, scores: Array, labels: Array, where: Array, positives: ranking.Positives
) -> Array:
    """``[..., C]`` :math:`\\sum_{j \\in Neg} f(s_j - s_k)` for each gathered positive ``k`` and
    a step ``f`` (:func:`roadmap_h`, :func:`rankax.ranking.sigmoid_step`), through
    :func:`rankax.ranking.step_sums` (empty slots: finite garbage, masked by the callers)."""
    anchors = jnp.where(positives.mask, positives.scores, 0.0)
    return ranking.step_sums(step, ranking.negative_scores(scores, labels, where), anchors)


def graded_ranks(
    scores: Array, labels: Array, where: Array, positives: ranking.Positives, **step: Any
) -> tuple[Array, Array, Array]:
    """SupRank's rank of the gathered positives for graded relevance, ``[..., C]`` each.

    For a positive ``k`` the items less relevant than ``k`` (``rel_j < rel_k``, negatives
    included) enter through ROADMAP's smooth upper bound ``h`` and all others through the exact
    step ``H``:  :math:`\\mathrm{rank}(k) = 1 + \\sum_{j \\ne k} [H \\text{ if } rel_j \\ge
    rel_k \\text{ else } h](s_j - s_k)`. The negatives' part is one :func:`negative_steps`
    (``O(C * N)``); the positives' part works on the ``[..., C, C]`` differences among the
    gathered positives (every positive has a slot), which are returned with the rank,
    ``(rank, diff, others)`` as in :func:`rankax.ranking.positive_differences`, for the
    callers' numerators.
    """
    diff, others = ranking.positive_differences(positives)
    rel = positives.labels
    less = rel[..., None, :] < rel[..., :, None]
    step_values = jnp.where(less, ranking.roadmap_step(diff, **step), ranking.heaviside(diff))
    among_positives = jnp.sum(jnp.where(others, step_values, 0.0), axis=-1)
    rank = 1.0 + among_positives + negative_steps(roadmap_h(**step), scores, labels, where, positives)
    return rank, diff, others
