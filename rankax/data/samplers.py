"""Batch samplers for metric learning, deterministic given ``(seed, step)``.

A sampler is a pure function of the step: ``sampler.indices(step)`` depends only on the seed
and the step, so a run resumed at step ``t`` sees exactly the batches an uninterrupted run
would have seen, with no sampler state to checkpoint.
"""

from __future__ import annotations

import numpy as np


class PKSampler:
    """P classes x K samples per batch (Hermans et al., 2017; the ROADMAP/PNP default).

    Each step draws ``classes_per_batch`` distinct classes uniformly, then
    ``samples_per_class`` distinct items of each (with replacement only for a class that has
    fewer than K items). The batch is ordered class by class: ``labels[indices]`` is
    ``[c1]*K + [c2]*K + ...``.

    Small classes: a class with fewer than K items is sampled with replacement, so its items
    repeat in the batch (with different augmentations). A class with a single item gives its
    queries no distinct positive; ``min_class_size=2`` leaves such classes out of the draw.

    Args:
      labels: ``[N]`` integer class ids of the training set (``[N, L]`` label paths: column 0).
      classes_per_batch: P.
      samples_per_class: K (>= 2, so every query has a positive).
      seed: base seed.
      min_class_size: classes with fewer items are never drawn (default 1: all classes).
    """

    def __init__(
        self,
        labels: np.ndarray,
        classes_per_batch: int,
        samples_per_class: int,
        seed: int = 0,
        min_class_size: int = 1,
    ):
        labels = np.asarray(labels)
        if labels.ndim == 2:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise ValueError(f"labels must be [N] class ids or [N, L] label paths, got shape {labels.shape}")
        labels, keep = _drop_small_classes(labels, min_class_size)
        self.classes, inverse = np.unique(labels, return_inverse=True)
        if not 1 <= classes_per_batch <= len(self.classes):
            raise ValueError(
                f"classes_per_batch must be in [1, {len(self.classes)}] (the number of classes), "
                f"got {classes_per_batch}"
            )
        if samples_per_class < 2:
            raise ValueError(
                f"samples_per_class must be >= 2 so that queries have positives, got {samples_per_class}"
            )
        self._members = [keep[m] for m in _group(inverse, len(self.classes))]
        self.classes_per_batch = int(classes_per_batch)
        self.samples_per_class = int(samples_per_class)
        self.seed = int(seed)

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    def indices(self, step: int) -> np.ndarray:
        """``[P * K]`` dataset indices of the batch of ``step``."""
        rng = np.random.default_rng([self.seed, int(step)])
        chosen = rng.choice(len(self.classes), size=self.classes_per_batch, replace=False)
        out = []
        for c in chosen:
            members = self._members[c]
            replace = len(members) < self.samples_per_class
            out.append(rng.choice(members, size=self.samples_per_class, replace=replace))
        return np.concatenate(out)


def _group(inverse: np.ndarray, num_groups: int) -> list[np.ndarray]:
    """Positions of each group id ``0..num_groups-1`` in ``inverse``, ascending."""
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(num_groups + 1))
    return [order[bounds[g] : bounds[g + 1]] for g in range(num_groups)]


