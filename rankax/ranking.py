"""Step functions and (smooth) ranks: the primitive every rank loss and metric shares.

Conventions (see ``docs/conventions.md``): a retrieval list is ``scores[..., N]`` (higher is
closer), ``labels[..., N]`` (relevance, > 0 means positive) and ``where[..., N]`` (validity).
The exact rank of item ``k`` is

.. math::  \\mathrm{rank}(k) = 1 + \\sum_{j \\ne k} H(s_j - s_k), \\qquad H(0) = 1,

so an item tied with ``k`` counts as ranked before it (this makes exact AP equal to
scikit-learn's ``average_precision_score``).

AP-type losses and metrics only need the ranks of the positives. Instead of all ``N x N``
pairs of a list we gather the positives into a static number of slots (a *capacity*
``C``; ``C = N`` is always exact) and work on the ``[C, N]`` differences
``d[p, j] = s_j - s_{k_p}`` between every item ``j`` and the positive ``k_p`` in slot ``p``.
This is what makes ``rankax.batch_loss`` cost ``O(B * K * B)`` instead of ``O(B^3)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from rankax import _renames
from rankax._core import validation

Array = jax.Array

__all__ = [
    "KEEP_SUMS_AND_SLOTS",
    "Positives",
    "ROADMAP_VARIANTS",
    "SLOTS",
    "STEP_SUMS",
    "exact_ranks",
    "gather_positives",
    "heaviside",
    "hrank_step",
    "negative_scores",
    "pairwise_differences",
    "positive_differences",
    "positives_at",
    "roadmap_step",
    "sigmoid_step",
    "smooth_rank",
    "step_sums",
    "unit_squared_distance",
]

ROADMAP_VARIANTS = ("fixed", "neurips")
# gather_positives finds up to this many slots by repeated argmax, more with a prefix sum.
_SCAN_GATHER_MAX = 8


# ----------------------------------------------------------------------------- step functions


def unit_squared_distance(scores: Array) -> Array:
    """``max(2 - 2 s, 0)``: the squared Euclidean distance of two unit vectors whose dot product
    is ``s`` (:math:`\\|a - b\\|^2 = 2 - 2 a \\cdot b`), never negative (a score a rounding above
    1, as between duplicated embeddings, is at distance 0)."""
    return jnp.maximum(2.0 - 2.0 * scores, 0.0)


def heaviside(x: ArrayLike) -> Array:
    """Heaviside step with the rankax tie convention, :math:`H(x) = 1[x \\ge 0]`.

    Returns float values of ``x``'s shape; its gradient is zero everywhere.
    """
    x = jnp.asarray(x)
    return (x >= 0).astype(jnp.result_type(x, jnp.float32))


def sigmoid_step(x: ArrayLike, temperature: float = 0.01) -> Array:
    """Sigmoid relaxation of the step, :math:`\\sigma(x / \\tau)`.

    Used by Smooth-AP (Brown et al., ECCV 2020) with :math:`\\tau = 0.01`. It tends to
    :math:`H` as :math:`\\tau \\to 0` everywhere except at :math:`x = 0`, where it is 1/2.
    """
    _check_step_hparams("sigmoid_step", temperature=temperature)
    return jax.nn.sigmoid(jnp.asarray(x) / temperature)


def _check_step_hparams(caller: str, **values: Any) -> None:
    """The ranges of the losses' hyperparameters (:data:`rankax._core.validation.HPARAM_RANGES`)
    for a step's Python or numpy scalar arguments. JAX arrays pass (traced ones have no value;
    reading a concrete one is a device-to-host wait on every call, and the losses that call the
    steps have checked their hyperparameters once already), as do arrays broadcast against ``x``."""
    for name, value in values.items():
        if not isinstance(value, jax.Array) and np.ndim(value) == 0:
            validation.check_number(name, value, validation.HPARAM_RANGES[name], caller=caller)


@_renames.accepts_deprecated
def roadmap_step(
    x: ArrayLike,
    *,
    temperature: float = 0.01,
    rho: float = 100.0,
    delta: float = 0.05,
    start: float = 0.5,
    offset: float = 1.44,
    variant: str = "fixed",
) -> Array:
    """The piecewise surrogate of ROADMAP's SupAP (Ramzi et al., NeurIPS 2021).

    .. math::
        h(x) = \\begin{cases}
            \\sigma(x/\\tau) & x \\le 0 \\\\
            \\mathrm{start} + \\sigma(x/\\tau) & 0 < x \\le \\delta \\\\
            \\rho (x - \\delta) + \\mathrm{offset} & x > \\delta
        \\end{cases}

    With the defaults (SOP/CUB: ``temperature=0.01, rho=100, delta=0.05, start=0.5, offset=1.44``)
    :math:`h(x) \\ge H(x)` for every :math:`x \\ne 0`, so the SupAP rank of a positive is an upper
    bound of its exact rank and 1 - SupAP an upper bound of 1 - AP. The linear branch keeps a
    constant slope ``rho`` for negatives ranked well before a positive, where a sigmoid's
    gradient would vanish. ``variant="neurips"`` is the first code release, which used
    ``rho * x + offset`` on the last branch (a jump from about 1.49 to about 6.44 at ``delta``);
    ``"fixed"`` is the later form, whose last branch starts at ``offset`` (a drop from about 1.49
    to 1.44 at ``delta``: nearly continuous, not monotone). iNaturalist configs use
    ``start=0, offset=1``.
    """
    if variant not in ROADMAP_VARIANTS:
        raise ValueError(f"roadmap_step: variant must be one of {ROADMAP_VARIANTS}, got {variant!r}")
    _check_step_hparams("roadmap_step", temperature=temperature, rho=rho, delta=delta, start=start,
                        offset=offset)
    x = jnp.asarray(x)
    sig = jax.nn.sigmoid(x / temperature)
    linear_arg = x - delta if variant == "fixed" else x
    linear = rho * linear_arg + offset
    return jnp.where(x <= 0, sig, jnp.where(x <= delta, start + sig, linear))


def hrank_step(x: ArrayLike, *, beta: float = 25.0, gamma: float = 0.5, leak: float = 10.0) -> Array:
    """HAPPIER's smoothed step of the H-rank for an item *more* relevant than the ranked one.

    .. math::
        g(x) = \\begin{cases}
            \\mathrm{leak} \\cdot x & x \\le 0 \\\\
            \\min(\\beta x + \\gamma, 1) & x > 0,\\ \\gamma \\le 1 \\\\
            1 & x > 0,\\ \\gamma > 1
        \\end{cases}

    ``x = s_j - s_k``: item ``j`` scores above positive ``k`` when ``x > 0``. At 0 the value is
    0 and below it negative (a leak, not a step): a more relevant item ranked after ``k`` lowers
    ``k``'s H-rank, so its gradient pushes ``j`` up. Where ``beta x + gamma = 1`` the derivative
    is ``beta``, as ``torch.clamp`` passes it at its bound. This is ``step_hrank`` of the official code
    (``elias-ramzi/HAPPIER@5af91b3:happier/losses/hap_loss.py``, the same in
    ``elias-ramzi/SupRank@d3d0e3c:suprank/losses/tools/differentiable_rank.py``), used when
    ``with_hrank=True``; the defaults are the values of the official loss configs
    (``happier/config/loss/HAPPIER.yaml``: beta 25, gamma 0.5, leak 10).
    """
    x = jnp.asarray(x)
    linear = beta * x + gamma
    above = jnp.where(gamma > 1.0, 1.0, jnp.where(linear <= 1.0, linear, 1.0))
    return jnp.where(x > 0, above, leak * x)


# ----------------------------------------------------------------------------- positives


class Positives(NamedTuple):
    """The positives of a list gathered into ``C`` static slots.

    Attributes:
      scores: ``[..., C]`` scores of the gathered items.
      labels: ``[..., C]`` their relevance.
      index: ``[..., C]`` their position in the list (int32).
      mask: ``[..., C]`` True where the slot holds a positive.
    """

    scores: Array
    labels: Array
    index: Array
    mask: Array


def gather_positives(scores: Array, labels: Array, where: Array, capacity: int) -> tuple[Positives, Array]:
    """Gathers the valid items with ``labels > 0`` into ``capacity`` slots (first ones first).

    Args:
      scores, labels, where: ``[..., N]`` list arrays (``where`` boolean).
      capacity: static number of slots, ``1 <= capacity``; ``capacity >= N`` is always exact.

    Returns:
      ``(positives, num_positives)``: the gathered positives and ``[...]`` the true number
      of positives of each list. Slots beyond ``capacity`` are *not* represented: callers must
      compare ``num_positives`` with ``capacity`` (``rankax`` losses fall back to the exact
      path when it is exceeded).
    """
    n = scores.shape[-1]
    capacity = min(int(capacity), n)
    is_pos = (labels > 0) & where
    num_pos = jnp.sum(is_pos, axis=-1)
    # O(C * N) like the losses themselves; lax.top_k, which sorts every list on CPU, made the
    # gather cost more than the loss.
    if capacity <= _SCAN_GATHER_MAX:
        # Few slots: slot p is the first positive after the one in slot p - 1.
        position = jnp.arange(n)
        after = jnp.full(is_pos.shape[:-1] + (1,), -1)
        index, mask = [], []
        for _ in range(capacity):
            candidate = is_pos & (position > after)
            found = jnp.any(candidate, axis=-1)
            first = jnp.argmax(candidate, axis=-1)
            index.append(first)
            mask.append(found)
            after = jnp.where(found, first, n)[..., None]
        index, mask = jnp.stack(index, axis=-1), jnp.stack(mask, axis=-1)
    else:
        # Many slots: slot of each positive = number of positives before it.
        slot = jnp.cumsum(is_pos, axis=-1, dtype=jnp.int32) - 1
        in_slot = is_pos[..., None, :] & (slot[..., None, :] == jnp.arange(capacity)[:, None])
        index, mask = jnp.argmax(in_slot, axis=-1), jnp.any(in_slot, axis=-1)
    index, mask = checkpoint_name((index, mask), SLOTS)
    return positives_at(scores, labels, index, mask), num_pos


def positives_at(
    scores: Array, labels: Array, index: Array, mask: Array, *, slot_scores: Array | None = None
) -> Positives:
    """The :class:`Positives` of lists ``[..., N]`` whose slots hold the items at ``index``
    (``[..., C]`` int, valid where ``mask``); their scores are ``slot_scores`` when given (the
    same values computed by the caller), else gathered from ``scores``."""
    take = lambda a: jnp.take_along_axis(a, index, axis=-1)  # noqa: E731
    gathered = take(scores) if slot_scores is None else slot_scores
    return Positives(scores=gathered, labels=take(labels), index=index.astype(jnp.int32), mask=mask)


def pairwise_differences(scores: Array, where: Array, positives: Positives) -> tuple[Array, Array]:
    """Differences between every item and every gathered positive.

    Returns:
      ``(diff, others)``, both ``[..., C, N]``: ``diff[..., p, j] = s_j - s_{k_p}`` and
      ``others[..., p, j]`` True when ``j`` is a valid item other than ``k_p`` and slot
      ``p`` holds a positive -- the terms of the sums :math:`\\sum_{j \\ne k}`.
    """
    n = scores.shape[-1]
    diff = scores[..., None, :] - positives.scores[..., :, None]
    not_self = jnp.arange(n) != positives.index[..., :, None]
    others = not_self & where[..., None, :] & positives.mask[..., :, None]
    return diff, others


def positive_differences(positives: Positives) -> tuple[Array, Array]:
    """Differences among the gathered positives, the ``[..., C, C]`` analogue of
    :func:`pairwise_differences`: ``diff[..., p, q] = s_{k_q} - s_{k_p}``, and ``others[..., p, q]``
    True when slots ``p != q`` both hold a positive. Empty slots' scores are replaced by 0 so that
    no garbage value reaches a gradient."""
    s = jnp.where(positives.mask, positives.scores, 0.0)
    c = s.shape[-1]
    diff = s[..., None, :] - s[..., :, None]
    distinct = jnp.arange(c)[:, None] != jnp.arange(c)[None, :]
    others = positives.mask[..., :, None] & positives.mask[..., None, :] & distinct
    return diff, others


def negative_scores(scores: Array, labels: Array, where: Array) -> Array:
    """``[..., N]`` scores of the valid negatives (``labels <= 0``), ``-inf`` elsewhere: the
    items of :func:`step_sums` for sums over a list's negatives."""
    return jnp.where(where & (labels <= 0), scores, -jnp.inf)


