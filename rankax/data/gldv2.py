"""H-GLDv2: Google Landmarks v2 with the hierarchical labels of SupRank, in the official layout.

Ramzi et al. (SupRank, TPAMI 2025, arXiv:2309.08250) add two levels above the GLDv2 landmarks
(Weyand et al., CVPR 2020): a ``cluster`` and an ``overall_cluster`` of each landmark. The
layout below is the one SupRank's ``suprank/datasets/gldv2.py`` reads::

    <root>/
      train_clean.csv                                   landmark_id,images   (ids, space separated)
      train_label_to_subcategory_with_clusters.csv      landmark_id,...,cluster,overall_cluster
      images/train/<a>/<b>/<c>/<id>.jpg                 a, b, c: the first three characters of id
      index_image_to_landmark.csv                       id,landmark_id
      retrieval_solution_v2.1.csv                       id,images            (relevant index ids or None)
      index_label_to_subcategory_with_clusters.csv      landmark_id,...,cluster,overall_cluster
      index/<a>/<b>/<c>/<id>.jpg
      test/<a>/<b>/<c>/<id>.jpg

Labels are ``[N, 3]`` paths ``(landmark, cluster, overall_cluster)``. As in the official
loader (``remove_nan=True``), an image whose landmark has no cluster (an empty ``cluster`` cell,
or a landmark missing from the subcategory file) is dropped. A query's landmark is the landmark
of its first relevant index image; queries without one (``images`` = ``None``) are dropped.
Each level is remapped to ids ``0..C-1``: over the training rows, and over queries and index
together (the official code keeps the raw ids at test time; the ids differ by a relabelling,
which no retrieval metric sees).

:func:`load_hgldv2` returns the training set and the GLDv2 retrieval benchmark (test queries
searched in the index). The official ``dataset/gldv2_hier.yaml`` evaluates on ROxford5k and
RParis6k instead: use ``eval_protocol="landmarks"`` for those.
"""

from __future__ import annotations

import os

import numpy as np

from rankax.data.base import RetrievalDataset
from rankax.data.folder import _encode_labels, _read_csv
from rankax.data.image_source import ImageSource
from rankax.data.tfds_data import DatasetNotPreparedError
from rankax.data.transforms import ImageTransform

TRAIN_FILES = ("train_clean.csv", "train_label_to_subcategory_with_clusters.csv")
TEST_FILES = (
    "index_image_to_landmark.csv",
    "retrieval_solution_v2.1.csv",
    "index_label_to_subcategory_with_clusters.csv",
)

_HOW = (
    "H-GLDv2 needs the GLDv2 files (https://github.com/cvdfoundation/google-landmark: train_clean.csv, "
    "index_image_to_landmark.csv, retrieval_solution_v2.1.csv and the train/index/test images unpacked to "
    "images/train/, index/ and test/) plus SupRank's hierarchy files "
    "train_label_to_subcategory_with_clusters.csv and index_label_to_subcategory_with_clusters.csv, all in "
    "config.dataset.root (layout: rankax.data.gldv2, docs/data.md)."
)


def image_path(root: str, folder: str, image_id: str) -> str:
    """``<root>/<folder>/<a>/<b>/<c>/<id>.jpg`` with ``a, b, c`` the first characters of the id."""
    return os.path.join(root, folder, image_id[0], image_id[1], image_id[2], f"{image_id}.jpg")


def _table(root: str, name: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    path = os.path.join(root, name)
    if not os.path.exists(path):
        raise DatasetNotPreparedError(f"H-GLDv2 file {path!r} not found. {_HOW}")
    fields, rows = _read_csv(path)
    missing = [c for c in columns if c not in fields]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing} (columns: {fields})")
    return rows


