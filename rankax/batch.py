"""From a batch of embeddings to ranked lists: ``rankax.batch_loss``.

Each query ``i`` of a batch ranks the other ``B - 1`` embeddings by cosine similarity
:math:`s_{ij} = e_i^\\top e_j` (embeddings are L2-normalised by the caller); items sharing its
label are its positives. The query itself is excluded from its own list unless
``include_self=True`` (the official ROADMAP/SupRank PyTorch convention, which keeps it as its
own positive).

Cost: queries are processed in blocks of ``block_size`` rows (``lax.map`` over blocks, each
block under ``jax.checkpoint``) so that only ``[block, B]`` similarities and
``[block, C, B]`` positive-vs-item differences exist at a time, ``C = max_positives``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rankax import _lists

Array = jax.Array
LossFn = Callable[..., Array]


def _check_batch(embeddings: ArrayLike, labels: ArrayLike) -> tuple[Array, Array]:
    emb = jnp.asarray(embeddings)
    lab = jnp.asarray(labels)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be [B, D], got shape {emb.shape}")
    if not jnp.issubdtype(emb.dtype, jnp.floating):
        raise TypeError(f"embeddings must be floating point, got dtype {emb.dtype}")
    if lab.ndim not in (1, 2) or lab.shape[0] != emb.shape[0]:
        raise ValueError(
            f"labels must be [B] (or [B, L] label paths) with B={emb.shape[0]}, got {lab.shape}"
        )
    if not jnp.issubdtype(lab.dtype, jnp.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {lab.dtype}")
    return emb.astype(jnp.promote_types(emb.dtype, jnp.float32)), lab


def binary_relevance(query_labels: Array, item_labels: Array) -> Array:
    """``[Q, N]`` relevance 1.0 where the class ids of query and item are equal."""
    if query_labels.ndim != 1:
        raise ValueError(
            "label paths [B, L] need a graded relevance; pass relevance_fn= "
            f"(got labels of shape {query_labels.shape})"
        )
    return (query_labels[:, None] == item_labels[None, :]).astype(jnp.float32)


def default_capacity(labels: Any, include_self: bool) -> int | None:
    """Exact positive capacity when ``labels`` are concrete, else ``None`` (all items).

    For concrete ``[B]`` labels this is the largest class count (minus one without self).
    Under ``jit`` labels are traced: pass ``max_positives`` (e.g. ``K`` of a P x K batch).
    """
    if isinstance(labels, jax.core.Tracer) or np.ndim(labels) != 1:
        return None
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return max(1, int(counts.max()) - (0 if include_self else 1))


def batch_loss(
    loss_fn: LossFn,
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    include_self: bool = False,
    max_positives: int | None = None,
    block_size: int | None = 256,
    relevance_fn: Callable[[Array, Array], Array] = binary_relevance,
    **hparams: Any,
) -> Array:
    """Mean of a list-level loss over the queries of a batch that have a positive.

    Losses that reduce over the pairs of the whole batch (calibration, contrastive, ...) define
    ``list_statistics``/``from_statistics`` (see ``rankax._lists``) and are pooled over all
    pairs instead of averaged per query.

    .. math::  \\mathcal{L} = \\frac{1}{|Q^+|} \\sum_{i \\in Q^+}
        \\ell\\big((s_{ij})_{j \\ne i}, (y_{ij})_{j \\ne i}\\big), \\quad s = E E^\\top

    Args:
      loss_fn: a list-level loss ``fn(scores, labels, *, where, reduce_fn, max_positives,
        **hparams)`` such as :func:`rankax.losses.supap_loss`.
      embeddings: ``[B, D]`` L2-normalised embeddings.
      labels: ``[B]`` integer class ids.
      include_self: keep each query in its own list as a positive (official PyTorch code's
        convention); default False (metric-learning convention).
      max_positives: static positive slots per query; default: exact count from concrete
        labels, else ``B``. Lists with more positives take the exact path (never dropped).
      block_size: queries per block (memory ``O(block * B)``); ``None`` = one block.
      relevance_fn: ``(labels_q, labels_all) -> [Q, B]`` relevance.
      **hparams: forwarded to ``loss_fn``.

    Returns:
      Scalar loss.
    """
    emb, lab = _check_batch(embeddings, labels)
    b = emb.shape[0]
    if max_positives is None:
        max_positives = default_capacity(labels, include_self)
    _lists.check_capacity(max_positives)
    block = b if block_size is None else max(1, min(int(block_size), b))
    num_blocks = -(-b // block)
    pad = num_blocks * block - b
    query_index = jnp.arange(num_blocks * block).reshape(num_blocks, block)

    def block_values(idx: Array) -> tuple[Array, Array]:
        q_valid = idx < b
        q = jnp.minimum(idx, b - 1)
        scores = emb[q] @ emb.T
        rel = relevance_fn(lab[q], lab)
        where = jnp.ones_like(scores, dtype=bool)
        if not include_self:
            where = where & (q[:, None] != jnp.arange(b)[None, :])
        where = where & q_valid[:, None]
        stats = _lists.list_statistics(
            loss_fn, scores, rel, where, max_positives=max_positives, **hparams
        )
        return jax.tree.map(lambda v: jnp.sum(v, axis=0), stats)

    del pad
    per_block = jax.lax.map(jax.checkpoint(block_values), query_index)
    totals = jax.tree.map(lambda v: jnp.sum(v, axis=0), per_block)
    return _lists.from_statistics(loss_fn, totals, **hparams)
