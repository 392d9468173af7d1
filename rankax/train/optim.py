"""Optimizers and learning-rate schedules: parameter groups, epochs, the frozen warm-up.

Both are chosen by name from a small registry: :data:`SCHEDULES` (``constant``, ``cosine``,
``step``, ``multistep``, ``step_epochs``) and :data:`OPTIMIZERS` (``adam``, ``adamw``,
``sgd``). A new schedule or optimizer is one function and one entry.

An *optimizer section* is a config section with the keys of ``config.optimizer``: ``name``,
``lr``, ``weight_decay``, ``momentum`` and ``nesterov`` (SGD), ``schedule`` and the schedule's
keys. The model's parameter groups (:func:`rankax.models.param_labels`: ``backbone``,
``head``, ``frozen``) use ``config.optimizer`` (the head with ``head_lr`` /
``head_weight_decay`` when set); a loss term that owns parameters
(``config.loss.terms.<term>``, e.g. class proxies) has its own section
``config.loss.terms.<term>.optimizer`` (:func:`make_loss_optimizer`).

Time: a schedule is a function of the number of updates its group has made. Keys in epochs
(``decay_epochs``, ``decay_every_epochs``, ``frozen_warmup_epochs``) become steps through the
sampler's epochs (:class:`Clock`): epoch ``e`` starts at step ``clock.epoch_start(e)``, which is
exact also for samplers whose epochs differ in length. ``schedule_unit="epoch"`` holds the
learning rate constant over each epoch, as a torch scheduler stepped once an epoch
(:func:`per_epoch`): the step schedules at their value at the epoch's first step, the cosine
at epoch ``k`` of ``E`` (``CosineAnnealingLR(T_max=E)``); ``"step"`` (default) changes it every
step. ``warmup_steps`` ramps each group from 0 over its own first updates (:func:`with_warmup`).

Frozen warm-up (``optimizer.frozen_warmup_epochs = W``, ``optimizer.frozen_groups``): during
the first ``W`` epochs (steps ``0 .. S - 1``, ``S = epoch_start(W)``) the named groups
(``"backbone"``, ``"head"`` or a loss term's name) receive no update and their optimizer state
does not move (:func:`frozen_until`); from step ``S`` on they train as if their optimizer
started there. The schedules pause during the warm-up: with
``optimizer.warmup_paused_schedules="all"`` (default, SupRank: ``suprank/engine/train.py`` steps
no scheduler while ``warmup_step >= epoch``) every group's and every loss term's schedule holds
its initial value and starts counting at step ``S``; with ``"frozen"`` only the frozen groups'
schedules wait (the others count from step 0). The schedule length is unchanged (``num_steps``
from the switch, as the official ``CosineAnnealingLR(T_max=max_iter)`` stepped only after the
warm-up, so the run ends before the cosine reaches its floor).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from rankax import models
from rankax.train.errors import ConfigError

Config = ml_collections.ConfigDict
EpochStart = Callable[[int], int]

MODEL_GROUPS = ("backbone", "head")
SCHEDULE_UNITS = ("step", "epoch")
PAUSED_SCHEDULES = ("all", "frozen")


@dataclasses.dataclass(frozen=True)
class Clock:
    """How a schedule counts: ``num_steps`` steps in all, epoch ``e`` of the sampler starting
    at ``epoch_start(e)`` (``None``: epochs unknown, keys in epochs are an error), and the
    schedule starting ``offset_epochs`` epochs into the run (the paused warm-up).

    ``steps(e)`` is the step of the schedule's epoch ``e``, counted from its own start:
    ``epoch_start(offset_epochs + e) - epoch_start(offset_epochs)``."""

    num_steps: int
    epoch_start: EpochStart | None = None
    offset_epochs: int = 0

    def start(self, epoch: int, key: str) -> int:
        """The first step of run epoch ``epoch`` (``key`` names the config key in the error)."""
        if self.epoch_start is None:
            raise ConfigError(
                f"config.{key} counts in epochs, but no sampler was given to count them "
                "(pass epoch_start, e.g. optim.epoch_clock(sampler, num_items))"
            )
        return int(self.epoch_start(int(epoch)))

    def steps(self, epoch: float, key: str) -> int:
        """Steps from the schedule's start to the start of its epoch ``epoch``."""
        return self.start(self.offset_epochs + int(epoch), key) - self.start(self.offset_epochs, key)

    @property
    def offset(self) -> int:
        """The step the schedule starts counting at (0 without a paused warm-up)."""
        return self.start(self.offset_epochs, "optimizer.frozen_warmup_epochs") if self.offset_epochs else 0


