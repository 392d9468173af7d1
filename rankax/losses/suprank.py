"""SupRank losses for graded relevance: H-AP and NDCG with the SupRank surrogate rank.

Relevance ``rel_j >= 0`` is graded (e.g. from hierarchical label paths with
:func:`rankax.hierarchy.path_relevance`); ``rel_j > 0`` are the positives. The SupRank rank of a
positive ``k`` smooths only the items that *should* come after it:

.. math::
    \\mathrm{rank}(k) = 1 + \\sum_{j \\ne k,\\ rel_j < rel_k} h(s_j - s_k)
                         + \\sum_{j \\ne k,\\ rel_j \\ge rel_k} H(s_j - s_k)

with ``h`` ROADMAP's upper bound of the step (:func:`rankax.ranking.roadmap_step`), so the
gradient only moves less relevant items below ``k``. For binary relevance this is exactly SupAP's
rank, and :func:`hap_loss` equals :func:`rankax.losses.supap_loss`.

"Less relevant" compares the relevance values given as ``labels``, or, with ``rule`` (H-AP:
``labels`` are then shared hierarchy levels), the levels, as the official code does; the two
differ under the ``"pop"`` rule where a coarser level has few items in the list.
:func:`rankax.batch_loss` on ``[B, L]`` label paths gives H-AP the levels.

SupRank's third ingredient, the decomposability loss, is :func:`rankax.losses.calibration_loss`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rankax import hierarchy, metrics, ranking
from rankax._core import listfn, positives, validation
from rankax.losses import _ranks

Array = jax.Array


def _hrank_steps(diff, rel, with_hrank, beta, gamma, leak):
    """``[..., C, C]`` step of the H-rank between gathered positives (row ``k``, column ``j``):
    exact ``H(s_j - s_k)`` (no gradient), or with ``with_hrank`` HAPPIER's
    :func:`rankax.ranking.hrank_step` where ``j`` is more relevant than ``k``."""
    exact = ranking.heaviside(diff)
    if not with_hrank:
        return exact
    more = rel[..., None, :] > rel[..., :, None]
    return jnp.where(more, ranking.hrank_step(diff, beta=beta, gamma=gamma, leak=leak), exact)


def _relevance_of(labels, where, gathered, rule, num_levels, alpha):
    """``(total relevance of each list [...], the positives' relevance [..., C])``: from
    ``labels`` themselves, or, with a ``rule``, the relevance of that rule computed per list
    from the shared levels that ``labels`` then hold (counted per level: no ``[..., N]``
    relevance array, :func:`rankax.hierarchy.relevance_at_levels`)."""
    if rule is None:
        # Checked here, where the rule is final (batch_loss gives label paths theirs after the
        # loss's options are checked): without one, alpha would be ignored.
        if not isinstance(alpha, jax.Array) and np.ndim(alpha) == 0 and alpha != 1.0:
            raise ValueError(f"hap_loss: alpha={alpha!r} weights the levels of a rule, and rule=None (labels "
                             "are relevance values) would ignore it: pass rule= with num_levels=, or [B, L] "
                             "label paths to batch_loss without a relevance_fn, or leave alpha out")
        return jnp.sum(jnp.where(where, labels, 0.0), axis=-1), gathered.labels
    counts = hierarchy.list_level_counts(labels.astype(jnp.int32), where, num_levels)  # whole 0..L
    relevance = functools.partial(
        hierarchy.relevance_at_levels, counts=counts, num_levels=num_levels, rule=rule, alpha=alpha,
        dtype=labels.dtype,
    )
    per_level = relevance(jnp.broadcast_to(jnp.arange(num_levels + 1), counts.shape))
    total = jnp.sum(per_level * counts, axis=-1)  # sum over the valid items, level by level
    return total, relevance(gathered.labels.astype(jnp.int32))


def _hap_kernel(scores, labels, where, gathered, *, with_hrank, beta, gamma, leak, rule, num_levels,
                alpha, **step):
    # Which items are less (more) relevant than a positive: gathered.labels, the relevance or,
    # with a rule, the shared levels (the official code's comparison).
    rank, diff, others = _ranks.graded_ranks(scores, labels, where, gathered, **step)
    total_rel, rel_pos = _relevance_of(labels, where, gathered, rule, num_levels, alpha)
    # H-rank: the relevance "earned" at k; negatives share nothing with k, so the sum runs over
    # the other positives ([C, C]).
    shared = jnp.minimum(rel_pos[..., None, :], rel_pos[..., :, None])
    steps = _hrank_steps(diff, gathered.labels, with_hrank, beta, gamma, leak)
    hrank = rel_pos + jnp.sum(jnp.where(others, shared * steps, 0.0), axis=-1)
    return 1.0 - metrics.hap_from_ranks(hrank, rank, gathered.mask, total_rel)


def _hap_values(lists: listfn.Lists, **hparams: Any) -> Array:
    """Per-list H-AP loss; ``hparams``: ROADMAP's step parameters (``_ranks.ROADMAP_STEP``),
    the H-rank's (``with_hrank``, ``beta``, ``gamma``, ``leak``) and the relevance's
    (``rule``, ``num_levels``, ``alpha``)."""
    return lists.gather(functools.partial(_hap_kernel, **hparams))


#: ``hap_loss``'s defaults of the smoothed H-rank's parameters (HAPPIER's configs), which
#: ``with_hrank=False`` does not use.
_HRANK_DEFAULTS = {"beta": 25.0, "gamma": 0.5, "leak": 10.0}


def _check_hap(hparams: dict[str, Any], caller: str) -> None:
    p = validation.prefix(caller)
    if not isinstance(hparams["with_hrank"], bool | np.bool_):
        raise TypeError(
            f"{p}with_hrank must be a static Python bool (it selects the H-rank's step), got "
            f"{hparams['with_hrank']!r}"
        )
    rule, num_levels = hparams["rule"], hparams["num_levels"]
    if rule is not None and rule not in hierarchy.RELEVANCE_RULES:
        raise ValueError(f"{p}rule must be None (labels are relevance values) or one of "
                         f"{hierarchy.RELEVANCE_RULES} (labels are shared levels), got {rule!r}")
    if rule is not None and not validation.is_int_at_least(num_levels, 1):
        raise ValueError(f"{p}rule={rule!r} reads labels as shared levels 0..L: pass num_levels=L, "
                         f"the number of hierarchy levels (an int >= 1), got {num_levels!r}")
    if not hparams["with_hrank"]:  # the exact H-rank step has no parameters: they would be ignored
        changed = [f"{k}={hparams[k]!r}" for k, v in _HRANK_DEFAULTS.items()
                   if not isinstance(hparams[k], jax.Array) and np.ndim(hparams[k]) == 0 and hparams[k] != v]
        if changed:
            them = "them" if len(changed) > 1 else "it"
            raise ValueError(f"{p}{', '.join(changed)}: the smoothed H-rank's step, which with_hrank=False "
                             f"does not use (its step is exact): pass with_hrank=True, or leave {them} out")


@listfn.list_function(_hap_values, graded=True, choices=_ranks.ROADMAP_CHOICES, check_hparams=_check_hap)
def hap_loss(
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
    with_hrank: bool = False,
    beta: float = 25.0,
    gamma: float = 0.5,
    leak: float = 10.0,
    rule: str | None = None,
    num_levels: int | None = None,
    alpha: float = 1.0,
) -> Array:
    """SupRank's hierarchical AP loss, ``1 - H-AP`` with the SupRank rank.

    .. math::
        \\mathcal{H}\\text{-rank}(k) = rel_k + \\sum_{j \\in P, j \\ne k}
            \\min(rel_j, rel_k)\\, H(s_j - s_k), \\qquad
        \\mathcal{H}\\text{-AP} = \\frac{\\sum_{k \\in P} \\mathcal{H}\\text{-rank}(k) /
            \\mathrm{rank}(k)}{\\sum_{k \\in P} rel_k}

    with ``rank`` the SupRank rank of the module docstring. With exact steps and binary
    relevance H-AP is AP; with this surrogate and binary relevance the loss is SupAP.

    The H-rank's step is exact and carries no gradient (``with_hrank=False``, as in the official
    configs). With ``with_hrank=True``, the official code's other option, the step of each more
    relevant positive (``rel_j > rel_k``) is HAPPIER's :func:`rankax.ranking.hrank_step`
    ``g(s_j - s_k)`` (``beta``, ``gamma``, ``leak``), so the H-rank has a gradient too;
    items as or less relevant keep ``H``.

    Args:
      scores: ``[..., N]`` similarities of a query to N items.
      labels: ``[..., N]`` graded relevance >= 0 (> 0: positive), e.g. from
        :func:`rankax.hierarchy.path_relevance` (SupRank's "pop" rule).
      where, reduce_fn, max_positives: as in :func:`rankax.losses.supap_loss`.
      temperature, rho, delta, start, offset, variant: the ROADMAP step ``h`` (SupRank's configs:
        0.01, 100, 0.05, 0.5, 1.44).
      with_hrank: a static bool: smooth the H-rank with ``hrank_step`` (default False, as in
        every loss config of ``elias-ramzi/SupRank@d3d0e3c:suprank/config/loss/`` and all but
        the unused ``HAPPIER_5_SOP.yaml`` of ``elias-ramzi/HAPPIER@5af91b3``).
      beta, gamma, leak: ``hrank_step``'s slope above, offset above and slope below (the
        official configs' 25, 0.5, 10); used only with ``with_hrank`` (other values without it
        are refused: they would be ignored).
      rule: ``None`` (default): ``labels`` are relevance values, and "less (more) relevant"
        compares them. ``"pop"``, ``"levels"`` or ``"count"``: ``labels`` are the numbers of
        hierarchy levels each item shares with the query (whole numbers ``0..num_levels``,
        :func:`rankax.hierarchy.shared_levels`), the relevance is
        :func:`rankax.hierarchy.relevance_from_levels` of that rule over each list's valid
        items, and "less (more) relevant" compares the levels, as the official code does
        (``inferior_relevance`` of ``target``, the shared levels, in
        ``elias-ramzi/SupRank@d3d0e3c:suprank/losses/tools/differentiable_rank.py``). The two
        differ under ``"pop"`` (``w_t / n_t``) where a coarser level has few items in the list
        and its share is as large as a finer level's. :func:`rankax.batch_loss` with ``[B, L]``
        label paths (and no ``relevance_fn``) passes the shared levels with ``rule="pop"``.
      num_levels: ``L``, the hierarchy's number of levels (needed with a ``rule``).
      alpha: the exponent of the rule's level weights (SupRank's 1.0); only with a ``rule``
        (another value without one is refused: it would be ignored).

    References:
      Ramzi, Thome, Rambour, Audebert, Bitot. "Optimization of Rank Losses for Image
      Retrieval." arXiv:2309.08250 (SupRank); "Hierarchical Average Precision Training for
      Pertinent Image Retrieval." ECCV 2022 (HAPPIER).
    """
    if rule is not None:  # labels are shared levels: whole numbers 0..L
        t = hierarchy.check_levels(labels, num_levels, caller="hap_loss", name="labels")
        # out of 0..L (traced, unchecked): level 0, relevance 0 as for any invalid label; a level
        # above L would still rank as the most relevant
        labels = jnp.where((t >= 0) & (t <= num_levels), t, 0)
    lists = listfn.check(scores, labels, where, max_positives, graded=True, caller="hap_loss")
    hrank = {"with_hrank": with_hrank, "beta": beta, "gamma": gamma, "leak": leak}
    relevance = {"rule": rule, "num_levels": num_levels, "alpha": alpha}
    return lists.reduce(
        _hap_values(lists, **_ranks.roadmap_step_args(locals()), **hrank, **relevance), reduce_fn
    )


def _sup_ndcg_kernel(scores, labels, where, gathered, **step):
    rank, _, _ = _ranks.graded_ranks(scores, labels, where, gathered, **step)
    # Every positive is gathered and the other items' gain is 0: the largest relevance and
    # the ideal DCG come from the slots, with no sort of the list.
    top = jnp.max(jnp.where(gathered.mask, gathered.labels, 0.0), axis=-1, keepdims=True)
    gain_k = metrics.ndcg_gains(gathered.labels, top)
    dcg = metrics.dcg(gain_k, rank, gathered.mask)
    ideal = metrics.ideal_positions(gathered).astype(rank.dtype)
    return 1.0 - positives.safe_divide(dcg, metrics.dcg(gain_k, ideal, gathered.mask))


def _sup_ndcg_values(lists: listfn.Lists, **step: Any) -> Array:
    """Per-list SupNDCG loss; ``step``: ROADMAP's step parameters (``_ranks.ROADMAP_STEP``)."""
    return lists.gather(functools.partial(_sup_ndcg_kernel, **step))


