"""Training/evaluation data for a config: arrays in memory plus a jittable augmentation."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from rankax.data import digits


def load(config: ml_collections.ConfigDict) -> digits.DigitsSplit:
    """Train/test arrays of ``config.dataset``."""
    name = config.dataset.name
    if name == "digits":
        return digits.load_digits_split(config.dataset.protocol, seed=config.dataset.split_seed)
    raise ValueError(f"config.dataset.name {name!r} is not supported (known: 'digits')")


def augment_fn(config: ml_collections.ConfigDict) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(images [B, H, W, C], rng) -> images``: random translation by up to ``max_shift`` px."""
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
