"""Recall@k surrogates: SupRank's SupR@k and Patel et al.'s RS@k.

Both smooth the *recall* of a query at several cut-offs ``k``,

.. math::
    R@k = \\frac{\\#\\{p \\in P : \\mathrm{rank}(p) \\le k\\}}{\\min(|P|, k)},

by replacing the indicator with :math:`\\sigma((k - \\mathrm{rank}(p)) / \\tau_2)` and the rank by
a surrogate; the loss is ``1 - mean_k R@k``. They differ in the rank: SupR@k uses SupRank's
(exact among positives, ROADMAP's upper bound ``h`` for negatives), RS@k a sigmoid of every
other item. With exact ranks and :math:`\\tau_2 \\to 0` both tend to this R@k (the fraction of
the first ``min(|P|, k)`` slots that are positive, SupRank's "true recall"), for positives not
ranked exactly at a cut-off.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rankax import ranking
from rankax._core import listfn, positives, validation
from rankax.losses import _ranks

Array = jax.Array

DEFAULT_KS = (1, 2, 4, 8, 16)


def _check_ks(hparams: dict[str, Any], caller: str) -> None:
    """``ks``, and ``k_temperature``: one per cut-off when it is a sequence."""
    ks = validation.check_ks(hparams["ks"], integer=False, caller=caller)
    temps = hparams["k_temperature"]
    if validation.is_sequence(temps) and len(temps) != len(ks):
        raise ValueError(
            f"{validation.prefix(caller)}k_temperature must be one temperature or one per cut-off "
            f"of ks={tuple(ks)}, got {tuple(float(t) for t in temps)}"
        )


def k_temperatures(ks: Sequence[float], k_temperature: Any) -> tuple[Any, ...]:
    """The recall temperature of each cut-off: ``k_temperature`` for all, one per cut-off
    from a sequence, or ``k`` itself for ``None`` (RS@k's code until 2024:
    ``--k_temperatures 1 2 4 8 16`` for ``--k_vals_train 1 2 4 8 16``)."""
    if k_temperature is None:
        return tuple(ks)
    if validation.is_sequence(k_temperature):
        return tuple(k_temperature)
    return (k_temperature,) * len(ks)


def _smooth_recall(
    rank: Array, gathered: ranking.Positives, num_pos: Array, ks, k_temperature, length: Array | None
) -> Array:
    """``mean_k sum_p sigmoid((k - rank_p)/tau_k) / min(|P|, k)`` over the filled slots, ``tau_k``
    from :func:`k_temperatures`. RS@k's code (``length``: each list's number of items) first
    takes ``k = min(k, length)`` (its ``min(batch_size, k)``; ``tau_k`` stays that of the
    cut-off as given) and caps the soft count of hits at ``k``."""
    recalls = []
    for k, tau in zip(ks, k_temperatures(ks, k_temperature), strict=True):
        k = float(k) if length is None else jnp.minimum(float(k), length)  # [...] per list for RS@k
        per_slot = k if length is None else k[..., None]
        hits = jnp.sum(jnp.where(gathered.mask, jax.nn.sigmoid((per_slot - rank) / tau), 0.0), axis=-1)
        if length is not None:
            hits = jnp.minimum(hits, k)
        recalls.append(positives.safe_divide(hits, jnp.minimum(num_pos, k)))
    return sum(recalls) / len(ks)


def _sup_recall_kernel(scores, labels, where, gathered, *, ks, k_temperature, **step):
    rank, _ = _ranks.supap_ranks(scores, labels, where, gathered, **step)
    num_pos = positives.num_positives(labels, where)
    return 1.0 - _smooth_recall(rank, gathered, num_pos, ks, k_temperature, length=None)


def _sup_recall_values(
    lists: listfn.Lists, *, ks: Sequence[float], k_temperature: Any, **step: Any
) -> Array:
    """Per-list SupR@k loss; ``step``: ROADMAP's step parameters (``_ranks.ROADMAP_STEP``)."""
    kernel = functools.partial(_sup_recall_kernel, ks=tuple(ks), k_temperature=k_temperature, **step)
    return lists.gather(kernel)


