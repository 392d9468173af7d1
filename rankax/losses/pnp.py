"""PNP: Penalizing Negative instances before Positive ones (Li et al., AAAI 2022).

For each positive ``i`` of a list, the smooth number of negatives ranked before it is

.. math::  R_i = \\sum_{j \\in Neg} \\sigma((s_j - s_i) / \\tau),

and the loss is the mean over positives of :math:`F(R_i)`; the variants choose ``F`` and so how
the gradient :math:`F'(R)` is spread over positives:

======  ==========================================  ===========================
variant  F(R)                                         F'(R)
======  ==========================================  ===========================
``O``    R                                            1 (constant)
``Iu``   (1 + R) ln(1 + R)                            1 + ln(1 + R), increasing
``Ib``   (bR - ln(1 + bR)) / b^2                      R / (1 + bR), increasing, bounded
``Ds``   ln(1 + R)                                    1 / (1 + R), decreasing
``Dq``   1 - (1 + R)^(-alpha)                         alpha (1 + R)^(-alpha-1), decreasing
======  ==========================================  ===========================

The paper recommends the decreasing variants (PNP-D); ``Dq`` is its best.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rankax import ranking
from rankax._core import listfn, positives, validation
from rankax.losses import _ranks

Array = jax.Array

PNP_VARIANTS = ("O", "Iu", "Ib", "Ds", "Dq")


def _x_minus_log1p_over_square(x: Array) -> Array:
    """``(x - log1p(x)) / x^2`` for ``x >= 0`` (1/2 at 0), so that ``Ib``'s
    ``(bR - ln(1 + bR)) / b^2 = R^2 (x - log1p(x)) / x^2`` with ``x = bR`` stays accurate and
    finite for any ``b > 0``: below ``x = 0.1`` the difference cancels (the direct formula gave
    0 at ``b = 1e-8`` and 0/0 once ``b^2`` underflows), so a series is used there; above, the
    form ``(1 - log1p(x)/x) / x`` does not overflow for huge ``b``."""
    small = x < 0.1
    xs = jnp.where(small, x, 0.0)
    series = jnp.zeros_like(xs)
    for n in reversed(range(8)):  # 1/2 - x/3 + x^2/4 - ... - x^7/9, error < x^8/10
        series = 1.0 / (n + 2) - xs * series
    xl = jnp.where(small, 1.0, x)
    direct = (1.0 - jnp.log1p(xl) / xl) / xl
    return jnp.where(small, series, direct)


def _pnp_transform(r: Array, variant: str, b: float, alpha: float) -> Array:
    if variant == "O":
        return r
    if variant == "Iu":
        return (1.0 + r) * jnp.log1p(r)
    if variant == "Ib":
        return r**2 * _x_minus_log1p_over_square(b * r)
    if variant == "Ds":
        return jnp.log1p(r)
    return 1.0 - (1.0 + r) ** (-alpha)


def _pnp_kernel(scores, labels, where, gathered, *, variant, temperature, b, alpha):
    sigmoid = functools.partial(ranking.sigmoid_step, temperature=temperature)
    r = _ranks.negative_steps(sigmoid, scores, labels, where, gathered)
    return positives.masked_mean(_pnp_transform(r, variant, b, alpha), gathered.mask)


def _pnp_values(lists: listfn.Lists, *, variant: str, temperature: float, b: float, alpha: float) -> Array:
    kernel = functools.partial(_pnp_kernel, variant=variant, temperature=temperature, b=b, alpha=alpha)
    return lists.gather(kernel)


@listfn.list_function(_pnp_values, choices={"variant": PNP_VARIANTS})
def pnp_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    max_positives: int | None = None,
    variant: str = "Dq",
    temperature: float = 0.01,
    b: float = 2.0,
    alpha: float = 4.0,
) -> Array:
    """PNP loss: mean over positives of ``F(R_i)``, ``R_i`` the smooth count of negatives before.

    See the module docstring for ``R_i`` and the five ``F``.

    Args:
      scores, labels, where, reduce_fn, max_positives: as for every list loss.
      variant: ``"O"``, ``"Iu"``, ``"Ib"``, ``"Ds"`` or ``"Dq"`` (default, the paper's best).
      temperature: sigmoid temperature (0.01, the official ``anneal``).
      b: the ``Ib`` parameter (2.0); ``b -> 0`` tends to ``R^2 / 2`` (computed accurately for any
        ``b > 0``), ``b -> inf`` to ``R / b``.
      alpha: the ``Dq`` exponent. Sources disagree (4 vs 8): the authors' README trains its
        best SOP model with ``--alpha 4``, their parser and pytorch-metric-learning's port
        default to 1, and 8 is the other value in circulation. rankax uses 4, the authors'
        runnable command; see ``docs/losses.md``.

    References:
      Li, Min, Song, Zhu, Kang, Wei, Wei, Jiang. "Rethinking the Optimization of Average
      Precision: Only Penalizing Negative Instances before Positive Ones is Enough."
      AAAI 2022.
    """
    lists = listfn.check(scores, labels, where, max_positives, caller="pnp_loss")
    values = _pnp_values(lists, variant=variant, temperature=temperature, b=b, alpha=alpha)
    return lists.reduce(values, reduce_fn)
