"""Multi-process training on the CPU: 2 processes x 4 devices equal 1 process x 8 devices.

Each test launches ``experiments.train`` on the digits config as separate processes joined by
``jax.distributed`` over localhost (tests/multihost_launch.py: free ports, hard timeouts,
kill by PID, every process's log in the failure message). The reference of every comparison is
a one-process run of the same config: the global batch, its ranking loss and the update are
the same computation whichever processes hold the devices, so parameters and metrics agree to
float32 rounding (the reductions are grouped differently).

The digits runs use a cross-batch memory (``config.xbm.size``): every comparison of train states
(fresh, resumed 2 -> 1 and 1 -> 2) covers the memory too, whose entries come from every
process's rows. To keep the time down, one pair of runs serves every digits comparison.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.multihost_launch import ROOT, Run, child_env, free_port, launch

# Its module fixtures (2-process trainings): with `--dist loadgroup`, one xdist worker runs them.
pytestmark = pytest.mark.xdist_group("multihost_train")

STEPS = 4
XBM_SIZE = 240  # 1.5 global batches of 160: the ring wraps at the third step
ARGS = ["--config", "configs/digits.py", f"--config.num_steps={STEPS}", "--config.eval_every=0",
        "--config.checkpoint_every=2", "--config.log_every=1", f"--config.xbm.size={XBM_SIZE}",
        "--config.eval_baselines=false"]
TIMEOUT_S = 240
PARAM_ATOL = 2e-5  # Adam's normalised steps turn float32 rounding of tiny gradients into ~1e-6
# Adam divides each gradient by its running RMS, so an element whose gradient is at rounding
# level in both runs (its sign set by the reduction order) can take a different step, of up to
# the learning rate: such elements are rare (one of 16,384 in a kernel on an AMD EPYC host, none
# on a Xeon), and their difference stays within 2 * lr per step.
RARE_SHARE = 1e-3
LR = 1e-3  # optimizer.lr of configs/default.py, which configs/digits.py keeps
MEMORY_ATOL = 1e-4  # the memory's embeddings come from those parameters (4.2e-5 measured)
METRIC_ATOL = 1e-4


def _params(workdir: str, step: int) -> dict[str, np.ndarray]:
    """Every float leaf of checkpoint ``step`` as numpy (read onto this process's device,
    whatever mesh wrote it)."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    ckpt = ocp.StandardCheckpointer()
    meta = ckpt.metadata(path).item_metadata.tree
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    flat = ocp.tree.to_flat_dict(ckpt.restore(path, target), sep="/")
    return {k: np.asarray(v) for k, v in flat.items() if np.asarray(v).dtype.kind in "fiu"}


def _assert_same_state(a: str, b: str, step: int) -> None:
    pa, pb = _params(a, step), _params(b, step)
    assert pa.keys() == pb.keys()
    for key in pa:
        if pa[key].dtype.kind in "iu":  # labels, ring pointer, step
            np.testing.assert_array_equal(pa[key], pb[key], err_msg=key)
        elif key.startswith("memory/"):
            np.testing.assert_allclose(pa[key], pb[key], rtol=0, atol=MEMORY_ATOL, err_msg=key)
        else:
            diff = np.abs(pa[key].astype(np.float64) - pb[key])
            share = float(np.mean(diff > PARAM_ATOL))
            assert share <= RARE_SHARE and diff.max() <= 2 * LR * step, (key, share, diff.max())


def _metrics(workdir: str) -> dict[str, float]:
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    one, two = str(root / "one"), str(root / "two")
    first, second = launch(one, 1, ARGS), launch(two, 2, ARGS)  # side by side: less wall time
    _check_all([first, second])
    return root, one, two, second


def _check_all(runs: list[Run]) -> None:
    """Waits for runs started together (one shared deadline); on a failure kills them all."""
    try:
        for run in runs:
            run.check(TIMEOUT_S)
    finally:
        for run in runs:
            run.kill()


