"""Every experiment config builds and runs end to end on mock data, shrunk to a tiny size.

Each ``configs/*.py`` (except ``default.py``) goes through ``train_lib.train_and_evaluate``:
its dataset (TFDS ``mock_data`` for sop/cub/cars/inat, generated PNG files + CSV for folder
and dyml, digits as is), its model class, its loss, sampler and optimizer, one train step, a checkpoint
and one evaluation. What is shrunk: the images (16 px), the batch (2 x 2), the steps (1) and
the trunk, cut to its stem -- ResNet: the 7x7 convolution, BatchNorm and max-pool with no
bottleneck stage; ViT: patch embedding, class token, position embedding and final LayerNorm
with no block -- because XLA's CPU compile time of the step grows with every block and
dominates this test; the blocks themselves are tested in ``tests/test_models.py``.
Everything else -- pooling, projection, loss and its hparams, sampler kind, optimizer and
schedule -- is the config's own.
"""

import importlib
import json
import os
import pathlib

import jax
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from rankax.train import train_lib  # noqa: E402

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("default", "__init__"))
DIGITS = ("digits", "digits_open_set")
TFDS_DATASETS = ("sop", "cub", "cars", "inat")
IMAGE = 16
MOCK_EXAMPLES = 12


def load_config(name):
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.fixture(scope="module", autouse=True)
def fast_prng():
    # Compiling threefry for every parameter shape dominates model.init on CPU; the smoke
    # test does not depend on the generator.
    old = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    yield
    jax.config.update("jax_default_prng_impl", old)


def _inat_files(tmp_path):
    """A made-up taxonomy and a class-disjoint split of the mock iNat records."""
    records = list(tfds.data_source("i_naturalist2018", split="train+validation"))
    names = tfds.builder("i_naturalist2018").info.features["label"].names
    labels = sorted({int(r["label"]) for r in records})
    taxonomy = [
        {
            "id": label,
            "name": names[label],
            "genus": f"g{i // 2}",
            "family": f"f{i // 4}",
            "order": f"o{i // 8}",
            "class": "c0",
            "phylum": "p0",
            "kingdom": "k0",
        }
        for i, label in enumerate(labels)
    ]
    (tmp_path / "categories.json").write_text(json.dumps(taxonomy))
    median = np.median([int(r["label"]) for r in records])
    for split, keep in (("train", lambda x: x <= median), ("test", lambda x: x > median)):
        ids = [f"train_val2018/x/{r['id']}.jpg" for r in records if keep(int(r["label"]))]
        (tmp_path / f"Inaturalist_{split}_set1.txt").write_text("\n".join(ids) + "\n")


