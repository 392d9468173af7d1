"""The losses through ``rankax.batch_loss``: pair pooling and hierarchical label paths.

References are built from the full similarity matrix with numpy loops, independently of the
batch machinery.
"""

from __future__ import annotations

import numpy as np
import pytest

import rankax
from rankax import hierarchy

B = 12


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(B, 6)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.repeat(np.arange(4), 3)
    return emb, labels


def _pairs(emb, labels, include_self):
    sim = emb.astype(np.float64) @ emb.T.astype(np.float64)
    for i in range(B):
        for j in range(B):
            if i != j or include_self:
                yield sim[i, j], labels[i] == labels[j]


@pytest.mark.parametrize("include_self", [False, True])
def test_calibration_pools_over_all_pairs_of_the_batch(include_self):
    emb, labels = _batch()
    pos = [max(0.0, 0.9 - s) for s, same in _pairs(emb, labels, include_self) if same]
    neg = [max(0.0, s - 0.6) for s, same in _pairs(emb, labels, include_self) if not same]
    pos, neg = [t for t in pos if t > 0], [t for t in neg if t > 0]
    expected = np.mean(pos) + np.mean(neg)
    got = rankax.batch_loss(rankax.calibration_loss, emb, labels, include_self=include_self)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_contrastive_and_roadmap_through_batch_loss():
    emb, labels = _batch(1)
    terms = []
    for s, same in _pairs(emb, labels, False):
        d = np.sqrt(max(2 - 2 * s, 0.0))
        terms.append(0.5 * d * d if same else 0.5 * max(0.0, 1.0 - d) ** 2)
    got = rankax.batch_loss(rankax.contrastive_loss, emb, labels)
    np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)

    sim = emb @ emb.T
    rel = (labels[:, None] == labels[None, :]).astype(np.float32)
    off = ~np.eye(B, dtype=bool)
    supap = rankax.supap_loss(sim, rel, where=off)
    calibration = rankax.batch_loss(rankax.calibration_loss, emb, labels)
    got = rankax.batch_loss(rankax.roadmap_loss, emb, labels, supap_weight=0.9, calibration_weight=0.1)
    np.testing.assert_allclose(got, 0.9 * supap + 0.1 * calibration, rtol=1e-5)