def test_two_processes_train_as_one(runs):
    _, one, two, second = runs
    for step in (2, STEPS):
        _assert_same_state(one, two, step)
    m1, m2 = _metrics(one), _metrics(two)
    assert m1.keys() == m2.keys()
    for key in m1:
        assert m2[key] == pytest.approx(m1[key], abs=METRIC_ATOL), key
    # training moved the parameters between the two checkpoints: the comparison is not vacuous
    early, late = _params(two, 2), _params(two, STEPS)
    assert any(not np.allclose(early[k], late[k]) for k in early if k.startswith("params/"))
    # process 0 alone reports and writes: one table, one TensorBoard event file
    log0, log1 = second.text(0), second.text(1)
    assert "trained" in log0 and "Wrote" in log0
    assert "Wrote" not in log1 and "trained " not in log1
    events = os.listdir(os.path.join(two, "tensorboard"))
    assert len(events) == 1, events


def test_cross_batch_memory_is_the_same_across_processes(runs):
    """The XBM ring buffer (embeddings of all 160 rows of each step, whichever process embedded
    them, and the labels) after 4 steps of 2 x 4 devices equals the one of 1 x 8 devices; it
    has wrapped (4 * 160 entries into 240 slots) and the loss used it (a non-empty memory)."""
    _, one, two, _ = runs
    m1, m2 = _params(one, STEPS), _params(two, STEPS)
    memory = [k for k in m1 if k.startswith("memory/")]
    assert {k.split("/")[-1] for k in memory} >= {"embeddings", "labels", "pointer"}, sorted(m1)
    for key in memory:
        np.testing.assert_allclose(m2[key], m1[key], rtol=0, atol=MEMORY_ATOL, err_msg=key)
    emb = next(m1[k] for k in memory if k.endswith("embeddings"))
    pointer = next(m1[k] for k in memory if k.endswith("pointer"))
    assert emb.shape[0] == XBM_SIZE and int(pointer) == (STEPS * 160) % XBM_SIZE
    assert np.all(np.linalg.norm(emb, axis=1) > 0)  # every slot filled


def _resumable_copy(root, source: str, name: str) -> str:
    """A copy of ``source`` with its last checkpoint and outputs removed."""
    work = str(root / name)
    shutil.copytree(source, work)
    shutil.rmtree(os.path.join(work, "checkpoints", str(STEPS)))
    os.remove(os.path.join(work, "metrics.json"))
    return work


@pytest.fixture(scope="module")
def resumed(runs):
    """The 2-process workdir resumed from step 2 by 1 process, and the 1-process one by 2."""
    root, one, two, _ = runs
    work = {"two_to_one": _resumable_copy(root, two, "two_to_one"),
            "one_to_two": _resumable_copy(root, one, "one_to_two")}
    started = [launch(work["two_to_one"], 1, ARGS), launch(work["one_to_two"], 2, ARGS)]
    _check_all(started)
    for run in started:
        assert "Resuming from checkpoint step 2" in run.text(0), run.all_logs()
        # The other topology is said and recorded (the resume is exact to float32 rounding only).
        assert "Resuming a run recorded on" in run.text(0), run.all_logs()
    for name, (old, new) in (("two_to_one", (2, 1)), ("one_to_two", (1, 2))):
        with open(os.path.join(work[name], "config.json")) as f:
            record = json.load(f)
        topology = record["changes"][-1]["keys"]["topology"]
        assert [t["processes"] for t in topology] == [old, new]
        assert record["topology"]["processes"] == new
    return work


