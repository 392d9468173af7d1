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
or a landmark missing from the subcategory file) is dropped; images whose landmark the file
does not list at all are counted in a warning naming it, and if no image of a list is left,
loading fails naming the file. A query's landmark is the landmark of its first relevant index
image; queries without one (``images`` = ``None``) are dropped, and a relevant image missing
from ``index_image_to_landmark.csv`` is an error naming the query.

Landmark ids are matched across files as the official loader matches them: it reads every file
with ``pandas.read_csv``, which parses a numeric column as numbers, so a whole number is one
landmark however it is written (``10``, ``10.0`` and ``010`` are landmark 10, one class, as a
hierarchy file saved with floats writes them). Ids that are not numbers are matched as written;
clusters are names, compared as written.

Each level is remapped to ids ``0..C-1``: over the training rows, and over queries and index
together (the official code keeps the raw ids at test time; the ids differ by a relabelling,
which no retrieval metric sees).

:func:`load_hgldv2` returns the training set and the GLDv2 retrieval benchmark (test queries
searched in the index). The official ``dataset/gldv2_hier.yaml`` evaluates on ROxford5k and
RParis6k instead: use ``eval_protocol="landmarks"`` for those.
"""

from __future__ import annotations

import os
import warnings

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


def _key(landmark_id: str) -> str:
    """A landmark id as ``pandas.read_csv`` reads it: a whole number in any spelling (``"10.0"``,
    ``"010"``) as its integer, another number as its float, anything else as written."""
    value = landmark_id.strip()
    try:
        return str(int(value))
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else repr(number)


Hierarchy = tuple[str, dict[str, tuple[str, str] | None]]


def _hierarchy(root: str, name: str) -> Hierarchy:
    """``(path, landmark_id -> (cluster, overall_cluster), or None for a landmark listed without a
    cluster)`` (a clustered landmark without an ``overall_cluster`` is an error naming the file
    and row)."""
    path = os.path.join(root, name)
    rows = _table(root, name, ("landmark_id", "cluster", "overall_cluster"))
    for line, r in enumerate(rows, start=2):  # line 1: the header
        if r["cluster"].strip() and not r["overall_cluster"].strip():
            raise ValueError(
                f"{path}, line {line}: landmark {r['landmark_id'].strip()} has a "
                "cluster but an empty overall_cluster; fill it in (the hierarchy needs both levels)"
            )
    clusters: dict[str, tuple[str, str] | None] = {_key(r["landmark_id"]): None for r in rows}
    clusters.update(
        (_key(r["landmark_id"]), (r["cluster"].strip(), r["overall_cluster"].strip()))
        for r in rows
        if r["cluster"].strip()
    )
    return path, clusters


def _labelled(
    pairs: list[tuple[str, str]], hierarchy: Hierarchy, listed_in: str
) -> tuple[list[str], list[dict[str, str]]]:
    """The ``(image id, landmark)`` pairs of ``listed_in`` whose landmark has a cluster, as ids
    and label rows. Images of landmarks the hierarchy file does not list are counted in a
    warning; none left is a ``ValueError``: both name the file."""
    path, clusters = hierarchy
    kept = [(i, lm) for i, lm in pairs if clusters.get(lm)]
    if pairs and not kept:
        raise ValueError(
            f"{path}: none of the {len(pairs)} images of {listed_in} has a landmark with a cluster in "
            f"this file; check that its landmark_id column holds the landmark ids of {listed_in}"
        )
    missing = [lm for _, lm in pairs if lm not in clusters]
    if missing:
        ids = list(dict.fromkeys(missing))
        shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
        warnings.warn(
            f"{len(missing)} of the {len(pairs)} images of {listed_in} are dropped: {path} does not list "
            f"their {len(ids)} landmark id(s) ({shown}); check that it is the hierarchy file of "
            f"{listed_in} (ids match by number: 10 = 10.0)",
            stacklevel=3,
        )
    rows = [{"landmark": lm, "cluster": clusters[lm][0], "overall": clusters[lm][1]} for _, lm in kept]
    return [i for i, _ in kept], rows


def _queries(root: str, landmark_of: dict[str, str]) -> list[tuple[str, str]]:
    """``(query id, landmark of its first relevant index image)`` of the queries that have one."""
    queries = []
    for r in _table(root, TEST_FILES[1], ("id", "images")):
        relevant = r["images"].split()
        if relevant in ([], ["None"]):
            continue
        if relevant[0] not in landmark_of:
            raise ValueError(
                f"{os.path.join(root, TEST_FILES[1])}: query {r['id'].strip()}'s relevant index image "
                f"{relevant[0]} is not in {TEST_FILES[0]}; check that both files are complete and "
                "of the same GLDv2 release"
            )
        queries.append((r["id"].strip(), landmark_of[relevant[0]]))
    return queries


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
      ValueError: a list file lacks a column the layout names; a query's relevant image is not
        in the index list; no image of a list has a landmark with a cluster.
    """
    root = os.path.expanduser(root)
    transform = transform or ImageTransform()
    train_pairs = [
        (image_id, _key(r["landmark_id"]))
        for r in _table(root, TRAIN_FILES[0], ("landmark_id", "images"))
        for image_id in r["images"].split()
    ]
    hierarchy = _hierarchy(root, TRAIN_FILES[1])
    train_ids, train_rows = _labelled(train_pairs, hierarchy, TRAIN_FILES[0])
    train_labels = _encode_labels(hierarchy[0], train_rows, _LEVELS)
    train = _source(root, "images/train", train_ids, train_labels, transform, num_threads)

    index = [
        (r["id"].strip(), _key(r["landmark_id"]))
        for r in _table(root, TEST_FILES[0], ("id", "landmark_id"))
    ]
    queries = _queries(root, dict(index))
    hierarchy = _hierarchy(root, TEST_FILES[2])
    query_ids, query_rows = _labelled(queries, hierarchy, TEST_FILES[1])
    index_ids, index_rows = _labelled(index, hierarchy, TEST_FILES[0])
    labels = _encode_labels(hierarchy[0], query_rows + index_rows, _LEVELS)
    nq = len(query_ids)
    query = _source(root, "test", query_ids, labels[:nq], transform, num_threads)
    gallery = _source(root, "index", index_ids, labels[nq:], transform, num_threads)
    return RetrievalDataset("hgldv2", train, query, gallery)
