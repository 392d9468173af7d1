"""The DyML datasets (Sun et al., "Dynamic Metric Learning", CVPR 2021) in their released layout.

Three datasets, each with fine, middle and coarse labels: DyML-Vehicle, DyML-Animal and
DyML-Product. The layout the release unpacks to (and the one SupRank's
``suprank/datasets/dyml.py`` reads)::

    <root>/                                   e.g. dyml_vehicle/
      train/label.csv                         fname, fine_id, middle_id, coarse_id
      train/imgs/<fname>
      bmk_<g>/query.csv, bmk_<g>/gallery.csv  fname, label     (vehicle, animal; g = fine|middle|coarse)
      bmk_<g>/query/<fname>, bmk_<g>/gallery/<fname>
      mini-bmk_all_in_one/label.csv           fname, fine_id, middle_id, coarse_id   (product)
      mini-bmk_all_in_one/imgs/<fname>

Columns are taken by position (file name first, then the labels finest first): the released
headers read ``fname, fine_id0.jpg, middle_id, coarse_id`` and ``fname, labels0.jpg``, names
that SupRank's loader spells out with their leading spaces. Each label column is remapped to
ids ``0..C-1`` over the file(s) it is read from (query and gallery together).

What :func:`load_dyml` returns:

* training set: ``[N, 3]`` label paths (fine, middle, coarse), as :mod:`rankax.hierarchy` expects;
* Vehicle and Animal: the benchmark of one granularity (``benchmark``), its queries searched in
  its own gallery, with ``[N]`` labels of that granularity. The official evaluation averages the
  three benchmarks (``overall_accuracy=True``): evaluate once per ``benchmark`` and average;
* Product: the all-in-one benchmark, queries = gallery (self excluded), ``[N, 3]`` label paths.
"""

from __future__ import annotations

import os

import numpy as np

from rankax.data.base import RetrievalDataset
from rankax.data.folder import _check_filled, _encode_labels, _read_csv
from rankax.data.image_source import ImageSource
from rankax.data.tfds_data import DatasetNotPreparedError
from rankax.data.transforms import ImageTransform

VARIANTS = ("vehicle", "animal", "product")
BENCHMARKS = ("fine", "middle", "coarse")
_NAME = "\x00file"  # the key holding a row's file name (no CSV header can spell it)

_HOW = (
    "Download the DyML datasets (Sun et al., CVPR 2021; links in the SupRank README), unpack "
    "dyml_{variant}.tar and set config.dataset.root to the folder holding train/label.csv and "
    "{test} (layout: rankax.data.dyml, docs/data.md)."
)


def _test_files(variant: str) -> str:
    return (
        "mini-bmk_all_in_one/label.csv"
        if variant == "product"
        else "bmk_{fine,middle,coarse}/{query,gallery}.csv"
    )


def _rows(
    root: str, folder: str, csv_name: str, variant: str, num_labels: int
) -> tuple[list[str], list[dict[str, str]], str]:
    """``(label columns, rows, path)`` of ``<root>/<folder>/<csv_name>``, checked to have a
    file-name column and ``num_labels`` label columns, none with an empty value."""
    path = os.path.join(root, folder, csv_name)
    if not os.path.exists(path):
        raise DatasetNotPreparedError(
            f"DyML file {path!r} not found. " + _HOW.format(variant=variant, test=_test_files(variant))
        )
    fields, rows = _read_csv(path)
    if len(fields) < 1 + num_labels:
        raise ValueError(
            f"{path}: expected a file-name column and {num_labels} label column(s), got {fields}"
        )
    _check_filled(path, rows, fields[1 : 1 + num_labels])
    return fields[1 : 1 + num_labels], [{**r, _NAME: r[fields[0]].strip()} for r in rows], path


def _names(rows: list[dict[str, str]]) -> list[str]:
    return [r[_NAME] for r in rows]


def _source(
    root: str,
    image_folder: str,
    names: list[str],
    labels: np.ndarray,
    transform: ImageTransform,
    num_threads: int,
) -> ImageSource:
    paths = [os.path.join(root, image_folder, n) for n in names]
    if paths and not os.path.exists(paths[0]):
        raise DatasetNotPreparedError(
            f"DyML image {paths[0]!r} is listed but missing: the images belong in "
            f"{os.path.join(root, image_folder)!r} (unpack the archive in place)."
        )
    return ImageSource(paths.__getitem__, labels, transform, num_threads, names=names,
                       origin=f"DyML's images under {os.path.join(root, image_folder)}")


def load_dyml(
    root: str,
    variant: str = "vehicle",
    *,
    benchmark: str = "fine",
    transform: ImageTransform | None = None,
    num_threads: int = 4,
) -> RetrievalDataset:
    """DyML-``variant`` from ``root`` (layout in the module docstring).

    Args:
      root: the unpacked dataset folder (``~`` expanded).
      variant: ``"vehicle"``, ``"animal"`` or ``"product"``.
      benchmark: the granularity of the test set for Vehicle and Animal (``"fine"``,
        ``"middle"`` or ``"coarse"``); Product has one all-in-one benchmark and ignores it.
      transform: preprocessing (default :class:`ImageTransform()`).

    Returns:
      ``RetrievalDataset("dyml_<variant>", train, queries, gallery)``; ``gallery`` is ``None``
      for Product (queries = gallery). The name of Vehicle/Animal carries the benchmark:
      ``"dyml_vehicle_fine"``.

    Raises:
      ValueError: unknown ``variant`` or ``benchmark``.
      DatasetNotPreparedError: a list file or its first image is missing.
    """
    if variant not in VARIANTS:
        raise ValueError(f"config.dataset.variant must be one of {VARIANTS}, got {variant!r}")
    if benchmark not in BENCHMARKS:
        raise ValueError(f"config.dataset.benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    root = os.path.expanduser(root)
    transform = transform or ImageTransform()
    columns, rows, path = _rows(root, "train", "label.csv", variant, 3)
    train = _source(
        root, "train/imgs", _names(rows), _encode_labels(path, rows, columns), transform, num_threads
    )
    if variant == "product":
        columns, rows, path = _rows(root, "mini-bmk_all_in_one", "label.csv", variant, 3)
        labels = _encode_labels(path, rows, columns)
        test = _source(root, "mini-bmk_all_in_one/imgs", _names(rows), labels, transform, num_threads)
        return RetrievalDataset("dyml_product", train, test)
    folder = f"bmk_{benchmark}"
    q_columns, queries, path = _rows(root, folder, "query.csv", variant, 1)
    g_columns, gallery_rows, _ = _rows(root, folder, "gallery.csv", variant, 1)
    # One id space for queries and gallery (label columns matched by position).
    both = [{"label": r[q_columns[0]]} for r in queries] + [{"label": r[g_columns[0]]} for r in gallery_rows]
    labels = _encode_labels(path, both, ["label"])
    nq = len(queries)
    query = _source(root, f"{folder}/query", _names(queries), labels[:nq], transform, num_threads)
    gallery = _source(root, f"{folder}/gallery", _names(gallery_rows), labels[nq:], transform, num_threads)
    return RetrievalDataset(f"dyml_{variant}_{benchmark}", train, query, gallery)