def _drop_small_classes(labels: np.ndarray, min_class_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the items whose class has ``>= min_class_size`` items, and those items' indices."""
    if min_class_size < 1:
        raise ValueError(f"min_class_size must be >= 1, got {min_class_size}")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    keep = np.flatnonzero(counts[inverse.reshape(-1)] >= min_class_size)
    if len(keep) == 0:
        raise ValueError(f"no class has at least min_class_size={min_class_size} items")
    return labels[keep], keep


def _take(rng: np.random.Generator, members: np.ndarray, k: int) -> np.ndarray:
    """``k`` distinct members, or with replacement when there are fewer than ``k``."""
    return rng.choice(members, size=k, replace=len(members) < k)


class HierarchicalSampler:
    """Batches of a few super-classes, each filled with P x K fine classes (SupRank's sampler).

    With hierarchical labels, a P x K batch drawn uniformly from thousands of fine classes
    rarely holds two classes of the same super-class, so the intermediate relevance levels of
    H-AP/NDCG (same super-class, different class) are almost absent. This sampler, the one of
    the SupRank/HAPPIER code (after pytorch-metric-learning's ``HierarchicalSampler``), draws
    ``super_classes_per_batch`` distinct super-classes; each gets an equal share of the batch,
    ``batch_size / super_classes_per_batch`` items made of
    ``share / samples_per_class`` distinct fine classes of that super-class x ``samples_per_class``
    items each. Consecutive groups of ``batches_per_super_tuple`` steps share the same
    super-classes, as in the official sampler.

    Deterministic given ``(seed, step)``: the super-classes of step ``t`` come from
    ``(seed, t // batches_per_super_tuple)``, the classes and items from ``(seed, t)``.
    The batch is ordered super-class by super-class, class by class.

    Small groups: a super-class with fewer fine classes than its share needs repeats classes
    (drawn with replacement), and a class with fewer than K items repeats items; classes
    smaller than ``min_class_size`` are left out.

    Args:
      labels: ``[N, L]`` label paths (column 0 = finest).
      batch_size: B, a multiple of ``super_classes_per_batch * samples_per_class``.
      samples_per_class: K (>= 2).
      super_classes_per_batch: number of super-classes per batch (2 in SupRank's configs).
      batches_per_super_tuple: steps sharing one draw of super-classes (SupRank: 4; SOP config: 5).
      fine_level, coarse_level: label-path columns of the classes and of the super-classes.
      seed: base seed.
      min_class_size: classes with fewer items are never drawn.

    References:
      Ramzi, Thome, Rambour, Audebert, Bitot. "Optimization of Rank Losses for Image Retrieval"
      (SupRank), arXiv:2309.08250, 2023; "Hierarchical Average Precision Training for Pertinent
      Image Retrieval" (HAPPIER), ECCV 2022.
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        samples_per_class: int,
        super_classes_per_batch: int = 2,
        batches_per_super_tuple: int = 4,
        fine_level: int = 0,
        coarse_level: int = 1,
        seed: int = 0,
        min_class_size: int = 1,
    ):
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be [N, L] label paths, got shape {labels.shape}")
        for name, level in (("fine_level", fine_level), ("coarse_level", coarse_level)):
            if not 0 <= level < labels.shape[1]:
                raise ValueError(f"{name} must be in [0, {labels.shape[1]}), got {level}")
        if samples_per_class < 2:
            raise ValueError(
                f"samples_per_class must be >= 2 so that queries have positives, got {samples_per_class}"
            )
        if super_classes_per_batch < 1:
            raise ValueError(f"super_classes_per_batch must be >= 1, got {super_classes_per_batch}")
        if batches_per_super_tuple < 1:
            raise ValueError(f"batches_per_super_tuple must be >= 1, got {batches_per_super_tuple}")
        per_super = super_classes_per_batch * samples_per_class
        if batch_size < per_super or batch_size % per_super:
            raise ValueError(
                f"batch_size must be a positive multiple of super_classes_per_batch * samples_per_class "
                f"= {per_super}, got {batch_size}"
            )
        _, keep = _drop_small_classes(labels[:, fine_level], min_class_size)
        fine = labels[keep, fine_level]
        coarse = labels[keep, coarse_level]
        # A fine class belongs to one super-class; pair them so that equal fine ids under
        # different super-classes (ids not unique per level) stay distinct classes.
        pairs, pair_inverse = np.unique(np.stack([coarse, fine], 1), axis=0, return_inverse=True)
        pair_inverse = pair_inverse.reshape(-1)
        self.super_classes, pair_super = np.unique(pairs[:, 0], return_inverse=True)
        pair_super = pair_super.reshape(-1)
        if super_classes_per_batch > len(self.super_classes):
            raise ValueError(
                f"super_classes_per_batch must be <= {len(self.super_classes)} (the number of "
                f"super-classes), got {super_classes_per_batch}"
            )
        self._members = [keep[m] for m in _group(pair_inverse, len(pairs))]
        self._classes_of = _group(pair_super, len(self.super_classes))
        self.batch_size = int(batch_size)
        self.samples_per_class = int(samples_per_class)
        self.super_classes_per_batch = int(super_classes_per_batch)
        self.batches_per_super_tuple = int(batches_per_super_tuple)
        self.classes_per_super_class = self.batch_size // per_super
        self.seed = int(seed)

    def indices(self, step: int) -> np.ndarray:
        """``[batch_size]`` dataset indices of the batch of ``step``."""
        step = int(step)
        tuple_rng = np.random.default_rng([self.seed, 1, step // self.batches_per_super_tuple])
        supers = tuple_rng.choice(len(self.super_classes), size=self.super_classes_per_batch, replace=False)
        rng = np.random.default_rng([self.seed, 0, step])
        out = []
        for s in supers:
            for c in _take(rng, self._classes_of[s], self.classes_per_super_class):
                out.append(_take(rng, self._members[c], self.samples_per_class))
        return np.concatenate(out)
