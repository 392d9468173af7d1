"""rankax: differentiable rank losses and retrieval evaluation for image retrieval in JAX."""

from rankax import debug, hierarchy, host, losses, metrics, ranking, sharding, xbm
from rankax import retrieval as retrieval  # evaluation, exact / ScaNN kNN, evaluators
from rankax.batch import batch_loss
from rankax.embeddings import lists_from_embeddings, make_batch_loss
from rankax.losses import *  # noqa: F403  (every loss is re-exported at top level)
from rankax.losses import __all__ as _losses_all

__version__ = "0.1.0"
__all__ = [
    "batch_loss", "lists_from_embeddings", "make_batch_loss",
    "debug", "hierarchy", "host", "losses", "metrics", "ranking", "retrieval", "sharding", "xbm",
    *_losses_all,
]
