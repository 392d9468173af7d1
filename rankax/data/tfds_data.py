"""TFDS-backed retrieval datasets: SOP, CUB-200-2011, Cars196, iNaturalist 2018.

Images are read by random access with ``tfds.data_source`` (ArrayRecord files; no TensorFlow
needed to read), so the deterministic samplers can ask for any indices. With
``pil_decode=True`` (default) the ``image`` feature is left encoded (``SkipDecoding``): the
one pass over the records that reads the labels does not decode images, and
:class:`~rankax.data.image_source.ImageSource` decodes the images of a batch with PIL.
``pil_decode=False`` lets TFDS decode (what ``tfds.testing.mock_data`` supports without
TensorFlow). Splits are the class-disjoint ones of the metric-learning papers:

* ``stanford_online_products``: the TFDS train/test splits are the paper's (11,318 train
  classes / 11,316 test classes, Oh Song et al. CVPR'16); labels ``[N, 2]`` =
  ``[class_id, super_class_id]`` (12 super-classes).
* ``caltech_birds2011``: TFDS train and test are merged (they share classes); classes 0-99
  train, 100-199 test (Wah et al. 2011; the split of Oh Song et al. 2016). Labels ``[N]``.
* ``cars196``: train and test merged; classes 0-97 train, 98-195 test (Krause et al. 2013).
* ``i_naturalist2018``: train and validation merged, then split by the class-disjoint image
  lists of Brown et al. (ECCV'20, Smooth-AP), which ROADMAP and SupRank use: 5,690 training
  species, 2,452 test species. Labels ``[N, 7]`` = ``[species, genus, family, order, class,
  phylum, kingdom]`` from the iNat 2018 taxonomy (``hierarchy="full"``), or ``[N, 2]`` =
  ``[species, supercategory]`` (``hierarchy="base"``) (Van Horn et al. CVPR'18).

Label ids are remapped to ``0..C-1`` per level over train and test together (in the order of
the original ids), so a class or super-class has the same id in both splits.
A dataset that is not prepared raises :class:`DatasetNotPreparedError`, whose message gives
the preparation steps.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from rankax._core import optional
from rankax.data.base import RetrievalDataset, warn_unless_tree
from rankax.data.image_source import ImageSource
from rankax.data.transforms import ImageTransform


class DatasetNotPreparedError(FileNotFoundError):
    """A dataset is not on disk in the expected form; the message says how to prepare it."""


_MANUAL_FILES = {
    "stanford_online_products": (
        "Stanford_Online_Products.zip (ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip, "
        "project page http://cvgl.stanford.edu/projects/lifted_struct/)"
    ),
    "caltech_birds2011": (
        "CUB_200_2011.tgz and segmentations.tgz (https://data.caltech.edu/records/65de6-vp158 and "
        "https://data.caltech.edu/records/w9d68-gec53)"
    ),
    "cars196": (
        "cars_train.tgz, cars_test.tgz, cars_test_annos_withlabels.mat and car_devkit.tgz "
        "(from the Stanford Cars page, https://ai.stanford.edu/~jkrause/cars/car_dataset.html, "
        "or one of its mirrors)"
    ),
    "i_naturalist2018": (
        "train_val2018.tar.gz, train2018.json.tar.gz, val2018.json.tar.gz, test2018.tar.gz and "
        "categories.json.tar.gz (https://github.com/visipedia/inat_comp/tree/master/2018)"
    ),
}

INAT_LEVELS = ("species", "genus", "family", "order", "class", "phylum", "kingdom")
INAT_HIERARCHIES = ("full", "base")


def preparation_steps(name: str, data_dir: str | None = None) -> str:
    """Human-readable steps to prepare the TFDS dataset ``name`` for random access."""
    data_dir = data_dir or "~/tensorflow_datasets"
    files = _MANUAL_FILES.get(name, "the files the TFDS builder downloads")
    return (
        f"Dataset {name!r} is not prepared in {data_dir} as ArrayRecord files (needed for random access).\n"
        f"Prepare it once, on a machine with network access and TensorFlow (needed to build, not to read):\n"
        f"  pip install tensorflow-cpu tensorflow-datasets\n"
        f"  tfds build {name} --data_dir={data_dir} --file_format=array_record\n"
        f"If the download URLs are offline, download {files} yourself and put the files in\n"
        f"  {data_dir}/downloads/manual/\n"
        f"then run the same `tfds build` command (TFDS takes files from the manual dir by name).\n"
        f"A dataset already built as TFRecord can be converted with\n"
        f"  tfds convert_format --dataset_dir={data_dir}/{name} --out_file_format=array_record\n"
        f"Then set config.dataset.data_dir to {data_dir} (or leave it unset for ~/tensorflow_datasets)."
    )


def _data_source(name: str, split: str, data_dir: str | None, skip: Sequence[str], pil_decode: bool) -> Any:
    tfds = optional.require("tensorflow_datasets", f"the TFDS dataset {name!r}")

    # Without TensorFlow, tfds.testing.mock_data can only serve decoded examples (it would
    # have to encode its random images to honour SkipDecoding), hence pil_decode=False there.
    decoders = {k: tfds.decode.SkipDecoding() for k in skip} if pil_decode else None
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)
    except Exception as e:  # tfds raises AssertionError/DatasetNotFoundError/ValueError by case
        # A data_dir that does not exist: TFDS's own message would describe a prepared dataset.
        missing = data_dir and not os.path.isdir(os.path.expanduser(data_dir))  # TFDS expands ~ too
        said = f"(config.dataset.data_dir {data_dir} does not exist)" if missing else f"(TFDS said: {e})"
        raise DatasetNotPreparedError(f"{preparation_steps(name, data_dir)}\n{said}") from e


def _read_column(source: Any, keys: Sequence[str]) -> list[tuple]:
    """The ``keys`` of every record (images stay encoded, so this only parses records)."""
    out = []
    for i in range(len(source)):
        record = source[i]
        out.append(tuple(record[k] for k in keys))
    return out


def _dense(*columns: Sequence[Any]) -> np.ndarray:
    """``[N]`` (one column) or ``[N, L]`` int32: each column's ids remapped to ``0..C-1``."""
    out = [np.unique(np.asarray(c), return_inverse=True)[1].reshape(-1) for c in columns]
    return (out[0] if len(out) == 1 else np.stack(out, axis=1)).astype(np.int32)


