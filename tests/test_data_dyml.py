"""DyML loader (``rankax.data.dyml``) on generated files in the released layout.

``write_dyml`` writes a tiny DyML-Vehicle/Animal/Product folder: solid-colour PNG images whose
colour encodes the row (so a test can tell which file a source read), the official CSV
headers (with their leading spaces), raw label ids that are not ``0..C-1`` (so the remapping
is visible). ``tests/test_configs.py`` trains the DyML configs on it.
"""

import numpy as np
import pytest

from rankax import data
from rankax.data.dyml import load_dyml
from rankax.data.tfds_data import DatasetNotPreparedError
from rankax.data.transforms import ImageTransform

TRAIN_FINE = 6  # fine classes of 2 images; middle = fine // 2, coarse = fine // 4 (raw ids shifted)
TEST_CLASSES = 3  # per benchmark: one query and two gallery images per class


def _colour(i):
    return (i * 37 % 256, i * 91 % 256, (i * 53 + 7) % 256)


def _write_images(folder, names, start):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.new("RGB", (20, 16), _colour(start + k)).save(folder / name)


def _write_paths_csv(path, rows):
    # The released headers: "fname, fine_id0.jpg, middle_id, coarse_id" / "fname, labels0.jpg".
    header = "fname, fine_id0.jpg, middle_id, coarse_id" if len(rows[0]) == 4 else "fname, labels0.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(", ".join(str(x) for x in r) for r in rows) + "\n")


