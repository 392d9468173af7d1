"""A generic image-folder dataset described by CSV files, with hierarchical labels.

Layout (see ``docs/data.md`` for DyML, H-GLDv2 and landmarks examples)::

    root/
      images/...                   any tree of image files (JPEG, PNG, ... anything PIL opens)
      data.csv                     path,<level0>,<level1>,...,split

* ``path`` is relative to ``root`` (or absolute).
* The label columns come finest first (``class,super_class`` for SOP-like data,
  ``landmark_id,supercategory`` for H-GLDv2, ``fine,middle,coarse`` for DyML). Values may be
  any strings or integers; each column is remapped to ids ``0..C-1`` over all the rows of all
  splits (so a class has the same id everywhere). One label column gives labels ``[N]``,
  more give label paths ``[N, L]`` (column 0 = finest), as :mod:`rankax.hierarchy` expects.
* ``split`` is ``train`` and ``test`` (queries = gallery, self excluded: SOP/CUB-style), or
  ``train``, ``query`` and ``gallery`` (separate sets: landmarks, DyML). Rows whose split is
  anything else (e.g. ``val``, ``ignore``) are skipped.

Instead of one file with a split column, separate files may be given: ``train_csv`` plus
``test_csv``, or plus ``query_csv`` and ``gallery_csv`` (same columns, no split column).
A dataset used only for evaluation may have no training rows.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence

import numpy as np

from rankax.data.base import RetrievalDataset, warn_unless_tree
from rankax.data.image_source import ImageSource
from rankax.data.tfds_data import DatasetNotPreparedError
from rankax.data.transforms import ImageTransform

SPLITS = ("train", "test", "query", "gallery")


def _check_unique(path: str, fields: list[str]) -> None:
    """``ValueError`` naming ``path`` and the column if the header repeats a name (a
    ``csv.DictReader`` row would keep only the last of its columns)."""
    named = [f for f in fields if f.strip()]  # unnamed trailing columns (`a,b,,`) are never read
    repeated = next((f for f in named if named.count(f) > 1), None)
    if repeated is not None:
        raise ValueError(
            f"{path}: column {repeated!r} appears {named.count(repeated)} times in the header "
            f"{fields}; give each column its own name (only the last one would be read)"
        )


def _read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of ``path`` (a UTF-8 byte-order mark is skipped); a header that
    repeats a column name, or a row with more or fewer values than columns (naming its line),
    raises ``ValueError``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            _check_unique(path, list(reader.fieldnames or []))
            rows = []
            for row in reader:
                if None in row or None in row.values():  # extra values / missing values
                    fields = reader.fieldnames or []
                    count = len([v for k, v in row.items() if k is not None and v is not None])
                    count += len(row.get(None) or [])
                    raise ValueError(
                        f"{path}, line {reader.line_num}: {count} values for the {len(fields)} "
                        f"columns {fields}"
                    )
                rows.append(row)
            return list(reader.fieldnames or []), rows
    except FileNotFoundError as e:
        raise DatasetNotPreparedError(
            f"CSV file {path!r} not found. A folder dataset is a root folder of images plus a CSV with "
            "columns path,<finest label>,...,<coarsest label>[,split] (split: train/test or "
            "train/query/gallery); see rankax.data.folder and docs/data.md."
        ) from e


Rows = dict[str, list[dict[str, str]]]


def _resolver(root: str | None) -> Callable[[str], str]:
    """``path -> path`` relative to ``root`` unless absolute (``~`` expanded)."""

    def resolve(path: str) -> str:
        path = os.path.expanduser(path)
        return path if os.path.isabs(path) or root is None else os.path.join(os.path.expanduser(root), path)

    return resolve


def _read_combined(path: str, split_column: str) -> tuple[Rows, list[str]]:
    """The rows of one CSV with a split column, by split (other split values skipped)."""
    fields, all_rows = _read_csv(path)
    if split_column not in fields:
        raise ValueError(f"{path}: no split column {split_column!r} (columns: {fields})")
    rows: Rows = {s: [] for s in SPLITS}
    for row in all_rows:
        split = row[split_column].strip().lower()
        if split in rows:
            rows[split].append(row)
    return rows, fields


def _read_per_split(
    paths: dict[str, str | None], resolve: Callable[[str], str]
) -> tuple[Rows, list[str], dict[str, str]]:
    """The rows of one CSV per split (all with the same columns) and each split's file."""
    rows: Rows = {s: [] for s in SPLITS}
    files: dict[str, str] = {}
    fields = None
    for split, path in paths.items():
        if path is None:
            continue
        path = files[split] = resolve(path)
        these_fields, rows[split] = _read_csv(path)
        if fields is not None and these_fields != fields:
            raise ValueError(f"{path}: columns {these_fields} differ from {fields}")
        fields = these_fields
    return rows, fields, files


