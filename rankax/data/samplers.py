"""Batch samplers for metric learning, deterministic given ``(seed, step)``.

A sampler is a pure function of the step: ``sampler.indices(step)`` depends only on the seed
and the step, so a run resumed at step ``t`` sees exactly the batches an uninterrupted run
would have seen, with no sampler state to checkpoint, and every process of a multi-host run
knows the global batch of every step. Each sampler reports ``batch_size``,
``epoch_length`` (batches per epoch) and ``epoch_start(e)`` (the first step of epoch ``e``),
so that a config can count in epochs.

==========================  ===========================================================
name (``SAMPLERS``)         behaviour
==========================  ===========================================================
``"pk"``                    :class:`PKSampler`: P distinct classes x K items, each step
                            drawn independently (no epochs; ``epoch_length`` = N // B).
``"m_per_class"``           :class:`MPerClassEpochSampler`: epochs that go through every
                            image at most once (no replacement, remainders dropped), as
                            the ROADMAP / SupRank M-per-class sampler.
``"hierarchical"``          :class:`HierarchicalSampler`: super-class tuples held for
                            ``batches_per_super_tuple`` consecutive steps (rankax's own).
``"hierarchical_pairs"``    :class:`HierarchicalPairsSampler`: epochs made of every pair
                            of super-classes x ``batches_per_super_tuple`` batches, all
                            shuffled, as ROADMAP / SupRank / pytorch-metric-learning.
``"pk_replacement"``        :class:`ReplacementPKSampler`: classes and items drawn with
                            replacement, ``N // B`` batches per epoch, as PNP.
==========================  ===========================================================

:func:`make` builds one by name.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

import numpy as np

from rankax._core import validation
from rankax.data import streams


def _index(name: str, value: object) -> int:
    """A step or epoch number: an int (Python or numpy) >= 0, or a ValueError naming it."""
    return validation.check_int(name, value, 0)


class _NominalEpochs:
    """Epoch bookkeeping of the samplers whose steps are independent draws: an epoch is a
    nominal ``N // batch_size`` steps of ``N`` usable items (``_num_items``)."""

    _num_items: int
    batch_size: int

    @property
    def epoch_length(self) -> int:
        """Nominal batches per epoch, ``N // batch_size`` (steps are independent draws)."""
        return max(1, self._num_items // self.batch_size)

    def epoch_start(self, epoch: int) -> int:
        """The first step of ``epoch``: ``epoch * epoch_length``."""
        return _index("epoch", epoch) * self.epoch_length


class PKSampler(_NominalEpochs):
    """P classes x K samples per batch (Hermans et al., 2017), each step independent.

    Not one of the official samplers of the rank-loss papers: ROADMAP and SupRank go through
    the images epoch by epoch (:class:`MPerClassEpochSampler`), PNP draws with replacement
    (:class:`ReplacementPKSampler`). It is what pytorch-metric-learning's ``MPerClassSampler``
    does with a ``batch_size`` (each batch an independent draw of distinct classes).

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
        _check_ints(classes_per_batch=classes_per_batch, samples_per_class=samples_per_class, seed=seed,
                    min_class_size=min_class_size)
        labels, keep = _drop_small_classes(_class_ids(labels), min_class_size)
        self.classes, inverse = np.unique(labels, return_inverse=True)
        if not 1 <= classes_per_batch <= len(self.classes):
            raise ValueError(
                f"classes_per_batch must be in [1, {len(self.classes)}] (the number of classes), "
                f"got {classes_per_batch}"
            )
        _check_samples_per_class(samples_per_class)
        self._members = [keep[m] for m in _group(inverse, len(self.classes))]
        self._num_items = len(keep)
        self.classes_per_batch = int(classes_per_batch)
        self.samples_per_class = int(samples_per_class)
        self.seed = int(seed)

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    def indices(self, step: int) -> np.ndarray:
        """``[P * K]`` dataset indices of the batch of ``step``."""
        rng = streams.generator(self.seed, streams.Stream.PK_STEP, _index("step", step))
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


def _check_label_paths(labels: np.ndarray, fine_level: int, coarse_level: int) -> np.ndarray:
    """``labels`` as ``[N, L]`` label paths after checking the two levels exist."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or len(labels) == 0:
        raise ValueError(f"labels must be non-empty [N, L] label paths, got shape {labels.shape}")
    for name, level in (("fine_level", fine_level), ("coarse_level", coarse_level)):
        if not 0 <= level < labels.shape[1]:
            raise ValueError(f"{name} must be in [0, {labels.shape[1]}), got {level}")
    return labels


def _check_super_batch(
    batch_size: int, samples_per_class: int, super_classes_per_batch: int, batches_per_super_tuple: int
) -> int:
    """``super_classes_per_batch * samples_per_class`` after checking that the batch is a
    positive multiple of it and the counts are positive."""
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
    return per_super


def _super_class_groups(
    labels: np.ndarray, rows: np.ndarray, fine_level: int, coarse_level: int, super_classes_per_batch: int
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """``(super-class ids, rows of each class, classes of each super-class)`` over ``rows``.

    A fine class belongs to one super-class; (coarse, fine) pairs are the classes, so equal fine
    ids under different super-classes (ids not unique per level) stay distinct classes."""
    pairs, pair_inverse = np.unique(
        np.stack([labels[rows, coarse_level], labels[rows, fine_level]], 1), axis=0, return_inverse=True
    )
    super_classes, pair_super = np.unique(pairs[:, 0], return_inverse=True)
    if super_classes_per_batch > len(super_classes):
        raise ValueError(
            f"super_classes_per_batch must be <= {len(super_classes)} (the number of "
            f"super-classes), got {super_classes_per_batch}"
        )
    members = [rows[m] for m in _group(pair_inverse.reshape(-1), len(pairs))]
    return super_classes, members, _group(pair_super.reshape(-1), len(super_classes))


def _take(rng: np.random.Generator, members: np.ndarray, k: int) -> np.ndarray:
    """``k`` distinct members, or with replacement when there are fewer than ``k``."""
    return rng.choice(members, size=k, replace=len(members) < k)


def _take_each(rng: np.random.Generator, members: np.ndarray, k: int) -> np.ndarray:
    """``k`` distinct members; when there are fewer than ``k``, every member once (shuffled)
    and the remaining slots drawn with replacement (the batch keeps its static size, where the
    official hierarchical sampler returns a smaller batch holding each member once)."""
    if len(members) >= k:
        return rng.choice(members, size=k, replace=False)
    return np.concatenate([rng.permutation(members), rng.choice(members, size=k - len(members))])


class HierarchicalSampler(_NominalEpochs):
    """Batches of a few super-classes, each filled with P x K fine classes, tuples held for a few steps.

    With hierarchical labels, a P x K batch drawn uniformly from thousands of fine classes
    rarely holds two classes of the same super-class, so the intermediate relevance levels of
    H-AP/NDCG (same super-class, different class) are almost absent. This sampler draws
    ``super_classes_per_batch`` distinct super-classes; each gets an equal share of the batch,
    ``batch_size / super_classes_per_batch`` items made of
    ``share / samples_per_class`` distinct fine classes of that super-class x ``samples_per_class``
    items each. Consecutive groups of ``batches_per_super_tuple`` steps share the same
    super-classes.

    This is *not* the official sampler's epoch structure: the ROADMAP / SupRank / HAPPIER
    sampler (pytorch-metric-learning's ``HierarchicalSampler``) enumerates every pair of
    super-classes x ``batches_per_super_tuple`` per epoch and shuffles all the batches of the
    epoch, so consecutive batches rarely share a pair; that one is
    :class:`HierarchicalPairsSampler`. ``epoch_length`` here is the nominal ``N // batch_size``.

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
        _check_ints(batch_size=batch_size, samples_per_class=samples_per_class, seed=seed,
                    super_classes_per_batch=super_classes_per_batch, min_class_size=min_class_size,
                    batches_per_super_tuple=batches_per_super_tuple, fine_level=fine_level,
                    coarse_level=coarse_level)
        labels = _check_label_paths(labels, fine_level, coarse_level)
        _check_samples_per_class(samples_per_class)
        per_super = _check_super_batch(
            batch_size, samples_per_class, super_classes_per_batch, batches_per_super_tuple
        )
        # Count the classes' items by (coarse, fine) pair: fine ids may repeat across super-classes.
        pairs = np.unique(labels[:, [coarse_level, fine_level]], axis=0, return_inverse=True)[1]
        _, keep = _drop_small_classes(pairs.reshape(-1), min_class_size)
        self.super_classes, self._members, self._classes_of = _super_class_groups(
            labels, keep, fine_level, coarse_level, super_classes_per_batch
        )
        self.batch_size = int(batch_size)
        self.samples_per_class = int(samples_per_class)
        self.super_classes_per_batch = int(super_classes_per_batch)
        self.batches_per_super_tuple = int(batches_per_super_tuple)
        self.classes_per_super_class = self.batch_size // per_super
        self._num_items = len(keep)
        self.seed = int(seed)

    def indices(self, step: int) -> np.ndarray:
        """``[batch_size]`` dataset indices of the batch of ``step``."""
        step = _index("step", step)
        tuple_rng = streams.generator(
            self.seed, streams.Stream.HIERARCHICAL_SUPER, step // self.batches_per_super_tuple
        )
        supers = tuple_rng.choice(len(self.super_classes), size=self.super_classes_per_batch, replace=False)
        rng = streams.generator(self.seed, streams.Stream.HIERARCHICAL_STEP, step)
        out = []
        for s in supers:
            for c in _take_each(rng, self._classes_of[s], self.classes_per_super_class):
                out.append(_take(rng, self._members[c], self.samples_per_class))
        return np.concatenate(out)


def _check_ints(**values: object) -> None:
    """Integer arguments of the samplers: sizes and counts >= 1, ``seed`` and levels >= 0."""
    for name, value in values.items():
        validation.check_int(name, value, 0 if name == "seed" or name.endswith("level") else 1)


def _class_ids(labels: np.ndarray, level: int = 0) -> np.ndarray:
    """``[N]`` class ids of ``[N]`` labels or of column ``level`` of ``[N, L]`` label paths."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if not 0 <= level < labels.shape[1]:
            raise ValueError(
                f"level must be in [0, {labels.shape[1]}) for label paths {labels.shape}, got {level}"
            )
        labels = labels[:, level]
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(
            f"labels must be non-empty [N] class ids or [N, L] label paths, got shape {labels.shape}"
        )
    return labels


def _check_samples_per_class(samples_per_class: int) -> None:
    if samples_per_class < 2:
        raise ValueError(
            f"samples_per_class must be >= 2 so that queries have positives, got {samples_per_class}"
        )


def _check_pk(batch_size: int, samples_per_class: int) -> int:
    """``P = batch_size / samples_per_class`` after checking both."""
    _check_samples_per_class(samples_per_class)
    if batch_size < samples_per_class or batch_size % samples_per_class:
        raise ValueError(
            f"batch_size must be a positive multiple of samples_per_class={samples_per_class}, "
            f"got {batch_size}"
        )
    return batch_size // samples_per_class


def max_disjoint_batches(groups_per_class: np.ndarray, classes_per_batch: int) -> int:
    """The most batches of ``classes_per_batch`` distinct classes that disjoint groups allow.

    With ``g_c`` groups of class ``c`` and ``P = classes_per_batch``, ``T`` batches need ``P T``
    groups with at most ``T`` (one per batch) from each class, so ``T`` is feasible iff
    ``sum_c min(g_c, T) >= P T``; the left side minus the right is concave in ``T`` and 0 at
    ``T = 0``, so the feasible ``T`` form an interval and the largest is found by bisection.
    """
    g = np.asarray(groups_per_class, np.int64)
    lo, hi = 0, int(g.sum()) // classes_per_batch
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(g, mid).sum() >= classes_per_batch * mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


def official_m_per_class_batches(
    class_members: Sequence[np.ndarray], classes_per_batch: int, m: int
) -> np.ndarray:
    """The batches of the official M-per-class loop, before their final shuffle.

    ``class_members`` lists each class's images in the (shuffled) order the official code
    holds them, classes in its shuffled class order. The official loop
    (``elias-ramzi/ROADMAP:roadmap/samplers/m_per_class_sampler.py``, ``reshuffle``) repeats:
    walk the classes in order, and take the next ``m`` images of each of the first
    ``P = classes_per_batch`` classes that still have ``m``; stop when fewer than ``P`` do.
    The active classes are thus always the first ``P`` unfinished ones: class ``c``, with
    ``g_c = floor(n_c / m)`` groups, enters the batches when an earlier one finishes (at
    batch ``s_c``) and gives its group ``j`` to batch ``s_c + j``; the loop ends when a class
    finishes and no class is left to replace it. Computed with a heap of finishing times.

    Returns:
      ``[T, P * m]`` dataset indices, batch ``t`` class by class in the class order.
    """
    groups = [len(x) // m for x in class_members]
    p = classes_per_batch
    start, total = _official_schedule(groups, p)
    batches: list[list[np.ndarray]] = [[] for _ in range(total)]
    for c in sorted(start):
        for j in range(min(groups[c], total - start[c])):
            batches[start[c] + j].append(np.asarray(class_members[c][j * m : (j + 1) * m]))
    return np.array([np.concatenate(b) for b in batches], np.int64).reshape(total, p * m)


def _official_schedule(groups: Sequence[int], p: int) -> tuple[dict[int, int], int]:
    """``({class position: first batch}, number of batches)`` of the official loop, from the
    groups per class in class order (see :func:`official_m_per_class_batches`)."""
    eligible = [i for i, g in enumerate(groups) if g > 0]
    if len(eligible) < p:
        return {}, 0
    start = {i: 0 for i in eligible[:p]}
    heap = [(int(groups[i]), i) for i in eligible[:p]]
    heapq.heapify(heap)
    for c in eligible[p:]:
        finish, _ = heapq.heappop(heap)  # the first active class to run out ...
        start[c] = finish  # ... is replaced by the next class in order
        heapq.heappush(heap, (finish + int(groups[c]), c))
    return start, heap[0][0]  # ends when the next one runs out with no class left


M_PER_CLASS_RULES = ("official", "fixed")


class MPerClassEpochSampler:
    """Epochs of P classes x M images that visit every image at most once (no replacement).

    The official M-per-class sampler of ROADMAP and SupRank
    (``elias-ramzi/ROADMAP:roadmap/samplers/m_per_class_sampler.py``,
    ``elias-ramzi/SupRank:suprank/datasets/samplers/m_per_class_sampler.py``, after Smooth-AP;
    not pytorch-metric-learning's ``MPerClassSampler``, which draws a fixed number of batches
    with replacement across batches) shuffles each class's images and cuts them into groups
    of ``M = samples_per_class`` (the ``n_c mod M`` remainder dropped), forms batches of
    ``P = batch_size / M`` groups of distinct classes, drops what is left and shuffles the
    batches. Epoch ``e`` is built from ``(seed, e)`` by one of two rules:

    * ``rule="official"`` (default): the official loop exactly
      (:func:`official_m_per_class_batches`): classes in a shuffled order, each batch takes
      the first ``P`` classes with ``M`` images left. Its epoch length depends on the class
      order, so it varies a little from epoch to epoch (``P = 2``, classes with 2, 1 and 1
      groups: order A, B, C gives 2 batches, order B, C, A gives 1), and it can be well below
      the most the groups allow (CUB-like sizes, 100 classes of 41-60 images, ``M = 4``,
      ``B = 128``: 33-34 batches instead of 38): the classes left at the end are few and
      large.
    * ``rule="fixed"``: the most batches the groups allow, ``T`` =
      :func:`max_disjoint_batches`, every epoch: a class keeps at most ``T`` groups; the
      classes in a random order, their groups listed class after class, group ``i`` of the
      first ``P T`` going to batch ``i mod T`` (a class's at most ``T`` consecutive groups
      land in distinct batches).

    Steps run through the epochs back to back: :meth:`epoch_start` gives the first step of an
    epoch (with ``"official"``, the sum of the earlier epochs' lengths, computed once and
    memoised; each needs only its class order). ``epoch_length`` is epoch 0's length. The
    official sampler also shuffles the images inside a batch; here the batch is ordered
    class by class (``labels[indices]`` = ``[c1]*M + [c2]*M + ...``), which no batch loss
    depends on.

    Args:
      labels: ``[N]`` class ids (``[N, L]`` label paths: column ``level``).
      batch_size: B, a multiple of ``samples_per_class``.
      samples_per_class: M (>= 2).
      seed: base seed.
      level: the label-path column of the classes (0 = finest).
      rule: ``"official"`` or ``"fixed"``.

    Raises:
      ValueError: fewer than ``P`` classes have ``M`` images (no batch can be formed).
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        samples_per_class: int,
        seed: int = 0,
        level: int = 0,
        rule: str = "official",
    ):
        _check_ints(batch_size=batch_size, samples_per_class=samples_per_class, seed=seed, level=level)
        if rule not in M_PER_CLASS_RULES:
            raise ValueError(f"rule must be one of {M_PER_CLASS_RULES}, got {rule!r}")
        labels = _class_ids(labels, level)
        self.rule = rule
        self.classes_per_batch = _check_pk(batch_size, samples_per_class)
        self.samples_per_class = int(samples_per_class)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.classes, self._inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        self._inverse = self._inverse.reshape(-1)
        self._counts = counts
        self._groups = counts // self.samples_per_class
        if int((self._groups > 0).sum()) < self.classes_per_batch:
            raise ValueError(
                f"no batch of {self.classes_per_batch} classes x {samples_per_class} images can be formed: "
                f"only {int((self._groups > 0).sum())} classes have >= {samples_per_class} images; lower "
                "batch_size (fewer classes per batch) or samples_per_class"
            )
        self._fixed_length = max_disjoint_batches(self._groups, self.classes_per_batch)
        self._starts = [0]  # first step of each epoch computed so far
        self._cache: tuple[int, np.ndarray] | None = None

    def _class_order(self, epoch: int) -> np.ndarray:
        rng = streams.generator(self.seed, streams.Stream.EPOCH_CLASSES, epoch)
        return rng.permutation(len(self.classes))

    def _length(self, epoch: int) -> int:
        if self.rule == "fixed":
            return self._fixed_length
        return _official_schedule(self._groups[self._class_order(epoch)], self.classes_per_batch)[1]

    @property
    def epoch_length(self) -> int:
        """Batches in epoch 0 (every epoch with ``rule="fixed"``)."""
        return self._length(0) if self.rule == "official" else self._fixed_length

    def epoch_start(self, epoch: int) -> int:
        """The first step of ``epoch`` (= the number of steps of epochs ``0 .. epoch - 1``)."""
        epoch = _index("epoch", epoch)
        if self.rule == "fixed":
            return epoch * self._fixed_length
        while len(self._starts) <= epoch:
            self._starts.append(self._starts[-1] + self._length(len(self._starts) - 1))
        return self._starts[epoch]

    def epoch_of(self, step: int) -> tuple[int, int]:
        """``(epoch, position in the epoch)`` of ``step``."""
        step = _index("step", step)
        if self.rule == "fixed":
            return divmod(step, self._fixed_length)
        while self.epoch_start(len(self._starts) - 1) <= step:
            self.epoch_start(len(self._starts))
        epoch = int(np.searchsorted(self._starts, step, side="right")) - 1
        return epoch, step - self._starts[epoch]

    def epoch(self, epoch: int) -> np.ndarray:
        """``[batches in the epoch, batch_size]`` dataset indices of every batch of ``epoch``."""
        epoch = _index("epoch", epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        m, p = self.samples_per_class, self.classes_per_batch
        n = len(self._inverse)
        ties = streams.generator(self.seed, streams.Stream.EPOCH_ITEMS, epoch).random(n)
        order = np.lexsort((ties, self._inverse))
        cls = self._inverse[order]  # images class by class, random order inside a class
        starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
        class_order = self._class_order(epoch)
        if self.rule == "official":
            members = [order[starts[c] : starts[c] + self._counts[c]] for c in class_order]
            batches = official_m_per_class_batches(members, p, m)
        else:
            t = self._fixed_length
            group = (np.arange(n) - starts[cls]) // m
            keep = group < np.minimum(self._groups, t)[cls]
            class_rank = np.argsort(class_order)
            kept = order[keep]
            rows = kept[np.lexsort((group[keep], class_rank[cls[keep]]))].reshape(-1, m)[: p * t]
            batches = rows.reshape(p, t, m).transpose(1, 0, 2).reshape(t, p * m)
        rng = streams.generator(self.seed, streams.Stream.EPOCH_BATCHES, epoch)
        batches = batches[rng.permutation(len(batches))]
        self._cache = (epoch, batches)
        return batches

    def indices(self, step: int) -> np.ndarray:
        """``[batch_size]`` dataset indices of the batch of ``step``."""
        epoch, i = self.epoch_of(step)
        return self.epoch(epoch)[i]


class HierarchicalPairsSampler:
    """Epochs of every pair of super-classes x ``batches_per_super_tuple`` batches, shuffled.

    The hierarchical sampler of ROADMAP (``elias-ramzi/ROADMAP:roadmap/samplers/hierarchical_sampler.py``)
    and of SupRank (``elias-ramzi/SupRank:suprank/datasets/samplers/hierarchical_sampler.py``,
    a subclass of pytorch-metric-learning's
    ``KevinMusgrave/pytorch-metric-learning:src/pytorch_metric_learning/samplers/hierarchical_sampler.py``,
    where the count per tuple is called ``batches_per_super_tuple``: SupRank SOP 5):
    an epoch holds ``batches_per_super_tuple`` batches for each of the ``C(S, n)`` tuples of
    ``n = super_classes_per_batch`` distinct super-classes (SOP: ``S = 12``, ``n = 2``: 66
    pairs), in a random order, so ``epoch_length = C(S, n) * batches_per_super_tuple`` (SOP with
    10 per pair: 660). A batch gives each of its super-classes ``batch_size / n`` items:
    ``batch_size / (n K)`` distinct fine classes of that super-class, drawn at random, x
    ``K = samples_per_class`` items each (distinct items when the class has ``K``).

    Deterministic: the order of epoch ``e`` comes from ``(seed, e)``, the classes and items of
    step ``t`` from ``(seed, t)``. The batch is ordered super-class by super-class, class by
    class (the official code shuffles it; no batch loss depends on the order).

    Differences from the official samplers, for a fixed batch shape: a super-class with fewer
    fine classes than its share repeats classes (the official batch is then smaller), and a
    class with fewer than ``K`` items repeats items (as ROADMAP's and pytorch-metric-learning's
    ``safe_random_choice``; an older pytorch-metric-learning release took its ``n < K`` items
    once and filled the rest with further classes).

    Args:
      labels: ``[N, L]`` label paths.
      batch_size: B, a multiple of ``super_classes_per_batch * samples_per_class``.
      samples_per_class: K (>= 2).
      batches_per_super_tuple: batches per tuple of super-classes per epoch (SupRank's name;
        ROADMAP calls it ``batches_per_super_pair``): ROADMAP SOP 10, SupRank SOP 5.
      super_classes_per_batch: n, the official ``nb_categories`` (2).
      fine_level, coarse_level: label-path columns of the classes and of the super-classes.
      seed: base seed.
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        samples_per_class: int,
        batches_per_super_tuple: int,
        super_classes_per_batch: int = 2,
        fine_level: int = 0,
        coarse_level: int = 1,
        seed: int = 0,
    ):
        _check_ints(batch_size=batch_size, samples_per_class=samples_per_class, seed=seed,
                    batches_per_super_tuple=batches_per_super_tuple,
                    super_classes_per_batch=super_classes_per_batch, fine_level=fine_level,
                    coarse_level=coarse_level)
        labels = _check_label_paths(labels, fine_level, coarse_level)
        _check_pk(batch_size, samples_per_class)
        per_super = _check_super_batch(
            batch_size, samples_per_class, super_classes_per_batch, batches_per_super_tuple
        )
        self.super_classes, self._members, self._classes_of = _super_class_groups(
            labels, np.arange(len(labels)), fine_level, coarse_level, super_classes_per_batch
        )
        self.super_tuples = np.array(
            list(itertools.combinations(range(len(self.super_classes)), super_classes_per_batch)), np.int64
        )
        self.batch_size = int(batch_size)
        self.samples_per_class = int(samples_per_class)
        self.batches_per_super_tuple = int(batches_per_super_tuple)
        self.super_classes_per_batch = int(super_classes_per_batch)
        self.classes_per_super_class = self.batch_size // per_super
        self.epoch_length = len(self.super_tuples) * self.batches_per_super_tuple
        self.seed = int(seed)
        self._cache: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            rng = streams.generator(self.seed, streams.Stream.PAIRS_EPOCH, epoch)
            self._cache = (epoch, rng.permutation(self.epoch_length))
        return self._cache[1]

    def super_tuple(self, step: int) -> np.ndarray:
        """Positions (in ``super_classes``) of the super-classes of the batch of ``step``."""
        epoch, i = divmod(_index("step", step), self.epoch_length)
        return self.super_tuples[self._order(epoch)[i] // self.batches_per_super_tuple]

    def epoch_start(self, epoch: int) -> int:
        """The first step of ``epoch``: ``epoch * epoch_length``."""
        return _index("epoch", epoch) * self.epoch_length

    def indices(self, step: int) -> np.ndarray:
        """``[batch_size]`` dataset indices of the batch of ``step``."""
        rng = streams.generator(self.seed, streams.Stream.PAIRS_STEP, _index("step", step))
        out = []
        for s in self.super_tuple(step):
            for c in _take_each(rng, self._classes_of[s], self.classes_per_super_class):
                out.append(_take(rng, self._members[c], self.samples_per_class))
        return np.concatenate(out)


class ReplacementPKSampler:
    """P x K batches with classes and items drawn with replacement (PNP's sampler).

    ``interestingzhuo/PNPloss:datasampler/class_random_sampler.py`` draws, for each of the
    ``P = batch_size / K`` slots of a batch, a class uniformly at random (the same class can
    fill several slots) and then ``K = samples_per_class`` of its images uniformly with
    replacement; an epoch is ``N // batch_size`` such batches (SOP, B = 384: 155). Each step
    here is an independent draw from ``(seed, step)``; the batch is ordered slot by slot.

    Args:
      labels: ``[N]`` class ids (``[N, L]`` label paths: column ``level``).
      batch_size: B, a multiple of ``samples_per_class``.
      samples_per_class: K (>= 2).
      seed: base seed.
      level: the label-path column of the classes.
    """

    def __init__(
        self, labels: np.ndarray, batch_size: int, samples_per_class: int, seed: int = 0, level: int = 0
    ):
        _check_ints(batch_size=batch_size, samples_per_class=samples_per_class, seed=seed, level=level)
        labels = _class_ids(labels, level)
        self.classes_per_batch = _check_pk(batch_size, samples_per_class)
        self.batch_size = int(batch_size)
        self.samples_per_class = int(samples_per_class)
        self.seed = int(seed)
        self.classes, inverse, self._counts = np.unique(labels, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        self._order = np.argsort(inverse, kind="stable")
        self._starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
        self.epoch_length = max(1, len(labels) // self.batch_size)

    def epoch_start(self, epoch: int) -> int:
        """The first step of ``epoch``: ``epoch * epoch_length``."""
        return _index("epoch", epoch) * self.epoch_length

    def indices(self, step: int) -> np.ndarray:
        """``[batch_size]`` dataset indices of the batch of ``step``."""
        rng = streams.generator(self.seed, streams.Stream.REPLACEMENT_STEP, _index("step", step))
        cls = np.repeat(rng.integers(len(self.classes), size=self.classes_per_batch), self.samples_per_class)
        offset = np.floor(rng.random(len(cls)) * self._counts[cls]).astype(np.int64)
        return self._order[self._starts[cls] + offset]


SAMPLERS = ("pk", "m_per_class", "hierarchical", "hierarchical_pairs", "pk_replacement")


def make(
    name: str,
    labels: np.ndarray,
    batch_size: int,
    samples_per_class: int,
    *,
    seed: int = 0,
    super_classes_per_batch: int = 2,
    batches_per_super_tuple: int = 4,
    m_per_class_rule: str = "official",
):
    """The sampler ``name`` (one of ``SAMPLERS``, see the module doc) over ``labels``.

    ``batch_size`` and ``samples_per_class`` are B and K of every sampler; the keyword
    arguments concern some samplers only (``super_classes_per_batch`` and
    ``batches_per_super_tuple``: the hierarchical ones, steps sharing one draw of super-classes
    for ``"hierarchical"``, batches per tuple per epoch for ``"hierarchical_pairs"``;
    ``m_per_class_rule``: ``"m_per_class"``, see :class:`MPerClassEpochSampler`).

    Raises:
      ValueError: an unknown name (listing the valid ones) or invalid sizes.
    """
    if name == "pk":
        return PKSampler(labels, _check_pk(batch_size, samples_per_class), samples_per_class, seed=seed)
    if name == "m_per_class":
        return MPerClassEpochSampler(labels, batch_size, samples_per_class, seed=seed, rule=m_per_class_rule)
    if name == "hierarchical":
        return HierarchicalSampler(
            labels,
            batch_size,
            samples_per_class,
            super_classes_per_batch=super_classes_per_batch,
            batches_per_super_tuple=batches_per_super_tuple,
            seed=seed,
        )
    if name == "hierarchical_pairs":
        return HierarchicalPairsSampler(
            labels,
            batch_size,
            samples_per_class,
            batches_per_super_tuple,
            super_classes_per_batch=super_classes_per_batch,
            seed=seed,
        )
    if name == "pk_replacement":
        return ReplacementPKSampler(labels, batch_size, samples_per_class, seed=seed)
    raise ValueError(f"unknown sampler {name!r}; valid names: {', '.join(SAMPLERS)}")
