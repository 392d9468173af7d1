"""Data for a config: the dataset (``rankax.data.load_dataset``), its sampler, the batches of
the training loop and of evaluation, and what the step does to images on the device.

Image datasets go through :mod:`rankax.data.loader` (``config.input.workers`` processes,
``config.input.prefetch`` batches ahead, uint8 to the device, normalised there by
:func:`device_preprocess`); in-memory datasets (digits) are indexed in the loop's thread as
before and augmented on the device (``config.dataset.max_shift``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rankax import data as rdata
from rankax._core import optional
from rankax.data import loader, samplers, transforms
from rankax.train import distributed
from rankax.train.errors import ConfigError


def load(config: ml_collections.ConfigDict) -> rdata.RetrievalDataset:
    """The :class:`~rankax.data.RetrievalDataset` of ``config.dataset``.

    Raises:
      ConfigError: the dataset needs an optional dependency that is not installed (names the
        extra to install).
    """
    try:
        dataset = rdata.load_dataset(config.dataset)
        if is_image_source(dataset.train):  # image sources are decoded by grain's pipeline
            optional.require("grain", "the image input pipeline")
    except ModuleNotFoundError as err:
        if err.name not in ("tensorflow_datasets", "grain"):  # the data extra's packages
            raise
        raise ConfigError(
            f"config.dataset.name={config.dataset.name!r} needs the optional package {err.name!r}, "
            "which is not installed: pip install 'rankax[data]' (in a clone: .venv/bin/pip install "
            "-e '.[data]'); the digits configs need nothing more"
        ) from None
    return dataset


def make_sampler(config: ml_collections.ConfigDict, dataset: rdata.RetrievalDataset):
    """The sampler ``config.batch.sampler`` (a name of ``rankax.data.samplers.SAMPLERS``).

    Keys: ``batch.classes_per_batch`` x ``batch.samples_per_class`` = the batch size;
    ``batch.super_classes_per_batch`` and ``batch.batches_per_super_tuple`` ("hierarchical":
    steps sharing one draw of super-classes; "hierarchical_pairs": batches per tuple of
    super-classes per epoch); ``batch.m_per_class_rule`` ("m_per_class": "official" or
    "fixed"); ``seed``.
    """
    b = config.batch
    kind = b.get("sampler", "pk")
    if kind not in samplers.SAMPLERS:
        raise ValueError(f"config.batch.sampler must be one of {samplers.SAMPLERS}, got {kind!r}")
    if len(dataset.train.labels) == 0:  # the sampler blamed config.batch
        name = config.dataset.get("name", "the dataset")
        hint = ("its CSV needs rows whose split is 'train'" if name == "folder"
                else "check its training files against docs/data.md, and the loader's warnings")
        raise ConfigError(f"config.dataset: the training split of {name!r} has no items ({hint})")
    try:
        return samplers.make(
            kind,
            dataset.train.labels,
            b.classes_per_batch * b.samples_per_class,
            b.samples_per_class,
            seed=config.seed,
            super_classes_per_batch=b.get("super_classes_per_batch", 2),
            batches_per_super_tuple=b.get("batches_per_super_tuple", 4),
            m_per_class_rule=b.get("m_per_class_rule", "official"),
        )
    except ValueError as err:  # the sampler names its argument: say which config keys set it
        name = config.get("dataset", {}).get("name", None)
        where = f"{kind!r} sampler on the training split" + (f" of {name}" if name else "")
        sizes = (f"batch_size = classes_per_batch x samples_per_class = "
                 f"{b.classes_per_batch} x {b.samples_per_class}")
        raise ConfigError(f"config.batch ({where}; {sizes}): {err}") from None


def augment_fn(config: ml_collections.ConfigDict) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(images [B, H, W, C], rng) -> images``: random translation by up to
    ``config.dataset.max_shift`` pixels (in-memory datasets; image datasets augment on load)."""
    shift = int(config.dataset.get("max_shift", 0))
    if shift == 0:
        return lambda images, rng: images

    def augment(images: jax.Array, rng: jax.Array) -> jax.Array:
        b, h, w, c = images.shape
        offsets = jax.random.randint(rng, (b, 2), 0, 2 * shift + 1)
        padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
        crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c))
        return jax.vmap(crop)(padded, offsets)

    return augment


def is_image_source(source: object) -> bool:
    """Whether ``source`` decodes images (uint8 pixels through the loader) rather than holding
    model inputs in memory."""
    return hasattr(source, "get_pixels")


