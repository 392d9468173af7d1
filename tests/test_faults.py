"""Training faults (issue 9): non-finite steps, kill -9 mid-save, truncated checkpoints, disk full.

Every run here is the same tiny digits MLP for 8 steps; a clean reference run checkpoints every
step, so each faulty run is compared bit for bit with the reference state of the step it
should hold (checkpoint cadence does not change the trajectory).
"""

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import flax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from rankax.data import ArraySource
from rankax.train import (
    CheckpointReadError,
    CheckpointSaveError,
    ConfigError,
    NonFiniteLossError,
    WorkdirConfigMismatch,
    checkpointing,
    input_pipeline,
    train_lib,
)
from tests.test_train import tiny_config

# orbax leaves its writes orphaned by an injected failure to finish on a closed event loop
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


def fault_config(**overrides):
    """8 steps of the tiny MLP, checkpoint every 2, no intermediate evaluation. The loss is the
    contrastive one: the faults do not depend on it and its step compiles in half the time."""
    base = dict(num_steps=STEPS, checkpoint_every=2, eval_every=0, eval_baselines=False, log_every=1)
    c = tiny_config(**{**base, **overrides})
    c.loss.name = "contrastive"
    return c


def saved_state(workdir, step):
    """The flat ``{path: array}`` of checkpoint ``step`` (read with plain orbax)."""
    mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    mngr.close()
    return {k: np.asarray(v) for k, v in ocp.tree.to_flat_dict(restored["state"]).items()}


def assert_same(a, b, skip=()):
    assert a.keys() == b.keys()
    for k in a:
        if k[0] not in skip:
            np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


def assert_same_params(state, saved):
    """``state.params`` (in memory) equals the params of a ``saved_state``, bit for bit."""
    got = ocp.tree.to_flat_dict(state.params)
    assert got.keys() == {k[1:] for k in saved if k[0] == "params"}
    for k, v in got.items():
        np.testing.assert_array_equal(np.asarray(v), saved[("params", *k)], err_msg=str(k))


def steps_on_disk(workdir):
    return sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())


def partial_saves(workdir):
    return [p for p in os.listdir(os.path.join(workdir, "checkpoints")) if checkpointing.TMP_SUFFIX in p]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: a checkpoint after every step, all kept."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    final = train_lib.train_and_evaluate(fault_config(checkpoint_every=1, keep_checkpoints=100), workdir)
    assert steps_on_disk(workdir) == list(range(1, STEPS + 1))
    return workdir, final


# ----------------------------------------------------------------------------- non-finite steps


def poisoned_example(step):
    """A training index in the batch of ``step`` and in no other batch of the run (the sampler
    is a pure function of (seed, step))."""
    cfg = fault_config()
    sampler = input_pipeline.make_sampler(cfg, input_pipeline.load(cfg))
    others = set(np.concatenate([sampler.indices(t) for t in range(STEPS) if t != step]).tolist())
    return next(int(i) for i in sampler.indices(step) if int(i) not in others), sampler


@pytest.fixture
def poison(monkeypatch):
    """Puts NaN pixels into one training image of digits (as a corrupt file would)."""

    def apply(index):
        load = input_pipeline.load

        def poisoned(config):
            data = load(config)
            images = np.array(data.train.images, copy=True)
            images[index] = np.nan
            return dataclasses.replace(data, train=ArraySource(images, data.train.labels))

        monkeypatch.setattr(input_pipeline, "load", poisoned)

    return apply


