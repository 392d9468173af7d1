"""The training loop: ``train_and_evaluate(config, workdir)``, in phases a reader follows top-down.

:func:`setup` (data, mesh, model, config checks, :func:`restore` from the newest checkpoint,
:func:`baselines`), :func:`train` (per step: sample the batch, dispatch the jitted step, read
its finite flag one step late; then :func:`log_step`, :func:`evaluate_at`, the periodic
checkpoint), and :func:`finish` (the final evaluation and checkpoint, ``metrics.json``,
``history.json``, plots).

Exact resume: batches are a pure function of ``(config.seed, step)`` (``PKSampler``), the
per-step RNG is ``fold_in(state.rng, step)``, and the checkpoint holds params, batch stats,
optimizer state, step and RNG; so a run restarted from its latest checkpoint continues
exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import rankax
from rankax.data import loader
from rankax.data.base import RetrievalDataset
from rankax.retrieval import exact
from rankax.train import (
    checkpointing,
    config_checks,
    distributed,
    errors,
    evaluators,
    guards,
    input_pipeline,
    losses,
    optim,
    plotting,
    writers,
)
from rankax.train import state as state_lib
from rankax.train import workdir as workdir_lib
from rankax.train.state import TrainState
from rankax.train.step import make_train_step

Config = ml_collections.ConfigDict


def train_and_evaluate(config: Config, workdir: str, *, allow_config_change: Any = ()) -> dict[str, float]:
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
    workdir leaves nothing on disk. One run at a time holds a workdir
    (:func:`rankax.train.workdir.locked`): a second start on it stops with a ``ConfigError``.
    """
    config_checks.check_config(config)
    config = losses.check_loss_hparams(config)
    if jax.process_count() > 1:  # [multihost] one command and one code on every process
        distributed.check_same_everywhere(
            {**{f"config.{k}": v for k, v in workdir_lib.flat(config).items()},
             **{f"code.{k}": v for k, v in workdir_lib.code_version().items()},
             "allow_config_change": sorted(allow_config_change)},
            "configs",
        )
    existed = os.path.isdir(workdir)
    fresh = not existed or not set(os.listdir(workdir)) - {workdir_lib.LOCK, distributed.SHARED_MARK}
    made = _first_missing(workdir)  # the folder a failed start removes (with the parents it made)
    lock = workdir_lib.locked(workdir) if distributed.is_main() else contextlib.nullcontext()
    with lock:  # [multihost] process 0 holds the shared workdir
        return _locked_run(config, workdir, allow_config_change, fresh, made)


def _locked_run(config: Config, workdir: str, allow_config_change: Any, fresh: bool, made: str | None):
    counter = {"steps": 0}
    try:
        if jax.process_count() > 1:  # inside: a refused start leaves no half-made workdir
            distributed.check_shared_directory(workdir, "workdir")
        changes = workdir_lib.check(config, workdir, allow_config_change)
        no_checkpoints = not os.path.isdir(os.path.join(workdir, "checkpoints"))
        if no_checkpoints and distributed.is_main() and (warning := pretrained_warning(config)):
            print(warning)  # [multihost] the log is process 0's
        run = setup(config, workdir, changes, allow_config_change)
        train(run, counter)
        return finish(run)
    except BaseException as err:
        if (
            fresh and counter["steps"] == 0 and not isinstance(err, errors.NonFiniteLossError)
            and distributed.is_main()  # [multihost] the shared workdir is cleaned once
        ):
            _remove_contents(workdir, made)  # a failed start leaves no half-made workdir
        raise


