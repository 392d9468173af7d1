"""Embedding heads: global pooling, optional linear projection, L2 normalisation.

A head turns backbone features into the unit-norm embedding the rank losses compare with
cosine similarity:

* CNN feature maps ``[B, H, W, C]`` are pooled over ``H, W`` by generalised-mean (GeM),
  average or max pooling;
* ViT token sequences ``[B, 1 + N, D]`` use the class token (``"cls"``) or the mean of the
  patch tokens (``"avg"``).

Pooling, the projection and the normalisation run in float32 whatever the compute dtype:
``x ** p`` and the norm lose too much precision in bfloat16.

References:
  Radenović, Tolias & Chum, "Fine-tuning CNN image retrieval with no human annotation",
  TPAMI 2018 (GeM pooling).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankax.models.mlp import l2_normalize

POOLINGS = ("gem", "avg", "max", "cls")
FEATURE_NORMS = (None, "layernorm")


def standardize(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """LayerNorm without scale or bias over the last axis, in float32.

    ``(x - mean(x)) / sqrt(var(x) + eps)`` with the biased variance, as
    ``torch.nn.LayerNorm(d, elementwise_affine=False)`` (eps ``1e-5``).
    """
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def gem_pool(x: jax.Array, p: jax.typing.ArrayLike = 3.0, eps: float = 1e-6) -> jax.Array:
    """Generalised-mean pooling over the spatial axes of an NHWC feature map.

    ``gem(x)_c = (mean_{h,w} max(x_{hwc}, eps) ** p) ** (1 / p)``: ``p = 1`` is average
    pooling, ``p -> inf`` approaches max pooling. Computed in float32.

    Args:
      x: feature map ``[B, H, W, C]`` (non-negative after a ReLU; values are clamped at ``eps``).
      p: the exponent, a scalar (may be a learnable parameter).
      eps: the clamp that keeps ``x ** p`` differentiable at zero.

    Returns:
      ``[B, C]`` float32 descriptors.
    """
    x = jnp.maximum(x.astype(jnp.float32), eps)
    p = jnp.asarray(p, jnp.float32)
    return jnp.mean(x**p, axis=(1, 2)) ** (1.0 / p)


class GeM(nn.Module):
    """GeM pooling with a learnable (``learnable=True``, parameter ``p``) or fixed exponent.

    Attributes:
      p: the initial (learnable) or fixed exponent; 3 in Radenović et al.
      eps: clamp before the power, 1e-6 as in the paper's code.
      learnable: whether ``p`` is a parameter (a scalar named ``"p"``). Radenović et al. train
        it with a 10x learning rate and no weight decay.
    """

    p: float = 3.0
    eps: float = 1e-6
    learnable: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.param("p", nn.initializers.constant(self.p), (), jnp.float32) if self.learnable else self.p
        return gem_pool(x, p, self.eps)


def torch_linear_init(fan_in: int) -> tuple[Callable, Callable]:
    """``(kernel_init, bias_init)`` of ``torch.nn.Linear(fan_in, ...)``'s default: both uniform
    in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` (torch's
    ``kaiming_uniform_(a=sqrt(5))`` kernel has that bound)."""
    bound = 1.0 / math.sqrt(fan_in)

    def uniform(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return uniform, uniform


class EmbeddingHead(nn.Module):
    """Pooling -> optional feature LayerNorm -> optional ``Dense(embedding_dim)`` -> L2 normalisation.

    Attributes:
      pooling: ``"gem"``, ``"avg"`` or ``"max"`` for ``[B, H, W, C]`` feature maps;
        ``"cls"`` (class token) or ``"avg"`` (mean of the patch tokens) for ``[B, 1 + N, D]``
        token sequences.
      embedding_dim: output width of the linear projection (submodule ``"proj"``); ``None``
        keeps the pooled features (e.g. 2048 for ResNet-50) without projection. The projection
        starts as the official nets' ``torch.nn.Linear`` does (ROADMAP, SupRank and HAPPIER
        build it without re-initialising it): kernel and bias uniform in
        ``+-1/sqrt(fan_in)`` (:func:`torch_linear_init`), not flax's
        truncated LeCun normal kernel and zero bias, whose kernel is sqrt(3) times
        larger and so takes relatively smaller steps once the output is normalised.
      gem_p: GeM's initial/fixed exponent.
      gem_eps: GeM's clamp.
      gem_learnable: whether GeM's exponent is a parameter (``params['pool']['p']``).
      dtype: compute dtype of the projection; parameters stay float32.
      feature_norm: ``None`` (default) or ``"layernorm"``: :func:`standardize` (LayerNorm
        without affine parameters, eps ``feature_norm_eps``) of the pooled features before
        the projection. This is ROADMAP's ``norm_features`` / the ``resnet_max_ln`` model
        (max pooling -> ``LayerNorm(2048, elementwise_affine=False)`` -> ``Linear(2048, 512)``,
        ``elias-ramzi/ROADMAP:roadmap/models/net.py``) and SupRank's ``standardize`` layer
        (``elias-ramzi/SupRank:suprank/models/retrieval_net.py``). It has no parameters.
      feature_norm_eps: the LayerNorm's eps (``1e-5``, torch's default).

    Returns (``__call__``): ``[B, embedding_dim or C]`` float32 unit vectors.
    """

    pooling: str = "gem"
    embedding_dim: int | None = 512
    gem_p: float = 3.0
    gem_eps: float = 1e-6
    gem_learnable: bool = True
    dtype: jnp.dtype = jnp.float32
    feature_norm: str | None = None
    feature_norm_eps: float = 1e-5

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        if self.feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm={self.feature_norm!r}: expected one of {FEATURE_NORMS}")
        x = self._pool(features)
        if self.feature_norm == "layernorm":
            x = standardize(x, self.feature_norm_eps)
        if self.embedding_dim is not None:
            kernel_init, bias_init = torch_linear_init(x.shape[-1])
            x = nn.Dense(self.embedding_dim, dtype=self.dtype, kernel_init=kernel_init, bias_init=bias_init,
                         name="proj")(x.astype(self.dtype))
        return l2_normalize(x.astype(jnp.float32))

    def _pool(self, x: jax.Array) -> jax.Array:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}: expected one of {POOLINGS}")
        if x.ndim == 4:
            if self.pooling == "gem":
                return GeM(self.gem_p, self.gem_eps, self.gem_learnable, name="pool")(x)
            if self.pooling == "avg":
                return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
            if self.pooling == "max":
                return jnp.max(x.astype(jnp.float32), axis=(1, 2))
            raise ValueError("pooling='cls' needs a token sequence [B, 1 + N, D], got a feature map")
        if x.ndim == 3:
            if self.pooling == "cls":
                return x[:, 0].astype(jnp.float32)
            if self.pooling == "avg":
                return jnp.mean(x[:, 1:].astype(jnp.float32), axis=1)
            raise ValueError(f"pooling={self.pooling!r} is for feature maps; use 'cls' or 'avg' for tokens")
        raise ValueError(f"features must be [B, H, W, C] or [B, T, D], got shape {x.shape}")
