"""The training program: state, step, loop, checkpoints, evaluation (flax-examples layout).

``train_and_evaluate(config, workdir)`` is what ``experiments/train.py`` calls. The pieces a
reader looks for are here, in this order: the train state, the optimizer, the pure
``train_step``, and the loop that samples P x K batches, checkpoints, evaluates and writes
``metrics.json`` and plots.

Exact resume: batches are a pure function of ``(config.seed, step)`` (``PKSampler``), the
per-step RNG is ``fold_in(state.rng, step)``, and the checkpoint holds params, batch stats,
optimizer state, step and RNG; so a run restarted from its latest checkpoint continues
exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.experimental import checkify
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import rankax
from rankax import models, xbm
from rankax.data.base import RetrievalDataset, Source
from rankax.train import checkpointing, distributed, errors, input_pipeline, plotting
from rankax.train import workdir as workdir_lib

Array = jax.Array


class TrainState(struct.PyTreeNode):
    """Everything a step changes (and a checkpoint saves)."""

    step: Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: Array
    memory: Any  # rankax.xbm.XBM cross-batch memory, or {} when disabled
    apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def variables(self, params: Any | None = None) -> dict[str, Any]:
        out = {"params": self.params if params is None else params}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out


# ----------------------------------------------------------------------------- optimizer


def _schedule(config: ml_collections.ConfigDict, base_lr: float) -> optax.Schedule:
    opt = config.optimizer
    steps = max(int(config.num_steps), 1)
    if opt.schedule == "constant":
        sched = optax.constant_schedule(base_lr)
    elif opt.schedule == "cosine":
        sched = optax.cosine_decay_schedule(base_lr, steps, alpha=float(opt.get("final_lr_ratio", 0.0)))
    elif opt.schedule == "step":
        boundaries = {int(b * steps): opt.decay_factor for b in opt.decay_at}
        sched = optax.piecewise_constant_schedule(base_lr, boundaries)
    else:
        raise ValueError(f"config.optimizer.schedule must be constant|cosine|step, got {opt.schedule!r}")
    if opt.warmup_steps:
        warm = optax.linear_schedule(0.0, base_lr, int(opt.warmup_steps))
        sched = optax.join_schedules([warm, sched], [int(opt.warmup_steps)])
    return sched


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam/AdamW/SGD with separate backbone and head learning rates (``optax.multi_transform``).

    Parameter groups come from :func:`rankax.models.param_labels`: the ``head`` subtree gets
    ``optimizer.head_lr`` (default: ``optimizer.lr``), the rest ``optimizer.lr``; with
    ``optimizer.freeze_bn_params`` the backbone's BatchNorm scale/bias are not updated (as in
    the papers that freeze BN).
    """
    opt = config.optimizer

    def build(lr: float) -> optax.GradientTransformation:
        sched = _schedule(config, lr)
        if opt.name == "adam":  # L2 penalty added to the gradient, as torch.optim.Adam does
            chain = [optax.add_decayed_weights(opt.weight_decay)] if opt.weight_decay else []
            return optax.chain(*chain, optax.scale_by_adam(), optax.scale_by_learning_rate(sched))
        if opt.name == "adamw":
            return optax.adamw(sched, weight_decay=opt.weight_decay)
        if opt.name == "sgd":
            return optax.chain(
                optax.add_decayed_weights(opt.weight_decay), optax.sgd(sched, momentum=opt.momentum)
            )
        raise ValueError(f"config.optimizer.name must be adam|adamw|sgd, got {opt.name!r}")

    head_lr = opt.head_lr if opt.head_lr is not None else opt.lr
    transforms = {"backbone": build(opt.lr), "head": build(head_lr), "frozen": optax.set_to_zero()}
    labels = lambda params: models.param_labels(params, freeze_bn=bool(opt.freeze_bn_params))
    tx = optax.multi_transform(transforms, labels)
    if opt.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), tx)
    return tx


# ----------------------------------------------------------------------------- model & loss


def build_model(config: ml_collections.ConfigDict) -> Any:
    """``rankax.models.build(config.model.name, dtype=config.dtype, **config.model)``."""
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if config.dtype not in dtypes:
        raise ValueError(f"config.dtype must be one of {sorted(dtypes)}, got {config.dtype!r}")
    kwargs = dict(config.model.to_dict())
    name = kwargs.pop("name")
    kwargs.pop("pretrained", None)
    return models.build(name, dtype=dtypes[config.dtype], **kwargs)


def resolve_loss(name: str) -> Callable[..., Array]:
    """``"supap"`` -> ``rankax.losses.supap_loss`` (clear error for an unknown name)."""
    fn = getattr(rankax.losses, f"{name}_loss", None)
    if fn is None:
        known = sorted(n[: -len("_loss")] for n in rankax.losses.__all__ if n.endswith("_loss"))
        raise ValueError(f"config.loss.name {name!r} is not a rankax loss; known: {known}")
    return fn


