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
    """``ks``, ``k_temperature`` (one per cut-off when it is a sequence) and RS@k's ``self_score``."""
    if hparams.get("self_score") is not None:
        validation.check_number("self_score", hparams["self_score"], "finite", caller=caller)
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


def _rs_at_k_kernel(scores, labels, where, gathered, *, ks, temperature, k_temperature, self_score):
    rank, _ = _ranks.sigmoid_ranks(scores, labels, where, gathered, temperature)
    num_pos = positives.num_positives(labels, where)
    length = jnp.sum(where, axis=-1).astype(rank.dtype)
    if self_score is not None:  # one more item, not relevant, of that score (the authors' query)
        rank = rank + ranking.sigmoid_step(self_score - gathered.scores, temperature)
        length = length + 1.0
    return 1.0 - _smooth_recall(rank, gathered, num_pos, ks, k_temperature, length=length)


def _rs_at_k_values(
    lists: listfn.Lists, *, ks: Sequence[float], temperature: float, k_temperature: Any,
    self_score: float | None = None,
) -> Array:
    kernel = functools.partial(
        _rs_at_k_kernel, ks=tuple(ks), temperature=temperature, k_temperature=k_temperature,
        self_score=self_score,
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
    self_score: float | None = None,
) -> Array:
    """Recall@k surrogate (RS@k), ``1 - RS@k`` averaged over the cut-offs ``ks``.

    .. math::
        \\mathrm{rank}(p) = 1 + \\sum_{j \\ne p} \\sigma((s_j - s_p) / \\tau_1), \\qquad
        \\mathrm{RS@k} = \\frac{1}{|K|} \\sum_{k \\in K} \\frac{\\min\\big(k, \\sum_{p \\in P}
            \\sigma((k - \\mathrm{rank}(p)) / \\tau_2)\\big)}{\\min(|P|, k)}

    The soft number of hits is capped at ``k`` as in the authors' code (with a soft rank many
    positives can each look "in the top k"), and, as there, a cut-off beyond the list is taken
    as its length (``k = min(k, N)``, N the valid items; their ``min(batch_size, k)``), its
    ``tau_2`` unchanged.

    Their batch code (``yash0307/RecallatK_surrogate:src/losses.py``) also keeps the query
    in its own list as one more item, not a positive, scored :math:`\\|x_q\\|^2`, which is 1
    for their L2-normalised embeddings. rankax's batch list leaves the query out by default
    (``include_self=True`` would count it as a positive); ``self_score=1.0`` adds that item
    to every list: :math:`\\sigma((1 - s_p)/\\tau_1)` in each positive's rank and one item
    in the length ``N`` above. That is their loss for unit-norm embeddings, and their gradient
    through the L2 normalisation (their :math:`\\|x_q\\|^2` has a radial gradient that
    normalising removes; tested against a NumPy transcription of their formula). Leaving it
    out changes the loss by a few hundredths to a few tenths on 64-item batches of 4 per
    class, most on well-separated ones: there the query, scored 1, sits above every positive,
    so none reaches rank 1 (on tight clusters the gradients can point in opposite directions).

    Args:
      scores, labels, where, reduce_fn, max_positives: as for every list loss.
      ks: cut-offs (the paper uses ``{1, 2, 4, 8, 16}`` on SOP-like datasets).
      temperature: rank sigmoid temperature (0.01, ``--sigmoid_temperature``).
      k_temperature: recall sigmoid temperature: ``None`` (default) takes ``k`` for cut-off
        ``k``, as the authors' code when the paper's numbers were made
        (``yash0307/RecallatK_surrogate@44b7011:src/main.py``, ``--k_temperatures`` defaults
        to ``--k_vals_train``, 1 2 4 8 16; its 2024 commit ``ed05202`` sets 1 for every
        cut-off: ``k_temperature=1.0``); one number for every cut-off, or one per cut-off.
      self_score: ``None`` (default): no extra item. A number: every list gets one more item,
        not relevant, of that fixed score (no gradient), as the authors' query in its own list
        (``1.0`` for unit-norm embeddings). Meant for lists without the query
        (``include_self=False``, the default); with ``include_self=True`` the query would be
        counted twice.

    References:
      Patel, Tolias, Matas. "Recall@k Surrogate Loss with Large Batches and Similarity
      Mixup." CVPR 2022.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="recall_at_k_surrogate_loss")
    values = _rs_at_k_values(
        lists, ks=ks, temperature=temperature, k_temperature=k_temperature, self_score=self_score
    )
    return lists.reduce(values, reduce_fn)
