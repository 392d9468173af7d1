"""The training objective of ``config.loss``: which loss, its checked hyperparameters, the labels
it sees, and the global-batch loss functions the step differentiates.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

import rankax
from rankax.data.base import RetrievalDataset
from rankax.train import errors

Array = jax.Array

# Keyword arguments of a loss that the batch path sets itself (not config.loss.hparams).
_HPARAM_EXCLUDED = ("where", "reduce_fn", "max_positives", "key")


def resolve_loss(name: str) -> Callable[..., Array]:
    """``"supap"`` -> ``rankax.losses.supap_loss`` (clear error for an unknown name)."""
    fn = getattr(rankax.losses, f"{name}_loss", None)
    if fn is None:
        known = sorted(n[: -len("_loss")] for n in rankax.losses.__all__ if n.endswith("_loss"))
        raise ValueError(f"config.loss.name {name!r} is not a rankax loss; known: {known}")
    return fn


def _hparam_renames(config: ml_collections.ConfigDict) -> dict[str, str]:
    """``{old: new}`` for each deprecated key of ``config.loss.hparams``; raises
    :class:`~rankax.train.ConfigError` for a key that is no keyword argument of the loss."""
    from rankax import _renames

    loss_fn = resolve_loss(config.loss.name)
    params = inspect.signature(loss_fn).parameters
    known = [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n not in _HPARAM_EXCLUDED]
    renamed = {}
    for key in config.loss.hparams.keys():
        if key in known:
            continue
        if (new := _renames.new_name(key, params)) is not None:
            renamed[key] = new
            continue
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean config.loss.hparams.{close[0]}? " if close else ""
        raise errors.ConfigError(
            f"config.loss.hparams.{key} is not an argument of {loss_fn.__name__}; {hint}"
            f"its arguments: {', '.join(known)} (docs/losses.md)"
        )
    return renamed


def check_loss_hparams(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with every key of ``config.loss.hparams`` checked to be a keyword argument of
    the loss; a deprecated spelling (``tau``) is renamed (a copy of ``config``, with a warning),
    so the workdir records one name. Raises :class:`~rankax.train.ConfigError` naming the key,
    the closest argument and all of them."""
    renamed = _hparam_renames(config)
    if not renamed:
        return config
    config = ml_collections.ConfigDict(config.to_dict())
    hparams = config.loss.hparams.to_dict()
    for old, new in renamed.items():
        if new in hparams:
            raise errors.ConfigError(f"config.loss.hparams sets both {new!r} and its old spelling {old!r}")
        print(f"WARNING: config.loss.hparams.{old} is deprecated: use config.loss.hparams.{new}")
        hparams[new] = hparams.pop(old)
    config.loss.hparams = ml_collections.ConfigDict(hparams)
    return config


def loss_term_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
    """The weighted terms of ``config.loss`` (``<term>_weight`` keyword arguments of the loss,
    e.g. ROADMAP's ``supap_weight`` / ``calibration_weight``) and their weights; ``{}`` for a
    single-term loss."""
    params = inspect.signature(resolve_loss(config.loss.name)).parameters
    hparams = config.loss.hparams.to_dict()
    weights = {
        name[: -len("_weight")]: float(hparams.get(name, p.default))
        for name, p in params.items()
        if name.endswith("_weight") and isinstance(p.default, int | float)
    }
    return weights if len(weights) > 1 else {}


def training_labels(config: ml_collections.ConfigDict, data: RetrievalDataset) -> np.ndarray:
    """The labels the loss sees: ``[N]`` class ids, or ``[N, L]`` paths if ``loss.hierarchical``.

    Label paths of SOP/iNat/folder datasets are reduced to their finest level (column 0)
    unless ``config.loss.hierarchical``; evaluation always gets the full labels.
    """
    labels = np.asarray(data.train.labels)
    if labels.ndim == 2 and not config.loss.get("hierarchical", False):
        return labels[:, 0]
    return labels


