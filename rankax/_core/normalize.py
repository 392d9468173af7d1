"""L2 normalisation of embedding rows, on device (``jnp``) and on the host (numpy).

Both divide each row by ``max(||x||, eps)``, torch's ``F.normalize``. On device an all-zero
row stays 0 *with a zero gradient*: through the clamp alone it would get ``1 / eps = 1e12``
(``inf`` in float16), and through ``sqrt`` at 0 a NaN.

The norm is taken of the row scaled by its largest magnitude, ``||x|| = m ||x / m||`` with
``m = max_i |x_i|`` (as BLAS's ``nrm2``): the sum of squares of the raw row overflows to inf
once ``||x||`` passes about 1.8e19 in float32 (256 in float16), which would turn a finite row
into a silent zero row, and underflows to 0 below about 1e-19.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

#: The norm's floor, torch's ``F.normalize`` default.
EPS = 1e-12


def l2_normalize(x: ArrayLike, eps: float = EPS) -> jax.Array:
    """``x / max(||x||, eps)`` along the last axis, computed in at least float32 and returned
    in ``x``'s dtype; an all-zero row is 0 with a zero gradient; a row holding NaN or inf comes out
    with NaN entries (never as a silent zero row)."""
    x = jnp.asarray(x)
    if x.shape[-1] == 0:  # rows of no entries: nothing to scale
        return x
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    # The scale m is a constant for the gradient: x / (m ||x / m||) does not depend on it.
    m = jax.lax.stop_gradient(jnp.max(jnp.abs(x32), axis=-1, keepdims=True))
    nonzero = m != 0  # not `> 0`: a NaN row must stay NaN (the training step's guard sees it)
    m = jnp.where(nonzero, m, 1.0)
    y = x32 / m
    r = jnp.sqrt(jnp.where(nonzero, jnp.sum(y * y, axis=-1, keepdims=True), 1.0))  # in [1, sqrt(D)]
    # x / max(||x||, eps) = y / max(r, eps / m): no product of the size of ||x||^2, in the
    # backward pass either.
    return jnp.where(nonzero, y / jnp.maximum(r, eps / m), 0.0).astype(x.dtype)


def l2_normalize_host(x: np.ndarray, eps: float = EPS) -> np.ndarray:
    """The same on the host, in ``x``'s floating dtype (no gradient to protect)."""
    if x.shape[-1] == 0:
        return x
    m = np.max(np.abs(x), axis=-1, keepdims=True)
    zero = m == 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN/inf rows: NaN
        m = np.where(zero, np.ones((), x.dtype), m)
        y = x / m
        out = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), eps / m)
    return np.where(zero, np.zeros((), x.dtype), out)
