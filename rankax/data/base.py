"""The data interface the training loop and the evaluators use.

A dataset is a :class:`RetrievalDataset` of random-access :class:`Source`\\ s. The training
loop draws indices with a sampler that is a pure function of ``(seed, step)`` (P x K or
hierarchical) and asks the train source for exactly those items, passing ``seed * 2**32 +
step`` (:func:`rankax.data.loader.step_seed`) as the augmentation seed -- so batches,
augmentations included, are reproducible and a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Source(Protocol):
    """Random-access images with labels.

    Attributes:
      labels: ``[N]`` int class ids, or ``[N, L]`` label paths (column 0 = finest level).
    """

    labels: np.ndarray

    def __len__(self) -> int: ...

    def get_batch(self, indices: np.ndarray, *, train: bool, seed: int = 0) -> np.ndarray:
        """``[B, H, W, C]`` float32 images of ``indices`` (augmented when ``train``)."""
        ...


@dataclasses.dataclass
class ArraySource:
    """A :class:`Source` over in-memory arrays (no augmentation: the step does it on device)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(f"images and labels differ in length: {len(self.images)} vs {len(self.labels)}")

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: np.ndarray, *, train: bool, seed: int = 0, offset: int = 0) -> np.ndarray:
        del train, seed, offset
        return self.images[np.asarray(indices)]


@dataclasses.dataclass
class RetrievalDataset:
    """Train source, query source and optional separate gallery (``None``: query = gallery)."""

    name: str
    train: Source
    test: Source
    gallery: Source | None = None

    @property
    def class_labels(self) -> np.ndarray:
        """``[N]`` finest-level training labels (what P x K samples by)."""
        labels = np.asarray(self.train.labels)
        return labels if labels.ndim == 1 else labels[:, 0]


def warn_unless_tree(
    origin: str, ids: np.ndarray, columns: Sequence[str], label_of: Callable[[int, int], str] | None = None
) -> None:
    """Warns when a label of a column has two parents in the next coarser column of the
    ``[N, L]`` label paths ``ids`` (column 0 finest; ``columns`` their names, ``label_of(level,
    row)`` the label as the source writes it, default the id): ids unique only within their
    parent ("1" under "mug" and under "chair"), or a name shared by two taxa (a genus name
    used in two families). The label is then one class for the binary metrics and losses at
    that level, but several for :func:`rankax.hierarchy.shared_levels` (read from the coarsest
    level), the hierarchical samplers, and the official code's count of equal columns, which
    differs from both. Kept, as the official loaders keep it."""
    label_of = label_of or (lambda level, row: str(ids[row, level]))
    for level in range(ids.shape[1] - 1):
        pairs = np.unique(ids[:, level : level + 2], axis=0)
        child, counts = np.unique(pairs[:, 0], return_counts=True)
        if np.all(counts == 1):
            continue
        bad = child[counts > 1][0]
        rows = np.flatnonzero(ids[:, level] == bad)
        fine, coarse = columns[level], columns[level + 1]
        parents = sorted({label_of(level + 1, int(r)) for r in rows})
        shown = ", ".join(map(repr, parents[:3])) + (", ..." if len(parents) > 3 else "")
        warnings.warn(
            f"{origin}: label {label_of(level, int(rows[0]))!r} of column {fine!r} lies under "
            f"{len(parents)} labels of column {coarse!r} ({shown}); {int(np.sum(counts > 1))} such "
            f"labels. The binary metrics and losses at level {level} take each as one class, the "
            f"hierarchy's shared levels as several. If they are different classes, make the {fine!r} "
            f"values unique (e.g. prefix them with the {coarse!r} value)",
            stacklevel=3,
        )
