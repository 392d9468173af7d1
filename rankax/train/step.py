"""The pure train and eval steps, and the jitted, sharded step the loop calls.

:func:`train_step` is a module-level pure function ``(state, images, labels, halted) ->
(state, metrics)`` given its static parts (the augmentation and the
:class:`~rankax.train.losses.Objective`); :func:`make_train_step` binds them from the config
and compiles it data parallel over a mesh (:class:`TrainStep`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import checkify
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import rankax
from rankax import xbm
from rankax.data import loader
from rankax.train import distributed, guards, losses
from rankax.train.state import TrainState

Array = jax.Array
AugmentFn = Callable[[Array, Array], Array]


def forward(
    state: TrainState, images: Array, labels: Array, *, augment_fn: AugmentFn, objective: losses.Objective
) -> tuple[Array, dict, Array, Any, Any]:
    """``(loss, model updates, float32 embeddings, grads, loss-term grads)`` of the step
    ``state.step`` on this batch, augmented with the per-step key ``fold_in(state.rng,
    state.step)``. ``grads`` are those of ``state.params``, the last those of
    ``state.loss_params`` (``{}`` without loss-term parameters)."""
    images = augment_fn(images, jax.random.fold_in(state.rng, state.step))

    def loss_fn(trainable):
        params, loss_params = trainable
        variables = state.variables(params)
        if state.batch_stats:
            emb, updates = state.apply_fn(variables, images, train=True, mutable=["batch_stats"])
        else:
            emb, updates = state.apply_fn(variables, images, train=True), {}
        emb = emb.astype(jnp.float32)
        return objective(emb, labels, state.step, state.memory, loss_params), (updates, emb)

    trainable = (state.params, state.loss_params)
    (loss, (updates, emb)), (grads, loss_grads) = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    return loss, updates, emb, grads, loss_grads


def _all_finite(tree: Any) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _apply_if(state: TrainState, applied: Array, advance: Array, **new: Any) -> TrainState:
    """``state`` with the fields ``new`` where ``applied`` (else the old ones, no NaN written)
    and the step counter advanced by ``advance``."""
    keep = lambda fresh, old: jax.tree.map(lambda n, o: jnp.where(applied, n, o), fresh, old)
    fields = {name: keep(value, getattr(state, name)) for name, value in new.items()}
    return state.replace(step=state.step + advance.astype(state.step.dtype), **fields)


def _loss_params_update(state: TrainState, loss_grads: Any) -> tuple[Any, Any]:
    """The loss terms' parameters and optimizer state after their own optimizer's update."""
    if state.loss_tx is None:
        return state.loss_params, state.loss_opt_state
    updates, opt_state = state.loss_tx.update(loss_grads, state.loss_opt_state, state.loss_params)
    return optax.apply_updates(state.loss_params, updates), opt_state


def train_step(
    state: TrainState,
    images: Array,
    labels: Array,
    halted: Array,
    *,
    augment_fn: AugmentFn,
    objective: losses.Objective,
    skip_mode: bool,
) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step, applied only when everything it produced is finite.

    Finite means the loss, the gradient's global norm, every embedding, the new batch
    statistics and the new parameters. Otherwise params, optimizer state, batch statistics and
    the cross-batch memory stay; ``state.step`` advances past the batch when ``skip_mode``
    (``config.on_nonfinite="skip"``) and stays otherwise. ``halted`` (the previous step's
    ``metrics["halted"]``) makes the step a no-op. Metrics are described in :class:`TrainStep`.
    """
    use_memory = objective.memory_start is not None
    loss, updates, emb, grads, loss_grads = forward(
        state, images, labels, augment_fn=augment_fn, objective=objective
    )
    grad_norm = optax.tree.norm((grads, loss_grads))
    tx_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, tx_updates)
    loss_params, loss_opt_state = _loss_params_update(state, loss_grads)
    batch_stats = updates.get("batch_stats", state.batch_stats)
    memory = xbm.update(state.memory, emb, labels) if use_memory else state.memory
    emb_finite = jnp.all(jnp.isfinite(emb))
    finite = (
        jnp.isfinite(loss)
        & jnp.isfinite(grad_norm)
        & emb_finite
        & _all_finite(batch_stats)
        & _all_finite(params)
        & _all_finite(loss_params)
    )
    applied = finite & ~halted
    advance = ~halted & (finite | skip_mode)
    new_state = _apply_if(
        state,
        applied,
        advance,
        params=params,
        opt_state=opt_state,
        batch_stats=batch_stats,
        memory=memory,
        loss_params=loss_params,
        loss_opt_state=loss_opt_state,
    )
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "embeddings_finite": emb_finite,
        "finite": finite,
        "applied": applied,
        "halted": halted if skip_mode else halted | ~finite,
    }
    if use_memory:
        metrics["memory_active"] = state.step >= objective.memory_start
    return new_state, metrics


