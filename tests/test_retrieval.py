"""rankax.retrieval: exact evaluation vs brute-force numpy, ScaNN vs exact, revisited protocol,
evaluators, input errors."""

import importlib.util
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankax import hierarchy, retrieval
from rankax.retrieval import exact, scann_backend

# The numpy references live in test_metrics.py; load them by path (works in any import mode).
_REFS = pathlib.Path(__file__).with_name("test_metrics.py")
_spec = importlib.util.spec_from_file_location("_metric_refs", _REFS)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def integer_data(seed, n=160, d=6, classes=30):
    """Small integer embeddings: dot products are exact, so ties are real ties."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    y[:3] = [1000, 1001, 1002]  # three singleton classes: queries without any positive
    return x, y


def brute_force(queries, qy, gallery, gy, ks, self_excluded):
    """Per-query metrics from the full score matrix with the numpy references."""
    s = queries.astype(np.float64) @ gallery.astype(np.float64).T
    out = {key: [] for key in ["map", "map@r", "r_precision", *[f"recall@{k}" for k in ks]]}
    without = 0
    for i in range(len(queries)):
        keep = np.ones(len(gallery), bool)
        if self_excluded:
            keep[i] = False
        si, yi = s[i, keep], (gy[keep] == qy[i]).astype(float)
        if yi.sum() == 0:
            without += 1
            continue
        out["map"].append(ref.np_ap(si, yi))
        out["map@r"].append(ref.np_map_at_r(si, yi))
        out["r_precision"].append(ref.np_r_precision(si, yi))
        for k in ks:
            out[f"recall@{k}"].append(ref.np_recall(si, yi, k))
    return {key: float(np.mean(v)) for key, v in out.items()}, without


def test_exact_self_excluded_matches_brute_force():
    x, y = integer_data(0)
    ks = (1, 2, 4, 8)
    got = retrieval.evaluate(x, y, ks=ks, block_size=48, gallery_block_size=64)
    want, without = brute_force(x, y, x, y, ks, self_excluded=True)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["num_queries"] == len(x)
    assert got["num_queries_without_positive"] == without >= 3


def test_exact_separate_gallery_matches_brute_force():
    x, y = integer_data(1, n=200)
    q, qy, g, gy = x[:50], y[:50], x[50:], y[50:]
    got = retrieval.evaluate(q, qy, g, gy, ks=(1, 5), block_size=16, gallery_block_size=32)
    want, without = brute_force(q, qy, g, gy, (1, 5), self_excluded=False)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["num_queries_without_positive"] == without


def test_exact_float_embeddings_match_sklearn_ap():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 16)).astype(np.float32)
    y = rng.integers(0, 10, size=120)
    got = retrieval.evaluate(x, y, normalize=True, return_per_query=True)
    from sklearn.metrics import average_precision_score

    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    aps = [average_precision_score(np.delete(y == y[i], i), np.delete(s[i], i)) for i in range(120)]
    np.testing.assert_allclose(got["per_query"]["map"], aps, atol=1e-6)


def np_shared_levels(qp, gp):
    """Levels shared with ``qp``, walking from the coarsest column."""
    t = np.zeros(len(gp), int)
    for j, p in enumerate(gp):
        for lvl in range(len(qp) - 1, -1, -1):
            if p[lvl] != qp[lvl]:
                break
            t[j] += 1
    return t


def np_pop_relevance(qp, gp, keep, alpha=1.0, population=None):
    """SupRank 'pop' relevance from the formula: w_t / #items at level t, counted among the
    list's items (``gp[keep]``) or among the rows of ``population`` (the official evaluation:
    the query set, the query included)."""
    num_levels = qp.shape[0]
    t = np_shared_levels(qp, gp)
    t[~keep] = 0
    counted = t[keep] if population is None else np_shared_levels(qp, population)
    w = (np.arange(num_levels + 1) / max(num_levels - 1, 1)) ** alpha
    count = np.bincount(counted, minlength=num_levels + 1)  # a level nobody holds weighs 0
    rel = np.array([w[tj] / count[tj] if keep[j] and tj and count[tj] else 0.0 for j, tj in enumerate(t)])
    return t, rel


@pytest.mark.parametrize("counts", ["official", "list"])
def test_hierarchical_metrics_match_references(counts):
    rng = np.random.default_rng(3)
    n = 90
    x = rng.integers(-2, 3, size=(n, 5)).astype(np.float32)
    fine = rng.integers(0, 18, size=n)
    paths = np.stack([fine, fine // 6], axis=1)  # [class, super-class], finest first
    paths[0] = [500, 99]  # shares nothing with anybody
    got = retrieval.evaluate(x, paths, ks=(1,), block_size=32, gallery_block_size=32,
                             hierarchy_block_size=16, relevance_counts=counts)
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    want = {"hap": [], "ndcg": [], "asi": []}
    for i in range(n):
        keep = np.arange(n) != i
        t, rel = np_pop_relevance(paths[i], paths, keep, population=paths if counts == "official" else None)
        if not (t > 0).any():
            continue
        si = s[i, keep]
        want["hap"].append(ref.np_hap(si, rel[keep]))
        want["ndcg"].append(ref.np_ndcg(si, t[keep]))
        want["asi"].append(ref.np_asi(si, t[keep]))
    for key, values in want.items():
        assert got[key] == pytest.approx(np.mean(values), rel=1e-5), key
    assert got["num_queries_without_relevant"] == 1
    # Binary metrics use the full path as the class.
    flat_ids = np.unique(paths, axis=0, return_inverse=True)[1].reshape(-1)
    flat = retrieval.evaluate(x, flat_ids, ks=(1,))
    for key in ("recall@1", "map@r", "map", "num_queries_without_positive"):
        assert got[key] == flat[key]


def test_official_relevance_counts_the_query_split_with_a_separate_gallery():
    """With a separate gallery, ``"official"`` shares each level's weight among the query
    split's items at that level (the query included), as HAPPIER's evaluation does;
    ``"list"`` among the gallery's. Three levels, so the weights of the levels matter."""
    rng = np.random.default_rng(5)
    paths = np.stack([rng.integers(0, 12, 70), rng.integers(0, 12, 70) // 4], axis=1)
    paths = np.stack([paths[:, 0] + 100 * paths[:, 1], paths[:, 1], paths[:, 1] // 2], axis=1)
    x = rng.normal(size=(70, 6)).astype(np.float32)
    q, g, qp, gp = x[:30], x[30:], paths[:30], paths[30:]
    s = q.astype(np.float64) @ g.T.astype(np.float64)
    keep = np.ones(len(g), bool)
    for counts, population in (("official", qp), ("list", None)):
        got = retrieval.evaluate(q, qp, g, gp, ks=(1,), relevance_counts=counts)
        want = []
        for i in range(len(q)):
            t, rel = np_pop_relevance(qp[i], gp, keep, population=population)
            if (t > 0).any():
                want.append(ref.np_hap(s[i], rel))
        assert got["hap"] == pytest.approx(np.mean(want), rel=1e-5), counts
    with pytest.raises(ValueError, match="relevance_counts must be one of"):
        retrieval.evaluate(q, qp, g, gp, relevance_counts="gallery")


def test_hap_leaves_out_a_query_whose_relevant_items_weigh_nothing():
    """Separate gallery, official counts: query 0 shares only the coarse level with its gallery
    items and no other query shares that level, so that level weighs 0 / 1 = 0 and its H-AP is
    0 / 0 (NaN in the official code). It is left out of hap's mean (NaN per query) and counted;
    NDCG and ASI, which use the levels, keep it."""
    rng = np.random.default_rng(8)
    qp = np.array([[0, 5], [1, 6], [1, 6], [2, 6], [3, 7]])
    gp = np.array([[10, 5], [11, 5], [1, 6], [4, 6], [2, 6], [3, 7], [12, 7]])
    q = rng.normal(size=(5, 4)).astype(np.float32)
    g = rng.normal(size=(7, 4)).astype(np.float32)
    got = retrieval.evaluate(q, qp, g, gp, ks=(1,), return_per_query=True)
    s = q.astype(np.float64) @ g.T.astype(np.float64)
    keep = np.ones(len(g), bool)
    want = {"hap": [], "ndcg": []}
    for i in range(len(q)):
        t, rel = np_pop_relevance(qp[i], gp, keep, population=qp)
        assert (t > 0).any()
        if rel.sum() > 0:
            want["hap"].append(ref.np_hap(s[i], rel))
        want["ndcg"].append(ref.np_ndcg(s[i], t))
    assert got["hap"] == pytest.approx(np.mean(want["hap"]), rel=1e-5)
    assert got["ndcg"] == pytest.approx(np.mean(want["ndcg"]), rel=1e-5)
    assert np.isnan(got["per_query"]["hap"][0]) and not np.isnan(got["per_query"]["hap"][1:]).any()
    assert got["num_queries_without_hap_relevance"] == 1
    assert got["num_queries_without_relevant"] == 0


def test_level_counts_match_shared_levels():
    rng = np.random.default_rng(6)
    fine = rng.integers(0, 20, 50)
    paths = np.stack([fine, fine // 5, fine // 10], axis=1)
    queries = np.concatenate([paths[:7], [[999, 998, 0]]])
    got = hierarchy.level_counts(queries, paths)
    for qi, qp in enumerate(queries):
        np.testing.assert_array_equal(got[qi], np.bincount(np_shared_levels(qp, paths), minlength=4))


def test_knn_matches_numpy_and_excludes_self():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    scores, index = retrieval.knn(x, k=5, block_size=32, gallery_block_size=16)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    want = np.argsort(-s, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(index, want)
    np.testing.assert_allclose(scores, np.take_along_axis(s, want, 1), rtol=1e-5)
    g = rng.normal(size=(37, 8)).astype(np.float32)
    _, gi = retrieval.knn(x, g, k=37, gallery_block_size=8)
    np.testing.assert_array_equal(gi, np.argsort(-(x @ g.T), axis=1, kind="stable"))


def test_knn_under_x64_and_with_one_transfer_of_every_block(monkeypatch):
    # Under jax_enable_x64 the chunk indices were int64 and the scan's carry int32. The
    # blocks' results come back in one device_get (no block waits on the host's read).
    rng = np.random.default_rng(5)
    x = rng.normal(size=(70, 6)).astype(np.float32)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    want = np.argsort(-s, axis=1, kind="stable")[:, :4]
    reads = []
    real_get = jax.device_get
    monkeypatch.setattr(exact.jax, "device_get", lambda x: reads.append(1) or real_get(x))
    with jax.enable_x64(True):
        _, index = retrieval.knn(x, k=4, block_size=16, gallery_block_size=32)
    np.testing.assert_array_equal(index, want)
    assert len(reads) == 1


def _stable_top_k(s, k):
    """numpy reference: the k largest of each row, lower position first among equal scores."""
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("m, k", [(1024, 1), (1024, 10), (4096, 16), (1024, 17), (1000, 3)])
def test_grouped_top_k_matches_a_stable_sort(m, k):
    # (1024, 17) and (1000, 3) take plain top_k (2 k 32 > m; m not whole groups), the rest the
    # grouped path. Few distinct values, -inf and +inf entries: ties across and within groups.
    rng = np.random.default_rng(m + k)
    s = rng.integers(-3, 4, size=(64, m)).astype(np.float32)
    s[rng.random(s.shape) < 0.3] = -np.inf
    s[:8][rng.random((8, m)) < 0.002] = np.inf
    s[8:16] = -np.inf  # rows with nothing finite: the lowest positions
    s[16, : m // 2] = -np.inf  # the best items all in the second half
    valid = rng.random(s.shape) > 0.1  # masked items count as -inf
    values, index = exact._top_k(jnp.asarray(s), jnp.asarray(valid), k)
    s = np.where(valid, s, -np.inf)
    want_values, want_index = _stable_top_k(s, k)
    np.testing.assert_array_equal(np.asarray(index), want_index)
    np.testing.assert_array_equal(np.asarray(values), want_values)


@pytest.mark.parametrize("k", [5, 10])
def test_knn_with_ties_over_several_chunks(k):
    # Embeddings in {-1, 0, 1}^4: exact integer scores, most of them tied. 3 chunks of 512:
    # k = 5 uses grouped top-k per chunk (2 * 5 * 32 <= 512), k = 10 plain top-k.
    rng = np.random.default_rng(k)
    x = rng.integers(-1, 2, size=(1500, 4)).astype(np.float32)
    assert exact.knn_chunk_size(len(x), 512) == 512
    scores, index = retrieval.knn(x, k=k, block_size=256, gallery_block_size=512)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    want_scores, want_index = _stable_top_k(s, k)
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_array_equal(scores, want_scores)


@pytest.mark.parametrize(
    "n, most",
    [(1, 16384), (100, 16384), (20_000, 16384), (200_000, 16384), (1500, 512), (513, 512), (37, 8),
     (1999, 1000)],
)
def test_knn_chunk_size_pads_less_than_a_group_per_chunk(n, most):
    g = exact.knn_chunk_size(n, most)
    chunks = -(-n // g)
    assert g <= most
    assert chunks == -(-n // most)  # no more chunks than the bound needs
    assert chunks * g - n < chunks * exact.TOP_K_GROUP
    # whole groups (for the grouped top-k) whenever equal chunks rounded up to them fit
    equal = -(-n // chunks)
    fits = -(-equal // exact.TOP_K_GROUP) * exact.TOP_K_GROUP <= most
    assert g % exact.TOP_K_GROUP == 0 if fits else g == equal


def test_knn_bad_input():
    x = np.ones((10, 4), np.float32)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"queries contains 1 NaN or inf values \(first: queries\[3, 2\]"):
        retrieval.knn(bad, k=2)
    with pytest.raises(ValueError, match="gallery has dimension 3 but queries have dimension 4"):
        retrieval.knn(x, np.ones((10, 3)), k=2)
    with pytest.raises(ValueError, match=r"k must be at most 9, the gallery.s items besides the query"):
        retrieval.knn(x, k=10)


def clustered(seed, n, d=32, clusters=100, noise=0.15):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d))
    y = rng.integers(0, clusters, size=n)
    scale = noise * np.linalg.norm(centers[y], axis=1, keepdims=True) / np.sqrt(d)
    x = centers[y] + scale * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


# The scann wheel is missing on some platforms (the GPU image): tests that run it skip there.
needs_scann = pytest.mark.skipif(
    not scann_backend.scann_available(), reason="scann not installed: pip install 'rankax[scann]'"
)


def test_an_installed_scann_is_found():
    # The ScaNN tests skip where scann is absent; where it is installed, a broken import in
    # rankax must not make them skip silently.
    if importlib.util.find_spec("scann") is None:
        pytest.skip("scann not installed")
    assert scann_backend.scann_available()


@needs_scann
@pytest.mark.parametrize("config", ["brute_force", "tree_ah"])
def test_scann_recall_at_1_close_to_exact(config):
    x, y = clustered(5, 3000, noise=1.0)
    exact = retrieval.evaluate(x, y, ks=(1, 4))
    approx = retrieval.evaluate(x, y, ks=(1, 4), backend="scann", scann_config=config)
    assert abs(approx["recall@1"] - exact["recall@1"]) <= 0.01
    # MAP@R needs the top R (~30) neighbours, where the tree misses a few more.
    assert abs(approx["map@r"] - exact["map@r"]) <= (1e-6 if config == "brute_force" else 0.06)
    assert "map" not in approx
    assert 0.5 < exact["recall@1"] < 0.97  # not a trivial data set


@needs_scann
def test_scann_recall_function():
    x, _ = clustered(6, 2500)
    out = retrieval.scann_recall(x[:500], x, k=10, config="tree_ah")
    assert out["config"] == "tree_ah"
    assert 0.9 <= out["recall@10"] <= 1.0
    assert retrieval.scann_recall(x[:200], x, k=5, config="brute_force")["recall@5"] == 1.0


def test_scann_recall_checks_its_arguments_before_the_build(monkeypatch):
    """A bad argument is named before ScaNN builds (minutes at a million items)."""
    from rankax.retrieval import scann_backend

    def build(*args, **kwargs):
        raise AssertionError("the searcher was built before the arguments were checked")

    monkeypatch.setattr(scann_backend, "build_searcher", build)
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    cases = [((x[:5, :3], x), {}, "gallery has dimension 4 but queries have dimension 3"),
             ((x[:5], x), {"k": 51}, "k must be at most 50"),
             ((x[:5], x), {"block_size": 0}, "scann_recall: block_size must be an int >= 1"),
             ((x[:5], None), {}, "scann_recall: gallery must be an"),
             ((x[:5] * np.nan, x), {}, "queries")]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            scann_backend.scann_recall(*args, **kwargs)


@needs_scann
@pytest.mark.parametrize("d", [2, 5])
def test_scann_tree_with_fewer_dimensions_than_a_hash_block(d):
    # The default AH block has 3 dimensions: D=2 is one short block, D=5 a full and a short one.
    rng = np.random.default_rng(d)
    x = rng.normal(size=(3000, d)).astype(np.float32)
    queries = x[:200]
    _, index = scann_backend.scann_knn(queries, x, k=5, config="tree_ah")
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :5]  # numpy brute force
    found = np.mean([len(np.intersect1d(a, e)) / 5 for a, e in zip(index, exact, strict=True)])
    assert found >= 0.95


def test_scann_rejects_empty_hash_blocks():
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="dimensions_per_block"):
        scann_backend.build_searcher(x, 2, config="tree_ah", dimensions_per_block=0)


def test_scann_missing_raises_and_auto_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "scann", None)  # `import scann` now raises ImportError
    monkeypatch.setitem(sys.modules, "scann.scann_ops_pybind", None)
    assert not scann_backend.scann_available()
    x, y = clustered(7, 300)
    with pytest.raises(ImportError, match=r"pip install 'rankax\[scann\]'"):
        retrieval.evaluate(x, y, backend="scann")
    # A size where the cost model prefers ScaNN: without scann, auto is exact search.
    assert scann_backend.choose_backend(10**6, 10**6, 128, platform="cpu") == "exact"
    _model_prefers_scann(monkeypatch)
    out = retrieval.evaluate(x, y, backend="auto")
    assert out == retrieval.evaluate(x, y, backend="exact") and "map" in out


def _model_prefers_scann(monkeypatch):
    """Makes the cost model pick ScaNN at any size (exact search made very expensive)."""
    monkeypatch.setattr(scann_backend, "AUTO_TREE_THRESHOLD", 0)
    monkeypatch.setattr(scann_backend, "EXACT_CPU_SECONDS_PER_MAC", 1.0)


@needs_scann
def test_auto_uses_scann_where_the_model_prefers_it(monkeypatch):
    x, y = clustered(9, 3000, noise=1.0)
    exact = retrieval.evaluate(x, y, ks=(1, 4))
    _model_prefers_scann(monkeypatch)
    auto = retrieval.evaluate(x, y, ks=(1, 4), backend="auto")
    assert "map" not in auto  # the ScaNN path ran
    assert abs(auto["recall@1"] - exact["recall@1"]) <= 0.02
    # label paths need exact ranks: auto stays exact whatever the model says
    paths = np.stack([y, y // 10], axis=1)
    assert "hap" in retrieval.evaluate(x[:500], paths[:500], backend="auto")


def _documented_rule(q, n, d, platform="cpu", label_paths=False, leaves=None, searched=None,
                     sample=100_000):
    """The rule of docs/evaluation.md ("backend="auto""), written out from the docs."""
    if platform != "cpu" or label_paths or n < 100_000:
        return "exact"
    leaves = leaves or round(n**0.5)
    share = (searched or math.ceil(0.45 * leaves)) / leaves
    exact = 1.5e-11 * q * n * d
    scann = 5.0e-11 * d * leaves * (12 * min(n, sample) + n) + 9.7e-12 * share * q * n * d
    return "scann" if scann < exact else "exact"


@pytest.mark.parametrize(
    "q, n, d, platform, label_paths",
    [
        (20_000, 20_000, 128, "cpu", False),  # below the tree threshold
        (99_999, 99_999, 512, "cpu", False),
        (100_000, 100_000, 128, "cpu", False),  # the whole set as queries
        (1_000, 1_000_000, 128, "cpu", False),  # too few queries to pay for the build
        (10_000, 1_000_000, 128, "cpu", False),
        (50_000, 1_000_000, 128, "cpu", False),
        (1_000_000, 1_000_000, 128, "cpu", False),
        (1_000_000, 1_000_000, 128, "gpu", False),  # exact search on the accelerator
        (1_000_000, 1_000_000, 128, "tpu", False),
        (1_000_000, 1_000_000, 128, "cpu", True),  # label paths: hierarchical metrics
    ],
)
def test_auto_backend_follows_documented_rule(monkeypatch, q, n, d, platform, label_paths):
    monkeypatch.setattr(scann_backend, "scann_available", lambda: True)
    got = scann_backend.choose_backend(q, n, d, platform=platform, label_paths=label_paths)
    assert got == _documented_rule(q, n, d, platform, label_paths)


@pytest.mark.parametrize(
    "q, n, options",
    [
        (10_000, 1_000_000, {"leaves_to_search": 300}),  # exact with the defaults
        (7_000, 1_000_000, {"leaves_to_search": 200, "training_sample_size": 50_000}),
        (20_000, 1_000_000, {"leaves_to_search": 1000}),  # scann with the defaults
        (20_000, 1_000_000, {"num_leaves": 4000}),
        (12_000, 200_000, {"num_leaves": 200, "leaves_to_search": 40}),
    ],
)
def test_auto_backend_prices_scann_options(monkeypatch, q, n, options):
    monkeypatch.setattr(scann_backend, "scann_available", lambda: True)
    got = scann_backend.choose_backend(q, n, 128, platform="cpu", scann_options=options)
    want = _documented_rule(q, n, 128, leaves=options.get("num_leaves"),
                            searched=options.get("leaves_to_search"),
                            sample=options.get("training_sample_size", 100_000))
    assert got == want
    assert got != _documented_rule(q, n, 128)  # each case flips the default's decision


def test_auto_backend_never_picks_scann_brute_force(monkeypatch):
    monkeypatch.setattr(scann_backend, "scann_available", lambda: True)
    q = n = 1_000_000  # the model's clearest ScaNN case
    assert scann_backend.choose_backend(q, n, 128, platform="cpu", scann_config="tree_ah") == "scann"
    assert scann_backend.choose_backend(q, n, 128, platform="cpu", scann_config="brute_force") == "exact"
    with pytest.raises(ValueError, match="config must be one of"):
        scann_backend.choose_backend(q, n, 128, platform="cpu", scann_config="ivf")


def test_auto_backend_decisions():
    """The decisions the docs quote, so that a recalibration that flips one is noticed."""
    rule = _documented_rule
    assert rule(100_000, 100_000, 128) == "scann"  # gallery=None from 100k items on
    assert rule(5_000, 200_000, 128) == "exact"
    assert rule(10_000, 200_000, 128) == "exact"
    assert rule(20_000, 200_000, 128) == "scann"
    assert rule(2_000, 1_000_000, 128) == "exact"
    assert rule(5_000, 1_000_000, 128) == "exact"
    assert rule(10_000, 1_000_000, 128) == "exact"
    assert rule(20_000, 1_000_000, 128) == "scann"
    assert rule(1_000_000, 1_000_000, 128, platform="gpu") == "exact"
    # The documented break-even Q*(N) (independent of D): ~19.4k at 100k items, ~10.3k at 1M.
    for n, q_docs in [(100_000, 19_400), (200_000, 14_700), (1_000_000, 10_300)]:
        leaves = round(n**0.5)
        share = math.ceil(0.45 * leaves) / leaves
        q_star = 5.0e-11 * leaves * (12 * min(n, 100_000) + n) / ((1.5e-11 - share * 9.7e-12) * n)
        assert abs(q_star - q_docs) < 50
        assert rule(int(q_star) - 1, n, 128) == "exact" and rule(int(q_star) + 1, n, 128) == "scann"
    if scann_backend.scann_available():
        x, y = clustered(8, 300)
        assert retrieval.evaluate(x, y, backend="auto") == retrieval.evaluate(x, y)


def test_revisited_hand_worked():
    # Database ids 0..9; one column per query, best first.
    ranks = np.array([
        [3, 0],
        [7, 1],
        [1, 2],
        [5, 3],
        [0, 4],
        [9, 5],
        [2, 6],
        [4, 7],
        [6, 8],
        [8, 9],
    ])
    gnd = [
        {"easy": [1, 2], "hard": [4], "junk": [7]},
        {"easy": [0, 3], "hard": [], "junk": [1]},
    ]
    out = retrieval.revisited_map(ranks, gnd, kappas=(1, 2))
    # Query 0, Easy: ok {1, 2}, junk {7, 4}. Raw places: 7@1(junk) 1@2 2@6 4@7(junk).
    #   1 -> 2 - 1 junk before = 1;  2 -> 6 - 1 = 5.  AP = ((0/1 + 1/2) + (1/5 + 2/6)) / 2 / 2
    ap0_easy = ((0 + 1 / 2) / 2 + (1 / 5 + 2 / 6) / 2) / 2
    # Query 1, Easy: ok {0, 3}, junk {1}: places 0 and 3 -> 0 and 2.
    #   AP = ((1 + 1/1) + (1/2 + 2/3)) / 2 / 2
    ap1_easy = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    assert out["easy/map"] == pytest.approx((ap0_easy + ap1_easy) / 2)
    # Medium, query 0: ok {1, 2, 4}, junk {7}: places 2, 6, 7 -> 1, 5, 6.
    ap0_med = ((0 + 1 / 2) / 2 + (1 / 5 + 2 / 6) / 2 + (2 / 6 + 3 / 7) / 2) / 3
    assert out["medium/map"] == pytest.approx((ap0_med + ap1_easy) / 2)
    # Hard: query 1 has no hard image -> excluded (NaN), counted in num_empty.
    #   Query 0: ok {4}, junk {7, 1, 2}: place 7 -> 7 - 3 = 4.  AP = (0/4 + 1/5) / 2.
    assert out["hard/map"] == pytest.approx((0 + 1 / 5) / 2)
    assert out["hard/num_empty"] == 1 and out["easy/num_empty"] == 0
    # mP@k: kq = min(k, 1-based place of the last positive).
    # Easy q0: positives at 1-based 2, 6: P@1 = 0/1, P@2 = 1/2. q1: 1, 3: P@1 = 1, P@2 = 1/2.
    assert out["easy/mp@1"] == pytest.approx(0.5)
    assert out["easy/mp@2"] == pytest.approx(0.5)
    # Hard q0: single positive at 1-based 5: P@1 = 0, P@2 = 0.
    assert out["hard/mp@1"] == 0.0


def test_revisited_kq_uses_last_positive():
    # One query, one positive ranked first: P@5 = 1 (kq = 1), not 1/5.
    out = retrieval.revisited_map(np.arange(10)[:, None], [{"easy": [0], "hard": [], "junk": []}],
                                  kappas=(5,))
    assert out["easy/mp@5"] == 1.0 and out["easy/map"] == 1.0
    assert np.isnan(out["hard/map"]) and out["hard/num_empty"] == 1


def test_evaluator_runs_embed_fn_in_batches():
    x, y = integer_data(7, n=70)
    calls = []

    def embed(batch):
        calls.append(len(batch))
        return 2.0 * batch  # scaling does not change any ranking

    ev = retrieval.RetrievalEvaluator(x, y, batch_size=np.int64(32), ks=(1, 2), prefix="val/")
    got = ev.run(embed)
    assert calls == [32, 32, 32]  # the last batch is padded to one shape
    want = retrieval.evaluate(x, y, ks=(1, 2))
    assert got == {f"val/{k}": v for k, v in want.items()}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"queries": np.zeros((4, 3)), "query_labels": np.zeros(5)}, "query_labels has 5 rows"),
        ({"gallery": np.zeros((6, 2)), "gallery_labels": np.zeros(6)}, "gallery has dimension 2"),
        ({"gallery": np.zeros((6, 3)), "gallery_labels": np.zeros(5)}, "gallery_labels has 5 rows"),
        ({"query_labels": np.zeros((4, 2, 2))}, "query_labels must be"),
        ({"gallery": np.zeros((6, 3)), "gallery_labels": np.zeros((6, 2))}, "gallery_labels must be of"),
        ({"queries": np.zeros(4)}, "queries must be a"),
        ({"gallery": np.zeros((6, 3))}, "gallery and gallery_labels"),
        ({"query_labels": np.full(4, 0.5)}, "query_labels must hold integer"),
        ({"query_labels": np.array([0.0, 0.0, np.inf, -np.inf])}, "query_labels must hold integer"),
        # 1e19 and 2e19 both overflowed to INT64_MIN (one class); 2**53 + 1 rounds to 2**53.
        ({"query_labels": np.array([1e19, 2e19, 1e19, 3e19])}, "query_labels: float ids beyond 2"),
        ({"query_labels": np.array([0, 1, 2, 2**64 - 1], np.uint64)}, "query_labels: uint64 ids above"),
        ({"backend": "faiss"}, "backend must be"),
        ({"ks": (0,)}, "ks must be"),
        ({"queries": np.zeros((0, 3)), "query_labels": np.zeros(0, int)}, "queries must hold at least one"),
        ({"queries": np.zeros((4, 0))}, "queries must hold at least one embedding of dimension >= 1"),
        ({"queries": np.where(np.eye(4, 3, dtype=bool), np.inf, 0.0)}, r"queries\[0, 0\] = inf"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(kwargs, match):
    args = {"queries": np.zeros((4, 3)), "query_labels": np.zeros(4, int)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        retrieval.evaluate(**args)


def test_normalize_and_mesh_are_checked():
    import jax
    from jax.sharding import Mesh

    x, y = np.eye(4, 3), np.zeros(4, int)
    with pytest.raises(TypeError, match="normalize must be True or False, got 'no'"):
        retrieval.evaluate(x, y, normalize="no")  # a non-empty string used to normalise
    other = Mesh(np.array(jax.devices()[:1]), ("data",))
    for call in (lambda: retrieval.evaluate(x, y, mesh=other), lambda: retrieval.knn(x, k=1, mesh=other)):
        with pytest.raises(ValueError, match=r"mesh must be None or a one-axis .* named 'queries'.*'data'"):
            call()


def test_all_zero_embeddings_are_named_in_a_warning():
    """An all-zero row scores 0 against everything, normalised or not: a warning counts them
    (they used to form one silent tie group); none without such rows."""
    import warnings

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 4)), np.arange(10) % 3
    x[[2, 7]] = 0.0
    g, gy = rng.normal(size=(5, 4)), np.arange(5) % 3
    g[4] = 0.0
    for normalize in (False, True):
        with pytest.warns(UserWarning, match=r"evaluate: 2 of 10 queries are all-zero embeddings"):
            retrieval.evaluate(x, y, normalize=normalize)
    with pytest.warns(UserWarning, match=r"2 of 10 queries and 1 of 5 gallery items are all-zero"):
        retrieval.evaluate(x, y, g, gy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retrieval.evaluate(x[[0, 1, 3, 4, 5, 6, 8, 9]], y[[0, 1, 3, 4, 5, 6, 8, 9]], normalize=True)

    # labels sharing no class: every metric 0.0, said in a warning (it looked like a bad model)
    with pytest.warns(UserWarning, match=r"none of the 10 queries has a positive .* reported as 0\.0"):
        got = retrieval.evaluate(rng.normal(size=(10, 4)), np.arange(10))
    assert got["recall@1"] == 0.0 and got["num_queries_without_positive"] == 10


def test_sharded_equals_single_device():
    code = (
        "import numpy as np, jax, json\n"
        "from rankax import retrieval\n"
        "assert len(jax.devices()) == 4\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.integers(-2, 3, size=(90, 6)).astype(np.float32)\n"
        "y = rng.integers(0, 12, size=90)\n"
        "p = np.stack([y, y // 4], 1)\n"
        "r = retrieval.evaluate(x, p, block_size=20, gallery_block_size=32, hierarchy_block_size=8)\n"
        "z = np.random.default_rng(1).integers(-1, 2, size=(1500, 4)).astype(np.float32)\n"
        "r['knn'] = retrieval.knn(z, k=5, block_size=64, gallery_block_size=512)[1].tolist()\n"
        # 30 queries a block round up to 32 on 4 devices: every row must still come back once
        "r['knn30'] = retrieval.knn(z, k=5, block_size=30, gallery_block_size=512)[1].tolist()\n"
        # queries of more than 4 positives ranked by sorting their lists, blocks split over the mesh
        "from rankax.retrieval import exact\n"
        "exact.SORT_ABOVE.update(cpu=4)\n"
        "r['sorted'] = retrieval.evaluate(x, y, ks=(1, 3))\n"
        "print(json.dumps(r))\n"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    import json

    sharded = json.loads(out.stdout.strip().splitlines()[-1])
    # knn on the 4-device mesh, grouped top-k per chunk: the stable order of numpy's sort.
    z = np.random.default_rng(1).integers(-1, 2, size=(1500, 4)).astype(np.float32)
    s = z @ z.T
    np.fill_diagonal(s, -np.inf)
    np.testing.assert_array_equal(np.array(sharded.pop("knn")), _stable_top_k(s, 5)[1])
    np.testing.assert_array_equal(np.array(sharded.pop("knn30")), _stable_top_k(s, 5)[1])
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, size=(90, 6)).astype(np.float32)
    y = rng.integers(0, 12, size=90)
    want = np_reference(x, y, x, y, (1, 3), True)
    for key, value in want.items():
        assert sharded["sorted"][key] == pytest.approx(np.nanmean(value), abs=1e-6), key
    del sharded["sorted"]
    single = retrieval.evaluate(x, np.stack([y, y // 4], 1), block_size=20, gallery_block_size=32,
                                hierarchy_block_size=8)
    assert sharded.keys() == single.keys()
    for key in single:
        assert sharded[key] == pytest.approx(single[key], abs=1e-6), key


# ----------------------------------------------------------------------------- exact fast path


def np_ranks(s, positive):
    """Per positive: #items scoring >= it (H(0) = 1), and the same among the positives."""
    sp = s[positive]
    return (s[None, :] >= sp[:, None]).sum(1), (sp[None, :] >= sp[:, None]).sum(1)


def np_reference(queries, qy, gallery, gy, ks, self_excluded):
    """Per-query metrics: AP from scikit-learn, the others from the definition; NaN without
    positives. Scores in float64."""
    from sklearn.metrics import average_precision_score

    s = queries.astype(np.float64) @ gallery.astype(np.float64).T
    out = {key: np.full(len(queries), np.nan) for key in ["map", "map@r", "r_precision"]}
    out.update({f"recall@{k}": np.full(len(queries), np.nan) for k in ks})
    for i in range(len(queries)):
        keep = np.arange(len(gallery)) != i if self_excluded else np.ones(len(gallery), bool)
        si, pos = s[i, keep], gy[keep] == qy[i]
        if not pos.any():
            continue
        r = pos.sum()
        rank, rank_pos = np_ranks(si, pos)
        out["map"][i] = average_precision_score(pos, si)
        out["map@r"][i] = np.sum(np.where(rank <= r, rank_pos / rank, 0.0)) / r
        out["r_precision"][i] = np.sum(rank <= r) / r
        for k in ks:
            out[f"recall@{k}"][i] = float(rank.min() <= k)
    return out


def tied_data(seed, n=150, d=5):
    """Integer embeddings (exact ties), exact duplicates of float rows, singletons and classes
    of 1 to 40 items (several slot groups, runs wider than a gallery chunk)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    x[n // 2 :] += rng.normal(size=(n - n // 2, d)).astype(np.float32)
    x[-10:] = x[-20:-10]  # duplicated float rows, same class below: tied positives
    sizes = [1, 1, 1, 2, 3, 5, 9, 17, 40]
    y = np.concatenate([np.full(k, c) for c, k in enumerate(sizes)])
    y = np.concatenate([y, rng.integers(100, 120, size=n - len(y))])
    y[-10:] = y[-20:-10]
    return x, y


@pytest.mark.parametrize("count_by_rows", [True, False], ids=["cpu-count", "accelerator-count"])
@pytest.mark.parametrize("separate", [False, True], ids=["self-excluded", "separate-gallery"])
@pytest.mark.parametrize("sort_above", [None, 8], ids=["count", "sort-above-8"])
def test_exact_fast_path_matches_numpy_reference(monkeypatch, count_by_rows, separate, sort_above):
    """Both ways of ranking positives, in one call with ``sort_above=8``: counted for the queries
    of at most 8 positives, one sort of the whole list for the classes of 9, 17 and 40 (their
    sums in float32 on the device: 1e-6)."""
    from rankax.retrieval import exact

    monkeypatch.setattr(exact, "_count_by_rows", lambda platform: count_by_rows)
    if sort_above is not None:
        monkeypatch.setattr(exact, "SORT_ABOVE", {"cpu": sort_above, "accelerator": sort_above})
    x, y = tied_data(8)
    ks = (1, 3, 10) if sort_above is None else (1, 3, 3, 10)  # a repeated k is one metric
    if separate:
        q, qy, g, gy = x[::3], y[::3], np.delete(x, np.s_[::3], 0), np.delete(y, np.s_[::3])
        qy = qy.copy()
        qy[0] = 999  # a query whose class is not in the gallery
    else:
        q, qy, g, gy = x, y, None, None
    got = retrieval.evaluate(q, qy, g, gy, ks=ks, block_size=16, gallery_block_size=8,
                             return_per_query=True)
    want = np_reference(q, qy, x if g is None else g, y if gy is None else gy, ks, not separate)
    tol = 1e-12 if sort_above is None else 1e-6
    for key, value in want.items():
        np.testing.assert_allclose(got["per_query"][key], value, atol=tol, err_msg=key)
        assert got[key] == pytest.approx(np.nanmean(value), abs=tol), key
    assert got["num_queries_without_positive"] == int(np.isnan(want["map"]).sum()) >= (1 if separate else 3)


@pytest.mark.parametrize("kept", [0, 10**6], ids=["read-in-a-pass", "kept-tiles"])
def test_exact_both_ways_of_reading_the_positives_match_numpy(monkeypatch, kept):
    """Runs of positives kept as score tiles or read in a first pass over their chunks (forced
    here for every block) give the reference's values, ties and duplicates included."""
    monkeypatch.setattr(exact, "MAX_KEPT_RUN_CHUNKS", kept)
    exact._positive_ranks_fn.cache_clear()
    x, y = tied_data(3)
    for q, qy, g, gy in ((x, y, None, None), (x[::3], y[::3], x[1::3], y[1::3])):
        got = retrieval.evaluate(q, qy, g, gy, ks=(1, 4), block_size=8, gallery_block_size=8,
                                 return_per_query=True)
        want = np_reference(q, qy, x if g is None else g, y if gy is None else gy, (1, 4), g is None)
        for key, value in want.items():
            np.testing.assert_allclose(got["per_query"][key], value, atol=1e-12, err_msg=key)
    exact._positive_ranks_fn.cache_clear()


def test_exact_memory_of_a_gallery_apart_does_not_grow_with_the_runs(monkeypatch):
    """One query per class, 20 gallery items per class: a block of 64 queries has positives
    in all 1280 gallery rows (40 chunks of 32). The program keeps no [1280, 64] score tile
    (it used to: block x most of the gallery), only chunk-sized ones; the values are exact."""
    rng = np.random.default_rng(0)
    gy = np.repeat(np.arange(64), 20)
    g = rng.normal(size=(1280, 4)).astype(np.float32)
    q, qy = rng.normal(size=(64, 4)).astype(np.float32), np.arange(64)
    layout = exact.class_layout(qy, gy, self_excluded=False)
    args, t = exact._group_inputs(q, layout, 0, 64, 64, 32, 1, 40)
    assert t == 40 > exact.MAX_KEPT_RUN_CHUNKS
    chunks = jnp.zeros((40, 32, 4), jnp.float32)
    consts = (chunks, np.int32(40), np.int32(1280), np.int32(0))

    def hlo():
        exact._positive_ranks_fn.cache_clear()
        return exact._positive_ranks_fn(None, 32, t, True).lower(*args, *consts).as_text()

    assert "1280x64xf32" not in hlo() and "32x64xf32" in hlo()
    monkeypatch.setattr(exact, "MAX_KEPT_RUN_CHUNKS", 10**6)
    assert "1280x64xf32" in hlo()  # the kept tiles: what the check above would see
    monkeypatch.undo()
    exact._positive_ranks_fn.cache_clear()
    got = retrieval.evaluate(q, qy, g, gy, ks=(1,), block_size=64, gallery_block_size=32,
                             return_per_query=True)
    want = np_reference(q, qy, g, gy, (1,), False)
    for key, value in want.items():
        np.testing.assert_allclose(got["per_query"][key], value, atol=1e-12, err_msg=key)


def test_exact_float_data_matches_argsort():
    """No ties: R@k and MAP@R from a plain numpy argsort of float64 scores."""
    x, y = clustered(9, 700, d=16, clusters=60, noise=1.0)
    got = retrieval.evaluate(x, y, ks=(1, 5), block_size=128, gallery_block_size=64,
                             return_per_query=True)
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1)[:, :-1]  # the query itself last, dropped
    match = y[order] == y[:, None]
    r = match.sum(1)
    places = np.arange(1, match.shape[1] + 1)
    has = r > 0
    prec = np.cumsum(match, 1) / places
    in_r = match & (places <= r[:, None])
    map_r = np.where(in_r, prec, 0).sum(1)[has] / r[has]
    np.testing.assert_allclose(got["per_query"]["map@r"][has], map_r, atol=1e-12)
    np.testing.assert_allclose(got["per_query"]["recall@5"][has], match[has, :5].any(1))
    ap = np.where(match, prec, 0).sum(1)[has] / r[has]
    np.testing.assert_allclose(got["per_query"]["map"][has], ap, atol=1e-12)


def test_exact_repeated_calls_reuse_compiled_programs():
    from rankax.retrieval import exact

    x, y = tied_data(10)
    retrieval.evaluate(x, y, block_size=16, gallery_block_size=8)
    before = exact._positive_ranks_fn.cache_info()
    # The next evaluation of the same labels (new embeddings, as after another training epoch):
    # the same groups, slot counts and run widths, so no new program.
    x2 = x + np.random.default_rng(1).normal(scale=0.1, size=x.shape).astype(np.float32)
    retrieval.evaluate(x2, y, block_size=16, gallery_block_size=8)
    after = exact._positive_ranks_fn.cache_info()
    assert after.misses == before.misses and after.hits > before.hits


def test_sweep_scann_config_parsing():
    from experiments.sweep_scann import parse_config

    cfg = parse_config("leaves=10,dpb=3,codes=int8,search=0.2/0.5")
    assert (cfg["leaves"], cfg["dpb"], cfg["codes"], cfg["search"]) == (10, 3, "int8", [0.2, 0.5])
    # keys left out are the library's defaults, not those of an earlier version (dpb 2, reorder 250)
    defaults = parse_config("leaves=1000")
    assert (defaults["dpb"], defaults["reorder"]) == (3, 1000)
    with pytest.raises(ValueError, match="codes must be one of"):
        parse_config("codes=pq")
    with pytest.raises(ValueError, match="key must be one of"):
        parse_config("leafs=10")


@needs_scann
def test_sweep_scann_whole_search_is_exact():
    # Every leaf searched, int8 scores (near exact), 1000 of 1500 items re-scored exactly:
    # the exact 10 nearest neighbours are always found, whatever the partition.
    from experiments.sweep_scann import parse_config, sweep

    cfg = parse_config("leaves=20,codes=int8,reorder=1000,search=1.0")
    res = sweep(1500, 100, 16, [cfg], noise=1.0)
    (row,) = res["runs"]
    assert row["recall@10"] == 1.0 and row["r@1_delta"] == 0.0 and res["noise"] == 1.0


def test_evaluate_rejects_unknown_scann_options():
    x, y = clustered(10, 200)
    with pytest.raises(ValueError, match=r"scann_options has unknown keys \['leaves'\]"):
        retrieval.evaluate(x, y, backend="scann", scann_options={"leaves": 3})


@pytest.mark.parametrize("backend", ["exact", "auto", "scann"])
@pytest.mark.parametrize("options, message", [
    ({"num_leaves": -3}, "num_leaves must be None or an int >= 1, got -3"),
    ({"reorder_k": "x"}, "reorder_k must be None or an int >= 1, got 'x'"),
    ({"training_sample_size": 0}, "training_sample_size must be an int >= 1, got 0"),
    ({"anisotropic_threshold": float("nan")}, "anisotropic_threshold must be a finite number"),
])
def test_evaluate_checks_scann_option_values_before_any_work(backend, options, message):
    x, y = clustered(10, 200)
    with pytest.raises(ValueError, match=re.escape(f"scann_options: {message}")):
        retrieval.evaluate(x, y, backend=backend, scann_options=options)


@pytest.mark.parametrize("options", [
    {"scann_options": {"leaves_to_search": 3}},
    {"scann_config": "tree_ah"},
    {"scann_config": "brute_force", "scann_options": {"reorder_k": 50}},
])
def test_exact_backend_refuses_scann_settings_it_would_ignore(options):
    """``backend="exact"`` ignored ``scann_config`` and ``scann_options`` (the CLI refused its
    flags; the library evaluated without a word). The defaults still pass."""
    x, y = clustered(10, 200)
    with pytest.raises(ValueError, match=r"backend='exact' does not use ScaNN, so scann_\w+"):
        retrieval.evaluate(x, y, backend="exact", **options)
    got = retrieval.evaluate(x, y, ks=(1,), backend="exact", scann_config="auto", scann_options={})
    assert 0.0 <= got["recall@1"] <= 1.0


def test_embeddings_beyond_float32_are_named_as_such():
    x = np.full((3, 2), 1e39)  # finite float64, inf once in float32
    with pytest.raises(ValueError, match=re.escape("queries has 6 values that are NaN, inf or beyond "
                                                   "float32's range, in which it is scored (first: "
                                                   "queries[0, 0] = 1e+39)")):
        retrieval.evaluate(x, [0, 0, 1])


def test_label_path_ids_beyond_int32_give_the_metrics_of_small_ids():
    """The device holds int32 paths (no x64): ids past 2**31 are renumbered per column, not
    wrapped (2**32 + 1 used to become 1 and join that class); renaming ids keeps every metric."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    fine = rng.integers(0, 6, 30)
    small = np.stack([fine, fine // 3], axis=1)
    names = np.array([1, 2**32 + 1, 7, -(2**40), 2**62, 3])  # fine class -> huge id (2**32 + 1 wraps to 1)
    huge = np.stack([names[fine], (fine // 3) + 2**33], axis=1)
    got, want = retrieval.evaluate(x, huge), retrieval.evaluate(x, small)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)


@needs_scann
def test_evaluate_passes_scann_options():
    # One leaf of 64 searched loses neighbours; all 64 searched with every item re-scored
    # exactly is exact search (R@1 and MAP@R to float rounding).
    x, y = clustered(11, 3000, noise=1.0)
    exact_out = retrieval.evaluate(x, y, ks=(1,))
    narrow = {"num_leaves": 64, "leaves_to_search": 1}
    whole = {"num_leaves": 64, "leaves_to_search": 64, "reorder_k": 3000}
    few = retrieval.evaluate(x, y, ks=(1,), backend="scann", scann_config="tree_ah", scann_options=narrow)
    full = retrieval.evaluate(x, y, ks=(1,), backend="scann", scann_config="tree_ah", scann_options=whole)
    assert few["recall@1"] < exact_out["recall@1"] - 0.05
    assert full["recall@1"] == pytest.approx(exact_out["recall@1"], abs=1e-9)
    assert full["map@r"] == pytest.approx(exact_out["map@r"], abs=1e-6)


@needs_scann
def test_scann_knn_marks_missing_neighbours():
    # One leaf of 64 searched holds ~50 of 3000 items: k = 200 leaves the rest unfound.
    rng = np.random.default_rng(12)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    q = rng.normal(size=(40, 16)).astype(np.float32)
    scores, index = scann_backend.scann_knn(q, x, k=200, config="tree_ah", num_leaves=64,
                                            leaves_to_search=1, reorder_k=200)
    found = index >= 0
    # (k-means may leave a leaf empty: a query sent there finds nothing)
    assert found.any() and found.sum(1).max() < 200
    assert np.all(found[:, :-1] >= found[:, 1:])  # the missing ones come last
    assert np.all(scores[~found] == -np.inf)
    exact_scores = np.einsum("qd,qkd->qk", q, x[np.where(found, index, 0)])  # numpy dot products
    np.testing.assert_allclose(scores[found], exact_scores[found], rtol=1e-5, atol=1e-5)
    for row, ok in zip(index, found, strict=True):
        assert len(set(row[ok])) == ok.sum()


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"k": 6}, ValueError, r"k must be at most 5, the gallery's items besides the query; got 6"),
        ({"k": 0}, ValueError, "k must be an int >= 1"),
        ({"k": 2, "nan": True}, ValueError, r"queries contains 1 NaN or inf values \(first: queries\[1, 0\]"),
        ({"k": 2, "config": "tree_ah", "num_leaves": 0}, ValueError, "num_leaves must be None or an int"),
        ({"k": 2, "config": "tree_ah", "reorder_k": -3}, ValueError, "reorder_k must be None or an int >= 1"),
        ({"k": 2, "config": "tree_ah", "leaves_to_search": 2.5}, ValueError, "leaves_to_search must be"),
        ({"k": 2, "config": "tree_ah", "training_sample_size": 0}, ValueError, "training_sample_size must"),
        ({"k": 2, "config": "tree_ah"}, ValueError, r"at least 16 items, got 6 .*config='brute_force'"),
        ({"k": 2, "config": "tree_ah", "training_sample_size": 20, "num_leaves": 21, "big": True},
         ValueError, r"num_leaves=21 is more than the 20 items k-means trains on"),
        ({"k": 2, "config": "tree_ah", "num_leaves": 4, "leaves_to_search": 5, "big": True},
         ValueError, r"leaves_to_search=5 is more than num_leaves=4"),
    ],
)
def test_scann_knn_checks_its_input_as_knn(kwargs, error, match):
    # Raised before ScaNN is imported or built, so this runs without scann too.
    x = np.random.default_rng(13).normal(size=(40 if kwargs.pop("big", False) else 6, 4)).astype(np.float32)
    if kwargs.pop("nan", False):
        x[1, 0] = np.nan
    with pytest.raises(error, match=match):
        scann_backend.scann_knn(x, **kwargs)
    if "config" not in kwargs:  # the exact search raises the same
        with pytest.raises(error, match=match):
            retrieval.knn(x, k=kwargs["k"])


def test_without_self_drops_the_query_or_the_last_entry():
    index = np.array([[4, 7, 9], [1, 2, 3], [5, -1, -1]])
    scores = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4], [0.3, -np.inf, -np.inf]])
    ids = np.array([7, 8, 5])
    # Written out: row 0 holds its query (7) in the middle, row 1 does not hold 8 (its worst
    # entry goes), row 2 holds 5 first and keeps its padding.
    want_index = [[4, 9], [1, 2], [-1, -1]]
    want_scores = [[0.9, 0.7], [0.6, 0.5], [-np.inf, -np.inf]]
    got_index, got_scores = scann_backend.without_self(index, ids, scores)
    np.testing.assert_array_equal(got_index, want_index)
    np.testing.assert_array_equal(got_scores, want_scores)
    assert scann_backend.without_self(index, ids)[1] is None


def test_benchmark_hit_rate_counts_padding_as_a_miss():
    from experiments.benchmark_scann import hit_rate_at_1

    labels = np.array([0, 1, 1, 0, 0])
    ids = np.array([0, 1, 2])
    # Query 0's first neighbour is missing (-1); the last item shares its label, so reading -1
    # as an index would count a hit. Query 1 finds item 2 (same label), query 2 finds item 4
    # (other label): 1 hit of 3.
    index = np.array([[-1, 3], [2, 0], [4, 1]])
    assert hit_rate_at_1(index, labels, ids) == pytest.approx(1 / 3)


@needs_scann
def test_benchmark_scann_search_marks_padding():
    # The benchmark's search goes through scann_backend.search: one leaf of 64 searched with
    # k = 200 leaves unfound neighbours, which come back as -1 (ScaNN pads with item 0).
    rng = np.random.default_rng(13)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    searcher = scann_backend.build_searcher(x, 200, config="tree_ah", num_leaves=64, leaves_to_search=1,
                                            reorder_k=200)
    index, scores = scann_backend.search(searcher, x[:20], 200, leaves_to_search=1)
    missing = index < 0
    assert missing.any() and np.all(scores[missing] == -np.inf) and not np.isnan(scores).any()
    wider, _ = scann_backend.search(searcher, x[:20], 200, leaves_to_search=64)
    assert (wider >= 0).all()  # every leaf searched: 3000 items, k = 200 all found


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("self_excluded", [True, False])
def test_class_layout_follows_its_definition(seed, self_excluded):
    # ClassLayout's definition, checked row by row: the gallery sorted by (class size, class),
    # stable; the sorted queries likewise by their class's gallery size; each query's run
    # [lo, hi) holds exactly its class's gallery rows (lo = hi = 0 for a class not in the gallery).
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    gallery = rng.integers(-3, int(rng.integers(1, 40)), n) * 7  # negative and sparse class ids
    queries = gallery if self_excluded else rng.integers(-5, 50, int(rng.integers(1, 60))) * 7
    layout = exact.class_layout(queries, gallery, self_excluded)
    size = {c: int(np.sum(gallery == c)) for c in np.union1d(gallery, queries)}

    def expected_order(classes):
        return sorted(range(len(classes)), key=lambda i: (size[classes[i]], classes[i], i))

    np.testing.assert_array_equal(layout.gallery_order, expected_order(gallery))
    np.testing.assert_array_equal(layout.query_order, expected_order(queries))
    sorted_gallery = gallery[layout.gallery_order]
    for row, q in enumerate(layout.query_order):
        c = queries[q]
        rows = np.flatnonzero(sorted_gallery == c)
        if len(rows):
            assert (layout.lo[row], layout.hi[row]) == (rows[0], rows[-1] + 1) and len(rows) == size[c]
        else:
            assert layout.lo[row] == layout.hi[row] == 0
        assert layout.self_index[row] == (row if self_excluded else -1)
        assert layout.num_pos[row] == size[c] - self_excluded
    if self_excluded:  # the query's own row lies in its run
        assert np.all((layout.lo <= layout.self_index) & (layout.self_index < layout.hi))


def test_host_work_in_row_chunks_matches_whole_array_numpy(monkeypatch):
    # Chunks of 4 rows (the default is 32,768): the finite check finds a value in any chunk and
    # names the first, the gathers write every row, and evaluate's metrics do not change.
    x, y = integer_data(3, n=37)
    whole = retrieval.evaluate(x, y, return_per_query=True)
    monkeypatch.setattr(exact, "HOST_CHUNK_ROWS", 4)
    for rows in ([36], [9, 35], [0, 36]):
        bad = x.copy()
        bad[rows, 1] = [np.inf, np.nan][: len(rows)] if len(rows) == 2 else np.nan
        with pytest.raises(ValueError, match=rf"gallery contains {len(rows)} NaN or inf values \(first: "
                                             rf"gallery\[{rows[0]}, 1\]"):
            exact.as_embeddings(bad, "gallery")
    np.testing.assert_array_equal(exact.as_embeddings(x, "gallery"), x)
    order = np.random.default_rng(0).permutation(len(x))
    for index in (None, order, order[:10]):
        out = np.full((len(x) + 3, x.shape[1]), -7.0, np.float32)
        exact._gather_rows(out, x, index)
        m = len(x) if index is None else len(index)
        np.testing.assert_array_equal(out[:m], x if index is None else x[index])
        assert np.all(out[m:] == -7.0)
    chunked = retrieval.evaluate(x, y, return_per_query=True)
    for key, v in whole["per_query"].items():
        np.testing.assert_array_equal(chunked["per_query"][key], v, err_msg=key)


FORKED_CHECK = """
import os, numpy as np
from rankax.retrieval import exact
exact.HOST_CHUNK_ROWS = 4
x = np.ones((40, 3), np.float32)
exact.as_embeddings(x, "x")  # the parent's pool of host threads exists (and is busy no more)
pid = os.fork()
if pid == 0:
    exact.as_embeddings(x, "x")
    os._exit(0)
print("child", os.waitpid(pid, 0)[1])
"""


def test_host_work_runs_in_a_forked_child():
    # A forked child inherits the parent's thread pool object but none of its threads: with
    # the parent's pool its chunks would wait forever (checked by hand: a 20 s timeout).
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", FORKED_CHECK], capture_output=True,
                         text=True, timeout=120, env=env)
    assert run.returncode == 0 and "child 0" in run.stdout, run.stdout + run.stderr[-2000:]


def test_float64_embeddings_beyond_float32_are_normalised_first_when_asked():
    """Finite float64 values beyond float32's range: ``normalize=True`` normalises them in
    float64 (they were cast to inf first and refused); without it the error says to rescale."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 4)) * 1e39
    y = np.repeat(np.arange(5), 4)
    got = retrieval.evaluate(x, y, normalize=True)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    want = retrieval.evaluate(unit.astype(np.float32), y)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    with pytest.raises(ValueError, match="beyond float32's range"):
        retrieval.evaluate(x, y)
    with pytest.raises(ValueError, match="beyond float32's range"):  # through the evaluator too
        retrieval.RetrievalEvaluator(x, y, batch_size=8).run(np.asarray)


def test_positive_counts_from_one_sort_equal_the_pairwise_count():
    """Each positive's count of positives scoring at least as high (itself included), from a
    sort per row: equal to counting every pair (which took a [block, C, C] array), with ties
    and empty slots."""
    from rankax.retrieval import exact

    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(50, 16)).astype(np.float32)  # many ties
    mask = rng.random((50, 16)) < 0.7
    x = np.where(mask, x, np.inf)  # empty slots hold +inf, as in the kernel
    want = np.sum((x[:, None, :] >= x[:, :, None]) & mask[:, None, :], axis=-1)
    got = np.asarray(exact._count_positives_at_least(jnp.asarray(x), jnp.asarray(mask)))
    np.testing.assert_array_equal(got[mask], want[mask])
