"""The training objective of ``config.loss``: which loss, its checked hyperparameters, the labels
it sees, and the global-batch loss functions the step differentiates.

The objective is a weighted sum: ``config.loss.weight`` (default 1) times the main ranking loss
``config.loss.name`` (through :func:`rankax.batch_loss`, with XBM when enabled), plus each extra
term ``config.loss.terms.<term>``: a loss of the embeddings (``<name>_loss(embeddings, labels,
...)``, e.g. ``normalized_softmax``) with its ``weight``, ``hparams`` and ``label_level`` (the
column of ``[N, L]`` label paths it classifies; default 0). A term whose loss takes a parameter
named in :data:`OWNED_PARAMS` (``proxies``: one row per training class) owns it: the parameter
lives in ``TrainState.loss_params[<term>]``, is checkpointed with the state and trained by the
term's own optimizer (``config.loss.terms.<term>.optimizer``, :mod:`rankax.train.optim`).

SupRank's recipe, for example: ``loss.weight=0.9`` for H-AP and a ``cluster`` term
``normalized_softmax`` with weight 0.1, temperature 0.05 and proxies trained by Adam (lr 10,
cosine to 0.1): ``elias-ramzi/SupRank:suprank/config/loss/HAPPIER_SOP.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

import rankax
from rankax.data.base import RetrievalDataset
from rankax.train import errors

Array = jax.Array

# Keyword arguments of a loss that the batch path sets itself (not config.loss.hparams).
_HPARAM_EXCLUDED = ("where", "reduce_fn", "max_positives", "key")


# The first argument of a list loss (the main loss, config.loss.name: the scores of a query
# against the batch) and of a loss of the embeddings (an extra term under config.loss.terms,
# e.g. normalized_softmax and its class proxies).
LIST_LOSS_ARG = "scores"
TERM_LOSS_ARG = "embeddings"


def loss_names(first_arg: str) -> list[str]:
    """The sorted names of the rankax losses whose first argument is ``first_arg``
    (:data:`LIST_LOSS_ARG` or :data:`TERM_LOSS_ARG`), without the ``_loss`` suffix."""
    names = (n for n in rankax.losses.__all__ if n.endswith("_loss"))
    return sorted(
        n[: -len("_loss")]
        for n in names
        if next(iter(inspect.signature(getattr(rankax.losses, n)).parameters), None) == first_arg
    )


def resolve_loss(name: str, key: str = "config.loss.name") -> Callable[..., Array]:
    """``"supap"`` -> ``rankax.losses.supap_loss``; an unknown name raises ``ValueError``
    naming ``key`` and listing the list losses and the losses of the embeddings apart."""
    fn = getattr(rankax.losses, f"{name}_loss", None)
    if fn is None:
        raise ValueError(
            f"{key} {name!r} is not a rankax loss; list losses (config.loss.name): "
            f"{loss_names(LIST_LOSS_ARG)}; losses of the embeddings (config.loss.terms): "
            f"{loss_names(TERM_LOSS_ARG)}"
        )
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


def _check_hparam_values(config: ml_collections.ConfigDict, renamed: dict[str, str]) -> None:
    """The ranges and types of ``config.loss.hparams`` (``temperature > 0``, ...), by the loss's
    own checks (rankax list losses; other callables are checked when called)."""
    checker = getattr(resolve_loss(config.loss.name), "hparams", None)
    if checker is None:
        return
    hparams = {renamed.get(k, k): v for k, v in config.loss.hparams.to_dict().items()}
    try:
        checker(hparams, caller="config.loss.hparams", warn=False)
    except (TypeError, ValueError) as err:
        raise errors.ConfigError(str(err)) from None


def check_loss_hparams(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with every key of ``config.loss.hparams`` checked to be a keyword argument of
    the loss; a deprecated spelling (``tau``) is renamed (a copy of ``config``, with a warning),
    so the workdir records one name. Raises :class:`~rankax.train.ConfigError` naming the key,
    the closest argument and all of them."""
    renamed = _hparam_renames(config)
    _check_hparam_values(config, renamed)
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
    ``weight``: the main loss's weight (a weight of 0 skips it); ``terms``: the extra
    :class:`Term` s, added with their weights.
    """

    batch: Callable[..., Array]
    memory: Callable[..., Array]
    memory_start: int | None = None
    weight: float = 1.0
    terms: tuple[Term, ...] = ()

    def main(self, emb: Array, labels: Array, step: Array, memory: Any) -> Array:
        """The main loss at ``step``: with XBM, batch + memory once ``step >= memory_start``."""
        if self.memory_start is None:
            return self.batch(emb, labels)
        return jax.lax.cond(
            step >= self.memory_start,
            lambda: self.memory(emb, labels, memory),
            lambda: self.batch(emb, labels),
        )

    def __call__(
        self, emb: Array, labels: Array, step: Array, memory: Any, loss_params: dict | None = None
    ) -> Array:
        """``weight * main + sum_t weight_t * term_t`` (``loss_params``: the terms' owned
        parameters, ``{term: {name: array}}``)."""
        loss_params = loss_params or {}
        total = self.weight * self.main(emb, labels, step, memory) if self.weight else 0.0
        for term in self.terms:
            total = total + term.weight * term(emb, labels, loss_params.get(term.name, {}))
        return jnp.asarray(total, jnp.float32)


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
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    labels_ndim: int,
    hparams: dict[str, Any],
    terms: tuple[Term, ...] = (),
) -> Objective:
    """The global-batch :class:`Objective` of ``config.loss`` with ``hparams``, sharded over
    ``mesh`` as ``config.loss_sharding`` says: ``"shard_map"`` (explicit all-gather, statistics
    ``psum``-ed: :func:`rankax.sharding.sharded_batch_loss`) or ``"jit"`` (XLA partitions
    :func:`rankax.batch_loss`). Both equal the loss of the whole batch on one device. The main
    loss is weighted by ``config.loss.weight``; ``terms`` (:func:`make_terms`) are added."""
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
    return Objective(batch_of, memory_of, memory_start, float(config.loss.get("weight", 1.0)), tuple(terms))


def term_objectives(
    config: ml_collections.ConfigDict, mesh: Mesh, labels_ndim: int, terms: tuple[Term, ...] = ()
) -> dict[str, Objective]:
    """Each weighted term of the loss alone, at weight 1 (for the diagnosis of a non-finite
    step): the terms inside the main loss (:func:`loss_term_weights`) and each extra term of
    ``terms`` (keyed ``loss.terms.<name>``)."""
    hparams = config.loss.hparams.to_dict()
    weights = loss_term_weights(config)
    out = {
        term: dataclasses.replace(
            make_objective(
                config, mesh, labels_ndim, {**hparams, **{f"{t}_weight": float(t == term) for t in weights}}
            ),
            weight=1.0,
        )
        for term in weights
    }
    if terms:
        main = make_objective(config, mesh, labels_ndim, hparams)
        for term in terms:
            out[f"loss.terms.{term.name}"] = dataclasses.replace(
                main, weight=0.0, terms=(dataclasses.replace(term, weight=1.0),)
            )
    return out


# ----------------------------------------------------------------------------- extra terms


def _init_proxies(key: Array, num_classes: int, dim: int) -> Array:
    """``[C, D]`` proxies uniform in ``[-1/sqrt(D), 1/sqrt(D)]`` (``torch.nn.Linear``'s
    initialisation, as SupRank's ``ClusterLoss``)."""
    bound = 1.0 / float(np.sqrt(dim))
    return jax.random.uniform(key, (num_classes, dim), jnp.float32, -bound, bound)


# Parameters a loss term may own: argument name -> init(key, num_classes, embedding_dim).
OWNED_PARAMS: dict[str, Callable[[Array, int, int], Array]] = {"proxies": _init_proxies}


@dataclasses.dataclass(frozen=True, eq=False)
class Term:
    """An extra term of the objective: ``loss_fn(embeddings, class_rows, **owned,
    **hparams)`` with its ``weight``.

    ``level``: the column of ``[B, L]`` label paths it reads (``[B]`` class ids: 0);
    ``classes``: the sorted training class ids at that level, whose positions are the rows of
    the owned parameters (a batch label ``y`` becomes row ``searchsorted(classes, y)``);
    ``owned``: the names of the parameters it owns (:data:`OWNED_PARAMS`).
    """

    name: str
    weight: float
    loss_fn: Callable[..., Array]
    hparams: dict[str, Any]
    level: int
    classes: np.ndarray
    owned: tuple[str, ...]

    def __call__(self, emb: Array, labels: Array, params: dict[str, Array]) -> Array:
        labels = jnp.asarray(labels)
        column = labels[:, self.level] if labels.ndim == 2 else labels
        rows = jnp.searchsorted(jnp.asarray(self.classes), column).astype(jnp.int32)
        return self.loss_fn(emb, rows, **params, **self.hparams)

    def init(self, key: Array, dim: int) -> dict[str, Array]:
        """The initial owned parameters for ``dim``-dimensional embeddings."""
        return {
            name: OWNED_PARAMS[name](jax.random.fold_in(key, i), len(self.classes), dim)
            for i, name in enumerate(self.owned)
        }


def _term(name: str, section: ml_collections.ConfigDict, train_labels: np.ndarray) -> Term:
    key = f"config.loss.terms.{name}"
    if "name" not in section or "weight" not in section:
        raise errors.ConfigError(f"{key} needs a loss `name` and a `weight`")
    loss_fn = resolve_loss(section.name, f"{key}.name")
    params = inspect.signature(loss_fn).parameters
    if next(iter(params), None) != TERM_LOSS_ARG:
        raise errors.ConfigError(
            f"{key}.name={section.name!r}: an extra term must be a loss of the embeddings "
            "(e.g. 'normalized_softmax'); a ranking loss is the main loss (config.loss.name)"
        )
    known = [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n not in _HPARAM_EXCLUDED]
    hparams = section.get("hparams", ml_collections.ConfigDict()).to_dict()
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise errors.ConfigError(
            f"{key}.hparams {unknown} are not arguments of {loss_fn.__name__}; its arguments: {known}"
        )
    labels = np.asarray(train_labels)
    level = int(section.get("label_level", 0))
    if not 0 <= level < (labels.shape[1] if labels.ndim == 2 else 1):
        raise errors.ConfigError(
            f"{key}.label_level={level} is not a column of the {labels.shape} training labels"
        )
    column = labels[:, level] if labels.ndim == 2 else labels
    owned = tuple(n for n in params if n in OWNED_PARAMS)
    return Term(name, float(section.weight), loss_fn, hparams, level, np.unique(column), owned)


def make_terms(config: ml_collections.ConfigDict, train_labels: np.ndarray | None) -> tuple[Term, ...]:
    """The extra terms of ``config.loss.terms`` for the training labels ``train_labels``
    (:func:`training_labels`; ``None`` only when there is no term)."""
    sections = config.loss.get("terms", None) or {}
    if sections and train_labels is None:
        raise ValueError("config.loss.terms needs the training labels (train_labels=) to size its parameters")
    return tuple(_term(name, sections[name], train_labels) for name in sections)
