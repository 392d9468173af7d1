"""The image input pipeline (rankax.data.loader): determinism across worker counts, uint8 +
on-device normalisation equal to the host path, draft decoding, and the augmentations'
distribution against the official parameters (crop scale and ratio, flip rate)."""

import json
import math
import os

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from rankax.data import folder, loader, samplers, transforms

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _folder(root, n=48, classes=6, size=(96, 72)):
    rng = np.random.default_rng(0)
    os.makedirs(root / "images", exist_ok=True)
    lines = ["path,class,split"]
    for i in range(n):
        low = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(low).resize(size, Image.BICUBIC).save(root / "images" / f"{i}.jpg", quality=92)
        lines.append(f"images/{i}.jpg,{i % classes},{'test' if i % classes == 5 else 'train'}")
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    small = transforms.ImageTransform(image_size=24, resize_size=28)
    return folder.load_folder(str(root), "data.csv", transform=small, num_threads=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("jpegs"))


def _copy(batches):
    return [{k: np.array(v) for k, v in b.items()} for b in batches]


@pytest.mark.slow
def test_batches_do_not_depend_on_worker_count(data):
    sampler = samplers.PKSampler(data.train.labels, 2, 4, seed=5)
    runs = {w: _copy(loader.train_batches(data.train, sampler, seed=7, start=3, stop=9, workers=w))
            for w in (0, 2)}
    assert [int(b["step"]) for b in runs[2]] == list(range(3, 9))
    for a, b in zip(runs[0], runs[2], strict=True):
        np.testing.assert_array_equal(a["indices"], b["indices"])
        np.testing.assert_array_equal(a["images"], b["images"])


def test_batches_equal_direct_reads_and_resume(data):
    """Each batch is the source's pixels of the sampler's indices with the step's seed, so a
    pipeline started at step 5 (a resumed run) gives the same batches as one started at 0."""
    sampler = samplers.PKSampler(data.train.labels, 2, 4, seed=1)
    full = _copy(loader.train_batches(data.train, sampler, seed=3, start=0, stop=7))
    resumed = _copy(loader.train_batches(data.train, sampler, seed=3, start=5, stop=7))
    for step in range(7):
        idx = sampler.indices(step)
        expected = data.train.get_pixels(idx, train=True, seed=3 * 2**32 + step)
        np.testing.assert_array_equal(full[step]["images"], expected)
        assert full[step]["images"].dtype == np.uint8
    for a, b in zip(full[5:], resumed, strict=True):
        np.testing.assert_array_equal(a["images"], b["images"])


def test_eval_batches_cover_the_source_in_order(data):
    got = np.concatenate([np.array(b) for b in loader.eval_batches(data.test, 3)])
    np.testing.assert_array_equal(got, data.test.get_pixels(np.arange(len(data.test)), train=False))