def epoch_clock(sampler: Any, num_items: int) -> EpochStart:
    """``epoch -> first step`` of ``sampler``: its ``epoch_start`` if it has one, else
    ``epoch * epoch_length``, else ``epoch * (num_items // batch_size)`` (a P x K sampler's
    nominal epoch: as many batches as the training set fills)."""
    if hasattr(sampler, "epoch_start"):
        return sampler.epoch_start
    length = getattr(sampler, "epoch_length", None) or max(int(num_items) // int(sampler.batch_size), 1)
    return lambda epoch: int(epoch) * int(length)


# ----------------------------------------------------------------------------- schedules


def _constant(opt: Config, base_lr: float, clock: Clock, key: str) -> optax.Schedule:
    return optax.constant_schedule(base_lr)


def _final_ratio(opt: Config, base_lr: float) -> float:
    """``final_lr / base_lr`` when ``opt.final_lr`` (absolute floor, torch's ``eta_min``) is
    set, else ``opt.final_lr_ratio``."""
    final_lr = opt.get("final_lr", None)
    if final_lr is None:
        return float(opt.get("final_lr_ratio", 0.0))
    return float(final_lr) / base_lr if base_lr else 0.0


def _cosine(opt: Config, base_lr: float, clock: Clock, key: str) -> optax.Schedule:
    """``lr(t) = base_lr * (a + (1 - a) (1 + cos(pi t / num_steps)) / 2)``, ``a``: the final
    ratio (``final_lr / base_lr`` when ``final_lr`` is set, else ``final_lr_ratio``). With
    ``schedule_unit="epoch"``, ``t / num_steps`` is ``k / E`` at epoch ``k`` of ``E``
    (:func:`per_epoch`)."""
    return _cosine_over(opt, base_lr, clock.num_steps)


def _cosine_over(opt: Config, base_lr: float, length: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(base_lr, max(length, 1), alpha=_final_ratio(opt, base_lr))


#: Schedules that, once an epoch, are functions of the epoch index ``k`` and the number of
#: epochs ``E`` (torch's ``CosineAnnealingLR(T_max=E)`` stepped once an epoch); the others
#: are read at each epoch's first step (their boundaries sit on epoch starts).
EPOCH_INDEXED = {"cosine": _cosine_over}


def _step(opt: Config, base_lr: float, clock: Clock, key: str) -> optax.Schedule:
    """``base_lr`` times ``decay_factor`` at each fraction ``decay_at`` of the run."""
    boundaries = {int(b * clock.num_steps): opt.decay_factor for b in opt.decay_at}
    return optax.piecewise_constant_schedule(base_lr, boundaries)


def _multistep(opt: Config, base_lr: float, clock: Clock, key: str) -> optax.Schedule:
    """``base_lr`` times ``decay_factor`` from the start of each epoch in ``decay_epochs``
    (torch's ``MultiStepLR`` stepped once an epoch)."""
    epochs = tuple(opt.get("decay_epochs", ()) or ())
    if not epochs:
        raise ConfigError(f"{key}.schedule='multistep' needs {key}.decay_epochs, e.g. (30, 70)")
    boundaries: dict[int, float] = {}
    for e in epochs:
        at = clock.steps(e, f"{key}.decay_epochs".removeprefix("config."))
        boundaries[at] = boundaries.get(at, 1.0) * float(opt.decay_factor)
    return optax.piecewise_constant_schedule(base_lr, boundaries)


def _step_epochs(opt: Config, base_lr: float, clock: Clock, key: str) -> optax.Schedule:
    """``base_lr`` times ``decay_factor`` every ``decay_every_epochs`` epochs (torch's
    ``StepLR`` stepped once an epoch)."""
    every = int(opt.get("decay_every_epochs", 0) or 0)
    if every <= 0:
        raise ConfigError(f"{key}.schedule='step_epochs' needs {key}.decay_every_epochs > 0")
    boundaries, k, name = {}, 1, f"{key}.decay_every_epochs".removeprefix("config.")
    while (at := clock.steps(k * every, name)) < clock.num_steps:
        boundaries[at] = float(opt.decay_factor)
        k += 1
    return optax.piecewise_constant_schedule(base_lr, boundaries)


SCHEDULES: dict[str, Callable[[Config, float, Clock, str], optax.Schedule]] = {
    "constant": _constant,
    "cosine": _cosine,
    "step": _step,
    "multistep": _multistep,
    "step_epochs": _step_epochs,
}


def _schedule(opt: Config, base_lr: float, clock: Clock, key: str) -> optax.Schedule:
    """``opt``'s schedule; ``key`` names the section in errors (``config.optimizer``)."""
    if opt.schedule not in SCHEDULES:
        raise ValueError(f"{key}.schedule must be {'|'.join(SCHEDULES)}, got {opt.schedule!r}")
    return SCHEDULES[opt.schedule](opt, base_lr, clock, key)


def with_warmup(sched: optax.Schedule, base_lr: float, warmup_steps: int) -> optax.Schedule:
    """``base_lr * t / warmup_steps`` for the first ``warmup_steps`` steps ``t``, then ``sched``
    at the same step: the warm-up replaces the schedule's first steps and shifts nothing, so
    decay milestones and epochs stay where the schedule puts them."""
    if not warmup_steps:
        return sched
    warm = optax.linear_schedule(0.0, base_lr, warmup_steps)
    return lambda count: jnp.where(count < warmup_steps, warm(count), sched(count))


def make_schedule(
    config: Config,
    base_lr: float,
    *,
    section: Config | None = None,
    epoch_start: EpochStart | None = None,
    offset_epochs: int = 0,
    counted_from_offset: bool = False,
    key: str = "config.optimizer",
) -> optax.Schedule:
    """The schedule of ``section`` (default ``config.optimizer``) over ``config.num_steps``
    steps from ``base_lr``, its first ``warmup_steps`` steps (if any) replaced by a linear
    warm-up from 0, step by step even when the schedule moves once an epoch (:func:`with_warmup`).

    ``epoch_start``: the sampler's ``epoch -> first step`` (:func:`epoch_clock`; needed by keys
    in epochs); ``offset_epochs``: the schedule counts from the start of that epoch, and its
    epochs are the run's from there on (its value before is the initial one: the paused
    warm-up). ``counted_from_offset``: the count it is called with already starts at 0 at
    that epoch (a frozen group's optimizer, :func:`frozen_until`); else it is the run's step.
    ``key``: the section's name in errors."""
    section = config.optimizer if section is None else section
    clock = Clock(int(config.num_steps), epoch_start, int(offset_epochs))
    sched = _schedule(section, base_lr, clock, key)
    unit = section.get("schedule_unit", "step")
    if unit not in SCHEDULE_UNITS:
        raise ConfigError(f"{key}.schedule_unit must be 'step' or 'epoch', got {unit!r}")
    if unit == "epoch":
        indexed = EPOCH_INDEXED.get(section.schedule)
        by_index = None if indexed is None else (lambda epochs: indexed(section, base_lr, epochs))
        sched = per_epoch(sched, clock, by_index)
    offset = 0 if counted_from_offset else clock.offset
    if offset:  # paused: its initial value until the switch, then counting from there
        paused = sched
        sched = lambda count: paused(jnp.maximum(count - offset, 0))  # noqa: E731
    # The linear warm-up counts the group's own updates, from its first one: a group that
    # trains during a frozen warm-up ramps up at the run's start (it had learning rate 0 until
    # the switch: the warm-up started from 0 on the paused count).
    return with_warmup(sched, base_lr, int(section.get("warmup_steps", 0) or 0))


def run_epochs(clock: Clock, key: str) -> int:
    """The number of the run's epochs: those that start before ``clock.num_steps``, counted
    from step 0 (``config.num_epochs`` when the run is given in epochs)."""
    epochs = 1
    while clock.start(epochs, key) < clock.num_steps:
        epochs += 1
    return epochs


def per_epoch(
    sched: optax.Schedule, clock: Clock, by_index: Callable[[int], optax.Schedule] | None = None
) -> optax.Schedule:
    """``sched`` held constant over each epoch (torch's schedulers stepped once an epoch): at
    its value at the epoch's first step, ``lr(t) = sched(steps(e))`` for ``t`` in epoch ``e``;
    or, with ``by_index`` (``E -> schedule of the epoch index``, :data:`EPOCH_INDEXED`), at
    ``by_index(E)(e)`` with ``E`` the run's epochs (:func:`run_epochs`), which differs from the
    first form where epochs differ in length (the ``m_per_class`` sampler's official rule: up to 0.36 % in a
    cosine's learning rate)."""
    key = "optimizer.schedule_unit"
    starts = [0]
    while (nxt := clock.steps(len(starts), key)) < clock.num_steps:
        starts.append(nxt)
    table = jnp.asarray(starts, jnp.int32)

    def epoch(count: Any) -> Any:
        return jnp.searchsorted(table, count, side="right") - 1

    if by_index is not None:
        # E: the run's epochs, counted from step 0 (T_max = max_iter also under a paused
        # warm-up); counted from the switch it could be one more where the epochs after the
        # run's end are shorter than the warm-up's.
        indexed = by_index(run_epochs(clock, key))
        return lambda count: indexed(epoch(count))
    return lambda count: sched(table[epoch(count)])


# ----------------------------------------------------------------------------- optimizers


def _adam(opt: Config, sched: optax.Schedule) -> optax.GradientTransformation:
    """Adam with an L2 penalty added to the gradient, as ``torch.optim.Adam`` does."""
    chain = [optax.add_decayed_weights(opt.weight_decay)] if opt.weight_decay else []
    return optax.chain(*chain, optax.scale_by_adam(), optax.scale_by_learning_rate(sched))


def _adamw(opt: Config, sched: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(sched, weight_decay=opt.weight_decay)


def _sgd(opt: Config, sched: optax.Schedule) -> optax.GradientTransformation:
    """SGD as ``torch.optim.SGD``: ``g += wd p``; ``b = m b + g``; step ``lr b``, or with
    ``nesterov`` (torch's ``nesterov=True``) ``lr (g + m b)``."""
    nesterov = bool(opt.get("nesterov", False))
    return optax.chain(
        optax.add_decayed_weights(opt.weight_decay),
        optax.sgd(sched, momentum=opt.momentum, nesterov=nesterov),
    )


OPTIMIZERS: dict[str, Callable[[Config, optax.Schedule], optax.GradientTransformation]] = {
    "adam": _adam,
    "adamw": _adamw,
    "sgd": _sgd,
}


class FrozenState(NamedTuple):
    """:func:`frozen_until`'s state: updates seen and the inner optimizer's state."""

    count: jax.Array
    inner: Any


def frozen_until(inner: optax.GradientTransformation, start: int) -> optax.GradientTransformation:
    """``inner`` from update ``start`` on; before it, zero updates and ``inner``'s state left
    as it was (its moments and schedule count do not move), so at update ``start`` it acts as
    if it were starting. ``start <= 0``: ``inner`` itself."""
    if start <= 0:
        return inner

    def init(params):
        return FrozenState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        new_updates, new_inner = inner.update(updates, state.inner, params)
        active = state.count >= start
        updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
        kept = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_inner, state.inner)
        return updates, FrozenState(optax.safe_int32_increment(state.count), kept)

    return optax.GradientTransformation(init, update)


@dataclasses.dataclass(frozen=True)
class Warmup:
    """The frozen warm-up of ``config.optimizer``: ``epochs`` (0: none), the frozen
    ``groups``, which schedules pause (``paused``: ``"all"`` or ``"frozen"``) and its last
    step + 1 (``switch_step``: the first step that trains every group)."""

    epochs: int
    groups: tuple[str, ...]
    paused: str
    switch_step: int

    def frozen(self, group: str) -> bool:
        return self.epochs > 0 and group in self.groups

    def offset_epochs(self, group: str) -> int:
        """Epochs into the run at which the schedule of ``group`` starts: the warm-up for a
        frozen group (its optimizer makes its first update, schedule count 0, at the switch:
        :func:`frozen_until`) and, with ``paused="all"``, for every group; else 0. The
        schedule's epochs are the run's from there on (epochs may differ in length)."""
        if not self.epochs:
            return 0
        return self.epochs if self.frozen(group) or self.paused == "all" else 0


def warmup(config: Config, epoch_start: EpochStart | None = None) -> Warmup:
    """The checked :class:`Warmup` of ``config.optimizer``; a frozen group is ``"backbone"``,
    ``"head"`` or the name of a loss term (``config.loss.terms``)."""
    opt = config.optimizer
    epochs = int(opt.get("frozen_warmup_epochs", 0) or 0)
    groups = tuple(opt.get("frozen_groups", ()) or ())
    paused = opt.get("warmup_paused_schedules", "all")
    if epochs < 0:
        raise ConfigError(f"config.optimizer.frozen_warmup_epochs must be >= 0, got {epochs}")
    if paused not in PAUSED_SCHEDULES:
        raise ConfigError(
            f"config.optimizer.warmup_paused_schedules must be 'all' or 'frozen', got {paused!r}"
        )
    known = (*MODEL_GROUPS, *config.loss.get("terms", {}).keys())
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise ConfigError(
            f"config.optimizer.frozen_groups names unknown groups {unknown}; known: {list(known)}"
        )
    if epochs and not groups:
        raise ConfigError(
            "config.optimizer.frozen_warmup_epochs > 0 needs optimizer.frozen_groups, e.g. ('backbone',)"
        )
    clock = Clock(int(config.num_steps), epoch_start)
    switch = clock.start(epochs, "optimizer.frozen_warmup_epochs") if epochs else 0
    return Warmup(epochs, groups, paused, switch)


def inert_settings(config: Config, epoch_start: EpochStart | None = None) -> list[str]:
    """What in ``config`` can never take effect in a run of ``config.num_steps`` steps: a
    frozen warm-up that outlasts the run or has no length, decay keys of another schedule,
    ``multistep`` milestones past the end, a linear warm-up as long as the run, a cross-batch
    memory that starts after it. One sentence per finding, naming the key (the run warns: a
    short debugging run may mean it). Without ``epoch_start`` (the sampler's clock) the keys in
    epochs are not placed: the frozen warm-up and the milestones are not checked."""
    n, opt = int(config.num_steps), config.optimizer
    found: list[str] = []
    placed = epoch_start is not None or not int(opt.get("frozen_warmup_epochs", 0) or 0)
    warm = warmup(config, epoch_start) if placed else None
    if warm is not None and warm.epochs and warm.switch_step >= n:
        found.append(f"config.optimizer.frozen_warmup_epochs={warm.epochs} ends at step {warm.switch_step}, "
                     f"not before num_steps={n}: the frozen groups ({', '.join(warm.groups)}) never train")
    if warm is not None and tuple(opt.get("frozen_groups", ()) or ()) and not warm.epochs:
        found.append("config.optimizer.frozen_groups has no effect without "
                     "optimizer.frozen_warmup_epochs > 0")
    offset = (lambda group: 0) if warm is None else warm.offset_epochs  # noqa: E731
    sections = [("config.optimizer", opt, [offset(g) for g in MODEL_GROUPS])]
    for term, section in config.loss.get("terms", {}).items():
        if "optimizer" in section:
            key = f"config.loss.terms.{term}.optimizer"
            sections.append((key, section.optimizer, [offset(term)]))
    for key, section, offsets in sections:
        schedule = section.get("schedule", "constant")
        epochs = tuple(section.get("decay_epochs", ()) or ())
        if epochs and schedule != "multistep":
            found.append(f"{key}.decay_epochs is read by schedule='multistep' only, not {schedule!r}")
        if int(section.get("decay_every_epochs", 0) or 0) and schedule != "step_epochs":
            found.append(f"{key}.decay_every_epochs is read by schedule='step_epochs' only, not {schedule!r}")
        if epochs and schedule == "multistep" and epoch_start is not None and warm is not None:
            if all(epoch_start(o + int(e)) >= n for o in offsets for e in epochs):
                found.append(f"{key}.decay_epochs={epochs} all start at or after step {n} (num_steps): "
                             "the learning rate never decays")
        if int(section.get("warmup_steps", 0) or 0) >= n:
            found.append(f"{key}.warmup_steps={section.warmup_steps} is not below num_steps={n}: the "
                         "learning rate never reaches its base value")
    xbm = config.get("xbm", None)
    if xbm is not None and int(xbm.get("size", 0) or 0) and int(xbm.get("start_step", 0) or 0) >= n:
        found.append(f"config.xbm.start_step={xbm.start_step} is not below num_steps={n}: the cross-batch "
                     "memory is never used")
    return found


def make_group_optimizer(
    config: Config,
    section: Config,
    lr: float,
    *,
    group: str,
    epoch_start: EpochStart | None = None,
    weight_decay: float | None = None,
    key: str = "config.optimizer",
) -> optax.GradientTransformation:
    """``section.name`` (an :data:`OPTIMIZERS` entry) with its schedule from ``lr`` and
    ``weight_decay`` (default ``section.weight_decay``), frozen and paused as the warm-up of
    ``config.optimizer`` says for ``group``."""
    if section.name not in OPTIMIZERS:
        raise ValueError(f"{key}.name must be {'|'.join(OPTIMIZERS)}, got {section.name!r}")
    warm = warmup(config, epoch_start)
    sched = make_schedule(
        config, lr, section=section, epoch_start=epoch_start, offset_epochs=warm.offset_epochs(group),
        counted_from_offset=warm.frozen(group), key=key,
    )
    if weight_decay is not None and weight_decay != section.weight_decay:
        section = ml_collections.ConfigDict({**section.to_dict(), "weight_decay": float(weight_decay)})
    tx = OPTIMIZERS[section.name](section, sched)
    return frozen_until(tx, warm.switch_step) if warm.frozen(group) else tx


def make_optimizer(config: Config, epoch_start: EpochStart | None = None) -> optax.GradientTransformation:
    """Adam/AdamW/SGD with separate backbone and head groups (``optax.multi_transform``).

    Parameter groups come from :func:`rankax.models.param_labels`: the ``head`` subtree gets
    ``optimizer.head_lr`` (default: ``optimizer.lr``) and ``optimizer.head_weight_decay``
    (default: ``optimizer.weight_decay``), the rest ``optimizer.lr`` and
    ``optimizer.weight_decay``; with ``optimizer.freeze_bn_params`` the backbone's BatchNorm
    scale/bias are not updated (as in the papers that freeze BN). ``optimizer.grad_clip``
    clips the global gradient norm first. The frozen warm-up and keys in epochs: module
    docstring (``epoch_start``: :func:`epoch_clock` of the run's sampler).
    """
    opt = config.optimizer
    head_lr = opt.head_lr if opt.get("head_lr", None) is not None else opt.lr
    head_wd = opt.get("head_weight_decay", None)
    group = lambda name, lr, wd=None: make_group_optimizer(
        config, opt, lr, group=name, epoch_start=epoch_start, weight_decay=wd
    )
    transforms = {
        "backbone": group("backbone", opt.lr),
        "head": group("head", head_lr, head_wd),
        "frozen": optax.set_to_zero(),
    }
    labels = lambda params: models.param_labels(params, freeze_bn=bool(opt.freeze_bn_params))
    tx = optax.multi_transform(transforms, labels)
    if opt.grad_clip:
        # The norm of the trained parameters only, as torch's clip_grad_norm_ skips parameters
        # that have no gradient (the frozen BatchNorm ones): their gradients are zeroed first.
        trained = {"backbone": optax.identity(), "head": optax.identity(), "frozen": optax.set_to_zero()}
        tx = optax.chain(optax.multi_transform(trained, labels), optax.clip_by_global_norm(opt.grad_clip), tx)
    return tx


# The optimizer section of a loss term starts from these values (config.loss.terms.<t>.optimizer).
TERM_OPTIMIZER_DEFAULTS = {
    "name": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "momentum": 0.9,
    "nesterov": False,
    "schedule": "constant",
    "final_lr_ratio": 0.0,
    "final_lr": None,
    "decay_at": (0.5, 0.75),
    "decay_epochs": (),
    "decay_every_epochs": 0,
    "decay_factor": 0.3,
    "warmup_steps": 0,
    "schedule_unit": "step",
}


def term_section(config: Config, term: str) -> Config:
    """The optimizer section of loss term ``term``: :data:`TERM_OPTIMIZER_DEFAULTS` updated by
    ``config.loss.terms.<term>.optimizer`` (an unknown key is an error naming it)."""
    given = config.loss.terms[term].get("optimizer", ml_collections.ConfigDict())
    given = given.to_dict() if isinstance(given, ml_collections.ConfigDict) else dict(given)
    unknown = sorted(set(given) - set(TERM_OPTIMIZER_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"config.loss.terms.{term}.optimizer has unknown keys {unknown}; "
            f"known: {sorted(TERM_OPTIMIZER_DEFAULTS)}"
        )
    return ml_collections.ConfigDict({**TERM_OPTIMIZER_DEFAULTS, **given})


def make_loss_optimizer(
    config: Config, terms: tuple[str, ...], epoch_start: EpochStart | None = None
) -> optax.GradientTransformation:
    """One optimizer per loss term that owns parameters (``{term: {name: array}}`` trees),
    each from :func:`term_section`, under ``optax.multi_transform``; the frozen warm-up applies
    as to the model's groups (a term may be one of ``optimizer.frozen_groups``)."""
    transforms = {
        t: make_group_optimizer(
            config,
            term_section(config, t),
            float(term_section(config, t).lr),
            group=t,
            epoch_start=epoch_start,
            key=f"config.loss.terms.{t}.optimizer",
        )
        for t in terms
    }
    if not transforms:
        return optax.identity()
    labels = lambda params: {t: jax.tree.map(lambda _, t=t: t, sub) for t, sub in params.items()}
    return optax.multi_transform(transforms, labels)
