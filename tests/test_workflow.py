"""A researcher's first runs: the workdir records its config, train and evaluate share the
CLI convention, errors are one line, failed starts leave nothing, reruns show the whole table."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from experiments import cli
from experiments import evaluate as evaluate_cli
from experiments import train as train_cli
from rankax.train import ConfigError, WorkdirConfigMismatch, input_pipeline, train_lib, writers
from tests.test_train import ROOT, tiny_config

DIGITS = os.path.join(ROOT, "configs", "digits.py")
# The digits config shrunk on the command line, as a user would (3 steps, 8-d embeddings).
SMALL = [
    "--config.num_steps=3", "--config.checkpoint_every=3", "--config.eval_every=0",
    "--config.batch.classes_per_batch=5", "--config.batch.samples_per_class=4",
    "--config.model.embedding_dim=8", "--config.loss.hparams.temperature=0.05",
]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished 3-step run trained through the CLI with overrides, and its stdout."""
    workdir = str(tmp_path_factory.mktemp("run") / "wd")
    final = train_cli.main(["--config", DIGITS, "--workdir", workdir, *SMALL])
    return workdir, final


def test_workdir_records_the_config_and_refuses_another(small_run, capsys):
    workdir, _ = small_run
    record = json.load(open(os.path.join(workdir, "config.json")))
    assert record["config"]["loss.name"] == "supap" and record["config"]["model.embedding_dim"] == 8
    assert record["config"]["loss.hparams.temperature"] == 0.05
    assert record["rankax_version"] and "git_commit" in record
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(SystemExit, match=r"another config \(loss.name: 'supap' -> 'smooth_ap'\)") as info:
        train_cli.main(
            ["--config", DIGITS, "--workdir", workdir, *SMALL, "--config.loss.name=smooth_ap"]
        )
    assert "--allow_config_change=loss.name" in str(info.value)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before  # nothing touched
    # A misspelt key in the allow list is named, with the key it resembles (a section works);
    # it allows nothing, so the change is refused as before.
    capsys.readouterr()
    with pytest.raises(SystemExit, match=r"--allow_config_change=loss.name"):
        train_cli.main(["--config", DIGITS, "--workdir", workdir, *SMALL, "--config.loss.name=smooth_ap",
                        "--allow_config_change=los.name"])
    warned = "'los.name' is not a key or section of this config (did you mean 'loss.name'?)"
    assert warned in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    cfg = tiny_config()
    with pytest.raises(WorkdirConfigMismatch) as err:
        train_lib.train_and_evaluate(cfg, workdir)
    assert "model.embedding_dim" in err.value.differences


def test_a_resume_without_the_runs_overrides_is_told_them(small_run):
    """Continuing a run with more steps but without the overrides it was started with: the
    refusal gives the flags that keep the recorded values (allowing the changes would have
    switched the run's loss and network), and they work."""
    workdir, _ = small_run
    with pytest.raises(SystemExit) as info:
        train_cli.main(["--config", DIGITS, "--workdir", workdir, "--config.num_steps=4",
                        "--allow_config_change=num_steps"])
    message = str(info.value.code)
    keep = message.split("or keep the run's values: ")[1].split()
    runtime = ("num_steps", "checkpoint_every", "eval_every")  # num_steps allowed, the others free
    assert sorted(keep) == sorted(f for f in SMALL if not any(k in f for k in runtime)), message
    rerun = train_cli.main(["--config", DIGITS, "--workdir", workdir, *keep, "--config.num_steps=3"])
    assert "recall@1" in rerun  # the same run: re-evaluated, not refused


def test_rerun_of_a_finished_run_prints_the_whole_table_once(small_run, capsys):
    workdir, final = small_run
    history = json.load(open(os.path.join(workdir, "history.json")))
    capsys.readouterr()
    again = train_cli.main(["--config", DIGITS, "--workdir", workdir, *SMALL])
    out = capsys.readouterr().out
    for row in ("raw pixels", "untrained", "trained"):
        assert f"\n{row} " in out
    assert json.load(open(os.path.join(workdir, "history.json"))) == history  # no duplicate row
    assert again == pytest.approx(final, abs=1e-6)
    assert f"Wrote {os.path.join(workdir, 'metrics.json')}" in out and "test_embeddings.png" in out


def test_allowed_change_continues_the_run_and_is_recorded(tmp_path):
    workdir = str(tmp_path / "wd")
    train_lib.train_and_evaluate(tiny_config(num_steps=4), workdir)
    with pytest.raises(WorkdirConfigMismatch, match="num_steps: 4 -> 6") as info:
        train_lib.train_and_evaluate(tiny_config(num_steps=6), workdir)
    assert "no checkpoint" not in str(info.value)
    more = tiny_config(num_steps=6, log_every=3)  # log_every may change freely
    train_lib.train_and_evaluate(more, workdir, allow_config_change=["num_steps"])
    steps = [h["step"] for h in json.load(open(os.path.join(workdir, "history.json"))) if "loss" in h]
    assert steps[-1] == 6
    record = json.load(open(os.path.join(workdir, "config.json")))
    assert record["config"]["num_steps"] == 6 and record["changes"][-1]["keys"] == {"num_steps": [4, 6]}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # lr 1e39
def test_a_workdir_without_checkpoints_says_so_when_it_refuses_a_change(tmp_path):
    """A run stopped by a non-finite first step keeps its report and record: a corrected
    command is refused (the record differs), and the error says there is no checkpoint, so
    removing the workdir loses nothing."""
    from rankax.train import NonFiniteLossError

    workdir = str(tmp_path / "wd")
    diverging = tiny_config(num_steps=3)
    diverging.optimizer.lr = 1e39
    with pytest.raises(NonFiniteLossError):
        train_lib.train_and_evaluate(diverging, workdir)
    assert os.path.exists(os.path.join(workdir, "nonfinite_steps.jsonl"))
    with pytest.raises(WorkdirConfigMismatch, match=r"optimizer.lr: 1e\+39 -> 0.001\); it holds no "
                                                    r"checkpoint \(that run stopped before its first save"):
        train_lib.train_and_evaluate(tiny_config(num_steps=3), workdir)