def test_device_normalisation_equals_the_host_path(data):
    idx = np.arange(6)
    host = data.train.get_batch(idx, train=True, seed=11)
    pix = data.train.get_pixels(idx, train=True, seed=11)
    dev = jax.jit(transforms.normalize_on_device)(pix)
    # numpy reference from the formula: (x / 255 - mean) / std
    mean, std = np.array(transforms.IMAGENET_MEAN), np.array(transforms.IMAGENET_STD)
    ref = (pix.astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(np.asarray(dev), ref, rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(dev), host, rtol=0, atol=2e-6)


@pytest.mark.parametrize("size", [(800, 640), (1003, 757)])
def test_draft_decoding_is_close_to_full_decoding(tmp_path, size):
    """Draft mode changes the decoder's scale, not the crop: the same rng gives the same
    crop, a few grey levels apart (both are low-pass + resample). 1003 x 757 is not a
    multiple of the draft scales: the reduced image's last pixel covers a partial block, so
    the box maps by 1/s, not by the ratio of the sizes (which shifted crops by up to s - 1
    pixels: 12 grey levels apart on average here)."""
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(low).resize(size, Image.BICUBIC).save(path, quality=95)
    common = dict(image_size=64, crop_scale=(0.5, 1.0), resize_size=80)
    t_draft = transforms.ImageTransform(**common, draft_test=True)
    t_full = transforms.ImageTransform(**common, draft_train=False)
    for seed in range(4):
        a = t_draft.pixels(transforms.open_image(str(path)), train=True, rng=np.random.default_rng(seed))
        b = t_full.pixels(transforms.open_image(str(path)), train=True, rng=np.random.default_rng(seed))
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 4.0
    a = t_draft.pixels(transforms.open_image(str(path)), train=False)
    b = t_full.pixels(transforms.open_image(str(path)), train=False)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 4.0


def test_draft_returns_the_box_covering_the_original(tmp_path):
    path = tmp_path / "odd.jpg"
    Image.new("RGB", (803, 645)).save(path)
    image, box = transforms.draft(transforms.open_image(str(path)), (200, 160))
    assert image.size == (201, 162)  # 1/4 scale, the smallest at least (200, 160): ceil(803 / 4)
    assert box == (0.0, 0.0, 803 / 4, 645 / 4)
    png = tmp_path / "odd.png"
    Image.new("RGB", (803, 645)).save(png)
    image, box = transforms.draft(transforms.open_image(str(png)), (200, 160))
    assert image.size == (803, 645) and box == (0.0, 0.0, 803.0, 645.0)  # not a JPEG: unchanged


def _crop_laws(scale, size=1000, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    boxes = [transforms.random_resized_crop_box(size, size, rng, scale, (3 / 4, 4 / 3)) for _ in range(n)]
    w = np.array([right - left for left, _, right, _ in boxes], float)
    h = np.array([b - t for _, t, _, b in boxes], float)
    return w * h / size**2, np.log(w / h)


def _ks(x, cdf):
    """Kolmogorov-Smirnov distance of the sample ``x`` to the law with CDF ``cdf``."""
    x = np.sort(x)
    n = len(x)
    return np.max(np.abs(cdf(x) - (np.arange(n) + 0.5) / n))


def test_random_resized_crop_has_the_uniform_laws_where_no_draw_is_rejected():
    """Below area 3/4 every (area, ratio) draw fits a square image, so the area fraction is
    uniform on ``scale`` and the log aspect ratio uniform on [log 3/4, log 4/3] (torchvision's
    RandomResizedCrop); 1.63/sqrt(n) is the KS test's 1% critical value, plus rounding."""
    area, log_ratio = _crop_laws((0.16, 0.5))
    n = len(area)
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    assert _ks(area, lambda x: (x - 0.16) / 0.34) < 1.63 / math.sqrt(n) + 0.01
    assert _ks(log_ratio, lambda x: (x - lo) / (hi - lo)) < 1.63 / math.sqrt(n) + 0.01


def test_random_resized_crop_with_the_official_scale_matches_the_rejection_law():
    """scale=(0.16, 1): draws that do not fit are redrawn (10 tries, then a centred crop).
    Reference: the same law sampled in numpy from its definition (vectorised rejection)."""
    area, log_ratio = _crop_laws((0.16, 1.0))
    rng = np.random.default_rng(1)
    a = rng.uniform(0.16, 1.0, (200000, 10))
    r = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), (200000, 10)))
    fits = (a * r <= 1) & (a / r <= 1)
    first = np.argmax(fits, axis=1)
    ok = fits.any(axis=1)
    ref_area = np.where(ok, a[np.arange(len(a)), first], 1.0)
    ref_log_ratio = np.where(ok, np.log(r[np.arange(len(r)), first]), 0.0)
    n = len(area)
    for sample, ref in ((area, ref_area), (log_ratio, ref_log_ratio)):
        ref = np.sort(ref)
        assert _ks(sample, lambda x, ref=ref: np.searchsorted(ref, x) / len(ref)) < 1.63 / math.sqrt(n) + 0.01
    assert area.min() >= 0.16 - 0.01 and area.max() <= 1.0


def test_flip_rate_is_one_half():
    t = transforms.ImageTransform(image_size=8)
    image = Image.fromarray(np.tile(np.arange(32, dtype=np.uint8)[None, :, None], (32, 1, 3)))
    n, flips = 2000, 0
    for seed in range(n):
        out = t.pixels(image, train=True, rng=np.random.default_rng(seed))
        flips += int(out[0, 0, 0]) > int(out[0, -1, 0])  # the horizontal ramp reversed
    assert abs(flips / n - 0.5) < 3 * math.sqrt(0.25 / n)


def test_loader_arguments_are_checked(data):
    sampler = samplers.PKSampler(data.train.labels, 2, 4, seed=1)
    with pytest.raises(ValueError, match="workers"):
        loader.train_batches(data.train, sampler, seed=0, start=0, stop=2, workers=-1)
    with pytest.raises(ValueError, match="prefetch"):
        loader.train_batches(data.train, sampler, seed=0, start=0, stop=2, prefetch=0)
    assert list(loader.train_batches(data.train, sampler, seed=0, start=4, stop=4)) == []


def test_prefetch_to_device_keeps_order_and_runs_ahead():
    issued = []

    def put(x):
        issued.append(x)
        return x * 10

    out = []
    for y in loader.prefetch_to_device(iter(range(5)), put, size=2):
        out.append((y, len(issued)))
    assert [y for y, _ in out] == [0, 10, 20, 30, 40]
    assert out[0][1] == 2  # batch 1 was already issued when batch 0 was handed out


