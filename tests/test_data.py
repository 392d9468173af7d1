"""Digits splits, the dataset registry, samplers, augmentations and the folder/CSV dataset."""

import csv
import warnings

import ml_collections
import numpy as np
import pytest
from PIL import Image

import rankax.data as data
from rankax.data import transforms

# ---------------------------------------------------------------- digits


def test_digits_stratified_split_every_class_in_both_halves():
    split = data.load_digits_split("stratified", seed=3)
    assert split.train_images.shape[1:] == (8, 8, 1)
    assert split.train_images.dtype == np.float32
    assert len(split.train_labels) + len(split.test_labels) == 1797
    for c in range(10):
        n_train = int(np.sum(split.train_labels == c))
        n_test = int(np.sum(split.test_labels == c))
        assert n_train > 0 and n_test > 0
        assert abs(n_train - n_test) <= 1


def test_digits_open_set_classes_are_disjoint():
    split = data.load_digits_split("open_set")
    assert set(split.train_labels) == set(range(5))
    assert set(split.test_labels) == set(range(5, 10))


def test_digits_split_seed_changes_the_split():
    a = data.load_digits_split("stratified", seed=0)
    b = data.load_digits_split("stratified", seed=1)
    assert not np.array_equal(a.train_images, b.train_images)


# ---------------------------------------------------------------- registry


def test_load_dataset_digits_from_config_dict():
    config = ml_collections.ConfigDict(
        {"name": "digits", "protocol": "open_set", "split_seed": 0, "max_shift": 1}
    )
    ds = data.load_dataset(config)
    assert isinstance(ds.train, data.ArraySource) and ds.gallery is None
    assert set(ds.class_labels) == set(range(5))
    assert ds.train.get_batch(np.array([0, 1]), train=True).shape == (2, 8, 8, 1)


def test_load_dataset_defaults_and_plain_dict():
    ds = data.load_dataset({"name": "digits"})
    assert ds.name == "digits" and len(ds.train) == 901


def test_load_dataset_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="digits.*sop.*cub.*cars.*inat.*folder"):
        data.load_dataset({"name": "imagenet"})


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"name": "digits", "image_size": 32}, "image_size"),
        ({"name": "cub", "protocol": "stratified"}, "protocol"),
        ({"name": "inat", "split_dir": "/x"}, "taxonomy_file"),
        ({"name": "cars", "image_size": "224"}, "image_size"),
        ({"name": "sop", "crop_scale": (0.1, 0.5, 1.0)}, "crop_scale"),
        # Keys without a default value: paths are non-empty strings, label columns names.
        ({"name": "folder", "root": 3}, "root"),
        ({"name": "hgldv2", "root": ""}, "root"),
        ({"name": "dyml", "root": None}, "root"),
        ({"name": "cub", "data_dir": ["/data"]}, "data_dir"),
        ({"name": "folder", "label_columns": ["species", 2]}, "label_columns"),
        ({"name": "folder", "label_columns": []}, "label_columns"),
        ({"name": "cars", "train_resize_size": 0}, "train_resize_size"),
    ],
)
def test_load_dataset_bad_key_names_the_key(config, key):
    with pytest.raises(ValueError, match=f"config.dataset.{key}"):
        data.load_dataset(config)


def test_load_dataset_bad_protocol():
    with pytest.raises(ValueError, match="protocol"):
        data.load_dataset({"name": "digits", "protocol": "random"})


# ---------------------------------------------------------------- P x K sampler


def _labels(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])


def test_pk_sampler_is_a_function_of_seed_and_step():
    labels = _labels([5, 6, 7, 3, 9, 4])
    a = data.PKSampler(labels, 3, 2, seed=1)
    b = data.PKSampler(labels, 3, 2, seed=1)
    np.testing.assert_array_equal(a.indices(17), b.indices(17))
    np.testing.assert_array_equal(a.indices(17), a.indices(17))
    assert not all(np.array_equal(a.indices(t), a.indices(t + 1)) for t in range(5))
    assert not np.array_equal(a.indices(3), data.PKSampler(labels, 3, 2, seed=2).indices(3))