def test_processes_started_with_different_configs_are_refused(tmp_path):
    """Process 1 alone gets another temperature: both processes stop, before anything is
    written, and process 1 names the key (nothing else compares the processes' commands)."""
    work, port = str(tmp_path / "mixed"), free_port()
    first = launch(work, 2, ARGS, only=[0], port=port)
    second = launch(work, 2, [*ARGS, "--config.loss.hparams.temperature=0.05"], only=[1], port=port,
                    log=str(tmp_path / "second"))
    both = Run(first.procs + second.procs, first.logs + second.logs)
    codes = both.wait(TIMEOUT_S)
    assert all(code != 0 for code in codes), both.all_logs()
    assert "started with different configs" in both.text(0), both.all_logs()
    assert "config.loss.hparams.temperature" in both.text(1), both.all_logs()
    assert not os.path.exists(os.path.join(work, "checkpoints")), both.all_logs()


def test_checkpoint_of_two_processes_resumes_in_one(runs, resumed):
    _, one, two, _ = runs
    _assert_same_state(resumed["two_to_one"], two, STEPS)
    _assert_same_state(resumed["two_to_one"], one, STEPS)


def test_checkpoint_of_one_process_resumes_in_two(runs, resumed):
    _, one, _, _ = runs
    _assert_same_state(resumed["one_to_two"], one, STEPS)


def test_evaluation_across_processes_equals_one_process(runs):
    """experiments.evaluate of the 1-process workdir by 2 processes (each reads and embeds
    half of every test batch of 512; all rank the whole gallery) reports the metrics the
    1-process training run computed of the same final state."""
    root, one, _, _ = runs
    out = str(root / "eval2.json")
    launch(one, 2, ["--output", out], module="experiments.evaluate", log=str(root / "eval2")).check(TIMEOUT_S)
    with open(out) as f:
        many = json.load(f)["metrics"]
    reference = _metrics(one)
    shared = [k for k in reference if k in many]
    assert {"recall@1", "map@r", "map"} <= set(shared), (sorted(reference), sorted(many))
    for key in shared:
        assert many[key] == pytest.approx(reference[key], abs=1e-6), key


def test_killed_process_stops_the_other(tmp_path):
    """Process 1 is killed mid-run: process 0 exits (non-zero) within the heartbeat timeout
    plus a margin, naming the dead process, instead of waiting forever in a collective."""
    import time

    work = str(tmp_path / "killed")
    args = ["--config", "configs/digits.py", "--config.num_steps=100000", "--config.eval_every=0",
            "--config.checkpoint_every=100000", "--config.eval_baselines=false", "--config.log_every=1"]
    run = launch(work, 2, args, extra=["--heartbeat_timeout", "10", "--initialization_timeout", "60"])
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while "train:" not in run.text(1) and "train:" not in run.text(0):
            assert all(p.poll() is None for p in run.procs), run.all_logs()
            assert time.monotonic() < deadline, "never started training\n" + run.all_logs()
            time.sleep(0.5)
        time.sleep(1.0)
        run.procs[1].kill()
        run.procs[1].wait()
        killed_at = time.monotonic()
        codes = run.wait(60)
    finally:
        run.kill()
    took = time.monotonic() - killed_at
    assert codes[0] != 0, run.all_logs()
    log = run.text(0)
    # How the runtime tells it: the coordinator's heartbeat, or gloo when the socket closes --
    # cleanly, or in the middle of a message (the next read then finds another op's bytes:
    # "Received data size doesn't match expected size", seen once under load), or the socket
    # error of a write or read that met the dead peer's closed connection.
    clear = ("stopped sending heartbeats", "another task died", "Connection closed by peer",
             "Received data size doesn't match expected size", "Connection reset by peer",
             "Broken pipe")
    assert any(c in log for c in clear), run.all_logs()
    assert took < 45, f"process 0 took {took:.0f}s to stop\n{run.all_logs()}"