@listfn.list_function(_sup_recall_values, choices=_ranks.ROADMAP_CHOICES, check_hparams=_check_ks)
def sup_recall_at_k_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    k_temperature: float | Sequence[float] | None = 1.0,
    temperature: float = 0.01,
    rho: float = 100.0,
    delta: float = 0.05,
    start: float = 0.5,
    offset: float = 1.44,
    variant: str = "fixed",
) -> Array:
    """SupRank's Recall@k loss, ``1 - SupR@k`` averaged over the cut-offs ``ks``.

    .. math::
        \\mathrm{rank}(p) = 1 + \\sum_{j \\in P, j \\ne p} H(s_j - s_p)
            + \\sum_{j \\in Neg} h(s_j - s_p), \\qquad
        \\mathrm{SupR@k} = \\frac{1}{|K|} \\sum_{k \\in K} \\frac{\\sum_{p \\in P}
            \\sigma((k - \\mathrm{rank}(p)) / \\tau_2)}{\\min(|P|, k)}

    Args:
      scores, labels, where, reduce_fn, max_positives: as in :func:`rankax.losses.supap_loss`
        (binary: ``labels > 0`` are the positives).
      ks: cut-offs ``K = (1, 2, 4, 8, 16)`` (SupRank's configs).
      k_temperature: temperature of the recall sigmoid (1.0, SupRank's ``temp``); a sequence
        gives one per cut-off, ``None`` takes ``k`` for cut-off ``k``. The soft hits are not
        capped: as ``k_temperature`` grows each tends to 1/2 and the loss to
        ``1 - mean_k (|P|/2) / min(|P|, k)``, which is negative once that mean exceeds 1
        (from ``|P| = 5`` with the default ``ks``).
      temperature, rho, delta, start, offset, variant: the ROADMAP step ``h`` of the negatives.

    References:
      Ramzi et al. "Optimization of Rank Losses for Image Retrieval." arXiv:2309.08250.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="sup_recall_at_k_loss")
    step = _ranks.roadmap_step_args(locals())
    return lists.reduce(_sup_recall_values(lists, ks=ks, k_temperature=k_temperature, **step), reduce_fn)


def _rs_at_k_kernel(scores, labels, where, gathered, *, ks, temperature, k_temperature):
    rank, _ = _ranks.sigmoid_ranks(scores, labels, where, gathered, temperature)
    num_pos = positives.num_positives(labels, where)
    length = jnp.sum(where, axis=-1).astype(rank.dtype)
    return 1.0 - _smooth_recall(rank, gathered, num_pos, ks, k_temperature, length=length)


def _rs_at_k_values(
    lists: listfn.Lists, *, ks: Sequence[float], temperature: float, k_temperature: Any
) -> Array:
    kernel = functools.partial(
        _rs_at_k_kernel, ks=tuple(ks), temperature=temperature, k_temperature=k_temperature
    )
    return lists.gather(kernel)


@listfn.list_function(_rs_at_k_values, check_hparams=_check_ks)
def recall_at_k_surrogate_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.01,
    k_temperature: float | Sequence[float] | None = None,
) -> Array:
    """Recall@k surrogate (RS@k), ``1 - RS@k`` averaged over the cut-offs ``ks``.

    .. math::
        \\mathrm{rank}(p) = 1 + \\sum_{j \\ne p} \\sigma((s_j - s_p) / \\tau_1), \\qquad
        \\mathrm{RS@k} = \\frac{1}{|K|} \\sum_{k \\in K} \\frac{\\min\\big(k, \\sum_{p \\in P}
            \\sigma((k - \\mathrm{rank}(p)) / \\tau_2)\\big)}{\\min(|P|, k)}

    The soft number of hits is capped at ``k`` as in the authors' code (with a soft rank many
    positives can each look "in the top k"), and, as there, a cut-off beyond the list is taken
    as its length (``k = min(k, N)``, N the valid items; their ``min(batch_size, k)``), its
    ``tau_2`` unchanged. Their batch code keeps the query in its own list as an extra item
    ranked before every positive (not as a positive); rankax's default list excludes it
    (``include_self=True`` counts it, as a positive).

    Args:
      scores, labels, where, reduce_fn, max_positives: as for every list loss.
      ks: cut-offs (the paper uses ``{1, 2, 4, 8, 16}`` on SOP-like datasets).
      temperature: rank sigmoid temperature (0.01, ``--sigmoid_temperature``).
      k_temperature: recall sigmoid temperature: ``None`` (default) takes ``k`` for cut-off
        ``k``, as the authors' code when the paper's numbers were made
        (``yash0307/RecallatK_surrogate@44b7011:src/main.py``, ``--k_temperatures`` defaults
        to ``--k_vals_train``, 1 2 4 8 16; its 2024 commit ``ed05202`` sets 1 for every
        cut-off: ``k_temperature=1.0``); one number for every cut-off, or one per cut-off.

    References:
      Patel, Tolias, Matas. "Recall@k Surrogate Loss with Large Batches and Similarity
      Mixup." CVPR 2022.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="recall_at_k_surrogate_loss")
    values = _rs_at_k_values(lists, ks=ks, temperature=temperature, k_temperature=k_temperature)
    return lists.reduce(values, reduce_fn)