def create_train_state(
    config: ml_collections.ConfigDict,
    model: Any,
    sample: np.ndarray,
    labels_ndim: int = 1,
    labels_width: int = 1,
) -> TrainState:
    """Initial state: model variables (optionally pretrained), optimizer state, RNG, XBM."""
    rng = jax.random.PRNGKey(config.seed)
    variables = model.init(jax.random.fold_in(rng, 1), jnp.asarray(sample), train=False)
    pretrained = config.model.get("pretrained", None)
    if pretrained:
        from rankax.models import convert

        variables = convert.merge_pretrained(variables, convert.load_pretrained(pretrained))
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    tx = make_optimizer(config)
    memory: Any = {}
    if config.xbm.size:
        dim = jax.eval_shape(lambda: model.apply(variables, jnp.asarray(sample), train=False)).shape[-1]
        label_shape = () if labels_ndim == 1 else (labels_width,)
        memory = xbm.init(int(config.xbm.size), dim, label_shape=label_shape)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=rng,
        memory=memory,
        apply_fn=model.apply,
        tx=tx,
    )


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
    """A 1-D data-parallel mesh over ``config.num_devices`` (0 = all) local devices."""
    devices = jax.devices()
    n = int(config.get("num_devices", 0)) or len(devices)
    if n > len(devices):
        raise ValueError(f"config.num_devices={n} but only {len(devices)} devices are visible")
    if jax.process_count() > 1 and n != len(devices):  # [multihost] every process's devices
        raise ValueError(
            f"config.num_devices={n}: a run of {jax.process_count()} processes uses all "
            f"{len(devices)} devices of all processes; set config.num_devices=0"
        )
    return Mesh(np.asarray(devices[:n]), ("data",))


NONFINITE_ACTIONS = ("raise", "skip")


def nonfinite_action(config: ml_collections.ConfigDict) -> str:
    """``config.on_nonfinite`` checked: ``"raise"`` (default) or ``"skip"``."""
    action = config.get("on_nonfinite", "raise")
    if action not in NONFINITE_ACTIONS:
        raise ValueError(f"config.on_nonfinite must be one of {NONFINITE_ACTIONS}, got {action!r}")
    return action


def _loss_closures(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    labels_ndim: int,
    hparams: dict[str, Any],
) -> tuple[Callable[..., Array], Callable[..., Array]]:
    """``(batch_of(emb, labels), memory_of(emb, labels, memory))`` for ``config.loss`` with
    ``hparams``: the global-batch loss, sharded as ``config.loss_sharding`` says."""
    loss_fn = resolve_loss(config.loss.name)
    include_self = bool(config.loss.include_self)
    # A P x K batch has K - 1 positives per query (K with the query itself). With class ids and
    # the P x K sampler that is also the most there can be: compile that one capacity
    # (capacity_limit). Otherwise (label paths, hierarchical sampler) batch_loss climbs its
    # exact capacity ladder; it never drops positives either way.
    capacity = config.batch.samples_per_class - (0 if include_self else 1)
    plain_pk = config.batch.get("sampler", "pk") == "pk" and labels_ndim == 1
    batch_kw = dict(include_self=include_self, max_positives=capacity, **hparams)
    if plain_pk:
        batch_kw["capacity_limit"] = capacity
    memory_kw = dict(include_self=include_self, max_positives=capacity, **hparams)
    if config.loss_sharding == "shard_map":  # explicit all_gather + psum of the statistics
        batch_of = rankax.sharding.sharded_batch_loss(loss_fn, mesh, "data", **batch_kw)
        memory_of = rankax.sharding.sharded_batch_loss(loss_fn, mesh, "data", **memory_kw)
    elif config.loss_sharding == "jit":  # XLA partitions rankax.batch_loss of the global batch
        batch_of = lambda emb, labels: rankax.batch_loss(loss_fn, emb, labels, **batch_kw)
        memory_of = lambda emb, labels, memory: rankax.batch_loss(
            loss_fn, emb, labels, memory=memory, **memory_kw
        )
    else:
        raise ValueError(f"config.loss_sharding must be 'jit' or 'shard_map', got {config.loss_sharding!r}")
    return batch_of, memory_of


def loss_term_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
    """The weighted terms of ``config.loss`` (``<term>_weight`` keyword arguments of the loss,
    e.g. ROADMAP's ``supap_weight`` / ``calibration_weight``) and their weights; ``{}`` for a
    single-term loss."""
    import inspect

    params = inspect.signature(resolve_loss(config.loss.name)).parameters
    hparams = config.loss.hparams.to_dict()
    weights = {
        name[: -len("_weight")]: float(hparams.get(name, p.default))
        for name, p in params.items()
        if name.endswith("_weight") and isinstance(p.default, int | float)
    }
    return weights if len(weights) > 1 else {}