def _hierarchy(root: str, name: str) -> dict[str, tuple[str, str]]:
    """``landmark_id -> (cluster, overall_cluster)`` of the landmarks that have a cluster (a
    clustered landmark without an ``overall_cluster`` is an error naming the file and row)."""
    rows = _table(root, name, ("landmark_id", "cluster", "overall_cluster"))
    for line, r in enumerate(rows, start=2):  # line 1: the header
        if r["cluster"].strip() and not r["overall_cluster"].strip():
            raise ValueError(
                f"{os.path.join(root, name)}, line {line}: landmark {r['landmark_id'].strip()} has a "
                "cluster but an empty overall_cluster; fill it in (the hierarchy needs both levels)"
            )
    return {
        r["landmark_id"].strip(): (r["cluster"].strip(), r["overall_cluster"].strip())
        for r in rows
        if r["cluster"].strip()
    }


def _labelled(
    pairs: list[tuple[str, str]], hierarchy: dict[str, tuple[str, str]]
) -> tuple[list[str], list[dict[str, str]]]:
    """The ``(image id, landmark)`` pairs whose landmark has a cluster, as ids and label rows."""
    kept = [(i, lm) for i, lm in pairs if lm in hierarchy]
    rows = [{"landmark": lm, "cluster": hierarchy[lm][0], "overall": hierarchy[lm][1]} for _, lm in kept]
    return [i for i, _ in kept], rows


def _source(
    root: str, folder: str, ids: list[str], labels: np.ndarray, transform: ImageTransform, threads: int
) -> ImageSource:
    paths = [image_path(root, folder, i) for i in ids]
    if paths and not os.path.exists(paths[0]):
        raise DatasetNotPreparedError(
            f"H-GLDv2 image {paths[0]!r} is listed but missing: unpack the {folder} images under "
            f"{os.path.join(root, folder)!r} in GLDv2's a/b/c/<id>.jpg tree."
        )
    return ImageSource(paths.__getitem__, labels, transform, threads, names=ids,
                       origin=f"H-GLDv2's images under {os.path.join(root, folder)}")


_LEVELS = ["landmark", "cluster", "overall"]


def load_hgldv2(
    root: str, *, transform: ImageTransform | None = None, num_threads: int = 4
) -> RetrievalDataset:
    """H-GLDv2 from ``root`` (layout in the module docstring).

    Returns:
      ``RetrievalDataset("hgldv2", train, queries, index)`` with ``[N, 3]`` label paths.

    Raises:
      DatasetNotPreparedError: a list file or the first image of a split is missing.
      ValueError: a list file lacks a column the layout names.
    """
    root = os.path.expanduser(root)
    transform = transform or ImageTransform()
    train_pairs = [
        (image_id, r["landmark_id"].strip())
        for r in _table(root, TRAIN_FILES[0], ("landmark_id", "images"))
        for image_id in r["images"].split()
    ]
    train_ids, train_rows = _labelled(train_pairs, _hierarchy(root, TRAIN_FILES[1]))
    train_labels = _encode_labels(TRAIN_FILES[0], train_rows, _LEVELS)
    train = _source(root, "images/train", train_ids, train_labels, transform, num_threads)

    index = [
        (r["id"].strip(), r["landmark_id"].strip())
        for r in _table(root, TEST_FILES[0], ("id", "landmark_id"))
    ]
    landmark_of = dict(index)
    queries = [
        (r["id"].strip(), landmark_of[r["images"].split()[0]])
        for r in _table(root, TEST_FILES[1], ("id", "images"))
        if r["images"].strip() not in ("", "None")
    ]
    hierarchy = _hierarchy(root, TEST_FILES[2])
    query_ids, query_rows = _labelled(queries, hierarchy)
    index_ids, index_rows = _labelled(index, hierarchy)
    labels = _encode_labels(TEST_FILES[1], query_rows + index_rows, _LEVELS)
    nq = len(query_ids)
    query = _source(root, "test", query_ids, labels[:nq], transform, num_threads)
    gallery = _source(root, "index", index_ids, labels[nq:], transform, num_threads)
    return RetrievalDataset("hgldv2", train, query, gallery)
