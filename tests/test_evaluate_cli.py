"""experiments/evaluate.py on small .npz files, run in-process."""

import json
import pathlib
import re
import types

import numpy as np
import pytest

from experiments import evaluate as cli
from rankax import retrieval


def _write(path, x, y):
    np.savez(path, embeddings=x, labels=y)
    return str(path)


def _data(seed, n=60, d=8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 8, size=n)


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    x, y = _data(0)
    out = tmp_path / "m" / "metrics.json"
    metrics = cli.main(["--embeddings", _write(tmp_path / "e.npz", x, y), "--ks", "1,5",
                        "--output", str(out)])
    printed = capsys.readouterr().out
    assert "recall@5" in printed and "map@r" in printed
    record = json.loads(out.read_text())
    want = retrieval.evaluate(x, y, ks=(1, 5))
    for key, value in want.items():
        assert record["metrics"][key] == pytest.approx(value)
        assert metrics[key] == pytest.approx(value)


def test_output_records_the_backend_auto_resolved_to(tmp_path, monkeypatch):
    """``--backend auto`` was recorded as "auto": whether the metrics were exact or ScaNN's
    approximation was not in the file."""
    x, y = _data(3)
    path, out = _write(tmp_path / "e.npz", x, y), tmp_path / "m.json"
    cli.main(["--embeddings", path, "--backend", "auto", "--output", str(out)])  # 60 items: exact
    record = json.loads(out.read_text())
    assert (record["backend"], record["backend_used"]) == ("auto", "exact")
    cli.main(["--embeddings", path, "--ks", "1", "--levels", "0", "--output", str(out)])
    assert json.loads(out.read_text())["backend_used"] == "exact"
    pytest.importorskip("scann")
    from rankax.retrieval import scann_backend

    monkeypatch.setattr(scann_backend, "choose_backend", lambda *a, **k: "scann")  # as for a large gallery
    cli.main(["--embeddings", path, "--backend", "auto", "--ks", "1", "--output", str(out)])
    record = json.loads(out.read_text())
    assert (record["backend"], record["backend_used"]) == ("auto", "scann")
    assert "map" not in record["metrics"]  # ScaNN's metrics indeed: no full-gallery mAP