def _image_config(root, workers):
    import configs.default

    c = configs.default.get_config()
    c.dataset = ml_collections.ConfigDict(
        {"name": "folder", "root": str(root), "csv_file": str(root / "data.csv"),
         "image_size": 16, "resize_size": 20, "num_threads": 2}
    )
    c.model = ml_collections.ConfigDict(
        {"name": "resnet_tiny", "embedding_dim": 8}
    )
    c.input.workers = workers
    c.batch.classes_per_batch, c.batch.samples_per_class = 2, 4
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 2, 0, 4
    c.eval_baselines = False
    c.eval_batch_size = 8
    return c


@pytest.mark.slow
def test_training_on_images_does_not_depend_on_the_worker_count(tmp_path, monkeypatch):
    """The same run with the batches decoded in this process (0) and in 2 worker processes:
    the same batches reach the step, so the trained parameters are equal; the log has the
    windowed rate, the data-wait share and the evaluation's rate."""
    from rankax.train import loop

    _folder(tmp_path / "jpegs")
    out = {}
    for workers in (0, 2):
        loop.train_and_evaluate(_image_config(tmp_path / "jpegs", workers), str(tmp_path / f"w{workers}"))
        with open(tmp_path / f"w{workers}" / "history.json") as f:
            out[workers] = json.load(f)
    for a, b in zip(out[0], out[2], strict=True):
        if "loss" in a:
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
    train_entries = [e for e in out[2] if "images_per_s" in e]
    assert [e["step"] for e in train_entries] == [2, 4]
    for e in train_entries:
        assert e["images_per_s"] > 0 and 0 <= e["data_wait_fraction"] <= 1
    assert any(e.get("eval_images_per_s", 0) > 0 for e in out[2])


def test_in_memory_data_needs_no_grain(monkeypatch):
    """The core install (no `data` extra, so no grain) trains and evaluates in-memory data:
    neither its training batches nor its evaluation batches go through grain."""
    import sys

    from rankax.data.base import ArraySource

    monkeypatch.setitem(sys.modules, "grain", None)  # `import grain` now raises ImportError
    images = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    source = ArraySource(images, np.arange(10) % 2)
    got = np.concatenate(list(loader.eval_batches(source, 4, raw=False)))
    np.testing.assert_array_equal(got, images)
    with pytest.raises(ImportError):
        import grain  # noqa: F401


def _sigint_ignored(i):
    import signal

    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_worker_processes_leave_ctrl_c_to_the_main_process():
    """A terminal's Ctrl-C reaches every process of its group: each grain worker printed its own
    KeyboardInterrupt traceback. The workers ignore SIGINT; the main process stops them."""
    assert list(loader.iterate(_sigint_ignored, 0, 3, workers=1)) == [True] * 3
    assert list(loader.iterate(_sigint_ignored, 0, 1, workers=0)) == [_sigint_ignored(0)]  # untouched here


def _workers_alive():
    import multiprocessing

    return len(multiprocessing.active_children())


def test_closing_the_feed_stops_the_worker_processes(data):
    """Closing the training feed (Timed over prefetch_to_device over the grain iterator, as the
    loop builds it) closes each layer: the worker processes stop at once, not when the garbage
    collector gets to them (after an error the traceback keeps them alive, and their
    shared-memory batches were reported as leaked at exit)."""
    sampler = samplers.PKSampler(data.train.labels, 2, 4, seed=1)
    host = loader.train_batches(data.train, sampler, seed=3, start=0, stop=50, workers=2)
    feed = loader.Timed(loader.prefetch_to_device(host, lambda b: b, size=2))
    next(feed)
    assert _workers_alive() == 2
    feed.close()
    assert _workers_alive() == 0
    loader.close(iter(()))  # an iterator without close(): nothing to do


def test_a_failing_run_stops_its_input_workers_before_the_error_leaves(tmp_path, monkeypatch):
    from rankax.train import loop

    _folder(tmp_path / "jpegs")
    config = _image_config(tmp_path / "jpegs", workers=2)
    config.num_steps = 40

    def fail(run, step, *args, **kwargs):
        if step == 1:
            raise RuntimeError("stop here")

    monkeypatch.setattr(loop, "after_step", fail)
    with pytest.raises(RuntimeError, match="stop here") as caught:
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert caught.value.__traceback__ is not None  # the frames are still alive here
    assert _workers_alive() == 0


def test_embedding_stops_its_reading_workers_on_an_error(data):
    from rankax.retrieval.evaluator import embed_in_batches

    def broken(batch):
        raise ValueError("no model")

    with pytest.raises(ValueError, match="no model"):
        embed_in_batches(broken, data.test, 2, workers=2, raw=True)
    assert _workers_alive() == 0