#: Name of :func:`step_sums`' outputs for ``jax.checkpoint`` policies: ``rankax.batch_loss`` keeps
#: these ``[..., C]`` sums of a checkpointed block, so its backward pass does not redo them.
STEP_SUMS = "rankax_step_sums"
#: Name of :func:`gather_positives`' slot positions (``[..., C]`` int and bool) for the same
#: policies: a backward pass that recomputes a list keeps them instead of scanning it again.
SLOTS = "rankax_slots"
#: The ``jax.checkpoint`` policy of rankax's checkpointed lists, tiles and blocks: keep the
#: ``O(C)`` step sums and slot positions of each list, recompute its ``O(N)`` arrays.
KEEP_SUMS_AND_SLOTS = jax.checkpoint_policies.save_only_these_names(STEP_SUMS, SLOTS)


def step_sums(
    step: Callable[[Array], Array], values: Array, anchors: Array, *, constant_anchors: bool = False
) -> Array:
    """Sums of an elementwise step over items, one per anchor: ``[..., C]``

    .. math::  T_{p} = \\sum_{j=1}^{N} f(v_j - a_p)

    for ``values [..., N]`` and ``anchors [..., C]`` (a list's items and its gathered positives'
    scores). Items to leave out are passed as ``-inf`` (or ``+inf`` for a step that vanishes
    there): ``f`` must satisfy ``f(-inf) = 0`` and ``f'(-inf) = 0`` (:func:`sigmoid_step` and
    :func:`roadmap_step` do), and ``anchors`` must be finite. This is the ``O(C * N)`` part of
    every AP-type loss (and FastAP's histograms, with the bins as anchors); the custom gradient
    recomputes ``f'`` from ``values`` and ``anchors`` rather than keeping ``[..., C, N]``
    residuals, and the masks are applied once per list (``O(N)``) instead of per pair.

    ``step`` is a function of ``x``. Its parameters get a gradient (a learned temperature, say)
    when ``step`` is a ``functools.partial`` (or ``jax.tree_util.Partial``) that binds them as
    JAX arrays, e.g. ``functools.partial(sigmoid_step, temperature=tau)``: those arguments are
    inputs of the custom gradient, whose cotangent, :math:`\\sum_p g_p \\sum_j
    \\partial f(v_j - a_p) / \\partial \\theta` over the finite items, costs one more
    ``[..., C, N]`` pass in the backward pass, only where they are differentiated. A step that
    closes over a differentiated value any other way (a lambda) makes JAX raise an
    ``UnexpectedTracerError``.

    ``constant_anchors``: the anchors are constants (FastAP's bin centres), given a zero
    cotangent of their own type. Inside ``shard_map`` a constant is the same on every device
    while the values differ, and a cotangent computed from the values would not be.
    """
    fn, params = _step_parameters(step)
    return checkpoint_name(_step_sums(fn, constant_anchors, values, anchors, params), STEP_SUMS)