class _ImageReader:
    """``i -> the encoded image of record rows[i]`` (all records when ``rows`` is None); a
    class rather than a closure so that input-pipeline worker processes can unpickle it."""

    def __init__(self, source: Any, rows: np.ndarray | None = None):
        self.source, self.rows = source, rows

    def __call__(self, i: int) -> Any:
        return self.source[int(i if self.rows is None else self.rows[i])]["image"]


def _image_reader(source: Any) -> Any:
    return _ImageReader(source)


def _subset_reader(source: Any, rows: np.ndarray) -> Any:
    return _ImageReader(source, np.asarray(rows))


def _split_by_class(
    name: str,
    data_dir: str | None,
    num_train_classes: int,
    transform: ImageTransform,
    num_threads: int,
    pil_decode: bool,
    skip: Sequence[str] = ("image",),
) -> RetrievalDataset:
    source = _data_source(name, "train+test", data_dir, skip, pil_decode)
    labels = np.asarray([r[0] for r in _read_column(source, ["label"])], np.int64)
    rows = {
        "train": np.flatnonzero(labels < num_train_classes),
        "test": np.flatnonzero(labels >= num_train_classes),
    }
    dense = _dense(labels)
    parts = {
        k: ImageSource(_subset_reader(source, r), dense[r], transform, num_threads,
                       origin=f"TFDS {name}'s {k} classes")
        for k, r in rows.items()
    }
    return RetrievalDataset(name, parts["train"], parts["test"])