def normalizer(source: rdata.Source) -> Callable[[jax.Array], jax.Array]:
    """``images -> model inputs`` on the device: uint8 pixels normalised with the mean/std of
    ``source``'s transform (:func:`rankax.data.transforms.normalize_on_device`), other inputs
    unchanged."""
    transform = getattr(source, "transform", None)
    mean = transform.mean if transform is not None else transforms.IMAGENET_MEAN
    std = transform.std if transform is not None else transforms.IMAGENET_STD

    def normalize(images: jax.Array) -> jax.Array:
        if images.dtype != jnp.uint8:
            return images
        return transforms.normalize_on_device(images, mean, std)

    return normalize


def device_preprocess(
    config: ml_collections.ConfigDict, data: rdata.RetrievalDataset
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(images, rng) -> model inputs``, inside the jitted step: :func:`normalizer` then
    :func:`augment_fn`."""
    normalize, augment = normalizer(data.train), augment_fn(config)
    return lambda images, rng: augment(normalize(images), rng)


def workers(config: ml_collections.ConfigDict) -> int:
    """``config.input.workers`` resolved (-1: one process per core but one)."""
    try:
        return loader.resolve_workers(config.get("input", {}).get("workers", 0))
    except ValueError as err:
        raise ConfigError(f"config.input.workers: {err}") from None


def prefetch(config: ml_collections.ConfigDict) -> int:
    value = int(config.get("input", {}).get("prefetch", 2))
    if value < 1:
        raise ConfigError(f"config.input.prefetch must be >= 1 batch, got {value}")
    return value


def process_rows(global_size: int) -> slice:
    """The rows of a global batch this process loads: all of them with one process, its share
    (:func:`rankax.train.distributed.local_slice`) with several."""
    if jax.process_count() == 1:
        return slice(0, global_size)
    return distributed.local_slice(global_size)


def train_batches(
    config: ml_collections.ConfigDict, data: rdata.RetrievalDataset, sampler, start: int, stop: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(step, indices, images)`` for steps ``[start, stop)``: ``indices`` the ``[B]`` rows of
    the global batch (the same on every process: the sampler is a pure function of
    ``(config.seed, step)``), ``images`` this process's rows of it (:func:`process_rows`),
    augmented as a one-process run would (``offset``), whatever the worker count, so a resumed
    run sees the same batches."""
    rows = process_rows(sampler.batch_size)
    if not is_image_source(data.train):
        for step in range(start, stop):
            idx = sampler.indices(step)
            seed = loader.step_seed(config.seed, step)
            yield step, idx, data.train.get_batch(idx[rows], train=True, seed=seed, offset=rows.start)
        return
    batches = loader.train_batches(
        data.train, sampler, seed=int(config.seed), start=start, stop=stop,
        workers=workers(config), prefetch=prefetch(config), rows=rows,
    )
    try:
        for batch in batches:
            yield int(batch["step"]), batch["indices"], batch["images"]
    finally:  # closed early (an error, an interrupt): the workers stop now
        loader.close(batches)


def place(
    images: np.ndarray, indices: np.ndarray, labels: np.ndarray, sharding: jax.sharding.Sharding
) -> tuple[jax.Array, Any]:
    """``(images, labels)`` of the global batch ``indices`` as the step takes them: this
    process's ``images`` rows put on its devices as part of the global array of ``sharding``
    (``jax.make_array_from_process_local_data`` with several processes), and the batch's
    labels (numpy with one process, a global array with several)."""
    if jax.process_count() == 1:
        return jax.device_put(images, sharding), labels[indices]
    shape = (len(indices),)
    mine = indices[process_rows(len(indices))]
    return (
        distributed.global_array(images, sharding, shape + images.shape[1:]),
        distributed.global_array(labels[mine], sharding, shape + labels.shape[1:]),
    )


def eval_reading(config: ml_collections.ConfigDict, data: rdata.RetrievalDataset) -> dict:
    """How evaluators read ``data``'s sources: ``workers`` processes, uint8 pixels (``raw``)
    for image datasets (the embedding function normalises them on the device), and with
    several processes each one's ``share`` of every batch
    (:func:`rankax.train.distributed.eval_share`)."""
    share = distributed.eval_share()
    if not is_image_source(data.test):
        return {"workers": 0, "raw": False, "share": share}
    return {"workers": workers(config), "raw": True, "share": share}