def diagnose_step(
    state: TrainState,
    images: Array,
    labels: Array,
    *,
    augment_fn: AugmentFn,
    objective: losses.Objective,
    terms: dict[str, losses.Objective],
) -> dict[str, Any]:
    """Every term of the step of ``state.step`` on this batch, computed separately: the loss,
    each weighted term of the loss alone (``terms``), with XBM the batch-only loss, the gradient
    norm, the finiteness of each embedding, of each gradient leaf and of each leaf the step
    would write (parameters after the optimizer's update, batch statistics, loss parameters)."""
    run = functools.partial(forward, state, images, labels, augment_fn=augment_fn)
    loss, updates, emb, grads, loss_grads = run(objective=objective)
    out: dict[str, Any] = {"terms": {"loss": loss}}
    for term, term_objective in terms.items():
        out["terms"][term] = run(objective=term_objective)[0]
    if objective.memory_start is not None:
        out["terms"]["loss (batch only, without the XBM memory)"] = objective.batch(emb, labels)
        out["memory_active"] = state.step >= objective.memory_start
    out["terms"]["grad_norm"] = optax.tree.norm((grads, loss_grads))
    out["embeddings_finite"] = jnp.all(jnp.isfinite(emb), axis=-1)
    name = lambda path: "/".join(str(getattr(k, "key", k)) for k in path)
    out["grads_finite"] = {
        name(path): jnp.all(jnp.isfinite(g)) for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
    }
    for path, g in jax.tree_util.tree_flatten_with_path(loss_grads)[0]:
        out["grads_finite"]["loss/" + name(path)] = jnp.all(jnp.isfinite(g))
    # What the step would have written: finite gradients can still overflow the parameters.
    tx_updates, _ = state.tx.update(grads, state.opt_state, state.params)
    written = {
        "params": optax.apply_updates(state.params, tx_updates),
        "batch_stats": updates.get("batch_stats", state.batch_stats),
        "loss": _loss_params_update(state, loss_grads)[0],
    }
    out["updated_finite"] = {
        name(path): jnp.all(jnp.isfinite(x)) for path, x in jax.tree_util.tree_flatten_with_path(written)[0]
    }
    return out


def eval_step(
    apply_fn: Callable[..., Array],
    variables: dict[str, Any],
    images: Array,
    preprocess: Callable[[Array], Array] | None = None,
) -> Array:
    """``[B, D]`` embeddings of ``images`` in test mode (no augmentation, running BN stats),
    after ``preprocess`` (e.g. the normalisation of uint8 pixels) when given."""
    if preprocess is not None:
        images = preprocess(images)
    return apply_fn(variables, images, train=False)


