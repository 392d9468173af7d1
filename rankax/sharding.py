"""Global-batch ranking on a device mesh: every query ranks the whole (global) batch.

With data parallelism each device holds ``B / d`` embeddings of a global batch of ``B``. Ranking
only the local shard would make every list ``d`` times shorter -- a different, worse loss (the
decomposability gap of AP losses shrinks with the list length). :func:`sharded_batch_loss`
instead

1. ``all_gather``\\ s the embeddings and labels of the batch over the mesh axis (differentiable:
   its transpose is a reduce-scatter of the item gradients back to their owners);
2. lets each device rank **its own** queries against the global batch, with the blocked exact
   engine of :mod:`rankax.batch` (``O(B/d * C * B)`` work and ``O(block * B + B * D)`` memory
   per device);
3. ``psum``\\ s the additive per-list statistics (:mod:`rankax._core.stats`) over the axis and forms the
   loss from the totals, so the loss is the mean over *all* queries of the global batch (or the
   pair-pooled value of ROADMAP's calibration) and its gradient equals the single-device gradient
   of :func:`rankax.batch_loss` on the full batch.

For the training step
---------------------
::

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    loss_of = rankax.sharding.sharded_batch_loss(
        rankax.supap_loss, mesh, axis_name="data", max_positives=K - 1)

    @jax.jit
    def train_step(state, images, labels):           # images/labels: NamedSharding(mesh, P("data"))
        def loss_fn(params):
            emb = state.apply_fn(params, images)    # [B, D], sharded over "data"
            return loss_of(emb, labels)             # scalar, replicated
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

``loss_of(embeddings, labels, memory=None)`` takes the *global* ``[B, D]`` embeddings and ``[B]``
(or ``[B, L]``) labels, sharded along their first axis over ``axis_name`` (``B`` divisible by the
axis size), and an optional :class:`rankax.xbm.XBM` memory (replicated; every device ranks its
queries against batch + memory). It is a ``jax.shard_map``; call it inside ``jax.jit``. Keyword
arguments are those of :func:`rankax.batch_loss` (``include_self``, ``max_positives``,
``block_size``, ``relevance_fn``, ``capacity_limit``, loss hyperparameters).

Under ``jit`` the labels are traced, so pass ``max_positives`` (``K - 1`` for P x K batches, ``K``
with ``include_self``): it is the first rung of the capacity ladder, and lists with more positives
climb it exactly (see :mod:`rankax.batch`).

Plain ``jax.jit`` with ``NamedSharding`` inputs and :func:`rankax.batch_loss` also gives the exact
value and gradient (XLA's partitioner decides how to distribute the query blocks; in practice it
gathers the batch); :func:`sharded_batch_loss` makes the distribution explicit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rankax import batch, debug
from rankax._core import nonfinite, positives, stats, validation

Array = jax.Array

__all__ = [
    "sharded_batch_loss",
]
AxisName = str | tuple[str, ...]


def _axis_size(mesh: Mesh, axis_name: AxisName, caller: str) -> int:
    names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    if len(set(names)) < len(names):
        raise ValueError(f"{caller}: axis_name {axis_name!r} repeats an axis: name each mesh axis once")
    size = 1
    for name in names:
        if name not in mesh.shape:
            raise ValueError(f"{caller}: axis_name {name!r} is not an axis of the mesh {dict(mesh.shape)}: "
                             f"pass one of {tuple(mesh.shape)}")
        size *= mesh.shape[name]
    return size


#: batch_loss's arguments that loss_of takes instead, or that the sharded loss does not take.
_NOT_FACTORY_OPTIONS = {
    "memory": "pass the cross-batch memory to the returned function: loss_of(embeddings, labels, memory)",
    "references": "the sharded loss ranks the global batch and an optional memory only: keep the "
    "references in an XBM (rankax.xbm) and pass it as loss_of(embeddings, labels, memory), or use "
    "rankax.batch_loss",
}


def sharded_batch_loss(
    loss_fn: batch.LossFn,
    mesh: Mesh,
    axis_name: AxisName = "data",
    *,
    include_self: bool = False,
    max_positives: int | None = None,
    block_size: int | str | None = "auto",
    relevance_fn: batch.RelevanceFn | None = None,
    max_tile_elements: int | None = None,
    capacity_limit: int | None = None,
    precision: batch.Precision = batch.DEFAULT_PRECISION,
    **hparams: Any,
) -> Callable[..., Array]:
    """``rankax.batch_loss`` for a batch sharded over ``axis_name`` of ``mesh`` (module doc).

    Args:
      loss_fn: list-level loss, e.g. :func:`rankax.losses.supap_loss`.
      mesh: the device mesh.
      axis_name: mesh axis (or tuple of axes) the batch is sharded over.
      include_self, max_positives, block_size, relevance_fn, max_tile_elements,
        capacity_limit, precision, **hparams: as in :func:`rankax.batch_loss`.

    Returns:
      ``loss_of(embeddings [B, D], labels [B] or [B, L], memory=None) -> scalar``: the mean of
      the list loss over all queries of the global batch that have a positive, replicated on
      every device; its gradient equals that of :func:`rankax.batch_loss` on the whole batch.
      Inputs may come with any sharding (numpy labels too): ``shard_map`` reshards them on a
      mesh of ``Auto`` axes, and on one of ``Explicit`` axes ``loss_of`` does. On an ``Explicit``
      mesh (``jax.make_mesh``'s default) differentiate it inside ``jax.jit`` or ``with
      jax.set_mesh(mesh)``: eager ``jax.grad`` builds the scalar's cotangent on one device, and
      JAX refuses to place it on the mesh ("Please enter your `jit` into a mesh context").
    """
    validation.check_loss_fn(loss_fn, "sharded_batch_loss", "sharded_batch_loss(loss_fn, mesh, ...)")
    caller = f"sharded_batch_loss({getattr(loss_fn, '__name__', 'loss_fn')})"
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{caller}: mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((n,), ('data',))), "
                        f"got {type(mesh).__name__}")
    if not (isinstance(axis_name, str) or (isinstance(axis_name, tuple) and all(
            isinstance(a, str) for a in axis_name))):
        raise TypeError(f"{caller}: axis_name must be a mesh axis name or a tuple of them, got {axis_name!r}")
    for name in ("memory", "references", "reference_labels", "reference_mask"):
        if name in hparams:
            reason = _NOT_FACTORY_OPTIONS.get(name, _NOT_FACTORY_OPTIONS["references"])
            raise TypeError(f"{caller}: {name}= is not an option of sharded_batch_loss: {reason}")
    hparams = batch._check_loss_options(loss_fn, hparams, None, None, None, caller,
                                        options_of=sharded_batch_loss)  # names, ranges: now
    # As batch_loss reads them: integer JAX arrays (ks, tie_aware) static, sequences tuples.
    hparams = {k: batch._static_form(v) for k, v in hparams.items()}
    kwargs = dict(
        include_self=include_self,
        max_positives=max_positives,
        block_size=block_size,
        relevance_fn=relevance_fn,
        max_tile_elements=max_tile_elements,
        capacity_limit=capacity_limit,
        precision=precision,
        **hparams,
    )
    local = functools.partial(
        _local_loss, loss_fn, axis_name=axis_name, caller=caller, hparams=hparams, kwargs=kwargs
    )
    batch_spec = PartitionSpec(axis_name)
    # Jitted: an eager loss_of compiles once per shape (an eager shard_map traced and compiled
    # its body at every call); inside the caller's jit they are inlined.
    without_memory = jax.jit(jax.shard_map(
        lambda emb, lab: local(emb, lab, None),
        mesh=mesh,
        in_specs=(batch_spec, batch_spec),
        out_specs=PartitionSpec(),
    ))
    with_memory = jax.jit(jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(batch_spec, batch_spec, PartitionSpec()),  # the memory is replicated
        out_specs=PartitionSpec(),
    ))
    num_shards = _axis_size(mesh, axis_name, caller)
    names = (axis_name,) if isinstance(axis_name, str) else axis_name
    types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    explicit = any(types[a] == jax.sharding.AxisType.Explicit for a in names)

    def loss_of(embeddings: Array, labels: Array, memory: Any = None) -> Array:
        # Shapes and dtypes first; lists become arrays (shard_map takes no Python lists).
        embeddings, labels = batch.check_batch(embeddings, labels, values=False, caller=caller)
        if memory is not None:
            batch._check_memory(memory, None, caller)
        _check_global(embeddings, memory, num_shards, axis_name, caller)  # the batch divides the mesh
        if explicit:  # shard_map wants its in_specs as the arrays' types; others reshard alone
            embeddings, labels = (_reshard(x, mesh, batch_spec) for x in (embeddings, labels))
            memory = None if memory is None else jax.tree.map(
                lambda x: _reshard(x, mesh, PartitionSpec()), memory)
        _check_capacity(loss_fn, labels, memory, num_shards, kwargs, caller)
        with debug.checks(False):
            if memory is None:
                return without_memory(embeddings, labels)
            return with_memory(embeddings, labels, memory)

    return loss_of


def _reshard(x: Any, mesh: Mesh, spec: PartitionSpec) -> Array:
    """``x`` (any array, numpy included) with the sharding ``spec`` over ``mesh``."""
    return jax.sharding.reshard(jnp.asarray(x), NamedSharding(mesh, spec))


def _local_loss(
    loss_fn: batch.LossFn,
    emb: Array,
    lab: Array,
    memory: Any,
    *,
    axis_name: AxisName,
    caller: str,
    hparams: dict[str, Any],
    kwargs: dict[str, Any],
) -> Array:
    """Inside ``shard_map``: this device's queries ``emb``, ``lab`` ranked against the global
    batch (all-gathered, then the memory); the statistics summed over devices give the loss of
    the whole batch, replicated."""
    emb, lab = batch.check_batch(emb, lab, values=False, caller=caller)  # values: _check_global
    # A NaN/inf anywhere: the loss and every embedding's gradient NaN (batch_loss's guard).
    bad = _any_nonfinite(emb, memory, axis_name)
    emb = nonfinite.poison_cotangent(emb, jnp.broadcast_to(bad, emb.shape[:1]))
    global_emb = jax.lax.all_gather(emb, axis_name, tiled=True)
    global_lab = jax.lax.all_gather(lab, axis_name, tiled=True)
    items, item_labels, item_mask = batch.with_references(
        global_emb, global_lab, memory=memory, caller=caller
    )
    first = jax.lax.axis_index(axis_name) * emb.shape[0]
    # The lists' kernels run unguarded: non-finite inputs are guarded once, below.
    totals = batch.batch_statistics(
        loss_fn, emb, lab, items, item_labels,
        query_index=first + jnp.arange(emb.shape[0]), item_mask=item_mask, caller=caller, **kwargs,
    )
    totals = jax.lax.psum(totals, axis_name)
    checked = stats.hparams_of(loss_fn, hparams, caller=caller, warn=False)
    loss = stats.from_statistics(loss_fn, totals, checked)
    return nonfinite.propagate_nonfinite(loss, bad)


def _any_nonfinite(emb: Array, memory: Any, axis_name: AxisName) -> Array:
    """Whether a NaN/inf sits anywhere in the global batch (each device's own rows, summed: the
    same flag on every device) or in the (replicated) memory."""
    local_bad = jnp.any(nonfinite.nonfinite_lists(emb, None)).astype(jnp.int32)
    bad = jax.lax.psum(local_bad, axis_name) > 0
    if memory is not None:
        bad = bad | jnp.any(nonfinite.nonfinite_lists(memory.embeddings, memory.valid[:, None]))
    return bad


def _check_capacity(
    loss_fn: batch.LossFn, labels: Array, memory: Any, num_shards: int, kwargs: dict[str, Any], caller: str
) -> None:
    """A list beyond the largest rung of each device's ladder: with concrete labels (an eager
    call) :class:`rankax.batch.CapacityError` now, as :func:`rankax.batch_loss` raises; with
    traced ones the engine returns NaN, and while :mod:`rankax.debug` checks are on a check
    here, outside ``shard_map`` (whose body runs without checks), names the count."""
    b = np.shape(labels)[0]
    n = b + (0 if memory is None else jnp.shape(memory.labels)[0])
    limit = batch.ladder_limit(b // num_shards, n, kwargs["max_tile_elements"], kwargs["capacity_limit"])
    traced = lambda x: isinstance(x, jax.core.Tracer)  # noqa: E731
    concrete = not (traced(labels) or (memory is not None and traced(memory.labels)))
    if limit >= n or not (concrete or validation.value_checks_enabled()):
        return
    labels = validation.replicated(jnp.asarray(labels))
    items, mask = labels, jnp.ones((n,), bool)
    if memory is not None:
        items = jnp.concatenate([labels, memory.labels.astype(labels.dtype)])
        mask = jnp.concatenate([jnp.ones((b,), bool), memory.valid])
    if concrete:
        exact = batch.exact_capacity(
            labels, items, query_index=jnp.arange(b), item_mask=mask,
            include_self=kwargs["include_self"], relevance_fn=kwargs["relevance_fn"], caller=caller,
        )
        if exact is not None:
            batch.raise_on_overflow(exact, limit, caller)
    else:
        relevance = batch.relevance_of(loss_fn, labels, kwargs["include_self"], kwargs["relevance_fn"])
        rel = batch._call_relevance(relevance, labels, items, caller)
        rows = jnp.arange(b)
        where = batch._list_masks(rows, jnp.ones((b,), bool), rows, mask, kwargs["include_self"])
        most = positives.most_positives((rel > 0) & where)
        checkify.check(most <= limit, validation.prefix(caller) + batch.overflow_message("{most}", limit),
                       most=most)


def _check_global(embeddings: Array, memory: Any, num_shards: int, axis_name: AxisName, caller: str) -> None:
    """The global batch's size against the mesh, and in checked mode its values (outside
    ``shard_map``: checkify's errors cannot cross the scan of the per-device query blocks)."""
    b = jnp.shape(embeddings)[0]
    if b % num_shards:
        raise ValueError(
            f"{caller}: the global batch ({b}) must be divisible by the size of axis {axis_name!r} "
            f"({num_shards}): choose a batch size that is a multiple of {num_shards} (padding rows would "
            "change the loss: they rank as negatives in every list)"
        )
    validation.check_finite(embeddings, "embeddings", caller=caller)
    if memory is not None:
        valid = memory.valid[:, None]
        validation.check_finite(memory.embeddings, "memory embeddings", where=valid, caller=caller)