def test_pk_sampler_batch_structure():
    labels = _labels([5, 6, 7, 3, 9, 4])
    sampler = data.PKSampler(labels, 4, 3, seed=0)
    for step in range(20):
        idx = sampler.indices(step)
        assert idx.shape == (12,)
        blocks = labels[idx].reshape(4, 3)
        assert np.all(blocks == blocks[:, :1])  # class by class
        assert len(set(blocks[:, 0])) == 4  # distinct classes
        for block in idx.reshape(4, 3):
            assert len(set(block)) == 3  # distinct items (classes have >= 3 items)


def test_pk_sampler_small_classes():
    labels = _labels([1, 2, 6, 6])
    sampler = data.PKSampler(labels, 4, 4, seed=0)
    idx = sampler.indices(0)
    assert np.array_equal(np.sort(idx[labels[idx] == 0]), np.zeros(4, int))  # singleton repeated
    dropped = data.PKSampler(labels, 3, 4, seed=0, min_class_size=2)
    for step in range(10):
        assert 0 not in labels[dropped.indices(step)]
    with pytest.raises(ValueError, match="classes_per_batch"):
        data.PKSampler(labels, 4, 4, min_class_size=2)
    with pytest.raises(ValueError, match="min_class_size"):
        data.PKSampler(labels, 1, 4, min_class_size=7)


def test_pk_sampler_takes_label_paths():
    paths = np.stack([_labels([3, 3, 3]), np.array([0] * 6 + [1] * 3)], axis=1)
    idx = data.PKSampler(paths, 2, 2).indices(0)
    assert idx.shape == (4,)


# ---------------------------------------------------------------- hierarchical sampler


def _hierarchy():
    # 4 super-classes with 1, 3, 5, 8 fine classes of 2..6 items.
    rng = np.random.default_rng(0)
    rows = []
    fine = 0
    for s, n_classes in enumerate([1, 3, 5, 8]):
        for _ in range(n_classes):
            rows += [[fine, s]] * int(rng.integers(2, 7))
            fine += 1
    return np.asarray(rows)


def test_hierarchical_sampler_structure():
    paths = _hierarchy()
    sampler = data.HierarchicalSampler(paths, batch_size=16, samples_per_class=2, super_classes_per_batch=2)
    assert sampler.classes_per_super_class == 4
    for step in range(30):
        idx = sampler.indices(step)
        assert idx.shape == (16,)
        batch = paths[idx]
        halves = batch.reshape(2, 8, 2)
        for half in halves:
            assert np.all(half[:, 1] == half[0, 1])  # one super-class per half
            pairs = half[:, 0].reshape(4, 2)
            assert np.all(pairs == pairs[:, :1])  # K items per class, class by class
        assert halves[0, 0, 1] != halves[1, 0, 1]  # distinct super-classes
        # Intermediate relevance: two different fine classes of the same super-class.
        big = [h for h in halves if h[0, 1] != 0]
        assert any(len(set(h[:, 0])) > 1 for h in big)


def test_hierarchical_sampler_determinism_and_super_tuples():
    paths = _hierarchy()
    make = lambda seed: data.HierarchicalSampler(paths, 8, 2, batches_per_super_tuple=3, seed=seed)
    a, b = make(5), make(5)
    for step in range(12):
        np.testing.assert_array_equal(a.indices(step), b.indices(step))
    supers = [tuple(paths[a.indices(t)][::4, 1]) for t in range(12)]
    for g in range(4):
        assert len(set(supers[3 * g : 3 * g + 3])) == 1  # same super-classes within a group
    assert any(not np.array_equal(make(5).indices(t), make(6).indices(t)) for t in range(3))


def test_hierarchical_sampler_small_super_class_repeats_classes():
    paths = _hierarchy()
    sampler = data.HierarchicalSampler(paths, 16, 2, seed=0)
    seen = False
    for step in range(40):
        batch = paths[sampler.indices(step)]
        if 0 in batch[:, 1]:
            seen = True
            assert set(batch[batch[:, 1] == 0, 0]) == {0}
    assert seen


