"""BlackBox AP: exact AP forward, gradient by blackbox differentiation of the rank.

The ranking :math:`r = \\mathrm{rank}(s)` is piecewise constant. Vlastelica et al. replace its
zero gradient by that of a piecewise-linear interpolation: given the incoming gradient
:math:`g = \\partial L / \\partial r`, re-rank perturbed scores and take the difference,

.. math::
    s' = s + \\lambda g, \\qquad
    \\frac{\\partial L}{\\partial s} := -\\frac{\\mathrm{rank}(s) - \\mathrm{rank}(s')}{\\lambda}.

Rolínek et al. apply it to the ranks of AP (``jax.custom_vjp`` here); ranks are normalised
by the list length as in their code, which sets the scale of :math:`\\lambda`.

Two algorithms give the same ranks and gradients. Given lists without ``max_positives`` are
sorted (:func:`blackbox_rank`, ``O(N log N)`` per list, four sorts per step). In
``rankax.batch_loss``, whose sort has placed every list's positives in slots (and on lists
given with ``max_positives``), AP only needs the positives' ranks: :func:`slot_ranks` counts
the items at or above each positive, and since ``g`` is zero off the positives, its rule moves
only them, so an item's rank changes by the positives that cross it (``O(C * N)`` comparisons;
27x -> 1.3x the similarity matmul at ``B = 2048`` on the CPU, docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rankax import metrics, ranking
from rankax._core import listfn, validation
from rankax._core import positives as positives_lib

Array = jax.Array

_searchsorted_left = jnp.vectorize(
    functools.partial(jnp.searchsorted, side="left"), signature="(n),(m)->(m)"
)


def _rank_counts(scores: Array, where: Array) -> tuple[Array, Array]:
    """Integer exact ranks with H(0) = 1 among valid items and the number of valid items.

    ``rank(k) = #{valid j : s_j >= s_k}`` (k itself included) for each valid ``k``, by sorting:
    ``O(N log N)`` (invalid items get an unspecified rank).
    """
    masked = jnp.where(where, scores, -jnp.inf)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and jax.sharding.AxisType.Explicit in mesh.axis_types:
        rank = _ranks_by_two_sorts(masked)
    else:
        rank = scores.shape[-1] - _searchsorted_left(jnp.sort(masked, axis=-1), scores)
    n_valid = jnp.maximum(jnp.sum(where, axis=-1, keepdims=True), 1)
    return rank, n_valid


def _ranks_by_two_sorts(masked: Array) -> Array:
    """``#{j : masked_j >= masked_k}`` for every ``k`` of each list, the ranks of
    :func:`_rank_counts` for lists sharded over an ``Explicit`` mesh axis, where the batched
    ``searchsorted`` fails (its scan loses the sharding; its sort method sorts operands of
    unequal shardings). Sorts ``(score, position)`` ascending, takes the first place of each
    tie group with a running maximum (``n`` minus it is the count), and sorts the counts back
    by position: about 2x the search on the CPU."""
    # Integer counts: no gradient, and none asked of the sort (its JVP sorts an unsharded iota).
    masked = jax.lax.stop_gradient(masked)
    axis, n = masked.ndim - 1, masked.shape[-1]
    position = jnp.zeros_like(masked, dtype=jnp.int32) + jnp.arange(n, dtype=jnp.int32)
    ordered, order = jax.lax.sort((masked, position), dimension=axis, num_keys=1)
    changes = ordered[..., 1:] != ordered[..., :-1]
    first = jnp.concatenate([jnp.ones_like(ordered[..., :1], dtype=bool), changes], axis=-1)
    start = jax.lax.cummax(jnp.where(first, position, 0), axis=axis)
    return jax.lax.sort((order, n - start), dimension=axis, num_keys=1)[1]


def _normalised_ranks(scores: Array, where: Array) -> Array:
    """Exact ranks (:func:`_rank_counts`) divided by the number of valid items."""
    rank, n_valid = _rank_counts(scores, where)
    return rank.astype(jnp.result_type(scores, jnp.float32)) / n_valid


@jax.custom_vjp
def blackbox_rank(scores: Array, where: Array, lambda_: float | Array) -> Array:
    """Normalised exact ranks ``[..., N]`` whose VJP is the blackbox-differentiation rule.

    ``lambda_`` may be traced (a ``jit`` argument, vmapped); the ranks do not depend on it, so
    its cotangent is zero."""
    return _normalised_ranks(scores, where)


def _blackbox_rank_fwd(scores, where, lambda_):
    return _normalised_ranks(scores, where), (scores, where, lambda_)


def _blackbox_rank_bwd(residuals, g):
    scores, where, lambda_ = residuals
    # Integer ranks, subtracted before normalising: the gradient is exactly 0 wherever the
    # perturbation moves no item (e.g. g = 0 for a list without positive). Subtracting two
    # normalised float ranks left 1-ulp residues when XLA fused the two divisions differently
    # (inside the batch path's lax.map + checkpoint).
    rank, n_valid = _rank_counts(scores, where)
    perturbed_rank, _ = _rank_counts(scores + lambda_ * g, where)
    grad = -(rank - perturbed_rank).astype(jnp.result_type(scores, jnp.float32)) / n_valid / lambda_
    return jnp.where(where, grad, 0.0).astype(scores.dtype), None, None


blackbox_rank.defvjp(_blackbox_rank_fwd, _blackbox_rank_bwd)


def _blackbox_ap_kernel(scores, labels, where, positives=None, *, lambda_):
    """``1 - AP`` of one batch of lists ``[..., N]`` of margin-shifted scores: from sorted ranks
    of every item, or, with ``positives`` (their slots), from counts against the slots."""
    if positives is not None:
        return _slot_ap_loss(ranking.negative_scores(scores, labels, where),
                             positives.scores, positives.mask, where, lambda_)
    is_pos = (labels > 0) & where
    rank = blackbox_rank(scores, where, lambda_)
    # Rank among positives: a constant of the ranking (no gradient), same normalisation.
    rank_pos = jax.lax.stop_gradient(
        _normalised_ranks(scores, is_pos)
        * jnp.maximum(jnp.sum(is_pos, -1, keepdims=True), 1)
        / jnp.maximum(jnp.sum(where, -1, keepdims=True), 1)
    )
    return 1.0 - metrics.ap_from_ranks(rank, rank_pos, is_pos, positives_lib.num_positives(labels, where))


def _margin_shifts(scores: Array, margin: float | Array, key: jax.Array | None) -> Array:
    """``[..., N]`` half-margins ``m |z_j| / 2`` (``m / 2`` without ``key``): one list draws its
    ``z`` from ``key``, lists ``[..., N]`` list ``r`` (flat index over the leading axes) from
    ``validation.list_keys(key, r)``, or each from its own when ``key`` has the lists' leading
    shape (``rankax.batch_loss``)."""
    if key is None:
        return margin * jnp.ones_like(scores) * 0.5
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    lead, n = scores.shape[:-1], scores.shape[-1]
    keys = key if key.shape == lead else validation.list_keys(key, np.arange(math.prod(lead)).reshape(lead))
    z = jax.vmap(lambda k: jax.random.normal(k, (n,), scores.dtype))(keys.reshape(-1)).reshape(scores.shape)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and jax.sharding.AxisType.Explicit in mesh.axis_types:  # as the scores are
        z = jax.sharding.reshard(z, jax.typeof(scores).sharding.spec)
    return margin * jnp.abs(z) * 0.5
def _slot_ap_loss(
    negatives: Array, anchors: Array, mask: Array, where: Array, lambda_: float | Array
) -> Array:
    """``1 - AP`` from the ``[..., C]`` positives' shifted scores ``anchors`` (slots ``mask``) and
    the lists' shifted negative scores ``[..., N]`` (``-inf`` elsewhere), with the ranks of
    :func:`slot_ranks`: ``O(C * N)`` comparisons instead of sorting every list."""
    # In the scores' dtype: a float32 count made float64 scores' cotangent float32.
    n_valid = jnp.maximum(jnp.sum(where, axis=-1, dtype=negatives.dtype), 1.0)[..., None]
    anchors = jnp.where(mask, anchors, 0.0)
    rank = slot_ranks(negatives, anchors, mask, n_valid, lambda_)
    rank_pos = jax.lax.stop_gradient(1.0 + _positives_above(anchors, mask)) / n_valid
    return 1.0 - metrics.ap_from_ranks(rank, rank_pos, mask, jnp.sum(mask, axis=-1))


def _positives_above(anchors: Array, mask: Array) -> Array:
    """``[..., C]``: #{other filled slots q : a_q >= a_p} for each slot p (float32)."""
    c = anchors.shape[-1]
    others = mask[..., None, :] & mask[..., :, None] & (jnp.arange(c)[:, None] != jnp.arange(c)[None, :])
    return jnp.sum(jnp.where(others & (anchors[..., None, :] >= anchors[..., :, None]), 1.0, 0.0), axis=-1)