def _first_missing(path: str) -> str | None:
    """The outermost folder of ``path`` that does not exist yet (``path`` itself, or a parent
    that creating it would make); None if ``path`` exists."""
    path = os.path.abspath(path)
    missing = None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _remove_contents(workdir: str, made: str | None) -> None:
    """Empties ``workdir``; if this run ``made`` it (and parents), removes those folders too."""
    if os.path.isdir(workdir):
        for name in os.listdir(workdir):
            path = os.path.join(workdir, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    if made is not None and os.path.isdir(made):
        folder = os.path.abspath(workdir)
        while os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
            if folder == made:
                break
            folder = os.path.dirname(folder)


def pretrained_warning(config: Config) -> str | None:
    """A warning when a paper config's backbone (ResNet/DeiT/ViT) has no ``model.pretrained``
    weights: the papers fine-tune ImageNet weights, random ones do not reproduce them. A config
    whose official run trains from scratch (DyML) sets ``model.pretrained = ""``: no warning."""
    name = str(config.model.name)
    if name == "mlp" or config.model.get("pretrained", None) is not None:
        return None
    return (
        f"WARNING: config.model.pretrained is not set: {name} starts from random weights, far from "
        f"the papers' numbers (they fine-tune ImageNet weights). Set "
        f"--config.model.pretrained=/path/to/{name}.pth (docs/models.md)"
    )


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Run:
    """What the phases of one run share. ``labels``: the training labels the loss sees;
    ``report``: the baselines' and final metrics by row of the printed table."""

    config: Config
    workdir: str
    data: RetrievalDataset
    mesh: Mesh
    sampler: Any
    model: Any
    labels: np.ndarray
    state: TrainState
    ckpt: checkpointing.Checkpointer
    history: list[dict[str, Any]]
    writer: Any
    evaluator: Any
    start: int
    report: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    #: Allowed config changes of a resumed run and the config they lead to, recorded in
    #: ``config.json`` once the run has trained a step (or finished): a start that fails before
    #: that leaves the record describing the checkpoints.
    changes: dict[str, tuple] = dataclasses.field(default_factory=dict)
    recorded: Config | None = None
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)  # workdir.run_facts


MODEL_SELECTIONS = ("last", "best")


def check_run_config(config: Config, data: RetrievalDataset, mesh: Mesh, sampler: Any) -> None:
    """The config keys a run needs checked before it writes anything: the batch divides over the
    devices, ``best_metric`` is an evaluation key, ``loss.hierarchical`` has label paths, the
    non-finite policy, ``model_selection``, ``precision`` and the frozen warm-up are valid."""
    if sampler.batch_size % mesh.size:
        raise errors.ConfigError(
            f"config.batch: the batch of {sampler.batch_size} images (classes_per_batch x "
            f"samples_per_class) does not divide over the {mesh.size} devices of the mesh: make it a "
            f"multiple of {mesh.size}, or set config.num_devices to a divisor of {sampler.batch_size}"
        )
    known = evaluators.evaluation_keys(config, np.shape(data.test.labels)[1:])
    if config.best_metric not in known:
        raise errors.ConfigError(
            f"config.best_metric={config.best_metric!r} is not an evaluation key; one of {sorted(known)}"
        )
    if config.loss.get("hierarchical", False) and np.asarray(data.train.labels).ndim != 2:
        raise errors.ConfigError(
            "config.loss.hierarchical=True ranks by label paths, but the training labels are flat "
            "class ids: set it False, or use a dataset with label paths (SOP, iNat, DyML, "
            "H-GLDv2, folders with a hierarchy; docs/data.md)"
        )
    guards.nonfinite_action(config)
    guards.max_consecutive_nonfinite(config)
    if config.get("model_selection", "last") not in MODEL_SELECTIONS:
        raise errors.ConfigError(
            f"config.model_selection must be 'last' or 'best', got {config.model_selection!r}"
        )
    state_lib.compute_dtype(config)
    epoch_start = optim.epoch_clock(sampler, len(data.train.labels))
    warm = optim.warmup(config, epoch_start)
    for finding in optim.inert_settings(config, epoch_start) if distributed.is_main() else ():
        print(f"WARNING: {finding}")
    if warm.epochs and distributed.is_main():
        print(
            f"Frozen warm-up: {', '.join(warm.groups)} frozen for {warm.epochs} epochs (steps "
            f"0-{warm.switch_step - 1}); every group trains from step {warm.switch_step} on"
        )


