"""TFDS sources: the four builders on ``tfds.testing.mock_data``, a real ArrayRecord build, errors.

Without TensorFlow, ``mock_data`` serves only decoded examples (honouring ``SkipDecoding``
would make it encode its random images with TensorFlow), so the mock tests use
``pil_decode=False``; the default ``pil_decode=True`` path is tested on a small real
``cars196`` ArrayRecord dataset written here from PNG files (which needs no TensorFlow).
"""

import json
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

import rankax.data as data  # noqa: E402
from rankax.data import tfds_data  # noqa: E402

SMALL = {"image_size": 16, "resize_size": 20, "num_threads": 2, "pil_decode": False}


@pytest.fixture
def mock():
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def _check_source(source, labels_ndim):
    assert source.labels.ndim == labels_ndim and source.labels.dtype == np.int32
    idx = np.array([0, len(source) - 1, 0])
    batch = source.get_batch(idx, train=True, seed=4)
    assert batch.shape == (3, 16, 16, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, source.get_batch(idx, train=True, seed=4))
    assert source.get_batch(idx[:2], train=False).shape == (2, 16, 16, 3)


@pytest.mark.parametrize(("name", "num_train_classes"), [("cars", 98), ("cub", 100)])
def test_cars_cub_class_disjoint_split(mock, name, num_train_classes):
    ds = data.load_dataset({"name": name, **SMALL})
    builder = {"cars": "cars196", "cub": "caltech_birds2011"}[name]
    original = np.asarray([r["label"] for r in tfds.data_source(builder, split="train+test")])
    assert len(ds.train) == int(np.sum(original < num_train_classes))
    assert len(ds.train) + len(ds.test) == len(original)
    assert len(ds.train) > 0 and len(ds.test) > 0
    assert set(ds.train.labels).isdisjoint(ds.test.labels)
    assert ds.train.labels.max() < ds.test.labels.min()
    _check_source(ds.train, 1)
    _check_source(ds.test, 1)


def test_sop_label_paths(mock):
    ds = data.load_dataset({"name": "sop", **SMALL})
    assert ds.name == "sop" and ds.gallery is None
    _check_source(ds.train, 2)
    assert ds.train.labels.shape == (24, 2)
    assert ds.train.labels[:, 1].max() < 12
    records = tfds.data_source("stanford_online_products", split="train")
    original = np.asarray([[r["class_id"], r["super_class_id/num"]] for r in records])
    # Dense ids keep the equalities of the original ids, level by level.
    for level in range(2):
        same = original[:, None, level] == original[None, :, level]
        np.testing.assert_array_equal(
            same, ds.train.labels[:, None, level] == ds.train.labels[None, :, level]
        )