def _all_finite(tree: Any) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class TrainStep:
    """The jitted train step, guarded against non-finite updates, and its diagnosis.

    ``step(state, images, labels, halted=False) -> (state, metrics)``. The update is applied
    only when everything it produced is finite: the loss, the gradient (global norm), every
    embedding, the new batch statistics and the new parameters. Otherwise params, optimizer
    state, batch statistics and the cross-batch memory come back unchanged (``jnp.where``, no
    NaN is ever written into the state); ``state.step`` advances past the batch with
    ``config.on_nonfinite="skip"`` and stays (the state is exactly the one before the step)
    with ``"raise"``. ``halted`` (a device scalar: the previous step's ``metrics["halted"]``)
    turns the step into a no-op, so the loop can read the finite flag one step late without
    the next step moving the state on.

    ``metrics``: ``loss`` (the objective: the batch loss, or batch + memory once XBM is on),
    ``grad_norm``, ``embeddings_finite``, ``finite`` (this step's update was finite),
    ``applied``, ``halted`` (raise mode: this or an earlier step was non-finite), and with XBM
    ``memory_active``.

    ``step.diagnose(state, images, labels)`` recomputes the step from the pre-step ``state``
    (compiled only when called) and returns every term separately: the loss, each weighted
    term of the loss at its own value (:func:`loss_term_weights`), with XBM the batch-only
    loss, the gradient norm, the finiteness of each embedding and of each gradient leaf.
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
    augment_fn: Callable[[Array, Array], Array],
    mesh: Mesh,
    labels_ndim: int = 1,
) -> TrainStep:
    """The jitted pure step ``(state, images, labels[, halted]) -> (state, metrics)``.

    Data parallel over ``mesh``: the batch is sharded on its first axis, the state replicated
    and donated. The loss is that of the *global* batch -- every query ranks all ``B``
    embeddings whichever device computed them, and the mean runs over all queries, so the
    gradient is that of the full batch on one device. ``config.loss_sharding="shard_map"``
    (default) uses :func:`rankax.sharding.sharded_batch_loss` (explicit differentiable
    all-gather, each device ranks its own queries, statistics ``psum``-ed); ``"jit"`` lets
    XLA partition :func:`rankax.batch_loss`. Both are exact. Non-finite updates are never
    applied (:class:`TrainStep`).
    """
    hparams = dict(config.loss.hparams.to_dict())
    batch_of, memory_of = _loss_closures(config, mesh, labels_ndim, hparams)
    use_memory = bool(config.xbm.size)
    memory_start = int(config.xbm.start_step)
    skip_mode = nonfinite_action(config) == "skip"

    def forward(state, images, labels, batch_of=batch_of, memory_of=memory_of):
        rng = jax.random.fold_in(state.rng, state.step)
        images = augment_fn(images, rng)

        def objective(params):
            variables = state.variables(params)
            if state.batch_stats:
                emb, updates = state.apply_fn(variables, images, train=True, mutable=["batch_stats"])
            else:
                emb, updates = state.apply_fn(variables, images, train=True), {}
            emb = emb.astype(jnp.float32)
            if use_memory:  # XBM: rank against batch + memory once the memory is warmed up
                loss = jax.lax.cond(
                    state.step >= memory_start,
                    lambda: memory_of(emb, labels, state.memory),
                    lambda: batch_of(emb, labels),
                )
            else:
                loss = batch_of(emb, labels)
            return loss, (updates, emb)

        (loss, (updates, emb)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        return loss, updates, emb, grads

    def step(state: TrainState, images: Array, labels: Array, halted: Array) -> tuple[TrainState, dict]:
        loss, updates, emb, grads = forward(state, images, labels)
        grad_norm = optax.global_norm(grads)
        tx_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, tx_updates)
        batch_stats = updates.get("batch_stats", state.batch_stats)
        memory = xbm.update(state.memory, emb, labels) if use_memory else state.memory
        emb_finite = jnp.all(jnp.isfinite(emb))
        finite = (
            jnp.isfinite(loss) & jnp.isfinite(grad_norm) & emb_finite
            & _all_finite(batch_stats) & _all_finite(params)
        )
        applied = finite & ~halted
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(applied, n, o), new, old)
        advance = ~halted & (finite | skip_mode)
        new_state = state.replace(
            step=state.step + advance.astype(state.step.dtype),
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            batch_stats=keep(batch_stats, state.batch_stats),
            memory=keep(memory, state.memory),
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
            metrics["memory_active"] = state.step >= memory_start
        return new_state, metrics

    weights = loss_term_weights(config)
    term_losses = {}
    for term in weights:  # each weighted term alone, at weight 1 (diagnosis only)
        alone = {**hparams, **{f"{t}_weight": float(t == term) for t in weights}}
        term_losses[term] = _loss_closures(config, mesh, labels_ndim, alone)

    def diagnose(state: TrainState, images: Array, labels: Array) -> dict[str, Any]:
        loss, _, emb, grads = forward(state, images, labels)
        out: dict[str, Any] = {"terms": {"loss": loss}}
        for term, (t_batch, t_memory) in term_losses.items():
            out["terms"][term] = forward(state, images, labels, t_batch, t_memory)[0]
        if use_memory:
            out["terms"]["loss (batch only, without the XBM memory)"] = batch_of(emb, labels)
            out["memory_active"] = state.step >= memory_start
        out["terms"]["grad_norm"] = optax.global_norm(grads)
        out["embeddings_finite"] = jnp.all(jnp.isfinite(emb), axis=-1)
        out["grads_finite"] = {
            "/".join(str(getattr(k, "key", k)) for k in path): jnp.all(jnp.isfinite(g))
            for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
        }
        return out

    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))
    jitted = jax.jit(
        step,
        in_shardings=(replicated, batch, batch, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    diagnosed = jax.jit(diagnose, in_shardings=(replicated, batch, batch), out_shardings=replicated)
    # Compiled only when a step is diagnosed: rankax's value checks (checkify's own NaN
    # checks are left out: they do not cross shard_map in this JAX version).
    checked_loss = jax.jit(
        rankax.debug.checkify(
            lambda state, images, labels: forward(state, images, labels)[0],
            errors=checkify.user_checks,
        ),
        in_shardings=(replicated, batch, batch),
    )
    return TrainStep(jitted, diagnosed, replicated, checked_loss)


def training_labels(config: ml_collections.ConfigDict, data: RetrievalDataset) -> np.ndarray:
    """The labels the loss sees: ``[N]`` class ids, or ``[N, L]`` paths if ``loss.hierarchical``.

    Label paths of SOP/iNat/folder datasets are reduced to their finest level (column 0)
    unless ``config.loss.hierarchical``; evaluation always gets the full labels.
    """
    labels = np.asarray(data.train.labels)
    if labels.ndim == 2 and not config.loss.get("hierarchical", False):
        return labels[:, 0]
    return labels


# ----------------------------------------------------------------------------- evaluation


def embed_source(state: TrainState, source: Source, batch_size: int = 256) -> np.ndarray:
    """``[N, D]`` float32 embeddings of every item of ``source`` (test-time preprocessing)."""
    from rankax.retrieval.evaluator import embed_in_batches

    return embed_in_batches(embed_fn(state), source, batch_size)


def evaluation_keys(config: ml_collections.ConfigDict, labels_ndim: int) -> set[str]:
    """The metric names :func:`evaluate_state` returns for ``config`` (to check config keys
    such as ``best_metric`` before training rather than after)."""
    ks = tuple(config.eval_ks)
    if config.get("eval_protocol", "retrieval") == "revisited":
        return {f"{s}/{m}" for s in ("easy", "medium", "hard") for m in ("map", *(f"mp@{k}" for k in ks))}
    keys = {*(f"recall@{k}" for k in ks), "map@r", "r_precision"}
    if config.eval_backend == "exact":
        keys.add("map")
        if labels_ndim == 2:
            keys |= {"hap", "ndcg", "asi"}
    return keys


def make_evaluator(config: ml_collections.ConfigDict, data: RetrievalDataset) -> Any:
    """The evaluator object of ``config.eval_protocol`` (``run(embed_fn) -> dict``).

    ``"retrieval"``: :class:`rankax.retrieval.RetrievalEvaluator` on the test split (query =
    gallery, self excluded, unless the dataset has a gallery): R@k, MAP@R, R-precision, mAP,
    and H-AP/NDCG/ASI for label paths. ``"revisited"``:
    :class:`rankax.retrieval.RevisitedEvaluator` with the ground truth of
    ``config.revisited_gnd``; the test split holds the queries and the gallery the database,
    in the ground truth's order.
    """
    from rankax import retrieval

    bs = int(config.eval_batch_size)
    protocol = config.get("eval_protocol", "retrieval")
    if protocol == "revisited":
        if data.gallery is None:
            raise ValueError(
                "config.eval_protocol='revisited' needs a dataset with a gallery (query/gallery CSVs)"
            )
        if not config.revisited_gnd:
            raise ValueError("config.revisited_gnd must name the ground-truth file (gnd_roxford5k.pkl)")
        gnd = retrieval.load_gnd(config.revisited_gnd)
        return retrieval.RevisitedEvaluator(
            data.test, data.gallery, gnd, batch_size=bs, kappas=tuple(config.eval_ks)
        )
    if protocol != "retrieval":
        raise ValueError(f"config.eval_protocol must be 'retrieval' or 'revisited', got {protocol!r}")
    gallery_labels = None if data.gallery is None else data.gallery.labels
    return retrieval.RetrievalEvaluator(
        data.test,
        data.test.labels,
        gallery_inputs=data.gallery,
        gallery_labels=gallery_labels,
        batch_size=bs,
        backend=config.eval_backend,
        ks=tuple(config.eval_ks),
    )


def embed_fn(state: TrainState) -> Callable[[np.ndarray], np.ndarray]:
    """``images -> embeddings`` of the model in ``state`` (test mode, jitted)."""
    apply = jax.jit(lambda v, x: state.apply_fn(v, x, train=False))
    variables = state.variables()
    if jax.process_count() > 1:  # [multihost] replicated global params -> this host's copy
        variables = distributed.host_local(variables)
    return lambda images: np.asarray(apply(variables, images), np.float32)


def evaluate_state(
    config: ml_collections.ConfigDict, state: TrainState, data: RetrievalDataset, evaluator: Any = None
) -> dict[str, float]:
    """Scalar metrics of ``state``'s model by ``evaluator`` (default: :func:`make_evaluator`)."""
    evaluator = make_evaluator(config, data) if evaluator is None else evaluator
    # [multihost] each process embeds its share of every batch; all get the whole gallery
    return _scalars(evaluator.run(distributed.sharded_embed_fn(embed_fn(state))))


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def restore_for_evaluation(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> tuple[TrainState, RetrievalDataset]:
    """Checkpoint ``step`` (default: the newest readable one) of ``workdir`` and the dataset
    of ``config``. Read-only: nothing in ``workdir`` is moved or removed, so it is safe next to
    a running training job (an unreadable newest step is skipped with a warning).

    Raises:
      FileNotFoundError: ``workdir/checkpoints`` holds no readable checkpoint.
      CheckpointReadError: ``step`` was given and is missing, incomplete or unreadable (names
        the step and path; the orbax/tensorstore error is chained).
    """
    data = input_pipeline.load(config)
    model = build_model(config)
    labels = training_labels(config, data)
    sample = data.train.get_batch(np.arange(2), train=False)
    state = create_train_state(config, model, sample, labels.ndim, labels.shape[-1])
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints directory in {workdir!r} (expected {directory})")
    ckpt = checkpointing.Checkpointer(directory, config, read_only=True)
    try:
        if step is not None:
            state, _ = ckpt.restore(state, int(step))
        else:
            steps = ckpt.steps()
            if not steps:
                raise FileNotFoundError(f"no checkpoint in {directory}")
            state, _ = ckpt.restore_latest(state)
            if ckpt.restored_step is None:
                raise FileNotFoundError(f"no readable checkpoint in {directory} (unreadable steps: {steps})")
    finally:
        ckpt.close()
    return state, data


# ----------------------------------------------------------------------------- loop


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: Any = ()
) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluates.

    Writes ``workdir/config.json`` (the resolved config, rankax version and commit, at the
    first start), ``workdir/metrics.json`` (the final evaluation), ``workdir/history.json``
    (the training curve), ``workdir/baselines.json`` (raw pixels and the untrained network),
    ``workdir/checkpoints/<step>``, TensorBoard events under ``workdir/tensorboard`` and PNG
    plots. Returns the final metrics.

    A workdir that records another config stops the run before anything is written
    (:class:`~rankax.train.WorkdirConfigMismatch` naming the differing keys) unless each
    differing key is in ``allow_config_change`` (dotted keys, groups, or ``"*"``; see
    :mod:`rankax.train.workdir`). A run that fails before its first step in a new (or empty)
    workdir leaves nothing on disk.
    """
    existed = os.path.isdir(workdir)
    fresh = not existed or not os.listdir(workdir)
    config = check_loss_hparams(config)
    changes = workdir_lib.check(config, workdir, allow_config_change)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")) and (warning := pretrained_warning(config)):
        print(warning)
    progress = {"steps": 0}
    try:
        return _train_and_evaluate(config, workdir, changes, progress)
    except BaseException as err:
        if (
            fresh and progress["steps"] == 0 and not isinstance(err, errors.NonFiniteLossError)
            and distributed.is_main()  # [multihost] the shared workdir is cleaned once
        ):
            _remove_contents(workdir, keep_dir=existed)  # a failed start leaves no half-made workdir
        raise


def _remove_contents(workdir: str, keep_dir: bool) -> None:
    import shutil

    if os.path.isdir(workdir):
        for name in os.listdir(workdir):
            path = os.path.join(workdir, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        if not keep_dir:
            os.rmdir(workdir)


def pretrained_warning(config: ml_collections.ConfigDict) -> str | None:
    """A warning when a paper config's backbone (ResNet/DeiT/ViT) has no ``model.pretrained``
    weights: the papers fine-tune ImageNet weights, random ones do not reproduce them."""
    name = str(config.model.name)
    if name == "mlp" or config.model.get("pretrained", None):
        return None
    return (
        f"WARNING: config.model.pretrained is not set: {name} starts from random weights, far from "
        f"the papers' numbers (they fine-tune ImageNet weights). Set "
        f"--config.model.pretrained=/path/to/{name}.pth (docs/models.md)"
    )


def check_loss_hparams(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with every key of ``config.loss.hparams`` checked to be a keyword argument of
    the loss; a deprecated spelling (``tau``) is renamed (a copy of ``config``, with a warning),
    so the workdir records one name. Raises :class:`~rankax.train.ConfigError` naming the key,
    the closest argument and all of them."""
    import difflib
    import inspect

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