def test_nan_batch_raises_with_step_indices_and_terms_then_skip_mode_finishes(tmp_path, reference, poison):
    ref_dir, _ = reference
    bad, sampler = poisoned_example(5)
    poison(bad)
    workdir = str(tmp_path)

    # Step 6 (batch 5) is neither a log nor a checkpoint step: its flag is read one step late,
    # after step 7 was dispatched, which must then have been a no-op.
    with pytest.raises(NonFiniteLossError) as info:
        train_lib.train_and_evaluate(fault_config(checkpoint_every=4, log_every=100), workdir)
    err = info.value
    message = str(err)
    assert err.step == 6 and "step 6" in message  # the 6th step (sampler batch 5), 1-based
    np.testing.assert_array_equal(err.indices, sampler.indices(5))
    assert str(bad) in message and "non-finite inputs at dataset indices [" + str(bad) + "]" in message
    assert not np.isfinite(err.terms["loss"]) and "loss=nan" in message
    assert err.last_checkpoint == 4 and os.path.join(workdir, "checkpoints", "4") in message
    assert "config.on_nonfinite='skip' skips them" in message and "the learning rate" in message
    # The checked (checkify) re-run names the loss and the first non-finite embedding's row.
    row = int(np.flatnonzero(sampler.indices(5) == bad)[0])
    checked = rf"first failed check: .*batch_loss\(\w+\): embeddings .*\[{row},? \d+\]"
    assert re.search(checked, message), message
    # The full record: every index of the batch, the poisoned one named as the bad input.
    with open(err.report_path) as f:
        record = json.loads(f.readlines()[-1])
    assert record["step"] == 6 and record["indices"] == sampler.indices(5).tolist()
    assert record["nonfinite_inputs"] == [bad] and record["terms"]["loss"] == "nan"
    # The in-memory state is the one before step 6 (after 5 steps), bit for bit; the checkpoint of step 4 is
    # intact (equal to the reference run's) and nothing after it was written.
    assert int(err.state.step) == 5
    assert_same_params(err.state, saved_state(ref_dir, 5))
    assert steps_on_disk(workdir) == [4]
    assert_same(saved_state(workdir, 4), saved_state(ref_dir, 4))

    # Skip mode resumes from step 4, skips step 6 (the only batch holding the bad image), goes on.
    final = train_lib.train_and_evaluate(fault_config(on_nonfinite="skip"), workdir)
    assert all(np.isfinite(v) for v in final.values())
    after_skip = saved_state(workdir, 6)  # the state after the skipped step 6 ...
    assert_same(after_skip, saved_state(ref_dir, 5), skip=("step",))  # ... is the one before it
    assert int(after_skip[("step",)]) == 6
    assert all(np.isfinite(v).all() for k, v in saved_state(workdir, STEPS).items() if v.dtype.kind == "f")
    with open(os.path.join(workdir, "history.json")) as f:
        history = json.load(f)
    counts = {h["step"]: h["nonfinite_skipped"] for h in history if "nonfinite_skipped" in h}
    assert counts[5] == 0 and counts[6] == 1 and counts[STEPS] == 1
    assert not any("loss" in h for h in history if h["step"] == 6)  # no loss logged for the skipped step 6
    with open(err.report_path) as f:
        actions = [(r["step"], r["action"]) for r in map(json.loads, f)]
    assert actions == [(6, "raise"), (6, "skip")]