def _inat_files(tmp_path):
    records = list(tfds.data_source("i_naturalist2018", split="train+validation"))
    names = tfds.builder("i_naturalist2018").info.features["label"].names
    labels = sorted({int(r["label"]) for r in records})
    taxonomy = []
    for i, label in enumerate(labels):
        # A made-up taxonomy: genus shared by pairs of species, then coarser and coarser.
        record = {"id": label, "name": names[label], "genus": f"g{i // 2}", "family": f"f{i // 4}"}
        record.update({"order": f"o{i // 8}", "class": "c0", "phylum": "p0", "kingdom": "Animalia"})
        taxonomy.append(record)
    (tmp_path / "categories.json").write_text(json.dumps(taxonomy))
    median = np.median([int(r["label"]) for r in records])
    ids = lambda keep: [f"train_val2018/Aves/{int(r['label'])}/{r['id']}.jpg" for r in records if keep(r)]
    train = ids(lambda r: int(r["label"]) <= median) + ["train_val2018/Aves/1/not_in_tfds.jpg"]
    test = ids(lambda r: int(r["label"]) > median)
    (tmp_path / "Inaturalist_train_set1.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "Inaturalist_test_set1.txt").write_text("\n".join(test) + "\n")
    return records, len(train) - 1, len(test)


@pytest.mark.parametrize(("hierarchy", "levels"), [("full", 7), ("base", 2)])
def test_inat_taxonomy_and_split(mock, tmp_path, hierarchy, levels):
    records, n_train, n_test = _inat_files(tmp_path)
    config = {"name": "inat", "taxonomy_file": str(tmp_path / "categories.json"), "split_dir": str(tmp_path)}
    # The train list names one image TFDS does not hold: left out, with a warning that counts it.
    with pytest.warns(UserWarning, match="1 of the .* images of the iNaturalist train list are not in"):
        ds = data.load_dataset({**config, "hierarchy": hierarchy, **SMALL})
    assert len(ds.train) == n_train and len(ds.test) == n_test
    assert ds.train.labels.shape == (n_train, levels)
    assert set(ds.train.labels[:, 0]).isdisjoint(ds.test.labels[:, 0])
    _check_source(ds.train, 2)
    if hierarchy == "full":
        both = np.concatenate([ds.train.labels, ds.test.labels])
        assert np.all(both[:, -1] == 0)  # one kingdom
        # A coarser level never splits a finer group: each species has one genus, etc.
        for level in range(levels - 1):
            for value in np.unique(both[:, level]):
                assert len(np.unique(both[both[:, level] == value, level + 1])) == 1


@pytest.mark.filterwarnings("ignore:1 of the .* images of the iNaturalist train list")  # _inat_files' extra
def test_inat_genus_name_in_two_families_is_warned_about(mock, tmp_path):
    """A genus name used in two families (as Prunella, a plant and a bird genus) is one genus id
    (SupRank's loader does the same): loading says so, naming the genus and the families."""
    _inat_files(tmp_path)
    taxonomy = json.loads((tmp_path / "categories.json").read_text())
    taxonomy[-1]["genus"] = taxonomy[0]["genus"]  # the last species joins g0, in another family
    assert taxonomy[-1]["family"] != taxonomy[0]["family"]
    (tmp_path / "categories.json").write_text(json.dumps(taxonomy))
    config = {"name": "inat", "taxonomy_file": str(tmp_path / "categories.json"), "split_dir": str(tmp_path)}
    genus = r"label 'g0' of column 'genus' lies under 2 labels of column 'family'"
    with pytest.warns(UserWarning, match=genus):
        data.load_dataset({**config, "hierarchy": "full", **SMALL})


def test_inat_missing_files_say_where_to_get_them(mock, tmp_path):
    _inat_files(tmp_path)
    config = {"name": "inat", "split_dir": str(tmp_path), **SMALL}
    with pytest.raises(data.DatasetNotPreparedError, match="categories.json"):
        data.load_dataset({**config, "taxonomy_file": str(tmp_path / "nope.json")})
    with pytest.raises(data.DatasetNotPreparedError, match="Smooth_AP"):
        data.load_dataset(
            {**config, "taxonomy_file": str(tmp_path / "categories.json"), "split_dir": "/nonexistent"}
        )


def test_missing_dataset_gives_preparation_steps(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.load_dataset({"name": "cars", "data_dir": str(tmp_path)})
    message = str(info.value)
    assert f"tfds build cars196 --data_dir={tmp_path} --file_format=array_record" in message
    assert f"{tmp_path}/downloads/manual" in message
    assert "cars_train.tgz" in message
    for name in ("stanford_online_products", "caltech_birds2011", "i_naturalist2018"):
        assert f"tfds build {name}" in tfds_data.preparation_steps(name)
    # A data_dir that does not exist says so (TFDS's message described a prepared dataset).
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.load_dataset({"name": "cars", "data_dir": str(tmp_path / "nowhere")})
    assert f"config.dataset.data_dir {tmp_path / 'nowhere'} does not exist" in str(info.value)
    assert "already prepared" not in str(info.value)


def test_a_home_relative_data_dir_that_exists_is_not_called_missing(tmp_path, monkeypatch):
    """TFDS expands ``~``; the check for a missing data_dir did not, and hid TFDS's reason."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "tfds").mkdir()
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.load_dataset({"name": "cars", "data_dir": "~/tfds"})
    assert "does not exist" not in str(info.value) and "TFDS said" in str(info.value)


def _build_local_cars(tmp_path):
    """A real ``cars196`` ArrayRecord dataset of 8 PNG images (the builder's features, our files)."""
    from PIL import Image
    from tensorflow_datasets.image_classification import cars196

    labels = {"train": [3, 120, 3, 150], "test": [120, 7, 7, 150]}

    with tfds.core.registered.skip_registration():

        class LocalCars(cars196.Cars196):
            name = "cars196"

            def _split_generators(self, dl_manager):
                return {split: self._generate_examples(split) for split in labels}

            def _generate_examples(self, split):
                for i, label in enumerate(labels[split]):
                    path = tmp_path / f"{split}{i}.png"
                    pixels = np.random.default_rng(label * 10 + i).integers(
                        0, 256, (20, 30, 3), dtype=np.uint8
                    )
                    Image.fromarray(pixels).save(path)
                    bbox = tfds.features.BBox(0.0, 0.0, 1.0, 1.0)
                    yield (
                        f"{split}{i}",
                        {"id": f"{split}{i}", "image": str(path), "label": label, "bbox": bbox},
                    )

    LocalCars(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()


def test_real_array_record_with_pil_decoding(tmp_path):
    _build_local_cars(tmp_path)
    ds = data.load_dataset({"name": "cars", "data_dir": str(tmp_path), "image_size": 16, "resize_size": 20})
    assert sorted(ds.train.labels.tolist()) == [0, 0, 1, 1]  # original 3, 3, 7, 7 (< 98)
    assert sorted(ds.test.labels.tolist()) == [2, 2, 3, 3]  # 120, 120, 150, 150
    _check_source(ds.train, 1)
    assert "tensorflow" not in sys.modules or sys.modules["tensorflow"] is None


def test_tfds_sources_travel_to_input_workers(tmp_path):
    """The input pipeline's worker processes receive the source by pickling: an ArrayRecord
    TFDS source survives the round trip and reads the same images."""
    import pickle

    _build_local_cars(tmp_path)
    ds = data.load_dataset({"name": "cars", "data_dir": str(tmp_path), "image_size": 16, "resize_size": 20})
    copy = pickle.loads(pickle.dumps(ds.train))
    idx = np.arange(len(ds.train))
    np.testing.assert_array_equal(
        copy.get_pixels(idx, train=True, seed=5), ds.train.get_pixels(idx, train=True, seed=5)
    )
