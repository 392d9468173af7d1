"""The papers' image augmentations in numpy/PIL, deterministic given a numpy ``Generator``.

Train (ROADMAP, SupRank, PNP; the official configs): optional resize of the shorter side
(SOP only, 256), ``RandomResizedCrop(224, scale=(0.16, 1), ratio=(0.75, 1.33))`` (PNP:
torchvision's defaults, ``scale=(0.08, 1), ratio=(3/4, 4/3)``), horizontal flip with
probability 1/2, ImageNet mean/std normalisation. Test: resize to 256 (shorter
side, or to a 256 x 256 square as the SOP configs do), center crop 224, the same normalisation.

All sizes are fields of :class:`ImageTransform`, so smoke tests can use 16-32 px images.
Every random draw comes from the ``rng`` argument; sources derive it from
``(seed, position in the batch)``, which makes a batch a pure function of its seed whatever
the number of decoding threads.
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("shorter", "square")


def open_image(data: bytes | np.ndarray | Image.Image | str) -> Image.Image:
    """A PIL image from encoded bytes, a ``[H, W, C]`` uint8 array, a PIL image or a path.

    Encoded images are opened lazily (only the header is read), so that
    :meth:`ImageTransform.pixels` can ask a JPEG decoder for a reduced size first (draft mode).
    """
    if isinstance(data, Image.Image):
        image = data
    elif isinstance(data, np.ndarray):
        array = data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data
        image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    elif isinstance(data, bytes | bytearray):
        image = Image.open(io.BytesIO(data))
    else:
        image = Image.open(data)
    return image


def as_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB mode (decodes a lazily opened file)."""
    return image.convert("RGB") if image.mode != "RGB" else image


def decode_image(data: bytes | np.ndarray | Image.Image | str) -> Image.Image:
    """An RGB PIL image from encoded bytes, a ``[H, W, C]`` uint8 array, a PIL image or a path."""
    return as_rgb(open_image(data))


Box = tuple[float, float, float, float]


def draft(image: Image.Image, min_size: tuple[int, int]) -> tuple[Image.Image, Box]:
    """Asks a lazily opened JPEG for a 1/2, 1/4 or 1/8 scale decode no smaller than ``min_size``
    (``(width, height)``). Returns the image and the box of it that covers the original,
    ``(0, 0, W / s, H / s)`` for scale ``1/s``; other images, and JPEGs already decoded, come
    back unchanged with the box ``(0, 0, W, H)``.

    JPEG stores 8 x 8 DCT blocks, so libjpeg can decode at 1/2, 1/4 or 1/8 scale for a fraction
    of the cost of a full decode (PIL's ``Image.draft``). The reduced image is ``ceil(W / s)``
    pixels wide, its last column covering only the ``W mod s`` pixels left, so coordinates map
    by ``1 / s`` (the box), not by the ratio of the sizes. The result is then resized as usual;
    it differs from resizing the full decode by a few grey levels (both are a low-pass filter
    followed by resampling).
    """
    full = (0.0, 0.0, float(image.size[0]), float(image.size[1]))
    if image.format != "JPEG":
        return image, full
    drafted = image.draft("RGB", (max(1, int(min_size[0])), max(1, int(min_size[1]))))
    return image, full if drafted is None else tuple(float(v) for v in drafted[1])  # None: decoded