def restore(
    config: Config, workdir: str, state: TrainState, mesh: Mesh
) -> tuple[checkpointing.Checkpointer, TrainState, list[dict[str, Any]]]:
    """The checkpointer of ``workdir``, the newest readable checkpoint (or ``state``) replicated
    over ``mesh``, and its history."""
    os.makedirs(workdir, exist_ok=True)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config)
    state, history = ckpt.restore_latest(state)
    return ckpt, distributed.replicate(state, mesh), history  # [multihost] was jax.device_put


def run_length(config: Config, sampler: Any, num_items: int) -> Config:
    """``config`` with ``num_steps`` set to the first step of epoch ``config.num_epochs`` of
    the sampler (``sampler.epoch_start(num_epochs)``: exact for samplers whose epochs vary in
    length, as the official M-per-class one) when ``num_epochs > 0``; ``config`` itself
    otherwise. The workdir records the config as given (``num_epochs`` and the nominal
    ``num_steps``); everything else in the run uses the returned one."""
    epochs = int(config.get("num_epochs", 0) or 0)
    if epochs <= 0:
        return config
    steps = int(optim.epoch_clock(sampler, num_items)(epochs))
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.num_steps = steps
    if distributed.is_main():
        print(f"config.num_epochs={epochs}: {steps} steps (the sampler's epochs; num_steps ignored)")
    return resolved


def setup(config: Config, workdir: str, changes: dict, allow_config_change: Any = ()) -> Run:
    """Loads the data, builds the model and its state, checks the config and the data against
    the workdir's record, restores the newest checkpoint, records the config in ``workdir``
    and evaluates the baselines of a new run."""
    data = input_pipeline.load(config)
    mesh = state_lib.make_mesh(config)
    sampler = input_pipeline.make_sampler(config, data)
    recorded, config = config, run_length(config, sampler, len(data.train.labels))
    check_run_config(config, data, mesh, sampler)
    facts = workdir_lib.run_facts(data, mesh.size, jax.process_count())
    if jax.process_count() > 1:  # [multihost] each host lists its own files: the same ones?
        distributed.check_same_everywhere(
            workdir_lib.flat(facts["data"]), "data",
            "Every host must list the same items in the same order (the same dataset files, CSV and "
            "splits)",
        )
    changes = {**changes, **workdir_lib.fact_changes(workdir, facts, allow_config_change)}
    if distributed.is_main():  # [multihost] the log is process 0's
        print_fact_changes(changes)
    model = state_lib.build_model(config)
    # A checkpoint replaces the pretrained weights: a resume does not read their file (it may be
    # gone from a new node), unless no checkpoint turns out readable and the run starts afresh.
    resuming = bool(os.path.isdir(os.path.join(workdir, "checkpoints"))
                    and os.listdir(os.path.join(workdir, "checkpoints")))
    state = state_lib.initial_state(config, data, model, pretrained=not resuming)
    ckpt, state, history = restore(config, workdir, state, mesh)
    if resuming and ckpt.restored_step is None:
        state = distributed.replicate(state_lib.initial_state(config, data, model), mesh)
    if jax.process_count() > 1:  # [multihost] replicate() trusts that every copy is the same
        distributed.check_same_everywhere(
            {"restored_step": ckpt.restored_step, **checkpointing.state_checksums(state)}, "train states",
            "Every process must read the same checkpoints (a workdir shared by every host) and the "
            "same pretrained weights (config.model.pretrained)",
        )
    if distributed.is_main() and (note := schedule_jump(config, changes, int(state.step))):
        print(note)  # [multihost] the log is process 0's
    if int(state.step) > int(config.num_steps):
        ckpt.close()
        raise errors.ConfigError(
            f"workdir {workdir} holds a checkpoint of step {int(state.step)}, past config.num_steps="
            f"{int(config.num_steps)}: its model would be reported as the shorter run's. Evaluate an "
            "earlier step with experiments.evaluate --workdir DIR --step N, or use another --workdir"
        )
    # A new workdir's record; adopted checkpoints are noted in it at once (a start that fails
    # before its first step must not leave a record that hides them); changes wait (record_changes).
    adopted = {k: v for k, v in changes.items() if k == workdir_lib.UNRECORDED}
    changes = {k: v for k, v in changes.items() if k not in adopted}
    if distributed.is_main():  # [multihost]
        workdir_lib.write(recorded, workdir, adopted, facts=facts)
    run = Run(
        config=config,
        workdir=workdir,
        data=data,
        mesh=mesh,
        sampler=sampler,
        model=model,
        labels=losses.training_labels(config, data),
        state=state,
        ckpt=ckpt,
        history=history,
        writer=writers.summary_writer(workdir, int(state.step)),
        evaluator=evaluators.make_evaluator(config, data),
        start=int(state.step),
        changes=dict(changes),
        recorded=recorded,
        facts=facts,
    )
    run.report = baselines(run)
    return run