def test_evaluate_uses_the_runs_cut_offs_unless_given(tmp_path):
    workdir = str(tmp_path / "wd")
    final = train_cli.main(["--config", DIGITS, "--workdir", workdir, *SMALL, "--config.eval_ks=1,3"])
    got = evaluate_cli.main(["--workdir", workdir])
    assert sorted(k for k in got if k.startswith("recall@")) == ["recall@1", "recall@3"]
    assert got["recall@3"] == pytest.approx(final["recall@3"], abs=1e-6)
    asked = evaluate_cli.main(["--workdir", workdir, "--ks", "2"])
    assert [k for k in asked if k.startswith("recall@")] == ["recall@2"]


def test_evaluate_embeddings_errors_are_one_line(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    np.save(tmp_path / "single.npy", x)
    np.savez(tmp_path / "flat.npz", embeddings=x[:, 0], labels=np.arange(10))
    np.savez(tmp_path / "rows.npz", embeddings=x, labels=np.arange(11))
    (tmp_path / "text.npz").write_text("not an archive")
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(tmp_path / "good.npz", embeddings=x, labels=np.arange(10) % 3)
    np.savez(tmp_path / "none.npz", embeddings=np.zeros((0, 4)), labels=np.zeros(0, int))
    cases = [
        (["--embeddings", str(tmp_path / "single.npy")], "a single array, not an .npz archive"),
        (["--embeddings", str(tmp_path / "missing.npz")], "cannot read an .npz archive"),
        (["--embeddings", str(tmp_path / "text.npz")], r"cannot read an .npz archive .*\(not a numpy file\)"),
        (["--embeddings", str(tmp_path / "none.npz")],
         r"none.npz holds no embeddings \('embeddings' has shape \(0, 4\)\)"),
        (["--embeddings", str(tmp_path / "empty.npz")], "cannot read an .npz archive"),
        (["--embeddings", str(tmp_path / "good.npz"), "--ks", ""], r"--ks must be .* got ''"),
        (["--embeddings", str(tmp_path / "good.npz"), "--ks", "0"], r"--ks must be .* got '0'"),
        (["--embeddings", str(tmp_path / "good.npz"), "--ks", "1,x"], r"--ks must be .* got '1,x'"),
        (["--embeddings", str(tmp_path / "good.npz"), "--block_size", "0"], "--block_size must be >= 1"),
        # checked before anything is read: the workdir need not exist
        (["--workdir", str(tmp_path / "none"), "--ks", "-1"], r"--ks must be .* got '-1'"),
        (["--embeddings", str(tmp_path / "flat.npz")], r"'embeddings' must be \[N, D\], got shape \(10,\)"),
        (["--embeddings", str(tmp_path / "rows.npz")], "labels has 11 rows but inputs has 10"),
        (["--embeddings", str(tmp_path / "rows.npz"), "--step", "3"], "--step applies to --workdir"),
        (["--embeddings", str(tmp_path / "rows.npz"), "--save_embeddings", "o.npz"],
         "--save_embeddings apply to --workdir or --weights evaluation, not --embeddings"),
        (["--embeddings", str(tmp_path / "rows.npz"), "--config.eval_ks=1"], "--config.\\* overrides apply"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message):
            evaluate_cli.main(argv)


def test_evaluate_reads_the_recorded_config_or_takes_overrides(small_run):
    workdir, final = small_run
    recorded = evaluate_cli.main(["--workdir", workdir])
    overridden = evaluate_cli.main(["--workdir", workdir, "--config", DIGITS, *SMALL])
    for got in (recorded, overridden):
        for key in ("recall@1", "map@r", "map"):
            assert got[key] == pytest.approx(final[key], abs=1e-6)
    with pytest.raises(SystemExit, match="another model/config .*embedding_dim|head") as info:
        evaluate_cli.main(["--workdir", workdir, "--config.model.embedding_dim=16"])
    # Evaluation's advice (it said "resume ... or use a fresh workdir", training's).
    assert "evaluate it with the config it was trained with" in str(info.value.code)
    assert "resume" not in str(info.value.code)
    # From the shell: that one line and nothing else (the shapes are compared before any read,
    # so no half-done orbax read dies noisily on a closed event loop).
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", "--workdir", workdir,
         "--config.model.embedding_dim=16"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert "another model/config" in proc.stderr


def test_cli_errors_name_the_key_and_the_fix(tmp_path, capsys):
    config = cli.load_config(DIGITS)
    with pytest.raises(SystemExit, match=r"config.model.embeding_dim does not exist in config.model; "
                       r"did you mean config.model.embedding_dim\?"):
        cli.apply_overrides(config, [("model.embeding_dim", "8")])
    with pytest.raises(SystemExit, match="is not a valid int"):
        cli.apply_overrides(config, [("num_steps", "abc")])
    with pytest.raises(SystemExit, match="(?s)no such config file.*configs/digits.py.*configs/pnp_cub.py"):
        train_cli.main(["--config", "configs/nope.py", "--workdir", str(tmp_path)])
    assert train_cli.main(["--help"]) is None
    shown = capsys.readouterr().out
    assert "--config.<key>=<value>" in shown and "configs/roadmap_sop_resnet50.py" in shown
    assert "--print_config" in shown and "--allow_config_change" in shown
    # Loss hyperparameters: dotted flags add them; the loss's argument names are checked.
    cli.apply_overrides(config, [("loss.hparams.temperature", "0.05"), ("loss.hparams.rho", "50")])
    assert config.loss.hparams.temperature == 0.05 and config.loss.hparams.rho == 50
    config.loss.hparams.temprature = 0.1
    with pytest.raises(ConfigError, match="hparams.temprature is not an argument of supap_loss; "
                       "did you mean config.loss.hparams.temperature"):
        train_lib.check_loss_hparams(config)


def test_keep_freed_memory_flag_applies_the_setting_before_training(tmp_path, monkeypatch):
    import rankax.host
    from rankax.train import loop

    calls = []
    monkeypatch.setattr(rankax.host, "keep_freed_memory", lambda: calls.append("host") or True)
    monkeypatch.setattr(loop, "train_and_evaluate", lambda *a, **k: calls.append("train") or {})
    args = ["--config", DIGITS, "--workdir", str(tmp_path / "run")]
    train_cli.main(args)
    assert calls == ["train"]  # off by default
    train_cli.main([*args, "--keep_freed_memory"])
    assert calls == ["train", "host", "train"]
    with pytest.raises(SystemExit, match="--keep_freed_memory"):
        train_cli.main([*args, "--keep_freed_memory=maybe"])


def test_cli_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config", DIGITS, "--workdir",
         str(tmp_path / "x"), "--config.num_stepz=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "did you mean config.num_steps?" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_failed_start_leaves_nothing_on_disk(tmp_path, monkeypatch):
    from rankax.train import loop

    with pytest.raises(ValueError, match="best_metric"):
        train_lib.train_and_evaluate(tiny_config(best_metric="map@10"), str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()
    cfg = tiny_config()
    cfg.loss.hparams.temperature = -1.0  # refused before anything is written
    with pytest.raises(ConfigError, match="config.loss.hparams: temperature must be a finite number > 0"):
        train_lib.train_and_evaluate(cfg, str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()

    def fail(run):  # after the workdir, its config.json and the checkpointer exist
        assert os.path.exists(os.path.join(run.workdir, "config.json"))
        raise RuntimeError("failed after the workdir was made")

    monkeypatch.setattr(loop, "baselines", fail)
    with pytest.raises(RuntimeError, match="after the workdir"):
        train_lib.train_and_evaluate(tiny_config(), str(tmp_path / "p" / "q" / "run"))
    assert not (tmp_path / "p").exists()  # the parents the run made go too
    (tmp_path / "c").mkdir()  # an existing empty directory stays, empty
    with pytest.raises(RuntimeError):
        train_lib.train_and_evaluate(tiny_config(), str(tmp_path / "c" / "run"))
    assert os.listdir(tmp_path / "c") == []


def test_pretrained_weights_that_cannot_be_loaded_name_the_key(tmp_path):
    """A missing file, an unknown format or a file that holds no known model's weights: a
    ConfigError naming config.model.pretrained (they were a traceback, or an OSError that did
    not say which key), and nothing left in the new workdir."""
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    (tmp_path / "w.json").write_text("{}")
    (tmp_path / "empty.npz").write_bytes(b"")
    cases = {str(tmp_path / "missing.pth"): "No such file", str(tmp_path / "w.json"): "weight format",
             str(tmp_path / "empty.npz"): "is it truncated or corrupt",
             str(tmp_path / "other.npz"): "neither a torchvision ResNet, a timm ViT nor a RetrievalNet"}
    for path, reason in cases.items():
        config = tiny_config()
        config.model.pretrained = path
        with pytest.raises(ConfigError, match=rf"^config.model.pretrained='{re.escape(path)}' cannot be "
                                              rf"loaded: .*{reason}"):
            train_lib.train_and_evaluate(config, str(tmp_path / "run"))
        assert not (tmp_path / "run").exists()


def test_pretrained_weights_of_another_model_or_with_pickled_objects_name_the_key(tmp_path, monkeypatch):
    """ResNet weights for another model (merge_pretrained's ValueError was a traceback) and a
    checkpoint pickling an argparse.Namespace beside its tensors (torch's UnpicklingError was a
    traceback): ConfigErrors naming config.model.pretrained and the fix."""
    torch = pytest.importorskip("torch")
    import argparse

    from tests.test_convert import TorchResNet, _randomize

    weights = _randomize(TorchResNet([1, 1, 1, 1], width=8)).state_dict()
    torch.save(weights, tmp_path / "resnet.pth")
    torch.save({"state_dict": weights, "args": argparse.Namespace(lr=0.1)}, tmp_path / "args.pth")
    cases = {"resnet.pth": r"does not fit config.model.name='mlp': .*params/backbone is not in the model.*"
                           r"set --config.model.name to the model they belong to",
             "args.pth": r"cannot be loaded: .*args.pth holds objects besides tensors "
                         r"\(.*argparse.Namespace.*\), which rankax does not unpickle.*weights alone"}
    for name, words in cases.items():
        config = tiny_config()
        config.model.pretrained = str(tmp_path / name)
        key = f"config.model.pretrained='{re.escape(str(tmp_path / name))}'"
        with pytest.raises(ConfigError, match=rf"(?s)^{key} {words}"):
            train_lib.train_and_evaluate(config, str(tmp_path / "run"))
    # `~` in the key, which no shell expands after `=`: the file is found
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tiny_config()
    config.model.pretrained = "~/resnet.pth"
    with pytest.raises(ConfigError, match=r"does not fit config.model.name='mlp'"):
        train_lib.train_and_evaluate(config, str(tmp_path / "run"))


def test_missing_tfds_and_unset_pretrained_weights_are_explained(monkeypatch):
    from configs import roadmap_cub_resnet50

    config = roadmap_cub_resnet50.get_config()
    assert "--config.model.pretrained=" in train_lib.pretrained_warning(config)
    assert train_lib.pretrained_warning(tiny_config()) is None
    # DyML's official runs train ResNet-34 from scratch (model/dyml_resnet34.yaml: pretrained:
    # False): model.pretrained = "" says so, and no warning; DyML-Product fine-tunes ImageNet.
    from configs import happier_dyml_animal, happier_dyml_product, happier_dyml_vehicle

    assert train_lib.pretrained_warning(happier_dyml_vehicle.get_config()) is None
    assert train_lib.pretrained_warning(happier_dyml_animal.get_config()) is None
    assert "resnet34.pth" in train_lib.pretrained_warning(happier_dyml_product.get_config())
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'rankax\[data\]'"):
        input_pipeline.load(config)


def test_missing_grain_is_explained_when_the_dataset_loads(monkeypatch):
    # An image dataset is decoded by grain's pipeline: the run stops before training, not at
    # its first evaluation.
    tfds = pytest.importorskip("tensorflow_datasets")
    from configs import roadmap_cub_resnet50

    config = roadmap_cub_resnet50.get_config()
    config.dataset.pil_decode = False  # mock_data serves decoded images only
    monkeypatch.setitem(sys.modules, "grain", None)  # as if not installed
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ConfigError, match=r"'grain'.*pip install 'rankax\[data\]'"):
            input_pipeline.load(config)


@pytest.mark.parametrize(
    "module, what, fix",
    [
        ("grain", "the input pipeline", "pip install 'rankax[data]'"),
        ("tensorflow_datasets", "load_sop", "pip install 'rankax[data]'"),
        ("scann", "backend='scann'", "pip install 'rankax[scann]'"),
        ("safetensors.numpy", "reading w.safetensors", "pip install 'rankax[weights]'"),
        ("torch", "reading w.pth", "pip install torch"),
    ],
)
def test_a_missing_optional_package_names_its_extra(monkeypatch, module, what, fix):
    from rankax._core import optional

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ModuleNotFoundError) as err:
        optional.require(module, what)
    assert err.value.name == module and what in str(err.value) and fix in str(err.value)


def test_the_loaders_name_the_extra_of_a_missing_package(monkeypatch, tmp_path):
    from rankax.data import loader
    from rankax.models import convert

    monkeypatch.setitem(sys.modules, "grain", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'rankax\[data\]'"):
        loader.iterate(lambda i: i, 0, 3)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'rankax\[weights\]'"):
        convert.load_state_dict(tmp_path / "w.safetensors")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ModuleNotFoundError, match=r"w\.pth.*\.npz.*pip install torch"):
        convert.load_state_dict(tmp_path / "w.pth")


def test_progress_bar_starts_after_the_compiling_step(tmp_path, monkeypatch):
    starts = []
    original = writers.progress
    record = lambda start, total: starts.append(start) or original(start, total)
    monkeypatch.setattr(writers, "progress", record)
    train_lib.train_and_evaluate(tiny_config(num_steps=4), str(tmp_path))
    train_lib.train_and_evaluate(tiny_config(num_steps=6), str(tmp_path), allow_config_change=["num_steps"])
    assert starts == [1, 5]  # after step 1 of the run, after the first resumed step (4 -> 5)


def test_demo_figures_show_baselines_and_before_after(small_run):
    from matplotlib import image

    workdir, _ = small_run
    baselines = json.load(open(os.path.join(workdir, "baselines.json")))
    assert {"raw pixels", "untrained"} <= set(baselines)
    width = image.imread(os.path.join(workdir, "test_embeddings.png")).shape[1]
    assert width >= 2 * 4.6 * 100  # two panels: untrained and trained
    # The raw-pixel baseline: MAP@R of the L2-normalised test pixels, by a numpy sort (duplicate
    # images tie: a positive tied with a negative is ranked after it, H(0) = 1).
    config = cli.load_config(DIGITS)
    test = input_pipeline.load(config).test
    x = test.images.reshape(len(test), -1).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = np.round(x @ x.T, 12)
    np.fill_diagonal(sims, -np.inf)
    is_pos = (test.labels[None, :] == test.labels[:, None]) & ~np.eye(len(x), dtype=bool)  # not itself
    order = np.stack([np.lexsort((is_pos[i], -sims[i])) for i in range(len(x))])
    same = np.take_along_axis(is_pos, order, axis=1)
    r = same.sum(1)
    cum = np.cumsum(same, axis=1) / np.arange(1, len(x) + 1)
    map_at_r = np.mean([np.sum((cum * same)[i, : r[i]]) / r[i] for i in range(len(x))])
    assert baselines["raw pixels"]["map@r"] == pytest.approx(map_at_r, abs=1e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.name=5", "config.model.name must be one of"),
        ("model.name=resnet5", "got 'resnet5'; did you mean 'resnet50'?"),
        ("checkpoint_every=0", "config.checkpoint_every must be an int >= 1, got 0"),
        ("keep_checkpoints=0", "config.keep_checkpoints must be an int >= 1"),
        ("num_steps=-3", "config.num_steps must be an int >= 0, got -3"),
        ("num_steps=None", "config.num_steps must be an int >= 0, got None"),
        ("num_steps=0", "config.num_steps must be >= 1 (or set config.num_epochs)"),
        ("batch.samples_per_class=1", "config.batch.samples_per_class must be an int >= 2"),
        ("batch.classes_per_batch=1", "config.batch.classes_per_batch must be an int >= 2"),
        ("batch.classes_per_batch=11", "config.batch ('pk' sampler on the training split of digits; "
         "batch_size = classes_per_batch x samples_per_class = 11 x 16): "
         "classes_per_batch must be in [1, 10]"),
        ("model.embedding_dim=0", "config.model.embedding_dim must be None or an int >= 1"),
        ("optimizer.lr=-0.1", "config.optimizer.lr must be a finite number > 0, got -0.1"),
        ("optimizer.lr=nan", "config.optimizer.lr must be a finite number > 0, got nan"),
        ("optimizer.momentum=1.5", "config.optimizer.momentum must be a finite number in [0, 1)"),
        ("optimizer.weight_decay=-5", "config.optimizer.weight_decay must be a finite number >= 0"),
        ("loss.weight=0", "config.loss.weight is 0 and no loss term has a weight > 0"),
        ("loss.hparams.temperature=-1", "config.loss.hparams: temperature must be a finite number > 0"),
        ("xbm.size=-5", "config.xbm.size must be an int >= 0"),
        ("eval_batch_size=0", "config.eval_batch_size must be an int >= 1"),
        ("eval_backend=fast", "config.eval_backend must be one of"),
        ("eval_ks=0,1", "config.eval_ks must be a non-empty sequence of positive ints"),
        ("eval_ks=1,x", "--config.eval_ks='1,x' is not a valid tuple (comma-separated values"),
        ("dataset.max_shift=-1", "config.dataset.max_shift must be an int >= 0"),
        ("dataset.split_seed=-1", "config.dataset.split_seed must be an int >= 0, got -1"),
        ("seed=-1", "config.seed must be an int in [0, 4294967295]"),
        ("seed=None", "config.seed must be an int in [0, 4294967295] (jax.random.PRNGKey keeps only its "
         "low 32 bits), got None"),
        ("seed=4294967296", "config.seed must be an int in [0, 4294967295]"),  # 2**32: the same key as 0
        ("loss.name=normalized_softmax", "config.loss.name='normalized_softmax' is a loss of the embeddings"),
        ("loss.name=normalized_softmax", "add it as a term under config.loss.terms"),
        ("loss.name=supapp", "config.loss.name must be one of blackbox_ap, calibration,"),
        ("loss.name=smoothap", "got 'smoothap'; did you mean 'smooth_ap'?"),
        ("optimizer.decay_at=-0.1,0.5", "config.optimizer.decay_at must be fractions of the run in (0, 1]"),
        ("optimizer.decay_at=0.5,1.5", "config.optimizer.decay_at must be fractions of the run in (0, 1]"),
        ("optimizer.decay_at=0.5,0.5", "config.optimizer.decay_at must be fractions of the run in (0, 1], "
         "increasing, each once"),
        ("optimizer.decay_at=0.75,0.5", "config.optimizer.decay_at must be"),
        ("optimizer.decay_epochs=0.5", "config.optimizer.decay_epochs must be epochs, ints >= 1"),
        ("optimizer.decay_epochs=0", "config.optimizer.decay_epochs must be epochs, ints >= 1"),
        ("optimizer.decay_epochs=70,30", "config.optimizer.decay_epochs must be epochs, ints >= 1, in order"),
        ("optimizer.frozen_groups=a b", "--config.optimizer.frozen_groups='a b' is not a valid tuple"),
    ],
)
def test_config_values_are_checked_before_the_workdir_is_touched(tmp_path, override, message):
    workdir = tmp_path / "new" / "run"
    with pytest.raises(SystemExit) as info:
        train_cli.main(["--config", DIGITS, "--workdir", str(workdir), f"--config.{override}"])
    assert message in str(info.value.code)
    assert not (tmp_path / "new").exists()


def test_schedule_points_and_list_losses_that_are_allowed_pass_the_checks():
    from rankax.train import config_checks

    config = cli.load_config(DIGITS)
    # An epoch listed twice decays twice (torch's MultiStepLR); a decay at the end of the run.
    cli.apply_overrides(config, [("optimizer.decay_epochs", "30,30,70"), ("optimizer.decay_at", "0.5,1")])
    cli.apply_overrides(config, [("loss.name", "calibration"), ("seed", "4294967295")])
    config_checks.check_config(config)
    assert config.optimizer.decay_epochs == (30, 30, 70) and config.optimizer.decay_at == (0.5, 1)


def test_a_loss_terms_schedule_points_are_checked_as_the_optimizers():
    from configs import suprank_sop
    from rankax.train import config_checks

    config = suprank_sop.get_config()  # a `cluster` term with its own optimizer
    config.loss.terms.cluster.optimizer.decay_epochs = (5, 2)
    with pytest.raises(ConfigError, match=r"config.loss.terms.cluster.optimizer.decay_epochs must be epochs, "
                       r"ints >= 1, in order .*got \(5, 2\)"):
        config_checks.check_config(config)


def test_tuple_overrides_take_words_and_numbers():
    from configs import suprank_sop

    config = cli.load_config(DIGITS)  # frozen_groups is () here: entries of no known type yet
    cli.apply_overrides(config, [("optimizer.frozen_groups", "head")])
    assert config.optimizer.frozen_groups == ("head",)
    cli.apply_overrides(config, [("optimizer.frozen_groups", "backbone, head")])
    assert config.optimizer.frozen_groups == ("backbone", "head")
    cli.apply_overrides(config, [("eval_ks", "1,2,4"), ("optimizer.decay_at", "0.25")])
    assert config.eval_ks == (1, 2, 4) and config.optimizer.decay_at == (0.25,)
    strings = suprank_sop.get_config()  # frozen_groups holds strings: every entry is one
    assert strings.optimizer.frozen_groups == ("backbone",)
    cli.apply_overrides(strings, [("optimizer.frozen_groups", "backbone,cluster")])
    assert strings.optimizer.frozen_groups == ("backbone", "cluster")
    cli.apply_overrides(strings, [("optimizer.frozen_groups", "head,'1'")])
    assert strings.optimizer.frozen_groups == ("head", "1")
    cli.apply_overrides(strings, [("optimizer.frozen_groups", "('a', 'b')")])
    assert strings.optimizer.frozen_groups == ("a", "b")
    for bad in ("a,,b", "'a,b", "a b"):
        with pytest.raises(SystemExit, match=r"--config.optimizer.frozen_groups=.* is not a valid tuple "
                           r"\(comma-separated values, e.g. a,b\)"):
            cli.apply_overrides(strings, [("optimizer.frozen_groups", bad)])


def test_mlp_without_projection_returns_its_normalised_trunk_features():
    import jax

    from rankax.models import factory

    model = factory.build("mlp", hidden=(6,), embedding_dim=None)
    x = np.random.default_rng(0).random((3, 2, 2, 1)).astype(np.float32)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    assert "head" not in params
    dense, norm = params["Dense_0"], params["LayerNorm_0"]
    h = x.reshape(3, -1) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    h = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-6)  # flax's eps
    h = h * np.asarray(norm["scale"]) + np.asarray(norm["bias"])
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # tanh GELU
    expected = h / np.linalg.norm(h, axis=1, keepdims=True)
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, atol=1e-5)