@listfn.list_function(
    _sup_ndcg_values, graded=True, choices=_ranks.ROADMAP_CHOICES, path_relevance="count"
)
def sup_ndcg_loss(
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
    """SupRank's NDCG loss, ``1 - NDCG`` with the SupRank rank.

    .. math::
        \\mathrm{NDCG} = \\frac{1}{\\mathrm{IDCG}} \\sum_{k \\in P}
            \\frac{2^{rel_k} - 1}{\\log_2(1 + \\mathrm{rank}(k))}, \\qquad
        \\mathrm{IDCG} = \\sum_{i=1}^{N} \\frac{2^{rel_{(i)}} - 1}{\\log_2(1 + i)}

    with :math:`rel_{(i)}` the relevances sorted in decreasing order (the ideal ranking) and
    ``rank`` the SupRank rank of the module docstring (for tie-free scores an upper bound of
    the exact rank, so the surrogate NDCG is below the exact one; a less relevant item tied
    with a positive counts ``h(0) = 1/2`` where the exact step counts 1).

    Args and defaults: as in :func:`hap_loss`.

    References:
      Ramzi et al. "Optimization of Rank Losses for Image Retrieval." arXiv:2309.08250.
    """
    lists = listfn.check(scores, labels, where, max_positives, graded=True, caller="sup_ndcg_loss")
    return lists.reduce(_sup_ndcg_values(lists, **_ranks.roadmap_step_args(locals())), reduce_fn)