def schedule_jump(config: Config, changes: dict[str, tuple], step: int) -> str | None:
    """What a resume at ``step`` with an allowed ``num_steps`` change does to the learning
    rate: the schedule spans the run's length, so a decaying one restarts part-way (a cosine
    run extended from 40 to 60 steps goes from 0 back to a quarter of its peak). None when
    the rate at ``step`` stays within 0.1 % (a constant schedule), or for keys in epochs, which
    need the sampler's clock."""
    if "num_steps" not in changes or step == 0:
        return None
    old, new = changes["num_steps"]
    earlier = ml_collections.ConfigDict(config.to_dict())
    earlier.num_steps = old
    base = float(config.optimizer.lr)
    try:
        before, after = (float(optim.make_schedule(c, base)(step)) for c in (earlier, config))
    except (errors.ConfigError, ValueError, TypeError):
        return None
    if abs(after - before) <= 1e-3 * max(abs(before), abs(after)):
        return None
    return (f"config.num_steps {old} -> {new}: the {config.optimizer.schedule!r} learning-rate schedule "
            f"spans the new length, so at the resumed step {step} the rate goes from {before:.3g} (where "
            f"the {old}-step run was) to {after:.3g}")


def print_fact_changes(changes: dict[str, tuple]) -> None:
    """Says what a resumed run changes besides its config (recorded in ``config.json``)."""
    if "topology" in changes:
        (old, new) = changes["topology"]
        print(
            f"Resuming a run recorded on {old['processes']} process(es) x {old['devices']} devices on "
            f"{new['processes']} x {new['devices']}: it continues to within float32 rounding, not bit "
            "for bit (recorded in config.json)"
        )
    if "code" in changes:
        (old, new) = changes["code"]
        print(
            f"Resuming a run recorded with other code (rankax {old['rankax_version']}, commit "
            f"{old['git_commit']}; now {new['rankax_version']}, {new['git_commit']}): recorded in config.json"
        )
    if "data" in changes:
        print("Resuming a run recorded on other data (--allow_config_change=data): recorded in config.json")


def _evaluation_data_changed(changes: dict[str, tuple]) -> bool:
    """Whether this start's data change (``--allow_config_change=data``) touches the splits
    the run evaluates (test, gallery), not only the training split."""
    if "data" not in changes:
        return False
    old, new = changes["data"]
    return any(old.get(split) != new.get(split) for split in ("test", "gallery"))


