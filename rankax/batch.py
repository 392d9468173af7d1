"""From a batch of embeddings to ranked lists: ``rankax.batch_loss``.

Each query ``i`` of a batch ranks the items of the batch by cosine similarity
:math:`s_{ij} = e_i^\\top e_j` (embeddings are L2-normalised by the caller); items relevant
to it (same class id, or graded relevance from ``[B, L]`` label paths) are its positives. The
query itself is excluded from its own list unless ``include_self=True`` (the official
ROADMAP/SupRank PyTorch convention, which keeps it as its own positive). Optionally the
items also include a reference set that carries no gradient, e.g. a cross-batch memory
(:mod:`rankax.xbm`).

Cost
----
A dense implementation builds, for every query, the ``N x N`` differences of its list:
``O(B^3)`` time and memory. AP-type losses only need the differences between each of the
``C`` positives of a list and all ``N`` items, so rankax

1. gathers each query's positives into ``C`` static slots (``C = max_positives``, e.g.
   ``K - 1`` for a P x K batch) and the losses compute ``[queries, C, N]`` terms only --
   ``O(B * C * N)`` work, summed over the negatives by :func:`rankax.ranking.step_sums`
   without per-pair masks or ``[q, C, N]`` residuals. With the default relevance the slots
   come from one stable sort of the class ids (label paths: the coarsest level), not from
   scanning the lists (:func:`rankax._core.positives.key_runs`), and their scores are dot
   products of the embeddings;
2. streams over blocks of ``block_size`` queries with ``lax.map``, each block under
   ``jax.checkpoint``: the forward pass keeps nothing per block and the backward pass
   recomputes one block at a time, so peak memory is ``O(block * N + B * D)``
   (plus ``O(tile)`` for the ``[q, C, N]`` terms, see ``max_tile_elements``). With the
   default ``block_size="auto"`` the blocks are sized per backend (:func:`default_sizes`)
   and up to ``SAVED_SCORES_ELEMENTS`` scores are kept instead of recomputed;
3. never drops a positive. Capacities form a ladder ``C, 4C, 16C, ...`` (without a hint
   ``3, 4, 16, ...``) up to ``capacity_limit``; a first pass counts the positives of every
   list and the call takes (one ``lax.switch`` around the block loop) the smallest capacity
   that holds the largest count, and processes its queries in sub-blocks sized so that
   ``queries * capacity * N`` stays below ``max_tile_elements``. A list with more positives
   than ``max_positives`` therefore costs more time, never correctness, and never more
   memory. A list with more positives than ``capacity_limit`` (by default the largest
   capacity whose one-query tile fits ``max_tile_elements``: all of ``N`` for ``N <= 4096``)
   is never computed without some of them: with concrete labels (outside ``jit``, also numpy
   labels closed over inside it) the exact capacity is computed up front, the ladder is
   skipped and such a call raises :class:`CapacityError`; with traced labels the value and
   every gradient are NaN, and :mod:`rankax.debug` checks name the count -- the tiers of
   every other value check (docs/behaviour.md). No host callback sits in the program: one
   that raised would stop its device and leave the others of a mesh in their collectives.

In a P x K train step pass ``max_positives=K - 1`` (``K`` with ``include_self``); adding
``capacity_limit=K - 1`` compiles a single rung (smaller program, faster compile), and a
batch whose lists ever held more positives would come out NaN.

The result equals the dense per-list computation (``jax.vmap`` of the list-level loss over
the rows of the full score matrix, averaged over the queries that have a positive) in value
and gradient, up to float32 summation order. Losses pooled over the pairs of the whole batch
(ROADMAP's calibration term) go through the statistics protocol of :mod:`rankax._core.stats`:
per-list additive statistics are summed over blocks (and devices, :mod:`rankax.sharding`)
before the loss is formed.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

from rankax import _renames, ranking
from rankax._core import nonfinite, positives, stats, validation

Array = jax.Array

__all__ = [
    "CapacityError",
    "DEFAULT_PRECISION",
    "SAVED_SCORES_ELEMENTS",
    "batch_loss",
    "batch_statistics",
    "binary_relevance",
    "default_capacity_limit",
    "default_relevance",
    "default_sizes",
    "exact_capacity",
    "with_references",
]
LossFn = Callable[..., Array]
RelevanceFn = Callable[[Array, Array], Array]

#: Default precision of the similarity matmul ``E R^T``: float32-exact on every backend (a
#: GPU's default is TF32, 10-bit mantissas, which moved SupAP's gradient by 5e-3 relative at
#: B = 4096). Pass ``precision="default"`` (TF32 on NVIDIA GPUs, bfloat16 passes on TPUs) or
#: ``"high"`` for speed.
DEFAULT_PRECISION = jax.lax.Precision.HIGHEST
Precision = jax.lax.PrecisionLike
#: The precision names ``precision=`` takes (``jax.lax.Precision``'s string forms).
PRECISION_NAMES = ("highest", "float32", "high", "bfloat16_3x", "tensorfloat32", "default", "bfloat16",
                   "fastest")


#: With ``block_size="auto"``, the similarity scores of a whole call are kept for the backward
#: pass (instead of being recomputed, a second ``E R^T`` matmul) up to this many elements:
#: 256 MiB in float32. An explicit ``block_size`` always recomputes (``O(block * N)`` memory).
SAVED_SCORES_ELEMENTS = 2**26


def default_sizes(num_queries: int, num_items: int, backend: str | None = None) -> tuple[int, int]:
    """``(block_size, max_tile_elements)`` used for ``block_size="auto"`` / ``max_tile_elements=None``.

    On the CPU, blocks of 256 queries and ``[q, C, N]`` tiles of at most ``2**24`` elements
    keep the working set in cache. On accelerators every block is a sequential step of a loop
    (about a dozen kernel launches), so blocks are as large as memory allows: ``2**25 // N``
    queries (a ``[block, N]`` score matrix of 128 MiB in float32) and tiles of ``2**26``
    elements -- one block up to ``B = 8192``, and SupAP at ``B = 65536`` within 2 GiB.
    """
    backend = jax.default_backend() if backend is None else backend
    if backend == "cpu":
        return min(256, max(num_queries, 1)), 2**24
    return max(1, min(num_queries, 2**25 // max(num_items, 1))), 2**26


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_batch(
    embeddings: ArrayLike,
    labels: ArrayLike,
    name: str = "embeddings",
    *,
    row_mask: ArrayLike | None = None,
    values: bool = True,
    caller: str = "",
) -> tuple[Array, Array]:
    """Checks a batch ``([B, D] embeddings, [B] or [B, L] integer labels)``; errors start with
    ``caller``. Shapes and dtypes always; with ``values``, NaN/inf in the rows of ``row_mask``
    (default all) through :func:`rankax._core.validation.check_finite` (eager calls, or
    :mod:`rankax.debug` checks). Returns the embeddings (float32 at least) and the labels."""
    prefix = validation.prefix(caller)
    emb = validation.as_array(embeddings, name, prefix)
    label_name = "labels" if name == "embeddings" else f"labels of {name}"
    lab = validation.int_ids(labels, label_name, caller=caller)
    if lab.ndim == 2 and lab.shape[1] == 0:
        raise ValueError(f"{prefix}{label_name} as [B, L] label paths need L >= 1 levels, got shape "
                         f"{lab.shape}")
    if emb.ndim != 2 or emb.shape[1] == 0 or (emb.shape[0] == 0 and name != "references"):
        raise ValueError(f"{prefix}{name} must be [B, D] with B, D >= 1, got shape {emb.shape}")
    if not jnp.issubdtype(emb.dtype, jnp.floating):
        raise TypeError(f"{prefix}{name} must be floating point, got dtype {emb.dtype}")
    if lab.ndim not in (1, 2) or lab.shape[0] != emb.shape[0]:
        raise ValueError(
            f"{prefix}labels of {name} must be [B] class ids (or [B, L] label paths) with "
            f"B={emb.shape[0]}, got shape {lab.shape}"
        )
    if not jnp.issubdtype(lab.dtype, jnp.integer):
        raise TypeError(
            f"{prefix}labels of {name} must be integer class ids, got dtype {lab.dtype} "
            "(float labels are not class ids; cast with .astype(jnp.int32) if they are)"
        )
    if values:
        rows = None if row_mask is None else jnp.asarray(row_mask, bool)[:, None]
        validation.check_finite(emb, name, where=rows, caller=caller)
    dtype = jnp.promote_types(emb.dtype, jnp.float32)
    # No cast when it would change nothing: under an eager grad each bind costs a linearization.
    return (emb if emb.dtype == dtype else emb.astype(dtype)), lab


def binary_relevance(query_labels: Array, item_labels: Array) -> Array:
    """``[Q, N]`` relevance 1.0 where the class ids of query and item are equal."""
    if query_labels.ndim != 1:
        raise ValueError(
            "label paths [B, L] need a graded relevance; pass relevance_fn= "
            f"(got labels of shape {query_labels.shape})"
        )
    return (query_labels[:, None] == item_labels[None, :]).astype(jnp.float32)


def _call_relevance(
    relevance_fn: RelevanceFn, query_labels: Array, item_labels: Array, caller: str = ""
) -> Array:
    """``relevance_fn(query_labels, item_labels)``, checked to be a real ``[Q, N]`` array."""
    if not callable(relevance_fn):
        raise TypeError(f"{validation.prefix(caller)}relevance_fn must be a function (query_labels [Q], "
                        f"item_labels [N]) -> [Q, N] relevance, got {relevance_fn!r}")
    rel = jnp.asarray(relevance_fn(query_labels, item_labels))
    want = (query_labels.shape[0], item_labels.shape[0])
    if rel.shape != want or not (jnp.issubdtype(rel.dtype, jnp.number) or rel.dtype == jnp.bool_):
        raise ValueError(
            f"{validation.prefix(caller)}relevance_fn must return a real [Q, N] = {want} array for "
            f"query labels {query_labels.shape} and item labels {item_labels.shape}, got "
            f"{rel.dtype}{list(rel.shape)}"
        )
    return rel


def _check_relevance_values(rel: Array, where: Array, caller: str) -> None:
    """Finite relevance ``>= 0`` at the lists' valid items: a ValueError for concrete values,
    a check in :mod:`rankax.debug` checked mode for traced ones (otherwise, as for list labels,
    a NaN or negative relevance reads as not relevant)."""
    if not validation.value_checks_apply(rel, where):
        return
    r = jnp.where(where, rel, 0)
    validation.check_values(~jnp.isfinite(r) | (r < 0), "relevance_fn must return finite relevance >= 0",
                            r, "relevance", caller=caller)


def default_relevance(labels: Array, include_self: bool = False, rule: str = "pop") -> RelevanceFn:
    """Binary relevance for ``[B]`` class ids; for ``[B, L]`` paths the
    :func:`rankax.hierarchy.hierarchical_relevance` of ``rule``: SupRank's ``"pop"`` (H-AP),
    or ``"count"``, the number of shared levels (SupNDCG: the official gains ``2^t - 1``).
    :func:`batch_loss` takes ``rule`` from the loss (``loss_fn.path_relevance``)."""
    if jnp.ndim(labels) == 1:
        return binary_relevance
    from rankax.hierarchy import hierarchical_relevance

    return functools.partial(hierarchical_relevance, include_self=include_self, rule=rule)


def relevance_of(
    loss_fn: LossFn, labels: Array, include_self: bool, relevance_fn: RelevanceFn | None = None
) -> RelevanceFn:
    """``relevance_fn``, else :func:`default_relevance` of ``labels`` with the loss's rule
    (``loss_fn.path_relevance``; ``"pop"`` for losses that do not set one)."""
    if relevance_fn is not None:
        return relevance_fn
    return default_relevance(labels, include_self, getattr(loss_fn, "path_relevance", "pop"))


def levels_for_loss(
    loss_fn: LossFn, labels: Array, relevance_fn: RelevanceFn | None, hparams: dict[str, Any], caller: str
) -> tuple[RelevanceFn | None, dict[str, Any]]:
    """``(relevance_fn, hparams)`` for ``[B, L]`` label paths without a ``relevance_fn`` and a
    loss that reads shared levels (``rule`` / ``num_levels`` hyperparameters:
    :func:`rankax.losses.hap_loss`): its lists get the shared levels as labels, and the loss
    its rule (``rule``, else ``loss_fn.path_relevance``) and ``num_levels = L``, so that it
    computes the relevance of each list and compares levels, as the official code does.
    Otherwise both unchanged."""
    if relevance_fn is not None or jnp.ndim(labels) != 2 or not {"rule", "num_levels"} <= set(hparams):
        return relevance_fn, hparams
    num_levels = int(jnp.shape(labels)[1])
    if hparams["num_levels"] not in (None, num_levels):
        raise ValueError(
            f"{validation.prefix(caller)}num_levels={hparams['num_levels']!r} differs from the label "
            f"paths' L = {num_levels}: leave num_levels out (batch_loss sets it from the paths)"
        )
    from rankax.hierarchy import hierarchical_relevance

    rule = hparams["rule"] or getattr(loss_fn, "path_relevance", "pop")
    levels = functools.partial(hierarchical_relevance, rule="count")  # t, the shared levels
    return levels, {**hparams, "rule": rule, "num_levels": num_levels}


capacity_ladder = positives.capacity_ladder  # one ladder for the list and batch paths


def default_capacity_limit(num_items: int, max_tile_elements: int) -> int:
    """Largest positive capacity ``C`` with a one-query tile ``C * N <= max_tile_elements``."""
    return max(1, min(num_items, max_tile_elements // max(num_items, 1)))


def ladder_limit(num_q: int, n: int, max_tile_elements: int | None, capacity_limit: int | None) -> int:
    """The largest rung of the capacity ladder for ``num_q`` queries (per device) ranking ``n``
    items: ``capacity_limit``, else :func:`default_capacity_limit` of the tile bound (default
    :func:`default_sizes`), at most ``n``."""
    if capacity_limit is None:
        tile = default_sizes(num_q, n)[1] if max_tile_elements is None else max_tile_elements
        capacity_limit = default_capacity_limit(n, tile)
    return max(1, min(int(capacity_limit), n))


class CapacityError(ValueError):
    """A list has more positives than ``capacity_limit`` allows."""


def overflow_message(most: Any, limit: int) -> str:
    """What a list with ``most`` positives over ``capacity_limit=limit`` is told."""
    return (
        f"a query has {most} positives but capacity_limit={limit}: pass a larger capacity_limit "
        "(up to the list length; each query then needs a [capacity, N] tile) or "
        "max_tile_elements; positives are never dropped"
    )


def raise_on_overflow(most: Any, limit: int | None, caller: str) -> None:
    """:class:`CapacityError` if a list's positive count ``most`` exceeds the ladder's ``limit``."""
    if limit is not None and int(most) > limit:
        raise CapacityError(validation.prefix(caller) + overflow_message(int(most), limit))


def _list_masks(
    query_rows: Array,
    query_valid: Array,
    query_index: Array | None,
    item_mask: Array,
    include_self: bool,
) -> Array:
    """``[Q, N]`` validity of each item in each query's list."""
    where = query_valid[:, None] & item_mask[None, :]
    if query_index is not None and not include_self:
        n = item_mask.shape[0]
        where = where & (query_index[query_rows][:, None] != jnp.arange(n)[None, :])
    return where