def test_every_experiment_config_passes_the_value_checks():
    from rankax.train import config_checks

    for path, _ in cli.available_configs():
        config = cli.load_config(path)
        config_checks.check_config(config)  # raises naming the key otherwise
        train_lib.check_loss_hparams(config)


def test_cli_refuses_unusable_workdirs_and_repeated_flags(tmp_path, monkeypatch):
    from rankax.train import loop

    file = tmp_path / "file"
    file.write_text("x")
    run = lambda *a: train_cli.main(["--config", DIGITS, *a])  # noqa: E731
    for workdir, message in ((file, "is a file, not a directory"), (file / "sub", f"{file} is a file")):
        with pytest.raises(SystemExit, match=re.escape(message)):
            run("--workdir", str(workdir))
    with pytest.raises(SystemExit, match="--workdir= needs a value"):
        run("--workdir=")
    with pytest.raises(SystemExit, match="--config is given twice"):
        run("--workdir", str(tmp_path / "w"), "--config", DIGITS)
    with pytest.raises(SystemExit, match="config.loss.terms is empty in this config; add the whole entry"):
        run("--workdir", str(tmp_path / "w"), "--config.loss.terms.foo.weight=1")
    # Ctrl-C: one line saying how to resume, exit status 130 (no traceback).
    monkeypatch.setattr(loop, "train_and_evaluate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit) as info:
        run("--workdir", str(tmp_path / "w"))
    assert info.value.code == 130


def test_workdir_record_must_be_readable_and_present_with_checkpoints(tmp_path):
    from rankax.train import workdir as workdir_lib

    config = tiny_config()
    (tmp_path / "config.json").write_text('{"created":')
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        workdir_lib.check(config, str(tmp_path))
    with pytest.raises(SystemExit, match="config.json is not valid JSON"):
        evaluate_cli.main(["--workdir", str(tmp_path)])
    (tmp_path / "config.json").unlink()
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)  # another run's, or an old one's
    with pytest.raises(WorkdirConfigMismatch, match="holds checkpoints but no config.json"):
        workdir_lib.check(config, str(tmp_path))
    adopted = workdir_lib.check(config, str(tmp_path), ["*"])
    assert list(adopted) == [workdir_lib.UNRECORDED]