def baselines(run: Run) -> dict[str, dict[str, float]]:
    """Raw pixels and the untrained network, evaluated at the start of a new run (and written
    to ``baselines.json``) or read back from it on a resume; a resume onto another test split
    (``--allow_config_change=data``) moves them to ``baselines.previous_data.json``: they were
    not evaluated on the split the run now evaluates."""
    path = os.path.join(run.workdir, "baselines.json")
    report: dict[str, dict[str, float]] = {}
    if run.start == 0 and run.config.eval_baselines:
        if isinstance(run.data.test, rankax.data.ArraySource):
            report["raw pixels"] = evaluators.raw_pixel_metrics(run.config, run.data)
        report["untrained"] = evaluate_model(run, run.state, 0)
        record_eval(run, report["untrained"], 0)  # history and TensorBoard, at step 0
        if distributed.is_main():  # [multihost]
            writers.write_json(path, report, indent=2)
    elif os.path.exists(path) and _evaluation_data_changed(run.changes):  # on data it no longer uses
        if distributed.is_main():  # [multihost]
            kept = os.path.join(run.workdir, "baselines.previous_data.json")
            os.replace(path, kept)
            print(f"The baselines were evaluated on the run's earlier data: moved to {kept}, not shown")
    elif os.path.exists(path):  # a resumed or finished run shows its whole table
        with open(path) as f:
            report.update(json.load(f))
    return report


# ----------------------------------------------------------------------------- steps


class Due(NamedTuple):
    """What happens after a step: logging, a periodic evaluation or checkpoint, the end."""

    log: bool
    eval: bool
    save: bool
    done: bool


def due_after(config: Config, step: int) -> Due:
    """:class:`Due` after step ``step`` (0-based; the step counter becomes ``step + 1``)."""
    n, done = step + 1, step + 1 == config.num_steps
    evaluate = bool(config.eval_every) and n % config.eval_every == 0 and not done
    save = n % config.checkpoint_every == 0 and not done
    # Skip mode logs its counters at every step that may be saved (evaluated steps are saved
    # under model_selection="best"): a resume restores them from the history.
    skip = guards.nonfinite_action(config) == "skip"
    return Due(
        log=n % max(1, int(config.log_every)) == 0 or done or (skip and (save or evaluate)),
        eval=evaluate,
        save=save,
        done=done,
    )


class Meter:
    """Training throughput over the current logging window: images per second without the
    compile (the window opens once the first step has run), evaluations and checkpoints; the
    share of the window the loop waited for its input; and the progress bar (shown from the
    second step on, so its ETA ignores the compile)."""

    def __init__(self):
        self.bar, self.opened = None, None
        self.images, self.waited, self.paused = 0, 0.0, 0.0
        self.warned = False

    def open(self) -> None:
        """Starts a new window."""
        self.opened, self.images, self.waited, self.paused = time.perf_counter(), 0, 0.0, 0.0

    def window(self) -> tuple[float, float]:
        """``(images per second, fraction of the time spent waiting for data)`` of the window
        (NaN before it opens)."""
        if self.opened is None:
            return float("nan"), float("nan")
        elapsed = max(time.perf_counter() - self.opened - self.paused, 1e-9)
        return self.images / elapsed, min(1.0, self.waited / elapsed)

    def tick(self, state: TrainState, step: int, total: int) -> None:
        """Step ``step`` (0-based) was dispatched."""
        if self.bar is None:
            jax.block_until_ready(state.step)  # the compile is over: rates start here
            self.bar = writers.progress(step + 1, total)
            self.open()
        else:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def batches(run: Run) -> loader.Timed:
    """``(step, indices, images, labels)`` for the remaining steps: read ahead by the input
    pipeline (:func:`rankax.train.input_pipeline.train_batches`; each process reads only its
    rows of the global batch) and put on the devices one batch ahead of the step
    (:func:`rankax.train.input_pipeline.place`: global arrays with several processes), the time
    the loop waits for them accounted."""
    sharding = NamedSharding(run.mesh, P("data"))
    put = lambda b: (b[0], b[1], *input_pipeline.place(b[2], b[1], run.labels, sharding))
    stop = int(run.config.num_steps)
    host = input_pipeline.train_batches(run.config, run.data, run.sampler, run.start, stop)
    return loader.Timed(loader.prefetch_to_device(host, put, size=2))