def test_skip_mode_gives_up_after_max_consecutive_nonfinite(tmp_path):
    """The loop's guard on the flags of steps 3, 4, 5, 6 (no step is compiled here)."""
    cfg = fault_config(on_nonfinite="skip", max_consecutive_nonfinite=2)
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), cfg)
    guard = train_lib._NonFiniteGuard(cfg, str(tmp_path), None, np.arange(100) % 10, ckpt, [])
    images = np.zeros((4, 2, 2, 1), np.float32)
    images[2, 0, 0, 0] = np.inf

    def flags(finite):
        loss = 0.5 if finite else np.nan
        return {"finite": finite, "loss": loss, "grad_norm": 1.0, "embeddings_finite": finite}

    idx = np.array([7, 8, 9, 10])
    guard.check(3, idx, images, flags(False), state=None)  # skipped, 1 in a row
    guard.check(4, idx, images, flags(True), state=None)  # a finite step resets the run
    guard.check(5, idx + 1, images, flags(False), state=None)
    with pytest.raises(NonFiniteLossError, match="2 consecutive non-finite steps") as info:
        guard.check(6, idx + 2, images, flags(False), state=None)
    assert guard.skipped == 3 and info.value.step == 6 and info.value.last_checkpoint is None
    assert "step 6" in str(info.value) and "non-finite inputs at dataset indices [11]" in str(info.value)
    with open(tmp_path / "nonfinite_steps.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [3, 5, 6]
    ckpt.close()
    with pytest.raises(ValueError, match="on_nonfinite"):
        train_lib.train_and_evaluate(fault_config(on_nonfinite="ignore"), str(tmp_path / "x"))


def _history_without_timing(workdir):
    with open(os.path.join(workdir, "history.json")) as f:
        return [{k: v for k, v in h.items() if not k.endswith(("_per_s", "wait_fraction"))}
                for h in json.load(f)]


def _interrupted_at(monkeypatch, step):
    """Makes the sampler raise KeyboardInterrupt when asked for the batch of ``step``."""
    original = input_pipeline.samplers.PKSampler.indices

    def crash(self, t):
        if t == step:
            raise KeyboardInterrupt("simulated kill")
        return original(self, t)

    monkeypatch.setattr(input_pipeline.samplers.PKSampler, "indices", crash)
    return lambda: monkeypatch.setattr(input_pipeline.samplers.PKSampler, "indices", original)


def test_skip_counters_survive_a_resume(tmp_path, poison, monkeypatch):
    """The skipped count and the current run of non-finite steps are restored with the
    checkpoint: a resumed run logs the same history as an uninterrupted one, and gives up at
    the same step. Steps 4 and 5 (batches 3 and 4) are skipped; checkpoint 5 holds the count."""
    for bad in (3, 4):
        poison(poisoned_example(bad)[0])
    cfg = fault_config(on_nonfinite="skip", log_every=100, checkpoint_every=5)
    full, broken = str(tmp_path / "full"), str(tmp_path / "broken")
    train_lib.train_and_evaluate(cfg, full)
    restore = _interrupted_at(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train_and_evaluate(cfg, broken)
    restore()
    assert steps_on_disk(broken) == [5]
    train_lib.train_and_evaluate(cfg, broken)
    history = _history_without_timing(full)
    assert history == _history_without_timing(broken)
    counts = {h["step"]: (h["nonfinite_skipped"], h["nonfinite_consecutive"]) for h in history
              if "nonfinite_skipped" in h}
    assert counts == {5: (2, 2), STEPS: (2, 0)}  # logged at the checkpoint (5) and the end

    # A third bad step in a row (step 6, batch 5) reaches max_consecutive_nonfinite=3 with or
    # without a resume.
    poison(poisoned_example(5)[0])
    strict = fault_config(on_nonfinite="skip", log_every=100, checkpoint_every=5, max_consecutive_nonfinite=3)
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite steps") as info:
        train_lib.train_and_evaluate(strict, str(tmp_path / "strict_full"))
    assert info.value.step == 6
    restore = _interrupted_at(monkeypatch, 6)  # before step 6's flag is read
    with pytest.raises(KeyboardInterrupt):
        train_lib.train_and_evaluate(strict, str(tmp_path / "strict_broken"))
    restore()
    assert steps_on_disk(str(tmp_path / "strict_broken")) == [5]
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite steps") as info:
        train_lib.train_and_evaluate(strict, str(tmp_path / "strict_broken"))
    assert info.value.step == 6


def test_skipped_step_leaves_params_optimizer_and_xbm_memory_unchanged():
    """The jitted step itself, with a cross-batch memory: a poisoned batch changes nothing but
    the step counter (skip) or nothing at all (raise); the next clean batch trains."""
    import jax

    cfg = fault_config(on_nonfinite="skip")
    cfg.xbm.size = 40
    data = input_pipeline.load(cfg)
    mesh = train_lib.make_mesh(cfg)
    sampler = input_pipeline.make_sampler(cfg, data)
    state = train_lib.create_train_state(cfg, train_lib.build_model(cfg), data.train.images[:2])
    step = train_lib.make_train_step(cfg, input_pipeline.augment_fn(cfg), mesh)
    snapshot = lambda s: [np.array(x) for x in jax.tree.leaves((s.params, s.opt_state, s.memory))]
    idx = sampler.indices(0)
    images, labels = np.array(data.train.images[idx]), data.train.labels[idx]
    images[3] = np.nan
    before = snapshot(state)
    state, m = step(state, images, labels)
    assert not bool(m["finite"]) and not bool(m["applied"]) and int(state.step) == 1
    for a, b in zip(before, snapshot(state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(state.memory.valid.sum()) == 0  # no NaN embedding enqueued
    idx = sampler.indices(1)
    state, m = step(state, data.train.images[idx], data.train.labels[idx])
    assert bool(m["applied"]) and int(state.step) == 2 and int(state.memory.valid.sum()) == len(idx)
    assert all(np.isfinite(x).all() for x in snapshot(state) if x.dtype.kind == "f")


# ----------------------------------------------------------------------------- checkpoint faults

KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch
    from rankax.train import train_lib
    from tests.test_faults import fault_config

    workdir, marker, target = sys.argv[1], sys.argv[2], sys.argv[3]
    original = jch.JsonCheckpointHandler._save_fn

    async def slow_write(self, x, directory):
        if directory.parent.name.startswith(target + "."):  # <target>.orbax-checkpoint-tmp-*
            (directory / "metadata").write_text('{"partial')  # half a file, then hang
            open(marker, "w").close()
            time.sleep(600)
        return await original(self, x, directory)

    jch.JsonCheckpointHandler._save_fn = slow_write
    train_lib.train_and_evaluate(fault_config(), workdir)
    """
)


def test_kill_9_during_a_save_resumes_from_the_previous_checkpoint_exactly(tmp_path, reference, capsys):
    ref_dir, ref_final = reference
    workdir, marker = str(tmp_path / "run"), str(tmp_path / "saving")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, workdir, marker, "6"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not os.path.exists(marker):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the save of step 6 never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # What the kill left: steps 2 and 4 complete, step 6 only as orbax's temporary folder.
    assert steps_on_disk(workdir) == [2, 4]
    assert [p.split(".")[0] for p in partial_saves(workdir)] == ["6"]
    with pytest.raises(CheckpointReadError, match="checkpoint step 6 is not usable: only an incomplete save"):
        train_lib.restore_for_evaluation(fault_config(), workdir, step=6)

    # A fresh process (this one) resumes from step 4: at most checkpoint_every steps lost.
    final = train_lib.train_and_evaluate(fault_config(), workdir)
    out = capsys.readouterr().out
    assert "Resuming from checkpoint step 4" in out and "partial output of a checkpoint save" in out
    assert partial_saves(workdir) == []
    assert final == pytest.approx(ref_final, abs=0)
    assert_same(saved_state(workdir, STEPS), saved_state(ref_dir, STEPS))


def truncate_step(workdir, step):
    """Cuts every file of the arrays of ``step`` to half its size (an interrupted copy)."""
    root = os.path.join(workdir, "checkpoints", str(step), "state")
    cut = 0
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            size = os.path.getsize(path)
            if "ocdbt" in folder or name == "manifest.ocdbt":
                with open(path, "r+b") as f:
                    f.truncate(size // 2)
                cut += 1
    assert cut, os.listdir(root)


def test_truncated_checkpoint_clear_errors_and_resume_from_the_last_good_one(tmp_path, reference, capsys):
    ref_dir, _ = reference
    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(ref_dir, "checkpoints"), os.path.join(workdir, "checkpoints"))
    truncate_step(workdir, STEPS)
    cfg = fault_config()

    # Asking for that step: a clear error (step, path, what went wrong), the cause chained.
    with pytest.raises(CheckpointReadError) as info:
        train_lib.restore_for_evaluation(cfg, workdir, step=STEPS)
    path = os.path.join(workdir, "checkpoints", str(STEPS))
    assert f"checkpoint step {STEPS} at {path} cannot be read (truncated or corrupted" in str(info.value)
    assert info.value.step == STEPS and info.value.path == path and info.value.__cause__ is not None
    # Asking for the newest: read-only fallback to step 7, nothing moved.
    state, _ = train_lib.restore_for_evaluation(cfg, workdir)
    assert int(state.step) == STEPS - 1 and os.path.isdir(path)
    out = capsys.readouterr().out
    assert f"checkpoint step {STEPS} at {path} is unreadable" in out and "left in place" in out

    # Resuming (writable) sets the bad step aside and restores step 7, bit for bit (that the
    # run then redoes step 8 exactly is tests/test_train.py's corrupted-checkpoint test).
    data = input_pipeline.load(cfg)
    fresh = train_lib.create_train_state(cfg, train_lib.build_model(cfg), data.train.images[:2])
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), cfg)
    state, _ = ckpt.restore_latest(fresh)
    ckpt.close()
    out = capsys.readouterr().out
    assert f"moved to {workdir}/checkpoints.corrupt/{STEPS}; trying step {STEPS - 1}" in out
    assert f"Resuming from checkpoint step {STEPS - 1}" in out
    assert not os.path.exists(path) and ckpt.steps() == list(range(1, STEPS))
    assert int(state.step) == STEPS - 1
    assert_same_params(state, saved_state(ref_dir, STEPS - 1))

    # A checkpoint of another model is not "corrupt": it is refused, and never moved aside. (The
    # copied checkpoints come without config.json, which alone stops a start unless every change
    # is allowed; this checks the second line of defence, the checkpoint's own structure.)
    other = fault_config()
    other.model.embedding_dim = 8
    with pytest.raises(WorkdirConfigMismatch, match="holds checkpoints but no config.json"):
        train_lib.train_and_evaluate(other, workdir)
    with pytest.raises(CheckpointReadError, match=f"step {STEPS - 1} .*another model/config.*head"):
        train_lib.train_and_evaluate(other, workdir, allow_config_change=["*"])
    assert steps_on_disk(workdir) == list(range(1, STEPS))
    # So is an allowed change that reshapes the rest of the state (another optimizer: other
    # moments), naming the entry; before, the steps were taken for corrupt, moved aside one by
    # one, and training restarted from step 0.
    other = fault_config()
    other.optimizer.name = "sgd" if cfg.optimizer.name != "sgd" else "adam"
    with pytest.raises(CheckpointReadError, match=f"step {STEPS - 1} .*another model/config.*opt_state"):
        train_lib.train_and_evaluate(other, workdir, allow_config_change=["*"])
    assert steps_on_disk(workdir) == list(range(1, STEPS))

    # The same step unreadable a second time is moved aside under a new name: what was moved
    # aside before (maybe another run's only copy) is never replaced.
    shutil.copytree(os.path.join(ref_dir, "checkpoints", str(STEPS)), path)
    truncate_step(workdir, STEPS)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), cfg)
    ckpt.restore_latest(fresh)
    ckpt.close()
    assert f"moved to {workdir}/checkpoints.corrupt/{STEPS}.1; trying" in capsys.readouterr().out
    assert sorted(os.listdir(f"{workdir}/checkpoints.corrupt")) == [str(STEPS), f"{STEPS}.1"]


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, reference, monkeypatch):
    ref_dir, _ = reference
    workdir = str(tmp_path)
    original = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def disk_full_at_6(self, x, directory):
        if directory.parent.name.startswith("6."):
            (directory / "metadata").write_text(json.dumps(x)[:7])
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))
        return await original(self, x, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full_at_6)
    # keep_checkpoints=1: step 4 would be garbage-collected by a save of step 6 that completed.
    cfg = fault_config(keep_checkpoints=1)
    with pytest.raises(CheckpointSaveError) as info:
        train_lib.train_and_evaluate(cfg, workdir)
    err = info.value
    directory = os.path.join(workdir, "checkpoints")
    assert err.step == 6 and err.directory == directory and err.previous == 4
    assert err.errno == errno.ENOSPC and isinstance(err.__cause__, OSError)
    assert f"saving checkpoint step 6 into {directory} failed" in str(err) and "No space left" in str(err)
    assert "partial output was removed" in str(err) and "no older checkpoint was deleted" in str(err)
    assert steps_on_disk(workdir) == [4]  # step 4 kept, and step 6 never became a step
    assert_same(saved_state(workdir, 4), saved_state(ref_dir, 4))

    # What a resume would see: step 4 only (the failed save's leftovers, if any write landed
    # after the clean-up, are removed on opening and never listed as a step).
    ckpt = checkpointing.Checkpointer(directory, cfg)
    assert ckpt.steps() == [4] and partial_saves(workdir) == []
    ckpt.close()


def test_a_failed_array_write_is_one_error_line_not_orbax_tracebacks(tmp_path, monkeypatch, caplog):
    """A write that fails in orbax's writer threads (a full disk on a real run: tensorstore's
    RESOURCE_EXHAUSTED) was logged by each thread with its whole traceback, about 50 lines of
    orbax internals each, above rankax's own error: one line per thread now, and the error."""
    from orbax.checkpoint._src.serialization import serialization

    async def disk_full(*args, **kwargs):
        raise ValueError("RESOURCE_EXHAUSTED: Failed to write: No space left on device")

    monkeypatch.setattr(serialization, "async_serialize_from_host", disk_full)
    with pytest.raises(CheckpointSaveError, match=r"saving checkpoint step 2 .*RESOURCE_EXHAUSTED"):
        train_lib.train_and_evaluate(fault_config(), str(tmp_path))
    logged = [r for r in caplog.records if "_SignalingThread.run() raised an exception" in r.getMessage()]
    assert logged  # orbax still says which thread failed, in one line each
    assert all(r.exc_info is None for r in logged)
    assert "Traceback" not in caplog.text and "asyncio_utils.py" not in caplog.text, caplog.text

    # The writes still in flight then finish on orbax's closed event loop, each printing
    # "RuntimeError: Event loop is closed" through sys.unraisablehook: those are dropped, others kept.
    seen = []

    class Complains:
        def __init__(self, message):
            self.message = message

        def __del__(self):
            raise RuntimeError(self.message)

    hook = sys.unraisablehook
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    with pytest.raises(CheckpointSaveError):
        train_lib.train_and_evaluate(fault_config(), str(tmp_path / "again"))
    assert sys.unraisablehook is not hook
    Complains("Event loop is closed")  # collected at once: its __del__ raises
    Complains("something else")
    assert seen == ["something else"]


def test_a_resume_that_fails_before_its_first_step_keeps_the_record(tmp_path, monkeypatch):
    """Allowed changes reach config.json only once the changed run has trained a step: a start
    that fails while building its step leaves the record of the checkpoints on disk, so the
    original command still resumes."""
    from rankax.train import loop

    workdir = str(tmp_path)
    train_lib.train_and_evaluate(fault_config(num_steps=4), workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        before = json.load(f)

    def broken(*args, **kwargs):
        raise RuntimeError("the step does not build")

    monkeypatch.setattr(loop, "make_train_step", broken)
    with pytest.raises(RuntimeError, match="does not build"):
        train_lib.train_and_evaluate(fault_config(num_steps=6), workdir, allow_config_change=["num_steps"])
    monkeypatch.undo()
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f) == before
    train_lib.train_and_evaluate(fault_config(num_steps=4), workdir)  # not refused
    train_lib.train_and_evaluate(fault_config(num_steps=6), workdir, allow_config_change=["num_steps"])
    with open(os.path.join(workdir, "config.json")) as f:
        record = json.load(f)
    assert record["config"]["num_steps"] == 6 and record["changes"][-1]["keys"] == {"num_steps": [4, 6]}
    assert steps_on_disk(workdir)[-1] == 6


def test_extending_a_finished_run_sets_its_metrics_aside(tmp_path, monkeypatch):
    """A finished run given more steps: its metrics.json becomes metrics.step<N>.json as
    training resumes, so a run stopped before its new end has no metrics.json that looks
    final; the new end writes its own."""
    from rankax.train import loop

    workdir = str(tmp_path)
    first = train_lib.train_and_evaluate(fault_config(num_steps=4), workdir)
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f) == pytest.approx(first)

    def stopped(*args, **kwargs):
        raise RuntimeError("stopped during the extension")

    monkeypatch.setattr(loop, "after_step", stopped)
    with pytest.raises(RuntimeError, match="stopped during"):
        train_lib.train_and_evaluate(fault_config(num_steps=6), workdir, allow_config_change=["num_steps"])
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))
    with open(os.path.join(workdir, "metrics.step4.json")) as f:
        assert json.load(f) == pytest.approx(first)
    final = train_lib.train_and_evaluate(fault_config(num_steps=6), workdir,
                                         allow_config_change=["num_steps"])
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f) == pytest.approx(final)
    assert os.path.exists(os.path.join(workdir, "metrics.step4.json"))
    # Its final checkpoint unreadable, the run resumes from step 4, but the metrics set aside are
    # those of its end at step 6: named by the history written with them.
    truncate_step(workdir, 6)
    train_lib.train_and_evaluate(fault_config(num_steps=8), workdir, allow_config_change=["num_steps"])
    with open(os.path.join(workdir, "metrics.step6.json")) as f:
        assert json.load(f) == pytest.approx(final)