def _slot_rank_counts(negatives: Array, anchors: Array, mask: Array) -> Array:
    """``[..., C]`` exact rank with H(0) = 1 of each filled slot among the valid items,
    ``1 + #{other positives q : a_q >= a_p} + #{negatives j : v_j >= a_p}`` (float32 counts:
    XLA:CPU sums floats faster than ints)."""
    above = jnp.sum(jnp.where(negatives[..., None, :] >= anchors[..., :, None], 1.0, 0.0), axis=-1)
    return 1.0 + _positives_above(anchors, mask) + above


@jax.custom_vjp
def slot_ranks(
    negatives: Array, anchors: Array, mask: Array, n_valid: Array, lambda_: float | Array
) -> Array:
    r"""The normalised exact ranks of :func:`blackbox_rank` at the positives' ``[..., C]`` slots
    only: ``negatives [..., N]`` (``-inf`` at positives and invalid items), ``anchors [..., C]``
    the positives' scores (finite), ``mask [..., C]`` the filled slots, ``n_valid [..., 1]``.

    The same blackbox rule, for a cotangent ``g`` on the slots (AP's only ranks): the
    positives move to :math:`a' = a + \lambda g`, the negatives stay, so a negative's rank
    changes by the positives that cross it, :math:`\sum_p [a'_p \ge v_j] - [a_p \ge v_j]`, and
    a positive's by its own counts before and after, each ``O(C * N)``. Integer counts, as the
    sorted path's: equal gradients (ties with ``H(0) = 1`` included)."""
    return _slot_rank_counts(negatives, anchors, mask) / n_valid


