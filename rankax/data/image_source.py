"""A random-access :class:`~rankax.data.base.Source` over encoded images (files, TFDS records)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from rankax.data import streams
from rankax.data.transforms import ImageTransform, open_image


class ImageReadError(OSError):
    """An image of a source cannot be opened or decoded (missing, truncated, not an image); the
    message names it: its index, name and where the source's list comes from."""


class ImageSource:
    """Images read on demand by index, decoded with PIL and transformed.

    ``get_batch(indices, train=True, seed=s)`` draws the augmentation of the item at position
    ``p`` of the batch from ``streams.generator(s, Stream.AUGMENT, p)``
    (:mod:`rankax.data.streams`): the batch is a pure function of
    ``(indices, seed)``, independent of the thread pool.

    Args:
      read: ``index -> image`` (encoded bytes, a uint8 ``[H, W, C]`` array, a path or a PIL image).
      labels: ``[N]`` class ids or ``[N, L]`` label paths (column 0 = finest), int32.
      transform: the train/test preprocessing.
      num_threads: decoding threads (1: decode in the calling thread).
      boxes: ``[N, 4]`` boxes ``(left, top, right, bottom)`` in pixels of the decoded images,
        cut out (as PIL's ``Image.crop`` rounds them) before the transform: the query boxes of
        the Oxford/Paris protocols (:meth:`with_boxes`). ``None``: whole images.
      names: ``[N]`` each item's identity, e.g. its image path relative to the dataset root:
        a run's record hashes them (``rankax.train.workdir.run_facts``), so a start on other
        images with the same labels is noticed. ``None``: unknown (only labels are compared).
      origin: where the images are listed (``"split 'train' listed in data.csv (root /data)"``),
        for the :class:`ImageReadError` of an image that cannot be read.
    """

    def __init__(
        self,
        read: Callable[[int], Any],
        labels: np.ndarray,
        transform: ImageTransform | None = None,
        num_threads: int = 4,
        boxes: np.ndarray | None = None,
        names: Sequence[str] | None = None,
        origin: str = "",
    ):
        self._read = read
        self.origin = origin
        self.labels = np.asarray(labels)
        if self.labels.ndim not in (1, 2):
            raise ValueError(f"labels must be [N] or [N, L], got shape {self.labels.shape}")
        self.transform = transform or ImageTransform()
        self.num_threads = max(1, int(num_threads))
        self._pool: ThreadPoolExecutor | None = None
        self.names = None if names is None else [str(n) for n in names]
        if self.names is not None and len(self.names) != len(self.labels):
            raise ValueError(f"names must hold one name per image ({len(self.labels)}), "
                             f"got {len(self.names)}")
        self.boxes = None if boxes is None else np.asarray(boxes, np.float64)
        if self.boxes is not None and self.boxes.shape != (len(self.labels), 4):
            raise ValueError(
                f"boxes must be [{len(self.labels)}, 4] (one box per image), got shape {self.boxes.shape}"
            )

    def with_boxes(self, boxes: np.ndarray | None) -> ImageSource:
        """This source with each image cut to its box of ``boxes [N, 4]`` first."""
        return ImageSource(self._read, self.labels, self.transform, self.num_threads, boxes, self.names,
                           self.origin)

    def _open(self, index: int) -> Any:
        image = open_image(self._read(index))
        if self.boxes is not None:
            image = image.crop(tuple(float(v) for v in self.boxes[index]))
        return image

    def _transformed(self, index: int, fn: Callable[..., np.ndarray], **kwargs: Any) -> np.ndarray:
        """``fn(image, **kwargs)`` of item ``index``; PIL's errors (raised when the lazily opened
        image decodes, in the transform) as an :class:`ImageReadError` that names the image."""
        try:
            return fn(self._open(index), **kwargs)
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            # PIL: missing, truncated, unidentified; bad PNG chunks; over twice MAX_IMAGE_PIXELS
            name = f" ({self.names[index]})" if self.names is not None else ""
            where = f" of {self.origin}" if self.origin else ""
            fix = ("If the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS; else remove it from the "
                   "dataset's list" if isinstance(err, Image.DecompressionBombError)
                   else "Restore the file, or remove it from the dataset's list")
            raise ImageReadError(
                f"image {index}{name}{where} cannot be read: {type(err).__name__}: {err}. {fix}"
            ) from err

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int, *, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
        """One preprocessed ``[S, S, 3]`` float32 image."""
        return self._transformed(int(index), self.transform, train=train, rng=rng)

    def load_pixels(
        self, index: int, *, train: bool, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """One ``[S, S, 3]`` uint8 image, cropped and resized but not normalised."""
        return self._transformed(int(index), self.transform.pixels, train=train, rng=rng)

    def get_pixels(
        self, indices: np.ndarray, *, train: bool, seed: int = 0, offset: int = 0
    ) -> np.ndarray:
        """``[B, S, S, 3]`` uint8 images of ``indices`` (augmented when ``train``): what the
        input pipeline ships to the device, normalised there
        (:func:`rankax.data.transforms.normalize_on_device`).

        Item ``p`` of the batch is augmented with ``streams.generator(seed, Stream.AUGMENT,
        offset + p)``:
        ``offset`` is the position of ``indices[0]`` in a larger batch, so a process that loads
        rows ``[lo, hi)`` of a global batch (``offset=lo``) augments them as a one-process run
        loading the whole batch does."""
        indices = self._checked(indices)

        def work(position: int) -> np.ndarray:
            rng = streams.generator(seed, streams.Stream.AUGMENT, int(offset) + position) if train else None
            return self.load_pixels(indices[position], train=train, rng=rng)

        if self.num_threads == 1 or len(indices) <= 1:
            images = [work(p) for p in range(len(indices))]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="rankax-decode")
            images = list(self._pool.map(work, range(len(indices))))
        if not images:
            s = self.transform.image_size
            return np.zeros((0, s, s, 3), np.uint8)
        return np.stack(images)

    def get_batch(
        self, indices: np.ndarray, *, train: bool, seed: int = 0, offset: int = 0
    ) -> np.ndarray:
        """``[B, S, S, 3]`` float32 images of ``indices`` (augmented when ``train``): the
        :meth:`get_pixels` normalised on the host."""
        pixels = self.get_pixels(indices, train=train, seed=seed, offset=offset)
        return self.transform.normalize(pixels.astype(np.float32) / 255.0)

    def _checked(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices).reshape(-1)
        n = len(self)
        if len(indices) and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"indices out of range for a source of {n} items")
        return indices % max(n, 1)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pool"] = None
        return state
