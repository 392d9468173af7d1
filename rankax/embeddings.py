"""From a batch of embeddings to the losses: masked lists, and the loss as ``f(embeddings, labels)``.

Two conventions meet here, and this module is where a user of one meets the other:

* **List losses** (``rankax.supap_loss(scores, labels, *, where=None, ...)``, rax's signature)
  take one ranked list per row: ``scores[..., N]``, and ``labels[..., N]`` the **relevance of
  each item to the row's query** (0/1, or graded >= 0), never class ids. The query is not
  an item of its own list: when the list is a row of ``E @ E.T``, the diagonal must be masked
  out with ``where`` (otherwise every query ranks itself first as a positive, and the loss
  silently comes out far lower than the metric-learning value).
  :func:`lists_from_embeddings` builds ``(scores, relevance, where)`` that way from class ids.
* **Batch losses** take embeddings and **class ids**: ``rankax.batch_loss(loss_fn, embeddings,
  labels)`` (the loss first, to be ``functools.partial``-ed, as ``optax`` takes the function
  first) does the above for you, exactly and in ``O(B * K * B)``. :func:`make_batch_loss`
  returns the same loss as ``f(embeddings, labels)``, the argument order of
  pytorch-metric-learning's ``loss_fn(embeddings, labels)`` and of ``jax.grad``'s default
  ``argnums=0``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rankax import batch
from rankax._core import validation
from rankax.batch import batch_loss

Array = jax.Array

__all__ = [
    "lists_from_embeddings",
    "make_batch_loss",
]


def lists_from_embeddings(
    embeddings: ArrayLike,
    labels: ArrayLike,
    references: ArrayLike | None = None,
    reference_labels: ArrayLike | None = None,
    *,
    include_self: bool = False,
    precision: jax.lax.PrecisionLike = "highest",
) -> tuple[Array, Array, Array]:
    """``(scores, relevance, where)``, each ``[B, N]``: one ranked list per query.

    ``scores = E R^T`` (inner product: pass L2-normalised embeddings for cosine), with
    ``R = references`` if given, else ``E`` itself; ``relevance[i, j] = 1`` where item ``j``
    has query ``i``'s class, else 0; ``where`` is False on the diagonal when the queries are
    their own items (the query is never in its own list) unless ``include_self``, True
    elsewhere. Feed them to any list loss or metric: with ``s, rel, where = lists``,
    ``rankax.supap_loss(s, rel, where=where)`` (the default mean over lists) equals
    ``rankax.batch_loss(rankax.supap_loss, E, labels)``.

    Args:
      embeddings: ``[B, D]`` query embeddings.
      labels: ``[B]`` integer class ids of the queries.
      references: optional ``[M, D]`` items to rank (a gallery); default the queries.
      reference_labels: ``[M]`` class ids of ``references`` (required with them).
      include_self: keep each query in its own list (official PyTorch code's convention).
      precision: of ``E R^T``; default float32-exact on every backend, as ``batch_loss``
        (``"default"`` opts into TF32 on NVIDIA GPUs).

    Returns:
      ``scores`` in the embeddings' dtype promoted to at least float32 (bfloat16 and float16
      are scored in float32, as ``batch_loss`` does), ``relevance`` in the same dtype, and
      ``where`` bool.
    """
    emb = jnp.asarray(embeddings)
    lab = validation.int_ids(labels, "labels", caller="lists_from_embeddings")
    if emb.ndim != 2 or emb.shape[1] == 0:
        raise ValueError(
            f"lists_from_embeddings: embeddings must be [B, D] with D >= 1, got shape {emb.shape}"
        )
    _check_dtypes(("embeddings", emb), ("labels", lab))
    if lab.shape != emb.shape[:1]:
        raise ValueError(
            f"lists_from_embeddings: labels must be [B] class ids matching embeddings {emb.shape}, got "
            f"shape {lab.shape} ("
            + ("one column: pass labels[:, 0]; " if lab.shape == (*emb.shape[:1], 1) else "")
            + "label paths: build graded relevance with rankax.hierarchy, or use rankax.batch_loss)"
        )
    if (references is None) != (reference_labels is None):
        raise ValueError("lists_from_embeddings: pass references and reference_labels together")
    validation.check_flag("include_self", include_self, caller="lists_from_embeddings")
    batch.check_precision(precision, "lists_from_embeddings")
    ref = emb if references is None else jnp.asarray(references)
    ref_lab = lab if reference_labels is None else validation.int_ids(
        reference_labels, "reference_labels", caller="lists_from_embeddings")
    _check_dtypes(("references", ref), ("reference_labels", ref_lab))
    if ref.ndim != 2 or ref.shape[1] != emb.shape[1] or ref_lab.shape != ref.shape[:1]:
        raise ValueError(
            f"lists_from_embeddings: references must be [M, {emb.shape[1]}] with [M] reference_labels, "
            f"got {ref.shape} and {ref_lab.shape}"
        )
    # In at least float32, as batch_loss scores (half-precision embeddings are upcast first).
    dtype = jnp.promote_types(jnp.result_type(emb, ref), jnp.float32)
    scores = jnp.matmul(emb.astype(dtype), ref.T.astype(dtype), precision=precision)
    relevance = (lab[:, None] == ref_lab[None, :]).astype(scores.dtype)
    where = jnp.ones(scores.shape, bool)
    if references is None and not include_self:
        where = ~jnp.eye(emb.shape[0], dtype=bool)
    return scores, relevance, where


def _check_dtypes(embeddings: tuple[str, Array], labels: tuple[str, Array]) -> None:
    """TypeErrors naming the argument: embeddings must be floating, labels integer class ids."""
    for (name, x), kind in ((embeddings, jnp.floating), (labels, jnp.integer)):
        if not jnp.issubdtype(x.dtype, kind):
            what = "floating point" if kind is jnp.floating else "integer class ids"
            cast = "" if kind is jnp.floating else " (cast with .astype(jnp.int32) if they are class ids)"
            raise TypeError(f"lists_from_embeddings: {name} must be {what}, got dtype {x.dtype}{cast}")


#: batch_loss's own keywords: everything else make_batch_loss receives is the loss's.
_BATCH_LOSS_OPTIONS = frozenset(
    name for name, p in inspect.signature(batch_loss).parameters.items() if p.kind is p.KEYWORD_ONLY
)


def make_batch_loss(loss_fn: Callable[..., Array], **kwargs: Any) -> Callable[[ArrayLike, ArrayLike], Array]:
    """``f(embeddings, labels) = rankax.batch_loss(loss_fn, embeddings, labels, **kwargs)``.

    The order pytorch-metric-learning users expect, and ``jax.grad(f)`` differentiates the
    embeddings without ``argnums``. ``kwargs``: :func:`rankax.batch_loss`'s options and the
    loss's hyperparameters, e.g. ``make_batch_loss(rankax.supap_loss, temperature=0.05)``.
    """
    call = "make_batch_loss(loss_fn, **options)(embeddings, labels)"
    validation.check_loss_fn(loss_fn, "make_batch_loss", call)
    # The loss's hyperparameters (names and concrete ranges) are checked now, not at the first
    # call inside a training step; batch_loss checks its own options when called.
    hparams = {k: v for k, v in kwargs.items() if k not in _BATCH_LOSS_OPTIONS}
    references = [kwargs.get(k) for k in ("references", "reference_labels", "reference_mask")]
    name = getattr(loss_fn, "__name__", "loss_fn")
    hparams = batch._check_loss_options(loss_fn, hparams, *references, f"make_batch_loss({name})")
    batch._check_sizes(kwargs.get("block_size", "auto"), kwargs.get("max_tile_elements"),
                       kwargs.get("precision", batch.DEFAULT_PRECISION), f"make_batch_loss({name})",
                       kwargs.get("capacity_limit"))
    if "include_self" in kwargs:
        validation.check_flag("include_self", kwargs["include_self"], caller=f"make_batch_loss({name})")
    kwargs = {**{k: v for k, v in kwargs.items() if k in _BATCH_LOSS_OPTIONS}, **hparams}

    # Not functools.wraps: the result takes (embeddings, labels), so it must not look like (or
    # be unwrapped to) the list loss, whose signature and attributes batch_loss reads.
    def loss(embeddings: ArrayLike, labels: ArrayLike) -> Array:
        return batch_loss(loss_fn, embeddings, labels, **kwargs)

    loss.__name__ = loss.__qualname__ = f"batch_{name}"
    loss.__doc__ = f"rankax.batch_loss({name}, embeddings, labels, **kwargs), kwargs: {', '.join(kwargs)}"
    return loss