def train(run: Run, counter: dict[str, int]) -> None:
    """Steps ``run.start .. config.num_steps - 1``. Each step's finite flag is read while the
    next step runs (the guard acts one step late; a step that waits anyway reads its own)."""
    config = run.config
    preprocess = input_pipeline.device_preprocess(config, run.data)
    train_step = make_train_step(config, preprocess, run.mesh, run.labels.ndim, train_labels=run.labels)
    guard = guards.NonFiniteGuard(config, run.workdir, train_step, run.labels, run.ckpt, run.history)
    meter, halted, pending = Meter(), False, None
    if run.start < config.num_steps and distributed.is_main():  # [multihost] process 0 logs
        set_aside_final_metrics(run.workdir, int(config.num_steps))
        print(
            f"Training steps {run.start + 1}-{int(config.num_steps)} (the first one compiles) ...", flush=True
        )
    with contextlib.closing(batches(run)) as feed:  # an error or Ctrl-C stops the input workers
        for step, idx, images, labels in feed:
            run.state, metrics = train_step(run.state, images, labels, halted)
            halted = metrics["halted"]  # raise mode: a non-finite step makes the next one a no-op
            if pending is not None and guard.check(*pending, run.state):  # step - 1's flag, read
                record_changes(run)  # while step runs; a change is recorded once a step trained
            pending = (step + 1, idx, images, metrics)  # the step's number, as checkpoints count
            meter.images += len(idx)
            meter.waited += feed.take_waited()
            due = due_after(config, step)
            if any(due):  # these wait for the step anyway
                if guard.check(*pending, run.state):
                    record_changes(run)
                pending = None
            after_step(run, step, metrics, due, guard, meter)
            counter["steps"] += 1
            meter.tick(run.state, step, config.num_steps)
    meter.close()


def set_aside_final_metrics(workdir: str, num_steps: int) -> None:
    """Training resumes in a workdir holding final metrics: the ``metrics.json`` of that end
    becomes ``metrics.step<N>.json``, N the last step of the ``history.json`` written with it
    (the resume may start from an earlier checkpoint), so that a ``metrics.json`` always belongs
    to the run's latest end, never to an earlier one while training goes on. The message says
    why: a run extended past N (``num_steps`` > N), or steps up to N redone (its newest
    checkpoints were unreadable)."""
    path = os.path.join(workdir, "metrics.json")
    if not os.path.exists(path):
        return
    try:
        with open(os.path.join(workdir, "history.json")) as f:
            end = int(json.load(f)[-1]["step"])
    except (OSError, ValueError, LookupError, TypeError):  # no readable history: no step to name
        end = None
    kept = os.path.join(workdir, "metrics.previous.json" if end is None else f"metrics.step{end}.json")
    os.replace(path, kept)
    if end is not None and end < num_steps:
        why = f"Training past the run's earlier end (step {end}) to step {num_steps}"
    elif end is not None:
        why = f"Training again up to step {end}, from an earlier checkpoint than the run's end"
    else:
        why = "Training in a workdir holding final metrics without a readable history.json"
    print(f"{why}: the final metrics found are now {kept}")


def record_changes(run: Run) -> None:
    """Appends the run's allowed config changes to ``config.json`` (once)."""
    if run.changes and distributed.is_main():  # [multihost]
        workdir_lib.write(run.recorded, run.workdir, run.changes, run.facts)
    run.changes = {}


def after_step(
    run: Run, step: int, metrics: dict, due: Due, guard: guards.NonFiniteGuard, meter: Meter
) -> None:
    """Logging, periodic evaluation and checkpoint after step ``step`` as ``due`` says (the
    time of the last two is left out of the throughput window). An evaluated step is saved
    with its metrics (so the checkpointer keeps the best one) when ``due.save`` or when
    ``config.model_selection="best"`` needs it."""
    if due.log:
        log_step(run, step + 1, metrics, guard, meter)
    t = time.perf_counter()
    evaluated = evaluate_at(run, step + 1) if due.eval else None
    best = run.config.get("model_selection", "last") == "best"
    if due.save or (best and evaluated is not None):
        run.writer.flush()  # the events up to this checkpoint survive a kill
        run.ckpt.save(run.state, run.history, metrics=evaluated)
    meter.paused += time.perf_counter() - t