def _check_sizes(
    block_size: Any, max_tile_elements: Any, precision: Any, caller: str, capacity_limit: Any = None
) -> None:
    """``block_size``: "auto", None or an int >= 1; ``max_tile_elements`` and
    ``capacity_limit``: None or an int >= 1; ``precision``: what ``jax.lax.dot`` accepts."""
    prefix = validation.prefix(caller)
    positive_int = validation.is_int_at_least
    if not (block_size == "auto" or block_size is None or positive_int(block_size)):
        raise ValueError(
            f"{prefix}block_size must be 'auto', None (one block) or an int >= 1, got {block_size!r}"
        )
    if not (max_tile_elements is None or positive_int(max_tile_elements)):
        raise ValueError(f"{prefix}max_tile_elements must be None (backend default) or an int >= 1, "
                         f"got {max_tile_elements!r}")
    validation.check_int("capacity_limit", capacity_limit, optional=True, caller=caller)
    check_precision(precision, caller)


def check_precision(precision: Any, caller: str) -> None:
    """``precision`` of a similarity matmul: what ``jax.lax.dot`` accepts (a ValueError naming
    ``caller`` otherwise)."""
    ok = precision is None or isinstance(precision, jax.lax.Precision) or precision in PRECISION_NAMES or (
        isinstance(precision, tuple) and len(precision) == 2
    )
    if not ok:
        raise ValueError(
            f"{validation.prefix(caller)}precision must be a jax.lax.Precision or one of 'highest' "
            f"(default, float32-exact), 'high', 'default' (TF32 on NVIDIA GPUs), got {precision!r}"
        )