def test_a_checkpoint_past_num_steps_is_refused(tmp_path):
    """Lowering num_steps (allowed) below the newest checkpoint would report the longer run's
    model as the shorter one's: refused, naming the key, and the record is left alone."""
    workdir = str(tmp_path)
    train_lib.train_and_evaluate(fault_config(num_steps=4), workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        before = json.load(f)
    with pytest.raises(ConfigError, match=r"checkpoint of step 4, past config.num_steps=2"):
        train_lib.train_and_evaluate(fault_config(num_steps=2), workdir, allow_config_change=["num_steps"])
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f) == before


@flax.struct.dataclass
class ToyState:
    """The fields a Checkpointer saves, without a model."""

    step: np.ndarray
    params: dict
    batch_stats: dict
    opt_state: dict
    rng: np.ndarray
    memory: dict


def _toy_state(step, w):
    return ToyState(np.asarray(step, np.int32), {"w": w}, {}, {}, np.zeros(2, np.uint32), {})


def test_the_best_checkpoint_survives_a_resume(tmp_path):
    """keep_checkpoints=1 keeps the newest step and the best evaluated one. The metrics that
    decide "best" are stored with each step: a new process (a resume) that saves again keeps
    the best step of the earlier process (before, it knew no metrics and deleted it)."""
    state = lambda step: _toy_state(step, np.full(3, step, np.float32))
    config = ml_collections.ConfigDict({"keep_checkpoints": 1, "best_metric": "map@r"})
    directory = str(tmp_path / "checkpoints")
    first = checkpointing.Checkpointer(directory, config)
    first.save(state(10), [], metrics={"map@r": 0.9})
    first.save(state(20), [], metrics={"map@r": 0.5})
    assert first.steps() == [10, 20]
    first.close()
    resumed = checkpointing.Checkpointer(directory, config)  # another process
    resumed.save(state(30), [], metrics={"map@r": 0.4})
    resumed.save(state(40), [])  # a periodic save without an evaluation
    assert resumed.steps() == [10, 40]
    restored, _ = resumed.restore(state(0), 10)
    np.testing.assert_array_equal(restored.params["w"], 10.0)
    resumed.close()
    # Another best_metric (an allowed change): the steps evaluated without it rank last, the
    # saves go on, and the best step by the new metric is kept.
    config.best_metric = "recall@1"
    other = checkpointing.Checkpointer(directory, config)
    other.save(state(50), [], metrics={"recall@1": 0.7})
    other.save(state(60), [], metrics={"recall@1": 0.6})
    assert other.steps() == [50, 60]
    other.close()


