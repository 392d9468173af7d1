"""The training program on digits: outputs, exact resume, bad checkpoints, CLI errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import digits
from rankax import retrieval
from rankax.data import samplers
from rankax.train import train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    c = digits.get_config()
    c.num_steps = 12
    c.checkpoint_every = 4
    c.eval_every = 6
    c.log_every = 2
    c.batch.classes_per_batch = 5
    c.batch.samples_per_class = 4
    c.model.hidden = (32,)
    c.model.embedding_dim = 16
    c.dataset.max_shift = 1  # exercises the step RNG, which resume must restore
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def load_params(workdir, step):
    mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]


def test_run_writes_metrics_plots_and_checkpoints(tmp_path):
    final = train_lib.train_and_evaluate(tiny_config(), str(tmp_path))
    with open(tmp_path / "metrics.json") as f:
        written = json.load(f)
    assert {"recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "map"} <= set(written)
    assert written["num_queries"] == 896 and written["num_queries_without_positive"] == 0
    assert written == pytest.approx(final)
    assert 0.0 <= written["map@r"] <= written["r_precision"] + 1e-6 <= 1.0 + 1e-6
    assert written["recall@1"] <= written["recall@2"] <= written["recall@4"] <= written["recall@8"]
    for name in ("training_curves.png", "test_embeddings.png", "history.json"):
        assert (tmp_path / name).stat().st_size > 0
    steps = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
    assert steps[-1] == 12 and len(steps) <= 3 + 1  # last k plus possibly the best


def tensorboard_steps(workdir, tag):
    """Steps of the scalar ``tag`` in ``<workdir>/tensorboard`` as TensorBoard shows them: event
    files in name order, and a ``SessionLog.START`` event at step ``s`` drops the events read so
    far at steps ``>= s`` (TensorBoard's purge of a restarted run). Read from the raw records
    (8-byte length, 4-byte CRC, the event, 4-byte CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    seen = []
    folder = os.path.join(workdir, "tensorboard")
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        i = 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                seen = [(step, t) for step, t in seen if step < event.step]
            seen += [(event.step, v.tag) for v in event.summary.value]
    return sorted(step for step, t in seen if t == tag)


def test_a_resumed_writer_hides_the_events_it_writes_again(tmp_path):
    from rankax.train import writers

    first = writers.summary_writer(str(tmp_path))  # a new run, interrupted after step 10
    for step in range(11):
        first.add_scalar("train/loss", 1.0, step)
    first.close()
    again = writers.summary_writer(str(tmp_path), start=8)  # resumed from checkpoint 8
    for step in range(9, 13):
        again.add_scalar("train/loss", 2.0, step)
    again.close()
    assert tensorboard_steps(str(tmp_path), "train/loss") == list(range(13))
    rerun = writers.summary_writer(str(tmp_path))  # the same workdir started again from 0
    rerun.add_scalar("train/loss", 3.0, 1)
    rerun.close()
    assert tensorboard_steps(str(tmp_path), "train/loss") == [1]
    files = sorted(os.listdir(tmp_path / "tensorboard"))
    idle = writers.summary_writer(str(tmp_path), start=12)  # a finished run started again
    idle.flush()
    idle.close()
    assert sorted(os.listdir(tmp_path / "tensorboard")) == files  # no file without an event


def test_the_writer_imports_tensorboardx_when_made_not_at_its_first_event(tmp_path):
    """tensorboardX takes seconds to import: a resumed run paid them at its first log step,
    inside the progress bar's rate. The writer, made before the loop, imports it (and still
    writes no file before an event)."""
    import subprocess
    import sys

    code = ("import sys\nfrom rankax.train import writers\n"
            f"writers.summary_writer({str(tmp_path)!r}, start=8)\n"
            "print('tensorboardX.summary' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"
    assert not (tmp_path / "tensorboard").exists()


def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    full, broken = str(tmp_path / "full"), str(tmp_path / "broken")
    want = train_lib.train_and_evaluate(tiny_config(), full)

    original = samplers.PKSampler.indices

    def crash_at_10(self, step):
        if step == 10:
            raise KeyboardInterrupt("simulated kill")
        return original(self, step)

    monkeypatch.setattr(samplers.PKSampler, "indices", crash_at_10)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train_and_evaluate(tiny_config(), broken)
    monkeypatch.setattr(samplers.PKSampler, "indices", original)
    # The kill happened after the step-8 checkpoint: steps 9-10 are redone on resume.
    assert max(int(p) for p in os.listdir(os.path.join(broken, "checkpoints")) if p.isdigit()) == 8
    # The writer was flushed before that checkpoint: no event up to it depends on a later flush.
    assert {2, 4, 6, 8} <= set(tensorboard_steps(broken, "train/loss"))
    got = train_lib.train_and_evaluate(tiny_config(), broken)
    # TensorBoard shows each step once, as for the uninterrupted run.
    for tag in ("train/loss", "eval/map_r"):  # tensorboardX writes map@r as map_r
        assert tensorboard_steps(broken, tag) == tensorboard_steps(full, tag), tag
    assert tensorboard_steps(full, "train/loss") == [2, 4, 6, 8, 10, 12]
    assert tensorboard_steps(full, "eval/map_r") == [0, 6, 12]  # the untrained baseline at 0, as history

    assert got == pytest.approx(want, abs=0)
    a, b = load_params(full, 12), load_params(broken, 12)
    flat_a, flat_b = ocp.tree.to_flat_dict(a), ocp.tree.to_flat_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=str(k))


def test_corrupted_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
    cfg = tiny_config(num_steps=8)
    train_lib.train_and_evaluate(cfg, str(tmp_path))
    # Corrupt step 8 by deleting its array data; step 4 must be used instead.
    state_dir = tmp_path / "checkpoints" / "8" / "state"
    for entry in state_dir.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    cfg = tiny_config(num_steps=10)
    train_lib.train_and_evaluate(cfg, str(tmp_path), allow_config_change=["num_steps"])
    out = capsys.readouterr().out
    assert "checkpoint step 8" in out and "unreadable" in out
    assert (tmp_path / "checkpoints.corrupt" / "8").exists()
    assert "Resuming from checkpoint step 4" in out


def test_extending_a_decaying_schedule_says_where_the_rate_goes(tmp_path, capsys):
    """A cosine run of 4 steps extended to 6: the schedule spans the new length, so the rate at
    step 4 goes from 0 (where the 4-step run ended) back to a quarter of the peak,
    lr (1 + cos(pi 4/6)) / 2. That restart was silent; a constant schedule says nothing."""
    import math

    cfg = tiny_config(num_steps=4, eval_every=0)
    cfg.optimizer.schedule, cfg.optimizer.lr = "cosine", 0.002
    train_lib.train_and_evaluate(cfg, str(tmp_path / "cos"))
    capsys.readouterr()
    cfg.num_steps = 6
    train_lib.train_and_evaluate(cfg, str(tmp_path / "cos"), allow_config_change=["num_steps"])
    want = 0.002 * (1 + math.cos(math.pi * 4 / 6)) / 2
    assert (f"config.num_steps 4 -> 6: the 'cosine' learning-rate schedule spans the new length, so at "
            f"the resumed step 4 the rate goes from 0 (where the 4-step run was) to {want:.3g}"
            in capsys.readouterr().out)
    constant = tiny_config(num_steps=4, eval_every=0)
    train_lib.train_and_evaluate(constant, str(tmp_path / "const"))
    constant.num_steps = 6
    train_lib.train_and_evaluate(constant, str(tmp_path / "const"), allow_config_change=["num_steps"])
    assert "learning-rate schedule spans" not in capsys.readouterr().out


def test_unreadable_metrics_file_sets_its_step_aside(tmp_path, capsys):
    """orbax reads every step's metrics when it opens the directory: a metrics file that is not
    JSON (an edit, an incomplete copy) stopped training and evaluation with a bare
    JSONDecodeError. Training now sets that step aside; evaluation reads the others."""
    from rankax.train import checkpointing

    cfg = tiny_config(num_steps=8, eval_every=4)
    train_lib.train_and_evaluate(cfg, str(tmp_path))
    steps = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
    with_metrics = [s for s in steps if (tmp_path / "checkpoints" / str(s) / "metrics" / "metrics").is_file()]
    assert with_metrics and with_metrics[0] < 8, (steps, with_metrics)
    bad = with_metrics[0]
    (tmp_path / "checkpoints" / str(bad) / "metrics" / "metrics").write_text("garbage")
    # Read-only (evaluation): the other steps read as before, nothing moved.
    reader = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), cfg, read_only=True)
    assert reader.steps() == steps
    reader.close()
    train_lib.train_and_evaluate(tiny_config(num_steps=10, eval_every=4), str(tmp_path),
                                 allow_config_change=["num_steps"])
    out = capsys.readouterr().out
    assert f"checkpoint step {bad}: its metrics file" in out and "unreadable" in out
    assert (tmp_path / "checkpoints.corrupt" / str(bad)).exists()
    assert "Resuming from checkpoint step 8" in out


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_unknown_config_key_names_it(tmp_path):
    proc = run_cli("--config", "configs/digits.py", "--workdir", str(tmp_path), "--config.num_stepz=3")
    assert proc.returncode != 0
    assert "num_stepz" in proc.stderr