def _read_rows(
    csv_file: str | None, per_split: dict[str, str | None], split_column: str, resolve: Callable[[str], str]
) -> tuple[Rows, list[str], dict[str, str]]:
    """``(rows by split, columns, the CSV of each split)`` from ``csv_file`` or the per-split
    CSVs."""
    if csv_file is not None and any(v is not None for v in per_split.values()):
        raise ValueError("give either csv_file (with a split column) or per-split CSVs, not both")
    if csv_file is None and all(v is None for v in per_split.values()):
        raise ValueError("a folder dataset needs csv_file or train_csv/test_csv/query_csv/gallery_csv")
    if csv_file is not None:
        path = resolve(csv_file)
        return (*_read_combined(path, split_column), dict.fromkeys(SPLITS, path))
    return _read_per_split(per_split, resolve)


def _check_columns(
    first: str, fields: list[str], label_columns: Sequence[str] | None, path_column: str, split_column: str
) -> list[str]:
    """The label columns (default: every column but path and split), checked to exist."""
    if path_column not in fields:
        raise ValueError(f"{first}: no path column {path_column!r} (columns: {fields})")
    if label_columns is None:
        label_columns = [f for f in fields if f not in (path_column, split_column)]
    label_columns = list(label_columns)
    missing = [c for c in label_columns if c not in fields]
    if missing or not label_columns:
        raise ValueError(f"{first}: label columns {missing or label_columns} not among the columns {fields}")
    return label_columns


def _check_splits(first: str, rows: Rows) -> None:
    """Either a test split or query + gallery splits, and at least one of them."""
    if rows["test"] and (rows["query"] or rows["gallery"]):
        raise ValueError("use either a test split (query = gallery) or query and gallery splits, not both")
    if rows["gallery"] and not rows["query"]:
        raise ValueError(f"{first}: a gallery split needs a query split")
    if rows["query"] and not rows["gallery"]:
        raise ValueError(
            f"{first}: a query split needs a gallery split to retrieve from (rows whose split is not "
            "train/test/query/gallery are skipped: name it 'gallery', or give gallery_csv). For "
            "queries retrieved among themselves, name their split 'test'"
        )
    if not (rows["test"] or rows["query"]):
        raise ValueError(f"{first}: no test or query rows")


def _check_filled(path: str, rows: list[dict[str, str]], label_columns: list[str]) -> None:
    """``ValueError`` naming ``path`` and the column if a row has an empty label."""
    for c in label_columns:
        empty = sum(r[c].strip() == "" for r in rows)
        if empty:
            raise ValueError(f"{path}: empty value in label column {c!r} in {empty} row(s); fill it in "
                             "or remove those rows")


def _check_files_filled(files: dict[str, str], rows: Rows, label_columns: list[str]) -> None:
    """:func:`_check_filled` on the rows of each CSV (one CSV may hold several splits)."""
    by_file: dict[str, list[dict[str, str]]] = {}
    for split, path in files.items():
        by_file.setdefault(path, []).extend(rows[split])
    for path, file_rows in by_file.items():
        _check_filled(path, file_rows, label_columns)


