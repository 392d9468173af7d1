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

import rankax
from rankax import models
from rankax.train import checkpointing, input_pipeline, plotting

Array = jax.Array


class TrainState(struct.PyTreeNode):
    """Everything a step changes (and a checkpoint saves)."""

    step: Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: Array
    apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def variables(self, params: Any | None = None) -> dict[str, Any]:
        out = {"params": self.params if params is None else params}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out


# ----------------------------------------------------------------------------- optimizer


def _param_labels(params: Any) -> Any:
    """'head' for parameters under a module named ``head*``, else 'backbone'."""

    def label(path, _):
        names = [str(getattr(k, "key", k)) for k in path]
        return "head" if any(n.startswith("head") for n in names) else "backbone"

    return jax.tree_util.tree_map_with_path(label, params)


def _schedule(config: ml_collections.ConfigDict, base_lr: float) -> optax.Schedule:
    opt = config.optimizer
    steps = max(int(config.num_steps), 1)
    if opt.schedule == "constant":
        sched = optax.constant_schedule(base_lr)
    elif opt.schedule == "cosine":
        sched = optax.cosine_decay_schedule(base_lr, steps)
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
    """Adam/AdamW/SGD with separate backbone and head learning rates (``optax.multi_transform``)."""
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
    tx = optax.multi_transform({"backbone": build(opt.lr), "head": build(head_lr)}, _param_labels)
    if opt.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), tx)
    return tx


# ----------------------------------------------------------------------------- model & loss


def build_model(config: ml_collections.ConfigDict) -> Any:
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]
    kwargs = dict(config.model.to_dict())
    name = kwargs.pop("name")
    return models.build(name, dtype=dtype, **kwargs)


def resolve_loss(name: str) -> Callable[..., Array]:
    """``"supap"`` -> ``rankax.losses.supap_loss`` (clear error for an unknown name)."""
    fn = getattr(rankax.losses, f"{name}_loss", None)
    if fn is None:
        known = sorted(n[: -len("_loss")] for n in rankax.losses.__all__ if n.endswith("_loss"))
        raise ValueError(f"config.loss.name {name!r} is not a rankax loss; known: {known}")
    return fn


def create_train_state(config: ml_collections.ConfigDict, model: Any, sample: np.ndarray) -> TrainState:
    rng = jax.random.PRNGKey(config.seed)
    variables = model.init(jax.random.fold_in(rng, 1), jnp.asarray(sample), train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    tx = make_optimizer(config)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=rng,
        apply_fn=model.apply,
        tx=tx,
    )


def make_train_step(config: ml_collections.ConfigDict, augment_fn: Callable[[Array, Array], Array]):
    """Returns the jitted pure step ``(state, images, labels) -> (state, metrics)``."""
    loss_fn = resolve_loss(config.loss.name)
    hparams = dict(config.loss.hparams.to_dict()) if "hparams" in config.loss else {}
    include_self = bool(config.loss.get("include_self", False))
    # A P x K batch has K - 1 positives per query (K with the query itself).
    capacity = config.batch.samples_per_class - (0 if include_self else 1)

    def step(state: TrainState, images: Array, labels: Array) -> tuple[TrainState, dict[str, Array]]:
        rng = jax.random.fold_in(state.rng, state.step)
        images = augment_fn(images, rng)

        def objective(params):
            variables = state.variables(params)
            if state.batch_stats:
                emb, updates = state.apply_fn(variables, images, train=True, mutable=["batch_stats"])
            else:
                emb, updates = state.apply_fn(variables, images, train=True), {}
            loss = rankax.batch_loss(
                loss_fn,
                emb.astype(jnp.float32),
                labels,
                include_self=include_self,
                max_positives=capacity,
                **hparams,
            )
            return loss, updates

        (loss, updates), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        tx_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, tx_updates),
            opt_state=opt_state,
            batch_stats=updates.get("batch_stats", state.batch_stats),
        )
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return jax.jit(step, donate_argnums=0)


# ----------------------------------------------------------------------------- evaluation


def embed(state: TrainState, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    apply = jax.jit(lambda v, x: state.apply_fn(v, x, train=False))
    out = [
        np.asarray(apply(state.variables(), images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float32)


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks=(1, 2, 4, 8)) -> dict[str, float]:
    """R@k, MAP@R, R-precision and mAP with the query set as gallery (self excluded)."""
    scores = jnp.asarray(embeddings) @ jnp.asarray(embeddings).T
    rel = jnp.asarray(labels)[:, None] == jnp.asarray(labels)[None, :]
    where = ~jnp.eye(len(labels), dtype=bool)
    m = rankax.metrics
    out = {f"recall@{k}": float(m.recall_at_k(scores, rel, k=k, where=where)) for k in ks}
    out["map@r"] = float(m.map_at_r(scores, rel, where=where))
    out["r_precision"] = float(m.r_precision(scores, rel, where=where))
    out["map"] = float(m.average_precision(scores, rel, where=where))
    return out


# ----------------------------------------------------------------------------- loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluates.

    Writes ``workdir/metrics.json`` (the final evaluation), ``workdir/history.json`` (the
    training curve), ``workdir/checkpoints/<step>`` and PNG plots. Returns the final metrics.
    """
    os.makedirs(workdir, exist_ok=True)
    data = input_pipeline.load(config)
    model = build_model(config)
    state = create_train_state(config, model, data.train_images[:2])
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config)
    state, history = ckpt.restore_latest(state)
    start = int(state.step)

    report: dict[str, dict[str, float]] = {}
    if start == 0:
        flat = data.test_images.reshape(len(data.test_images), -1)
        flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
        report["raw pixels"] = retrieval_metrics(flat, data.test_labels)
        report["untrained"] = retrieval_metrics(embed(state, data.test_images), data.test_labels)

    sampler = rankax.data.PKSampler(
        data.train_labels, config.batch.classes_per_batch, config.batch.samples_per_class, seed=config.seed
    )
    train_step = make_train_step(config, input_pipeline.augment_fn(config))
    log_every = max(1, int(config.log_every))
    progress = _progress(start, config.num_steps)
    t0, seen = time.perf_counter(), 0
    for step in range(start, config.num_steps):
        idx = sampler.indices(step)
        state, metrics = train_step(state, data.train_images[idx], data.train_labels[idx])
        seen += len(idx)
        if (step + 1) % log_every == 0 or step + 1 == config.num_steps:
            loss = float(metrics["loss"])
            rate = seen / (time.perf_counter() - t0)
            history.append({"step": step + 1, "loss": loss, "images_per_s": rate})
            progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
        if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.num_steps:
            ev = retrieval_metrics(embed(state, data.test_images), data.test_labels)
            history.append({"step": step + 1, **{f"eval/{k}": v for k, v in ev.items()}})
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.num_steps:
            ckpt.save(state, history)
        progress.update(1)
    progress.close()

    final = retrieval_metrics(embed(state, data.test_images), data.test_labels)
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
    plotting.embedding_projection(
        embed(state, data.test_images), data.test_labels, os.path.join(workdir, "test_embeddings.png")
    )
    return final


def _progress(start: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)


def _print_table(report: dict[str, dict[str, float]]) -> None:
    keys = list(next(iter(report.values())).keys())
    width = max(len(n) for n in report) + 2
    print("\n" + "".ljust(width) + "".join(k.rjust(12) for k in keys))
    for name, vals in report.items():
        print(name.ljust(width) + "".join(f"{vals[k]:12.4f}" for k in keys))
    print()
