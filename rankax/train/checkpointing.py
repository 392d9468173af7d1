"""Orbax checkpoints of the train state, keeping the last ``k`` and the best one.

Layout: ``<dir>/<step>/{state,history,checksums,metrics}``. ``state`` is the pytree (step,
params, batch stats, optimizer state, RNG, cross-batch memory, and the loss terms' parameters
with their optimizer state when there are some); ``history`` the logged curve so plots survive
a resume; ``checksums`` a SHA-256 of every array of ``state`` (:func:`leaf_checksums`, checked
when the step is read; steps written before it existed are read unchecked); ``metrics`` the
evaluation of an evaluated step (which one is best survives a restart). Saving is
synchronous: when ``save`` returns, the step is on disk, so an interrupted run loses at most
the steps since the last checkpoint.

Faults (``docs/training.md``, Faults):

* A save writes into ``<dir>/<step>.orbax-checkpoint-tmp*`` and renames it to
  ``<dir>/<step>`` when complete, so a process killed mid-save leaves a temporary folder,
  never a step. Opening a writable ``Checkpointer`` removes such leftovers (and says so).
* A save that fails (disk full, I/O error) removes its partial output, deletes no older
  checkpoint (orbax garbage-collects only after a complete save) and raises
  :class:`~rankax.train.CheckpointSaveError` naming the step and directory.
* :meth:`Checkpointer.restore_latest` skips a step that cannot be read, says which and why,
  moves it to ``<dir>.corrupt/<step>`` (writable mode; ``<step>.1``, ... if taken: never
  replacing what was moved aside before) and uses the previous one; a step written for another
  model or config (:meth:`Checkpointer.mismatch`) is refused, never moved;
  :meth:`Checkpointer.restore` of one given step raises
  :class:`~rankax.train.CheckpointReadError` naming the step and path instead.

Multi-process runs (``docs/multihost.md``): every process constructs the ``Checkpointer`` on
the same shared directory and calls ``save`` / ``restore`` (orbax coordinates the processes;
a replicated state is written once, by process 0, and read whole by each). The state is
stored as whole arrays, whatever the mesh, so a checkpoint written by ``n`` processes
restores in any other number of processes. Housekeeping of the shared directory -- removing
the partial output of a failed save, moving an unreadable step to ``<dir>.corrupt`` -- is done
once, by process 0, and the others wait at a barrier (bounded by ``BARRIER_TIMEOUT_S``) before
they look at the directory again. Warnings are printed by process 0.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from rankax.train import distributed, workdir
from rankax.train.errors import CheckpointReadError, CheckpointSaveError

_POLICIES = ocp.checkpoint_managers
METRICS_ITEM = "metrics"  # orbax's folder and file of a step's metrics: <step>/metrics/metrics
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's temporary-folder marker (atomic rename)
_SCANS = itertools.count()  # barrier names unique per writable Checkpointer of a process
BARRIER_TIMEOUT_S = 300  # multi-process: how long the others wait for process 0's housekeeping


class _NoMetricsWarning(logging.Filter):
    """Drops orbax's warning that a save came without metrics (``best_fn`` is set so that the
    metrics of evaluated steps are stored; the periodic saves between evaluations have none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


class _OneLineWriteErrors(logging.Filter):
    """Keeps one line of each error orbax's writer threads log (``_SignalingThread.run()
    raised an exception: ...``) and drops its traceback, about 50 lines of orbax internals per
    thread. The same exception then reaches :meth:`Checkpointer.save` /
    :meth:`Checkpointer.wait`, which raise :class:`CheckpointSaveError` with it chained."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "_SignalingThread.run() raised an exception" in record.getMessage():
            record.exc_info, record.exc_text = None, None
        return True


class _OneLineUnretrievedWrites(logging.Filter):
    """Keeps one line of asyncio's "Task exception was never retrieved" for an ``OSError`` of
    an orbax coroutine (a write of a failed save, on a full disk say, that orbax never awaited)
    and drops its traceback: the save's :class:`CheckpointSaveError` reports the error. Other
    records, other exceptions and other coroutines' errors pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        orbax = f"{os.sep}orbax{os.sep}" in message  # the task's coroutine: defined at .../orbax/...
        if "exception was never retrieved" in message and isinstance(exc, OSError) and orbax:
            record.msg, record.args = f"{message.splitlines()[0]}: {exc!r}", ()
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("absl").addFilter(_NoMetricsWarning())
logging.getLogger("absl").addFilter(_OneLineWriteErrors())
logging.getLogger("asyncio").addFilter(_OneLineUnretrievedWrites())


