"""List-level metrics against numpy references written from the formulas, and sklearn.

The references below sort or loop; they share no code with rankax. They are also used by
tests/test_retrieval.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from rankax import metrics

# ----------------------------------------------------------------------------- references


def np_ranks(s):
    """rank(j) = number of items scoring >= s_j (itself included): H(0) = 1."""
    s = np.asarray(s, np.float64)
    return (s[None, :] >= s[:, None]).sum(1)


def np_ap(s, y):
    pos = y > 0
    rank = np_ranks(s)
    rank_pos = np.array([np.sum(pos & (s >= s[k])) for k in range(len(s))])
    return np.sum(np.where(pos, rank_pos / rank, 0.0)) / pos.sum()


def np_map_at_r(s, y):
    pos = y > 0
    r = pos.sum()
    rank = np_ranks(s)
    rank_pos = np.array([np.sum(pos & (s >= s[k])) for k in range(len(s))])
    return np.sum(np.where(pos & (rank <= r), rank_pos / rank, 0.0)) / r


def np_r_precision(s, y):
    pos = y > 0
    return np.sum(pos & (np_ranks(s) <= pos.sum())) / pos.sum()


def np_recall(s, y, k):
    pos = y > 0
    return float(np.any(pos & (np_ranks(s) <= k)))


def np_precision(s, y, k):
    return np.sum((y > 0) & (np_ranks(s) <= k)) / k


def np_ndcg(s, y, k=None):
    """Gain 2^rel - 1, discount 1/log2(1 + rank), ideal = relevance sorted descending."""
    y = np.asarray(y, np.float64)
    rank = np_ranks(s)
    keep = (y > 0) if k is None else (y > 0) & (rank <= k)
    dcg = np.sum(np.where(keep, (2.0**y - 1) / np.log2(1 + rank), 0.0))
    ideal = np.sort(y)[::-1]
    ideal = ideal if k is None else ideal[:k]
    idcg = np.sum((2.0**ideal - 1) / np.log2(2 + np.arange(len(ideal))))
    return dcg / idcg


def np_hap(s, rel):
    rel = np.asarray(rel, np.float64)
    pos = rel > 0
    rank = np_ranks(s)
    total = 0.0
    for k in np.flatnonzero(pos):
        h = rel[k] + sum(min(rel[j], rel[k]) for j in np.flatnonzero(pos) if j != k and s[j] >= s[k])
        total += h / rank[k]
    return total / rel[pos].sum()


def np_asi(s, y):
    """(1/R) sum_{n<=R} (1/n) sum_{levels v>0} min(#retrieved of v in top n, #ideal of v in top n)."""
    y = np.asarray(y)
    rank = np_ranks(s)
    r = int(np.sum(y > 0))
    ideal = np.sort(y)[::-1]
    total = 0.0
    for n in range(1, r + 1):
        got = y[rank <= n]
        want = ideal[:n]
        inter = sum(min(np.sum(got == v), np.sum(want == v)) for v in np.unique(y[y > 0]))
        total += inter / n
    return total / r


# ----------------------------------------------------------------------------- data


def random_lists(seed, num_lists=40, n=30, levels=1, tie_values=6):
    """Scores drawn from a few values (many ties) and labels in 0..levels."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, tie_values, size=(num_lists, n)).astype(np.float32) / tie_values
    y = rng.integers(0, levels + 1, size=(num_lists, n)).astype(np.float32)
    y[0] = 0.0  # one list without any relevant item
    y[1, 0] = levels  # first item relevant, the rest random
    return s, y


def per_list(ref, s, y, **kw):
    return np.array([ref(a, b, **kw) if np.any(b > 0) else 0.0 for a, b in zip(s, y, strict=True)])


BINARY = [
    (metrics.average_precision, np_ap, {}),
    (metrics.map_at_r, np_map_at_r, {}),
    (metrics.r_precision, np_r_precision, {}),
    (metrics.recall_at_k, np_recall, {"k": 1}),
    (metrics.recall_at_k, np_recall, {"k": 4}),
    (metrics.precision_at_k, np_precision, {"k": 1}),
    (metrics.precision_at_k, np_precision, {"k": 5}),
]
GRADED = [
    (metrics.ndcg, np_ndcg, {}),
    (metrics.ndcg, np_ndcg, {"k": 5}),
    (metrics.hap, np_hap, {}),
    (metrics.asi, np_asi, {}),
]


@pytest.mark.parametrize("fn,ref,kw", BINARY + GRADED, ids=lambda v: getattr(v, "__name__", str(v)))
def test_metric_matches_reference_with_ties(fn, ref, kw):
    s, y = random_lists(seed=1, levels=3)  # graded labels; binary metrics only see y > 0
    got = np.asarray(fn(s, y, reduce_fn=None, **kw))
    want = per_list(ref, s, y, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn,ref,kw", BINARY + GRADED, ids=lambda v: getattr(v, "__name__", str(v)))
def test_float64_scores_are_ranked_and_scored_in_float64(fn, ref, kw):
    # Integer labels (held as float32 by the checks) must not pull the result down to float32:
    # at 1e-12 a float32 ratio of ranks (~6e-8 relative error) fails.
    s, y = random_lists(seed=3, levels=3)
    with jax.enable_x64(True):
        got = fn(jnp.asarray(s, jnp.float64), jnp.asarray(y, jnp.int32), reduce_fn=None, **kw)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), per_list(ref, s.astype(np.float64), y, **kw), rtol=1e-12)


@pytest.mark.parametrize("fn,ref", [(metrics.map_at_r, np_map_at_r), (metrics.asi, np_asi)])
def test_mean_is_over_lists_with_a_positive(fn, ref):
    s, y = random_lists(seed=2, levels=2)
    has = np.any(y > 0, axis=1)
    assert not has.all()
    want = per_list(ref, s, y)[has].mean()
    np.testing.assert_allclose(float(fn(s, y)), want, rtol=1e-5)


def test_average_precision_equals_sklearn_per_list():
    s, y = random_lists(seed=7, num_lists=60, n=25, tie_values=4)
    got = np.asarray(metrics.average_precision(s, y, reduce_fn=None))
    for i in range(len(s)):
        if y[i].any():
            assert got[i] == pytest.approx(average_precision_score(y[i] > 0, s[i]), abs=1e-6)
        else:
            assert got[i] == 0.0


@pytest.mark.parametrize("fn,ref,kw", BINARY + GRADED, ids=lambda v: getattr(v, "__name__", str(v)))
def test_where_drops_items_and_capacity_is_exact(fn, ref, kw):
    s, y = random_lists(seed=3, levels=2)
    rng = np.random.default_rng(11)
    where = rng.random(s.shape) > 0.3
    got = np.asarray(fn(s, y, where=where, reduce_fn=None, **kw))
    want = per_list(ref, [a[w] for a, w in zip(s, where, strict=True)],
                    [b[w] for b, w in zip(y, where, strict=True)], **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # A capacity below the largest number of positives must not change anything.
    small = np.asarray(fn(s, y, where=where, reduce_fn=None, max_positives=2, **kw))
    np.testing.assert_allclose(small, got, rtol=1e-6, atol=1e-7)


def test_lists_without_positive_are_excluded_from_mean():
    s = np.array([[0.9, 0.1, 0.5], [0.3, 0.2, 0.1]], np.float32)
    y = np.array([[0, 1, 0], [0, 0, 0]], np.float32)
    # Only list 0 counts: its positive is ranked 3rd -> AP = 1/3.
    assert float(metrics.average_precision(s, y)) == pytest.approx(1 / 3)
    assert float(metrics.ndcg(s, y)) == pytest.approx(1 / np.log2(4))
    assert float(metrics.average_precision(s, y, reduce_fn=jnp.sum)) == pytest.approx(1 / 3)


def test_hand_worked_graded_list():
    # scores 0.9 0.5 0.5 0.1 0.3 ; relevance 1 0 1 0 2  ->  ranks (H(0)=1) 1 3 3 5 4
    s = np.array([0.9, 0.5, 0.5, 0.1, 0.3], np.float32)
    y = np.array([1, 0, 1, 0, 2], np.float32)
    # H-AP: (1/1 + (1+1)/3 + (2+1+1)/4) / (1+1+2) = (1 + 2/3 + 1) / 4
    assert float(metrics.hap(s, y)) == pytest.approx((1 + 2 / 3 + 1) / 4, rel=1e-6)
    # ASI, R = 3: depth 1 {1} vs {2}: 0; depth 2 {1} vs {2,1}: 1/2; depth 3 {1,1} vs {2,1,1}: 2/3
    assert float(metrics.asi(s, y)) == pytest.approx((0 + 1 / 2 + 2 / 3) / 3, rel=1e-6)
    # P@3: only the item at 0.9 has rank <= 3 (the tied pair both take place 3)... and the
    # positive at 0.5 has rank 3 -> 2 hits.
    assert float(metrics.precision_at_k(s, y, k=3)) == pytest.approx(2 / 3)


def test_binary_hap_is_ap_and_metrics_jit():
    s, y = random_lists(seed=5)
    ap = metrics.average_precision(s, y, reduce_fn=None)
    hap = jax.jit(lambda a, b: metrics.hap(a, b, reduce_fn=None))(s, y)
    np.testing.assert_allclose(hap, ap, rtol=1e-6)


@pytest.mark.parametrize("fn", [metrics.precision_at_k, metrics.ndcg])
def test_bad_k_raises(fn):
    with pytest.raises(ValueError, match="k must be"):
        fn(np.zeros(3), np.ones(3), k=0)


def test_shape_mismatch_names_labels():
    with pytest.raises(ValueError, match="labels"):
        metrics.asi(np.zeros((2, 3)), np.ones((2, 4)))


@pytest.mark.parametrize("r", [100, 1000, 4000])
def test_graded_metrics_of_a_perfect_ranking_stay_within_one(r):
    """A perfect ranking has NDCG = ASI = 1 (bounds of the definitions); float32 rounding of
    the DCG sums and of the digamma harmonic numbers must not put them above 1 (ASI drifted
    to 1 + 2.4e-7 at R = 100)."""
    rng = np.random.default_rng(r)
    labels = np.concatenate([np.sort(rng.integers(1, 4, r))[::-1], np.zeros(50)]).astype(np.float32)
    scores = np.linspace(1.0, -1.0, labels.size).astype(np.float32)  # relevance never increases
    for fn in (metrics.ndcg, metrics.asi):
        value = float(fn(scores[None], labels[None]))
        assert value <= 1.0 and value == pytest.approx(1.0, abs=2e-6), fn.__name__


def test_rank_helpers_are_exported_and_recall_is_float():
    """evaluation.md points at the ``*_from_ranks`` helpers: they are public, and R@k of integer
    ranks is a float fraction like the other metrics."""
    for name in ("map_at_r_from_ranks", "r_precision_from_ranks", "recall_at_k_from_ranks",
                 "hap_from_ranks", "asi_from_depths", "dcg", "ndcg_gains", "ndcg_from_dcgs"):
        assert name in metrics.__all__, name
    rank = np.array([[1, 4], [3, 5]])
    got = metrics.recall_at_k_from_ranks(rank, np.ones((2, 2), bool), 2)
    assert got.dtype.kind == "f"
    np.testing.assert_array_equal(got, [1.0, 0.0])


@pytest.mark.parametrize("num_pos", [1, 7, 100, 1000])
def test_asi_of_a_perfect_ranking_is_exactly_one(num_pos):
    # Binary and graded: positives first, in decreasing relevance, then the negatives.
    rel = np.r_[np.repeat([3.0, 2.0, 1.0], [num_pos - 2 * (num_pos // 3), num_pos // 3, num_pos // 3]),
                np.zeros(20)]
    s = np.linspace(1.0, -1.0, rel.size, dtype=np.float32)
    assert float(metrics.asi(s, rel)) == 1.0
    assert float(metrics.asi(s, (rel > 0).astype(np.float32))) == 1.0


@pytest.mark.parametrize("num_pos", [1, 7, 1000])
def test_asi_with_every_positive_past_depth_r_is_exactly_zero(num_pos):
    rel = np.r_[np.zeros(num_pos + 3), np.ones(num_pos)]  # the positives after num_pos + 3 negatives
    s = np.linspace(1.0, -1.0, rel.size, dtype=np.float32)
    assert float(metrics.asi(s, rel)) == 0.0


def test_asi_from_depths_with_fewer_slots_than_positives():
    # A truncated neighbour list: R = 6 positives, only 3 slots (the others lie deeper than R).
    # Reference: the first form, (1/R) sum over the listed positives with d <= R of H_R - H_{d-1}.
    def h(n):
        return sum(1.0 / i for i in range(1, n + 1))

    depth = np.array([[1.0, 4.0, 2.0], [2.0, 7.0, 3.0]], np.float32)
    mask = np.array([[True, True, True], [True, True, False]])
    r = 6
    want = [sum(h(r) - h(int(d) - 1) for d, m in zip(row, mrow, strict=True) if m and d <= r) / r
            for row, mrow in zip(depth, mask, strict=True)]
    got = metrics.asi_from_depths(jnp.asarray(depth), jnp.asarray(mask), jnp.asarray([r, r]))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    # No positive: 0.
    assert float(metrics.asi_from_depths(jnp.ones((1, 3)), jnp.zeros((1, 3), bool), jnp.zeros(1))[0]) == 0.0