def _step_parameters(step: Callable[[Array], Array]) -> tuple[Callable[[Array, tuple], Array], tuple]:
    """``(fn, params)`` with ``fn(x, params) == step(x)``: the JAX-array arguments that a
    ``functools.partial`` ``step`` binds are taken out as ``params``, everything else stays bound."""
    if not isinstance(step, functools.partial):
        return (lambda x, params: step(x)), ()
    args, keywords = list(step.args), dict(step.keywords)
    at = [i for i, a in enumerate(args) if isinstance(a, jax.Array)]
    names = sorted(k for k, v in keywords.items() if isinstance(v, jax.Array))
    params = tuple(args[i] for i in at) + tuple(keywords[k] for k in names)
    for i in at:
        args[i] = None  # not closed over: fn gets them back as params
    for k in names:
        keywords[k] = None

    def fn(x: Array, params: tuple) -> Array:
        bound_args, bound_keywords = list(args), dict(keywords)
        for i, p in zip(at, params[: len(at)], strict=True):
            bound_args[i] = p
        bound_keywords.update(zip(names, params[len(at) :], strict=True))
        return step.func(*bound_args, x, **bound_keywords)

    return fn, params


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _step_sums(fn, constant_anchors, values, anchors, params):
    del constant_anchors
    return jnp.sum(fn(values[..., None, :] - anchors[..., :, None], params), axis=-1)