def _quiet_closed_loops() -> None:
    """When a save fails, the writes orbax still had in flight complete on the event loop it
    has closed, and Python prints each one's ``RuntimeError: Event loop is closed`` with its
    traceback (a dozen on a full disk) through ``sys.unraisablehook``: drop exactly those, and
    pass every other unraisable exception to the hook installed before. Installed by the
    first save of the process (the complaints arrive while that save is awaited)."""
    previous = sys.unraisablehook
    if getattr(previous, "rankax_quiet_closed_loops", False):
        return

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            previous(unraisable)

    hook.rankax_quiet_closed_loops = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _saved_fields(state: Any) -> dict[str, Any]:
    """The saved pytree; the loss terms' parameters and optimizer state only when the state
    has some (so checkpoints of runs without such terms keep their layout)."""
    fields = {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "rng": state.rng,
        "memory": state.memory,
    }
    if getattr(state, "loss_params", None):
        fields.update(loss_params=state.loss_params, loss_opt_state=state.loss_opt_state)
    return fields


#: The fields of a saved state that a ``model_only`` restore reads into the template: the step
#: counter and the model's variables, what evaluation uses.
MODEL_FIELDS = ("step", "params", "batch_stats")


def _unused_path(path: str) -> str:
    """``path``, or ``path.1``, ``path.2``, ... the first that does not exist: a step moved
    aside never replaces one moved aside before (which may be another run's only copy)."""
    candidate, n = path, 0
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{path}.{n}"
    return candidate


#: The item of a step that holds a SHA-256 of every array of its state.
CHECKSUMS = "checksums"


def _leaf_checksum(x: Any) -> str | None:
    """SHA-256 of an array's dtype, shape and bytes; None for an array split across processes
    (its bytes are not all here, and another topology would split them otherwise)."""
    if isinstance(x, jax.Array):
        if not x.is_fully_addressable:
            if not x.is_fully_replicated:
                return None
            x = x.addressable_data(0)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
    return workdir.array_sha256(np.asarray(x))


def state_checksums(state: Any) -> dict[str, str | None]:
    """:func:`leaf_checksums` of everything a checkpoint saves of ``state`` (with several
    processes, of this process's copy of each replicated array)."""
    return leaf_checksums(_saved_fields(state))


def leaf_checksums(fields: dict[str, Any]) -> dict[str, str | None]:
    """``{"params/Dense_0/kernel": sha256, ...}`` for every array of a saved state: written with
    each step and compared when it is read, so that data changed on disk (flipped bits, an
    incomplete copy that still decompresses) is an unreadable step, not a silently wrong model."""
    return {k: _leaf_checksum(v) for k, v in ocp.tree.to_flat_dict(fields, sep="/").items()}


def _checksum_mismatch(fields: dict[str, Any], stored: dict[str, str | None]) -> str | None:
    """The first array of ``fields`` whose checksum differs from ``stored`` (None: all agree)."""
    now = leaf_checksums(fields)
    for key in sorted(stored):
        if stored[key] is not None and now.get(key) is not None and now[key] != stored[key]:
            return key
    return None


def _unreadable_metrics(directory: str) -> list[tuple[int, str, Exception]]:
    """``(step, path, error)`` of each step folder whose orbax ``metrics`` file is not JSON."""
    found = []
    names = sorted(n for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []
    for name in names:
        path = os.path.join(directory, name, METRICS_ITEM, METRICS_ITEM)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as f:
                json.loads(f.read())
        except (ValueError, OSError) as err:  # JSONDecodeError, UnicodeDecodeError, unreadable
            found.append((int(name), path, err))
    return found


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(err).__name__}: {line[:limit]}"


