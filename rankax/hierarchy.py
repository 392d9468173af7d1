"""Graded relevance from hierarchical label paths (SupRank's H-AP and NDCG).

A *label path* is one row of an integer array ``[L]``: the labels of a sample at ``L``
levels of a hierarchy, **column 0 the finest level** and column ``L - 1`` the coarsest
(Stanford Online Products: ``[class, super_class]``; iNaturalist: ``[species, genus, ...,
kingdom]``). This is the column order of the official SupRank datasets.

Two paths share ``t`` levels when they agree on the ``t`` coarsest columns, i.e. ``t`` is
the depth of their lowest common ancestor, ``0 <= t <= L`` (``t = L``: same finest class).
When the paths form a tree (every id has one parent in the next coarser column), ``t`` is
also the number of columns on which the paths are equal, which is how the official code
counts it. Ids unique only within their parent, or a name shared by two taxa (a genus name in
two families), break this: the official count then includes the equal finer column, ``t``
stops at the first coarser disagreement (a review measured 0.0109 on an H-AP batch loss with
one such genus). The loaders warn about such labels (``rankax.data.base.warn_unless_tree``).

Relevance rules, for one query ``q`` and items ``j`` of its list:

* ``"pop"`` (SupRank's official default): with weights :math:`w_t = (t / (L - 1))^\\alpha`,
  :math:`\\mathrm{rel}_{qj} = w_{t_{qj}} / \\#\\{j' : t_{qj'} = t_{qj}\\}`, i.e. the weight
  of a level is shared among the items of the list at that level, so that every level
  present contributes :math:`w_t` in total. ``L = 1`` uses :math:`w_1 = 1`.
* ``"levels"``: :math:`\\mathrm{rel}_{qj} = (t_{qj} / L)^\\alpha`.
* ``"count"``: :math:`\\mathrm{rel}_{qj} = t_{qj}`, the number of shared levels itself: the
  relevance official SupRank's NDCG loss turns into gains :math:`2^{t} - 1`
  (``SupNDCGLoss(hierarchy_level="MULTI")`` reads ``create_label_matrix``, the count of equal
  columns). :func:`rankax.batch_loss` uses it for :func:`rankax.losses.sup_ndcg_loss`
  (``sup_ndcg_loss.path_relevance``) and ``"pop"`` for the other graded losses
  (:func:`rankax.losses.hap_loss` gets the shared levels and computes "pop" per list:
  :func:`relevance_from_levels` over its valid items, the same values).

Items with ``t = 0`` (nothing in common) have relevance 0 under every rule. The shared
conventions (ranks, ties, ``include_self``, reductions) are in ``docs/conventions.md``.

References:
  Ramzi, Thome, Rambour, Audebert, Bitot. "Optimization of Rank Losses for Image Retrieval"
  (SupRank), arXiv:2309.08250, 2023; "Hierarchical Average Precision Training for Pertinent
  Image Retrieval" (HAPPIER), ECCV 2022.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rankax._core import validation

Array = jax.Array

__all__ = [
    "RELEVANCE_RULES",
    "check_levels",
    "hierarchical_relevance",
    "level_counts",
    "level_weights",
    "list_level_counts",
    "path_relevance",
    "pop_relevance_from_counts",
    "row_ids",
    "relevance_at_levels",
    "relevance_from_levels",
    "shared_levels",
]

RELEVANCE_RULES = ("pop", "levels", "count")


def _check_path_shapes(q: Any, it: Any, names: tuple[str, str], caller: str) -> None:
    """Shapes and dtypes of two ``[., L]`` label-path arrays (numpy or jnp)."""
    p = validation.prefix(caller)
    for name, a, rows in ((names[0], q, "Q"), (names[1], it, "N")):
        if a.ndim != 2:
            raise ValueError(f"{p}{name} must be [{rows}, L] label paths, got shape {a.shape}")
    if q.shape[1] != it.shape[1]:
        raise ValueError(
            f"{p}{names[0]} and {names[1]} must have the same number of levels L, "
            f"got {q.shape[1]} and {it.shape[1]}"
        )
    if q.shape[1] < 1:
        raise ValueError(f"{p}label paths need at least one level (L >= 1)")
    for name, a in zip(names, (q, it), strict=True):
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{p}{name} must be integer label ids, got dtype {a.dtype}")


def _check_paths(query_paths: ArrayLike, item_paths: ArrayLike, caller: str = "") -> tuple[Array, Array]:
    q = validation.int_ids(query_paths, "query_paths", caller=caller)
    it = validation.int_ids(item_paths, "item_paths", caller=caller)
    _check_path_shapes(q, it, ("query_paths", "item_paths"), caller)
    return q, it


def check_levels(levels: ArrayLike, num_levels: int, *, caller: str, name: str = "levels") -> Array:
    """``levels``, shared-level counts ``t`` (:func:`shared_levels`), as int32: a ``TypeError``
    naming ``caller`` and the argument ``name`` unless they are integers, a ``ValueError`` where
    concrete values (or, in :mod:`rankax.debug` checked mode, traced ones) fall outside
    ``0..num_levels``."""
    return _check_levels(levels, num_levels, caller, name)


def _check_levels(levels: ArrayLike, num_levels: int, caller: str, name: str = "levels") -> Array:
    """Shared-level counts ``t`` as int32, integer and (concrete values) within ``0..L``."""
    t = validation.as_array(levels, name, validation.prefix(caller))
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"{validation.prefix(caller)}{name} must be integer shared-level counts "
                        f"0..L (shared_levels), got dtype {t.dtype}")
    if validation.value_checks_apply(t):
        validation.check_values((t < 0) | (t > num_levels), f"{name} must lie in 0..L = 0..{num_levels}",
                                t, name, caller=caller)
    return t.astype(jnp.int32)


def shared_levels(query_paths: ArrayLike, item_paths: ArrayLike) -> Array:
    """Number of hierarchy levels shared by each query and item, ``[Q, N]`` int32.

    ``t_qj`` is the length of the common part of the two paths read from the coarsest level
    (column ``L - 1``) towards the finest (column 0): the depth of their lowest common
    ancestor. ``t = L`` means the same finest class, ``t = 0`` nothing in common.

    Args:
      query_paths: ``[Q, L]`` integer label paths, column 0 = finest level.
      item_paths: ``[N, L]`` integer label paths, same column order.
    """
    return _shared_levels(*_check_paths(query_paths, item_paths, "shared_levels"))


def _shared_levels(q: Array, it: Array) -> Array:
    """:func:`shared_levels` of checked paths."""
    # Walk from the coarsest level: a level counts only if all coarser levels agree. One
    # [Q, N] pass per level (no [Q, N, L] intermediate).
    agree = jnp.ones((q.shape[0], it.shape[0]), bool)
    t = jnp.zeros((q.shape[0], it.shape[0]), jnp.int32)
    for level in reversed(range(q.shape[1])):
        agree = agree & (q[:, level, None] == it[None, :, level])
        t = t + agree.astype(jnp.int32)
    return t


def level_weights(num_levels: int, alpha: float = 1.0, *, dtype: Any = jnp.float32) -> Array:
    """The ``"pop"`` weights :math:`w_t = (t / (L - 1))^\\alpha`, ``t = 0..L`` (``[L + 1]``,
    ``dtype``, float32 by default).

    ``L = 1`` (flat labels) uses ``[0, 1]``.
    """
    validation.check_int("num_levels", num_levels, caller="level_weights")
    validation.check_number("alpha", alpha, "positive", caller="level_weights")
    t = jnp.arange(num_levels + 1, dtype=dtype)
    return (t / max(num_levels - 1, 1)) ** alpha


def relevance_from_levels(
    levels: ArrayLike,
    num_levels: int,
    *,
    rule: str = "pop",
    alpha: float = 1.0,
    where: ArrayLike | None = None,
    dtype: Any = jnp.float32,
) -> Array:
    """Graded relevance ``[..., N]`` (``dtype``, float32 by default) from shared-level counts
    ``t`` ``[..., N]`` (integers 0..L, :func:`shared_levels`), by ``rule`` (module docstring):

    * ``"pop"`` (default): :math:`w_t / n_t`, the weight :math:`w_t = (t / (L - 1))^\\alpha`
      (:func:`level_weights`) shared among the :math:`n_t` valid items of the list at level ``t``;
    * ``"levels"``: :math:`(t / L)^\\alpha`;
    * ``"count"``: ``t``.

    Items with ``t = 0`` get 0. ``where`` (``[..., N]`` bool, default all True) restricts the
    items that share a level's weight under ``"pop"``; invalid items get relevance 0.
    ``alpha`` > 0 (default 1.0, SupRank's). Concrete ``levels`` outside ``0..L`` are an error.
    """
    caller = "relevance_from_levels"
    _check_rule(rule, alpha, caller)
    validation.check_int("num_levels", num_levels, caller=caller)
    t = _check_levels(levels, num_levels, caller)
    valid = jnp.ones(t.shape, bool) if where is None else _check_where(where, t.shape, caller)
    return _levels_relevance(t, num_levels, rule, alpha, valid, dtype)


def _check_rule(rule: str, alpha: float, caller: str) -> None:
    if rule not in RELEVANCE_RULES:
        raise ValueError(f"{caller}: rule must be one of {RELEVANCE_RULES}, got {rule!r}")
    # alpha = 0 would give unrelated items (t = 0) the weight 0^0 = 1.
    validation.check_number("alpha", alpha, "positive", caller=caller)


def _levels_relevance(
    t: Array, num_levels: int, rule: str, alpha: float, valid: Array, dtype: Any = jnp.float32
) -> Array:
    """:func:`relevance_from_levels` of checked arguments."""
    zero = jnp.zeros((), dtype)
    if rule == "levels":
        rel = (t.astype(dtype) / num_levels) ** alpha
        return jnp.where(valid & (t > 0), rel, zero)
    if rule == "count":
        return jnp.where(valid, t.astype(dtype), zero)
    return _pop_relevance(t, valid, num_levels, alpha, drop_one_top=False, dtype=dtype)


def _pop_relevance(
    t: Array, valid: Array, num_levels: int, alpha: float, *, drop_one_top: bool, dtype: Any = jnp.float32
) -> Array:
    """``"pop"``: each level's weight shared among the valid items at that level. With
    ``drop_one_top`` one item of the finest level (a query counted in its own list) is left
    out of that level's count; it gets the others' share (0 when it is alone there)."""
    counts = list_level_counts(t, valid, num_levels)
    if drop_one_top:
        counts = counts.at[..., num_levels].add(-1)
    rel = pop_relevance_from_counts(t, counts, num_levels, alpha, dtype=dtype)
    return jnp.where(valid, rel, jnp.zeros((), dtype))


def list_level_counts(levels: Array, valid: Array, num_levels: int) -> Array:
    """``[..., L + 1]`` int32: how many valid items of each list ``[..., N]`` share ``k`` levels
    with its query, ``k = 0..L`` (``levels``: :func:`shared_levels`; ``valid``: bool)."""
    return jnp.stack([jnp.sum((levels == k) & valid, axis=-1) for k in range(num_levels + 1)], axis=-1)


def relevance_at_levels(
    levels: ArrayLike, counts: ArrayLike, num_levels: int, *, rule: str = "pop", alpha: float = 1.0,
    dtype: Any = jnp.float32,
) -> Array:
    """The rule's relevance (module docstring) ``[..., M]`` of items sharing ``levels`` (0..L)
    with the query of a list whose valid items number ``counts`` ``[..., L + 1]`` at each
    level (:func:`list_level_counts`; read by ``"pop"`` only). With ``levels`` the list's
    own, this is :func:`relevance_from_levels`; with a few of them (a list's positives) or
    ``0..L`` it gives their relevance without an ``[..., N]`` array."""
    if rule == "pop":
        return pop_relevance_from_counts(levels, counts, num_levels, alpha, dtype=dtype)
    t = _check_levels(levels, num_levels, "relevance_at_levels")
    return _levels_relevance(t, num_levels, rule, alpha, jnp.ones(t.shape, bool), dtype)


def pop_relevance_from_counts(
    levels: ArrayLike, counts: ArrayLike, num_levels: int, alpha: float = 1.0, *, dtype: Any = jnp.float32
) -> Array:
    """``"pop"`` relevance ``w_t / n_t`` ``[..., N]`` (``dtype``, float32 by default) of items
    sharing ``levels`` ``t`` (0..L) with their query, given the query's count ``n_t`` of items
    at each level ``counts`` ``[..., L + 1]``: 0 where ``t = 0`` or ``n_t <= 0``. The counts
    may come from the list itself (:func:`relevance_from_levels`) or from another population:
    the official evaluation counts the query set, query included (:func:`level_counts`)."""
    caller = "pop_relevance_from_counts"
    validation.check_int("num_levels", num_levels, caller=caller)
    validation.check_number("alpha", alpha, "positive", caller=caller)
    t = _check_levels(levels, num_levels, caller)
    counts = jnp.asarray(counts)
    lead = counts.shape[:-1]
    fits = counts.ndim == t.ndim and counts.shape[-1] == num_levels + 1
    if not (fits and all(c in (1, n) for c, n in zip(lead, t.shape[:-1], strict=True))):
        raise ValueError(f"{caller}: counts must be [..., L + 1] = [..., {num_levels + 1}], its leading "
                         f"shape broadcasting to the lists' {t.shape[:-1]}; got shape {counts.shape}")
    weights, counts = level_weights(num_levels, alpha, dtype=dtype), counts.astype(dtype)
    # One select per level rather than gathers at [..., N] indices, which XLA's CPU backend
    # runs several times slower (H-AP computes this inside its kernel, for every list).
    share = jnp.zeros(t.shape, dtype)
    for k in range(1, num_levels + 1):
        n = counts[..., k : k + 1]
        share = jnp.where((t == k) & (n > 0), weights[k] / jnp.maximum(n, 1.0), share)
    return share


#: Mixed-radix keys of :func:`row_ids` stay below this bound (int64 without overflow).
_KEY_LIMIT = 2**62


def row_ids(rows: np.ndarray) -> tuple[np.ndarray, int]:
    """``(ids [N] int64, number of distinct rows)`` of an integer ``[N, C]`` array: each row's
    index among the distinct rows in lexicographic order, as ``np.unique(rows, axis=0,
    return_inverse=True)`` numbers them, without sorting rows (which numpy does element by
    element, ~4 s for 2M x 3 paths).

    The columns are read as digits of one mixed-radix int64 key (column ``c`` in base
    ``max - min + 1`` of its values) and the keys are numbered by ``np.unique``: one sort of
    ``N`` ints when the product of the columns' ranges stays below ``2**62``; otherwise the key
    built so far is renumbered densely before the next column, and a column whose own range is
    too large is renumbered first. ``C = 0`` or ``N = 0`` gives one id (0) per row, or none."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"row_ids: rows must be an integer [N, C] array, got {rows.dtype} {rows.shape}")
    key, base = np.zeros(len(rows), np.int64), 1
    for column in rows.T if len(rows) else ():
        low = int(column.min())
        span = int(column.max()) - low + 1
        if base * span >= _KEY_LIMIT:
            key, base = _dense(key)
        if base * span >= _KEY_LIMIT:
            digit, span = _dense(column)
        elif np.issubdtype(column.dtype, np.signedinteger):
            digit = column.astype(np.int64) - low
        else:
            digit = (column - column.dtype.type(low)).astype(np.int64)
        key, base = key * span + digit, base * span
    if base == 1:
        return key, int(len(rows) > 0)
    return _dense(key)


def _dense(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``(ids int64, count)``: ``values`` numbered ``0..count - 1`` in increasing order."""
    distinct, ids = np.unique(values, return_inverse=True)
    return ids.reshape(-1).astype(np.int64), len(distinct)


def level_counts(query_paths: np.ndarray, population_paths: np.ndarray) -> np.ndarray:
    """``[Q, L + 1]`` int64: how many rows of ``population_paths [M, L]`` share exactly ``t``
    levels with each query path (:func:`shared_levels`), ``t = 0..L``. On the host, without a
    ``[Q, M]`` matrix: the rows sharing at least ``t`` levels are those with the query's ``t``
    coarsest columns, counted per distinct prefix."""
    q, pop = np.asarray(query_paths), np.asarray(population_paths)
    _check_path_shapes(q, pop, ("query_paths", "population_paths"), "level_counts")
    num_levels = q.shape[1]
    at_least = np.zeros((len(q), num_levels + 2), np.int64)
    at_least[:, 0] = len(pop)
    both = np.concatenate([pop, q])
    prefix = np.zeros(len(both), np.int64)  # id of the t coarsest columns
    for t in range(1, num_levels + 1):
        prefix, num_keys = row_ids(np.stack([prefix, both[:, num_levels - t].astype(np.int64)], 1))
        per_key = np.bincount(prefix[: len(pop)], minlength=num_keys)
        at_least[:, t] = per_key[prefix[len(pop) :]]
    return at_least[:, :-1] - at_least[:, 1:]


def path_relevance(
    query_paths: ArrayLike,
    item_paths: ArrayLike,
    *,
    rule: str = "pop",
    alpha: float = 1.0,
    where: ArrayLike | None = None,
) -> Array:
    """Graded relevance ``[Q, N]`` float32 of items to queries from label paths.

    Args:
      query_paths: ``[Q, L]`` integer label paths (column 0 = finest level).
      item_paths: ``[N, L]`` integer label paths.
      rule: ``"pop"`` (SupRank's official rule, default), ``"levels"`` (``(t/L)^alpha``) or
        ``"count"`` (``t``); see the module docstring.
      alpha: exponent of the level weights (1.0 in SupRank).
      where: optional ``[Q, N]`` (or ``[N]``) boolean mask of the items in each query's
        list (e.g. without the query itself); under ``"pop"`` only these share a level's
        weight; masked items get 0.

    Returns:
      ``[Q, N]`` relevance, > 0 exactly for items sharing at least one level with the query.
    """
    caller = "path_relevance"
    _check_rule(rule, alpha, caller)
    t = _shared_levels(*_check_paths(query_paths, item_paths, caller))
    valid = jnp.ones(t.shape, bool)
    if where is not None:
        valid = jnp.broadcast_to(_check_where(where, (t.shape, t.shape[-1:]), caller), t.shape)
    return _levels_relevance(t, jnp.shape(query_paths)[1], rule, alpha, valid)


def _check_where(where: ArrayLike, shapes: Any, caller: str) -> Array:
    """``where`` as a boolean array of one of ``shapes`` (a shape or a tuple of shapes)."""
    w = jnp.asarray(where)
    shapes = shapes if isinstance(shapes[0], tuple) else (shapes,)
    if w.dtype != jnp.bool_:
        raise TypeError(f"{caller}: where must be a boolean mask, got dtype {w.dtype}")
    if w.shape not in shapes:
        raise ValueError(f"{caller}: where must have shape {' or '.join(map(str, shapes))}, got {w.shape}")
    return w


def hierarchical_relevance(
    query_paths: ArrayLike,
    item_paths: ArrayLike,
    *,
    include_self: bool = False,
    rule: str = "pop",
    alpha: float = 1.0,
) -> Array:
    """``relevance_fn`` for :func:`rankax.batch_loss` with ``[B, L]`` label paths.

    ``batch_loss`` calls ``relevance_fn(paths[queries], paths)``: the items are the whole
    batch, query included. Under ``"pop"`` an item's relevance depends on how many items of
    the list share its level, so the query itself must be counted exactly when it is in its
    own list: pass the same ``include_self`` as to ``batch_loss`` (e.g. with
    ``functools.partial(hierarchical_relevance, include_self=True)``). Without self, one
    item with ``t = L`` (the query) is removed from the count of the finest level.

    Example::

        loss = rankax.batch_loss(rankax.hap_loss, emb, paths, relevance_fn=hierarchical_relevance)
    """
    caller = "hierarchical_relevance"
    _check_rule(rule, alpha, caller)
    q, it = _check_paths(query_paths, item_paths, caller)
    num_levels = q.shape[1]
    t = _shared_levels(q, it)
    valid = jnp.ones(t.shape, bool)
    if rule == "pop" and not include_self:
        # Drop one identical path per query from the counts: the query itself. The remaining
        # identical paths share w_L among themselves, and the dropped one (the query, or an
        # identical copy of it: same label path, same relevance) gets the same value.
        return _pop_relevance(t, valid, num_levels, alpha, drop_one_top=True)
    return _levels_relevance(t, num_levels, rule, alpha, valid)