_HPARAM_EXCLUDED = ("where", "reduce_fn", "max_positives", "key")


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, changes: dict, progress_of_run: dict[str, int]
) -> dict[str, float]:
    data = input_pipeline.load(config)
    mesh = make_mesh(config)
    sampler = input_pipeline.make_sampler(config, data)
    if sampler.batch_size % mesh.size:
        raise ValueError(f"the batch size {sampler.batch_size} is not divisible by the {mesh.size} devices")
    model = build_model(config)
    train_labels = training_labels(config, data)
    sample = data.train.get_batch(np.arange(2), train=False)
    state = create_train_state(config, model, sample, train_labels.ndim, train_labels.shape[-1])
    known = evaluation_keys(config, np.asarray(data.test.labels).ndim)
    if config.best_metric not in known:
        raise errors.ConfigError(
            f"config.best_metric={config.best_metric!r} is not an evaluation key; one of {sorted(known)}"
        )
    nonfinite_action(config)
    if int(config.get("max_consecutive_nonfinite", 10)) < 1:
        raise ValueError(
            f"config.max_consecutive_nonfinite must be >= 1, got {config.max_consecutive_nonfinite}"
        )
    os.makedirs(workdir, exist_ok=True)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config)
    state, history = ckpt.restore_latest(state)
    state = distributed.replicate(state, mesh)  # [multihost] was jax.device_put(state, replicated)
    start = int(state.step)
    if distributed.is_main():  # [multihost]
        workdir_lib.write(config, workdir, changes)
    writer = _summary_writer(workdir)

    evaluator = make_evaluator(config, data)
    baselines_path = os.path.join(workdir, "baselines.json")
    report: dict[str, dict[str, float]] = {}
    if start == 0 and config.eval_baselines:
        if isinstance(data.test, rankax.data.ArraySource):
            report["raw pixels"] = raw_pixel_metrics(config, data)
        report["untrained"] = evaluate_state(config, state, data, evaluator)
        history.append({"step": 0, **{f"eval/{k}": v for k, v in report["untrained"].items()}})
        if distributed.is_main():  # [multihost]
            _write_json(baselines_path, report, indent=2)
    elif os.path.exists(baselines_path):  # a resumed or finished run shows its whole table
        with open(baselines_path) as f:
            report.update(json.load(f))

    train_step = make_train_step(config, input_pipeline.augment_fn(config), mesh, train_labels.ndim)
    guard = _NonFiniteGuard(config, workdir, train_step, train_labels, ckpt, history)
    log_every = max(1, int(config.log_every))
    progress = None  # shown from the second step on: the first one compiles (ETA from it is wrong)
    t0, seen = time.perf_counter(), 0
    halted: Any = False
    pending = None  # the last dispatched step, its finite flag not read yet (one step of lag)
    if start < config.num_steps:
        print(f"Training steps {start + 1}-{int(config.num_steps)} (the first one compiles) ...", flush=True)
    for step in range(start, config.num_steps):
        idx = sampler.indices(step)
        images, labels = input_pipeline.global_batch(  # [multihost] this process's rows only
            data.train, idx, train_labels, seed=int(config.seed) * 2**32 + step,
            sharding=NamedSharding(mesh, P("data")),
        )
        state, metrics = train_step(state, images, labels, halted)
        halted = metrics["halted"]  # raise mode: a non-finite step makes the next one a no-op
        if pending is not None:  # step - 1's flag: reading it now lets step run meanwhile
            guard.check(*pending, state)
        pending = (step, idx, images, metrics)
        seen += len(idx)
        done = step + 1 == config.num_steps
        log_now = (step + 1) % log_every == 0 or done
        eval_now = bool(config.eval_every) and (step + 1) % config.eval_every == 0 and not done
        save_now = (step + 1) % config.checkpoint_every == 0 and not done
        if log_now or eval_now or save_now or done:  # these wait for the step anyway
            guard.check(*pending, state)
            pending = None
        if log_now:
            rate = seen / (time.perf_counter() - t0)
            entry: dict[str, Any] = {"step": step + 1, "images_per_s": rate}
            if bool(metrics["finite"]):  # a skipped step logs no loss
                entry["loss"] = float(metrics["loss"])
                writer.add_scalar("train/loss", entry["loss"], step + 1)
                if progress is not None:
                    progress.set_postfix(loss=f"{entry['loss']:.4f}", img_s=f"{rate:.0f}")
            if guard.action == "skip":
                entry["nonfinite_skipped"] = guard.skipped
                writer.add_scalar("train/nonfinite_skipped", guard.skipped, step + 1)
            history.append(entry)
            writer.add_scalar("train/images_per_s", rate, step + 1)
        if eval_now:
            ev = evaluate_state(config, state, data, evaluator)
            history.append({"step": step + 1, **{f"eval/{k}": v for k, v in ev.items()}})
            for k, v in ev.items():
                writer.add_scalar(f"eval/{k}", v, step + 1)
        if save_now:
            ckpt.save(state, history)
        progress_of_run["steps"] += 1
        if progress is None:
            jax.block_until_ready(state.step)  # the compile is over: the bar's rate starts here
            progress = _progress(step + 1, config.num_steps)
        else:
            progress.update(1)
    if progress is not None:
        progress.close()

    final = evaluate_state(config, state, data, evaluator)
    last = history[-1] if history else {}
    if not (last.get("step") == int(state.step) and any(k.startswith("eval/") for k in last)):
        history.append({"step": int(state.step), **{f"eval/{k}": v for k, v in final.items()}})
        for k, v in final.items():
            writer.add_scalar(f"eval/{k}", v, int(state.step))
    writer.close()
    if int(state.step) > start or not ckpt.has(int(state.step)):
        ckpt.save(state, history, metrics=final)
    ckpt.close()
    report["trained"] = final
    if not distributed.is_main():  # [multihost] tables, metrics.json, history and plots: process 0
        return final
    _print_table(report)
    outputs = [os.path.join(workdir, n) for n in ("metrics.json", "history.json", "training_curves.png")]
    _write_json(outputs[0], final, indent=2)
    _write_json(outputs[1], history)
    plotting.training_curves(history, outputs[2], baselines=report)
    if isinstance(data.test, rankax.data.ArraySource):
        emb = embed_source(state, data.test, int(config.eval_batch_size))
        labels = np.asarray(data.test.labels)
        labels = labels if labels.ndim == 1 else labels[:, 0]
        before = None
        if config.eval_baselines:  # the untrained network's embeddings, for the "before" panel
            initial = create_train_state(config, model, sample, train_labels.ndim, train_labels.shape[-1])
            before = embed_source(initial, data.test, int(config.eval_batch_size))
        outputs.append(os.path.join(workdir, "test_embeddings.png"))
        plotting.embedding_projection(emb, labels, outputs[-1], before=before, report=report)
    print("Wrote " + ", ".join(outputs) + f" (checkpoints in {ckpt.directory})")
    return final