def resized_size(width: int, height: int, size: int, mode: str = "shorter") -> tuple[int, int]:
    """``(width, height)`` after :func:`resize` of a ``width x height`` image."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if mode == "square":
        return size, size
    # The longer side truncated, as torchvision's Resize(int) computes it.
    if width <= height:
        return size, max(1, int(height * size / width))
    return max(1, int(width * size / height)), size


def resize(image: Image.Image, size: int, mode: str = "shorter") -> Image.Image:
    """Resizes the shorter side to ``size`` (aspect kept) or the whole image to ``size x size``."""
    new = resized_size(*image.size, size, mode)
    return image if new == image.size else image.resize(new, Image.BILINEAR)


def _resize_to(image: Image.Image, new: tuple[int, int], use_draft: bool) -> Image.Image:
    """``image`` (lazily opened) decoded and resized to ``new`` (size computed on the original)."""
    if not use_draft:
        image = as_rgb(image)
        return image if new == image.size else image.resize(new, Image.BILINEAR)
    image, region = draft(image, new)
    image = as_rgb(image)
    whole = region == (0.0, 0.0, float(image.size[0]), float(image.size[1]))
    return image if whole and new == image.size else image.resize(new, Image.BILINEAR, box=region)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central ``size x size`` window, as torchvision's ``CenterCrop`` places it: a side
    longer than ``size`` starts at ``round((side - size) / 2)``; a shorter one is padded with
    black, ``(size - side) // 2`` pixels before it (the rest after)."""
    w, h = image.size

    def start(side: int) -> int:
        return round((side - size) / 2) if side >= size else -((size - side) // 2)

    left, top = start(w), start(h)
    return image.crop((left, top, left + size, top + size))


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.16, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of a random crop covering ``scale`` of the area.

    The aspect ratio is log-uniform in ``ratio``; after 10 rejected draws the crop falls back
    to the largest centered window whose aspect ratio is within ``ratio`` (the usual rule of
    Szegedy et al.'s Inception crop, as torchvision implements it).
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """Train/test preprocessing of one image to a normalised ``[size, size, 3]`` float32 array.

    Attributes:
      image_size: side of the output (224 in the papers).
      resize_size: test-time resize before the center crop (256).
      test_resize_mode: ``"shorter"`` (resize the shorter side) or ``"square"`` (SOP configs).
      train_resize_size: optional shorter-side resize before the random crop (256 for SOP in
        the SupRank configs; ``None`` elsewhere).
      crop_scale: area fraction range of the random crop; (0.16, 1) in ROADMAP/SupRank,
        torchvision's default (0.08, 1) in PNP.
      crop_ratio: aspect ratio range of the random crop; (0.75, 1.33) as the official
        ROADMAP/SupRank configs write it, torchvision's default (3/4, 4/3) in PNP.
      flip: horizontal flip with probability 1/2 at train time.
      mean, std: per-channel normalisation of [0, 1] pixels (ImageNet statistics).
      draft_train: decode JPEGs at 1/2, 1/4 or 1/8 scale when the random crop, once resized
        to ``image_size``, still has at least one source pixel per output pixel (see
        :func:`draft`); about 2x faster on 500 px images. Default True.
      draft_test: the same for test-time preprocessing; default False, so evaluation decodes
        at full resolution as the official code does.
    """

    image_size: int = 224
    resize_size: int = 256
    test_resize_mode: str = "shorter"
    train_resize_size: int | None = None
    crop_scale: tuple[float, float] = (0.16, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.33)
    flip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    draft_train: bool = True
    draft_test: bool = False

    def __post_init__(self):
        if self.image_size < 1 or self.resize_size < 1:
            raise ValueError(
                f"image_size and resize_size must be >= 1, got {self.image_size}, {self.resize_size}"
            )
        if self.test_resize_mode not in RESIZE_MODES:
            raise ValueError(f"test_resize_mode must be one of {RESIZE_MODES}, got {self.test_resize_mode!r}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")

    def __call__(
        self, image: Image.Image, *, train: bool, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """``[image_size, image_size, 3]`` float32; ``rng`` is required when ``train``."""
        return self.normalize(self.pixels(image, train=train, rng=rng).astype(np.float32) / 255.0)

    def pixels(
        self, image: Image.Image, *, train: bool, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """``[image_size, image_size, 3]`` uint8, before normalisation (what the input pipeline
        ships to the device; :func:`normalize_on_device` finishes the job there)."""
        if not train:
            new = resized_size(*image.size, self.resize_size, self.test_resize_mode)
            image = center_crop(_resize_to(image, new, self.draft_test), self.image_size)
            return np.asarray(image, dtype=np.uint8)
        if rng is None:
            raise ValueError("a train transform needs an rng")
        image, box = self._train_crop(image, rng)
        size = (self.image_size, self.image_size)
        if all(float(v).is_integer() for v in box):  # torchvision's resized_crop: crop, then resize
            image = image.crop(tuple(int(v) for v in box)).resize(size, Image.BILINEAR)
        else:  # a box scaled to a draft decode: resampled from the reduced image directly
            image = image.resize(size, Image.BILINEAR, box=box)
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(image, dtype=np.uint8)

    def _train_crop(self, image: Image.Image, rng: np.random.Generator):
        """The decoded image and the random-resized-crop box in its coordinates.

        The box is drawn on the original size (or the pre-resized one), so the random draws do
        not depend on draft decoding; with draft, the box is then scaled to the reduced image.
        """
        if self.train_resize_size is not None:
            new = resized_size(*image.size, self.train_resize_size, "shorter")
            image = _resize_to(image, new, self.draft_train)
            return image, random_resized_crop_box(*image.size, rng, self.crop_scale, self.crop_ratio)
        width, height = image.size
        box = random_resized_crop_box(width, height, rng, self.crop_scale, self.crop_ratio)
        region = (0.0, 0.0, float(width), float(height))
        if self.draft_train:
            bw, bh = box[2] - box[0], box[3] - box[1]
            s = self.image_size
            image, region = draft(image, (math.ceil(width * s / bw), math.ceil(height * s / bh)))
        image = as_rgb(image)
        if region[2:] != (width, height):  # decoded at 1/s: the box in the reduced image's coordinates
            sx, sy = region[2] / width, region[3] / height
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        return image, box

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """``(pixels - mean) / std`` on the channel axis, float32."""
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return ((pixels - mean) / std).astype(np.float32)


def normalize_on_device(pixels, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """``(pixels / 255 - mean) / std`` in float32 with jax: the device half of
    :meth:`ImageTransform.pixels` (``[..., 3]`` uint8 in, float32 out), the same operations
    as :meth:`ImageTransform.__call__` on the host, within 1 ulp of it (XLA's float32 division
    is not always correctly rounded)."""
    import jax.numpy as jnp

    x = jnp.asarray(pixels).astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