def _step_sums_fwd(fn, constant_anchors, values, anchors, params):
    # symbolic_zeros: the primals come as CustomVJPPrimal. `differentiated` marks the step's
    # parameters that get a cotangent (None for the others: a zero cotangent, no extra pass).
    differentiated = tuple(True if p.perturbed else None for p in params)
    values, anchors, params = values.value, anchors.value, tuple(p.value for p in params)
    out = _step_sums(fn, constant_anchors, values, anchors, params)
    return out, (values, anchors, params, differentiated)


def _step_sums_bwd(fn, constant_anchors, residuals, g):
    values, anchors, params, differentiated = residuals
    if isinstance(g, SymbolicZero):
        g = jnp.zeros(g.shape, g.dtype)
    def slope(x: Array) -> Array:
        return jax.jvp(lambda y: fn(y, params), (x,), (jnp.ones_like(x),))[1]

    c = anchors.shape[-1]
    d_params = _parameter_cotangent(fn, values, anchors, params, differentiated, g)
    # d/dv_j = sum_p f'(v_j - a_p) g_p and d/da_p = -g_p sum_j f'(v_j - a_p). For a few anchors,
    # one [..., N] pass per anchor gives both (its slopes computed once): on the CPU, XLA's
    # reduction of the [..., C, N] product over C cost FastAP (11 bins) 0.4x the similarity
    # matmul at B = 4096, and a separate [..., C, N] slope pass for the anchors cost 12-27 % of
    # the step's fwd+bwd (C = 15 and 3, B = 4096 and 2048).
    if c <= UNROLLED_ANCHORS:
        d_values, d_anchors = jnp.zeros_like(values), []
        for p in range(c):
            s = slope(values - anchors[..., p : p + 1])
            d_values = d_values + s * g[..., p : p + 1]
            if not constant_anchors:
                d_anchors.append(-g[..., p] * jnp.sum(s, axis=-1))
        d_anchors = jnp.zeros_like(anchors) if constant_anchors else jnp.stack(d_anchors, axis=-1)
        return d_values, d_anchors, d_params
    slopes = slope(values[..., None, :] - anchors[..., :, None])
    d_values = jnp.sum(slopes * g[..., :, None], axis=-2)
    if constant_anchors:
        return d_values, jnp.zeros_like(anchors), d_params
    # g applied after the sum: alone, on [4096, 15, 4096] terms, reducing the product instead
    # took 1.6x as long on the CPU.
    return d_values, -g * jnp.sum(slopes, axis=-1), d_params