def load_cub(
    data_dir: str | None = None,
    transform: ImageTransform | None = None,
    num_threads: int = 4,
    pil_decode: bool = True,
) -> RetrievalDataset:
    """CUB-200-2011 (TFDS ``caltech_birds2011``): classes 0-99 train, 100-199 test, labels ``[N]``.

    References: Wah, Branson, Welinder, Perona, Belongie. "The Caltech-UCSD Birds-200-2011
    Dataset", Caltech tech. report CNS-TR-2011-001, 2011.
    """
    transform = transform or ImageTransform()
    return _split_by_class(
        "caltech_birds2011", data_dir, 100, transform, num_threads, pil_decode, ("image", "segmentation_mask")
    )


def load_cars(
    data_dir: str | None = None,
    transform: ImageTransform | None = None,
    num_threads: int = 4,
    pil_decode: bool = True,
) -> RetrievalDataset:
    """Cars196 (TFDS ``cars196``): classes 0-97 train, 98-195 test, labels ``[N]``.

    References: Krause, Stark, Deng, Fei-Fei. "3D Object Representations for Fine-Grained
    Categorization", 3dRR workshop, ICCV 2013.
    """
    transform = transform or ImageTransform()
    return _split_by_class("cars196", data_dir, 98, transform, num_threads, pil_decode)


def load_sop(
    data_dir: str | None = None,
    transform: ImageTransform | None = None,
    num_threads: int = 4,
    pil_decode: bool = True,
) -> RetrievalDataset:
    """Stanford Online Products: TFDS train (11,318 classes) / test (11,316), labels ``[N, 2]``.

    Columns: ``[class, super_class]`` (12 super-classes, e.g. bicycle, chair, mug). The
    default transform follows the SupRank SOP config (train: shorter side to 256 before the
    random crop; test: 256 x 256 then center crop 224).

    References: Oh Song, Xiang, Jegelka, Savarese. "Deep Metric Learning via Lifted
    Structured Feature Embedding", CVPR 2016.
    """
    transform = transform or ImageTransform(train_resize_size=256, test_resize_mode="square")
    sources = {
        s: _data_source("stanford_online_products", s, data_dir, ("image",), pil_decode)
        for s in ("train", "test")
    }
    records = {s: _read_column(src, ["class_id", "super_class_id/num"]) for s, src in sources.items()}
    n_train = len(records["train"])
    both = records["train"] + records["test"]
    labels = _dense([r[0] for r in both], [r[1] for r in both])
    parts = {
        s: ImageSource(_image_reader(sources[s]), part, transform, num_threads,
                       origin=f"TFDS stanford_online_products, split {s!r}")
        for s, part in (("train", labels[:n_train]), ("test", labels[n_train:]))
    }
    return RetrievalDataset("sop", parts["train"], parts["test"])


def _read_taxonomy(path: str) -> dict[str, dict]:
    """``species name -> category record`` from iNat 2018's categories.json or train2018.json."""
    try:
        with open(os.path.expanduser(path)) as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise DatasetNotPreparedError(
            f"iNaturalist taxonomy file {path!r} not found: extract categories.json from "
            "categories.json.tar.gz (or train2018.json from train2018.json.tar.gz) of the iNat 2018 "
            "release (https://github.com/visipedia/inat_comp/tree/master/2018) and set "
            "config.dataset.taxonomy_file to it."
        ) from e
    categories = data["categories"] if isinstance(data, dict) else data
    return {c["name"]: c for c in categories}


def _read_split_ids(split_dir: str, split: str) -> list[str]:
    path = os.path.join(os.path.expanduser(split_dir), f"Inaturalist_{split}_set1.txt")
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except FileNotFoundError as e:
        raise DatasetNotPreparedError(
            f"iNaturalist split list {path!r} not found: the class-disjoint split of Brown et al. "
            "(ECCV'20) is the pair of files Inaturalist_train_set1.txt / Inaturalist_test_set1.txt "
            "of the Smooth-AP repository (https://github.com/Andrew-Brown1/Smooth_AP, "
            "src/data/Inat_dataset_splits); put them in one folder and set config.dataset.split_dir to it."
        ) from e
    return [os.path.splitext(os.path.basename(line))[0] for line in lines]