def exact_capacity(
    query_labels: ArrayLike,
    item_labels: ArrayLike,
    *,
    query_index: ArrayLike | None = None,
    item_mask: ArrayLike | None = None,
    include_self: bool = False,
    relevance_fn: RelevanceFn | None = None,
    block_size: int = 1024,
    caller: str = "",
) -> int | None:
    """Largest number of positives of any query's list, from concrete labels; else ``None``.

    Computed blockwise (``O(block * N)`` memory). Returns ``None`` when any input is traced
    (inside ``jit``), where ``batch_loss`` uses its capacity ladder instead.
    """
    args = (query_labels, item_labels, query_index, item_mask)
    if any(_is_traced(a) for a in args if a is not None):
        return None
    if relevance_fn is None:  # positives = the items with the query's class: count on the host
        return _count_same_key(query_labels, item_labels, query_index, item_mask, include_self)
    # Inside a jit trace, operations on concrete values would still be traced.
    with jax.ensure_compile_time_eval():
        ql, il = jnp.asarray(query_labels), jnp.asarray(item_labels)
        rel_fn = default_relevance(ql, include_self) if relevance_fn is None else relevance_fn
        n = il.shape[0]
        mask = jnp.ones((n,), bool) if item_mask is None else jnp.asarray(item_mask, bool)
        qidx = None if query_index is None else jnp.asarray(query_index)
        best = 0
        for start in range(0, ql.shape[0], block_size):
            rows = jnp.arange(start, min(start + block_size, ql.shape[0]))
            where = _list_masks(rows, jnp.ones(rows.shape, bool), qidx, mask, include_self)
            rel = _call_relevance(rel_fn, ql[rows], il, caller)
            _check_relevance_values(rel, where, caller)
            best = max(best, int(jnp.max(jnp.sum((rel > 0) & where, axis=-1))))
    return max(best, 1)


def _count_same_key(
    query_labels: ArrayLike,
    item_labels: ArrayLike,
    query_index: ArrayLike | None,
    item_mask: ArrayLike | None,
    include_self: bool,
) -> int:
    """:func:`exact_capacity` for the default relevance, in numpy: the items relevant to a query
    are the valid ones with its class id (label paths: its coarsest level), so one sort of the
    item keys gives every count in ``O((Q + N) log N)``."""
    qk = positives.class_key(np.asarray(query_labels))
    ik = positives.class_key(np.asarray(item_labels))
    mask = np.ones(ik.shape, bool) if item_mask is None else np.asarray(item_mask, bool)
    keys = np.sort(ik[mask])
    count = np.searchsorted(keys, qk, side="right") - np.searchsorted(keys, qk, side="left")
    if query_index is not None and not include_self:
        qidx = np.asarray(query_index)
        count = count - (mask[qidx] & (ik[qidx] == qk))
    return max(int(count.max(initial=0)), 1)


def batch_statistics(
    loss_fn: LossFn,
    queries: ArrayLike,
    query_labels: ArrayLike,
    items: ArrayLike,
    item_labels: ArrayLike,
    *,
    query_index: ArrayLike | None = None,
    item_mask: ArrayLike | None = None,
    include_self: bool = False,
    max_positives: int | None = None,
    block_size: int | str | None = "auto",
    max_tile_elements: int | None = None,
    capacity_limit: int | None = None,
    relevance_fn: RelevanceFn | None = None,
    precision: Precision = DEFAULT_PRECISION,
    capacity: int | None = None,
    caller: str = "",
    **hparams: Any,
) -> dict[str, Array]:
    """Additive statistics of ``loss_fn`` summed over the lists of ``queries`` ranking ``items``.

    This is the engine behind :func:`batch_loss`, the cross-batch memory and the sharded
    loss; ``rankax._core.stats.from_statistics`` turns its output into the loss.

    Args:
      loss_fn: list-level loss (``rankax.losses``).
      queries: ``[Q, D]`` query embeddings.
      query_labels: ``[Q]`` class ids or ``[Q, L]`` label paths.
      items: ``[N, D]`` item embeddings (for a batch: the batch itself, ``N = B``).
      item_labels: ``[N]`` or ``[N, L]``.
      query_index: ``[Q]`` int, the position of each query among the items (the query is
        then excluded from its own list unless ``include_self``); ``None`` if queries are
        not items.
      item_mask: ``[N]`` bool, items that exist (e.g. filled memory slots); default all.
      include_self, max_positives, block_size, relevance_fn, **hparams: see
        :func:`batch_loss`.
      max_tile_elements: bound on ``queries * capacity * N`` of one ``[q, C, N]`` tile
        (default from :func:`default_sizes`).
      capacity_limit: largest rung of the capacity ladder (default
        :func:`default_capacity_limit`).
      precision: of the similarity matmul (``jax.lax.Precision``); default float32-exact.
      capacity: the exact largest positive count of any list when the caller computed it
        (:func:`exact_capacity`); skips the ladder. Default: computed here when the labels are
        concrete.
      caller: the public function named in error messages (``"batch_loss(supap_loss)"``).

    Returns:
      ``dict`` of scalar totals (``{"sum", "count"}`` for ordinary list losses).
    """
    q_emb, q_lab, i_emb, i_lab = _check_views(queries, query_labels, items, item_labels, caller)
    validation.check_flag("include_self", include_self, caller=caller)
    max_positives = validation.check_capacity(max_positives, caller=caller)
    _check_sizes(block_size, max_tile_elements, precision, caller, capacity_limit)
    name = getattr(loss_fn, "__name__", "loss_fn")
    # Deprecated spellings of rankax's losses renamed here: the warning names the caller's line.
    if getattr(loss_fn, "hparams", None) is not None:
        hparams = _renames.rename_kwargs(name, inspect.signature(loss_fn).parameters, hparams)
    hparams = stats.hparams_of(loss_fn, hparams, caller=caller)
    num_q, n = q_emb.shape[0], i_emb.shape[0]
    mask = jnp.ones((n,), bool) if item_mask is None else jnp.asarray(item_mask, bool)
    if mask.shape != (n,):
        raise ValueError(f"{validation.prefix(caller)}item_mask must be [{n}], got {mask.shape}")
    # Queries that are not items (query_index None) are never in their own lists: the
    # default relevance then counts every item, as with include_self.
    levels_fn, hparams = levels_for_loss(loss_fn, q_lab, relevance_fn, hparams, caller)
    rel_fn = relevance_of(loss_fn, q_lab, include_self or query_index is None, levels_fn)
    if capacity is None:
        capacity = exact_capacity(
            query_labels, item_labels, query_index=query_index, item_mask=item_mask,
            include_self=include_self, relevance_fn=rel_fn, caller=caller,
        )
    if capacity is not None:  # the ladder's largest rung bounds a concrete count too (as when traced)
        raise_on_overflow(capacity, ladder_limit(num_q, n, max_tile_elements, capacity_limit), caller)
    plan = _plan(num_q, n, block_size, max_tile_elements, capacity_limit, max_positives, capacity)
    views = _Views(
        q_emb, q_lab, i_emb, i_lab, mask,
        None if query_index is None else jnp.asarray(query_index, jnp.int32),
        include_self, rel_fn, bool(getattr(loss_fn, "graded", False)), precision,
        keyed=relevance_fn is None, caller=caller,
    )
    block_rows = jnp.arange(plan.num_blocks * plan.block).reshape(plan.num_blocks, plan.block)
    # The sort that places the positives (keyed views) does not depend on the capacity: done
    # once, outside the rungs; each block takes its slots from it (recomputed, never saved).
    runs = views.key_runs() if views.keyed else None
    checked = plan.capacities[-1] < n and capacity is None  # a list may exceed the largest rung
    most = _most_positives(views, runs, block_rows) if checked or len(plan.capacities) > 1 else None
    if checked:
        views = views._replace(q_emb=_overflow_guard(views.q_emb, most, plan.capacities[-1], caller))
    tile = functools.partial(_tile_statistics, loss_fn, views, hparams=hparams, caller=caller)
    per_block = _run_blocks(views, plan, tile, block_rows, runs, most)
    totals = jax.tree.map(lambda v: jnp.sum(v, axis=0), per_block)
    if checked:  # the NaN queries need not reach every statistic (masks, a loss of its own)
        nan = jnp.where(most > plan.capacities[-1], jnp.nan, 0.0)
        floating = lambda v: jnp.issubdtype(v.dtype, jnp.floating)  # noqa: E731
        totals = jax.tree.map(lambda v: v + nan.astype(v.dtype) if floating(v) else v, totals)
    return totals