def test_a_nan_evaluation_is_never_the_best_checkpoint(tmp_path):
    """A diverged evaluation (NaN) ranks below every number: the best step survives it (orbax
    had kept the NaN step as the best and deleted step 10)."""
    state = lambda step: _toy_state(step, np.full(3, step, np.float32))
    config = ml_collections.ConfigDict({"keep_checkpoints": 1, "best_metric": "map@r"})
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), config)
    kept = []
    for step, value in [(10, 0.5), (20, float("nan")), (30, 0.3), (40, float("nan"))]:
        ckpt.save(state(step), [], metrics={"map@r": value})
        kept.append(ckpt.steps())
    assert kept == [[10], [10, 20], [10, 30], [10, 40]]
    ckpt.close()


def test_a_tie_keeps_the_earliest_best_step_whatever_keep_checkpoints(tmp_path):
    """Two evaluations tie at the best value: the earliest is kept, the step best_step reports
    (orbax's BestN kept the latest tied step, so with keep_checkpoints=1 the reported model was
    step 30 instead of 10: the result depended on a key recorded as not changing it)."""
    from rankax.train import evaluators

    state = lambda step: _toy_state(step, np.full(3, step, np.float32))
    history = []
    for keep in (1, 5):
        config = ml_collections.ConfigDict({"keep_checkpoints": keep, "best_metric": "recall@1"})
        ckpt = checkpointing.Checkpointer(str(tmp_path / f"keep{keep}"), config)
        history = []
        for step, value in [(10, 0.9), (20, 0.5), (30, 0.9), (40, 0.7), (50, 0.6)]:
            ckpt.save(state(step), [], metrics={"recall@1": value})
            history.append({"step": step, "eval/recall@1": value})
        assert 10 in ckpt.steps() and (keep > 1 or ckpt.steps() == [10, 50])
        assert evaluators.best_step(history, "recall@1", ckpt.has) == 10
        ckpt.close()