@pytest.mark.parametrize("files", [["metrics.json"], ["history.json"], ["metrics.json", "history.json"]])
def test_results_without_a_record_are_refused_like_checkpoints(tmp_path, files):
    """Another run's metrics.json / history.json in a workdir without config.json: a start used
    to take them as this run's (renaming them as its earlier end); now it is refused unless '*'."""
    from rankax.train import workdir as workdir_lib

    for name in files:
        (tmp_path / name).write_text("[]")
    with pytest.raises(WorkdirConfigMismatch, match=f"holds {' and '.join(files)} but no config.json"):
        workdir_lib.check(tiny_config(), str(tmp_path))
    assert list(workdir_lib.check(tiny_config(), str(tmp_path), ["*"])) == [workdir_lib.UNRECORDED]
    (tmp_path / "events.out.tfevents.1").write_text("")  # other files do not count
    for name in files:
        (tmp_path / name).unlink()
    assert workdir_lib.check(tiny_config(), str(tmp_path)) == {}


def test_adopted_checkpoints_are_recorded_as_a_change(small_run, tmp_path):
    """Checkpoints without config.json (an older or copied run) resumed with '*': the record
    the start creates says that it adopted them, under changes."""
    import shutil

    from rankax.train import workdir as workdir_lib

    workdir = str(tmp_path / "copy")
    shutil.copytree(small_run[0], workdir)
    os.remove(os.path.join(workdir, "config.json"))
    train_cli.main(["--config", DIGITS, "--workdir", workdir, *SMALL, "--allow_config_change=*"])
    record = json.load(open(os.path.join(workdir, "config.json")))
    assert [list(c["keys"]) for c in record["changes"]] == [[workdir_lib.UNRECORDED]]


