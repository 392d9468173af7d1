"""The host-side random streams of a run: one numpy generator per (stream, step or epoch, item).

Every random draw the input pipeline makes comes from :func:`generator`, whose generator for
``(seed, stream, *words)`` is ``np.random.default_rng(np.random.SeedSequence(seed,
spawn_key=(stream, *words)))``. Two properties make the streams independent:

- each use has its own :class:`Stream` number, first in the spawn key, so a sampler's draws and
  an image's augmentation never share a generator, whatever the seed, step or position;
- numpy pads the entropy to its 4-word pool before it appends the spawn key, so every word of the
  key counts, trailing zeros included. A plain ``default_rng([seed, a, b])`` list does not: it
  equals ``default_rng([seed, a, b, 0])``, and ``[seed, step]`` equals ``[seed, 0, step]`` at
  ``step == 0``, so differently tagged lists of different lengths could collide.

The device-side stream (the step's augmentation key) is separate: see
:func:`rankax.train.state.create_train_state`.
"""

from __future__ import annotations

import enum

import numpy as np


class Stream(enum.IntEnum):
    """The stream number of each host-side use of randomness (the first word of the spawn key)."""

    AUGMENT = 0  # (step seed, position): one image's augmentation
    PK_STEP = 1  # (step,): the classes and items of a PKSampler batch
    HIERARCHICAL_STEP = 2  # (step,): the classes and items of a HierarchicalSampler batch
    HIERARCHICAL_SUPER = 3  # (step // batches_per_super_tuple,): its super-classes
    EPOCH_CLASSES = 4  # (epoch,): MPerClassEpochSampler's class order
    EPOCH_ITEMS = 5  # (epoch,): MPerClassEpochSampler's item order
    EPOCH_BATCHES = 6  # (epoch,): MPerClassEpochSampler's batch order
    PAIRS_EPOCH = 7  # (epoch,): HierarchicalPairsSampler's order of anchors
    PAIRS_STEP = 8  # (step,): HierarchicalPairsSampler's classes and items
    REPLACEMENT_STEP = 9  # (step,): ReplacementPKSampler's batch


def generator(seed: int, stream: Stream, *words: int) -> np.random.Generator:
    """The generator of ``stream`` at ``words`` (step, epoch, position: integers >= 0) for the run
    seeded with ``seed`` (an integer >= 0, any size)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(stream), *map(int, words))))