def _slot_ranks_fwd(negatives, anchors, mask, n_valid, lambda_):
    residuals = (negatives, anchors, mask, n_valid, lambda_)
    return slot_ranks(*residuals), residuals


def _slot_ranks_bwd(residuals, g):
    negatives, anchors, mask, n_valid, lambda_ = residuals
    moved = anchors + lambda_ * jnp.where(mask, g, 0.0)
    # Rank changes, perturbed minus original, subtracted as counts before normalising (see
    # _blackbox_rank_bwd): negatives by the positives crossing them, positives by their counts.
    def crossing(a: Array, filled: Array, v: Array) -> Array:  # 1 where a filled slot's a >= v
        return jnp.where(filled & (a >= v), 1.0, 0.0)

    c = anchors.shape[-1]
    if c <= ranking.UNROLLED_ANCHORS:  # C passes of [..., N], as in ranking.step_sums' backward
        at = [(slice(None),) * (anchors.ndim - 1) + (slice(p, p + 1),) for p in range(c)]
        d_negatives = sum(
            crossing(moved[i], mask[i], negatives) - crossing(anchors[i], mask[i], negatives) for i in at
        )
    else:
        filled, v = mask[..., :, None], negatives[..., None, :]
        d_negatives = jnp.sum(
            crossing(moved[..., :, None], filled, v) - crossing(anchors[..., :, None], filled, v), axis=-2
        )
    d_anchors = _slot_rank_counts(negatives, moved, mask) - _slot_rank_counts(negatives, anchors, mask)
    scale = n_valid * lambda_
    return d_negatives / scale, jnp.where(mask, d_anchors / scale, 0.0), None, None, None


slot_ranks.defvjp(_slot_ranks_fwd, _slot_ranks_bwd)