def test_adoption_is_recorded_even_when_the_start_fails_before_a_step(small_run, tmp_path, monkeypatch):
    """The record a start creates over adopted checkpoints notes the adoption at once: it used
    to wait for the first step, so a start that failed before it left a plain record, and the
    next start (without '*') resumed the unrecorded checkpoints silently."""
    import shutil

    from rankax.train import loop
    from rankax.train import workdir as workdir_lib

    workdir = str(tmp_path / "copy")
    shutil.copytree(small_run[0], workdir)
    os.remove(os.path.join(workdir, "config.json"))

    def fail(run):
        raise OSError("input pipeline down")

    monkeypatch.setattr(loop, "batches", fail)
    more = [*SMALL, "--config.num_steps=6", "--allow_config_change=*"]
    with pytest.raises((OSError, SystemExit), match="input pipeline down"):
        train_cli.main(["--config", DIGITS, "--workdir", workdir, *more])
    record = json.load(open(os.path.join(workdir, "config.json")))
    assert [list(c["keys"]) for c in record["changes"]] == [[workdir_lib.UNRECORDED]]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # lr 1e39
def test_a_change_is_recorded_only_once_a_step_trained_with_it(small_run, tmp_path):
    """A resumed run's allowed change whose first step is non-finite (raise mode) is not
    recorded, whatever the logging cadence: the original config still resumes."""
    import shutil

    from rankax.train import NonFiniteLossError

    workdir = str(tmp_path / "copy")
    shutil.copytree(small_run[0], workdir)
    before = json.load(open(os.path.join(workdir, "config.json")))
    for log_every in (1, 10):
        bad = [*SMALL, "--config.num_steps=6", "--config.optimizer.lr=1e39",
               f"--config.log_every={log_every}", "--allow_config_change=num_steps,optimizer.lr,log_every"]
        with pytest.raises((NonFiniteLossError, SystemExit), match="non-finite"):
            train_cli.main(["--config", DIGITS, "--workdir", workdir, *bad])
        after = json.load(open(os.path.join(workdir, "config.json")))
        assert after["changes"] == before["changes"] and after["config"] == before["config"], log_every
    train_cli.main(["--config", DIGITS, "--workdir", workdir, *SMALL])  # the recorded run, unchanged


