"""ResNet-34/50/101 backbones in torchvision's layout, and the ResNet embedding model.

Architecture (He et al. 2016, torchvision's "v1.5" variant, which puts the stride of a
downsampling bottleneck on its 3x3 convolution rather than on the first 1x1):

    conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2
    layer1..layer4: bottlenecks  1x1 (w) -> 3x3 (w, stride) -> 1x1 (4w), each conv + BN,
                    identity or 1x1/stride ``downsample`` conv + BN on the shortcut
    widths w = width * (1, 2, 4, 8), strides (1, 2, 2, 2)

ResNet-18/34 use basic blocks instead (``block="basic"``): 3x3 (w, stride) -> 3x3 (w), each
conv + BN, output ``w`` channels (a 224x224 input gives 7x7x512 for ResNet-34).

Inputs are NHWC images normalised as torchvision expects (ImageNet mean/std); a 224x224
input gives a 7x7x2048 feature map. Submodule names follow torchvision's state-dict keys
(``layer1.0.downsample.1`` -> ``layer1_0/downsample_bn``) so that
:func:`rankax.models.convert.torchvision_resnet_to_flax` is a key rename.

**Frozen BatchNorm.** Retrieval papers fine-tune ImageNet ResNets with batches of a few
images per class, so they keep BatchNorm in evaluation mode (``model.apply(set_bn_eval)``
in the PyTorch code). ``frozen_bn=True`` does the same: every BatchNorm normalises with its
running statistics, in training too, and never updates them (no ``mutable=['batch_stats']``
is needed). BN's affine ``scale``/``bias`` are still ordinary parameters; a paper that
also froze them (``requires_grad=False``) is reproduced in the optimizer, e.g.
``optax.multi_transform({..., "frozen": optax.set_to_zero()}, param_labels(params, freeze_bn=True))``
with :func:`rankax.models.param_labels`, which labels the BN parameters ``"frozen"``.

References:
  He, Zhang, Ren & Sun, "Deep residual learning for image recognition", CVPR 2016.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankax.models.heads import EmbeddingHead

RESNET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_BN_EPS = 1e-5  # torchvision's BatchNorm2d eps; its momentum 0.1 is flax's 0.9.
# Not reproduced from torch: in training mode (frozen_bn=False) flax updates the running
# variance with the biased batch variance, torch with the unbiased one (factor n / (n - 1)).


def _conv(features: int, kernel: int, stride: int, dtype, name: str) -> nn.Conv:
    pad = kernel // 2  # symmetric padding, as torch does (flax's "SAME" pads stride-2 convs unevenly)
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        name=name,
    )


def _batch_norm(use_running_average: bool, dtype, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=use_running_average,
        momentum=0.9,
        epsilon=_BN_EPS,
        use_fast_variance=False,  # two-pass batch variance as torch; E[x^2] - E[x]^2 cancels badly
        dtype=dtype,
        name=name,
    )


def _shortcut(x: jax.Array, out_ch: int, stride: int, norm: Any, dtype: Any) -> jax.Array:
    """A residual block's shortcut: ``x``, or torchvision's 1x1 conv + BatchNorm projection
    (``downsample_conv``, ``downsample_bn`` in the calling block) when the shape changes."""
    if stride != 1 or x.shape[-1] != out_ch:
        x = _conv(out_ch, 1, stride, dtype, "downsample_conv")(x)
        x = norm(name="downsample_bn")(x)
    return x


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (expansion 4, stride on the 3x3 conv).

    Attributes:
      width: the inner width ``w``; the block outputs ``4 w`` channels.
      stride: stride of the 3x3 conv and of the shortcut projection.
      use_running_average: BatchNorm mode (True: running statistics).
      dtype: compute dtype.
    """

    width: int
    stride: int = 1
    use_running_average: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        norm = partial(_batch_norm, self.use_running_average, self.dtype)
        out_ch = 4 * self.width
        y = nn.relu(norm(name="bn1")(_conv(self.width, 1, 1, self.dtype, "conv1")(x)))
        y = nn.relu(norm(name="bn2")(_conv(self.width, 3, self.stride, self.dtype, "conv2")(y)))
        y = norm(name="bn3")(_conv(out_ch, 1, 1, self.dtype, "conv3")(y))
        return nn.relu(y + _shortcut(x, out_ch, self.stride, norm, self.dtype))


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (ResNet-18/34): two 3x3 convs, stride on the first.

    Attributes: as :class:`Bottleneck`; the block outputs ``width`` channels.
    """

    width: int
    stride: int = 1
    use_running_average: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        norm = partial(_batch_norm, self.use_running_average, self.dtype)
        y = nn.relu(norm(name="bn1")(_conv(self.width, 3, self.stride, self.dtype, "conv1")(x)))
        y = norm(name="bn2")(_conv(self.width, 3, 1, self.dtype, "conv2")(y))
        return nn.relu(y + _shortcut(x, self.width, self.stride, norm, self.dtype))


BLOCKS = {"bottleneck": Bottleneck, "basic": BasicBlock}
"""``ResNet.block`` names: ResNet-50/101/152 use bottlenecks, ResNet-18/34 basic blocks."""


class ResNet(nn.Module):
    """ResNet trunk without the classifier: images -> ``[B, H/32, W/32, C]``, ``C = 32 width``
    (bottlenecks) or ``8 width`` (basic blocks).

    Attributes:
      stage_sizes: bottlenecks per stage; ``(3, 4, 6, 3)`` is ResNet-50, ``(3, 4, 23, 3)``
        ResNet-101 (see ``RESNET_STAGES``). Tests use e.g. ``(1, 1, 1, 1)``.
      width: stem and first-stage width (64 in the paper); stage ``i`` is ``width * 2**i``
        wide inside its bottlenecks and 4x that at their output.
      frozen_bn: always normalise with running statistics and never update them.
      dtype: compute dtype (``jnp.bfloat16`` for mixed precision); parameters stay float32.
      block: ``"bottleneck"`` (default) or ``"basic"`` (ResNet-18/34: stage ``i`` outputs
        ``width * 2**i`` channels).
    """

    stage_sizes: Sequence[int] = RESNET_STAGES[50]
    width: int = 64
    frozen_bn: bool = True
    dtype: jnp.dtype = jnp.float32
    block: str = "bottleneck"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.block not in BLOCKS:
            raise ValueError(f"ResNet block must be one of {sorted(BLOCKS)}, got {self.block!r}")
        use_running_average = self.frozen_bn or not train
        x = _conv(self.width, 7, 2, self.dtype, "conv1")(x.astype(self.dtype))
        x = nn.relu(_batch_norm(use_running_average, self.dtype, name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                x = BLOCKS[self.block](
                    self.width * 2**i,
                    stride=2 if (i > 0 and j == 0) else 1,
                    use_running_average=use_running_average,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_{j}",
                )(x)
        return x


class ResNetEmbedding(nn.Module):
    """ResNet trunk + :class:`~rankax.models.heads.EmbeddingHead`: images -> unit embeddings.

    Variables: ``params = {"backbone": ..., "head": ...}`` and
    ``batch_stats = {"backbone": ...}``; an optimizer gives the two top-level parameter
    collections their own learning rates (see :func:`rankax.models.param_labels`).

    Attributes:
      stage_sizes, width, frozen_bn: as in :class:`ResNet` (default: ResNet-50, frozen BN).
      pooling: ``"gem"``, ``"avg"`` or ``"max"``.
      embedding_dim: projection width (512); ``None`` returns the pooled trunk
        features, L2-normalised.
      gem_p, gem_learnable: GeM's exponent (3) and whether it is learned.
      dtype: compute dtype; the embeddings are float32.
      feature_norm: ``None`` or ``"layernorm"`` (no-affine LayerNorm of the pooled features
        before the projection; ``pooling="max"`` + ``"layernorm"`` is ROADMAP's
        ``resnet_max_ln``). See :class:`~rankax.models.heads.EmbeddingHead`.
      block: as in :class:`ResNet` (``"basic"`` for ResNet-18/34).

    ``__call__(x, train=False)``: ``x`` is ``[B, H, W, 3]``; returns ``[B, embedding_dim]``.
    With ``frozen_bn=False`` and ``train=True`` pass ``mutable=["batch_stats"]`` to ``apply``.
    """

    stage_sizes: Sequence[int] = RESNET_STAGES[50]
    width: int = 64
    frozen_bn: bool = True
    pooling: str = "gem"
    embedding_dim: int | None = 512
    gem_p: float = 3.0
    gem_learnable: bool = True
    dtype: jnp.dtype = jnp.float32
    feature_norm: str | None = None
    block: str = "bottleneck"

    def setup(self) -> None:
        self.backbone = ResNet(self.stage_sizes, self.width, self.frozen_bn, self.dtype, self.block)
        self.head = EmbeddingHead(
            pooling=self.pooling,
            embedding_dim=self.embedding_dim,
            gem_p=self.gem_p,
            gem_learnable=self.gem_learnable,
            dtype=self.dtype,
            feature_norm=self.feature_norm,
        )

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.backbone(x, train=train))