def _landmarks_folder(tmp_path):
    """PNG images and a CSV with train / query / gallery rows (landmarks layout)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["path,landmark_id,split"]
    for i in range(24):
        split = "train" if i < 12 else ("query" if i < 16 else "gallery")
        path = f"images/{i}.png"
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / path)
        rows.append(f"{path},{i % 4 + (0 if split == 'train' else 4)},{split}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")


def _landmark_benchmarks(tmp_path):
    """oxford5k/ and paris6k/ with 6 database images, 2 box-annotated queries, the classic
    and revisited ground truths, and 8 whitening images (naver's layout)."""
    import pickle

    from PIL import Image

    rng = np.random.default_rng(1)
    root = tmp_path / "benchmarks"
    write = lambda path, h, w: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    for folder, revisited in (("oxford5k", "roxford5k"), ("paris6k", "rparis6k")):
        (root / folder / "jpg").mkdir(parents=True)
        imlist, qimlist = [f"db{i}.png" for i in range(6)], ["q0.png", "q1.png"]
        for name in imlist + qimlist:
            write(root / folder / "jpg" / name, 20, 24)
        box = [2, 2, 18, 14]
        classic = [{"bbx": box, "ok": [q, q + 2], "junk": [5]} for q in range(2)]
        revisit = [{"bbx": box, "easy": [q], "hard": [q + 2], "junk": [5]} for q in range(2)]
        for name, gnd in ((folder, classic), (revisited, revisit)):
            with open(root / folder / f"gnd_{name}.pkl", "wb") as f:
                pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
    (root / "train").mkdir()
    for i in range(8):
        write(root / "train" / f"t{i}.png", 20, 24)
    (root / "train" / "list.txt").write_text("\n".join(f"t{i}.png" for i in range(8)) + "\n")
    return root


def tiny(config, tmp_path):
    """``config`` shrunk for a smoke test (its kinds of model, loss, sampler, optimizer kept)."""
    model = config.model
    if model.name.startswith("resnet"):
        model.stage_sizes = ()
        model.width = 4
    elif model.name.startswith(("deit", "vit")):
        model.update({"patch_size": 4, "hidden_size": 16, "depth": 0, "num_heads": 2, "image_size": IMAGE})
    elif model.name == "mlp":
        model.hidden = (16,)
    if model.get("embedding_dim") is not None:
        model.embedding_dim = 8

    ds = config.dataset
    if ds.name != "digits":
        ds.image_size = IMAGE
        ds.resize_size = IMAGE + 4
        if ds.get("train_resize_size") is not None:
            ds.train_resize_size = IMAGE + 4
        ds.num_threads = 1
    if ds.name in TFDS_DATASETS:
        ds.pil_decode = False  # mock_data serves decoded images only
    if ds.name == "inat":
        _inat_files(tmp_path)
        ds.taxonomy_file = str(tmp_path / "categories.json")
        ds.split_dir = str(tmp_path)
    if ds.name == "folder":
        _landmarks_folder(tmp_path)
        ds.root = str(tmp_path)
        ds.csv_file = str(tmp_path / "data.csv")
    if ds.name == "dyml":
        from tests.test_data_dyml import write_dyml

        write_dyml(tmp_path / "dyml", ds.variant)
        ds.root = str(tmp_path / "dyml")
    if config.eval_protocol == "landmarks":
        config.landmarks.root = str(_landmark_benchmarks(tmp_path))
        config.landmarks.whitening_list = str(tmp_path / "benchmarks" / "train" / "list.txt")
    if config.eval_protocol == "revisited":  # 4 query rows, 8 gallery rows in _landmarks_folder
        gnd = [{"easy": [q], "hard": [q + 4], "junk": []} for q in range(4)]
        (tmp_path / "gnd.json").write_text(json.dumps(gnd))
        config.revisited_gnd = str(tmp_path / "gnd.json")

    config.batch.classes_per_batch = 2
    config.batch.samples_per_class = 2
    if config.batch.sampler == "m_per_class":
        # The mock records draw labels at random among hundreds of classes: almost no class
        # has 2 images, so no epoch of disjoint 2 x 2 batches exists. The loop runs the P x K
        # sampler here; the config's sampler is run on generated labels below and through
        # the loop on digits (tests/test_train_mechanisms.py).
        config.batch.sampler = "pk"
    if config.xbm.size:
        config.xbm.size = 8
    config.num_steps = 1
    config.num_epochs = 0
    config.checkpoint_every = 1
    config.eval_every = 0
    config.log_every = 1
    config.eval_baselines = False
    config.eval_batch_size = 64
    return config


@pytest.mark.parametrize("name", CONFIGS)
def test_config_has_the_cli_keys_and_reported_numbers(name):
    config = load_config(name)
    assert int(config.num_steps) > 0 and int(config.checkpoint_every) > 0
    assert int(config.checkpoint_every) <= int(config.num_steps)
    if name in DIGITS:
        return
    assert "reported" in config, f"configs/{name}.py has no `reported` field"
    numbers = {k: v for k, v in config.reported.items() if k != "note"}
    assert numbers, f"configs/{name}.py: `reported` names no metric"
    # A number the paper reports, or None with a note saying why it is missing.
    assert all(isinstance(v, float) for v in numbers.values() if v is not None)
    assert all(v is not None for v in numbers.values()) or config.reported.get("note")
    assert config.dataset.name in ("sop", "cub", "cars", "inat", "folder", "dyml")


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in DIGITS])
def test_full_size_model_matches_the_images(name):
    """The paper-size model takes the config's images and gives the expected embedding width
    (abstract evaluation: shapes only, nothing is compiled)."""
    config = load_config(name)
    model = train_lib.build_model(config)
    size = config.dataset.image_size
    images = jax.ShapeDtypeStruct((1, size, size, 3), jax.numpy.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    width = config.model.embedding_dim or {"deit_small": 384, "deit_base": 768}[config.model.name]
    assert out.shape == (1, width)


# tfds' mock test splits are a few images whose random labels do not repeat: no query has a positive
MOCK_LABELS_SHARE_NO_CLASS = "ignore:evaluate. none of the .* queries has a positive"


@pytest.mark.filterwarnings(MOCK_LABELS_SHARE_NO_CLASS)
@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_and_evaluates_on_mock_data(name, tmp_path):
    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
        (tmp_path / "data").mkdir(exist_ok=True)
        config = tiny(load_config(name), tmp_path / "data")
        final = train_lib.train_and_evaluate(config, str(workdir))
        if name == "roadmap_cub_resnet50":  # the evaluate CLI reads images as training evaluates
            from experiments import evaluate as evaluate_cli

            again = evaluate_cli.main(["--workdir", str(workdir)])
            for key in ("recall@1", "map@r", "map"):
                assert again[key] == pytest.approx(final[key], abs=1e-6), key
    if config.eval_protocol == "revisited":
        assert {"medium/map", "hard/map", "easy/mp@1"} <= set(final)
    elif config.eval_protocol == "landmarks":
        assert {"oxford5k/map", "paris6k/map", "roxford5k/medium/map", "rparis6k/hard/map"} <= set(final)
    else:
        assert {"recall@1", "map@r", "map"} <= set(final)
    assert not any(np.isinf(v) for v in final.values())  # NaN: no query with a positive
    losses = [h["loss"] for h in json.loads((workdir / "history.json").read_text()) if "loss" in h]
    assert len(losses) == 1 and np.isfinite(losses[0])
    assert (workdir / "metrics.json").exists()
    assert "1" in os.listdir(workdir / "checkpoints")
    if config.dataset.name in ("sop", "inat"):  # label paths: hierarchical metrics too
        assert {"hap", "ndcg", "asi"} <= set(final)


def _restore(config, workdir, step):
    """The state saved at ``step`` in ``workdir`` and the untrained state it started from."""
    from rankax.train import checkpointing, input_pipeline, state

    data = input_pipeline.load(config)
    template = state.initial_state(config, data)
    ckpt = checkpointing.Checkpointer(str(workdir / "checkpoints"), config, read_only=True)
    try:
        return ckpt.restore(template, step)[0], template
    finally:
        ckpt.close()


@pytest.mark.filterwarnings(MOCK_LABELS_SHARE_NO_CLASS)
def test_suprank_recipe_pieces_on_mock_data(tmp_path):
    """suprank_sop's own mechanisms on mock SOP: the cluster term's proxies train from step 0
    with their own optimizer, the backbone stays frozen for the warm-up epoch (the sampler's
    epoch 0: ``epoch_start(1)`` steps) and trains from the next step on. It runs HAPPIER's
    smoothed H-rank (``--config.loss.hparams.with_hrank=True``), a static option the training
    step must keep static."""
    from rankax.train import input_pipeline

    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
        (tmp_path / "data").mkdir()
        config = tiny(load_config("suprank_sop"), tmp_path / "data")
        config.batch.batches_per_super_tuple = 1
        config.optimizer.frozen_warmup_epochs = 1
        config.loss.hparams.with_hrank = True
        switch = input_pipeline.make_sampler(config, input_pipeline.load(config)).epoch_start(1)
        config.num_steps, config.checkpoint_every = switch + 1, switch
        train_lib.train_and_evaluate(config, str(tmp_path / "run"))
        at_switch, initial = _restore(config, tmp_path / "run", switch)
        after, _ = _restore(config, tmp_path / "run", switch + 1)
        train_labels = np.asarray(input_pipeline.load(config).train.labels)
    assert config.precision == "mixed" and config.loss.terms.cluster.name == "normalized_softmax"
    leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
    frozen = [
        np.array_equal(a, b)
        for a, b in zip(leaves(initial.params["backbone"]), leaves(at_switch.params["backbone"]), strict=True)
    ]
    assert all(frozen), "the backbone moved during the warm-up"
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(leaves(at_switch.params["backbone"]), leaves(after.params["backbone"]), strict=True)
    ]
    assert any(moved), "the backbone did not train after the warm-up"
    assert not np.array_equal(
        initial.params["head"]["proj"]["kernel"], at_switch.params["head"]["proj"]["kernel"]
    )
    proxies = [s.loss_params["cluster"]["proxies"] for s in (initial, at_switch)]
    assert proxies[0].shape[0] == len(np.unique(train_labels[:, 0]))
    assert not np.array_equal(*proxies)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in DIGITS])
