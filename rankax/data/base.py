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