def test_hap_with_label_paths_through_batch_loss():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(B, 5)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    fine = np.repeat(np.arange(6), 2)
    paths = np.stack([fine, fine // 2, fine // 4], axis=1)  # [B, L], column 0 finest
    sim = emb @ emb.T
    off = ~np.eye(B, dtype=bool)
    rel = hierarchy.path_relevance(paths, paths, where=off)  # each query's own list
    expected = rankax.hap_loss(sim, rel, where=off)
    got = rankax.batch_loss(
        rankax.hap_loss, emb, paths, relevance_fn=hierarchy.hierarchical_relevance, max_positives=B
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # batch_loss's default relevance for [B, L] paths is the same rule
    np.testing.assert_allclose(rankax.batch_loss(rankax.hap_loss, emb, paths), expected, rtol=1e-5)


TIED_STEP_LOSSES = [rankax.supap_loss, rankax.roadmap_loss, rankax.hap_loss, rankax.sup_recall_at_k_loss,
                    rankax.sup_ndcg_loss]


@pytest.mark.parametrize("loss_fn", TIED_STEP_LOSSES, ids=lambda f: f.__name__)
def test_batch_loss_keeps_exact_ties_between_positives_and_negatives(loss_fn):
    """Collapsed embeddings tie every score. A positive's score must then equal its tied
    negatives' bit for bit: ROADMAP's step jumps by ``start`` at 0, so one ulp moved a tied
    negative from 1/2 to 1 (1 seed in 10 did, when the positives' scores were dot products
    computed apart from the lists'). SupAP's value is the closed form of docs/losses.md:
    rank = P + Neg / 2 for every positive, so 1 - P / (P + Neg / 2); the other losses equal
    their list API on the same similarity matrix."""
    b, k, d = 16, 4, 512
    labels = np.repeat(np.arange(b // k), k)
    rel = (labels[:, None] == labels[None]).astype(np.float32)
    off = ~np.eye(b, dtype=bool)
    for seed in range(10):
        v = np.random.default_rng(seed).normal(size=d).astype(np.float32)
        emb = np.repeat((v / np.linalg.norm(v))[None], b, 0)
        got = float(rankax.batch_loss(loss_fn, emb, labels))
        if loss_fn is rankax.supap_loss:
            p, neg = k - 1, b - k
            assert got == pytest.approx(1 - p / (p + neg / 2), rel=1e-6), seed
        else:
            sim = np.asarray(emb @ emb.T)
            assert got == pytest.approx(float(loss_fn(sim, rel, where=off)), rel=1e-6), seed


def test_queries_that_are_not_items_count_every_item_of_their_path():
    """``batch_statistics`` with ``query_index=None`` (queries ranking a gallery they are not
    part of) and label paths: SupRank's "pop" relevance of the gallery, every item counted
    (``hierarchy.path_relevance`` with no mask), not one dropped as if it were the query. The
    third query's levels 1 and 2 get the same share (1/1 and 2/2): H-AP compares their levels,
    as the official code, so the list API is given the shared levels and the rule."""
    from rankax import batch
    from rankax._core import stats

    rng = np.random.default_rng(4)
    queries = rng.normal(size=(3, 5)).astype(np.float32)
    items = rng.normal(size=(7, 5)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    q_paths = np.array([[0, 0], [1, 0], [3, 1]])
    i_paths = np.array([[0, 0], [0, 0], [1, 0], [2, 0], [3, 1], [3, 1], [4, 1]])
    totals = batch.batch_statistics(rankax.hap_loss, queries, q_paths, items, i_paths, caller="test")
    got = stats.from_statistics(rankax.hap_loss, totals, stats.hparams_of(rankax.hap_loss, {}, caller="test"))
    levels = hierarchy.shared_levels(q_paths, i_paths)
    expected = rankax.hap_loss(queries @ items.T, levels, rule="pop", num_levels=2)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(  # the relevance is the path relevance of the gallery
        hierarchy.relevance_from_levels(levels, 2), hierarchy.path_relevance(q_paths, i_paths))


@pytest.mark.parametrize("loss_fn", [rankax.sup_ndcg_loss, rankax.hap_loss, rankax.blackbox_ap_loss],
                         ids=lambda f: f.__name__)
def test_float64_embeddings_are_ranked_with_float64_relevance(loss_fn):
    """Under x64, float64 embeddings give a float64 loss computed in float64 throughout: the
    batch path's relevance (graded: label paths) and BlackBox's normalised ranks used to be
    float32, 5e-9 to 5e-8 away; the list API on the float64 similarity matrix is the reference."""
    import jax

    rng = np.random.default_rng(5)
    emb = rng.normal(size=(B, 6))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    fine = np.repeat(np.arange(6), 2)
    paths = np.stack([fine, fine // 2, fine // 4], axis=1)
    labels = fine if loss_fn is rankax.blackbox_ap_loss else paths
    with jax.enable_x64(True):
        got = rankax.batch_loss(loss_fn, emb, labels)
        assert got.dtype == np.float64
        off = ~np.eye(B, dtype=bool)
        if labels.ndim == 2:
            rule = "count" if loss_fn is rankax.sup_ndcg_loss else "pop"
            rel = hierarchy.path_relevance(labels, labels, where=off, rule=rule)
            expected = loss_fn(emb @ emb.T, np.asarray(rel, np.float64), where=off)
        else:  # 1 - AP of the margin-shifted scores (docstring), written out in numpy
            sim = emb @ emb.T
            expected = np.mean([_shifted_ap_loss(np.delete(sim[i], i), np.delete(fine == fine[i], i))
                                for i in range(B)])
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def _shifted_ap_loss(s, positive, margin=0.02):
    shifted = s - margin / 2 * (2 * positive - 1)
    pos = shifted[positive]
    ratios = [np.sum(pos >= p) / np.sum(shifted >= p) for p in pos]
    return 1 - np.mean(ratios)