def load_inat(
    taxonomy_file: str,
    split_dir: str,
    data_dir: str | None = None,
    hierarchy: str = "full",
    transform: ImageTransform | None = None,
    num_threads: int = 4,
    pil_decode: bool = True,
) -> RetrievalDataset:
    """iNaturalist 2018 with the class-disjoint split of Brown et al. and the taxonomy as labels.

    TFDS ``i_naturalist2018`` train + validation are merged and assigned to train/test by the
    image ids (file name stems) in ``split_dir/Inaturalist_{train,test}_set1.txt``; images
    in neither list are dropped.

    Args:
      taxonomy_file: iNat 2018 ``categories.json`` (or ``train2018.json``), whose records give
        each species' genus, family, order, class, phylum and kingdom.
      split_dir: folder holding Brown et al.'s two split lists.
      data_dir: TFDS data dir (``None``: ``~/tensorflow_datasets``).
      hierarchy: ``"full"``: labels ``[N, 7]`` (species ... kingdom); ``"base"``: ``[N, 2]``
        (species, supercategory).

    References: Van Horn et al. "The iNaturalist Species Classification and Detection
    Dataset", CVPR 2018; Brown, Xie, Kalogeiton, Zisserman. "Smooth-AP", ECCV 2020.
    """
    if hierarchy not in INAT_HIERARCHIES:
        raise ValueError(f"hierarchy must be one of {INAT_HIERARCHIES}, got {hierarchy!r}")
    transform = transform or ImageTransform()
    tfds = optional.require("tensorflow_datasets", "load_inat")

    taxonomy = _read_taxonomy(taxonomy_file)
    split_ids = {s: _read_split_ids(split_dir, s) for s in ("train", "test")}
    source = _data_source("i_naturalist2018", "train+validation", data_dir, ("image",), pil_decode)
    names = tfds.builder("i_naturalist2018", data_dir=data_dir).info.features["label"].names
    records = _read_column(source, ["id", "label", "supercategory"])
    row_of = {(r[0].decode() if isinstance(r[0], bytes) else str(r[0])): i for i, r in enumerate(records)}
    rows = {}
    for split, ids in split_ids.items():
        rows[split] = np.asarray([row_of[i] for i in ids if i in row_of], np.int64)
        if len(rows[split]) == 0:
            raise DatasetNotPreparedError(
                f"none of the {len(ids)} images of the iNaturalist {split} list is in the TFDS data "
                f"({len(records)} images): check split_dir and that TFDS holds train+validation."
            )
        if len(rows[split]) < len(ids):  # a partly built TFDS dataset would change the benchmark
            warnings.warn(
                f"{len(ids) - len(rows[split])} of the {len(ids)} images of the iNaturalist {split} list "
                f"are not in the TFDS data ({len(records)} images) and are left out",
                stacklevel=2,
            )
    all_rows = np.concatenate([rows["train"], rows["test"]])
    species = [int(records[r][1]) for r in all_rows]
    if hierarchy == "base":
        labels = _dense(species, [int(records[r][2]) for r in all_rows])
    else:
        for label in sorted(set(species)):
            if names[label] not in taxonomy:
                raise ValueError(f"species {names[label]!r} (TFDS label {label}) is not in {taxonomy_file}")
        taxa = [[str(taxonomy[names[label]][level]) for label in species] for level in INAT_LEVELS[1:]]
        labels = _dense(species, *taxa)
        # A name shared by two taxa (a genus name in two families) is one id per level here, as
        # in SupRank's loader; warned about, as the folder loaders do.
        warn_unless_tree(
            f"the iNaturalist taxonomy {taxonomy_file}", labels, INAT_LEVELS,
            lambda level, row: names[species[row]] if level == 0 else taxa[level - 1][row],
        )
    n_train = len(rows["train"])
    parts = {
        s: ImageSource(_subset_reader(source, rows[s]), part, transform, num_threads,
                       origin=f"TFDS i_naturalist2018, the {s} list of split_dir")
        for s, part in (("train", labels[:n_train]), ("test", labels[n_train:]))
    }
    return RetrievalDataset(f"inat_{hierarchy}", parts["train"], parts["test"])