def test_cli_separate_gallery_and_label_paths(tmp_path):
    x, y = _data(1, n=80)
    paths = np.stack([y, y // 3], axis=1)
    q = _write(tmp_path / "q.npz", x[:30], paths[:30])
    g = _write(tmp_path / "g.npz", x[30:], paths[30:])
    metrics = cli.main(["--embeddings", q, "--gallery", g, "--normalize"])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    want = retrieval.evaluate(xn[:30], paths[:30], xn[30:], paths[30:])
    assert {"hap", "ndcg", "asi"} <= metrics.keys()
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5)


def test_cli_missing_key_and_checkpoint_without_config(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, feats=np.zeros((3, 2)))
    with pytest.raises(SystemExit, match="embeddings"):
        cli.main(["--embeddings", str(bad)])
    with pytest.raises(SystemExit, match="--checkpoint needs --config"):
        cli.main(["--checkpoint", str(tmp_path)])


def test_cli_missing_step_is_a_clear_exit(tmp_path):
    """A step that was never written: the CLI exits naming the step, not with a traceback."""
    config = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"
    with pytest.raises(SystemExit, match="--checkpoint: no checkpoints directory"):
        cli.main(["--checkpoint", str(tmp_path), "--config", str(config)])
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(SystemExit, match=r"--checkpoint: .*\b7\b"):
        cli.main(["--checkpoint", str(tmp_path), "--config", str(config), "--step", "7"])


def test_cli_scann_leaves_to_search(tmp_path, monkeypatch):
    x, y = _data(2)
    path = _write(tmp_path / "e.npz", x, y)
    with pytest.raises(SystemExit, match="--scann_leaves_to_search must be >= 1"):
        cli.main(["--embeddings", path, "--scann_leaves_to_search", "0"])
    with pytest.raises(SystemExit, match="take integers"):
        cli.main(["--embeddings", path, "--scann_leaves_to_search", "half"])
    for flags in (["--scann_config", "tree_ah"], ["--scann_leaves_to_search", "3"]):  # were ignored
        with pytest.raises(SystemExit, match=f"{flags[0]} only apply to --backend scann or auto; this "
                                             "evaluation uses --backend exact"):
            cli.main(["--embeddings", path, "--backend", "exact", *flags])
        # without --backend the evaluation is exact too: they were ignored there as well
        with pytest.raises(SystemExit, match=f"{flags[0]} only apply .* uses the exact backend"):
            cli.main(["--embeddings", path, *flags])
    seen = {}
    real = retrieval.evaluator.evaluate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        # evaluated without ScaNN (absent here), whose settings the exact backend refuses
        return real(*args, **{**kwargs, "backend": "exact", "scann_config": "auto", "scann_options": None})

    monkeypatch.setattr(retrieval.evaluator, "evaluate", spy)
    cli.main(["--embeddings", path, "--backend", "scann", "--scann_leaves_to_search", "3"])
    assert seen["scann_options"] == {"leaves_to_search": 3} and seen["backend"] == "scann"


def test_cli_checks_config_overrides_as_train_does(tmp_path, monkeypatch):
    """--config.* overrides of a workdir's recorded config are checked as experiments.train
    checks them (they ended in a ZeroDivisionError or a flax traceback), and a protocol's own
    config errors are one line too."""
    digits = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"
    for override, message in [(("eval_batch_size", "0"), "config.eval_batch_size must be an int >= 1, got 0"),
                              (("model.embedding_dim", "0"), "config.model.embedding_dim must be None or")]:
        with pytest.raises(cli.cli.CliError, match=f"^error: --workdir: {re.escape(message)}"):
            cli.workdir_config(str(tmp_path), str(digits), [override])
    from rankax.train import evaluators

    monkeypatch.setattr(cli, "restore", lambda *a: (None, None))

    def evaluate_state(cfg, state, data):
        raise ValueError("config.eval_protocol='revisited' needs a dataset with a gallery")

    monkeypatch.setattr(evaluators, "evaluate_state", evaluate_state)
    args = types.SimpleNamespace(checkpoint=str(tmp_path), step=None, flag="--workdir")
    with pytest.raises(cli.cli.CliError, match=r"^error: --workdir: config.eval_protocol=.revisited. needs"):
        cli._protocol_metrics(None, args)

    def no_ground_truth(cfg, state, data):  # what landmarks.load_benchmark raises (a traceback before)
        raise FileNotFoundError("no ground truth for 'oxford5k': tried /nope/oxford5k/gnd_oxford5k.pkl")

    monkeypatch.setattr(evaluators, "evaluate_state", no_ground_truth)
    import ml_collections

    landmarks = ml_collections.ConfigDict({"eval_protocol": "landmarks"})
    with pytest.raises(cli.cli.CliError, match=r"^error: --workdir: no ground truth for 'oxford5k'.*"
                                               r"\(--config.landmarks.root=DIR sets their folder\)"):
        cli._protocol_metrics(landmarks, args)


def test_a_config_file_that_changes_the_network_is_refused(tmp_path):
    """--config FILE was never compared with the workdir's record: a model key that adds no
    parameter (pooling, feature_norm) restored silently into another network. Model keys the file
    changes are refused unless overridden explicitly; the starting weights do not count."""
    from rankax.train import workdir as workdir_lib

    digits = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"
    recorded = cli.cli.load_config(str(digits))
    recorded.model.embedding_dim = 32
    recorded.model.pretrained = "imagenet.pth"
    workdir_lib.write(recorded, str(tmp_path))
    with pytest.raises(cli.cli.CliError, match=re.escape(
            f"--config {digits} evaluates another network or test split than the one {tmp_path} "
            "trained (model.embedding_dim: 32 -> 64). Drop --config")):
        cli.workdir_config(str(tmp_path), str(digits), [])
    cfg = cli.workdir_config(str(tmp_path), str(digits), [("model.embedding_dim", "48")])
    assert cfg.model.embedding_dim == 48
    assert cli.workdir_config(str(tmp_path), None, []).model.embedding_dim == 32
    # another test split (the open-set protocol of the same digits) was evaluated silently
    open_set = digits.parent / "digits_open_set.py"
    recorded = cli.cli.load_config(str(open_set))
    (tmp_path / "closed").mkdir()
    workdir_lib.write(cli.cli.load_config(str(digits)), str(tmp_path / "closed"))
    closed = cli.cli.load_config(str(digits))
    differing = {k for k in workdir_lib.differences(workdir_lib.flat(recorded), closed)
                 if k.startswith("dataset.")}
    assert differing  # the two configs differ in their data
    with pytest.raises(cli.cli.CliError, match=r"another network or test split .*dataset\."):
        cli.workdir_config(str(tmp_path / "closed"), str(open_set), [])
    # keys that shape training only, or that an older record lacks, are not another split
    (tmp_path / "shifted").mkdir()
    shifted = cli.cli.load_config(str(digits))
    shifted.dataset.max_shift = 1
    workdir_lib.write(shifted, str(tmp_path / "shifted"))
    assert cli.workdir_config(str(tmp_path / "shifted"), str(digits), []).dataset.max_shift == 0
    record = json.loads((tmp_path / "shifted" / "config.json").read_text())
    del record["config"]["dataset.split_seed"]
    (tmp_path / "shifted" / "config.json").write_text(json.dumps(record))
    cli.workdir_config(str(tmp_path / "shifted"), str(digits), [])
    # a record without a config (an empty config.json): one line, not a KeyError
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(cli.cli.CliError, match=r"--workdir needs --config: .*records no config"):
        cli.workdir_config(str(tmp_path / "empty"), None, [])


def test_saved_embeddings_keep_a_separate_gallery(tmp_path, capsys):
    """--save_embeddings wrote the queries alone: evaluated again, they became their own gallery
    and the metrics changed. The gallery goes to <name>_gallery.npz and the pair evaluates as the
    evaluator does on the arrays."""
    queries, labels = _data(1, n=12)
    gallery, gallery_labels = _data(2, n=30)
    path = str(tmp_path / "out" / "test.npz")
    cli.save_embeddings(path, queries, labels, gallery, gallery_labels)
    assert cli.gallery_path(path) == str(tmp_path / "out" / "test_gallery.npz")
    assert f"--embeddings {path} --gallery {cli.gallery_path(path)}" in capsys.readouterr().out
    again = cli.main(["--embeddings", path, "--gallery", cli.gallery_path(path), "--ks", "1"])
    want = retrieval.evaluate(queries, labels, gallery, gallery_labels, ks=(1,))
    for key in ("recall@1", "map@r"):
        assert again[key] == pytest.approx(float(want[key]), abs=1e-6)
    cli.save_embeddings(str(tmp_path / "alone.npz"), queries, labels, None, None)
    assert not (tmp_path / "alone_gallery.npz").exists()


def test_gallery_file_errors_and_brute_force_leaves_name_their_flags(tmp_path):
    x, y = _data(0, n=20)
    queries = _write(tmp_path / "q.npz", x, y)
    gallery = _write(tmp_path / "g.npz", x, np.stack([y, y], 1))  # label paths against class ids
    with pytest.raises(cli.cli.CliError, match=f"--embeddings {queries} --gallery {gallery}: "):
        cli.main(["--embeddings", queries, "--gallery", gallery])
    words = "--scann_leaves_to_search applies to .*brute_force has no leaves"
    with pytest.raises(cli.cli.CliError, match=words):
        cli.main(["--embeddings", queries, "--backend", "scann", "--scann_config", "brute_force",
                  "--scann_leaves_to_search", "3"])


@pytest.mark.parametrize("protocol", ["revisited", "landmarks"])
def test_cli_refuses_retrieval_flags_for_protocol_runs(tmp_path, monkeypatch, protocol):
    """A revisited/landmarks run takes its evaluation from its config: the label-based flags
    it would ignore are refused by name, before anything is restored."""
    import ml_collections

    cfg = ml_collections.ConfigDict({"eval_protocol": protocol, "eval_ks": (1,), "eval_backend": "exact"})
    monkeypatch.setattr(cli, "workdir_config", lambda *a, **k: cfg)
    monkeypatch.setattr(cli, "_protocol_metrics", lambda *a: pytest.fail("restored despite the flags"))
    argv = ["--workdir", str(tmp_path / "run"), "--normalize", "--save_embeddings", str(tmp_path / "e.npz")]
    with pytest.raises(cli.cli.CliError, match=f"--normalize, --save_embeddings apply to .*{protocol}"):
        cli.main(argv)
    monkeypatch.setattr(cli, "_protocol_metrics", lambda *a: {"medium/map": 0.5})
    if protocol == "revisited":  # its mP@k cut-offs
        assert cli.main(["--workdir", str(tmp_path), "--ks", "1"]) == {"medium/map": 0.5}
    else:  # the landmarks protocol reports its own mP@1/5/10: --ks was silently ignored
        with pytest.raises(cli.cli.CliError, match="--ks apply to .*landmarks"):
            cli.main(["--workdir", str(tmp_path), "--ks", "1"])
        assert cli.main(["--workdir", str(tmp_path)]) == {"medium/map": 0.5}


def test_a_malformed_ground_truth_under_evaluate_is_one_line(tmp_path, monkeypatch):
    """A ground truth refused by check_ground_truth ended the protocol evaluation in a
    traceback (only messages about config keys became one line)."""
    import ml_collections

    from rankax.retrieval import revisited
    from rankax.train import evaluators

    cfg = ml_collections.ConfigDict({"eval_protocol": "revisited", "eval_ks": (1,), "eval_backend": "exact"})
    monkeypatch.setattr(cli, "workdir_config", lambda *a, **k: cfg)
    monkeypatch.setattr(cli, "load_model", lambda *a: (None, None))

    def malformed(*a):
        revisited.load_gnd(_gnd_with_a_bad_id(tmp_path))

    monkeypatch.setattr(evaluators, "evaluate_state", malformed)
    with pytest.raises(cli.cli.CliError, match=r"--workdir: .*gnd\.pkl\[0\]\['easy'\] has database id 9"):
        cli.main(["--workdir", str(tmp_path)])


def _gnd_with_a_bad_id(tmp_path) -> str:
    import pickle

    path = tmp_path / "gnd.pkl"
    path.write_bytes(pickle.dumps({"gnd": [{"easy": [9]}], "imlist": ["a", "b"], "qimlist": ["q"]}))
    return str(path)


def test_train_interrupted_says_whether_a_checkpoint_resumes(tmp_path, monkeypatch, capsys):
    """Ctrl-C (also while JAX loads) ends with one line and status 130; without a checkpoint
    the line says the command starts afresh (it promised a resume from none)."""
    from experiments import train

    def interrupted(values, config):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_train", interrupted)
    workdir = tmp_path / "run"
    argv = ["--config", "configs/digits.py", "--workdir", str(workdir)]
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code == 130
    message = capsys.readouterr().err
    assert "interrupted: the same command starts afresh (no checkpoint was written)" in message
    (workdir / "checkpoints" / "50").mkdir(parents=True)
    with pytest.raises(SystemExit):
        train.main(argv)
    assert f"resumes from the newest checkpoint in {workdir}" in capsys.readouterr().err


def test_ctrl_c_while_the_config_or_jax_loads_is_the_commands_interrupt(tmp_path, monkeypatch, capsys):
    """Reading a config imports JAX (seconds): Ctrl-C there was Python's (a traceback, or lost
    in JAX's gc callback and the run went on). The commands' modules import no JAX, and the
    reading runs under their handler: one line, status 130."""
    import subprocess
    import sys

    from experiments import cli as common
    from experiments import train

    code = "import sys, experiments.train, experiments.evaluate; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "load_config", interrupted)
    with pytest.raises(SystemExit) as info:
        train.main(["--config", "configs/digits.py", "--workdir", str(tmp_path / "run")])
    assert info.value.code == 130
    assert "interrupted: the same command starts afresh" in capsys.readouterr().err
    monkeypatch.setattr(cli, "parse_args", interrupted)  # evaluate's parsing imports JAX
    with pytest.raises(SystemExit) as info:
        cli.main(["--embeddings", "e.npz"])
    assert info.value.code == 130 and capsys.readouterr().err.startswith("interrupted: ")


def test_evaluate_flag_help_lists_the_librarys_choices():
    """The help's choices are written out (the module imports no JAX): they are rankax's."""
    from rankax.retrieval.evaluation import BACKENDS
    from rankax.retrieval.scann_backend import SCANN_CONFIGS

    for flag, choices in (("backend", BACKENDS), ("scann_config", SCANN_CONFIGS)):
        assert cli.FLAGS[flag].startswith(f"one of {', '.join(choices)} ("), flag


def test_evaluate_interrupted_is_one_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C during an evaluation: one line and status 130, as training (it was a traceback)."""
    def interrupted(args, overrides):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_evaluate", interrupted)
    x, y = _data(0)
    with pytest.raises(SystemExit) as info:
        cli.main(["--embeddings", _write(tmp_path / "e.npz", x, y)])
    assert info.value.code == 130
    said = capsys.readouterr().err.strip()
    assert said == "interrupted: the evaluation stopped; the same command runs it again"


def test_empty_and_home_relative_flag_values(tmp_path, monkeypatch):
    """`--workdir "$RUN"` with RUN unset was taken as no --workdir (then a TypeError); `~` in a
    `--flag=~/path` value, which no shell expands, made a folder named "~"."""
    with pytest.raises(cli.cli.CliError, match=r"--workdir was given an empty value"):
        cli.main(["--workdir", ""])
    with pytest.raises(cli.cli.CliError, match=r"--normalize is a switch: write --normalize=false"):
        cli.main(["--embeddings", "e.npz", "--normalize", "false"])
    monkeypatch.setenv("HOME", str(tmp_path))
    x, y = _data(0)
    _write(tmp_path / "e.npz", x, y)
    cli.main(["--embeddings=~/e.npz", "--output=~/out/m.json"])
    assert (tmp_path / "out" / "m.json").is_file()


def test_levels_flag_and_config_key(tmp_path):
    """``--levels`` evaluates the label columns one by one as SupRank's DyML evaluation does
    (the numpy transcription of tests/test_levels.py); ``--config.eval_levels`` is checked."""
    from tests.test_levels import _official

    fine = np.repeat(np.arange(20), 3)
    paths = np.stack([fine, fine // 2, fine // 4], 1)
    x = np.random.default_rng(3).normal(size=(60, 8)).astype(np.float32)
    path = _write(tmp_path / "p.npz", x, paths)
    metrics = cli.main(["--embeddings", path, "--levels", "0,2", "--ks", "1,10"])
    want = _official(x, paths, None, None, (0, 2), (10,))
    for ours, theirs in {"map": "AP", "recall@10": "R@10", "asi": "ASI"}.items():
        assert metrics[f"level2/{ours}"] == pytest.approx(want[f"{theirs}_level2"], abs=2e-6)
        assert metrics[ours] == pytest.approx(want[theirs], abs=2e-6)
    with pytest.raises(cli.cli.CliError, match=r"p\.npz: levels must be distinct label columns 0\.\.2"):
        cli.main(["--embeddings", path, "--levels", "3"])
    with pytest.raises(cli.cli.CliError, match=r"--levels must be comma-separated integers >= 0"):
        cli.main(["--embeddings", path, "--levels", "fine"])
    digits = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"
    assert cli.workdir_config(str(tmp_path), str(digits), [("eval_levels", "0")]).eval_levels == (0,)
    with pytest.raises(cli.cli.CliError, match=r"config\.eval_levels must be distinct label columns"):
        cli.workdir_config(str(tmp_path), str(digits), [("eval_levels", "0,0")])


def test_workdir_evaluation_keeps_the_runs_level_means(tmp_path, monkeypatch):
    """A run with ``eval_level_means=False`` (SupRank's SOP/iNat evaluation) is evaluated so:
    the plain names of the paths as given, the levels' beside them (the numpy transcription of
    tests/test_levels.py); the restore and the embedding are stand-ins."""
    import types

    from tests.test_levels import _official

    fine = np.repeat(np.arange(20), 3)
    paths = np.stack([fine, fine // 2, fine // 4], 1)
    x = np.random.default_rng(4).normal(size=(60, 8)).astype(np.float32)
    digits = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"
    overrides = [("eval_levels", "0,1"), ("eval_level_means", "False"), ("eval_ks", "1,10")]
    cfg = cli.workdir_config(str(tmp_path), str(digits), overrides)
    monkeypatch.setattr(cli, "workdir_config", lambda *a, **k: cfg)
    monkeypatch.setattr(cli, "load_model", lambda *a: (types.SimpleNamespace(step=3), None))
    monkeypatch.setattr(cli, "embed_test_split", lambda *a: (x, paths, None, None))
    metrics = cli.main(["--workdir", str(tmp_path / "run")])
    want = _official(x, paths, None, None, (0, 1), (10,))
    assert metrics["asi"] == pytest.approx(want["ASI_multi"], abs=2e-6)  # the paths', not a mean
    for ours, theirs in {"map": "AP", "recall@10": "R@10"}.items():
        assert metrics[ours] == pytest.approx(want[f"{theirs}_level0"], abs=2e-6)
        assert metrics[f"level1/{ours}"] == pytest.approx(want[f"{theirs}_level1"], abs=2e-6)
    assert "hap" in metrics and metrics["step"] == 3


def test_workdir_levels_are_checked_before_embedding_and_devices_fall_back(tmp_path):
    """A bad --levels is refused before the test split is embedded (it was refused after); a
    run recorded on more devices than this machine has embeds on all of this machine's."""
    import jax

    digits = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"
    cfg = cli.workdir_config(str(tmp_path), str(digits), [("eval_levels", "3")])
    data = types.SimpleNamespace(test=types.SimpleNamespace(labels=np.arange(6) % 2))
    with pytest.raises(cli.cli.CliError, match=r"config\.eval_levels must be distinct label columns 0\.\.0"):
        cli.embed_test_split(cfg, None, data, "--workdir")  # embedding with state None would fail
    cfg.num_devices = len(jax.devices()) + 7
    assert cli._devices(cfg) == jax.local_devices()
    cfg.num_devices = 1
    assert cli._devices(cfg) == jax.local_devices()[:1]


def test_weights_evaluate_a_trained_official_net_as_torch_embeds(tmp_path):
    """``--config FILE --weights FILE``: the config's model with the weights of a network trained
    by the official code (a RetrievalNet's ``net_state``): its test split embedded as the
    PyTorch net embeds the same images, and those embeddings' metrics."""
    torch = pytest.importorskip("torch")
    from rankax.train import input_pipeline
    from tests.test_convert import TorchGeM, TorchResNet, TorchRetrievalNet, _nchw, _randomize
    from tests.test_input_pipeline import _folder

    _folder(tmp_path / "jpegs", n=24)
    csv = tmp_path / "jpegs" / "data.csv"  # a test split of 3 classes (12 images), not 1
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0]] + [f"images/{i}.jpg,{i % 6},{'test' if i % 2 == 0 else 'train'}"
                                            for i in range(24)]) + "\n")
    config_file = tmp_path / "images_config.py"
    config_file.write_text(
        "import pathlib\nfrom tests.test_input_pipeline import _image_config\n\n\ndef get_config():\n"
        f"    config = _image_config(pathlib.Path({str(tmp_path / 'jpegs')!r}), 0)\n"
        "    config.model.pretrained_distilled = True  # as the DeiT recipes: not a check of --weights\n"
        "    return config\n"
    )
    backbone = torch.nn.Sequential(*list(_randomize(TorchResNet([1, 1, 1, 1], width=8)).children())[:-2])
    net = _randomize(TorchRetrievalNet(backbone, TorchGeM(), 256, embed_dim=8), seed=3)
    torch.save(net.state_dict(), tmp_path / "net_state.pth")
    saved = tmp_path / "test.npz"
    metrics = cli.main(["--config", str(config_file), "--weights", str(tmp_path / "net_state.pth"),
                        "--config.eval_ks=1,2", "--save_embeddings", str(saved)])

    cfg = cli.cli.load_config(str(config_file))
    test = input_pipeline.load(cfg).test
    with torch.no_grad():
        want = net(_nchw(test.get_batch(np.arange(len(test)), train=False))).numpy()
    with np.load(saved) as f:
        got, labels = f["embeddings"], f["labels"]
    print(f"--weights: max |diff| from the torch net's embeddings {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-4)
    for key, value in retrieval.evaluate(want, labels, ks=(1, 2)).items():
        assert metrics[key] == pytest.approx(value, abs=1e-6)
    assert "step" not in metrics and metrics["num_queries"] == 12 and 0 < metrics["map@r"] < 1

    # weights of another model, and flags of other sources, are one line naming the flag
    torch.save(TorchResNet([1, 2, 1, 1], width=8).state_dict(), tmp_path / "deeper.pth")
    with pytest.raises(cli.cli.CliError, match=r"--weights: config\.model\.pretrained=.* does not fit"):
        cli.main(["--config", str(config_file), "--weights", str(tmp_path / "deeper.pth")])
    with pytest.raises(cli.cli.CliError, match=r"--weights needs --config FILE"):
        cli.main(["--weights", str(tmp_path / "net_state.pth")])
    with pytest.raises(cli.cli.CliError, match=r"pass one of .*; got --workdir, --weights"):
        cli.main(["--workdir", str(tmp_path), "--config", str(config_file), "--weights", str(tmp_path)])
    with pytest.raises(cli.cli.CliError, match=r"--step applies to --workdir evaluation only"):
        cli.main(["--config", str(config_file), "--weights", str(tmp_path / "net_state.pth"), "--step", "3"])
    with pytest.raises(cli.cli.CliError, match=r"--weights .*missing.pth: no such file"):
        cli.main(["--config", str(config_file), "--weights", str(tmp_path / "missing.pth")])


def test_outputs_never_overwrite_inputs_or_the_workdir(tmp_path):
    """--output onto the embeddings it evaluates, onto --save_embeddings, or into the workdir
    (whose metrics.json it replaced): refused before any work; --save_embeddings without .npz
    is written, and named, with it (np.savez adds it)."""
    x, y = _data(0)
    emb = _write(tmp_path / "e.npz", x, y)
    digits = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py")
    (tmp_path / "run").mkdir()
    cases = [
        (["--embeddings", emb, "--output", emb], r"--output .*e\.npz would overwrite --embeddings"),
        (["--workdir", str(tmp_path / "run"), "--save_embeddings", str(tmp_path / "s.npz"),
          "--output", str(tmp_path / "s.npz")], r"--save_embeddings .*s\.npz would overwrite --output"),
        (["--workdir", str(tmp_path / "run"), "--output", str(tmp_path / "run" / "metrics.json")],
         r"--output .*metrics\.json is one of the training run's own files"),
        (["--config", digits, "--weights", str(tmp_path / "w.pth"), "--save_embeddings", digits],
         r"--save_embeddings .*digits\.py\.npz"),  # not digits.py itself: .npz is added
        (["--workdir", str(tmp_path / "run"), "--gallery", emb], r"--gallery applies to --embeddings"),
        (["--embeddings", emb, "--gallery", emb], r"--gallery is the --embeddings file: omit --gallery"),
        (["--config", digits, "--weights", emb, "--config.model.pretrained=x"],
         r"drop --config\.model\.pretrained"),
    ]
    for argv, message in cases[:3] + cases[4:]:
        with pytest.raises(cli.cli.CliError, match=message):
            cli.parse_args(argv)
    args, _ = cli.parse_args(cases[3][0])
    assert args.save_embeddings == digits + ".npz"
    # new files beside the run's own are the user's (docs/training.md writes eval.json there)
    beside = ["--workdir", str(tmp_path / "run"), "--output", str(tmp_path / "run" / "eval.json"),
              "--save_embeddings", str(tmp_path / "run" / "test.npz")]
    assert cli.parse_args(beside)[0].output == str(tmp_path / "run" / "eval.json")
    for owned in ("checkpoints/4/state", "metrics.step40.json", "tensorboard/x"):
        with pytest.raises(cli.cli.CliError, match="training run's own files"):
            cli.parse_args(["--workdir", str(tmp_path / "run"), "--output", str(tmp_path / "run" / owned)])
    # a pipe or a device is not probed (opening a FIFO to probe it left the real write blocked)
    assert cli.parse_args(["--embeddings", emb, "--output", "/dev/stdout"])[0].output == "/dev/stdout"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz", "run"]
    assert list((tmp_path / "run").iterdir()) == []


def test_an_unwritable_output_is_refused_before_the_evaluation(tmp_path):
    """A folder it cannot write into: refused when parsed (it was a PermissionError traceback
    after the whole evaluation). Read-only for a user; immutable (chattr +i) for root."""
    import os
    import shutil
    import subprocess

    x, y = _data(0)
    emb = _write(tmp_path / "e.npz", x, y)
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        os.chmod(locked, 0o500)
        unlock = ["chmod", "700", str(locked)]
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(locked)]).returncode == 0:
        unlock = ["chattr", "-i", str(locked)]
    else:
        pytest.skip("root without chattr (or a file system without immutable folders)")
    try:
        with pytest.raises(cli.cli.CliError, match=r"--output .*m\.json cannot be written"):
            cli.parse_args(["--embeddings", emb, "--output", str(locked / "sub" / "m.json")])
        # [multihost] only process 0 writes: another process leaving here made the others wait
        # out the distributed start's timeout
        other = ["--num_processes", "2", "--coordinator_address", "127.0.0.1:1", "--process_id"]
        cli.parse_args(["--embeddings", emb, "--output", str(locked / "sub" / "m.json"), *other, "1"])
        for zero in ("0", "00"):
            with pytest.raises(cli.cli.CliError, match=r"cannot be written"):
                cli.parse_args(["--embeddings", emb, "--output", str(locked / "sub" / "m.json"), *other,
                                zero])
    finally:
        subprocess.run(unlock, check=True)


def test_a_misspelt_key_in_a_config_file_is_named(tmp_path):
    """`c.num_stepz = 3` in a config file was kept, ignored, and the run used the default:
    refused with the key and the closest one; keys of the model, data and loss are free."""
    cases = {
        "    c.num_stepz = 3\n    c.model.any_attribute = 1\n":
            r"typo\.py: config\.num_stepz is not a key of configs/default\.py; did you mean "
            r"config\.num_steps\?",
        "    c.optimizer.weight_decy = 0.5\n    c.loss.hparams.anything = 2\n":
            r"typo\.py: config\.optimizer\.weight_decy is not a key .*did you mean "
            r"config\.optimizer\.weight_decay\?",
    }
    for lines, message in cases.items():
        (tmp_path / "typo.py").write_text(
            "from configs import digits\n\n\ndef get_config():\n    c = digits.get_config()\n"
            + lines + "    return c\n"
        )
        with pytest.raises(cli.cli.CliError, match=message):
            cli.cli.load_config(str(tmp_path / "typo.py"))