def _parameter_cotangent(fn, values: Array, anchors: Array, params: tuple, differentiated: tuple,
                         g: Array) -> tuple:
    """The step parameters' cotangent, ``sum_p g_p sum_j d f(v_j - a_p) / d params`` over the
    finite items (a left-out item at ``-inf`` has ``f = 0`` but can have a NaN parameter slope),
    for the parameters marked in ``differentiated`` (None for the others): one more ``[..., C, N]``
    pass when there is any."""
    wanted = [i for i, d in enumerate(differentiated) if d]
    if not wanted:
        return tuple(None for _ in params)
    finite = jnp.isfinite(values)
    safe = jnp.where(finite, values, 0.0)

    def weighted(chosen: tuple) -> Array:
        p = list(params)
        for i, x in zip(wanted, chosen, strict=True):
            p[i] = x
        terms = jnp.where(finite[..., None, :], fn(safe[..., None, :] - anchors[..., :, None], tuple(p)), 0.0)
        return jnp.sum(g * jnp.sum(terms, axis=-1))

    out: list[Array | None] = [None] * len(params)
    for i, grad in zip(wanted, jax.grad(weighted)(tuple(params[i] for i in wanted)), strict=True):
        out[i] = grad
    return tuple(out)


#: Up to this many anchors, the values' gradient of :func:`step_sums` is a sum of per-anchor passes.
UNROLLED_ANCHORS = 16