@dataclasses.dataclass
class EarliestBest:
    """Orbax preservation policy keeping the one checkpoint with the highest ``metric_of(metrics)``,
    the earliest step on a tie: :func:`rankax.train.evaluators.best_step`'s rule, which reports
    it. (orbax's ``BestN`` kept the latest tied step, so the earlier one, the step reported, was
    deleted once it left the last ``keep_checkpoints`` saves: the model reported depended on
    ``keep_checkpoints``.) Steps without metrics are not kept by this policy."""

    metric_of: Callable[[Any], float]

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        del context
        scored = [(self.metric_of(c.metrics), -int(c.step), i)
                  for i, c in enumerate(checkpoints) if c.metrics is not None]
        best = max(scored)[2] if scored else None
        return [i == best for i in range(len(checkpoints))]


class Checkpointer:
    """Saves/restores a ``TrainState``.

    Args:
      directory: where step folders go (created unless ``read_only``).
      config: reads ``keep_checkpoints`` (last k kept) and ``best_metric`` (a key of the
        evaluation dict, higher is better; the best checkpoint is kept too).
      read_only: for evaluation next to a running job: creates, cleans, moves and deletes
        nothing (an unreadable step is only skipped).
      model_only: restore the step and the model's variables (``MODEL_FIELDS``) and compare only
        those with the template; the template keeps its optimizer state, RNG, cross-batch
        memory and loss-term state. For evaluation, where a config override may reshape what
        the model does not use (a dataset with another number of training classes resizes a
        loss's proxies, another ``xbm.size`` its memory).
    """

    def __init__(self, directory: str, config: ml_collections.ConfigDict, read_only: bool = False,
                 model_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.read_only = bool(read_only)
        self.model_only = bool(model_only)
        best_metric = config.get("best_metric", "map@r")
        self.best_metric = best_metric
        # A step evaluated before best_metric changed (allowed config change, other eval_ks) may
        # lack the key, and a diverged evaluation is NaN: both rank last (orbax compared NaN as
        # it came, kept a NaN step as the best and deleted the real one).
        def metric_of(metrics: dict[str, Any]) -> float:
            value = float(metrics.get(best_metric, -math.inf))
            return -math.inf if math.isnan(value) else value
        policy = _POLICIES.AnyPreservationPolicy(
            policies=[
                _POLICIES.LatestN(n=int(config.get("keep_checkpoints", 3))),
                EarliestBest(metric_of),
            ]
        )
        if not self.read_only and distributed.is_main():  # orbax removes them on process 0
            self._report_leftovers()
        if not self.read_only:
            self._set_aside_unreadable_metrics()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            # With a best_fn orbax writes each step's metrics into its folder and reads them
            # back on open; without one the BestN policy above only knew the metrics of this
            # process's saves, and the first save after a resume deleted the best checkpoint.
            best_fn=metric_of,
            best_mode="max",
            enable_async_checkpointing=False,
            create=not self.read_only,
            read_only=self.read_only,
            # a save interrupted by a kill leaves <step>.orbax-checkpoint-tmp-*: removed here
            cleanup_tmp_directories=not self.read_only,
            # Read-only: no step's metrics read on open (orbax reads every step's, and one
            # unreadable file would stop evaluating any step; the best step comes from history).
            lightweight_initialize=self.read_only,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options)
        self.restored_step: int | None = None  # set by restore/restore_latest

    def _set_aside_unreadable_metrics(self) -> None:
        """Moves each step whose ``metrics`` file is not JSON (edited, or copied incompletely)
        to ``<directory>.corrupt/<step>`` before orbax opens the directory: orbax reads every
        step's metrics on open, and one such file stopped the run with a bare JSONDecodeError.
        The step's state is not used, as for any unreadable step (at most one checkpoint
        interval is lost when it was the newest). Process 0 moves; the others wait."""
        if distributed.is_main():
            for step, path, err in _unreadable_metrics(self.directory):
                aside = self._move_aside(step)
                print(f"WARNING: checkpoint step {step}: its metrics file {path} is unreadable "
                      f"({_first_line(err)}); moved to {aside}")
        distributed.barrier(f"metrics-scan-{next(_SCANS)}", BARRIER_TIMEOUT_S)

    def _corrupt_path(self, step: int) -> str:
        return os.path.join(self.directory + ".corrupt", str(step))

    def _move_aside(self, step: int) -> str:
        """Moves step ``step`` to ``<directory>.corrupt/<step>`` (``<step>.1``, ... if taken: never
        replacing what was moved before); returns where (the caller is process 0)."""
        aside = _unused_path(self._corrupt_path(step))
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.move(self.step_path(step), aside)
        return aside

    def _partial_saves(self, step: int | None = None) -> list[str]:
        pattern = f"{'*' if step is None else step}{TMP_SUFFIX}*"
        return sorted(glob.glob(os.path.join(glob.escape(self.directory), pattern)))

    def _report_leftovers(self) -> None:
        for path in self._partial_saves():
            print(
                f"WARNING: removing {path}: the partial output of a checkpoint save that did not "
                "complete (process killed or failed mid-write); it was never a usable step"
            )

    def steps(self) -> list[int]:
        """The complete checkpoint steps on disk, ascending."""
        return sorted(self._mngr.all_steps())

    def has(self, step: int) -> bool:
        return step in self._mngr.all_steps()

    def latest(self) -> int | None:
        """The newest complete step (None: none)."""
        steps = self.steps()
        return steps[-1] if steps else None

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(
        self, state: Any, history: list[dict[str, Any]], metrics: dict[str, float] | None = None
    ) -> None:
        """Writes ``state`` as step ``state.step``; returns when it is on disk.

        Raises:
          CheckpointSaveError: the write failed (e.g. ``errno.ENOSPC``); its partial output is
            removed and every older checkpoint is left in place.
        """
        step = int(state.step)
        previous = self.latest()
        fields = _saved_fields(state)
        _quiet_closed_loops()  # before: a failing save's complaints arrive while it is waited for
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(fields),
            history=ocp.args.JsonSave(history),
            checksums=ocp.args.JsonSave(leaf_checksums(fields)),
        )
        try:
            self._mngr.save(step, args=args, metrics=metrics, force=True)
            self._mngr.wait_until_finished()
        except Exception as err:
            removed = self._remove_partial_saves(step) if distributed.is_main() else []
            distributed.barrier(f"failed-save-{step}", BARRIER_TIMEOUT_S)
            self._mngr.reload()
            kept = "none" if previous is None else f"step {previous} ({self.step_path(previous)}) is intact"
            raise CheckpointSaveError(
                f"saving checkpoint step {step} into {self.directory} failed ({_first_line(err)}); "
                f"its partial output was removed ({len(removed)} folder(s)), no older checkpoint was "
                f"deleted; newest usable checkpoint: {kept}",
                step=step,
                directory=self.directory,
                previous=previous,
                errno=getattr(err, "errno", None),
            ) from err

    def _remove_partial_saves(self, step: int, settle_s: float = 0.3, limit_s: float = 10.0) -> list[str]:
        """Deletes the temporary folders of a failed save of ``step``. The items of a save are
        written concurrently, and those still in flight when one failed may land after a first
        deletion: delete until the folder stays absent for ``settle_s``. (Anything left is
        removed when a writable ``Checkpointer`` next opens the directory; it is never a step.)"""
        removed: set[str] = set()
        quiet_since, deadline = time.monotonic(), time.monotonic() + limit_s
        while time.monotonic() - quiet_since < settle_s and time.monotonic() < deadline:
            paths = self._partial_saves(step)
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)
            if paths:
                removed.update(paths)
                quiet_since = time.monotonic()
            time.sleep(0.05)
        return sorted(removed)

    def restore(self, state: Any, step: int) -> tuple[Any, list[dict[str, Any]]]:
        """``(state, history)`` of checkpoint ``step`` exactly (no fallback).

        Raises:
          CheckpointReadError: ``step`` is not a complete checkpoint here, or cannot be read
            (truncated, corrupted, another model's tree); names the step and path, and chains
            the underlying error.
        """
        path = self.step_path(step)
        if not self.has(step):
            partial = self._partial_saves(step)
            why = f"only an incomplete save exists ({partial[0]})" if partial else "it does not exist"
            raise CheckpointReadError(
                f"checkpoint step {step} is not usable: {why}; complete steps in {self.directory}: "
                f"{self.steps()}",
                step=step,
                path=path,
            )
        others = f"Other complete steps: {[s for s in self.steps() if s != step]}"
        # Compared before reading: a read that fails part-way leaves orbax's pending reads to
        # die noisily on a closed event loop.
        if mismatch := self.mismatch(state, step):
            raise CheckpointReadError(
                f"checkpoint step {step} at {path} cannot be read (written for another model/config: "
                f"{mismatch}). {others}",
                step=step,
                path=path,
            )
        try:
            restored = self._read(state, step)
        except Exception as err:
            raise CheckpointReadError(
                f"checkpoint step {step} at {path} cannot be read (truncated or corrupted; "
                f"{_first_line(err)}). {others}",
                step=step,
                path=path,
            ) from err
        self.restored_step = step
        return restored

    def _read(self, state: Any, step: int) -> tuple[Any, list[dict[str, Any]]]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _saved_fields(state))
        if self.model_only:
            abstract = self._as_stored_beyond_model(abstract, step)
        items = dict(state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore())
        checked = os.path.isdir(os.path.join(self.step_path(step), CHECKSUMS))  # older steps: none
        if checked:
            items[CHECKSUMS] = ocp.args.JsonRestore()
        restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
        fields = restored["state"]
        if checked and (wrong := _checksum_mismatch(fields, restored[CHECKSUMS])):
            raise ValueError(f"the data of {wrong} differ from the checksum written with them (bit rot, "
                             "or a file edited or copied incompletely)")
        held = int(np.asarray(fields["step"]))
        if held != step:
            raise ValueError(f"the folder of step {step} holds the state of step {held}")
        if self.model_only:
            fields = {name: fields[name] for name in MODEL_FIELDS}
        return state.replace(**fields), list(restored["history"] or [])

    def _as_stored_beyond_model(self, abstract: dict[str, Any], step: int) -> dict[str, Any]:
        """``abstract`` for the model's fields and, for the others, the shapes and dtypes stored
        at ``step`` (each read whole onto the step counter's devices, then dropped): the
        checksums and orbax's tree check cover every saved array, whatever this config makes
        of them."""
        stored = self._stored_tree(step)
        if stored is None:  # unreadable metadata: orbax's read of the template says why
            return abstract
        like = abstract["step"].sharding

        def spec(meta: Any) -> jax.ShapeDtypeStruct:
            return jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=like)

        out = {name: abstract[name] for name in MODEL_FIELDS}
        out.update({name: jax.tree.map(spec, tree)
                    for name, tree in stored.items() if name not in MODEL_FIELDS})
        return out

    def _stored_tree(self, step: int) -> dict[str, Any] | None:
        """The metadata tree (one ``ArrayMetadata`` per array) of the state saved at ``step``, or
        None when orbax cannot read it (it returns no tree rather than raising)."""
        meta = ocp.StandardCheckpointer().metadata(os.path.join(self.step_path(step), "state"))
        return None if meta.item_metadata is None else meta.item_metadata.tree

    def restore_latest(self, state: Any) -> tuple[Any, list[dict[str, Any]]]:
        """``(state, history)`` from the newest readable checkpoint, or the inputs if none.

        An unreadable step is reported (step, path, error, the step tried next) and, unless
        ``read_only``, moved to ``<directory>.corrupt/<step>``.
        """
        for step in sorted(self._mngr.all_steps(), reverse=True):
            if mismatch := self.mismatch(state, step):  # not this config's model: never quarantined
                fix = ("evaluate it with the config it was trained with (the workdir's record, without "
                       "--config or --config.model.* overrides)"
                       if self.read_only else
                       "resume with the config it was trained with, or use a fresh workdir")
                raise CheckpointReadError(
                    f"checkpoint step {step} at {self.step_path(step)} was written for another "
                    f"model/config ({mismatch}); {fix}",
                    step=step,
                    path=self.step_path(step),
                )
            try:
                restored, error = self._read(state, step), None
            except Exception as err:  # noqa: BLE001 - any read failure means "not usable"
                restored, error = None, err
            # [multihost] one verdict for all: a step unreadable on one host is skipped by every
            # process (each went on with its own choice and met the others in no collective)
            failed = distributed.processes_where(error is not None)
            if failed and error is None:
                error = OSError(f"unreadable on process(es) {failed}")
            if error is not None:
                self._skip_unreadable(step, error)
                continue
            if distributed.is_main():
                action = "Reading" if self.read_only else "Resuming from"  # evaluation / training
                print(f"{action} checkpoint step {step} in {self.directory}")
            self.restored_step = step
            return restored
        return state, []

    def mismatch(self, state: Any, step: int) -> str | None:
        """How the tree stored at ``step`` differs from this config's state (names and shapes of
        the parameters, batch statistics, optimizer state, cross-batch memory and loss-term
        state; under ``model_only`` of the step and the model's variables only), or None when
        they agree or the metadata itself cannot be read.

        A difference means another model or config wrote the step (an allowed config change
        that reshapes the state, e.g. ``xbm.size`` or ``optimizer.name``, included): the caller
        refuses it, never treats it as corruption."""
        try:
            tree = self._stored_tree(step)
            if tree is None:
                return None
            stored = self._compared(ocp.tree.to_flat_dict(tree, sep="/"))
        except Exception:  # noqa: BLE001 - unreadable metadata: corruption, not a mismatch
            return None
        wanted = self._compared(ocp.tree.to_flat_dict(_saved_fields(state), sep="/"))
        missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
        if missing or extra:
            return f"missing from the checkpoint: {missing[:5]}, not in this config's state: {extra[:5]}"
        for key in sorted(wanted):
            got = tuple(getattr(stored[key], "shape", ()) or ())
            if got != tuple(np.shape(wanted[key])):
                return f"{key} is {got} on disk, {tuple(np.shape(wanted[key]))} in this config"
        return None

    def _compared(self, flat: dict[str, Any]) -> dict[str, Any]:
        """The entries of a flat state tree that a restore uses: all of them, or under
        ``model_only`` those of ``MODEL_FIELDS``."""
        if not self.model_only:
            return flat
        return {key: value for key, value in flat.items() if key.split("/", 1)[0] in MODEL_FIELDS}

    def _skip_unreadable(self, step: int, err: Exception) -> None:
        """Reports an unreadable step and (writable mode) moves it to
        ``<directory>.corrupt/<step>``, kept for inspection, out of the way of the step that
        will be written again."""
        path = self.step_path(step)
        older = [s for s in self.steps() if s < step]
        fallback = f"trying step {older[-1]}" if older else "no older checkpoint: starting from step 0"
        if self.read_only:
            where = "left in place (read-only)"
        else:
            aside = _unused_path(self._corrupt_path(step))
            if distributed.is_main():  # once, on the shared directory; the others wait
                aside = self._move_aside(step)
            distributed.barrier(f"quarantine-{step}", BARRIER_TIMEOUT_S)
            self._mngr.reload()
            where = f"moved to {aside}"
        # The whole error (KBs of tensorstore spec) at INFO; the warning below prints its first line.
        logging.info("checkpoint %s is unreadable: %s", path, err)
        if not distributed.is_main():
            return
        print(
            f"WARNING: checkpoint step {step} at {path} is unreadable ({_first_line(err)}); "
            f"{where}; {fallback}"
        )

    def close(self) -> None:
        self._mngr.close()
