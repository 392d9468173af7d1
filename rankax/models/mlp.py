"""A small embedding network for 8x8 digits (the embedded default dataset)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows divided by their L2 norm (computed in float32), ``x / max(||x||, eps)``."""
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, eps)).astype(x.dtype)


class MLPEmbedding(nn.Module):
    """Flattens the input, applies ``Dense -> LayerNorm -> GELU`` blocks and a linear head.

    Attributes:
      hidden: widths of the hidden layers.
      embedding_dim: output dimension (the ``"head"`` projection); ``None``: no projection, the
        output is the last hidden layer's features (as the other models' heads do with
        ``None``). Outputs are L2-normalised.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    """

    hidden: Sequence[int] = (256, 256)
    embedding_dim: int | None = 64
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for width in self.hidden:
            x = nn.Dense(width, dtype=self.dtype)(x)
            x = nn.LayerNorm(dtype=self.dtype)(x)
            x = nn.gelu(x)
        if self.embedding_dim is not None:
            x = nn.Dense(self.embedding_dim, dtype=self.dtype, name="head")(x)
        return l2_normalize(x.astype(jnp.float32))