def embed_fn(
    state: TrainState,
    preprocess: Callable[[Array], Array] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """``images [n, ...] -> [n, D]`` float32 numpy embeddings of the model in ``state``
    (:func:`eval_step`, jitted); ``preprocess`` runs on the device first.

    ``devices``: this process's devices each batch is split over, data parallel (a sequence or
    an array such as ``mesh.devices``; default None: its first device;
    :func:`rankax.train.state.local_devices` gives those of ``config.num_devices``). A batch
    of ``n`` rows is padded to a multiple of their count by repeating its last row, and the
    padding dropped; each row's embedding does not depend on the others (test mode).

    Raises:
      ValueError: ``devices`` is empty.
    """
    devices = jax.local_devices()[:1] if devices is None else list(np.ravel(np.asarray(devices, object)))
    if not devices:
        raise ValueError("embed_fn: devices is empty; pass None for this process's first device")
    mesh = Mesh(np.asarray(devices), ("data",))
    rows = NamedSharding(mesh, P("data"))
    variables = state.variables()
    if jax.process_count() > 1:  # [multihost] replicated global params -> this host's copy
        variables = distributed.host_local(variables)
    variables = jax.device_put(variables, NamedSharding(mesh, P()))
    apply = jax.jit(functools.partial(eval_step, state.apply_fn, preprocess=preprocess), out_shardings=rows)

    def embed(images: np.ndarray) -> np.ndarray:
        n = len(images)
        images = loader.pad_rows(images, n + -n % len(devices))
        return np.asarray(apply(variables, jax.device_put(images, rows)), np.float32)[:n]

    return embed


class TrainStep:
    """The jitted train step, guarded against non-finite updates, and its diagnosis.

    ``step(state, images, labels, halted=False) -> (state, metrics)`` runs :func:`train_step`.
    ``halted`` (a device scalar: the previous step's ``metrics["halted"]``) turns the step into
    a no-op, so the loop can read the finite flag one step late without the next step moving
    the state on.

    ``metrics``: ``loss`` (the objective: the batch loss, or batch + memory once XBM is on),
    ``grad_norm``, ``embeddings_finite``, ``finite`` (this step's update was finite),
    ``applied``, ``halted`` (raise mode: this or an earlier step was non-finite), and with XBM
    ``memory_active``.

    ``step.diagnose(state, images, labels)`` recomputes the step from the pre-step ``state``
    (compiled only when called) with :func:`diagnose_step`.
    """

    def __init__(
        self,
        step: Callable[..., Any],
        diagnose: Callable[..., Any],
        replicated: NamedSharding,
        checked_loss: Callable[..., Any] | None = None,
    ):
        self._step = step
        self._diagnose = diagnose
        self._replicated = replicated
        self._checked_loss = checked_loss

    def __call__(
        self, state: TrainState, images: Any, labels: Any, halted: Any = False
    ) -> tuple[TrainState, dict[str, Array]]:
        if not isinstance(halted, jax.Array):  # placed as the step's own output is: one compile
            halted = jax.device_put(np.asarray(halted, bool), self._replicated)
        return self._step(state, images, labels, halted)

    def diagnose(self, state: TrainState, images: Any, labels: Any) -> dict[str, Any]:
        """Every term of the step of ``state.step`` on this batch (host numpy values), and
        ``first_check``: the first failed :mod:`rankax.debug` check of the loss (``checkify``:
        the loss's name and the first non-finite embedding; ``None`` if none failed)."""
        labels = distributed.like_batch(labels, images)  # [multihost] numpy labels -> global
        out = jax.tree.map(np.asarray, self._diagnose(state, images, labels))
        out["first_check"] = None
        if self._checked_loss is not None:
            try:
                err, _ = self._checked_loss(state, images, labels)
                out["first_check"] = err.get()
            except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the NaN error
                out["first_check"] = f"(checked re-run unavailable: {type(exc).__name__}: {exc})"
        return out


def make_train_step(
    config: ml_collections.ConfigDict,
    augment_fn: AugmentFn,
    mesh: Mesh,
    labels_ndim: int = 1,
    train_labels: np.ndarray | None = None,
) -> TrainStep:
    """:func:`train_step` of ``config``, jitted data parallel over ``mesh``.

    The batch is sharded on its first axis, the state replicated and donated. The loss is that
    of the *global* batch -- every query ranks all ``B`` embeddings whichever device computed
    them, and the mean runs over all queries, so the gradient is that of the full batch on one
    device (``config.loss_sharding``: :func:`rankax.train.losses.make_objective`). Non-finite
    updates are never applied (:class:`TrainStep`). ``train_labels``: the training labels the
    loss sees (:func:`rankax.train.losses.training_labels`), needed by ``config.loss.terms``.
    """
    terms = losses.make_terms(config, train_labels)
    objective = losses.make_objective(config, mesh, labels_ndim, config.loss.hparams.to_dict(), terms)
    static = dict(augment_fn=augment_fn, objective=objective)
    skip_mode = guards.nonfinite_action(config) == "skip"
    diagnosed_terms = losses.term_objectives(config, mesh, labels_ndim, terms)
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    jitted = jax.jit(
        functools.partial(train_step, **static, skip_mode=skip_mode),
        in_shardings=(replicated, batch, batch, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    diagnosed = jax.jit(
        functools.partial(diagnose_step, **static, terms=diagnosed_terms),
        in_shardings=(replicated, batch, batch),
        out_shardings=replicated,
    )
    # Compiled only when a step is diagnosed: rankax's value checks (checkify's own NaN
    # checks are left out: they do not cross shard_map in this JAX version).
    loss_only = lambda state, images, labels: forward(state, images, labels, **static)[0]
    checked = rankax.debug.checkify(loss_only, errors=checkify.user_checks)
    checked_loss = jax.jit(checked, in_shardings=(replicated, batch, batch))
    return TrainStep(jitted, diagnosed, replicated, checked_loss)