def _overflow_guard(queries: Array, most: Array, limit: int, caller: str) -> Array:
    """``queries``, or NaN if a list has ``most > limit`` positives (traced labels).

    Such a list would be computed with some positives missing, so the value and every gradient
    come out NaN instead; with :mod:`rankax.debug` checks on, a ``checkify`` check names the
    count (:func:`overflow_message`). Concrete labels raise :class:`CapacityError` before
    anything runs. No host callback: one that raises stops its device, and on a mesh the others
    then wait in their collectives until the runtime aborts the process; and one with a JAX
    effect loses ``jit``'s fast dispatch (~0.5 ms per call of a B = 256 step on the CPU).
    """
    over = most > limit
    if validation.value_checks_enabled():
        checkify.check(~over, validation.prefix(caller) + overflow_message("{most}", limit), most=most)
    return queries + jnp.where(over, jnp.nan, 0.0).astype(queries.dtype)


def _check_views(
    queries: ArrayLike, query_labels: ArrayLike, items: ArrayLike, item_labels: ArrayLike, caller: str
) -> tuple[Array, Array, Array, Array]:
    """Shapes and dtypes of queries and items (their values are the callers' to check, once),
    replicated if explicitly sharded (blocks are gathered with dynamic indices)."""
    q_emb, q_lab = check_batch(queries, query_labels, "queries", values=False, caller=caller)
    i_emb, i_lab = check_batch(items, item_labels, "items", values=False, caller=caller)
    q_emb, q_lab, i_emb, i_lab = map(validation.replicated, (q_emb, q_lab, i_emb, i_lab))
    if q_emb.shape[1] != i_emb.shape[1]:
        raise ValueError(
            f"{validation.prefix(caller)}queries and items must have the same dimension, got "
            f"{q_emb.shape} and {i_emb.shape}"
        )
    if q_lab.shape[1:] != i_lab.shape[1:]:
        raise ValueError(
            f"{validation.prefix(caller)}query and item labels must have the same shape per sample, "
            f"got {q_lab.shape} and {i_lab.shape}"
        )
    return q_emb, q_lab, i_emb, i_lab


class _Plan(NamedTuple):
    """Static layout of one call: ``block`` queries per block (``num_blocks`` of them), the
    ``[q, C, N]`` tile bound, whether scores are kept for the backward pass, and the capacities
    (one if the exact largest positive count is known)."""

    block: int
    num_blocks: int
    max_tile_elements: int
    keep_scores: bool
    capacities: tuple[int, ...]


