"""A random-access :class:`~rankax.data.base.Source` over encoded images (files, TFDS records)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rankax.data.transforms import ImageTransform, decode_image


class ImageSource:
    """Images read on demand by index, decoded with PIL and transformed.

    ``get_batch(indices, train=True, seed=s)`` draws the augmentation of the item at position
    ``p`` of the batch from ``np.random.default_rng([s, p])``: the batch is a pure function of
    ``(indices, seed)``, independent of the thread pool.

    Args:
      read: ``index -> image`` (encoded bytes, a uint8 ``[H, W, C]`` array, a path or a PIL image).
      labels: ``[N]`` class ids or ``[N, L]`` label paths (column 0 = finest), int32.
      transform: the train/test preprocessing.
      num_threads: decoding threads (1: decode in the calling thread).
    """

    def __init__(
        self,
        read: Callable[[int], Any],
        labels: np.ndarray,
        transform: ImageTransform | None = None,
        num_threads: int = 4,
    ):
        self._read = read
        self.labels = np.asarray(labels)
        if self.labels.ndim not in (1, 2):
            raise ValueError(f"labels must be [N] or [N, L], got shape {self.labels.shape}")
        self.transform = transform or ImageTransform()
        self.num_threads = max(1, int(num_threads))
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int, *, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
        """One preprocessed ``[S, S, 3]`` float32 image."""
        return self.transform(decode_image(self._read(int(index))), train=train, rng=rng)

    def get_batch(
        self, indices: np.ndarray, *, train: bool, seed: int = 0, offset: int = 0
    ) -> np.ndarray:
        """``[B, S, S, 3]`` float32 images of ``indices`` (augmented when ``train``).

        Item ``p`` of the batch is augmented with ``np.random.default_rng([seed, offset + p])``:
        ``offset`` is the position of ``indices[0]`` in a larger batch, so a process that loads
        rows ``[lo, hi)`` of a global batch (``offset=lo``) augments them as a one-process run
        loading the whole batch does."""
        indices = np.asarray(indices).reshape(-1)
        n = len(self)
        if len(indices) and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"indices out of range for a source of {n} items")
        indices = indices % max(n, 1)

        def work(position: int) -> np.ndarray:
            rng = np.random.default_rng([int(seed), int(offset) + position]) if train else None
            return self.load(indices[position], train=train, rng=rng)

        if self.num_threads == 1 or len(indices) <= 1:
            images = [work(p) for p in range(len(indices))]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="rankax-decode")
            images = list(self._pool.map(work, range(len(indices))))
        if not images:
            s = self.transform.image_size
            return np.zeros((0, s, s, 3), np.float32)
        return np.stack(images)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pool"] = None
        return state