def test_a_step_whose_bytes_changed_on_disk_is_not_restored(tmp_path, capsys):
    """A flipped bit in an array file can still decompress, into a wrong value. Each step
    stores a SHA-256 of its arrays; a step whose data no longer match is unreadable: moved
    aside, and the previous step restored (before, the wrong weights were restored)."""
    config = ml_collections.ConfigDict({"keep_checkpoints": 3, "best_metric": "map@r"})
    weights = {s: np.random.default_rng(s).normal(size=4096).astype(np.float32) for s in (10, 20)}
    directory = str(tmp_path / "checkpoints")
    ckpt = checkpointing.Checkpointer(directory, config)
    for step, w in weights.items():
        ckpt.save(_toy_state(step, w), [])
    ckpt.close()
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(directory, "20", "state")) for f in fs]
    data_file = max(files, key=os.path.getsize)  # the 16 KiB of w: stored nearly raw
    data = bytearray(open(data_file, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(data_file, "wb").write(bytes(data))

    ckpt = checkpointing.Checkpointer(directory, config)
    restored, _ = ckpt.restore_latest(_toy_state(0, np.zeros(4096, np.float32)))
    ckpt.close()
    assert int(restored.step) == 10
    np.testing.assert_array_equal(restored.params["w"], weights[10])
    out = capsys.readouterr().out
    assert "the data of params/w differ from the checksum" in out and "trying step 10" in out


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # lr 1e39
def test_an_overflowing_update_is_named_as_such(tmp_path):
    """Finite loss and gradients, an update beyond float32 (a learning rate of 1e39 is inf in
    float32): the error says which leaves the update made non-finite; it listed no term."""
    config = fault_config(checkpoint_every=4, log_every=100)
    config.optimizer.lr = 1e39
    with pytest.raises(NonFiniteLossError) as info:
        train_lib.train_and_evaluate(config, str(tmp_path))
    message = str(info.value)
    assert info.value.step == 1 and np.isfinite(info.value.terms["loss"]), message
    assert np.isfinite(info.value.terms["grad_norm"]), message
    assert re.search(r"finite gradients, but the update makes \['params/[^]]+\] non-finite", message), message
    # No empty list of non-finite terms ("step 1:  (finite: ...)"); the first step is step 1.
    assert message.startswith("non-finite training step 1 (its loss terms are finite: loss="), message


def test_a_model_broken_by_its_first_update_is_not_blamed_on_the_batch(tmp_path):
    """A learning rate of 1e30: the first update is finite but huge, and the second step's
    embeddings are all NaN. The error listed that batch's 40 indices as if the data were at
    fault; it now says every embedding is non-finite from finite inputs and gives the largest
    parameter magnitude, which is about lr times the first update's size (Adam: about 1)."""
    config = fault_config(checkpoint_every=4, log_every=100)
    config.optimizer.lr = 1e30
    with pytest.raises(NonFiniteLossError) as info:
        train_lib.train_and_evaluate(config, str(tmp_path))
    message = str(info.value)
    assert info.value.step == 2, message
    found = re.search(r"every embedding of the batch is non-finite, from finite inputs: the model rather "
                      r"than this batch \(its largest parameter magnitude is ([0-9.e+]+): a learning rate",
                      message)
    assert found and 1e29 <= float(found.group(1)) <= 1e31, message
    assert "non-finite embeddings at dataset indices" not in message


def test_nonfinite_test_embeddings_are_a_named_error(monkeypatch):
    """A run that diverged in skip mode (finite parameters, NaN embeddings) stops at its next
    evaluation with a NonFiniteEvaluationError saying what to do, which the CLI prints as one
    line (it was the retrieval's ValueError, printed as a traceback)."""
    import types

    from rankax.retrieval import exact
    from rankax.train import NonFiniteEvaluationError, loop

    def nan_embeddings(*args):
        return exact.as_embeddings(np.full((3, 2), np.nan, np.float32), "queries")

    monkeypatch.setattr(loop.evaluators, "evaluate_state", nan_embeddings)
    run = types.SimpleNamespace(config=None, state=None, data=None, evaluator=None)
    with pytest.raises(NonFiniteEvaluationError, match="test embeddings at step 10 are not finite") as info:
        loop.evaluate_at(run, 10)
    assert info.value.step == 10 and isinstance(info.value.__cause__, ValueError)
    assert "config.optimizer.lr" in str(info.value)


def test_nonfinite_final_evaluation_is_the_same_named_error(tmp_path, monkeypatch):
    """With eval_every=0 every divergence meets the final evaluation, which called the
    evaluation directly and ended in the retrieval's traceback: it now raises the same
    NonFiniteEvaluationError as a periodic one (and the baselines and the selected model's)."""
    from rankax.retrieval import exact
    from rankax.train import NonFiniteEvaluationError, loop

    def nan_embeddings(*args):
        return exact.as_embeddings(np.full((3, 2), np.nan, np.float32), "queries")

    monkeypatch.setattr(loop.evaluators, "evaluate_state", nan_embeddings)
    cfg = tiny_config(num_steps=4, eval_every=0, eval_baselines=False)
    with pytest.raises(NonFiniteEvaluationError, match="test embeddings at step 4 are not finite"):
        train_lib.train_and_evaluate(cfg, str(tmp_path / "final"))
    with pytest.raises(NonFiniteEvaluationError, match="test embeddings at step 0 are not finite"):
        train_lib.train_and_evaluate(tiny_config(num_steps=4, eval_every=0), str(tmp_path / "baseline"))


def test_final_metrics_set_aside_say_why(tmp_path, capsys):
    """The final metrics found when training resumes are kept as metrics.step<N>.json, and the
    message says whether the run is extended past N or redoes steps up to N (it said
    "extended" in both cases)."""
    from rankax.train import loop

    def workdir(name, end):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text("{}")
        if end is not None:
            (d / "history.json").write_text(json.dumps([{"step": 1}, {"step": end}]))
        return str(d)

    loop.set_aside_final_metrics(workdir("longer", 100), 150)
    assert "past the run's earlier end (step 100) to step 150" in capsys.readouterr().out
    assert (tmp_path / "longer" / "metrics.step100.json").exists()
    loop.set_aside_final_metrics(workdir("redo", 100), 100)
    assert "Training again up to step 100, from an earlier checkpoint" in capsys.readouterr().out
    loop.set_aside_final_metrics(workdir("none", None), 100)
    out = capsys.readouterr().out
    assert "without a readable history.json" in out and "metrics.previous.json" in out
    assert not (tmp_path / "none" / "metrics.json").exists()


def test_an_unretrieved_write_error_of_a_failed_save_is_one_line(caplog):
    """After a failed save (a full disk), asyncio logged "Task exception was never retrieved"
    for orbax's unawaited writes with a full traceback each; the save's CheckpointSaveError
    already reports the error. An OSError keeps one line; other exceptions keep theirs."""
    import asyncio
    import gc
    import logging

    from rankax.train import checkpointing  # noqa: F401 - installs the filter

    async def fail(exc):
        raise exc

    async def orbax_write(exc):  # as if defined in orbax's package (the task's repr says where)
        raise exc

    orbax_write.__code__ = orbax_write.__code__.replace(
        co_filename=os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "write.py"))

    def unretrieved(exc, coroutine=orbax_write):
        loop = asyncio.new_event_loop()
        task = loop.create_task(coroutine(exc))
        loop.run_until_complete(asyncio.sleep(0.01))  # the task fails; nobody awaits it
        loop.close()
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            del task
            gc.collect()
        return [r for r in caplog.records if r.name == "asyncio"]

    (record,) = unretrieved(OSError(28, "No space left on device"))
    assert record.exc_info is None and record.getMessage().startswith("Task exception was never retrieved")
    assert "No space left on device" in record.getMessage() and "\n" not in record.getMessage()
    (record,) = unretrieved(ValueError("a bug"))
    assert record.exc_info is not None  # not a write error: the traceback stays
    (record,) = unretrieved(ConnectionResetError(), coroutine=fail)
    assert record.exc_info is not None  # another coroutine's OSError (the user's): unchanged
