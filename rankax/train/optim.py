"""Optimizers and learning-rate schedules of ``config.optimizer``.

Both are chosen by name from a small registry: :data:`SCHEDULES` (``constant``, ``cosine``,
``step``) and :data:`OPTIMIZERS` (``adam``, ``adamw``, ``sgd``). A new schedule or optimizer
is one function and one entry. :func:`make_optimizer` puts one optimizer per parameter group
(:func:`rankax.models.param_labels`: ``backbone``, ``head``, ``frozen``) under
``optax.multi_transform``.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
import optax

from rankax import models

Config = ml_collections.ConfigDict


def _constant(config: Config, base_lr: float, steps: int) -> optax.Schedule:
    return optax.constant_schedule(base_lr)


def _cosine(config: Config, base_lr: float, steps: int) -> optax.Schedule:
    """``lr(t) = base_lr * (a + (1 - a) (1 + cos(pi t / steps)) / 2)``, ``a = final_lr_ratio``."""
    alpha = float(config.optimizer.get("final_lr_ratio", 0.0))
    return optax.cosine_decay_schedule(base_lr, steps, alpha=alpha)


def _step(config: Config, base_lr: float, steps: int) -> optax.Schedule:
    """``base_lr`` times ``decay_factor`` at each fraction ``decay_at`` of the run."""
    opt = config.optimizer
    boundaries = {int(b * steps): opt.decay_factor for b in opt.decay_at}
    return optax.piecewise_constant_schedule(base_lr, boundaries)


SCHEDULES: dict[str, Callable[[Config, float, int], optax.Schedule]] = {
    "constant": _constant,
    "cosine": _cosine,
    "step": _step,
}


def make_schedule(config: Config, base_lr: float) -> optax.Schedule:
    """``config.optimizer.schedule`` over ``config.num_steps`` steps from ``base_lr``, after a
    linear warm-up from 0 over ``optimizer.warmup_steps`` steps (if any)."""
    opt = config.optimizer
    if opt.schedule not in SCHEDULES:
        raise ValueError(f"config.optimizer.schedule must be {'|'.join(SCHEDULES)}, got {opt.schedule!r}")
    sched = SCHEDULES[opt.schedule](config, base_lr, max(int(config.num_steps), 1))
    if opt.warmup_steps:
        warm = optax.linear_schedule(0.0, base_lr, int(opt.warmup_steps))
        sched = optax.join_schedules([warm, sched], [int(opt.warmup_steps)])
    return sched


def _adam(opt: Config, sched: optax.Schedule) -> optax.GradientTransformation:
    """Adam with an L2 penalty added to the gradient, as ``torch.optim.Adam`` does."""
    chain = [optax.add_decayed_weights(opt.weight_decay)] if opt.weight_decay else []
    return optax.chain(*chain, optax.scale_by_adam(), optax.scale_by_learning_rate(sched))


def _adamw(opt: Config, sched: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(sched, weight_decay=opt.weight_decay)


def _sgd(opt: Config, sched: optax.Schedule) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(opt.weight_decay), optax.sgd(sched, momentum=opt.momentum))


OPTIMIZERS: dict[str, Callable[[Config, optax.Schedule], optax.GradientTransformation]] = {
    "adam": _adam,
    "adamw": _adamw,
    "sgd": _sgd,
}


def _group_optimizer(config: Config, lr: float) -> optax.GradientTransformation:
    """``config.optimizer.name`` with the schedule of :func:`make_schedule` from ``lr``."""
    opt, sched = config.optimizer, make_schedule(config, lr)
    if opt.name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name must be {'|'.join(OPTIMIZERS)}, got {opt.name!r}")
    return OPTIMIZERS[opt.name](opt, sched)


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """Adam/AdamW/SGD with separate backbone and head learning rates (``optax.multi_transform``).

    Parameter groups come from :func:`rankax.models.param_labels`: the ``head`` subtree gets
    ``optimizer.head_lr`` (default: ``optimizer.lr``), the rest ``optimizer.lr``; with
    ``optimizer.freeze_bn_params`` the backbone's BatchNorm scale/bias are not updated (as in
    the papers that freeze BN). ``optimizer.grad_clip`` clips the global gradient norm first.
    """
    opt = config.optimizer
    head_lr = opt.head_lr if opt.head_lr is not None else opt.lr
    transforms = {
        "backbone": _group_optimizer(config, opt.lr),
        "head": _group_optimizer(config, head_lr),
        "frozen": optax.set_to_zero(),
    }
    labels = lambda params: models.param_labels(params, freeze_bn=bool(opt.freeze_bn_params))
    tx = optax.multi_transform(transforms, labels)
    if opt.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), tx)
    return tx