def test_hierarchical_sampler_validation():
    paths = _hierarchy()
    with pytest.raises(ValueError, match="batch_size"):
        data.HierarchicalSampler(paths, 10, 2)
    with pytest.raises(ValueError, match="super_classes_per_batch"):
        data.HierarchicalSampler(paths, 40, 2, super_classes_per_batch=5)
    with pytest.raises(ValueError, match="label paths"):
        data.HierarchicalSampler(paths[:, 0], 8, 2)
    with pytest.raises(ValueError, match="coarse_level"):
        data.HierarchicalSampler(paths, 8, 2, coarse_level=2)


# ---------------------------------------------------------------- augmentations


def _image(h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_transform_shapes_and_normalisation():
    t = transforms.ImageTransform(image_size=16, resize_size=20)
    image = _image()
    test = t(image, train=False)
    assert test.shape == (16, 16, 3) and test.dtype == np.float32
    np.testing.assert_array_equal(test, t(image, train=False))
    flat = Image.new("RGB", (30, 30), (124, 116, 104))  # ~ the ImageNet mean
    assert np.abs(t(flat, train=False)).max() < 0.02
    train = t(image, train=True, rng=np.random.default_rng(0))
    assert train.shape == (16, 16, 3)
    with pytest.raises(ValueError, match="rng"):
        t(image, train=True)


def test_transform_test_resize_modes():
    image = _image(40, 80)
    assert transforms.resize(image, 20, "shorter").size == (40, 20)
    assert transforms.resize(image, 20, "square").size == (20, 20)
    assert transforms.center_crop(transforms.resize(image, 20), 16).size == (16, 16)


def test_resize_and_crop_follow_torchvision():
    # torchvision's Resize(256) of 500 x 366: the longer side int(256 * 500 / 366) = 349 (not 350).
    assert transforms.resized_size(500, 366, 256) == (349, 256)
    assert transforms.resized_size(366, 500, 256) == (256, 349)
    # The random-resized crop is cut out, then resized: pixels outside the box never enter.
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)  # not a JPEG: no draft decoding
    t = transforms.ImageTransform(image_size=16, resize_size=20, flip=False, crop_scale=(0.2, 0.5))
    got = t.pixels(image, train=True, rng=np.random.default_rng(7))
    box = transforms.random_resized_crop_box(60, 40, np.random.default_rng(7), t.crop_scale, t.crop_ratio)
    left, top, right, bottom = box
    inside = Image.fromarray(pixels[top:bottom, left:right]).resize((16, 16), Image.BILINEAR)
    np.testing.assert_array_equal(got, np.asarray(inside))


