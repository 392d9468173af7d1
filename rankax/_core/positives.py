"""Each list's positives gathered into a static number of slots, exactly, and per-list reductions.

AP-type formulas only compare the ``C`` positives of a list with its ``N`` items, so kernels
run on ``[..., C, N]`` terms (``rankax.ranking.gather_positives``). ``C`` must be static; it
comes from a ladder of capacities and a ``lax.switch`` on the largest positive count, so a
positive is never dropped and a small capacity only ever costs time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rankax import ranking
from rankax._core import validation

Array = jax.Array

# A kernel maps (scores, labels, where, positives) of lists [..., N] to per-list values [...].
Kernel = Callable[[Array, Array, Array, ranking.Positives], Array]

#: Lists up to this length use ``N`` positive slots directly (``O(N^2)`` per list is then
#: cheaper than compiling a capacity ladder).
DENSE_LIST_LENGTH = 64
#: Largest ``[lists, C, N]`` tile a rung of the ladder computes at once: more lists are run in
#: sequence (``lax.map``), so that the memory XLA reserves for the largest rung of a
#: ``lax.switch`` -- taken or not -- stays bounded (``N`` slots cost ``N^2`` per list).
LADDER_TILE_ELEMENTS = 2**26
#: First rungs of the capacity ladder when ``max_positives`` is not given: 3 and 4 positives,
#: a P x K batch with the papers' K = 4 without and with the query in its own list; then x4.
DEFAULT_CAPACITY = 4


class Slots(NamedTuple):
    """Where each list's positives are, when the caller already knows: ``index [..., C]`` (int)
    and ``mask [..., C]`` (True for a filled slot). Every positive must have a slot.

    ``scores [..., C]``, optional, are the positives' scores when the caller computed them
    itself (``rankax.batch_loss``: dot products of the embeddings, so the gradient reaches the
    embeddings without a scatter into the ``[..., N]`` score cotangent); they must equal the
    lists' scores at ``index`` up to rounding. Default: gathered from the lists."""

    index: Array
    mask: Array
    scores: Array | None = None


def class_key(labels: Any) -> Any:
    """The key whose equality makes two items relevant under the default relevance: the class
    id of ``[B]`` labels, the coarsest level (column ``L - 1``) of ``[B, L]`` label paths (every
    relevance rule is > 0 exactly when that level is shared). numpy or jax arrays."""
    return labels if labels.ndim == 1 else labels[:, -1]


class KeyRuns(NamedTuple):
    """Where each query's positives sit in one sort of the items (:func:`key_runs`): the items in
    ``order [N]`` (valid ones by key, in list order within a key); query ``i``'s positives are
    ``count[i]`` of the entries from ``start[i]`` on, skipping entry ``self_at[i]`` where
    ``skip[i]`` (the query itself)."""

    order: Array
    start: Array
    count: Array
    skip: Array
    self_at: Array


def key_runs(
    query_keys: Array,
    item_keys: Array,
    item_mask: Array,
    query_index: Array | None,
    include_self: bool,
) -> KeyRuns:
    """One sort for the positives of lists whose positives are the valid items with the query's
    key: for ``[Q]`` query keys ranking ``[N]`` items (class ids; for label paths the coarsest
    level), the positives of query ``i`` are the items ``j`` with ``item_mask[j]`` and
    ``item_keys[j] == query_keys[i]``, without the query itself (item ``query_index[i]``)
    unless ``include_self``. A stable sort of the items puts each key's items in one run, in
    list order: ``O(N log N + Q log N)``, the same for every capacity (:func:`slots_of`)."""
    n = item_keys.shape[0]
    big = jnp.asarray(jnp.iinfo(item_keys.dtype).max, item_keys.dtype)  # a Python int overflowed int32
    keys = jnp.where(item_mask, item_keys, big)
    # Valid items by key, then the invalid ones (two stable sorts: a valid key may equal big).
    by_key = jnp.argsort(keys, stable=True)
    order = by_key[jnp.argsort(~item_mask[by_key], stable=True)]
    ordered = keys[order]
    n_valid = jnp.sum(item_mask)
    start = jnp.searchsorted(ordered, query_keys, side="left")
    end = jnp.minimum(jnp.searchsorted(ordered, query_keys, side="right"), n_valid)
    count = jnp.maximum(end - start, 0)
    if query_index is None or include_self:
        skip = jnp.zeros_like(start, dtype=bool)
        self_at = jnp.full_like(start, n)
    else:
        self_at = jnp.zeros((n,), start.dtype).at[order].set(jnp.arange(n, dtype=start.dtype))[query_index]
        skip = item_mask[query_index] & (item_keys[query_index] == query_keys)
        count = count - skip
    return KeyRuns(order.astype(jnp.int32), start, count, skip, self_at)


