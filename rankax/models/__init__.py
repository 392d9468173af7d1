"""Embedding networks (Flax linen). Every model maps images to L2-normalised embeddings.

``build(name, **overrides)`` returns a registered model; ``param_labels`` splits its
parameters into backbone / head (/ frozen BatchNorm) groups for the optimizer; weight
conversion from torchvision/timm lives in :mod:`rankax.models.convert`.
"""

from rankax.models.convert import load_pretrained, merge_pretrained
from rankax.models.factory import MODELS, build, param_labels
from rankax.models.heads import EmbeddingHead, GeM, gem_pool
from rankax.models.mlp import MLPEmbedding, l2_normalize
from rankax.models.resnet import RESNET_STAGES, ResNet, ResNetEmbedding
from rankax.models.vit import VisionTransformer, ViTEmbedding

__all__ = [
    "MODELS",
    "RESNET_STAGES",
    "EmbeddingHead",
    "GeM",
    "MLPEmbedding",
    "ResNet",
    "ResNetEmbedding",
    "ViTEmbedding",
    "VisionTransformer",
    "build",
    "gem_pool",
    "l2_normalize",
    "load_pretrained",
    "merge_pretrained",
    "param_labels",
]