def test_cli_wrong_type_names_the_key(tmp_path):
    proc = run_cli("--config", "configs/digits.py", "--workdir", str(tmp_path), "--config.num_steps=abc")
    assert proc.returncode != 0 and "num_steps" in proc.stderr


def test_unknown_loss_name_lists_known_losses():
    with pytest.raises(ValueError, match="supap"):
        train_lib.resolve_loss("nonexistent")


def test_evaluate_cli_restores_a_checkpoint(tmp_path):
    from experiments import evaluate

    workdir = tmp_path / "run"
    final = train_lib.train_and_evaluate(tiny_config(num_steps=4), str(workdir))
    cfg = tmp_path / "tiny.py"
    cfg.write_text(
        "from tests.test_train import tiny_config\n\ndef get_config():\n    return tiny_config(num_steps=4)\n"
    )
    got = evaluate.main(
        ["--checkpoint", str(workdir), "--config", str(cfg), "--output", str(tmp_path / "e.json")]
    )
    for key in ("recall@1", "map@r", "map"):
        assert got[key] == pytest.approx(final[key], abs=1e-6)
    with pytest.raises(SystemExit, match="empty does not exist"):
        evaluate.main(["--checkpoint", str(tmp_path / "empty"), "--config", str(cfg)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no checkpoint"):
        evaluate.main(["--checkpoint", str(tmp_path / "empty"), "--config", str(cfg)])


def test_evaluate_another_protocol_without_the_training_sampler(tmp_path):
    """Evaluating a run on another split (``--config.dataset.protocol=open_set``) built the
    run's training sampler on the new training split, whose 5 classes cannot fill the run's 8
    classes per batch: the evaluation of the test split failed with the sampler's error."""
    from experiments import evaluate
    from rankax.data.digits import load_digits_split

    workdir = tmp_path / "run"
    train_lib.train_and_evaluate(tiny_config(num_steps=2, eval_every=2), str(workdir))
    record = json.loads((workdir / "config.json").read_text())
    record["config"]["batch.classes_per_batch"] = 8  # the recorded run batched 8 of 10 classes
    (workdir / "config.json").write_text(json.dumps(record))
    saved = tmp_path / "open_set.npz"
    got = evaluate.main(["--workdir", str(workdir), "--config.dataset.protocol=open_set",
                         "--save_embeddings", str(saved)])
    test_labels = load_digits_split("open_set").test_labels
    with np.load(saved) as f:
        np.testing.assert_array_equal(f["labels"], test_labels)
        reference = retrieval.evaluate(f["embeddings"], f["labels"], ks=(1,))
    assert got["num_queries"] == len(test_labels)
    assert got["recall@1"] == pytest.approx(reference["recall@1"], abs=1e-6)


def test_flat_losses_train_on_the_finest_level_of_label_paths():
    from rankax.data import ArraySource, RetrievalDataset

    paths = np.array([[0, 0], [1, 0], [2, 1], [3, 1]])
    src = ArraySource(np.zeros((4, 8, 8, 1), np.float32), paths)
    data = RetrievalDataset("toy", src, src)
    cfg = tiny_config()
    np.testing.assert_array_equal(train_lib.training_labels(cfg, data), [0, 1, 2, 3])
    cfg.loss.hierarchical = True
    np.testing.assert_array_equal(train_lib.training_labels(cfg, data), paths)


def test_revisited_protocol_ranks_the_database_by_similarity(tmp_path):
    from rankax.retrieval import load_gnd, revisited_from_embeddings, revisited_map

    rng = np.random.default_rng(0)
    queries, gallery = rng.normal(size=(3, 4)), rng.normal(size=(12, 4))
    gnd = [
        {"easy": [0, 3], "hard": [5], "junk": [7]},
        {"easy": [1], "hard": [], "junk": []},
        {"easy": [], "hard": [2, 9], "junk": [4]},
    ]
    # Reference ranking written out per query with Python's sort.
    ranks = np.stack(
        [np.array(sorted(range(12), key=lambda j, q=q: -float(gallery[j] @ queries[q]))) for q in range(3)],
        axis=1,
    )
    want = revisited_map(ranks, gnd, kappas=(1, 5))
    got = revisited_from_embeddings(queries, gallery, gnd, (1, 5))
    assert got == pytest.approx(want)
    path = tmp_path / "gnd.pkl"
    import pickle

    names = {"imlist": [f"db{i}" for i in range(12)], "qimlist": ["a", "b", "c"]}
    path.write_bytes(pickle.dumps({"gnd": gnd, **names}))
    assert load_gnd(str(path)) == gnd
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        load_gnd(str(tmp_path / "missing.pkl"))
    with pytest.raises(ValueError, match="gnd has 3 queries"):
        revisited_from_embeddings(queries[:2], gallery, gnd, (1,))


def test_unknown_best_metric_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="best_metric"):
        train_lib.train_and_evaluate(tiny_config(best_metric="map@10"), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")