def _relabel_first_item(monkeypatch, split: str):
    """Makes ``input_pipeline.load`` give ``split`` with its first label changed (other data of
    the same size); returns the patched loader."""
    load = input_pipeline.load

    def relabelled(config):
        data = load(config)
        source = getattr(data, split)
        source.labels = source.labels.copy()
        source.labels[0] = (source.labels[0] + 1) % 10
        return data

    monkeypatch.setattr(input_pipeline, "load", relabelled)
    return relabelled


def test_baselines_of_another_test_split_are_set_aside(small_run, tmp_path, monkeypatch, capsys):
    """A resume onto another test split (--allow_config_change=data): the raw-pixel and
    untrained rows were evaluated on the old one, so they move to baselines.previous_data.json
    and leave the table (they had been shown beside the trained row of the new split)."""
    import shutil


    workdir = str(tmp_path / "copy")
    shutil.copytree(small_run[0], workdir)
    before = json.load(open(os.path.join(workdir, "baselines.json")))
    _relabel_first_item(monkeypatch, "test")
    capsys.readouterr()
    train_cli.main(["--config", DIGITS, "--workdir", workdir, *SMALL, "--allow_config_change=data"])
    out = capsys.readouterr().out
    assert not os.path.exists(os.path.join(workdir, "baselines.json"))
    assert json.load(open(os.path.join(workdir, "baselines.previous_data.json"))) == before
    rows = [line for line in out.splitlines() if line.startswith(("untrained", "raw pixels"))]
    assert "moved to" in out and not rows


def test_a_resume_and_an_evaluation_do_not_read_the_pretrained_weights(small_run, tmp_path):
    """The checkpoint replaces the pretrained weights, so a run moved to a node without their
    file resumes and evaluates; only a start with no readable checkpoint reads them."""
    import shutil

    workdir = str(tmp_path / "copy")
    shutil.copytree(small_run[0], workdir)
    gone = str(tmp_path / "gone.pth")
    moved = [*SMALL, f"--config.model.pretrained={gone}"]
    train_cli.main(["--config", DIGITS, "--workdir", workdir, *moved, "--config.num_steps=4",
                    "--allow_config_change=num_steps,model.pretrained"])
    assert json.load(open(os.path.join(workdir, "metrics.json")))
    evaluate_cli.main(["--workdir", workdir])
    for step in os.listdir(os.path.join(workdir, "checkpoints")):  # none readable: a fresh start
        shutil.rmtree(os.path.join(workdir, "checkpoints", step))
        os.makedirs(os.path.join(workdir, "checkpoints", step, "garbage"))
    with pytest.raises((OSError, SystemExit), match="gone.pth"):
        train_cli.main(["--config", DIGITS, "--workdir", workdir, *moved, "--config.num_steps=4"])