@dataclasses.dataclass(frozen=True)
class Objective:
    """The loss a step differentiates, as a function of the embeddings of the global batch.

    ``batch(emb, labels)``: the loss of the batch alone; ``memory(emb, labels, memory)``: the
    batch ranked against batch + cross-batch memory; ``memory_start``: the first step that uses
    the memory (``None``: no XBM).
    """

    batch: Callable[..., Array]
    memory: Callable[..., Array]
    memory_start: int | None = None

    def __call__(self, emb: Array, labels: Array, step: Array, memory: Any) -> Array:
        """The loss at ``step``: with XBM, batch + memory once ``step >= memory_start``."""
        if self.memory_start is None:
            return self.batch(emb, labels)
        return jax.lax.cond(
            step >= self.memory_start,
            lambda: self.memory(emb, labels, memory),
            lambda: self.batch(emb, labels),
        )


def _batch_kwargs(config: ml_collections.ConfigDict, labels_ndim: int) -> tuple[dict, dict]:
    """The keyword arguments of ``batch_loss`` without and with the memory."""
    include_self = bool(config.loss.include_self)
    # A P x K batch has K - 1 positives per query (K with the query itself). With class ids and
    # the P x K sampler that is also the most there can be: compile that one capacity
    # (capacity_limit). Otherwise (label paths, hierarchical sampler) batch_loss climbs its
    # exact capacity ladder; it never drops positives either way.
    capacity = config.batch.samples_per_class - (0 if include_self else 1)
    memory_kw = dict(include_self=include_self, max_positives=capacity)
    batch_kw = dict(memory_kw)
    if config.batch.get("sampler", "pk") == "pk" and labels_ndim == 1:
        batch_kw["capacity_limit"] = capacity
    return batch_kw, memory_kw


def make_objective(
    config: ml_collections.ConfigDict, mesh: Mesh, labels_ndim: int, hparams: dict[str, Any]
) -> Objective:
    """The global-batch :class:`Objective` of ``config.loss`` with ``hparams``, sharded over
    ``mesh`` as ``config.loss_sharding`` says: ``"shard_map"`` (explicit all-gather, statistics
    ``psum``-ed: :func:`rankax.sharding.sharded_batch_loss`) or ``"jit"`` (XLA partitions
    :func:`rankax.batch_loss`). Both equal the loss of the whole batch on one device."""
    loss_fn = resolve_loss(config.loss.name)
    batch_kw, memory_kw = (dict(**kw, **hparams) for kw in _batch_kwargs(config, labels_ndim))
    if config.loss_sharding == "shard_map":
        batch_of = rankax.sharding.sharded_batch_loss(loss_fn, mesh, "data", **batch_kw)
        memory_of = rankax.sharding.sharded_batch_loss(loss_fn, mesh, "data", **memory_kw)
    elif config.loss_sharding == "jit":
        batch_of = lambda emb, labels: rankax.batch_loss(loss_fn, emb, labels, **batch_kw)
        memory_of = lambda emb, labels, memory: rankax.batch_loss(
            loss_fn, emb, labels, memory=memory, **memory_kw
        )
    else:
        raise ValueError(f"config.loss_sharding must be 'jit' or 'shard_map', got {config.loss_sharding!r}")
    memory_start = int(config.xbm.start_step) if config.xbm.size else None
    return Objective(batch_of, memory_of, memory_start)


def term_objectives(config: ml_collections.ConfigDict, mesh: Mesh, labels_ndim: int) -> dict[str, Objective]:
    """Each weighted term of the loss (:func:`loss_term_weights`) alone, at weight 1 (for the
    diagnosis of a non-finite step)."""
    hparams = config.loss.hparams.to_dict()
    weights = loss_term_weights(config)
    return {
        term: make_objective(
            config, mesh, labels_ndim, {**hparams, **{f"{t}_weight": float(t == term) for t in weights}}
        )
        for term in weights
    }