def _plan(
    num_q: int,
    n: int,
    block_size: int | str | None,
    max_tile_elements: int | None,
    capacity_limit: int | None,
    max_positives: int | None,
    exact: int | None,
) -> _Plan:
    auto_block, auto_tile = default_sizes(num_q, n)
    max_tile_elements = auto_tile if max_tile_elements is None else max_tile_elements
    # An explicit block_size is a memory bound: then the scores are recomputed, never kept.
    keep_scores = block_size == "auto" and num_q * n <= SAVED_SCORES_ELEMENTS
    block_size = auto_block if block_size == "auto" else block_size
    if exact is not None:  # within the ladder's limit (raise_on_overflow)
        capacities = (min(exact, n),)
    else:
        limit = ladder_limit(num_q, n, max_tile_elements, capacity_limit)
        if max_positives is None:  # 3, 4, 16, 64, ... (positives.default_ladder), up to the limit
            capacities = positives.default_ladder(limit)
        else:
            capacities = capacity_ladder(min(max_positives, limit), limit)
    block = num_q if block_size is None else max(1, min(int(block_size), num_q))
    return _Plan(block, -(-num_q // block), max_tile_elements, keep_scores, capacities)


class _Views(NamedTuple):
    """What a block of queries needs to build its lists: the embeddings and labels of queries
    and items, which items exist, where each query sits among the items, and the options."""

    q_emb: Array
    q_lab: Array
    i_emb: Array
    i_lab: Array
    mask: Array
    query_index: Array | None
    include_self: bool
    relevance_fn: RelevanceFn
    graded: bool
    precision: Precision
    #: The default relevance: an item is a positive iff it has the query's class id (label
    #: paths: the same coarsest level, where every relevance rule is > 0), so the positives'
    #: slots come from one sort (``positives.key_runs``) instead of scanning each list.
    keyed: bool = False
    #: Named in errors (``batch_loss(<loss>)``).
    caller: str = ""

    def key_runs(self) -> positives.KeyRuns:
        """The sort that places every query's positives (``keyed`` views)."""
        return positives.key_runs(
            positives.class_key(self.q_lab), positives.class_key(self.i_lab), self.mask,
            self.query_index, self.include_self,
        )

    def slots(self, runs: positives.KeyRuns, rows: Array, capacity: int) -> positives.Slots:
        """``[block, capacity]`` slots of the positives of the queries ``rows`` (row indices past
        the last query are padding: no positives)."""
        num_q = self.q_emb.shape[0]
        slots = positives.slots_of(runs, capacity, jnp.minimum(rows, num_q - 1))
        return slots._replace(mask=slots.mask & (rows < num_q)[:, None])

    def scores(self, rows: Array) -> Array:
        return jnp.matmul(self.q_emb[rows], self.i_emb.T, precision=self.precision)

    def slot_scores(self, rows: Array, slots: positives.Slots, scores: Array) -> positives.Slots:
        """``slots`` of the queries ``rows`` with their positives' scores ``[block, C]``.

        Their values are those of the lists' ``[block, N]`` ``scores``, bit for bit: a dot
        product computed apart can differ in the last bit, and a positive tied with a
        negative then falls on either side of a step (ROADMAP's jumps by ``start`` at 0).
        Their gradient is that of dot products of the embeddings, which reaches the
        embeddings directly, where the gather's would scatter into the ``[block, N]``
        cotangent (on the CPU that scatter cost half the similarity matmul at B = 4096)."""
        q = self.q_emb[jnp.minimum(rows, self.q_emb.shape[0] - 1)]
        s = jnp.einsum("qd,qcd->qc", q, self.i_emb[slots.index], precision=self.precision)
        exact = jnp.take_along_axis(jax.lax.stop_gradient(scores), slots.index, axis=-1)
        return slots._replace(scores=exact + (s - jax.lax.stop_gradient(s)))

    def lists(self, rows: Array, scores: Array | None) -> tuple[Array, Array, Array]:
        """``[block, N]`` scores, relevance and validity of the lists of ``rows`` (row indices
        past the last query are padding: their lists are empty)."""
        num_q = self.q_emb.shape[0]
        valid = rows < num_q
        rows = jnp.minimum(rows, num_q - 1)
        if scores is None:
            scores = self.scores(rows)
        where = _list_masks(rows, valid, self.query_index, self.mask, self.include_self)
        rel = _call_relevance(self.relevance_fn, self.q_lab[rows], self.i_lab, self.caller)
        _check_relevance_values(rel, where, self.caller)
        dtype = jnp.result_type(scores, jnp.float32)  # float64 relevance for float64 embeddings
        rel = rel.astype(dtype)
        if not self.graded:  # binary losses see graded relevance as relevant / not relevant
            rel = (rel > 0).astype(dtype)
        return scores, rel, where


def _tile_statistics(
    loss_fn: LossFn,
    views: _Views,
    query_rows: Array,
    scores: Array,
    rel: Array,
    where: Array,
    capacity: int,
    slots: positives.Slots | None,
    *,
    hparams: dict,
    caller: str,
) -> dict[str, Array]:
    """Statistics of the lists of one tile (queries ``query_rows``), summed over its queries.
    Given slots get their scores here, per tile: ``[q, C, D]`` embeddings stay within the tile
    budget on every rung of the ladder."""
    if slots is not None:
        slots = views.slot_scores(query_rows, slots, scores)
    hparams = _keys_per_list(hparams, views, query_rows)
    values = stats.list_statistics(
        loss_fn, scores, rel, where, capacity=capacity, hparams=hparams, caller=caller, slots=slots
    )
    return jax.tree.map(lambda v: jnp.sum(v, axis=0), values)


def _keys_per_list(hparams: dict[str, Any], views: _Views, rows: Array) -> dict[str, Any]:
    """PRNG-key hyperparameters (BlackBox AP's ``key``) as one key per list: the list of query
    ``r`` (its position among the items, else its row) gets ``fold_in(key, r)``
    (:func:`rankax._core.validation.list_keys`), as row ``r`` of the full scores does in the list
    API, so a loss's noise does not depend on the blocks, tiles or devices."""
    if not any(validation.is_prng_key(v) for v in hparams.values()):
        return hparams
    rows = jnp.minimum(rows, views.q_emb.shape[0] - 1)
    ids = rows if views.query_index is None else views.query_index[rows]
    return {k: validation.list_keys(v, ids) if validation.is_prng_key(v) else v for k, v in hparams.items()}


def _at_capacity(tile: Callable[..., dict[str, Array]], capacity: int, plan: _Plan, n: int):
    """The statistics of a block at one capacity, in sub-blocks (tiles) of at most
    ``max_tile_elements`` ``[q, C, N]`` terms, each checkpointed.

    The rungs above the first of a ladder (lists with more positives than expected, rare) get
    tiles no larger than the first rung's block, down to one query: a compiled program holds
    buffers for every rung, and rungs sized to ``max_tile_elements`` made XLA's scratch (which
    the CPU allocates per call) 25x the first rung's.
    """
    block = plan.block
    budget = plan.max_tile_elements
    if capacity > plan.capacities[0]:
        budget = min(budget, block * plan.capacities[0] * n)
    rows = max(1, min(block, budget // (capacity * n)))
    if rows >= block:
        return lambda q, s, r, w, slots: tile(q, s, r, w, capacity, slots)
    num_tiles = -(-block // rows)

    def run(
        query_rows: Array, scores: Array, rel: Array, where: Array, slots: positives.Slots | None
    ) -> dict[str, Array]:
        parts = (query_rows, scores, rel, where, slots)
        tiles = jax.tree.map(lambda a: _split_rows(a, num_tiles, rows), parts)
        # Checkpointed too: otherwise the block's backward pass would keep the residuals of
        # all its tiles, i.e. a [block, capacity, N] tensor again.
        one = jax.checkpoint(
            lambda t: tile(*t[:4], capacity, t[4]), prevent_cse=False,
            policy=ranking.KEEP_SUMS_AND_SLOTS,  # the [q, C] step sums and scanned slots
        )
        per_tile = jax.lax.map(one, tiles)
        return jax.tree.map(lambda v: jnp.sum(v, axis=0), per_tile)

    return run


def _most_positives(views: _Views, runs: positives.KeyRuns | None, block_rows: Array) -> Array:
    """The largest positive count of any list: from the sort of keyed views, else from a pass
    over the lists' relevance (their scores unused, so never computed)."""
    if runs is not None:
        return jnp.max(runs.count, initial=0)

    def block_most(rows: Array) -> Array:
        _, rel, where = views.lists(rows, None)
        return positives.most_positives((rel > 0) & where)

    return jnp.max(jax.lax.map(block_most, block_rows))


def _split_rows(a: Array, num_parts: int, rows: int) -> Array:
    """``[R, ...]`` padded with zero rows (False masks: empty lists) to ``[num_parts, rows, ...]``."""
    pad = num_parts * rows - a.shape[0]
    return jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)).reshape(num_parts, rows, *a.shape[1:])


def _run_blocks(
    views: _Views,
    plan: _Plan,
    tile: Callable[..., dict[str, Array]],
    block_rows: Array,
    runs: positives.KeyRuns | None,
    most: Array | None,
) -> dict[str, Array]:
    """Per-block statistics ``[num_blocks]`` at the one capacity that fits.

    With several capacities, the largest positive count ``most`` picks the rung with one
    ``lax.switch`` outside the block loops. A switch returns the residuals of every rung (zeros
    from the rungs not taken), so the rungs keep little: their slots come from ``runs``, the one
    sort of keyed views, and only the rungs up to ``positives.KEPT_CAPACITY`` keep their step
    sums.
    """
    n = views.i_emb.shape[0]
    num_q = views.q_emb.shape[0]
    # With block_size="auto" and at most SAVED_SCORES_ELEMENTS scores, the scores are computed
    # once, outside the block loop, and kept for the backward pass (no second matmul); else each
    # block computes its own and its backward pass recomputes them (O(block * N) memory).
    kept = None
    if plan.keep_scores:
        padded = jnp.minimum(block_rows, num_q - 1)
        kept = views.scores(padded.reshape(-1)).reshape(plan.num_blocks, plan.block, n)

    def all_blocks(capacity: int) -> dict[str, Array]:
        tile_fn = _at_capacity(tile, capacity, plan, n)

        def block_statistics(xs: tuple[Array, Array | None]) -> dict[str, Array]:
            rows, kept_scores = xs
            scores, rel, where = views.lists(rows, kept_scores)
            slots = None if runs is None else views.slots(runs, rows, capacity)
            return tile_fn(rows, scores, rel, where, slots)

        # Each block checkpointed: its backward pass recomputes it from its inputs. On a ladder,
        # only rungs up to positives.KEPT_CAPACITY keep their step sums (lax.switch returns the
        # residuals of every rung, zeros for those not taken).
        small = len(plan.capacities) == 1 or capacity <= positives.KEPT_CAPACITY
        policy = ranking.KEEP_SUMS_AND_SLOTS if small else None
        block_fn = jax.checkpoint(block_statistics, prevent_cse=False, policy=policy)
        return jax.lax.map(block_fn, (block_rows, kept))

    if len(plan.capacities) == 1:
        return all_blocks(plan.capacities[0])
    level = jnp.searchsorted(jnp.asarray(plan.capacities), most)
    rungs = [functools.partial(all_blocks, c) for c in plan.capacities]
    return jax.lax.switch(jnp.minimum(level, len(rungs) - 1), rungs)


def _check_memory(memory: Any, references: Any, caller: str) -> None:
    """``memory`` is an XBM (``rankax.xbm.init`` / ``update``), and not given with references."""
    if references is not None:
        raise ValueError(f"{validation.prefix(caller)}pass either memory= or references=, not both")
    if not all(hasattr(memory, k) for k in ("embeddings", "labels", "valid")):
        raise TypeError(f"{validation.prefix(caller)}memory must be a rankax.xbm.XBM (from xbm.init and "
                        f"xbm.update), got {type(memory).__name__}")


def _reference_rows(m: int, reference_mask: ArrayLike | None, caller: str) -> Array:
    """``[M]`` flags of the references that exist (all when ``reference_mask`` is None)."""
    if reference_mask is None:
        return jnp.ones((m,), bool)
    mask = jnp.asarray(reference_mask, bool)
    if mask.shape != (m,):
        raise ValueError(f"{validation.prefix(caller)}reference_mask must be [M] = [{m}] (one flag per "
                         f"reference), got shape {mask.shape}")
    return mask


def _concrete_items(
    labels: Array, reference_labels: Any, reference_mask: Any, references: Any, memory: Any, caller: str,
    embeddings: Any,
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(item labels, item mask)`` of the lists of a batch with references or memory (the
    batch first, as :func:`with_references` orders them) when all of them are concrete; else
    ``None``."""
    name = "references"
    if memory is not None:
        references, reference_labels, reference_mask = memory.embeddings, memory.labels, memory.valid
        name = "memory"
    m = np.shape(references)[0]
    parts = [labels, reference_labels, reference_mask]
    if reference_labels is None or any(_is_traced(x) for x in parts if x is not None):
        return None
    _check_matches_batch(np.shape(embeddings), np.shape(labels), np.shape(references),
                         np.shape(reference_labels), name, caller)
    with jax.ensure_compile_time_eval():  # inside the caller's jit: concrete, not staged
        mask = np.asarray(_reference_rows(m, reference_mask, caller))
    lab = np.asarray(labels)
    items = np.concatenate([lab, np.asarray(reference_labels).astype(lab.dtype)])
    return items, np.concatenate([np.ones(len(lab), bool), mask])


def _check_matches_batch(emb_shape, lab_shape, ref_shape, ref_lab_shape, name: str, caller: str) -> None:
    """References (or memory) of the batch's embedding dimension and label kind."""
    if ref_shape[1:] != emb_shape[1:] or tuple(ref_lab_shape[1:]) != tuple(lab_shape[1:]):
        raise ValueError(
            f"{validation.prefix(caller)}{name} {tuple(ref_shape)} / labels {tuple(ref_lab_shape)} do "
            f"not match the batch {tuple(emb_shape)} / {tuple(lab_shape)}: same embedding dimension "
            "and label kind needed"
        )


def with_references(
    embeddings: Array,
    labels: Array,
    references: ArrayLike | None = None,
    reference_labels: ArrayLike | None = None,
    reference_mask: ArrayLike | None = None,
    memory: Any = None,
    *,
    caller: str = "",
) -> tuple[Array, Array, Array | None]:
    """The items ranked by a batch's queries: the batch, then the references (no gradient).

    Returns ``(items [B + M, D], item_labels, item_mask [B + M] or None)``; item labels are at
    least int32. Empty reference slots get zero embeddings and, on every level, an id below
    every other (the smallest of the batch and the filled slots, minus one; one above the
    largest where the smallest is int32's least), so they neither are relevant nor share a
    level's weight in graded relevance, whatever ids the labels use (ids that reach both ends
    of int32 on one level leave no such id: then an empty slot shares the largest's).
    """
    name = "references"
    if memory is not None:
        _check_memory(memory, references, caller)
        references, reference_labels, reference_mask = memory.embeddings, memory.labels, memory.valid
        name = "memory"
    if references is None:
        return embeddings, labels, None
    if reference_labels is None:
        raise ValueError(
            f"{validation.prefix(caller)}{name}= needs reference_labels= (their [M] or [M, L] labels)"
        )
    m = np.shape(references)[0]
    ref_mask = _reference_rows(m, reference_mask, caller)
    ref, ref_lab = check_batch(references, reference_labels, name, row_mask=ref_mask, caller=caller)
    _check_matches_batch(embeddings.shape, labels.shape, ref.shape, ref_lab.shape, name, caller)
    if m == 0:  # an empty reference set: the lists are the batch's
        return embeddings, labels, None
    filled = ref_mask.reshape(-1, *([1] * (ref_lab.ndim - 1)))
    wide = jnp.promote_types(labels.dtype, jnp.int32)  # uint8 ids 0..255 leave no spare id
    ref_lab = ref_lab.astype(wide)
    # An empty slot's id, on every level: one below every id of the batch and the filled slots
    # (above them if the lowest is the dtype's least), so it matches no item's (ids may be
    # negative: -1 would join a class -1's level counts).
    info = jnp.iinfo(wide)
    lowest = jnp.minimum(jnp.min(labels, axis=0), jnp.min(jnp.where(filled, ref_lab, info.max), axis=0))
    highest = jnp.maximum(jnp.max(labels, axis=0), jnp.max(jnp.where(filled, ref_lab, info.min), axis=0))
    spare = jnp.where(lowest > info.min, lowest.astype(wide) - 1, highest.astype(wide) + 1)
    ref_lab = jnp.where(filled, ref_lab, spare)
    # Empty slots hold whatever was there (NaN included): zeros, so that no NaN reaches the
    # gradient through the similarity matmul's backward pass (0 * NaN).
    ref = jnp.where(ref_mask[:, None], ref, 0)
    items = jnp.concatenate([embeddings, jax.lax.stop_gradient(ref.astype(embeddings.dtype))])
    item_labels = jnp.concatenate([labels.astype(wide), ref_lab])
    item_mask = jnp.concatenate([jnp.ones((embeddings.shape[0],), bool), ref_mask])
    return items, item_labels, item_mask


def batch_loss(
    loss_fn: LossFn,
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    include_self: bool = False,
    max_positives: int | None = None,
    block_size: int | str | None = "auto",
    relevance_fn: RelevanceFn | None = None,
    references: ArrayLike | None = None,
    reference_labels: ArrayLike | None = None,
    reference_mask: ArrayLike | None = None,
    memory: Any = None,
    max_tile_elements: int | None = None,
    capacity_limit: int | None = None,
    precision: Precision = DEFAULT_PRECISION,
    **hparams: Any,
) -> Array:
    """Mean of a list-level loss over the queries of a batch that have a positive.

    .. math::  \\mathcal{L} = \\frac{1}{|Q^+|} \\sum_{i \\in Q^+}
        \\ell\\big((s_{ij})_{j \\ne i}, (y_{ij})_{j \\ne i}\\big), \\quad s = E R^\\top

    where the items ``R`` are the batch ``E`` itself, followed by the ``references`` (no
    gradient) when given, and :math:`Q^+` are the queries with at least one positive. Losses
    that reduce over the pairs of the whole batch (calibration, contrastive, ...) define
    ``list_statistics``/``from_statistics`` (see :mod:`rankax._core.stats`) and are pooled over all
    pairs instead. Cost ``O(B * C * N)`` time, ``O(block * N + B * D)`` memory (module doc).

    Args:
      loss_fn: a list-level loss ``fn(scores, labels, *, where, reduce_fn, max_positives,
        **hparams)`` such as :func:`rankax.losses.supap_loss`; a function of one's own must
        return one value per list for ``reduce_fn=None`` and gets its keywords as given.
      embeddings: ``[B, D]`` L2-normalised embeddings.
      labels: ``[B]`` integer class ids or ``[B, L]`` label paths (column 0 finest).
      include_self: keep each query in its own list as a positive (official PyTorch code's
        convention); default False (metric-learning convention).
      max_positives: static positive capacity per list, e.g. ``K - 1`` for a P x K batch
        (``K`` with ``include_self``). Only a speed hint: with concrete labels the exact
        capacity is computed; under ``jit`` lists with more positives take a larger rung of
        the capacity ladder (never dropped). Default under ``jit``: the ladder 3, 4, 16, ....
      block_size: queries per block, memory ``O(block * N)``; ``None`` = one block; ``"auto"``
        (default) = :func:`default_sizes` for the default backend (256 on the CPU, as large as
        a 128 MiB score block allows on accelerators).
      relevance_fn: ``(query_labels [Q, ...], item_labels [N, ...]) -> [Q, N]`` relevance;
        default binary (same class id) for ``[B]`` labels and
        :func:`rankax.hierarchy.hierarchical_relevance` for ``[B, L]`` paths (H-AP gets the
        shared levels and its rule instead: :func:`levels_for_loss`).
      references: optional ``[M, D]`` extra items every query also ranks (gradient stopped).
      reference_labels: ``[M]`` or ``[M, L]`` labels of the references.
      reference_mask: optional ``[M]`` bool, which references exist.
      memory: a :class:`rankax.xbm.XBM` cross-batch memory; shorthand for the three above.
      max_tile_elements: bound on the size of one ``[queries, capacity, N]`` tile (default
        :func:`default_sizes`: ``2**24`` on the CPU, ``2**26`` on accelerators).
      capacity_limit: largest positive capacity the compiled program may use under ``jit``.
        A list with more positives is never computed without some: with concrete labels the
        call raises :class:`CapacityError`; with traced labels its value and gradients are
        NaN (with :mod:`rankax.debug` checks on, a check names the count). Default
        :func:`default_capacity_limit`: the largest capacity whose one-query tile
        ``[1, C, N]`` fits ``max_tile_elements`` (all of ``N`` up to ``N = 4096`` with the
        default tile), so XLA never reserves more scratch than the tile budget for rungs that
        are rarely taken. ``max_positives=K - 1, capacity_limit=K - 1`` gives a single-rung
        program for P x K batches; raise it (up to ``N``) for lists with very many graded
        positives.
      precision: of the similarity matmul ``E R^T`` (``jax.lax.Precision`` or its name).
        Default ``"highest"``: float32-exact scores on every backend, as the official PyTorch
        code computes them; ``"default"`` opts into TF32 (NVIDIA) / bfloat16 passes (TPU).
      **hparams: forwarded to ``loss_fn``.

    Returns:
      Scalar loss, float32 (float64 for float64 embeddings with x64 enabled); 0 when no query
      has a positive.

    Compilation: the loss is computed by one ``jax.jit``-compiled program per loss, shapes and
    options, cached across calls, so calling ``batch_loss`` (or ``jax.grad`` of it) outside
    ``jit`` compiles once per shape and largest number of positives of a list (constant for
    P x K batches; a sampler whose batches vary in it compiles once per value met). Labels that
    are concrete (numpy or ``jnp`` arrays, also closed over inside the caller's ``jit``) give
    that exact positive capacity up front; traced labels take the capacity ladder (module doc).

    Example::

        loss, grads = jax.value_and_grad(
            lambda e: rankax.batch_loss(rankax.supap_loss, e, labels, max_positives=3))(emb)
    """
    validation.check_loss_fn(loss_fn, "batch_loss", "batch_loss(loss_fn, embeddings, labels, ...)")
    caller = f"batch_loss({getattr(loss_fn, '__name__', 'loss_fn')})"
    validation.reject_torch(caller, embeddings=embeddings, labels=labels, references=references,
                            reference_labels=reference_labels)
    hparams = _check_loss_options(loss_fn, hparams, references, reference_labels, reference_mask, caller)
    max_positives = validation.check_capacity(max_positives, caller=caller)  # a Python int: static
    # Python lists as arrays: as jit arguments they would be pytrees of scalars.
    references, reference_labels, reference_mask = (
        np.asarray(x) if isinstance(x, list | tuple) else x
        for x in (references, reference_labels, reference_mask)
    )
    given = labels  # numpy labels are counted on the host as they are (no device round trip)
    if not _is_traced(labels):
        # Concrete labels (numpy included, also closed over in the caller's jit) stay concrete:
        # the exact capacity is known, and the program gets them as an argument, not a literal.
        with jax.ensure_compile_time_eval():
            labels = validation.int_ids(labels, "labels", caller=caller)
    # Shapes, dtypes and (eager calls) values, before anything is compiled.
    _, lab = check_batch(embeddings, labels, caller=caller)
    if references is not None and reference_labels is not None:
        ref_rows = _reference_rows(np.shape(references)[0], reference_mask, caller)
        check_batch(references, reference_labels, "references", row_mask=ref_rows, caller=caller)
    if memory is not None:  # NaN/inf in a filled slot: eager error, as for references
        _check_memory(memory, references, caller)
        check_batch(memory.embeddings, memory.labels, "memory", row_mask=memory.valid, caller=caller)
    capacity = None
    if references is None and memory is None:
        counted = given if isinstance(given, np.ndarray) else lab
        capacity = exact_capacity(
            counted, counted, query_index=np.arange(lab.shape[0]), include_self=include_self,
            relevance_fn=relevance_fn, caller=caller,
        )
    elif joined := _concrete_items(lab, reference_labels, reference_mask, references, memory, caller,
                                   embeddings):
        # Concrete labels with references or memory: an overflow of the ladder's largest rung
        # (capacity_limit, else the tile bound's) raises here too (in the program the labels
        # are traced, and it would turn the loss NaN).
        limit = ladder_limit(lab.shape[0], joined[0].shape[0], max_tile_elements, capacity_limit)
        most = exact_capacity(
            lab, joined[0], query_index=np.arange(lab.shape[0]), item_mask=joined[1],
            include_self=include_self, relevance_fn=relevance_fn, caller=caller,
        )
        if most is not None:
            raise_on_overflow(most, limit, caller)
    # Sequences (ks=[1, 2] or np.array([1, 2])) are static cut-offs, compiled into the program.
    hparams = {k: _static_form(v) for k, v in hparams.items()}
    static = {k: v for k, v in hparams.items() if _is_static(v)}
    dynamic = {k: v for k, v in hparams.items() if k not in static}
    options = dict(
        include_self=include_self, max_positives=max_positives, block_size=block_size,
        relevance_fn=relevance_fn, max_tile_elements=max_tile_elements,
        capacity_limit=capacity_limit, precision=precision, capacity=capacity, **static,
    )
    settings = (caller, validation.value_checks_enabled())
    return _batch_loss_compiled(
        loss_fn, tuple(sorted(options.items())), settings,
        embeddings, lab, references, reference_labels, reference_mask, memory, dynamic,
    )


# Keywords of the list losses that batch_loss sets itself, and what to use instead.
_SET_BY_BATCH_LOSS = {
    "where": "each list is the batch (and references) less the query; exclude items with "
    "reference_mask=, or the query with include_self=False (default)",
    "reduce_fn": "the loss is always the mean over the queries that have a positive",
    "scores": "scores are E R^T of the embeddings", "labels": "pass the batch's labels",
}


def _check_loss_options(
    loss_fn, hparams, references, reference_labels, reference_mask, caller, options_of=None
) -> dict[str, Any]:
    """Eager checks of :func:`batch_loss`'s keywords, before anything is traced: hyperparameters
    of ``loss_fn`` (names, and the ranges of concrete values: inside the compiled program every
    array is traced), the keywords batch_loss sets itself, and reference arguments without
    ``references``. Returns the hyperparameters with rankax's deprecated spellings renamed; the
    ``DeprecationWarning`` points at the line that called the public function that called this
    (``batch_loss``, ``make_batch_loss``, ``sharded_batch_loss``)."""
    for name, instead in _SET_BY_BATCH_LOSS.items():
        if name in hparams:
            raise TypeError(f"{caller}: {name}= is set by batch_loss, not passed through: {instead}")
    if references is None and (reference_labels is not None or reference_mask is not None):
        raise ValueError(f"{caller}: reference_labels/reference_mask need references= (the [M, D] "
                         "reference embeddings)")
    name = getattr(loss_fn, "__name__", "loss_fn")
    params = inspect.signature(loss_fn).parameters
    checker = getattr(loss_fn, "hparams", None)
    if checker is None:  # a user's own list loss: it must take what batch_loss passes (as given)
        try:
            passed = dict(where=None, reduce_fn=None, max_positives=None, **hparams)
            inspect.signature(loss_fn).bind(None, None, **passed)
        except TypeError as err:
            raise TypeError(
                f"{caller.split('(')[0]}: loss_fn must be a list loss fn(scores, labels, *, where, "
                f"reduce_fn, max_positives, **hparams) such as rankax.supap_loss; {name} does not take "
                f"that: {err}"
            ) from None
        return hparams
    hparams = _renames.rename_kwargs(name, params, hparams, stacklevel=4)  # rankax's own old names
    unknown = [k for k in hparams if k not in params]
    if unknown:
        options = sorted(p for p in inspect.signature(options_of or batch_loss).parameters
                         if p not in ("loss_fn", "embeddings", "labels", "hparams", "mesh", "axis_name"))
        own = [p for p in params if p not in ("scores", "labels", *_SET_BY_BATCH_LOSS)]
        close = difflib.get_close_matches(unknown[0], options + own, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        factory = (options_of or batch_loss).__name__
        raise TypeError(
            f"{caller} got an unknown argument {unknown[0]!r}{hint} ({factory} options: "
            f"{', '.join(options)}; {name} hyperparameters: {', '.join(own)})"
        )
    checker(dict(hparams), caller=caller, warn=False)  # names and ranges; traced values pass
    for k, v in hparams.items():
        if validation.is_prng_key(v) and jnp.issubdtype(v.dtype, jax.dtypes.prng_key) and v.shape:
            raise ValueError(f"{caller}: {k} must be one PRNG key (the list of query r gets "
                             f"jax.random.fold_in({k}, r)), got shape {v.shape}")
    return hparams


def _as_tuple(v: list | np.ndarray) -> tuple:
    return tuple(np.asarray(v).tolist()) if isinstance(v, np.ndarray) else tuple(v)


def _static_form(value: Any) -> Any:
    """A hyperparameter as the list loss would read it: numpy scalars and 0-d arrays become Python
    scalars, sequences tuples, and concrete integer or boolean JAX arrays (``ks``, ``tie_aware``)
    Python values, all compiled into the program; floating JAX arrays, PRNG keys (typed, or
    raw ``uint32[2]``) and tracers stay arguments. (A size such as ``num_bins`` is checked
    before, as the list losses check it: a Python or numpy int, not a JAX array.)"""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    if isinstance(value, list | np.ndarray):
        return _as_tuple(value)
    concrete = isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer)
    if concrete and validation.is_prng_key(value):
        return value
    if concrete and not jnp.issubdtype(value.dtype, jnp.inexact):
        return value.item() if value.ndim == 0 else tuple(value.tolist())
    return value


def _is_static(value: Any) -> bool:
    """Hyperparameters compiled into the program (Python scalars, strings, None); arrays are
    arguments (a temperature annealed inside the caller's ``jit`` stays traced)."""
    return value is None or isinstance(value, bool | int | float | str | tuple)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _batch_loss_compiled(
    loss_fn: LossFn,
    options: tuple[tuple[str, Any], ...],
    settings: tuple[str, bool],
    embeddings: Array,
    labels: Array,
    references: Array | None,
    reference_labels: Array | None,
    reference_mask: Array | None,
    memory: Any,
    dynamic_hparams: dict[str, Array],
) -> Array:
    """The body of :func:`batch_loss`; its settings (the caller's name for error messages,
    whether :mod:`rankax.debug` checks are on) are part of the cache key."""
    caller, checks = settings
    kwargs = {**dict(options), **dynamic_hparams}
    with validation.value_checks(checks):
        emb, lab = check_batch(embeddings, labels, values=False, caller=caller)  # values: checked
        items, item_labels, item_mask = with_references(
            emb, lab, references, reference_labels, reference_mask, memory, caller=caller
        )
        # The lists' kernels run unguarded: non-finite inputs are guarded once, here, O(B * D):
        # a NaN/inf in a query or an existing reference makes the loss and every embedding's
        # gradient NaN (the kernels' masks would keep some of them finite), through the
        # queries and through the items.
        bad = jnp.any(nonfinite.nonfinite_lists(items, None if item_mask is None else item_mask[:, None]))
        emb, items = (nonfinite.poison_cotangent(x, jnp.broadcast_to(bad, x.shape[:1])) for x in (emb, items))
        totals = batch_statistics(
            loss_fn, emb, lab, items, item_labels,
            query_index=np.arange(emb.shape[0]),  # numpy: stays concrete under jit
            item_mask=item_mask, caller=caller, **kwargs,
        )
        hparams = {k: v for k, v in kwargs.items() if k not in _BATCH_OPTIONS}
        hparams = stats.hparams_of(loss_fn, hparams, caller=caller, warn=False)
        loss = stats.from_statistics(loss_fn, totals, hparams)
        return nonfinite.propagate_nonfinite(loss, bad)


_BATCH_OPTIONS = frozenset({
    "include_self", "max_positives", "block_size", "relevance_fn", "max_tile_elements",
    "capacity_limit", "precision", "capacity",
})
