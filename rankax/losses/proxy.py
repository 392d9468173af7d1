"""Proxy-based baseline: the normalised softmax loss (Zhai & Wu, BMVC 2019).

Not a list loss: it scores each embedding against one learnable proxy per class.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from rankax import _renames
from rankax._core import nonfinite, positives, validation
from rankax._core.normalize import l2_normalize

Array = jax.Array


@_renames.accepts_deprecated
def normalized_softmax_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    proxies: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: validation.ReduceFn = jnp.mean,
    temperature: float = 0.05,
) -> Array:
    """Normalised softmax (cosine softmax) cross-entropy against class proxies.

    .. math::
        \\mathcal{L}_i = -\\log \\frac{\\exp(\\cos(e_i, p_{y_i}) / T)}
                                        {\\sum_c \\exp(\\cos(e_i, p_c) / T)}

    Embeddings and proxies are L2-normalised inside.

    Args:
      embeddings: ``[..., D]`` embeddings (any leading shape).
      labels: ``[...]`` integer class ids in ``[0, C)``.
      proxies: ``[C, D]`` one proxy per class (a trainable parameter).
      where: optional ``[...]`` boolean mask of the samples to use.
      reduce_fn: ``jnp.mean`` over valid samples, ``jnp.sum`` or ``None`` (per sample).
      temperature: :math:`T` (0.05 in the paper).

    References:
      Zhai, Wu. "Classification is a Strong Baseline for Deep Metric Learning." BMVC 2019.
    """
    return _normalized_softmax(embeddings, labels, proxies, where, reduce_fn, temperature)


_CALLER = "normalized_softmax_loss"


def _normalized_softmax(embeddings, labels, proxies, where, reduce_fn, temperature) -> Array:
    prefix = validation.prefix(_CALLER)
    emb = jnp.asarray(embeddings)
    prox = jnp.asarray(proxies)
    lab = validation.int_ids(labels, "labels", caller=_CALLER)  # ids past int32 are not wrapped
    if emb.ndim < 1 or not jnp.issubdtype(emb.dtype, jnp.floating):
        raise TypeError(f"{prefix}embeddings must be a floating [..., D] array, got {emb.dtype} {emb.shape}")
    if emb.shape[-1] == 0:
        raise ValueError(f"{prefix}embeddings must be [..., D] with D >= 1, got shape {emb.shape}")
    if prox.ndim != 2 or prox.shape[-1] != emb.shape[-1]:
        raise ValueError(f"{prefix}proxies must be [C, D] with D={emb.shape[-1]}, got shape {prox.shape}")
    if not jnp.issubdtype(prox.dtype, jnp.floating):
        raise TypeError(f"{prefix}proxies must be floating point, got dtype {prox.dtype}")
    if lab.shape != emb.shape[:-1]:
        raise ValueError(f"{prefix}labels must have shape {emb.shape[:-1]}, the leading shape of the "
                         f"[..., D] embeddings {emb.shape}, got {lab.shape}")
    if not jnp.issubdtype(lab.dtype, jnp.integer):
        raise TypeError(f"{prefix}labels must be integer class ids, got dtype {lab.dtype}")
    validation.check_number("temperature", temperature, "positive", caller=_CALLER)
    valid = jnp.ones(emb.shape[:-1], bool) if where is None else jnp.asarray(where)
    if valid.dtype != jnp.bool_:
        raise TypeError(f"{prefix}where must be a boolean mask, got dtype {valid.dtype}")
    if valid.shape != emb.shape[:-1]:
        raise ValueError(f"{prefix}where must have shape {emb.shape[:-1]}, got {valid.shape}")
    validation.check_finite(emb, "embeddings", where=valid[..., None], caller=_CALLER)
    validation.check_finite(prox, "proxies", caller=_CALLER)
    outside = valid & ((lab < 0) | (lab >= prox.shape[0]))
    if validation.value_checks_apply(lab, valid):
        what = f"labels must be class ids in [0, C) = [0, {prox.shape[0]}) (one proxy row per class)"
        validation.check_values(outside, what, lab, "labels", caller=_CALLER)
    emb = emb.astype(jnp.promote_types(emb.dtype, jnp.float32))
    emb = jnp.where(valid[..., None], emb, 0.0)  # masked rows may hold anything, NaN included
    prox = prox.astype(jnp.promote_types(prox.dtype, jnp.float32))
    # float32-exact on every backend (a GPU's default matmul is TF32), like the batch path.
    logits = jnp.matmul(l2_normalize(emb), l2_normalize(prox).T, precision="highest") / temperature
    values = optax.softmax_cross_entropy_with_integer_labels(logits, lab)
    # A NaN/inf embedding or a class id outside [0, C) (its row; traced, unchecked: optax would
    # read -1 as the last class) or a NaN/inf proxy (every row): NaN value and gradients.
    bad = nonfinite.nonfinite_lists(emb, None) | jnp.any(nonfinite.nonfinite_lists(prox, None)) | outside
    reduced = positives.reduce_lists(values, valid, reduce_fn, caller=_CALLER)
    return nonfinite.propagate_nonfinite(reduced, bad)