def slots_of(runs: KeyRuns, capacity: int, rows: Array | None = None) -> Slots:
    """``[Q, capacity]`` (or ``[len(rows), capacity]``) slots of the queries' positives from
    :func:`key_runs`, in list order; a list with more than ``capacity`` positives has only its
    first ``capacity`` in the slots. ``O(Q * capacity)``."""
    start, count, skip, self_at = runs.start, runs.count, runs.skip, runs.self_at
    if rows is not None:
        start, count, skip, self_at = start[rows], count[rows], skip[rows], self_at[rows]
    n = runs.order.shape[0]
    slot = jnp.arange(capacity, dtype=start.dtype)
    pos = start[:, None] + slot[None, :]
    pos = pos + (skip[:, None] & (pos >= self_at[:, None]))
    return Slots(runs.order[jnp.clip(pos, 0, n - 1)], slot[None, :] < count[:, None])


def has_positive(labels: Array, where: Array) -> Array:
    """``[...]`` True for lists with at least one valid item of relevance > 0."""
    return jnp.any((labels > 0) & where, axis=-1)


def num_positives(labels: Array, where: Array) -> Array:
    """``[...]`` float number of valid items with relevance > 0."""
    one = jnp.ones((), labels.dtype)  # not a Python 1.0, which would sum in float64 under x64
    return jnp.sum(jnp.where((labels > 0) & where, one, 0), axis=-1)  # float sum: vectorises


@jax.custom_batching.custom_vmap
def most_positives(is_positive: Array) -> Array:
    """Largest number of positives of any list of ``is_positive [..., N]``, a scalar.

    Under ``jax.vmap`` the maximum is taken over the whole batch of lists and stays
    *unbatched*, so that a capacity chosen from it (``lax.switch``) remains one branch taken
    for all lists instead of becoming a select that runs every branch.
    """
    return jnp.max(jnp.sum(is_positive, axis=-1), initial=0)


@most_positives.def_vmap
def _most_positives_vmap(axis_size, in_batched, is_positive):
    del axis_size, in_batched
    return most_positives(is_positive), False


#: Rungs of a capacity ladder with at most this many slots keep their step sums and slot
#: positions for the backward pass. A ``lax.switch`` returns the residuals of every branch (zeros
#: from those not taken), so each such rung writes ``O(C)`` values per list on every call; the
#: larger rungs (rare) recompute everything in the backward pass.
KEPT_CAPACITY = 64


def capacity_ladder(first: int, num_items: int, growth: int = 4) -> tuple[int, ...]:
    """The static positive capacities ``first, first*growth, ...`` up to ``num_items``."""
    first = max(1, min(int(first), num_items))
    ladder = [first]
    while ladder[-1] < num_items:
        ladder.append(min(ladder[-1] * growth, num_items))
    return tuple(ladder)


def default_ladder(num_items: int) -> tuple[int, ...]:
    """The capacities tried without a ``max_positives`` hint: ``3, 4, 16, 64, ..., N``."""
    return tuple(sorted({min(3, num_items), *capacity_ladder(DEFAULT_CAPACITY, num_items)}))