def test_config_sampler_epochs_on_generated_labels(name):
    """The config's own sampler and batch shape on generated labels (30 classes of 4-11
    images in 6 super-classes, label paths when the dataset has them): an M-per-class epoch
    uses each image at most once, an all-pairs epoch has every pair of super-classes
    ``batches_per_super_tuple`` times."""
    import itertools
    import types

    from rankax.train import input_pipeline

    config = load_config(name)
    b = config.batch
    rng = np.random.default_rng(0)
    fine = np.repeat(np.arange(30), rng.integers(4, 12, size=30))
    labels = np.stack([fine, fine % 6], axis=1) if config.dataset.name in ("sop", "inat") else fine
    b.classes_per_batch = 2 * b.get("super_classes_per_batch", 1)
    b.samples_per_class = min(b.samples_per_class, 4)
    sampler = input_pipeline.make_sampler(
        config, types.SimpleNamespace(train=types.SimpleNamespace(labels=labels))
    )
    steps = range(sampler.epoch_start(0), sampler.epoch_start(1))
    batches = [sampler.indices(t) for t in steps]
    assert len(batches) > 0 and all(len(x) == b.classes_per_batch * b.samples_per_class for x in batches)
    if b.sampler == "m_per_class":
        seen = np.concatenate(batches)
        assert len(seen) == len(set(seen.tolist())), "an M-per-class epoch repeats an image"
    if b.sampler == "hierarchical_pairs":
        pairs = [tuple(sorted(set(labels[x, 1].tolist()))) for x in batches]
        want = {p: b.batches_per_super_tuple for p in itertools.combinations(range(6), 2)}
        assert {p: pairs.count(p) for p in set(pairs)} == want