def raw_pixel_metrics(config: ml_collections.ConfigDict, data: RetrievalDataset) -> dict[str, float]:
    """Retrieval on the L2-normalised raw pixels of an in-memory test split (the baseline a
    trained embedding must beat)."""
    flat = data.test.images.reshape(len(data.test), -1).astype(np.float32)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    raw = rankax.retrieval.RetrievalEvaluator(
        flat, data.test.labels, batch_size=len(flat), backend=config.eval_backend, ks=tuple(config.eval_ks)
    )
    return _scalars(raw.run(np.asarray))


def _write_json(path: str, obj: Any, **kwargs: Any) -> None:
    """Writes ``path`` whole or not at all (a temporary file renamed over it), so a kill never
    leaves a truncated ``metrics.json``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, **kwargs)
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    """Floats that JSON can hold (non-finite ones as strings), lists for arrays."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, float | np.floating):
        return float(x) if np.isfinite(x) else str(float(x))
    if isinstance(x, np.integer | np.bool_):
        return x.item()
    return x


class _NonFiniteGuard:
    """Reads the finite flag of each step (one step late) and acts on ``config.on_nonfinite``.

    ``"raise"``: :class:`~rankax.train.NonFiniteLossError` at the first non-finite step, after
    diagnosing it from the (unchanged) pre-step state. ``"skip"``: the step was not applied;
    it is logged and counted, and more than ``config.max_consecutive_nonfinite`` in a row
    raise. Every event is appended to ``<workdir>/nonfinite_steps.jsonl``.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        train_step: TrainStep,
        labels: np.ndarray,
        ckpt: checkpointing.Checkpointer,
        history: list[dict[str, Any]],
    ):
        self.action = nonfinite_action(config)
        self.max_consecutive = int(config.get("max_consecutive_nonfinite", 10))
        if self.max_consecutive < 1:
            raise ValueError(f"config.max_consecutive_nonfinite must be >= 1, got {self.max_consecutive}")
        self.report_path = os.path.join(os.path.abspath(workdir), "nonfinite_steps.jsonl")
        self.train_step, self.labels, self.ckpt = train_step, labels, ckpt
        logged = [h["nonfinite_skipped"] for h in history if "nonfinite_skipped" in h]
        self.skipped = int(logged[-1]) if logged else 0  # survives a resume through history
        self.consecutive = 0

    def check(self, step: int, idx: np.ndarray, images: np.ndarray, metrics: dict, state: Any) -> None:
        """Acts on the finite flag of ``step`` (``metrics`` of that step; ``state``: the
        current state, which in raise mode is still the one before ``step``)."""
        if bool(metrics["finite"]):
            self.consecutive = 0
            return
        pixels = distributed.host_rows(images)  # [multihost] every process's rows, gathered
        bad_inputs = idx[~np.isfinite(np.asarray(pixels).reshape(len(idx), -1)).all(axis=1)]
        record: dict[str, Any] = {
            "step": step,
            "action": self.action,
            "indices": idx,
            "labels": self.labels[idx],
            "nonfinite_inputs": bad_inputs,
            "last_checkpoint": self.ckpt.latest(),
        }
        if self.action == "raise":  # the state is the pre-step one: recompute every term
            diag = self.train_step.diagnose(state, images, self.labels[idx])
            raw = {k: float(v) for k, v in diag["terms"].items()}
            order = ["loss", *sorted(set(raw) - {"loss", "grad_norm"}), "grad_norm"]
            terms = {k: raw[k] for k in order}  # the objective first, the gradient last
            record["nonfinite_embeddings"] = idx[~diag["embeddings_finite"]]
            record["nonfinite_grads"] = [k for k, ok in diag["grads_finite"].items() if not ok]
            if "memory_active" in diag:
                record["memory_active"] = bool(diag["memory_active"])
            record["first_check"] = diag["first_check"]
        else:
            terms = {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"])}
            if not bool(metrics["embeddings_finite"]):
                terms["embeddings"] = float("nan")
        record["terms"] = terms
        if distributed.is_main():  # [multihost] one record per event
            with open(self.report_path, "a") as f:
                f.write(json.dumps(_jsonable(record)) + "\n")
        bad = {k: v for k, v in terms.items() if not np.isfinite(v)}
        summary = self._summary(step, idx, bad, terms, record)
        if self.action == "skip":
            self.skipped += 1
            self.consecutive += 1
            print(f"WARNING: skipped {summary}")
            if self.consecutive < self.max_consecutive:
                return
            summary += f"; {self.consecutive} consecutive non-finite steps (config.max_consecutive_nonfinite)"
        last = record["last_checkpoint"]
        intact = f"step {last} ({self.ckpt.step_path(last)})" if last is not None else "none yet"
        hint = " Set config.on_nonfinite='skip' to skip such steps." if self.action == "raise" else ""
        raise errors.NonFiniteLossError(
            f"{summary}. Its update was not applied; newest intact checkpoint: {intact}.{hint}",
            step=step,
            indices=idx,
            terms=terms,
            last_checkpoint=last,
            report_path=self.report_path,
            state=state,
        )

    def _summary(
        self, step: int, idx: np.ndarray, bad: dict, terms: dict, record: dict[str, Any]
    ) -> str:
        fmt = lambda d: ", ".join(f"{k}={v:.6g}" for k, v in d.items())
        ok = {k: v for k, v in terms.items() if k not in bad}
        text = f"non-finite training step {step}: {fmt(bad)}" + (f" (finite: {fmt(ok)})" if ok else "")
        shown = ", ".join(str(int(i)) for i in idx[:16]) + (", ..." if len(idx) > 16 else "")
        text += f"; batch dataset indices [{shown}] ({len(idx)}, all in {self.report_path})"
        for key, what in (("nonfinite_inputs", "inputs"), ("nonfinite_embeddings", "embeddings")):
            if len(record.get(key, ())):
                text += f"; non-finite {what} at dataset indices {[int(i) for i in record[key]]}"
        if record.get("nonfinite_grads"):
            text += f"; non-finite gradients of {record['nonfinite_grads'][:8]}"
        if record.get("first_check"):
            text += f"; first failed check: {record['first_check'].splitlines()[0]}"
        return text


def _summary_writer(workdir: str):
    if not distributed.is_main():  # [multihost] TensorBoard from process 0 only
        return distributed.NullWriter()
    from tensorboardX import SummaryWriter

    return SummaryWriter(os.path.join(workdir, "tensorboard"))


def _progress(start: int, total: int):
    if not distributed.is_main():  # [multihost] one progress bar: process 0's
        return distributed.NullWriter()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)


_TABLE_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "map")


def _print_table(report: dict[str, dict[str, float]]) -> None:
    first = next(iter(report.values()))
    keys = [k for k in _TABLE_KEYS if k in first] or [k for k in first if "num_" not in k]
    width = max(len(n) for n in report) + 2
    print("\n" + "".ljust(width) + "".join(k.rjust(12) for k in keys))
    for name, vals in report.items():
        print(name.ljust(width) + "".join(f"{vals[k]:12.4f}" for k in keys))
    print()
