"""L2 normalisation of embedding rows, on device (``jnp``) and on the host (numpy).

Both divide each row by ``max(||x||, eps)``, torch's ``F.normalize``. On device an all-zero
row stays 0 *with a zero gradient*: through the clamp alone it would get ``1 / eps = 1e12``
(``inf`` in float16), and through ``sqrt`` at 0 a NaN.
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
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    sq = jnp.sum(x32 * x32, axis=-1, keepdims=True)
    nonzero = sq != 0  # not `> 0`: a NaN row must stay NaN (the training step's guard sees it)
    norm = jnp.sqrt(jnp.maximum(jnp.where(nonzero, sq, 1.0), eps * eps))
    return jnp.where(nonzero, x32 / norm, 0.0).astype(x.dtype)


def l2_normalize_host(x: np.ndarray, eps: float = EPS) -> np.ndarray:
    """The same on the host, in ``x``'s floating dtype (no gradient to protect)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
