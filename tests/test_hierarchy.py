"""Hierarchical relevance from label paths, against loops written from SupRank's rules."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rankax import hierarchy

# Column 0 = finest level. Class ids are unique within each level.
PATHS = np.array(
    [
        [0, 0, 0],
        [0, 0, 0],
        [1, 0, 0],
        [2, 1, 0],
        [3, 1, 0],
        [3, 1, 0],
        [3, 1, 0],
        [4, 2, 1],
        [5, 3, 1],
    ]
)


def ref_levels(p, q):
    """Depth of the lowest common ancestor: agreeing levels counted from the coarsest."""
    t = 0
    for level in reversed(range(len(p))):
        if p[level] != q[level]:
            break
        t += 1
    return t


def ref_pop(query, items, alpha=1.0, valid=None):
    num_levels = len(query)
    t = [ref_levels(query, it) for it in items]
    valid = [True] * len(items) if valid is None else valid
    rel = []
    for j, tj in enumerate(t):
        if not valid[j]:
            rel.append(0.0)
            continue
        count = sum(1 for i, ti in enumerate(t) if ti == tj and valid[i])
        rel.append((tj / (num_levels - 1)) ** alpha / count)
    return rel


def test_shared_levels_is_lca_depth():
    got = np.asarray(hierarchy.shared_levels(PATHS, PATHS))
    expected = [[ref_levels(p, q) for q in PATHS] for p in PATHS]
    np.testing.assert_array_equal(got, expected)
    # Child ids reused under different parents do not count as shared.
    local = np.array([[0, 0], [0, 1]])
    np.testing.assert_array_equal(hierarchy.shared_levels(local, local), [[2, 0], [0, 2]])


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_pop_relevance_matches_rule(alpha):
    got = np.asarray(hierarchy.path_relevance(PATHS, PATHS, alpha=alpha))
    expected = [ref_pop(p, PATHS, alpha) for p in PATHS]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.dtype == np.float32 and got.shape == (len(PATHS), len(PATHS))


@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.5])
def test_pop_relevance_with_where_and_levels_rule(alpha):
    where = ~np.eye(len(PATHS), dtype=bool)
    got = np.asarray(hierarchy.path_relevance(PATHS, PATHS, where=where, alpha=alpha))
    expected = [ref_pop(p, PATHS, alpha, valid=list(where[i])) for i, p in enumerate(PATHS)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    got = np.asarray(hierarchy.path_relevance(PATHS[:2], PATHS, rule="levels", alpha=alpha))
    expected = [[(ref_levels(p, q) / 3) ** alpha for q in PATHS] for p in PATHS[:2]]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("include_self", [False, True])
def test_hierarchical_relevance_counts_the_query_as_batch_loss_lists_do(include_self):
    """``batch_loss`` passes the whole batch as items; the value must be the pop relevance of
    the query's actual list (without or with itself)."""
    got = np.asarray(hierarchy.hierarchical_relevance(PATHS, PATHS, include_self=include_self))
    n = len(PATHS)
    for i in range(n):
        valid = [include_self or j != i for j in range(n)]
        expected = ref_pop(PATHS[i], PATHS, valid=valid)
        keep = np.array(valid)
        np.testing.assert_allclose(got[i][keep], np.array(expected)[keep], rtol=1e-6)
        if not include_self:
            # The query's own entry: the share of its identical copies, or 0 when it has none.
            copies = [j for j in range(n) if j != i and (PATHS[j] == PATHS[i]).all()]
            assert got[i][i] == (expected[copies[0]] if copies else 0.0)


def test_flat_labels_one_level():
    """L = 1: the class weight 1 is shared by the items of the class ("pop"), or 1 ("levels")."""
    flat = np.array([[0], [0], [1]])
    same = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], np.float32)
    np.testing.assert_allclose(hierarchy.path_relevance(flat, flat), same / same.sum(1, keepdims=True))
    np.testing.assert_allclose(hierarchy.path_relevance(flat, flat, rule="levels"), same)


def test_bad_paths_name_the_argument():
    with pytest.raises(ValueError, match="query_paths"):
        hierarchy.path_relevance(PATHS[0], PATHS)
    with pytest.raises(ValueError, match="item_paths"):
        hierarchy.shared_levels(PATHS, PATHS[:, 0])
    with pytest.raises(ValueError, match="levels"):
        hierarchy.path_relevance(PATHS, PATHS[:, :2])
    with pytest.raises(TypeError, match="query_paths"):
        hierarchy.path_relevance(PATHS.astype(np.float32), PATHS)
    with pytest.raises(ValueError, match="rule"):
        hierarchy.path_relevance(PATHS, PATHS, rule="lca")