_step_sums.defvjp(_step_sums_fwd, _step_sums_bwd, symbolic_zeros=True)


def exact_ranks(scores: Array, labels: Array, where: Array, positives: Positives) -> tuple[Array, Array]:
    """Exact ranks of the gathered positives with :math:`H(0) = 1`.

    Returns:
      ``(rank, rank_pos)`` of shape ``[..., C]``: the rank among all valid items and among
      the positives, ``1 + sum_{j != k} H(s_j - s_k)`` over the respective items (garbage in
      empty slots: mask with ``positives.mask``).
    """
    diff, others = pairwise_differences(scores, where, positives)
    before = (diff >= 0) & others
    is_pos = (labels > 0)[..., None, :]
    rank = 1 + jnp.sum(before, axis=-1)
    rank_pos = 1 + jnp.sum(before & is_pos, axis=-1)
    dtype = jnp.result_type(scores, jnp.float32)  # float32, or float64 for float64 scores
    return rank.astype(dtype), rank_pos.astype(dtype)


def smooth_rank(
    scores: ArrayLike,
    *,
    where: ArrayLike | None = None,
    step_fn: Callable[[Array], Array] = sigmoid_step,
) -> Array:
    """Smooth rank of every item of a list, :math:`1 + \\sum_{j \\ne k} h(s_j - s_k)`.

    Args:
      scores: ``[..., N]``.
      where: optional ``[..., N]`` validity mask; invalid items neither count nor get a rank
        (their entry is 0).
      step_fn: the step surrogate ``h`` (``heaviside`` gives the exact rank).

    Returns:
      ``[..., N]`` ranks (1 = first). This is the dense ``O(N^2)`` operator for exploration;
      the losses use the gathered form above.

    Raises:
      TypeError: ``scores`` is not floating or ``where`` is not boolean.
      ValueError: ``scores`` is a scalar or has no items, or ``where`` does not have its shape.
    """
    p = validation.prefix("smooth_rank")
    if not callable(step_fn):
        raise TypeError(f"{p}step_fn must be a function of the score differences (sigmoid_step, "
                        f"heaviside, a functools.partial of roadmap_step), got {step_fn!r}")
    scores = validation._check_scores(scores, p)
    n = scores.shape[-1]
    where = validation._check_where(where, scores.shape, p)
    diff = scores[..., None, :] - scores[..., :, None]  # [.., k, j] = s_j - s_k
    others = (~jnp.eye(n, dtype=bool)) & where[..., None, :]
    # Differences with an invalid item are zeroed before the step: NaN padding would reach the
    # gradient through the step's derivative (0 * NaN), as in the list losses.
    diff = jnp.where(others & where[..., :, None], diff, 0.0)
    rank = 1 + jnp.sum(jnp.where(others, step_fn(diff), 0.0), axis=-1)
    return jnp.where(where, rank, 0.0)