INPUT_BOUND = 0.1  # a window that waited for data this share of its time or more is input-bound


def log_step(run: Run, n: int, metrics: dict, guard: guards.NonFiniteGuard, meter: Meter) -> None:
    """Appends the training entry of step counter ``n`` to the history and TensorBoard: images
    per second and the share of time spent waiting for data over the window since the last
    entry, the loss (a skipped step logs none) and in skip mode the skipped count; then opens a
    new window. An input-bound window of an image dataset is reported once.

    With several processes, the rate counts the global batch and the data-wait share is this
    process's own (its rows, its input pipeline); only process 0's entries are written
    (TensorBoard, ``history.json``) and reported -- the other processes' writer and progress
    bar are each a :class:`~rankax.train.distributed.NullWriter`."""
    rate, waiting = meter.window()
    entry: dict[str, Any] = {"step": n}
    if meter.opened is not None:  # no rate for the compiling first step (history.json has no NaN)
        entry.update(images_per_s=rate, data_wait_fraction=waiting)
    if bool(metrics["finite"]):
        entry["loss"] = float(metrics["loss"])
        run.writer.add_scalar("train/loss", entry["loss"], n)
        if meter.bar is not None:
            meter.bar.set_postfix(loss=f"{entry['loss']:.4f}", img_s=f"{rate:.0f}", wait=f"{waiting:.0%}")
    if guard.action == "skip":
        entry.update(nonfinite_skipped=guard.skipped, nonfinite_consecutive=guard.consecutive)
        run.writer.add_scalar("train/nonfinite_skipped", guard.skipped, n)
    run.history.append(entry)
    if meter.opened is not None:
        run.writer.add_scalar("train/images_per_s", rate, n)
        run.writer.add_scalar("train/data_wait_fraction", waiting, n)
        meter.open()
    input_bound = waiting >= INPUT_BOUND and input_pipeline.is_image_source(run.data.train)
    if input_bound and not meter.warned and distributed.is_main():  # [multihost] process 0 logs
        meter.warned = True
        print(
            f"Input-bound: the step waited for data {waiting:.0%} of the time up to step {n} "
            f"({rate:.0f} img/s); more decoding processes (config.input.workers, now "
            f"{input_pipeline.workers(run.config)}) or faster storage would speed training up.",
            flush=True,
        )


def record_eval(run: Run, metrics: dict[str, float], n: int) -> None:
    """``metrics`` as the evaluation entry of step counter ``n`` (history and TensorBoard), with
    the rate at which the evaluator embedded its images (``eval_images_per_s``, decoding
    included) when it measures one."""
    run.history.append({"step": n, **{f"eval/{k}": v for k, v in metrics.items()}})
    writers.write_scalars(run.writer, "eval", metrics, n)
    rate = getattr(getattr(run.evaluator, "embedder", None), "images_per_s", None)
    if rate is not None:
        run.history[-1]["eval_images_per_s"] = rate
        run.writer.add_scalar("eval_speed/images_per_s", rate, n)


def evaluate_at(run: Run, n: int) -> dict[str, float]:
    """Evaluates the current state and records it at step counter ``n``; a
    :class:`NonFiniteEvaluationError` if the model's test embeddings are not finite."""
    metrics = evaluate_model(run, run.state, n)
    record_eval(run, metrics, n)
    return metrics


def evaluate_model(run: Run, state: Any, n: int) -> dict[str, float]:
    """The evaluation of ``state`` (the model at step ``n``), or a
    :class:`NonFiniteEvaluationError` naming the step if its test embeddings are not finite
    (every evaluation of a run: baseline, periodic, final and the selected model's)."""
    try:
        return evaluators.evaluate_state(run.config, state, run.data, run.evaluator)
    except exact.NonFiniteEmbeddingsError as err:
        raise errors.NonFiniteEvaluationError(
            f"the model's test embeddings at step {n} are not finite ({err}): the run diverged. Resume "
            "from an earlier checkpoint with a lower config.optimizer.lr, or set "
            "config.on_nonfinite='raise' to stop at the first non-finite training step", step=n,
        ) from err


