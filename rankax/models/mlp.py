"""A small embedding network for 8x8 digits (the embedded default dataset)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankax._core.normalize import l2_normalize


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
