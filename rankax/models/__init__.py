"""Embedding networks (Flax linen). Every model maps images to L2-normalised embeddings."""

from rankax.models.mlp import MLPEmbedding, l2_normalize

__all__ = ["MLPEmbedding", "l2_normalize"]