def _blackbox_ap_values(
    lists: listfn.Lists, *, lambda_: float, margin: float, key: jax.Array | None
) -> Array:
    # Positives are pushed down and negatives up by margin/2: AP asks for a gap of `margin`.
    shift = _margin_shifts(lists.scores, margin, key)
    is_pos = (lists.labels > 0) & lists.where
    lists = lists._replace(scores=lists.scores - jnp.where(is_pos, shift, -shift))
    if lists.slots is not None:  # their scores: the lists' own, shifted the same way
        slot_shift = jnp.take_along_axis(shift, lists.slots.index, axis=-1)
        lists = lists._replace(slots=lists.slots._replace(scores=lists.slots.scores - slot_shift))
    kernel = functools.partial(_blackbox_ap_kernel, lambda_=lambda_)
    if lists.slots is None and lists.max_positives is None:  # sort (any number of positives)
        return kernel(lists.scores, lists.labels, lists.where)
    return lists.gather(kernel)  # count against the slots batch_loss found, or max_positives


def _check_key_type(hparams: dict[str, Any], caller: str) -> None:
    key = hparams["key"]
    if key is not None and not validation.is_prng_key(key):
        raise TypeError(f"{validation.prefix(caller)}key must be None or a PRNG key (jax.random.key(0)), "
                        f"got {key!r}")


def _check_key_shape(key: Any, lead: tuple[int, ...]) -> None:
    if key is not None and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape not in ((), lead):
        raise ValueError(f"blackbox_ap_loss: key must be one key, or one per list (shape {lead}), "
                         f"got shape {key.shape}")


@listfn.list_function(_blackbox_ap_values, check_hparams=_check_key_type)
def blackbox_ap_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    lambda_: float = 4.0,
    margin: float = 0.02,
    key: jax.Array | None = None,
) -> Array:
    """BlackBox AP loss, ``1 - AP`` of margin-shifted scores with blackbox rank gradients.

    .. math::
        \\tilde s_j = s_j - \\tfrac{m}{2} (2 y_j - 1), \\qquad
        \\mathcal{L} = 1 - \\frac{1}{|P|}\\sum_{k \\in P}
            \\frac{\\mathrm{rank}^+(k)}{\\mathrm{rank}(k)}

    on :math:`\\tilde s` with exact ranks (``H(0) = 1``); ``rank`` carries the blackbox gradient
    of the module docstring, ``rank+`` none. The authors' code draws the shift of each item as
    :math:`m |z| / 2`, :math:`z \\sim N(0, 1)`: pass ``key`` for that; without it the shift is
    the deterministic ``m / 2`` (so the loss is a pure function of its inputs). One list
    (``scores [N]``) draws its ``N`` values of ``z`` from ``key``; of lists ``[..., N]``, list
    ``r`` (its flat index over the leading axes) draws them from ``jax.random.fold_in(key, r)``,
    and ``rankax.batch_loss`` draws query ``r``'s list from the same key, whatever its blocks
    or devices: the batch loss equals this function on the rows of ``E E^T``, and so does a
    ``jax.vmap`` over the rows given the keys ``fold_in(key, r)``.

    Args:
      scores, labels, where, reduce_fn: as for every list loss.
      max_positives: ``None`` (default): each list is sorted (``O(N log N)``, any number of
        positives); an int: the ranks are counted against that many positive slots per list
        (``O(C * N)``, :func:`slot_ranks`; ``jit(grad(vmap(...)))`` of ``[1024, 1024]`` rows
        with 3 positives: 1578 -> 163 ms on the CPU), with the ladder of every list loss for
        lists with more. ``rankax.batch_loss`` always counts against the slots it found.
      lambda_: interpolation strength :math:`\\lambda` (4.0). The value does not depend on it;
        the gradient is exactly 0 once :math:`\\lambda g` moves no score past another (tiny
        :math:`\\lambda`) and at most :math:`1/\\lambda` in size.
      margin: :math:`m` (0.02).
      key: optional PRNG key for the random margin of the authors' code: one key, or typed keys
        of the lists' leading shape (one per list, used as given).

    References:
      Rolínek, Musil, Paulus, Vlastelica, Michaelis, Martius. "Optimizing Rank-Based Metrics
      with Blackbox Differentiation." CVPR 2020. Vlastelica, Paulus, Musil, Martius, Rolínek.
      "Differentiation of Blackbox Combinatorial Solvers." ICLR 2020.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="blackbox_ap_loss")
    _check_key_shape(key, lists.scores.shape[:-1])
    return lists.reduce(_blackbox_ap_values(lists, lambda_=lambda_, margin=margin, key=key), reduce_fn)