def _encode_labels(first: str, ordered: list[dict[str, str]], label_columns: list[str]) -> np.ndarray:
    """``[N]`` or ``[N, L]`` int32 ids ``0..C-1`` of each label column over all ``ordered`` rows:
    one class per distinct string, numbered in numeric order when every label looks like an
    integer (``"01"`` and ``"1"`` stay two classes, ``"01"`` first), else in string order."""
    _check_filled(first, ordered, label_columns)
    columns = []
    for c in label_columns:
        values = [r[c].strip() for r in ordered]
        distinct, inverse = np.unique(np.asarray(values), return_inverse=True)
        try:
            order = sorted(range(len(distinct)), key=lambda i: (int(distinct[i]), distinct[i]))
        except ValueError:
            order = list(range(len(distinct)))  # np.unique's string order
        rank = np.empty(len(distinct), np.int64)
        rank[order] = np.arange(len(distinct))
        columns.append(rank[inverse.reshape(-1)])
    if len(columns) > 1:
        warn_unless_tree(first, np.stack(columns, axis=1), label_columns,
                         lambda level, row: ordered[row][label_columns[level]].strip())
    return (columns[0] if len(columns) == 1 else np.stack(columns, axis=1)).astype(np.int32)


def _split_sources(
    files: dict[str, str],
    root: str | None,
    rows: Rows,
    labels: np.ndarray,
    path_column: str,
    transform: ImageTransform,
    num_threads: int,
) -> dict[str, ImageSource]:
    """One :class:`ImageSource` per split; ``labels`` are the rows' labels in :data:`SPLITS`
    order; image paths are relative to ``root``, or to the folder of the split's CSV."""
    sources: dict[str, ImageSource] = {}
    start = 0
    for split in SPLITS:
        csv_path = files.get(split, "")
        base = os.path.expanduser(root) if root is not None else os.path.dirname(csv_path)
        names = [r[path_column] for r in rows[split]]
        paths = [os.path.join(base, name) for name in names]
        split_labels = labels[start : start + len(paths)]
        start += len(paths)
        # Checking one file per split catches a wrong root without a stat of every image.
        if paths and not os.path.exists(paths[0]):
            raise DatasetNotPreparedError(
                f"image {paths[0]!r} listed in {csv_path} does not exist: image paths are relative "
                f"to root={base!r} (set config.dataset.root)."
            )
        origin = f"split {split!r} listed in {csv_path} (image paths relative to {base})"
        sources[split] = ImageSource(paths.__getitem__, split_labels, transform, num_threads, names=names,
                                     origin=origin)
    return sources


def load_folder(
    root: str | None = None,
    csv_file: str | None = None,
    *,
    train_csv: str | None = None,
    test_csv: str | None = None,
    query_csv: str | None = None,
    gallery_csv: str | None = None,
    label_columns: Sequence[str] | None = None,
    path_column: str = "path",
    split_column: str = "split",
    name: str = "folder",
    transform: ImageTransform | None = None,
    num_threads: int = 4,
) -> RetrievalDataset:
    """Builds a :class:`RetrievalDataset` from CSV files (layout in the module docstring).

    Args:
      root: folder the image paths are relative to (default: the folder of each split's CSV).
      csv_file: one CSV with a ``split_column``; or leave it ``None`` and give the per-split files.
      train_csv, test_csv, query_csv, gallery_csv: per-split CSVs (relative to ``root`` if not absolute).
      label_columns: label columns finest first (default: every column but path and split, in
        file order).
      name: the dataset's name.
      transform: preprocessing (default :class:`ImageTransform()`: 224 px, ImageNet statistics).

    Returns:
      ``RetrievalDataset(name, train, test, gallery)``: ``test`` is the query set; ``gallery``
      is ``None`` unless the data has a gallery split.
    """
    per_split = {"train": train_csv, "test": test_csv, "query": query_csv, "gallery": gallery_csv}
    rows, fields, files = _read_rows(csv_file, per_split, split_column, _resolver(root))
    first = next(iter(files.values()))
    label_columns = _check_columns(first, fields, label_columns, path_column, split_column)
    _check_splits(first, rows)
    _check_files_filled(files, rows, label_columns)
    labels = _encode_labels(first, [r for s in SPLITS for r in rows[s]], label_columns)
    transform = transform or ImageTransform()
    sources = _split_sources(files, root, rows, labels, path_column, transform, num_threads)
    test = sources["test"] if rows["test"] else sources["query"]
    gallery = sources["gallery"] if rows["gallery"] else None
    return RetrievalDataset(name, sources["train"], test, gallery)