# ----------------------------------------------------------------------------- finish


def best_step(run: Run) -> int | None:
    """:func:`rankax.train.evaluators.best_step` of the run's history and checkpoints."""
    return evaluators.best_step(run.history, run.config.best_metric, run.ckpt.has)


def select_model(run: Run, final: dict[str, float]) -> tuple[dict[str, float], int]:
    """``(metrics, step)`` of the model the run reports: with ``config.model_selection="last"``
    the final state; with ``"best"`` the checkpoint of :func:`best_step`, restored and
    evaluated again (the final state when it is the best)."""
    step = int(run.state.step)
    if run.config.get("model_selection", "last") != "best":
        return final, step
    chosen = best_step(run)
    if chosen is None or chosen == step:
        return final, step
    state, _ = run.ckpt.restore(run.state, chosen)
    return evaluate_model(run, state, chosen), chosen


def finish(run: Run) -> dict[str, float]:
    """The final evaluation (recorded unless this step's is already in the history), the final
    checkpoint (unless it exists), the model selection (:func:`select_model`), the printed
    table and the output files. Returns the metrics of the selected model (``metrics.json``)."""
    final = evaluate_model(run, run.state, int(run.state.step))
    record_changes(run)  # a resume that trained no step records its changes here
    step = int(run.state.step)
    last = run.history[-1] if run.history else {}
    if not (last.get("step") == step and any(k.startswith("eval/") for k in last)):
        record_eval(run, final, step)
    run.writer.close()
    if step > run.start or not run.ckpt.has(step):
        run.ckpt.save(run.state, run.history, metrics=final)
    selected, chosen = select_model(run, final)
    run.ckpt.close()
    run.report["trained"] = final
    if chosen != step:
        run.report[f"selected (best {run.config.best_metric}, step {chosen})"] = selected
        if distributed.is_main():
            print(f"Model selection 'best': step {chosen} has the best {run.config.best_metric}")
        final = selected
    if not distributed.is_main():  # [multihost] the table, metrics.json, history and plots: process 0
        return final
    writers.print_table(run.report)
    outputs = write_outputs(run, final)
    print("Wrote " + ", ".join(outputs) + f" (checkpoints in {run.ckpt.directory})")
    return final


def write_outputs(run: Run, final: dict[str, float]) -> list[str]:
    """``metrics.json``, ``history.json``, ``training_curves.png`` and, for an in-memory test
    split, ``test_embeddings.png``; returns their paths."""
    outputs = [os.path.join(run.workdir, n) for n in ("metrics.json", "history.json", "training_curves.png")]
    writers.write_json(outputs[0], final, indent=2)
    writers.write_json(outputs[1], run.history)
    plotting.training_curves(run.history, outputs[2], baselines=run.report)
    if isinstance(run.data.test, rankax.data.ArraySource):
        outputs.append(os.path.join(run.workdir, "test_embeddings.png"))
        plot_embeddings(run, outputs[-1])
    return outputs


def plot_embeddings(run: Run, path: str) -> None:
    """A 2-D projection of the trained test embeddings next to the untrained ones (with
    ``config.eval_baselines``), coloured by the finest label."""
    bs = int(run.config.eval_batch_size)
    emb = evaluators.embed_source(run.state, run.data.test, bs)
    labels = np.asarray(run.data.test.labels)
    labels = labels if labels.ndim == 1 else labels[:, 0]
    before = None
    if run.config.eval_baselines:  # the untrained network's embeddings, for the "before" panel
        try:
            initial = state_lib.initial_state(run.config, run.data, run.model)
        except errors.ConfigError as err:  # a resume on a node without the pretrained weights: no panel
            print(f"test_embeddings.png: no 'before' panel ({err})")
        else:
            before = evaluators.embed_source(initial, run.data.test, bs)
    plotting.embedding_projection(emb, labels, path, before=before, report=run.report)