def test_an_error_on_one_process_stops_every_process(tmp_path, monkeypatch):
    """Process 1 fails alone at step 3 (an image it cannot read): it prints the error and
    leaves at once, and process 0, waiting for it in the step, stops within seconds. (Both
    waited 300 s in JAX's shutdown and then aborted without saying why.)"""
    import time

    monkeypatch.setenv("RANKAX_TEST_FAULT", "read:1:3")
    work = str(tmp_path / "fails")
    args = ["--config", "configs/digits.py", "--config.num_steps=100000", "--config.eval_every=0",
            "--config.checkpoint_every=100000", "--config.eval_baselines=false", "--config.log_every=1"]
    started = time.monotonic()
    run = launch(work, 2, args, extra=["--heartbeat_timeout", "10", "--initialization_timeout", "60"],
                 module="tests.multihost_fail")
    try:
        codes = run.wait(TIMEOUT_S)
    finally:
        run.kill()
    took = time.monotonic() - started
    assert codes[1] == 1 and codes[0] != 0, run.all_logs()
    failed = run.text(1)
    assert "error: cannot read image 7 (injected on process 1 at step 3)" in failed, run.all_logs()
    assert "[rankax] process 1 failed: leaving now (exit status 1)" in failed, run.all_logs()
    assert took < 120, f"the processes took {took:.0f}s to stop\n{run.all_logs()}"


FAULT_ARGS = ["--config", "configs/digits.py", "--config.num_steps=6", "--config.eval_every=0",
              "--config.checkpoint_every=3", "--config.eval_baselines=false"]
FAULT_EXTRA = ["--heartbeat_timeout", "10", "--initialization_timeout", "60"]


def _refused_everywhere(run: Run, message: str) -> None:
    try:
        codes = run.wait(TIMEOUT_S)
    finally:
        run.kill()
    assert all(code != 0 for code in codes), run.all_logs()
    for i in range(len(run.procs)):
        assert message in run.text(i), run.all_logs()


@pytest.mark.parametrize(
    ("fault", "message"),
    [("data:1", "the processes were started with different data: process 1 differs from process 0 "
                "(train.labels_sha256"),
     ("params:1", "the processes were started with different train states: process 1 differs from "
                  "process 0 (params/")],
)
def test_processes_with_other_data_or_weights_are_refused(tmp_path, monkeypatch, fault, message):
    """One host lists other items, or starts from other weights: every process refuses
    (each process built its replicated state from its own copy and trained on the mix)."""
    monkeypatch.setenv("RANKAX_TEST_FAULT", fault)
    run = launch(str(tmp_path / "w"), 2, FAULT_ARGS, extra=FAULT_EXTRA, module="tests.multihost_fail")
    try:
        codes = run.wait(TIMEOUT_S)
    finally:
        run.kill()
    assert all(code != 0 for code in codes), run.all_logs()
    assert message in run.text(1), run.all_logs()
    assert "process 1 differs" not in run.text(0) and "error: the processes were started" in run.text(0)


def test_a_checkpoint_unreadable_on_one_process_is_skipped_by_all(tmp_path, monkeypatch):
    """Step 6 fails its checksum on process 1 only: every process skips it and resumes from
    step 3 (process 1 waited in the quarantine barrier while process 0 went on: a 300 s stall)."""
    work = str(tmp_path / "w")
    launch(work, 2, FAULT_ARGS, extra=FAULT_EXTRA).check(TIMEOUT_S)
    monkeypatch.setenv("RANKAX_TEST_FAULT", "unreadable:1:6")
    longer = [a for a in FAULT_ARGS if "num_steps" not in a] + ["--config.num_steps=9",
                                                                "--allow_config_change=num_steps"]
    run = launch(work, 2, longer, extra=FAULT_EXTRA, module="tests.multihost_fail", log=work + ".again")
    run.check(TIMEOUT_S)
    log = run.text(0)
    assert "checkpoint step 6 at" in log and "unreadable on process(es) [1]" in log, run.all_logs()
    assert "Resuming from checkpoint step 3" in log, run.all_logs()
    assert sorted(os.listdir(os.path.join(work, "checkpoints.corrupt"))) == ["6"]
    with open(os.path.join(work, "history.json")) as f:
        assert json.load(f)[-1]["step"] == 9