@pytest.mark.parametrize("w, h", [(5, 9), (3, 8), (8, 8), (12, 1), (13, 11)])
def test_center_crop_pads_and_crops_as_torchvision(w, h):
    """torchvision's ``CenterCrop(8)``, written out with numpy: a short side is padded with
    ``(8 - side) // 2`` zeros before it and the rest after, a long one cropped from
    ``round((side - 8) / 2)`` (Python's rounding, as torchvision)."""
    pixels = np.random.default_rng(w * h).integers(1, 256, size=(h, w, 3), dtype=np.uint8)
    pad = [(max(8 - n, 0) // 2, max(8 - n, 0) - max(8 - n, 0) // 2) for n in (h, w)]
    want = np.pad(pixels, [*pad, (0, 0)])
    top, left = (round((n - 8) / 2) if n > 8 else 0 for n in (h, w))
    want = want[top : top + 8, left : left + 8]
    got = np.asarray(transforms.center_crop(Image.fromarray(pixels), 8))
    np.testing.assert_array_equal(got, want)


def test_random_resized_crop_box_within_bounds_and_scale():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(200):
        left, top, right, bottom = transforms.random_resized_crop_box(60, 40, rng)
        assert 0 <= left < right <= 60 and 0 <= top < bottom <= 40
        areas.append((right - left) * (bottom - top) / 2400)
    assert min(areas) >= 0.14 and max(areas) <= 1.0
    assert np.std(areas) > 0.1


def test_transform_flip_and_grey_inputs():
    t = transforms.ImageTransform(image_size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.5, 1.5))
    image = _image(20, 30)
    flips = {t(image, train=True, rng=np.random.default_rng(s)).tobytes() for s in range(10)}
    assert len(flips) == 2  # full-image crop: only the flip varies
    grey = transforms.decode_image(np.zeros((10, 10, 1), np.uint8))
    assert grey.mode == "RGB"


def test_transform_rejects_bad_sizes():
    with pytest.raises(ValueError, match="crop_scale"):
        transforms.ImageTransform(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="test_resize_mode"):
        transforms.ImageTransform(test_resize_mode="stretch")


# ---------------------------------------------------------------- folder / CSV


def _write_folder(tmp_path, rows, name="data.csv", fmt="png"):
    (tmp_path / "images").mkdir(exist_ok=True)
    fields = list(rows[0])
    out = []
    for i, row in enumerate(rows):
        rel = f"images/{name[:-4]}_{i}.{fmt}"
        _image(12 + i % 3, 18, seed=i).save(tmp_path / rel)
        out.append({**row, "path": rel})
    with open(tmp_path / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path"] + fields)
        writer.writeheader()
        writer.writerows(out)
    return tmp_path / name


def _folder_config(**kw):
    return {"name": "folder", "image_size": 8, "resize_size": 10, "num_threads": 2, **kw}


def test_folder_single_csv_with_hierarchy(tmp_path):
    rows = [
        {"product": p, "category": c, "split": s}
        for p, c, s in [
            ("mug_a", "mug", "train"),
            ("mug_a", "mug", "train"),
            ("mug_b", "mug", "train"),
            ("mug_b", "mug", "train"),
            ("chair_a", "chair", "train"),
            ("chair_a", "chair", "train"),
            ("mug_c", "mug", "test"),
            ("mug_c", "mug", "test"),
            ("chair_b", "chair", "test"),
            ("chair_b", "chair", "val"),
        ]
    ]
    _write_folder(tmp_path, rows)
    ds = data.load_dataset(_folder_config(root=str(tmp_path), csv_file="data.csv", dataset_name="products"))
    assert ds.name == "products" and ds.gallery is None
    assert len(ds.train) == 6 and len(ds.test) == 3  # the "val" row is skipped
    assert ds.train.labels.shape == (6, 2) and ds.train.labels.dtype == np.int32
    # ids are shared across splits: same category -> same id
    assert ds.train.labels[0, 1] == ds.test.labels[0, 1]
    assert len(set(ds.train.labels[:, 0])) == 3
    batch = ds.train.get_batch(np.array([0, 3, 5]), train=True, seed=7)
    assert batch.shape == (3, 8, 8, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, ds.train.get_batch(np.array([0, 3, 5]), train=True, seed=7))
    assert not np.array_equal(batch, ds.train.get_batch(np.array([0, 3, 5]), train=True, seed=8))
    test = ds.test.get_batch(np.arange(3), train=False)
    np.testing.assert_array_equal(test, ds.test.get_batch(np.arange(3), train=False))
    sampler = data.HierarchicalSampler(ds.train.labels, 4, 2, super_classes_per_batch=1)
    assert ds.train.get_batch(sampler.indices(0), train=True, seed=0).shape == (4, 8, 8, 3)


def test_folder_labels_are_one_class_per_string_in_numeric_order(tmp_path):
    """"01" and "1" are two classes (they were merged as the number 1); integer-looking labels
    keep their numeric order (2 before 10), the spelling breaking ties."""
    labels = ["01", "1", "10", "2", "1", "10", "2", "01"]
    splits = ["train"] * 4 + ["test"] * 4
    _write_folder(tmp_path, [{"label": v, "split": s} for v, s in zip(labels, splits, strict=True)])
    ds = data.load_dataset(_folder_config(root=str(tmp_path), csv_file="data.csv"))
    order = sorted(set(labels), key=lambda v: (int(v), v))  # "01", "1", "2", "10"
    want = [order.index(v) for v in labels]
    np.testing.assert_array_equal(np.concatenate([ds.train.labels, ds.test.labels]), want)


def test_folder_threads_do_not_change_batches(tmp_path):
    rows = [{"label": str(i % 3), "split": "train" if i < 6 else "test"} for i in range(9)]
    _write_folder(tmp_path, rows, fmt="jpg")
    one = data.load_dataset(_folder_config(root=str(tmp_path), csv_file="data.csv", num_threads=1))
    many = data.load_dataset(_folder_config(root=str(tmp_path), csv_file="data.csv", num_threads=3))
    assert one.train.labels.shape == (6,)
    idx = np.array([5, 0, 0, 2, 4])
    np.testing.assert_array_equal(
        one.train.get_batch(idx, train=True, seed=1), many.train.get_batch(idx, train=True, seed=1)
    )


def test_folder_query_gallery_files(tmp_path):
    # Landmarks / DyML style: separate train, query and gallery CSVs with explicit label columns.
    cols = lambda lm, sc: {"landmark_id": lm, "supercategory": sc, "note": "x"}
    _write_folder(
        tmp_path, [cols(1, "bridge"), cols(1, "bridge"), cols(2, "church"), cols(2, "church")], "train.csv"
    )
    _write_folder(tmp_path, [cols(3, "bridge"), cols(4, "church")], "query.csv")
    _write_folder(tmp_path, [cols(3, "bridge"), cols(4, "church"), cols(5, "bridge")], "gallery.csv")
    ds = data.load_dataset(
        _folder_config(
            root=str(tmp_path),
            train_csv="train.csv",
            query_csv="query.csv",
            gallery_csv="gallery.csv",
            label_columns=["landmark_id", "supercategory"],
        )
    )
    assert ds.gallery is not None and len(ds.test) == 2 and len(ds.gallery) == 3
    np.testing.assert_array_equal(ds.test.labels, ds.gallery.labels[:2])
    assert ds.gallery.get_batch(np.arange(3), train=False).shape == (3, 8, 8, 3)


def test_folder_errors(tmp_path):
    rows = [{"label": "a", "split": "train"}, {"label": "a", "split": "test"}]
    _write_folder(tmp_path, rows)
    with pytest.raises(data.DatasetNotPreparedError, match="not found"):
        data.load_dataset(_folder_config(root=str(tmp_path), csv_file="missing.csv"))
    with pytest.raises(data.DatasetNotPreparedError, match="root"):
        data.load_dataset(
            _folder_config(root=str(tmp_path / "elsewhere"), csv_file=str(tmp_path / "data.csv"))
        )
    with pytest.raises(ValueError, match="label columns"):
        data.load_dataset(_folder_config(root=str(tmp_path), csv_file="data.csv", label_columns=["species"]))
    # One column may be named by a string (it used to be split into its characters).
    with pytest.raises(ValueError, match=r"label columns \['species'\]"):
        data.load_dataset(_folder_config(root=str(tmp_path), csv_file="data.csv", label_columns="species"))
    named = data.load_dataset(_folder_config(root=str(tmp_path), csv_file="data.csv", label_columns="label"))
    assert named.train.labels.shape == (1,)
    with pytest.raises(ValueError, match="either"):
        data.load_dataset(_folder_config(root=str(tmp_path), csv_file="data.csv", train_csv="data.csv"))


@pytest.mark.parametrize("gallery_name", ["galery", "index", None])
def test_folder_queries_without_a_gallery_are_refused(tmp_path, gallery_name):
    """Query rows without gallery rows (a gallery split misspelt or named otherwise, so skipped; or
    query_csv without gallery_csv) silently became queries retrieved among themselves."""
    rows = [{"label": "a", "split": "train"}, {"label": "a", "split": "train"},
            {"label": "b", "split": "query"}, {"label": "b", "split": "query"}]
    if gallery_name is not None:
        rows += [{"label": "b", "split": gallery_name}]
        config = _folder_config(root=str(tmp_path), csv_file="data.csv")
    else:
        config = _folder_config(root=str(tmp_path), train_csv="data.csv", query_csv="data.csv")
    _write_folder(tmp_path, rows)
    with pytest.raises(ValueError, match="a query split needs a gallery split to retrieve from"):
        data.load_dataset(config)


@pytest.mark.parametrize("three", [False, True])
def test_folder_warns_when_labels_are_not_a_tree(tmp_path, three):
    """A product id reused under two categories ("1" is a mug and a chair) is one class for the
    binary metrics but two for the hierarchy's shared levels: the loader warns and names it."""
    names = [("1", "mug"), ("1", "mug"), ("1", "chair"), ("1", "chair"), ("2", "mug"), ("2", "mug")]
    rows = [{"product": p, "category": c, **({"kind": "home"} if three else {}), "split": "train"}
            for p, c in names] + [{"product": "3", "category": "mug", **({"kind": "home"} if three else {}),
                                   "split": "test"}]
    _write_folder(tmp_path, rows)
    with pytest.warns(UserWarning, match=r"label '1' of column 'product' lies under 2 labels of column "
                      r"'category' \('chair', 'mug'\); 1 such labels.*make the 'product' values unique"):
        data.load_dataset(_folder_config(root=str(tmp_path), csv_file="data.csv"))
    # A tree (ids unique across categories) loads without a warning.
    rows[2]["product"] = rows[3]["product"] = "4"
    _write_folder(tmp_path, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_dataset(_folder_config(root=str(tmp_path), csv_file="data.csv"))


def test_folder_image_that_cannot_be_read_is_named(tmp_path):
    """A later image missing, truncated or not an image failed in a loader worker with PIL's
    message alone (a BytesIO or no path at all): the error names the image, its CSV and root."""
    rows = [{"label": str(i % 2), "split": "train" if i < 4 else "test"} for i in range(6)]
    _write_folder(tmp_path, rows)
    ds = data.load_dataset(_folder_config(root=str(tmp_path), csv_file="data.csv"))
    (tmp_path / "images" / "data_2.png").unlink()
    whole = (tmp_path / "images" / "data_3.png").read_bytes()
    (tmp_path / "images" / "data_3.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "images" / "data_1.png").write_bytes(b"not an image")
    for index, cause in ((2, "FileNotFoundError"), (3, "OSError"), (1, "UnidentifiedImageError")):
        with pytest.raises(data.ImageReadError) as info:
            ds.train.get_pixels(np.array([0, index]), train=True)
        message = str(info.value)
        named = f"image {index} (images/data_{index}.png) of split 'train' listed in {tmp_path / 'data.csv'}"
        assert named in message
        assert f"relative to {tmp_path}" in message and cause in message, message
        assert isinstance(info.value, OSError)
    assert ds.train.get_pixels(np.array([0]), train=False).shape == (1, 8, 8, 3)


def test_folder_image_over_pils_pixel_limit_is_named(tmp_path, monkeypatch):
    """PIL refuses an image of more than twice MAX_IMAGE_PIXELS (a decompression bomb) with an
    error that is neither an OSError nor a SyntaxError: it is named as the others are."""
    from PIL import Image

    rows = [{"label": str(i % 2), "split": "train" if i < 4 else "test"} for i in range(6)]
    _write_folder(tmp_path, rows)
    ds = data.load_dataset(_folder_config(root=str(tmp_path), csv_file="data.csv"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # the 8 x 8 images hold 64 > 2 * 20 pixels
    with pytest.raises(data.ImageReadError, match=r"image 1 \(images/data_1.png\).*DecompressionBombError"
                       r".*raise PIL.Image.MAX_IMAGE_PIXELS"):
        ds.train.get_pixels(np.array([1]), train=True)


def test_folder_per_split_csvs_in_their_own_folders(tmp_path):
    # Without a root, each split's image paths are relative to that split's CSV.
    train_dir, test_dir = tmp_path / "train", tmp_path / "test"
    train_dir.mkdir()
    test_dir.mkdir()
    _write_folder(train_dir, [{"label": "a"}, {"label": "b"}], "train.csv")
    _write_folder(test_dir, [{"label": "a"}, {"label": "b"}, {"label": "c"}], "test.csv")
    ds = data.folder.load_folder(train_csv=str(train_dir / "train.csv"), test_csv=str(test_dir / "test.csv"))
    assert len(ds.train) == 2 and len(ds.test) == 3
    assert ds.test.get_batch(np.arange(3), train=False).shape[0] == 3
    # A missing image names the CSV that lists it.
    (test_dir / "images" / "test_0.png").unlink()
    with pytest.raises(data.DatasetNotPreparedError, match=r"listed in .*test\.csv does not exist"):
        data.folder.load_folder(train_csv=str(train_dir / "train.csv"), test_csv=str(test_dir / "test.csv"))


def test_folder_csv_rows_of_the_wrong_length_and_a_byte_order_mark(tmp_path):
    rows = [{"label": "a", "split": "train"}, {"label": "a", "split": "test"}]
    path = _write_folder(tmp_path, rows)
    text = path.read_text()
    (tmp_path / "bom.csv").write_text(text, encoding="utf-8-sig")  # as Excel saves CSV
    ds = data.folder.load_folder(root=str(tmp_path), csv_file="bom.csv")
    assert len(ds.train) == 1 and len(ds.test) == 1
    lines = text.splitlines()
    (tmp_path / "short.csv").write_text("\n".join([*lines, "images/data_0.png,a"]) + "\n")
    with pytest.raises(ValueError, match=r"short\.csv, line 4: 2 values for the 3 columns"):
        data.folder.load_folder(root=str(tmp_path), csv_file="short.csv")
    (tmp_path / "long.csv").write_text("\n".join([*lines, "images/data_0.png,a,test,extra"]) + "\n")
    with pytest.raises(ValueError, match=r"long\.csv, line 4: 4 values for the 3 columns"):
        data.folder.load_folder(root=str(tmp_path), csv_file="long.csv")


def test_folder_repeated_column_name_is_refused(tmp_path):
    # path,label,label,split: both splits were labelled from the second "label" column.
    rows = [{"label": "x", "other": "y", "split": "train"}, {"label": "x", "other": "z", "split": "test"}]
    path = _write_folder(tmp_path, rows, "dup.csv")
    path.write_text(path.read_text().replace("path,label,other,split", "path,label,label,split"))
    with pytest.raises(ValueError, match=r"dup\.csv: column 'label' appears 2 times in the header "
                                         r"\['path', 'label', 'label', 'split'\]; give each column"):
        data.folder.load_folder(root=str(tmp_path), csv_file="dup.csv")
    # Unnamed trailing columns (a spreadsheet's export: `path,label,split,,`) are never read: no error.
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0].replace("label,label", "label,other") + ",,"]
                               + [line + ",," for line in lines[1:]]) + "\n")
    loaded = data.folder.load_folder(root=str(tmp_path), csv_file="dup.csv", label_columns=["label"])
    assert len(loaded.train) == 1 and len(loaded.test) == 1


def test_folder_empty_label_names_the_csv_that_has_it(tmp_path):
    # With one CSV per split, it named the first CSV (train.csv) whatever held the empty label.
    _write_folder(tmp_path, [{"label": "a"}, {"label": "b"}], "train.csv")
    _write_folder(tmp_path, [{"label": "a"}, {"label": ""}, {"label": "b"}], "test.csv")
    with pytest.raises(ValueError, match=r"test\.csv: empty value in label column 'label' in 1 row"):
        data.folder.load_folder(root=str(tmp_path), train_csv="train.csv", test_csv="test.csv")


def test_image_source_boxes_cut_each_image_before_the_transform():
    """``with_boxes``: each image is cut to its box first, so a query's pixels come only from
    its box (the Oxford/Paris protocols crop queries to their ``bbx``)."""
    from rankax.data.image_source import ImageSource

    images = np.zeros((2, 20, 24, 3), np.uint8)
    images[0, 5:15, 2:12] = 200  # box (left 2, top 5, right 12, bottom 15) of image 0
    images[1, :10, 12:] = 90  # box (12, 0, 24, 10) of image 1
    boxes = np.array([[2, 5, 12, 15], [12, 0, 24, 10]], np.float64)
    t = transforms.ImageTransform(image_size=8, resize_size=8)
    whole = ImageSource(lambda i: images[i], np.arange(2), t, num_threads=1)
    cut = whole.with_boxes(boxes)
    pixels = cut.get_pixels(np.arange(2), train=False)
    np.testing.assert_array_equal(pixels[0], 200)
    np.testing.assert_array_equal(pixels[1], 90)
    assert whole.get_pixels(np.arange(2), train=False).min() == 0  # unboxed: the zeros around
    with pytest.raises(ValueError, match=r"boxes must be \[2, 4\]"):
        whole.with_boxes(boxes[:1])


def test_revisited_evaluator_crops_queries_to_their_boxes(tmp_path):
    """``eval_protocol="revisited"``: image-file queries are cut to the ground truth's ``bbx``."""
    import json

    from rankax.data.image_source import ImageSource
    from rankax.train import evaluators
    from tests.test_train import tiny_config

    t = transforms.ImageTransform(image_size=8, resize_size=8)
    src = ImageSource(lambda i: np.zeros((20, 24, 3), np.uint8), np.arange(2), t, num_threads=1)
    gnd = [{"bbx": [1, 2, 9, 10], "easy": [0], "hard": [], "junk": []},
           {"bbx": [0, 0, 5.5, 7], "easy": [1], "hard": [], "junk": []}]
    (tmp_path / "gnd.json").write_text(json.dumps(gnd))
    c = tiny_config()
    c.eval_protocol, c.revisited_gnd = "revisited", str(tmp_path / "gnd.json")
    evaluator = evaluators.make_evaluator(c, data.RetrievalDataset("toy", src, src, src))
    np.testing.assert_array_equal(evaluator.query_inputs.boxes, [g["bbx"] for g in gnd])
    assert evaluator.gallery_inputs.boxes is None
    # without boxes the queries are embedded whole: said, no longer silent
    (tmp_path / "gnd.json").write_text(json.dumps([{k: v for k, v in g.items() if k != "bbx"} for g in gnd]))
    with pytest.warns(UserWarning, match=r"no query boxes \('bbx'\): the queries are embedded whole"):
        evaluator = evaluators.make_evaluator(c, data.RetrievalDataset("toy", src, src, src))
    assert evaluator.query_inputs.boxes is None


def test_run_record_tells_other_images_with_the_same_labels(tmp_path):
    """The run record hashes each split's items as well as its labels: the CSV's relative image
    paths (a copy of the dataset under another root is the same data), or the pixels of an
    in-memory source. A CSV edited to point at other images with the same labels is refused
    as other data; a record written before the items' hash existed is compared without it."""
    import json
    import shutil

    from rankax.train import WorkdirConfigMismatch
    from rankax.train import workdir as workdir_lib

    rows = [{"cls": c, "split": s} for c, s in [("a", "train"), ("a", "train"), ("b", "train"),
                                                 ("b", "train"), ("a", "test"), ("b", "test")]]
    (tmp_path / "one").mkdir()
    _write_folder(tmp_path / "one", rows)
    config = lambda root: _folder_config(root=str(root), csv_file="data.csv")
    facts = lambda root: workdir_lib.run_facts(data.load_dataset(config(root)), 1, 1)
    first = facts(tmp_path / "one")
    assert first["data"]["train"]["items_sha256"] is not None
    shutil.copytree(tmp_path / "one", tmp_path / "moved")
    assert facts(tmp_path / "moved") == first

    # The train rows swapped with each other within a class: same labels, other files.
    lines = (tmp_path / "moved" / "data.csv").read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    (tmp_path / "moved" / "data.csv").write_text("\n".join(lines) + "\n")
    edited = facts(tmp_path / "moved")
    assert edited["data"]["train"]["labels_sha256"] == first["data"]["train"]["labels_sha256"]
    assert edited["data"]["train"]["items_sha256"] != first["data"]["train"]["items_sha256"]

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"data": first["data"], "topology": first["topology"]}))
    with pytest.raises(WorkdirConfigMismatch, match=r"other data \(train 4 -> 4 items, other items\)"):
        workdir_lib.fact_changes(str(workdir), edited)
    assert "data" in workdir_lib.fact_changes(str(workdir), edited, allow_changes=["data"])
    older = {split: {k: v for k, v in d.items() if k != "items_sha256"} for split, d in first["data"].items()}
    (workdir / "config.json").write_text(json.dumps({"data": older, "topology": first["topology"]}))
    assert "data" not in workdir_lib.fact_changes(str(workdir), edited)

    # In-memory images: their pixels.
    src = data.ArraySource(np.zeros((3, 2, 2, 1), np.float32), np.arange(3))
    other = data.ArraySource(np.ones((3, 2, 2, 1), np.float32), np.arange(3))
    assert workdir_lib._items_sha256(src) != workdir_lib._items_sha256(other)
