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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import rankax
from rankax import models, xbm
from rankax.data.base import RetrievalDataset, Source
from rankax.train import checkpointing, input_pipeline, plotting

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
    return Mesh(np.asarray(devices[:n]), ("data",))


def make_train_step(
    config: ml_collections.ConfigDict,
    augment_fn: Callable[[Array, Array], Array],
    mesh: Mesh,
    labels_ndim: int = 1,
) -> Callable[[TrainState, Array, Array], tuple[TrainState, dict[str, Array]]]:
    """The jitted pure step ``(state, images, labels) -> (state, metrics)``.

    Data parallel over ``mesh``: the batch is sharded on its first axis, the state replicated
    and donated. The loss is that of the *global* batch -- every query ranks all ``B``
    embeddings whichever device computed them, and the mean runs over all queries, so the
    gradient is that of the full batch on one device. ``config.loss_sharding="shard_map"``
    (default) uses :func:`rankax.sharding.sharded_batch_loss` (explicit differentiable
    all-gather, each device ranks its own queries, statistics ``psum``-ed); ``"jit"`` lets
    XLA partition :func:`rankax.batch_loss`. Both are exact.
    """
    loss_fn = resolve_loss(config.loss.name)
    hparams = dict(config.loss.hparams.to_dict())
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
    use_memory = bool(config.xbm.size)
    memory_start = int(config.xbm.start_step)

    def step(state: TrainState, images: Array, labels: Array) -> tuple[TrainState, dict[str, Array]]:
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
        tx_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        memory = xbm.update(state.memory, emb, labels) if use_memory else state.memory
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, tx_updates),
            opt_state=opt_state,
            batch_stats=updates.get("batch_stats", state.batch_stats),
            memory=memory,
        )
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))
    return jax.jit(
        step,
        in_shardings=(replicated, batch, batch),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


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
    return lambda images: np.asarray(apply(variables, images), np.float32)


def evaluate_state(
    config: ml_collections.ConfigDict, state: TrainState, data: RetrievalDataset, evaluator: Any = None
) -> dict[str, float]:
    """Scalar metrics of ``state``'s model by ``evaluator`` (default: :func:`make_evaluator`)."""
    evaluator = make_evaluator(config, data) if evaluator is None else evaluator
    return _scalars(evaluator.run(embed_fn(state)))


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def restore_for_evaluation(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[TrainState, RetrievalDataset]:
    """The newest readable checkpoint of ``workdir`` and the dataset of ``config``.

    Raises:
      FileNotFoundError: ``workdir/checkpoints`` holds no readable checkpoint.
    """
    data = input_pipeline.load(config)
    model = build_model(config)
    labels = training_labels(config, data)
    sample = data.train.get_batch(np.arange(2), train=False)
    state = create_train_state(config, model, sample, labels.ndim, labels.shape[-1])
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints directory in {workdir!r} (expected {directory})")
    ckpt = checkpointing.Checkpointer(directory, config)
    try:
        if not ckpt.steps():
            raise FileNotFoundError(f"no checkpoint in {directory}")
        state, _ = ckpt.restore_latest(state)
    finally:
        ckpt.close()
    return state, data


# ----------------------------------------------------------------------------- loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluates.

    Writes ``workdir/metrics.json`` (the final evaluation), ``workdir/history.json`` (the
    training curve), ``workdir/checkpoints/<step>``, TensorBoard events under
    ``workdir/tensorboard`` and PNG plots. Returns the final metrics.
    """
    os.makedirs(workdir, exist_ok=True)
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
        raise ValueError(
            f"config.best_metric={config.best_metric!r} is not an evaluation key; one of {sorted(known)}"
        )
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config)
    state, history = ckpt.restore_latest(state)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    start = int(state.step)
    writer = _summary_writer(workdir)

    evaluator = make_evaluator(config, data)
    report: dict[str, dict[str, float]] = {}
    if start == 0 and config.eval_baselines:
        if isinstance(data.test, rankax.data.ArraySource):
            flat = data.test.images.reshape(len(data.test), -1).astype(np.float32)
            flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
            raw = rankax.retrieval.RetrievalEvaluator(
                flat,
                data.test.labels,
                batch_size=len(flat),
                backend=config.eval_backend,
                ks=tuple(config.eval_ks),
            )
            report["raw pixels"] = _scalars(raw.run(np.asarray))
        report["untrained"] = evaluate_state(config, state, data, evaluator)
        history.append({"step": 0, **{f"eval/{k}": v for k, v in report["untrained"].items()}})

    train_step = make_train_step(config, input_pipeline.augment_fn(config), mesh, train_labels.ndim)
    log_every = max(1, int(config.log_every))
    progress = _progress(start, config.num_steps)
    t0, seen = time.perf_counter(), 0
    for step in range(start, config.num_steps):
        idx = sampler.indices(step)
        images = data.train.get_batch(idx, train=True, seed=int(config.seed) * 2**32 + step)
        state, metrics = train_step(state, images, train_labels[idx])
        seen += len(idx)
        if (step + 1) % log_every == 0 or step + 1 == config.num_steps:
            loss = float(metrics["loss"])
            rate = seen / (time.perf_counter() - t0)
            history.append({"step": step + 1, "loss": loss, "images_per_s": rate})
            writer.add_scalar("train/loss", loss, step + 1)
            writer.add_scalar("train/images_per_s", rate, step + 1)
            progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
        done = step + 1 == config.num_steps
        if config.eval_every and (step + 1) % config.eval_every == 0 and not done:
            ev = evaluate_state(config, state, data, evaluator)
            history.append({"step": step + 1, **{f"eval/{k}": v for k, v in ev.items()}})
            for k, v in ev.items():
                writer.add_scalar(f"eval/{k}", v, step + 1)
        if (step + 1) % config.checkpoint_every == 0 and not done:
            ckpt.save(state, history)
        progress.update(1)
    progress.close()

    final = evaluate_state(config, state, data, evaluator)
    history.append({"step": int(state.step), **{f"eval/{k}": v for k, v in final.items()}})
    for k, v in final.items():
        writer.add_scalar(f"eval/{k}", v, int(state.step))
    writer.close()
    if int(state.step) > start or not ckpt.has(int(state.step)):
        ckpt.save(state, history, metrics=final)
    ckpt.close()
    report["trained"] = final
    _print_table(report)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(final, f, indent=2)
    with open(os.path.join(workdir, "history.json"), "w") as f:
        json.dump(history, f)
    plotting.training_curves(history, os.path.join(workdir, "training_curves.png"))
    if isinstance(data.test, rankax.data.ArraySource):
        emb = embed_source(state, data.test, int(config.eval_batch_size))
        labels = np.asarray(data.test.labels)
        plotting.embedding_projection(
            emb, labels if labels.ndim == 1 else labels[:, 0], os.path.join(workdir, "test_embeddings.png")
        )
    return final


def _summary_writer(workdir: str):
    from tensorboardX import SummaryWriter

    return SummaryWriter(os.path.join(workdir, "tensorboard"))


def _progress(start: int, total: int):
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
