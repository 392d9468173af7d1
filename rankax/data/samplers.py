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

    Args:
      labels: ``[N]`` integer class ids of the training set.
      classes_per_batch: P.
      samples_per_class: K (>= 2, so every query has a positive).
      seed: base seed.
    """

    def __init__(self, labels: np.ndarray, classes_per_batch: int, samples_per_class: int, seed: int = 0):
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be [N] class ids, got shape {labels.shape}")
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
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(self.classes) + 1))
        self._members = [order[bounds[c] : bounds[c + 1]] for c in range(len(self.classes))]
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