def test_bad_levels_counts_and_masks_name_the_argument():
    """The helpers on shared-level counts name the function and the argument: float or
    out-of-range levels (a level above L would give a relevance above 1), counts without
    L + 1 columns, a mask of another shape or not boolean, and mismatched host paths."""
    t = np.array([[0, 1, 2, 2]])
    with pytest.raises(TypeError, match="relevance_from_levels: levels must be integer"):
        hierarchy.relevance_from_levels(t.astype(np.float32), 2)
    for bad in (5, -1):
        with pytest.raises(ValueError, match=r"relevance_from_levels: levels must lie in 0..L = 0..2"):
            hierarchy.relevance_from_levels(np.array([[0, 1, 2, bad]]), 2, rule="levels")
    with pytest.raises(ValueError, match="relevance_from_levels: where must have shape"):
        hierarchy.relevance_from_levels(t, 2, where=np.ones(2, bool))
    with pytest.raises(ValueError, match=r"pop_relevance_from_counts: counts must be \[\.\.\., L \+ 1\]"):
        hierarchy.pop_relevance_from_counts(t, np.array([[3, 1]]), num_levels=2)
    shared = np.array([[1, 1, 2]])  # one count row for every list broadcasts, as numpy does
    two = np.stack([t[0], t[0]])
    np.testing.assert_array_equal(hierarchy.pop_relevance_from_counts(two, shared, 2),
                                  hierarchy.pop_relevance_from_counts(two, shared[[0, 0]], 2))
    with pytest.raises(ValueError, match="pop_relevance_from_counts: alpha must be"):
        hierarchy.pop_relevance_from_counts(t, np.array([[1, 1, 2]]), num_levels=2, alpha=0.0)
    with pytest.raises(TypeError, match="path_relevance: where must be a boolean mask"):
        hierarchy.path_relevance(PATHS, PATHS, where=np.full((len(PATHS),) * 2, 0.5))
    with pytest.raises(ValueError, match="level_counts: query_paths and population_paths must have the same"):
        hierarchy.level_counts(PATHS, PATHS[:, :2])
    with pytest.raises(ValueError, match=r"level_counts: query_paths must be \[Q, L\]"):
        hierarchy.level_counts(PATHS[:, 0], PATHS)
    with pytest.raises(TypeError, match="level_counts: population_paths must be integer"):
        hierarchy.level_counts(PATHS, PATHS.astype(np.float32))


def _unique_rows(rows):
    """numpy's own row numbering: ids in lexicographic order of the distinct rows."""
    distinct, ids = np.unique(rows, axis=0, return_inverse=True)
    return ids.reshape(-1), len(distinct)


ROW_CASES = {
    "small ids": np.random.default_rng(0).integers(0, 4, (200, 3)),
    "negative ids": np.random.default_rng(1).integers(-50, 50, (200, 2)),
    "int8 range wider than int8": np.random.default_rng(2).integers(-128, 128, (300, 2)).astype(np.int8),
    "uint64 beyond int64": np.array([[2**64 - 1, 3], [0, 3], [2**63, 3], [2**64 - 1, 3], [0, 2]], np.uint64),
    "int64 extremes": np.array([[np.iinfo(np.int64).min, 1], [np.iinfo(np.int64).max, 1],
                                [0, 1], [np.iinfo(np.int64).min, 1]], np.int64),
    "ranges whose product overflows": np.random.default_rng(3).integers(0, 2**20, (500, 8)) * 4099,
    "one column": np.random.default_rng(4).integers(0, 9, (40, 1)),
    "one row": np.array([[7, -3, 2]]),
    "constant": np.full((6, 3), 5),
}


@pytest.mark.parametrize("name", list(ROW_CASES))
def test_row_ids_number_rows_as_numpy_unique_does(name):
    rows = ROW_CASES[name]
    ids, count = hierarchy.row_ids(rows)
    want_ids, want_count = _unique_rows(rows)
    assert ids.dtype == np.int64 and count == want_count
    np.testing.assert_array_equal(ids, want_ids)


def test_row_ids_of_no_rows_and_bad_input():
    ids, count = hierarchy.row_ids(np.zeros((0, 3), np.int64))
    assert ids.shape == (0,) and count == 0
    with pytest.raises(ValueError, match=r"row_ids: rows must be an integer \[N, C\] array"):
        hierarchy.row_ids(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"row_ids: rows must be an integer \[N, C\] array"):
        hierarchy.row_ids(np.zeros(4, np.int64))


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.int16])
def test_level_counts_with_ids_repeated_across_levels(dtype):
    """Fine ids reused under different parents (not unique per level): levels are counted
    from the coarsest, as the lowest common ancestor's depth."""
    rng = np.random.default_rng(7)
    paths = rng.integers(0, 3, (80, 3)).astype(dtype)
    queries = np.concatenate([paths[:9], rng.integers(0, 4, (3, 3)).astype(dtype)])
    got = hierarchy.level_counts(queries, paths)
    for qi, qp in enumerate(queries):
        want = np.bincount([ref_levels(qp, p) for p in paths], minlength=4)
        np.testing.assert_array_equal(got[qi], want)


def test_errors_name_the_function_called():
    """path_relevance and hierarchical_relevance check their own arguments: the errors named
    shared_levels / relevance_from_levels, or no function at all (hierarchical_relevance's alpha)."""
    p = np.array([[0, 0], [1, 0]])
    cases = [
        (lambda: hierarchy.hierarchical_relevance(p, p, alpha=0), "hierarchical_relevance: alpha must be"),
        (lambda: hierarchy.hierarchical_relevance(p, p, rule="x"), "hierarchical_relevance: rule must be"),
        (lambda: hierarchy.hierarchical_relevance(p.astype(float), p), "hierarchical_relevance: query_paths"),
        (lambda: hierarchy.path_relevance(p.astype(float), p), "path_relevance: query_paths must be integer"),
        (lambda: hierarchy.path_relevance(p, p, rule="x"), "path_relevance: rule must be"),
        (lambda: hierarchy.path_relevance(p, p, alpha=-1.0), "path_relevance: alpha must be"),
    ]
    for call, message in cases:
        with pytest.raises((ValueError, TypeError), match="^" + re.escape(message)):
            call()