def _hier_rows(prefix, num_fine, per_class):
    """``[fname, fine, middle, coarse]`` rows with raw ids ``10 f + 3``, ``100 + f // 2``, ``7 - f // 4``."""
    return [
        [f"{prefix}{f}_{j}.png", 10 * f + 3, 100 + f // 2, 7 - f // 4]
        for f in range(num_fine)
        for j in range(per_class)
    ]


def write_dyml(root, variant="vehicle"):
    """A tiny DyML-``variant`` folder in the released layout; returns the written rows."""
    written = {"train": _hier_rows("t", TRAIN_FINE, 2)}
    _write_paths_csv(root / "train" / "label.csv", written["train"])
    _write_images(root / "train" / "imgs", [r[0] for r in written["train"]], 0)
    if variant == "product":
        rows = _hier_rows("m", 4, 2)
        _write_paths_csv(root / "mini-bmk_all_in_one" / "label.csv", rows)
        _write_images(root / "mini-bmk_all_in_one" / "imgs", [r[0] for r in rows], 100)
        written["test"] = rows
        return written
    for g, granularity in enumerate(("fine", "middle", "coarse")):
        query = [[f"q{c}.png", 50 + 5 * c] for c in range(TEST_CLASSES)]
        gallery = [[f"g{c}_{j}.png", 50 + 5 * c] for c in reversed(range(TEST_CLASSES)) for j in range(2)]
        for split, rows in (("query", query), ("gallery", gallery)):
            _write_paths_csv(root / f"bmk_{granularity}" / f"{split}.csv", rows)
            _write_images(root / f"bmk_{granularity}" / split, [r[0] for r in rows], 200 + 20 * g)
            written[f"{granularity}/{split}"] = rows
    return written


def _first_pixels(source, n):
    return source.get_pixels(np.arange(n), train=False)[:, 4, 4]


def test_dyml_train_labels_and_images(tmp_path):
    write_dyml(tmp_path, "vehicle")
    ds = load_dyml(str(tmp_path), "vehicle", transform=ImageTransform(image_size=8, resize_size=8))
    fine = np.repeat(np.arange(TRAIN_FINE), 2)
    # Raw ids 10 f + 3 / 100 + f // 2 / 7 - f // 4 remapped to 0..C-1 in increasing raw order.
    want = np.stack([fine, fine // 2, 1 - fine // 4], axis=1)
    np.testing.assert_array_equal(np.asarray(ds.train.labels), want)
    assert ds.name == "dyml_vehicle_fine" and np.asarray(ds.train.labels).dtype == np.int32
    # Solid images: the centre pixel of row k is the colour written for row k.
    np.testing.assert_array_equal(_first_pixels(ds.train, 12), [_colour(k) for k in range(12)])


@pytest.mark.parametrize("granularity", ["fine", "middle", "coarse"])
def test_dyml_benchmarks_share_query_and_gallery_ids(tmp_path, granularity):
    written = write_dyml(tmp_path, "animal")
    ds = load_dyml(str(tmp_path), "animal", benchmark=granularity)
    assert ds.name == f"dyml_animal_{granularity}" and ds.gallery is not None
    q, g = np.asarray(ds.test.labels), np.asarray(ds.gallery.labels)
    assert q.shape == (TEST_CLASSES,) and g.shape == (2 * TEST_CLASSES,)
    raw_q = [r[1] for r in written[f"{granularity}/query"]]
    raw_g = [r[1] for r in written[f"{granularity}/gallery"]]
    # Same raw id <=> same id, across the two files.
    assert all((q[i] == g[j]) == (raw_q[i] == raw_g[j]) for i in range(len(q)) for j in range(len(g)))
    start = 200 + 20 * ("fine", "middle", "coarse").index(granularity)
    np.testing.assert_array_equal(
        _first_pixels(ds.test, TEST_CLASSES), [_colour(start + k) for k in range(3)]
    )


def test_dyml_product_all_in_one(tmp_path):
    write_dyml(tmp_path, "product")
    ds = data.load_dataset({"name": "dyml", "root": str(tmp_path), "variant": "product"})
    assert ds.name == "dyml_product" and ds.gallery is None
    fine = np.repeat(np.arange(4), 2)  # four fine classes: one coarse class (raw id 7)
    want = np.stack([fine, fine // 2, np.zeros_like(fine)], axis=1)
    np.testing.assert_array_equal(np.asarray(ds.test.labels), want)
    np.testing.assert_array_equal(_first_pixels(ds.test, 8), [_colour(100 + k) for k in range(8)])


def test_dyml_missing_files_say_how_to_prepare(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match=r"train/label\.csv.*config\.dataset\.root"):
        load_dyml(str(tmp_path / "nowhere"), "vehicle")
    write_dyml(tmp_path, "vehicle")
    (tmp_path / "bmk_coarse" / "gallery.csv").unlink()
    with pytest.raises(DatasetNotPreparedError, match=r"gallery\.csv.*Download the DyML"):
        load_dyml(str(tmp_path), "vehicle", benchmark="coarse")
    with pytest.raises(DatasetNotPreparedError, match="mini-bmk_all_in_one"):
        load_dyml(str(tmp_path), "product")  # a Vehicle folder has no all-in-one benchmark
    (tmp_path / "train" / "imgs" / "t0_0.png").unlink()
    with pytest.raises(DatasetNotPreparedError, match=r"t0_0\.png.*listed but missing"):
        load_dyml(str(tmp_path), "vehicle")


def test_dyml_bad_keys(tmp_path):
    with pytest.raises(ValueError, match="config.dataset.root is required"):
        data.load_dataset({"name": "dyml"})
    with pytest.raises(ValueError, match="config.dataset.variant"):
        data.load_dataset({"name": "dyml", "root": str(tmp_path), "variant": "plants"})
    with pytest.raises(ValueError, match="config.dataset.benchmark"):
        data.load_dataset({"name": "dyml", "root": str(tmp_path), "benchmark": "finest"})


def _edit_line(path, index, text):
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


def test_dyml_empty_gallery_label_names_the_gallery_file_and_its_column(tmp_path):
    # It said "bmk_fine/query.csv: empty value in label column 'label'" (neither is so).
    write_dyml(tmp_path, "vehicle")
    _edit_line(tmp_path / "bmk_fine" / "gallery.csv", 2, "g2_1.png, ")
    with pytest.raises(ValueError, match=r"bmk_fine/gallery\.csv: empty value in label column 'labels0\.jpg' "
                                         r"in 1 row\(s\); fill it in"):
        load_dyml(str(tmp_path), "vehicle")


def test_dyml_repeated_column_name_is_refused(tmp_path):
    # The second "middle_id" column was read for both (csv.DictReader keeps the last one).
    write_dyml(tmp_path, "vehicle")
    _edit_line(tmp_path / "train" / "label.csv", 0, "fname, fine_id0.jpg, middle_id, middle_id")
    with pytest.raises(ValueError, match=r"train/label\.csv: column 'middle_id' appears 2 times"):
        load_dyml(str(tmp_path), "vehicle")
