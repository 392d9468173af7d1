"""Cross-batch memory (XBM): rank each batch against past embeddings as well.

A ring buffer of the last ``M`` embeddings and labels, kept as a pytree in the train state. The
queries of a batch then rank the items of the batch *and* of the memory, so every list holds
``B + M`` items and its positives come from many past batches -- a cheap way to get the
decomposability benefits of a large batch. Memory entries are constants: they carry no gradient
(the embeddings were produced by earlier parameters; XBM's "slow drift" argument is that they
are still close to what the current network would produce once training has warmed up).

Usage in a jitted train step::

    memory = rankax.xbm.init(size=8192, dim=512)            # once, in the train state

    def loss_fn(params, memory, images, labels):
        emb = model.apply(params, images)
        loss = rankax.batch_loss(rankax.supap_loss, emb, labels, memory=memory,
                                 max_positives=K - 1)
        return loss, emb

    (loss, emb), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, memory, images, labels)
    memory = rankax.xbm.update(memory, emb, labels)         # enqueue *after* the loss

Enqueue after computing the loss: the official XBM code enqueues first, so every query also
meets a gradient-free copy of itself in the memory as a positive. Queries rank memory items
with the same blocked, exact engine as the batch (:mod:`rankax.batch`): cost
``O(B * C * (B + M))`` and ``O(block * (B + M) + (B + M) * D)`` memory.

Label paths ``[B, L]`` work the same way; empty slots hold label ``-1`` on every level and are
masked out (``valid``): ``rankax.batch_loss`` gives them an id below every real one on each
level, so they neither count as items nor share a level's relevance, whatever ids are used.

References:
  Wang, Zhang, Huang, Scott. "Cross-Batch Memory for Embedding Learning." CVPR 2020.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rankax._core import validation

Array = jax.Array

__all__ = [
    "EMPTY_LABEL",
    "XBM",
    "init",
    "num_entries",
    "update",
]

#: Label of an empty memory slot.
EMPTY_LABEL = -1


class XBM(NamedTuple):
    """The memory, a pytree (store it in a flax ``TrainState`` or any state dict).

    Attributes:
      embeddings: ``[M, D]`` stored embeddings (no gradient flows into them).
      labels: ``[M]`` class ids or ``[M, L]`` label paths; ``-1`` in empty slots.
      valid: ``[M]`` bool, which slots hold an entry.
      pointer: ``[]`` int32, the slot the next entry goes to (the oldest entry once full).
    """

    embeddings: Array
    labels: Array
    valid: Array
    pointer: Array

    @property
    def size(self) -> int:
        """Capacity ``M`` (static)."""
        return self.embeddings.shape[0]


def init(
    size: int,
    dim: int,
    *,
    label_shape: tuple[int, ...] = (),
    dtype: jnp.dtype = jnp.float32,
    label_dtype: jnp.dtype = jnp.int32,
) -> XBM:
    """An empty memory of ``size`` slots for ``dim``-dimensional embeddings.

    Args:
      size: number of slots ``M`` (XBM uses a few thousand to the whole dataset).
      dim: embedding dimension ``D``.
      label_shape: ``()`` for class ids, ``(L,)`` for label paths.
      dtype: storage dtype of the embeddings (``bfloat16`` halves the memory; the scores are
        computed in float32 anyway).
      label_dtype: integer dtype of the labels.
    """
    size = validation.check_int("size", size, caller="xbm.init")
    dim = validation.check_int("dim", dim, caller="xbm.init")
    if not isinstance(label_shape, tuple):
        raise TypeError(f"xbm.init: label_shape must be a tuple, () for class ids or (L,) for paths, "
                        f"got {label_shape!r}")
    if len(label_shape) > 1 or not all(validation.is_int_at_least(n, 1) for n in label_shape):
        raise ValueError(f"xbm.init: label_shape must be () for class ids or (L,) with L >= 1 for label "
                         f"paths, got {label_shape!r}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"xbm.init: dtype must be a floating dtype (float32, bfloat16) for the stored "
                        f"embeddings, got {jnp.dtype(dtype)}")
    if not jnp.issubdtype(label_dtype, jnp.signedinteger):
        raise TypeError(f"xbm.init: label_dtype must be a signed integer dtype (empty slots hold "
                        f"{EMPTY_LABEL}), got {jnp.dtype(label_dtype)}")
    return XBM(
        embeddings=jnp.zeros((size, dim), dtype),
        labels=jnp.full((size, *label_shape), EMPTY_LABEL, label_dtype),
        valid=jnp.zeros((size,), bool),
        pointer=jnp.zeros((), jnp.int32),
    )


def update(memory: XBM, embeddings: ArrayLike, labels: ArrayLike) -> XBM:
    """Enqueues a batch, overwriting the oldest entries (first in, first out).

    Args:
      memory: the current memory.
      embeddings: ``[B, D]`` embeddings of the batch (the gradient is stopped here).
      labels: ``[B]`` or ``[B, L]`` labels, same per-sample shape as ``memory.labels``, of an
        integer dtype that casts safely to the memory's (int64 ids, the default under
        ``jax_enable_x64``, need ``init(..., label_dtype=jnp.int64)``; a TypeError says so).

    Returns:
      The new memory. Jit-friendly (static shapes, a scatter at ``pointer``); with ``B > M``
      only the last ``M`` entries of the batch are kept.
    """
    if not all(hasattr(memory, k) for k in ("embeddings", "labels", "valid", "pointer")):
        raise TypeError(f"xbm.update: memory must be a rankax.xbm.XBM (from xbm.init), got "
                        f"{type(memory).__name__}")
    # A batch sharded over explicit mesh axes (jax.make_mesh) is gathered first: the memory is
    # replicated, and its scatter and the slice of the newest entries are not typed for it.
    emb = validation.replicated(jax.lax.stop_gradient(jnp.asarray(embeddings)))
    if not jnp.issubdtype(emb.dtype, jnp.floating):  # complex would lose its imaginary part
        raise TypeError(f"xbm.update: embeddings must be floating point, got dtype {emb.dtype}")
    lab = validation.replicated(validation.int_ids(labels, "labels", caller="xbm.update"))
    m = memory.size
    if emb.ndim != 2 or emb.shape[1] != memory.embeddings.shape[1]:
        raise ValueError(
            f"xbm.update: embeddings must be [B, {memory.embeddings.shape[1]}], got {emb.shape}"
        )
    if lab.shape != (emb.shape[0], *memory.labels.shape[1:]):
        raise ValueError(
            f"xbm.update: labels must be {(emb.shape[0], *memory.labels.shape[1:])}, got {lab.shape}"
        )
    if not jnp.issubdtype(lab.dtype, jnp.integer):
        raise TypeError(f"xbm.update: labels must be integer class ids, got dtype {lab.dtype}")
    if not jnp.can_cast(lab.dtype, memory.labels.dtype, casting="safe"):
        # A narrowing cast would wrap large ids onto other classes' ids: false positives.
        # An int64 memory (JAX has one under jax_enable_x64) holds every integer dtype but uint64.
        wider = jax.config.jax_enable_x64 and jnp.can_cast(lab.dtype, jnp.int64, casting="safe")
        fix = "create it with xbm.init(..., label_dtype=jnp.int64) or " if wider else ""
        raise TypeError(
            f"xbm.update: labels of dtype {lab.dtype} do not fit the memory's {memory.labels.dtype} "
            f"labels: {fix}cast the labels to {memory.labels.dtype} if their values fit"
        )
    b = emb.shape[0]
    pointer = memory.pointer
    if b > m:  # only the newest m entries survive
        pointer = (pointer + (b - m)) % m
        emb, lab, b = emb[-m:], lab[-m:], m
    slots = (pointer + jnp.arange(b)) % m
    return XBM(
        embeddings=memory.embeddings.at[slots].set(emb.astype(memory.embeddings.dtype)),
        labels=memory.labels.at[slots].set(lab.astype(memory.labels.dtype)),
        valid=memory.valid.at[slots].set(True),
        pointer=((pointer + b) % m).astype(jnp.int32),
    )


def num_entries(memory: XBM) -> Array:
    """Number of filled slots (``[]`` int32)."""
    return jnp.sum(memory.valid).astype(jnp.int32)