def test_evaluate_cli_names_missing_workdirs_and_output_folders(tmp_path):
    with pytest.raises(SystemExit, match="--workdir .* does not exist"):
        evaluate_cli.main(["--workdir", str(tmp_path / "nope")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="file is a file, not a folder"):
        evaluate_cli.main(["--workdir", str(tmp_path), "--output", str(tmp_path / "file" / "m.json")])


def test_another_tools_config_json_is_not_read_as_a_run(tmp_path):
    """A Hugging Face config.json in the workdir was compared key by key with the config ("holds
    a run with another config ... and 45 more"), and allowing the changes merged into it."""
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["ViTModel"], "hidden_size": 768}))
    with pytest.raises(ConfigError, match=r"config\.json is not a rankax run record .*another tool's"):
        train_lib.train_and_evaluate(tiny_config(), str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["hidden_size"] == 768


def test_a_workdir_in_use_refuses_a_second_run(tmp_path):
    from rankax.train import workdir as workdir_lib

    workdir = tmp_path / "run"
    with workdir_lib.locked(str(workdir)):  # as a run in another process would hold it
        (workdir / "config.json").write_text("{}")
        with pytest.raises(ConfigError, match="is in use by another run"):
            train_lib.train_and_evaluate(tiny_config(), str(workdir))
        assert sorted(os.listdir(workdir)) == [".lock", "config.json"]  # nothing removed or added
    # Released with the block (and by the OS when a process dies): the next start proceeds.
    with workdir_lib.locked(str(workdir)):
        pass


def test_workdir_refuses_other_data_and_records_other_code(small_run, tmp_path, monkeypatch, capsys):
    """The record holds the data (counts, label hashes) and topology: a resume on relabelled
    training data is refused unless allowed; one with other code goes on, said and recorded."""
    import shutil

    from rankax.train import input_pipeline
    from rankax.train import workdir as workdir_lib

    workdir = str(tmp_path / "copy")
    shutil.copytree(small_run[0], workdir)
    record = json.load(open(os.path.join(workdir, "config.json")))
    assert record["topology"]["devices"] >= 1 and record["topology"]["processes"] == 1
    train = record["data"]["train"]
    relabelled = _relabel_first_item(monkeypatch, "train")
    argv = ["--config", DIGITS, "--workdir", workdir, *SMALL]
    with pytest.raises(SystemExit, match=rf"other data \(train {train['items']} -> {train['items']} items, "
                                         r"other labels\).*--allow_config_change=data"):
        train_cli.main(argv)
    train_cli.main([*argv, "--allow_config_change=data"])
    record = json.load(open(os.path.join(workdir, "config.json")))
    old, new = record["changes"][-1]["keys"]["data"]
    assert old["train"] == train and new["train"]["labels_sha256"] != train["labels_sha256"]
    assert record["data"] == new  # later starts compare with the data the run went on with
    assert os.path.exists(os.path.join(workdir, "baselines.json"))  # the test split is the same

    monkeypatch.setattr(input_pipeline, "load", relabelled)
    real = workdir_lib.code_version()
    monkeypatch.setattr(workdir_lib, "code_version", lambda: {**real, "git_commit": "0" * 40})
    capsys.readouterr()
    train_cli.main(argv)
    assert "Resuming a run recorded with other code" in capsys.readouterr().out
    record = json.load(open(os.path.join(workdir, "config.json")))
    assert record["changes"][-1]["keys"]["code"][1]["git_commit"] == "0" * 40
    assert "data" not in record["changes"][-1]["keys"]  # the relabelled data are the record's now


@pytest.mark.parametrize("error", ["save", "nonfinite"])
def test_train_cli_ends_an_explained_failure_with_its_message(error, tmp_path, monkeypatch):
    """A failed checkpoint save or a non-finite step stops the CLI with its message (what
    happened, what to do) and a non-zero status, not a traceback."""
    from rankax.train import CheckpointSaveError, NonFiniteLossError, loop

    def fail(*args, **kwargs):
        if error == "save":
            raise CheckpointSaveError("saving checkpoint step 4 failed (disk full)", step=4,
                                      directory=str(tmp_path), previous=2, errno=28)
        raise NonFiniteLossError("step 5: non-finite loss; config.on_nonfinite='skip' skips them", step=5,
                                 indices=np.arange(4), terms={}, last_checkpoint=4, report_path=None)

    monkeypatch.setattr(loop, "train_and_evaluate", fail)
    with pytest.raises(SystemExit, match="disk full" if error == "save" else "on_nonfinite='skip'"):
        train_cli.main(["--config", DIGITS, "--workdir", str(tmp_path / "wd"), *SMALL])


def test_the_commit_is_taken_only_from_a_checkout_of_rankax(tmp_path):
    """A wheel installed into a virtual environment inside the user's own repository records
    no commit (that commit is the user's code); a checkout records its HEAD, +dirty once a
    tracked file changes."""
    from rankax.train import workdir as workdir_lib

    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True,
                                    text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    site = tmp_path / ".venv" / "lib" / "site-packages" / "rankax"
    site.mkdir(parents=True)
    (tmp_path / "rankax").mkdir()
    (tmp_path / "rankax" / "__init__.py").write_text("")
    git("add", "pyproject.toml", "rankax/__init__.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    head = git("rev-parse", "HEAD")
    assert workdir_lib.checkout_commit(str(site)) is None
    nested = tmp_path / "vendor" / "rankax"  # a rankax tree with its own pyproject.toml, not a checkout
    nested.mkdir(parents=True)
    (tmp_path / "vendor" / "pyproject.toml").write_text("[project]\nname = 'rankax'\n")
    assert workdir_lib.checkout_commit(str(nested)) is None
    assert workdir_lib.checkout_commit(str(tmp_path / "rankax")) == head
    (tmp_path / "rankax" / "__init__.py").write_text("x = 1\n")
    assert workdir_lib.checkout_commit(str(tmp_path / "rankax")) == head + "+dirty"
    assert workdir_lib.checkout_commit(str(tmp_path / "nowhere" / "rankax")) is None


def test_the_printed_table_shows_the_runs_cut_offs_and_metrics(capsys):
    """Every recall@k of the run (DyML's 1/10/20, SOP's 1/10/100/1000: it showed only the
    fixed 1/2/4/8, so recall@1 alone), by k, then the other metrics; counts and timings left
    out; a metric another row lacks shows as nan; long names keep their columns apart."""
    report = {
        "untrained": {"recall@1": 0.5, "recall@20": 0.9, "recall@10": 0.8, "map@r": 0.25, "hap": 0.4,
                      "medium/mp@10": 0.125, "num_queries": 5, "seconds": 1.5},
        "trained": {"recall@1": 0.75, "recall@10": 0.875, "recall@20": 0.95, "map@r": 0.5, "hap": 0.625},
    }
    assert writers.table_keys(report["untrained"]) == [
        "recall@1", "recall@10", "recall@20", "map@r", "hap", "medium/mp@10"]
    writers.print_table(report)
    lines = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert lines[0] == ["recall@1", "recall@10", "recall@20", "map@r", "hap", "medium/mp@10"]
    assert lines[1] == ["untrained", "0.5000", "0.8000", "0.9000", "0.2500", "0.4000", "0.1250"]
    assert lines[2] == ["trained", "0.7500", "0.8750", "0.9500", "0.5000", "0.6250", "nan"]


_GC_INTERRUPT = """
import gc, signal, sys, time
from experiments import cli
# Python's handler, as a terminal's process has it (a background job's parent may ignore SIGINT)
signal.signal(signal.SIGINT, signal.default_int_handler)
fired = []
def callback(phase, info):  # a SIGINT arriving while a gc callback (JAX's) runs
    if phase == "start" and not fired:
        fired.append(1)
        signal.raise_signal(signal.SIGINT)
context = cli.prompt_interrupts() if sys.argv[1] == "handled" else __import__("contextlib").nullcontext()
try:
    with context:
        gc.callbacks.append(callback)
        gc.collect()
        time.sleep(3)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("mode, expected", [("plain", "not interrupted"), ("handled", "interrupted")])
def test_an_interrupt_during_a_gc_callback_is_not_lost(mode, expected):
    """Python raises KeyboardInterrupt inside the gc callback, which drops it ("Exception ignored"):
    a Ctrl-C while JAX loaded was lost and the run trained on. cli.prompt_interrupts asks again."""
    out = subprocess.run([sys.executable, "-c", _GC_INTERRUPT, mode], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.stdout.strip() == expected, out.stderr
    assert ("Exception ignored" in out.stderr) == (mode == "plain")


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler, as a terminal's process has it, restored afterwards: a
    background job (CI under nohup) may inherit SIGINT ignored, which prompt_interrupts keeps."""
    import signal

    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)


def test_an_interrupt_turned_into_an_import_error_exits_130(monkeypatch, tmp_path, capsys,
                                                            python_sigint_handler):
    """A Ctrl-C inside a C extension's initialisation (numpy's, while JAX loads) reaches the
    command as an ImportError: it is reported as the interrupt; an ImportError without one is not."""
    import signal

    def interrupted_import(values, config):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise ImportError("Encountered an error while initializing the extension.") from None

    monkeypatch.setattr(train_cli, "_train", interrupted_import)
    with pytest.raises(SystemExit) as info:
        train_cli.main(["--config", DIGITS, "--workdir", str(tmp_path / "w")])
    assert info.value.code == 130
    assert "interrupted: the same command starts afresh" in capsys.readouterr().err
    monkeypatch.setattr(train_cli, "_train", lambda values, config: __import__("no_such_module_here"))
    with pytest.raises(ImportError, match="no_such_module_here"):
        train_cli.main(["--config", DIGITS, "--workdir", str(tmp_path / "w")])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_an_ignored_sigint_stays_ignored():
    """A background job whose parent ignores SIGINT keeps ignoring it under prompt_interrupts."""
    import signal

    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with cli.prompt_interrupts() as raised:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
        assert not raised.is_set()
    finally:
        signal.signal(signal.SIGINT, saved)


@pytest.mark.parametrize(
    ("override", "message"),
    [("loss.hparams.temprature=0.05", "did you mean config.loss.hparams.temperature?"),
     ("loss.hparams.temperature=-1", "config.loss.hparams: temperature must be a finite number > 0"),
     ("loss.name=smoothap", "did you mean 'smooth_ap'?"),
     # names of a fixed set, which a run refused only once its data had loaded
     ("dtype=float16", "config.dtype must be one of ['float32', 'bfloat16'], got 'float16'"),
     ("dataset.name=digitz", "did you mean 'digits'?"),
     ("precision=half", "config.precision must be one of ['float32', 'mixed']"),
     ("batch.sampler=pk_replacment", "did you mean 'pk_replacement'?"),
     ("model_selection=worst", "config.model_selection must be one of ['last', 'best']"),
     ("on_nonfinite=ignore", "config.on_nonfinite must be one of ['raise', 'skip']")],
)
def test_print_config_checks_the_config_as_a_run_does(override, message, capsys):
    """``--print_config`` printed a config with a typo and exited 0; the run then refused it."""
    with pytest.raises(SystemExit) as info:
        train_cli.main(["--config", DIGITS, "--print_config", f"--config.{override}"])
    assert message in str(info.value.code)
    assert train_cli.main(["--config", DIGITS, "--print_config"]) is None
    assert "loss:" in capsys.readouterr().out


def test_keep_recorded_offers_no_flag_for_a_key_absent_either_side():
    """A flag cannot remove a key, nor set one the config lacks (the CLI refuses it) outside
    the loss's open keyword arguments."""
    from rankax.train import workdir

    assert workdir._keep_recorded({"old_key": (3, "<absent>")}) == ""
    assert workdir._keep_recorded({"loss.hparams.temperature": ("<absent>", 0.05)}) == ""
    assert workdir._keep_recorded({"num_steps": (3, 6)}).endswith("--config.num_steps=3")
    # the loss's keyword arguments are an open section: a flag adds the recorded one back
    assert workdir._keep_recorded({"loss.hparams.temperature": (0.05, "<absent>")}).endswith(
        "--config.loss.hparams.temperature=0.05")