def test_a_workdir_that_is_not_shared_is_refused(tmp_path):
    """Each process given its own local directory: refused at the start on every process (both
    waited in the first checkpoint save without a word)."""
    port = free_port()
    runs = [launch(str(tmp_path / f"host{i}"), 2, FAULT_ARGS, only=[i], port=port, extra=FAULT_EXTRA)
            for i in (0, 1)]
    run = Run([r.procs[0] for r in runs], [r.logs[0] for r in runs])
    _refused_everywhere(run, "is not shared: process(es) [1] do not see the file process 0 wrote there")
    assert not (tmp_path / "host0").exists() and not (tmp_path / "host1").exists()  # nothing half-made


def test_processes_with_other_device_counts_or_process_counts_are_refused(tmp_path):
    port = free_port()
    work = str(tmp_path / "w")
    first = launch(work, 2, FAULT_ARGS, only=[0], port=port, extra=FAULT_EXTRA)  # 4 devices
    second = launch(work, 2, FAULT_ARGS, only=[1], port=port, extra=FAULT_EXTRA, devices=2)
    _refused_everywhere(Run(first.procs + second.procs, first.logs + second.logs),
                        "the processes hold different numbers of devices (process 0: 4, process 1: 2)")
    port = free_port()
    work = str(tmp_path / "w3")
    first = launch(work, 2, FAULT_ARGS, only=[0], port=port, extra=FAULT_EXTRA)
    second = launch(work, 3, FAULT_ARGS, only=[1], port=port, extra=FAULT_EXTRA, devices=4)
    run = Run(first.procs + second.procs, first.logs + second.logs)
    try:
        codes = run.wait(TIMEOUT_S)
    finally:
        run.kill()
    assert codes[1] != 0 and "--num_processes=3 here, but the coordinator's run has 2" in run.text(1), (
        run.all_logs())


NAN_SCRIPT = textwrap.dedent(
    """
    import dataclasses, sys
    import numpy as np
    from rankax.train import distributed
    address, i, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    distributed.initialize(address, 2, i, initialization_timeout=60, heartbeat_timeout=30)
    from rankax.data.base import ArraySource
    from rankax.train import NonFiniteLossError, input_pipeline, train_lib
    from experiments import cli

    config = cli.load_config("configs/digits.py")
    config.num_steps, config.eval_every, config.eval_baselines = 6, 0, False
    config.log_every, config.checkpoint_every = 100, 2
    sampler = input_pipeline.make_sampler(config, input_pipeline.load(config))
    bad = int(sampler.indices(3)[-1])  # the last row of step 3: process 1's half
    first = 1 + next(t for t in range(6) if bad in sampler.indices(t))  # its number, 1-based
    load = input_pipeline.load

    def poisoned(c):
        data = load(c)
        images = np.array(data.train.images, copy=True)
        images[bad] = np.nan
        return dataclasses.replace(data, train=ArraySource(images, data.train.labels))

    input_pipeline.load = poisoned
    try:
        train_lib.train_and_evaluate(config, workdir)
    except NonFiniteLossError as err:
        assert err.step == first, (err.step, first)
        assert f"non-finite inputs at dataset indices [{bad}]" in str(err), str(err)
        print("NONFINITE-OK", err.step, flush=True)
        sys.exit(3)
    """
)


def test_nonfinite_step_is_diagnosed_across_processes(tmp_path):
    """A NaN image (process 1 loads it at step 3): both processes stop with
    NonFiniteLossError at the first step whose batch holds it, naming that image (every
    process's rows are gathered for the report); one record is written, by process 0."""
    work, port = str(tmp_path / "nan"), free_port()
    procs, logs = [], []
    for i in range(2):
        logs.append(f"{work}.log{i}")
        with open(logs[-1], "w") as f:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", NAN_SCRIPT, f"127.0.0.1:{port}", str(i), work],
                cwd=ROOT, env=child_env(4), stdout=f, stderr=subprocess.STDOUT,
            ))
    run = Run(procs, logs)
    assert run.wait(TIMEOUT_S) == [3, 3], run.all_logs()
    assert all("NONFINITE-OK" in run.text(i) for i in range(2)), run.all_logs()
    with open(os.path.join(work, "nonfinite_steps.jsonl")) as f:
        assert len(f.readlines()) == 1


