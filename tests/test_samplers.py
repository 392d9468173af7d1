"""The official sampler behaviours: epoch-exhaustive M-per-class, all-pairs hierarchical
epochs, with-replacement P x K; each a pure function of (seed, step)."""

import itertools
import math

import ml_collections
import numpy as np
import pytest

from rankax import data
from rankax.data import samplers
from rankax.train import input_pipeline


def _labels(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])


def _paths(classes_per_super, rng):
    rows, fine = [], 0
    for s, n_classes in enumerate(classes_per_super):
        for _ in range(n_classes):
            rows += [[fine, s]] * int(rng.integers(2, 8))
            fine += 1
    return np.asarray(rows)


# ---------------------------------------------------------------- epoch-exhaustive M per class


def _brute_max_batches(groups, p):
    """Largest T for which a flow argument finds T batches of p distinct classes: by trying
    every T and filling greedily from the classes with most groups left (optimal here)."""
    best = 0
    for t in range(1, sum(groups) // p + 1):
        left = list(groups)
        ok = True
        for _ in range(t):
            order = np.argsort(left)[::-1][:p]
            if len(order) < p or left[order[-1]] == 0:
                ok = False
                break
            for c in order:
                left[c] -= 1
        if ok:
            best = t
    return best


def test_max_disjoint_batches_matches_greedy_construction():
    rng = np.random.default_rng(0)
    for _ in range(50):
        groups = rng.integers(0, 6, size=int(rng.integers(2, 9)))
        p = int(rng.integers(1, len(groups) + 1))
        assert samplers.max_disjoint_batches(groups, p) == _brute_max_batches(groups, p)


def _literal_official_loop(class_members, p, m):
    """The official loop (ROADMAP m_per_class_sampler.reshuffle), restated without its
    random draws: class_members are the shuffled image lists in the shuffled class order."""
    left = [list(x) for x in class_members]
    batches = []
    while True:
        batch = []
        for c in range(len(left)):
            if len(left[c]) >= m and len(batch) < p:
                batch.append(left[c][:m])
                left[c] = left[c][m:]
        if len(batch) < p:
            return batches
        batches.append([i for group in batch for i in group])


def test_official_batches_equal_the_literal_loop():
    rng = np.random.default_rng(7)
    for _ in range(60):
        sizes = rng.integers(0, 14, size=int(rng.integers(1, 12)))
        m, p = int(rng.integers(2, 4)), int(rng.integers(1, 5))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        members = [rng.permutation(np.arange(offsets[c], offsets[c + 1])) for c in range(len(sizes))]
        got = samplers.official_m_per_class_batches(members, p, m)
        want = _literal_official_loop(members, p, m)
        assert got.shape == (len(want), p * m)
        np.testing.assert_array_equal(got, np.array(want, np.int64).reshape(len(want), p * m))


@pytest.mark.parametrize("rule", ["official", "fixed"])
@pytest.mark.parametrize("sizes,m,batch", [([5, 6, 7, 3, 9, 4, 12, 2], 2, 6), ([60] * 10 + [7, 3], 4, 16)])
def test_m_per_class_epoch_visits_each_image_at_most_once(sizes, m, batch, rule):
    labels = _labels(sizes)
    s = data.MPerClassEpochSampler(labels, batch, m, seed=3, rule=rule)
    p = batch // m
    groups = np.array(sizes) // m
    if rule == "fixed":
        assert s.epoch_length == _brute_max_batches(list(groups), p)
    for epoch in range(3):
        start, stop = s.epoch_start(epoch), s.epoch_start(epoch + 1)
        assert stop - start == len(s.epoch(epoch)) <= _brute_max_batches(list(groups), p)
        idx = np.stack([s.indices(t) for t in range(start, stop)])
        assert idx.shape == (stop - start, batch)
        assert s.epoch_of(start) == (epoch, 0) and s.epoch_of(stop - 1) == (epoch, stop - start - 1)
        flat = idx.reshape(-1)
        assert len(np.unique(flat)) == len(flat)  # no image twice in an epoch
        blocks = labels[idx].reshape(len(idx), p, m)
        assert np.all(blocks == blocks[..., :1])  # class by class, M of each
        assert all(len(set(b[:, 0])) == p for b in blocks)  # distinct classes per batch
        # remainders dropped: a class never gives more than floor(n_c / M) groups
        per_class = np.bincount(labels[flat], minlength=len(sizes))
        assert np.all(per_class <= groups * m)


def test_m_per_class_official_epoch_lengths_vary_and_stay_below_the_maximum():
    labels = _labels([8, 2, 2, 6, 4, 2])  # M = 2: groups 4, 1, 1, 3, 2, 1
    s = data.MPerClassEpochSampler(labels, 4, 2, seed=0)  # P = 2
    lengths = [s.epoch_start(e + 1) - s.epoch_start(e) for e in range(40)]
    assert len(set(lengths)) > 1  # depends on the class order
    assert max(lengths) <= samplers.max_disjoint_batches([4, 1, 1, 3, 2, 1], 2) == 6
    assert s.epoch_length == lengths[0]
    # resuming anywhere gives the same batches: a fresh sampler asked out of order
    fresh = data.MPerClassEpochSampler(labels, 4, 2, seed=0)
    for step in [sum(lengths[:7]) + 1, 3, sum(lengths[:20])]:
        np.testing.assert_array_equal(fresh.indices(step), s.indices(step))


@pytest.mark.parametrize("rule", ["official", "fixed"])
def test_m_per_class_epochs_differ_and_are_pure(rule):
    labels = _labels([8] * 12)
    a = data.MPerClassEpochSampler(labels, 8, 2, seed=1, rule=rule)
    b = data.MPerClassEpochSampler(labels, 8, 2, seed=1, rule=rule)
    t = a.epoch_length
    assert t == 12  # 12 classes x 4 groups / 4 classes per batch
    # any order of queries gives the same batches (the cache is only memoisation)
    for step in [5, 3 * t + 1, 0, 2 * t - 1, 5]:
        np.testing.assert_array_equal(a.indices(step), b.indices(step))
    assert not np.array_equal(a.epoch(0), a.epoch(1))
    # every image is used each epoch here (no remainders, all classes equal)
    assert set(a.epoch(1).reshape(-1)) == set(range(len(labels)))
    c = data.MPerClassEpochSampler(labels, 8, 2, seed=2, rule=rule)
    assert not np.array_equal(a.epoch(0), c.epoch(0))


def test_m_per_class_validation():
    with pytest.raises(ValueError, match="no batch"):
        data.MPerClassEpochSampler(_labels([3, 1, 1]), 4, 2)
    with pytest.raises(ValueError, match="batch_size"):
        data.MPerClassEpochSampler(_labels([4, 4]), 5, 2)
    with pytest.raises(ValueError, match="samples_per_class"):
        data.MPerClassEpochSampler(_labels([4, 4]), 4, 1)
    with pytest.raises(ValueError, match="rule"):
        data.MPerClassEpochSampler(_labels([4, 4]), 4, 2, rule="greedy")


def test_hierarchical_min_class_size_counts_classes_by_super_class_and_fine_id():
    """Fine id 0 names two classes (one item under super-class 0, six under 1): with
    ``min_class_size=2`` the one-item class is never drawn, so no batch repeats an item."""
    fine = np.array([0] + [0] * 6 + [1] * 6 + [1] * 6)
    coarse = np.array([0] + [1] * 6 + [0] * 6 + [1] * 6)
    s = data.HierarchicalSampler(np.stack([fine, coarse], 1), 4, 2, min_class_size=2, seed=0)
    for step in range(20):
        idx = s.indices(step)
        assert 0 not in idx
        assert len(set(idx.tolist())) == len(idx)


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_empty_labels_are_named_as_such(name):
    with pytest.raises(ValueError, match="non-empty"):
        samplers.make(name, np.zeros((0, 2), np.int64), 8, 2)


# ---------------------------------------------------------------- all-pairs hierarchical epochs


def test_hierarchical_pairs_epoch_covers_every_pair():
    rng = np.random.default_rng(0)
    paths = _paths([3, 4, 2, 5, 3, 6], rng)  # 6 super-classes: C(6, 2) = 15 pairs
    s = data.HierarchicalPairsSampler(paths, 8, 2, batches_per_super_tuple=3, seed=4)
    assert s.epoch_length == math.comb(6, 2) * 3
    for epoch in range(2):
        steps = range(epoch * s.epoch_length, (epoch + 1) * s.epoch_length)
        seen = []
        for t in steps:
            batch = paths[s.indices(t)]
            halves = batch.reshape(2, 4, 2)
            pair = tuple(sorted({int(halves[0, 0, 1]), int(halves[1, 0, 1])}))
            assert all(np.all(h[:, 1] == h[0, 1]) for h in halves)  # one super-class per half
            assert len(pair) == 2
            np.testing.assert_array_equal(s.super_classes[s.super_tuple(t)], pair)
            seen.append(pair)
        counts = {pair: seen.count(pair) for pair in set(seen)}
        assert counts == {pair: 3 for pair in itertools.combinations(range(6), 2)}


def test_hierarchical_pairs_consecutive_batches_shuffled():
    rng = np.random.default_rng(1)
    paths = _paths([4] * 8, rng)  # 28 pairs
    bpp = 5
    s = data.HierarchicalPairsSampler(paths, 8, 2, batches_per_super_tuple=bpp, seed=0)
    t = s.epoch_length
    same = [
        np.array_equal(s.super_tuple(e * t + i), s.super_tuple(e * t + i + 1))
        for e in range(20)
        for i in range(t - 1)
    ]
    # a uniform shuffle of the epoch: P(next batch has the same pair) = (bpp - 1) / (t - 1)
    expected = (bpp - 1) / (t - 1)
    n = len(same)
    assert abs(np.mean(same) - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    # the tuple sampler, by contrast, keeps its super-classes for consecutive steps
    held = data.HierarchicalSampler(paths, 8, 2, batches_per_super_tuple=bpp, seed=0)
    assert np.array_equal(paths[held.indices(0)][::2, 1], paths[held.indices(1)][::2, 1])


def test_hierarchical_pairs_classes_distinct_and_pure():
    rng = np.random.default_rng(2)
    paths = _paths([6, 6, 6], rng)
    a = data.HierarchicalPairsSampler(paths, 12, 2, batches_per_super_tuple=2, seed=7)
    b = data.HierarchicalPairsSampler(paths, 12, 2, batches_per_super_tuple=2, seed=7)
    for step in [9, 0, 4, 9, 17]:
        np.testing.assert_array_equal(a.indices(step), b.indices(step))
        fine = paths[a.indices(step), 0].reshape(6, 2)
        assert np.all(fine == fine[:, :1]) and len(set(fine[:, 0])) == 6  # 3 classes per super
    other = data.HierarchicalPairsSampler(paths, 12, 2, batches_per_super_tuple=2, seed=8)
    assert any(not np.array_equal(a.indices(t), other.indices(t)) for t in range(6))
    with pytest.raises(ValueError, match="batches_per_super_tuple"):
        data.HierarchicalPairsSampler(paths, 12, 2, batches_per_super_tuple=0)
    with pytest.raises(ValueError, match="super_classes_per_batch"):
        data.HierarchicalPairsSampler(paths, 24, 2, batches_per_super_tuple=1, super_classes_per_batch=4)


@pytest.mark.parametrize("kind", ["tuples", "pairs"])
def test_a_small_super_class_puts_each_of_its_classes_in_every_batch(kind):
    # Super-class 0 has 2 fine classes for a share of 3: the official sampler includes both
    # (in a smaller batch); rankax includes both and draws the third place again.
    rng = np.random.default_rng(3)
    paths = _paths([2, 5], rng)
    if kind == "pairs":
        s = data.HierarchicalPairsSampler(paths, 12, 2, batches_per_super_tuple=1, seed=1)
    else:
        s = data.HierarchicalSampler(paths, 12, 2, batches_per_super_tuple=1, seed=1)
    small = set(paths[paths[:, 1] == 0, 0].tolist())
    for step in range(50):
        batch = paths[s.indices(step)]
        assert len(batch) == 12
        assert set(batch[batch[:, 1] == 0, 0].tolist()) == small, step


# ---------------------------------------------------------------- with-replacement P x K


def test_replacement_pk_statistics():
    sizes = [3, 5, 8, 4, 6, 2, 7, 5]
    labels = _labels(sizes)
    c, k, p = len(sizes), 4, 6
    s = data.ReplacementPKSampler(labels, p * k, k, seed=0)
    assert s.epoch_length == len(labels) // (p * k)
    steps = 4000
    class_counts = np.zeros(c)
    repeated_class = 0
    repeated_item = 0
    item_counts = np.zeros(len(labels))
    slots = 0
    for t in range(steps):
        idx = s.indices(t).reshape(p, k)
        lab = labels[idx]
        assert np.all(lab == lab[:, :1])
        class_counts += np.bincount(lab[:, 0], minlength=c)
        repeated_class += len(set(lab[:, 0])) < p
        for row in idx:
            if labels[row[0]] == 2:  # the class of 8 images
                slots += 1
                repeated_item += len(set(row)) < k
        np.add.at(item_counts, idx.reshape(-1), 1)
    # classes uniform: each slot picks one of c classes with probability 1 / c
    n = steps * p
    assert np.all(np.abs(class_counts / n - 1 / c) < 4 * math.sqrt((1 / c) * (1 - 1 / c) / n))
    # P(some class twice among p draws with replacement) = 1 - prod_{i<p} (1 - i / c)
    expect = 1 - np.prod([1 - i / c for i in range(p)])
    assert abs(repeated_class / steps - expect) < 4 * math.sqrt(expect * (1 - expect) / steps)
    # items with replacement: P(a repeat among k draws from 8) = 1 - prod_{i<k} (1 - i / 8)
    expect = 1 - np.prod([1 - i / 8 for i in range(k)])
    assert abs(repeated_item / slots - expect) < 4 * math.sqrt(expect * (1 - expect) / slots)
    # an image's expected count = (slot count of its class) * k / n_c, uniform within a class
    per_item = item_counts / (class_counts[labels] * k / np.array(sizes)[labels])
    assert np.all(np.abs(per_item - 1) < 0.15)


def test_replacement_pk_pure():
    labels = _labels([4, 4, 4])
    a = data.ReplacementPKSampler(labels, 4, 2, seed=5)
    np.testing.assert_array_equal(a.indices(11), data.ReplacementPKSampler(labels, 4, 2, seed=5).indices(11))
    other = data.ReplacementPKSampler(labels, 4, 2, seed=6)
    assert any(not np.array_equal(a.indices(t), other.indices(t)) for t in range(4))


# ---------------------------------------------------------------- selection by name


def test_make_sampler_selects_every_name():
    rng = np.random.default_rng(3)
    paths = _paths([4, 5, 6], rng)

    class _Train:
        labels = paths

    class _Dataset:
        train = _Train()

    expected = {
        "pk": data.PKSampler,
        "m_per_class": data.MPerClassEpochSampler,
        "hierarchical": data.HierarchicalSampler,
        "hierarchical_pairs": data.HierarchicalPairsSampler,
        "pk_replacement": data.ReplacementPKSampler,
    }
    assert set(expected) == set(data.SAMPLERS)
    for name, cls in expected.items():
        config = ml_collections.ConfigDict(
            {
                "seed": 0,
                "batch": {
                    "sampler": name,
                    "classes_per_batch": 2,
                    "samples_per_class": 2,
                    "super_classes_per_batch": 2,
                    "batches_per_super_tuple": 4,
                },
            }
        )
        s = input_pipeline.make_sampler(config, _Dataset())
        assert isinstance(s, cls) and s.batch_size == 4 and s.epoch_length >= 1
        assert s.indices(s.epoch_length + 1).shape == (4,)
    config.batch.sampler = "hierarchical_pairs"
    assert input_pipeline.make_sampler(config, _Dataset()).epoch_length == 3 * 4  # C(3, 2) pairs x 4
    config.batch.sampler = "nope"
    with pytest.raises(ValueError, match="config.batch.sampler"):
        input_pipeline.make_sampler(config, _Dataset())
    config.batch.sampler = "hierarchical_pairs"
    config.batch.batches_per_super_tuple = 0
    with pytest.raises(ValueError, match="batches_per_super_tuple"):
        input_pipeline.make_sampler(config, _Dataset())


@pytest.mark.parametrize("name", ["m_per_class", "pk_replacement"])
def test_training_runs_with_new_samplers(tmp_path, name):
    """The training loop accepts the new sampler names (digits, a few steps)."""
    from configs import digits
    from rankax.train import train_lib

    c = digits.get_config()
    c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 3, 3, 3, 1
    c.eval_baselines = False
    c.batch.sampler = name
    c.batch.classes_per_batch, c.batch.samples_per_class = 5, 4
    c.model.hidden, c.model.embedding_dim = (16,), 8
    final = train_lib.train_and_evaluate(c, str(tmp_path))
    assert np.isfinite(final["map@r"])


def test_host_streams_never_share_a_generator():
    """Every (seed, stream, words) of a run gets its own generator: the first draws of all the
    combinations below are distinct. The grid holds the collisions a plain
    ``default_rng([seed, ...])`` list makes: trailing zero words (``(s, 0)`` = ``(s, 0, 0)``), a
    seed equal to another stream's number, a step equal to a position."""
    from rankax.data import streams

    words = [(), (0,), (0, 0), (1,), (0, 1), (1, 0), (6,), (6, 0), (2**32 + 1,)]
    seen = {}
    for seed, stream, w in itertools.product([0, 1, 6, 2**32], streams.Stream, words):
        key = tuple(streams.generator(seed, stream, *w).integers(0, 2**63, size=2))
        assert key not in seen, f"{(seed, stream, w)} repeats {seen[key]}"
        seen[key] = (seed, stream, w)
    # and each is a pure function of its arguments
    np.testing.assert_array_equal(
        streams.generator(3, streams.Stream.AUGMENT, 5, 7).random(4),
        streams.generator(3, streams.Stream.AUGMENT, 5, 7).random(4),
    )


def test_sampler_and_augmentation_draws_are_not_the_same_stream():
    """A PK batch's draws and an image's augmentation draws at the same seed and step come from
    different generators (with seed 0 they once coincided: ``[step, p]`` against ``[0, step]``)."""
    from rankax.data import loader, streams

    for seed in (0, 1):
        for step in range(4):
            pk = streams.generator(seed, streams.Stream.PK_STEP, step).random(8)
            for p in range(4):
                aug = streams.generator(loader.step_seed(seed, step), streams.Stream.AUGMENT, p).random(8)
                assert not np.allclose(pk, aug)
