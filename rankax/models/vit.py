"""Vision Transformers (ViT / DeiT) in timm's layout, and the ViT embedding model.

Architecture (Dosovitskiy et al. 2021; DeiT, Touvron et al. 2021, is the same network
trained differently). Distilled DeiT weights are used as ROADMAP uses them: the distillation
token is dropped when converting (:func:`rankax.models.convert.drop_distillation_token`), and
the network is this class-token ViT:

    patch_embed: Conv p x p / p  ->  [B, N, D] tokens (row-major over the patch grid)
    prepend cls_token, add pos_embed [1, 1 + N, D]
    depth x pre-norm block:  x += attn(norm1(x));  x += mlp(norm2(x))
        attn: qkv Dense(3D) -> num_heads-head softmax attention -> proj Dense(D)
        mlp:  fc1 Dense(mlp_ratio D) -> exact GELU -> fc2 Dense(D)
    norm: final LayerNorm (eps 1e-6 everywhere, as timm)

=========  =====  =====  =====  ==========
model      D      depth  heads  parameters
=========  =====  =====  =====  ==========
DeiT-S/16  384    12     6      21.7 M
DeiT-B/16  768    12     12     85.8 M
ViT-B/16   768    12     12     85.8 M
=========  =====  =====  =====  ==========

Inputs are NHWC images normalised with ImageNet mean/std by the data pipeline, as DeiT was
trained (timm's ViT-B checkpoints, e.g. ``vit_base_patch16_224.augreg2_in21k_ft_in1k``, were
trained with 0.5/0.5; SupRank feeds them ImageNet statistics too: docs/models.md).
``pos_embed`` is stored for ``image_size``; another input size resamples it (bicubic over the
patch grid, class position untouched), so pretrained 224px weights serve any resolution.

Submodule names follow timm's state-dict keys (``blocks.3.attn.qkv`` ->
``blocks_3/attn/qkv``), so :func:`rankax.models.convert.timm_vit_to_flax` is a key rename.

References:
  Dosovitskiy et al., "An image is worth 16x16 words: Transformers for image recognition
  at scale", ICLR 2021.
  Touvron et al., "Training data-efficient image transformers & distillation through
  attention", ICML 2021.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankax.models.heads import EmbeddingHead

_LN_EPS = 1e-6
_dense_init = nn.initializers.truncated_normal(0.02)


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (timm's ``Attention``).

    The ``qkv`` kernel ``[D, 3D]`` splits its output as ``(3, heads, D / heads)``: q, k, v,
    each head contiguous, which is how timm reshapes its ``[3D, D]`` weight.
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
        qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=_dense_init, name="qkv")(x)
        qkv = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads)
        y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])  # [B, N, H, D/H]
        return nn.Dense(d, dtype=self.dtype, kernel_init=_dense_init, name="proj")(y.reshape(b, n, d))


class Mlp(nn.Module):
    """``fc1 -> GELU (erf form, as torch's nn.GELU) -> fc2``."""

    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(x)
        x = nn.gelu(x, approximate=False)
        return nn.Dense(d, dtype=self.dtype, kernel_init=_dense_init, name="fc2")(x)


def _stream(dtype: Any) -> Any:
    """The dtype of the residual stream and LayerNorms: float32, or ``dtype`` when wider."""
    return jnp.promote_types(dtype, jnp.float32)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    With a low-precision ``dtype`` only the attention and MLP compute in it: the residual
    stream and the LayerNorms stay float32, as under torch's autocast (``layer_norm`` runs in
    float32 there and a float32 + float16 add is float32), which the papers' fp16 runs used.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        x = x + Attention(self.num_heads, self.dtype, name="attn")(
            nn.LayerNorm(_LN_EPS, dtype=_stream(self.dtype), name="norm1")(x)
        )
        return x + Mlp(int(d * self.mlp_ratio), self.dtype, name="mlp")(
            nn.LayerNorm(_LN_EPS, dtype=_stream(self.dtype), name="norm2")(x)
        )