def apply_kernel(
    kernel: Kernel,
    scores: Array,
    labels: Array,
    where: Array,
    max_positives: int | None,
    *,
    exact: bool = False,
    slots: Slots | None = None,
) -> Array:
    """Runs ``kernel`` on the positives gathered to a static number of slots, exactly.

    With ``slots`` (the caller knows where every list's positives are) the kernel gets them
    directly.

    With ``exact=True`` the caller guarantees that no list has more than ``max_positives``
    positives (``rankax.batch_loss`` chose it from the true count): one capacity, no ladder --
    XLA sizes a ``lax.switch`` for its largest branch, so an unused ``N``-slot rung would cost
    ``O(N^2)`` memory per list.

    Otherwise the slots come from a ladder of capacities ``C, 4C, 16C, ..., N`` (``C =
    max_positives``; without it :func:`default_ladder`, ``3, 4, 16, ...``; lists of at most
    :data:`DENSE_LIST_LENGTH` items use ``N`` slots directly): the call takes
    (``lax.switch``) the smallest capacity that holds the largest positive count of all its
    lists (:func:`most_positives`, also across ``jax.vmap``), so the cost is ``O(C * N)`` per
    list for P x K lists and positives are never dropped. Each rung runs under
    ``jax.checkpoint``: a switch returns the residuals of every rung (zeros from those not
    taken), so the rungs up to :data:`KEPT_CAPACITY` keep only their ``O(C)`` step sums and
    slots per list (:data:`rankax.ranking.KEEP_SUMS_AND_SLOTS`) and the larger rungs keep nothing.
    A rung whose ``[lists, C, N]`` terms exceed :data:`LADDER_TILE_ELEMENTS` runs its lists in
    groups, one after the other (:func:`in_groups`), so the memory of a call stays bounded; the
    rungs above :data:`KEPT_CAPACITY` also see every list of an enclosing ``jax.vmap``
    (:func:`grouped_under_vmap`), so a loss vmapped over ``Q`` lists of ``N`` items no longer
    reserves the ``O(Q * N^2)`` of its ``N``-slot rung.
    """
    n = scores.shape[-1]

    def run(capacity: int, scores: Array, labels: Array, where: Array) -> Array:
        positives, _ = ranking.gather_positives(scores, labels, where, capacity)
        return kernel(scores, labels, where, positives)

    def run_in_groups(capacity: int, scores: Array, labels: Array, where: Array) -> Array:
        size = max(1, LADDER_TILE_ELEMENTS // (capacity * n))
        return in_groups(functools.partial(run, capacity), size, scores, labels, where)

    def rung(capacity: int) -> Callable[[Array, Array, Array], Array]:
        grouped = functools.partial(run_in_groups, capacity)
        return grouped if capacity <= KEPT_CAPACITY else grouped_under_vmap(grouped)

    if slots is not None:  # the caller found every positive: no scan, no ladder
        found = ranking.positives_at(scores, labels, slots.index, slots.mask, slot_scores=slots.scores)
        return kernel(scores, labels, where, found)
    if exact and max_positives is not None:
        return run(min(max_positives, n), scores, labels, where)
    if max_positives is None and n <= DENSE_LIST_LENGTH:
        return run_in_groups(n, scores, labels, where)
    capacities = default_ladder(n) if max_positives is None else capacity_ladder(max_positives, n)
    if len(capacities) == 1:
        return rung(capacities[0])(scores, labels, where)
    most = most_positives(jax.lax.stop_gradient((labels > 0) & where))
    level = jnp.minimum(jnp.searchsorted(jnp.asarray(capacities), most), len(capacities) - 1)
    branches = [
        jax.checkpoint(rung(c), prevent_cse=False, policy=ranking.KEEP_SUMS_AND_SLOTS)
        if c <= KEPT_CAPACITY else rung(c)
        for c in capacities
    ]
    return jax.lax.switch(level, branches, scores, labels, where)


ListsFn = Callable[[Array, Array, Array], Array]


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _stacked_lists(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, whose arguments are lists ``[..., N]`` (or per-list values), with a ``jax.vmap``
    rule that calls it once on the mapped lists stacked into a leading axis (an unmapped
    argument is broadcast)."""
    stacked = jax.custom_batching.custom_vmap(fn)

    @stacked.def_vmap
    def _rule(axis_size: int, in_batched: Any, *args: Any) -> tuple[Any, Any]:
        out = fn(*[x if mapped else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
                   for x, mapped in zip(args, in_batched, strict=True)])
        return out, jax.tree.map(lambda _: True, out)

    return stacked


def _vjp_at(fn: Callable[..., Any], positions: tuple[int, ...]) -> Callable[..., tuple[Any, ...]]:
    """``(args, cotangent) ->`` the cotangents of ``fn``'s arguments at ``positions`` (None at
    the others), by ``jax.vjp``."""

    def vjp(args: tuple[Any, ...], cotangent: Any) -> tuple[Any, ...]:
        def at(*chosen: Any) -> Any:
            full = list(args)
            for i, x in zip(positions, chosen, strict=True):
                full[i] = x
            return fn(*full)

        grads = jax.vjp(at, *(args[i] for i in positions))[1](cotangent)
        out: list[Any] = [None] * len(args)
        for i, g in zip(positions, grads, strict=True):
            out[i] = g
        return tuple(out)

    return vjp


def _with_vjp(primal: Callable[..., Any], vjp: Callable[..., tuple[Any, ...]]) -> Callable[..., Any]:
    """``primal`` with the reverse-mode derivative ``vjp(args, cotangent)`` (its forward pass keeps
    the arguments only)."""
    call = jax.custom_vjp(lambda *args: primal(*args))
    call.defvjp(lambda *args: (primal(*args), args), vjp)
    return call


def _closes_over_tracers(fn: Callable[..., Any], *args: Any) -> bool:
    """Whether ``fn`` (traced on ``args``) closes over a traced value: a hyperparameter that is
    vmapped, differentiated or a ``jit`` argument."""
    return any(isinstance(c, jax.core.Tracer) for c in jax.make_jaxpr(fn)(*args).consts)


def grouped_under_vmap(fn: ListsFn) -> ListsFn:
    """``fn(scores, labels, where)`` on lists ``[..., N]`` -> ``[...]``, which bounds its own
    memory by grouping its lists (:func:`in_groups`), made to see every list of an enclosing
    ``jax.vmap``: without this, a vmapped call sees one list, never groups, and the batch of
    ``Q`` lists costs ``Q`` times one list's memory (``O(Q * N^2)`` for an ``N``-slot rung).

    The value and its gradient each carry a vmap rule that calls ``fn`` (or its VJP) on the
    stacked lists; the gradient recomputes ``fn``'s forward pass, as ``jax.checkpoint`` without
    a policy would, and reaches the scores and float labels (graded relevance). Second
    reverse-mode derivatives work (not grouped). One level of ``jax.vmap`` is stacked: an outer
    ``vmap`` of a ``vmap`` batches as usual.

    When ``fn`` closes over a traced value (a hyperparameter that is vmapped, differentiated or
    passed into ``jit``), it runs as ``jax.checkpoint(fn)`` instead, batched as usual:
    ``custom_vmap`` cannot take a tracer of its own ``vmap``, and a ``custom_vjp`` would give
    a closed-over value a zero gradient.
    """
    checkpointed = jax.checkpoint(fn, prevent_cse=False)

    def call(scores: Array, labels: Array, where: Array) -> Array:
        if _closes_over_tracers(fn, scores, labels, where):
            return checkpointed(scores, labels, where)
        args = (scores, labels, where)
        diff = (0, 1) if _is_float(labels) else (0,)

        def pullback(scores: Array, labels: Array, where: Array, cotangent: Array) -> tuple[Array, ...]:
            grads = _vjp_at(fn, diff)((scores, labels, where), cotangent)
            return tuple(grads[i] for i in diff)

        # Both the value and the pullback are custom_vjp functions: a derivative of either
        # (the forward pass of an outer grad included) must not reach the custom_vmap, which
        # JAX can only differentiate in forward mode.
        grouped_pullback = _with_vjp(_stacked_lists(pullback), _vjp_at(pullback, (*diff, 3)))
        value = _with_vjp(_stacked_lists(fn), _vjp_at(fn, diff))

        def value_vjp(res: tuple[Array, ...], cotangent: Array) -> tuple[Array | None, ...]:
            grads = dict(zip(diff, grouped_pullback(*res, cotangent), strict=True))
            return tuple(grads.get(i) for i in range(3))

        return _with_vjp(value, value_vjp)(*args)

    return call


def in_groups(fn: Callable[[Array, Array, Array], Array], size: int, scores: Array, labels: Array,
              where: Array) -> Array:
    """``fn(scores, labels, where)`` on lists ``[..., N]`` -> ``[...]``, computed ``size`` lists
    at a time with ``lax.map`` when there are more (padded with empty lists, dropped after)."""
    lead, n = scores.shape[:-1], scores.shape[-1]
    count = math.prod(lead)
    if count <= size:
        return fn(scores, labels, where)
    pad = -count % size

    def grouped(x: Array) -> Array:
        return jnp.pad(x.reshape(count, n), ((0, pad), (0, 0))).reshape(-1, size, n)

    # Each group under jax.checkpoint: the backward pass recomputes one group at a time instead
    # of keeping every group's [size, C, N] residuals.
    group = jax.checkpoint(lambda a: fn(*a), prevent_cse=False)
    out = jax.lax.map(group, (grouped(scores), grouped(labels), grouped(where)))
    return out.reshape(-1)[:count].reshape(lead)


# ----------------------------------------------------------------------------- reductions


def safe_divide(num: Array, den: Array) -> Array:
    """``num / den`` with 0 where ``den == 0`` and a gradient that stays finite there."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def masked_mean(values: Array, mask: Array, axis: int = -1) -> Array:
    """Mean of ``values`` over ``mask`` along ``axis`` (0 where the mask is empty)."""
    total = jnp.sum(jnp.where(mask, values, 0.0), axis=axis)
    return safe_divide(total, jnp.sum(mask, axis=axis).astype(total.dtype))


def reduce_lists(values: Array, valid: Array, reduce_fn: validation.ReduceFn, *, caller: str = "") -> Array:
    """Reduces per-list values over the valid lists.

    ``reduce_fn=jnp.mean`` divides by the number of valid lists (0 when there is none);
    ``None`` returns the per-list values with 0 for invalid lists; any other callable is
    called as ``reduce_fn(values, where=valid)`` (``jnp.sum`` works).
    """
    validation.check_reduce_fn(reduce_fn, caller=caller)
    values = jnp.where(valid, values, 0.0)
    if reduce_fn is None:
        return values
    if reduce_fn is jnp.mean:
        return jnp.sum(values) / jnp.maximum(jnp.sum(valid), 1)
    try:
        return reduce_fn(values, where=valid)
    except (TypeError, ValueError) as err:
        # A function without where= (TypeError), or a reduction without an identity such as
        # jnp.max, which takes where= only with initial= (ValueError).
        if "where" not in str(err):
            raise
        raise type(err)(
            f"{validation.prefix(caller)}reduce_fn is called as reduce_fn(values, where=has_positive) "
            f"(as jnp.mean and jnp.sum take it); {getattr(reduce_fn, '__name__', reduce_fn)!r} failed "
            f"with where= ({err}): pass jnp.mean, jnp.sum, None, or wrap it, e.g. "
            "lambda v, where: jnp.max(v, where=where, initial=0.0)"
        ) from None


def pooled_or_per_list(
    statistics: dict[str, Array],
    per_list: Callable[[dict[str, Array]], Array],
    valid: Array,
    reduce_fn: validation.ReduceFn,
    *,
    caller: str = "",
) -> Array:
    """Reduction of a pair-pooled loss called on lists directly.

    ``reduce_fn=jnp.mean`` pools the statistics over all lists (the value ``batch_loss``
    gives); ``None`` returns the loss of each list on its own pairs; another callable is
    applied to those per-list values over ``valid`` lists.
    """
    if reduce_fn is jnp.mean:
        totals = jax.tree.map(lambda v: jnp.sum(v), statistics)
        return per_list(totals)
    return reduce_lists(per_list(statistics), valid, reduce_fn, caller=caller)