IMAGE_CONFIG = textwrap.dedent(
    """
    import ml_collections
    from configs import common, default

    def get_config():
        c = default.get_config()
        c.dataset = ml_collections.ConfigDict(
            {"name": "folder", "root": ROOT, "csv_file": ROOT + "/data.csv",
             "image_size": 16, "resize_size": 20, "num_threads": 2}
        )
        # the MLP (on the flattened pixels) compiles in a fraction of a CNN's time; what is
        # tested is the input pipeline
        c.model = ml_collections.ConfigDict({"name": "mlp", "embedding_dim": 8})
        c.input.workers = 0
        # a loss term owning parameters (one proxy per class, their own Adam): the proxies
        # and their optimizer state must stay exact across processes too
        common.cluster_term(c, weight=0.5, temperature=0.05, lr=1.0, final_lr=0.1)
        c.batch.classes_per_batch, c.batch.samples_per_class = 2, 4
        c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 3, 1, 0, 3
        c.eval_baselines = False
        c.eval_batch_size = 8
        return c
    """
)


def test_image_folder_trains_across_processes_as_in_one(tmp_path):
    """A JPEG folder dataset (decoded by the input pipeline, augmented with the seed of each
    batch position): with 2 processes each decodes its 4 rows of every batch of 8 (augmented
    at offset 0 or 4) and its half of every test batch of 8 (16 test images); the losses, the
    trained parameters (class proxies of a loss term and their optimizer state included) and
    the test metrics equal those of one process that decodes everything."""
    from tests.test_input_pipeline import _folder

    _folder(tmp_path / "jpegs", n=40)  # random JPEGs; the split below: 4 classes in both halves
    rows = [f"images/{i}.jpg,{i % 4},{'train' if i < 24 else 'test'}" for i in range(40)]
    (tmp_path / "jpegs" / "data.csv").write_text("path,class,split\n" + "\n".join(rows) + "\n")
    config = tmp_path / "images_config.py"
    config.write_text(f"ROOT = {str(tmp_path / 'jpegs')!r}\n" + IMAGE_CONFIG)
    work = {n: str(tmp_path / f"p{n}") for n in (1, 2)}
    _check_all([launch(work[n], n, ["--config", str(config)]) for n in (1, 2)])
    _assert_same_state(work[1], work[2], 3)
    assert any("proxies" in key for key in _params(work[2], 3)), "no proxies in the checkpoint"
    history = {}
    for n in (1, 2):
        with open(os.path.join(work[n], "history.json")) as f:
            history[n] = [e["loss"] for e in json.load(f) if "loss" in e]
    assert len(history[1]) == 3
    np.testing.assert_allclose(history[2], history[1], rtol=1e-5, atol=1e-6)
    m1, m2 = _metrics(work[1]), _metrics(work[2])
    assert m1.keys() == m2.keys() and any(k.endswith("recall@1") for k in m1)
    for key in m1:
        assert m2[key] == pytest.approx(m1[key], abs=METRIC_ATOL), key


def test_a_refusal_every_process_raises_keeps_its_mark_through_the_cli_error():
    """A refusal computed alike on every process (other devices, configs, data, an unshared
    workdir) makes the failing command wait for the others to print theirs before it leaves:
    leaving at once, process 0 took the coordination service down and process 1 aborted
    before saying why (seen once in CI). The mark survives the CLI's error."""
    from experiments import cli
    from rankax.train import distributed
    from rankax.train.errors import ConfigError

    marked = distributed.on_every_process(ConfigError("the processes were started with different ..."))
    assert cli.CliError(str(marked), marked).on_every_process
    assert not hasattr(cli.CliError("alone", ConfigError("one process only")), "on_every_process")