def resample_pos_embed(pos_embed: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Resizes a ``[1, 1 + h*w, D]`` position embedding (square ``h = w``) to ``[1, 1 + grid, D]``.

    The class position is kept; the patch positions are resized bicubically as an image with
    ``jax.image.resize`` (Keys kernel a = -0.5, antialiased when shrinking): the same as
    ``F.interpolate(mode="bicubic", antialias=True)``, what timm's ``resample_abs_pos_embed``
    does from timm 0.9 on (to ~1e-6). timm 0.4.12, which the ROADMAP code pins, interpolated
    without antialiasing (a = -0.75), a different result; the papers' 224 px runs resize
    nothing.
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    side = int(round(patch_pos.shape[1] ** 0.5))
    if side * side != patch_pos.shape[1]:
        raise ValueError(f"pos_embed has {patch_pos.shape[1]} patch positions, not a square grid")
    d = patch_pos.shape[-1]
    patch_pos = jax.image.resize(patch_pos.reshape(1, side, side, d), (1, *grid, d), "bicubic")
    return jnp.concatenate([cls_pos, patch_pos.reshape(1, grid[0] * grid[1], d)], axis=1)


class VisionTransformer(nn.Module):
    """ViT trunk without the classifier: images ``[B, H, W, 3]`` -> normed tokens ``[B, 1 + N, D]``.

    Attributes:
      patch_size: side of the square patches (16).
      hidden_size: token width D (384 DeiT-S, 768 DeiT-B / ViT-B).
      depth: number of blocks (12).
      num_heads: attention heads (6 DeiT-S, 12 DeiT-B / ViT-B).
      mlp_ratio: MLP hidden width / D (4).
      image_size: the square input side ``pos_embed`` is stored for (224).
      dtype: compute dtype; parameters stay float32.
    """

    patch_size: int = 16
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    image_size: int = 224
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout / drop-path: retrieval fine-tuning recipes use none
        p, d = self.patch_size, self.hidden_size
        if x.shape[1] % p or x.shape[2] % p:  # a VALID convolution would drop the border
            raise ValueError(
                f"ViT input {x.shape[1]} x {x.shape[2]} is not a multiple of patch_size={p}: "
                f"resize or crop the images to a multiple (e.g. {self.image_size})"
            )
        x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch_embed")(
            x.astype(self.dtype)
        )
        b, gh, gw, _ = x.shape
        x = x.reshape(b, gh * gw, d)
        cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), jnp.float32)
        side = self.image_size // p
        pos_embed = self.param(
            "pos_embed", nn.initializers.normal(0.02), (1, 1 + side * side, d), jnp.float32
        )
        if (gh, gw) != (side, side):
            pos_embed = resample_pos_embed(pos_embed, (gh, gw))
        # The residual stream is float32 whatever the compute dtype (Block).
        stream = _stream(self.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, d)), x], axis=1).astype(stream)
        x = x + pos_embed.astype(stream)
        for i in range(self.depth):
            x = Block(self.num_heads, self.mlp_ratio, self.dtype, name=f"blocks_{i}")(x)
        return nn.LayerNorm(_LN_EPS, dtype=stream, name="norm")(x)


class ViTEmbedding(nn.Module):
    """ViT trunk + :class:`~rankax.models.heads.EmbeddingHead`: images -> unit embeddings.

    Variables: ``params = {"backbone": ..., "head": ...}`` (no ``batch_stats``).

    Attributes:
      patch_size, hidden_size, depth, num_heads, mlp_ratio, image_size: as in
        :class:`VisionTransformer` (defaults: ViT-B/16 at 224px).
      pooling: ``"cls"`` (class token, the default) or ``"avg"`` (mean of the patch tokens
        after the final LayerNorm; timm's ``global_pool="avg"`` checkpoints, which average
        before an ``fc_norm``, are refused by the converter).
      embedding_dim: projection width (512); ``None`` returns the normalised pooled token.
      dtype: compute dtype; the embeddings are float32.
      feature_norm: ``None`` or ``"layernorm"`` (no-affine LayerNorm of the pooled token
        before the projection, see :class:`~rankax.models.heads.EmbeddingHead`).

    ``__call__(x, train=False)``: ``x`` is ``[B, H, W, 3]`` with ``H, W`` multiples of
    ``patch_size``; returns ``[B, embedding_dim]``.
    """

    patch_size: int = 16
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    image_size: int = 224
    pooling: str = "cls"
    embedding_dim: int | None = 512
    dtype: jnp.dtype = jnp.float32
    feature_norm: str | None = None

    def setup(self) -> None:
        self.backbone = VisionTransformer(
            self.patch_size,
            self.hidden_size,
            self.depth,
            self.num_heads,
            self.mlp_ratio,
            self.image_size,
            self.dtype,
        )
        self.head = EmbeddingHead(
            pooling=self.pooling,
            embedding_dim=self.embedding_dim,
            dtype=self.dtype,
            feature_norm=self.feature_norm,
        )

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.backbone(x, train=train))
