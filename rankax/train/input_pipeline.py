"""Data for a config: the dataset (``rankax.data.load_dataset``), its sampler, and an
on-device augmentation for in-memory datasets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rankax import data as rdata
from rankax.data import samplers
from rankax.train.errors import ConfigError


def load(config: ml_collections.ConfigDict) -> rdata.RetrievalDataset:
    """The :class:`~rankax.data.RetrievalDataset` of ``config.dataset``.

    Raises:
      ConfigError: the dataset needs an optional dependency that is not installed (names the
        extra to install).
    """
    try:
        return rdata.load_dataset(config.dataset)
    except ModuleNotFoundError as err:
        if err.name not in ("tensorflow_datasets", "PIL"):
            raise
        raise ConfigError(
            f"config.dataset.name={config.dataset.name!r} needs the optional package {err.name!r}, "
            "which is not installed: pip install -e '.[data]' (from a clone: .venv/bin/pip install "
            "-e '.[data]'); the digits configs need nothing more"
        ) from None


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


def global_batch(
    source: rdata.Source,
    indices: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    sharding: jax.sharding.Sharding,
) -> tuple[Any, Any]:
    """``(images, labels)`` of the global batch ``indices`` (``[B]`` dataset rows, the same
    on every process: the sampler is a pure function of ``(seed, step)``).

    One process: the numpy batch, loaded whole (``source.get_batch(indices, train=True,
    seed=seed)``, ``labels[indices]``), as before. Several: each process loads only its rows
    ``distributed.local_slice(B)`` of the batch -- with ``offset`` = the first row's position,
    so per-item augmentation draws the same random numbers as in a one-process run -- and the
    step receives global ``jax.Array`` s of ``sharding`` (``jax.make_array_from_process_local_data``).
    """
    from rankax.train import distributed

    indices = np.asarray(indices)
    if jax.process_count() == 1:
        return source.get_batch(indices, train=True, seed=seed), labels[indices]
    rows = distributed.local_slice(len(indices))
    mine = indices[rows]
    images = source.get_batch(mine, train=True, seed=seed, offset=rows.start)
    shape = (len(indices),)
    return (
        distributed.global_array(images, sharding, shape + images.shape[1:]),
        distributed.global_array(labels[mine], sharding, shape + labels.shape[1:]),
    )
