"""SupNDCG on label paths against a numpy transcription of the official SupRank loss.

``SupNDCGLoss(hierarchy_level="MULTI")`` (elias-ramzi/SupRank: ``suprank/losses/ranking_loss.py``,
``suprank/losses/tools/differentiable_rank.py``) ranks each query's whole batch (the query in
its own list) with ``step_rank`` on the number of shared levels ``t`` (``create_label_matrix``:
equal columns) and scores gains ``2^t - 1``. The reference below is written from that code,
in float64, independently of rankax; ``rankax.batch_loss(sup_ndcg_loss, ...)`` must equal it.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import rankax
from rankax import hierarchy


def _sigmoid(x, tau):
    return 1.0 / (1.0 + np.exp(np.clip(-x / tau, -50, 50)))


def official_supndcg_multi(emb, paths, tau=0.01, rho=100.0, delta=0.05, start=0.5, offset=1.44):
    scores = np.asarray(emb, np.float64) @ np.asarray(emb, np.float64).T
    target = (paths[:, None, :] == paths[None, :, :]).sum(-1).astype(np.float64)
    losses = []
    for s, t in zip(scores, target, strict=True):
        n = len(s)
        rank = np.ones(n)
        for j in range(n):
            for k in range(n):
                if k == j:
                    continue
                x = s[k] - s[j]
                if t[j] > t[k]:  # k is less relevant than j: the smoothed step
                    if x > delta:
                        rank[j] += rho * (x - delta) + offset
                    elif x > 0:
                        rank[j] += start + _sigmoid(x, tau)
                    else:
                        rank[j] += _sigmoid(x, tau)
                else:  # as or more relevant: heaviside, 1 at a tie
                    rank[j] += 1.0 if x >= 0 else 0.0
        gains = 2.0**t - 1.0
        dcg = np.sum(gains / np.log2(1.0 + rank))
        idcg = np.sum(np.sort(gains)[::-1] / np.log2(1.0 + np.arange(1, n + 1)))
        losses.append(1.0 - dcg / idcg)
    return float(np.mean(losses))


def _batch(levels, seed):
    rng = np.random.default_rng(seed)
    fine = np.repeat(np.arange(8), 3)
    paths = np.stack([fine // (2**i) for i in range(levels)], axis=1)  # a tree: ids unique per level
    emb = rng.normal(size=(len(fine), 8))
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), paths


@pytest.mark.parametrize(("levels", "seed"), [(2, 0), (2, 1), (3, 2)])
def test_batch_sup_ndcg_on_label_paths_equals_the_official_loss(levels, seed):
    emb, paths = _batch(levels, seed)
    want = official_supndcg_multi(emb, paths)
    got = rankax.batch_loss(
        rankax.losses.sup_ndcg_loss, jnp.asarray(emb, jnp.float32), jnp.asarray(paths), include_self=True
    )
    np.testing.assert_allclose(float(got), want, rtol=2e-5)


def test_sup_ndcg_reads_the_level_count_and_hap_the_pop_relevance():
    assert rankax.losses.sup_ndcg_loss.path_relevance == "count"
    assert rankax.losses.hap_loss.path_relevance == "pop"
    paths = np.array([[0, 0], [0, 0], [1, 0], [2, 1]])
    t = np.array([[2, 2, 1, 0], [2, 2, 1, 0], [1, 1, 2, 0], [0, 0, 0, 2]], np.float32)
    got = hierarchy.hierarchical_relevance(paths, paths, include_self=True, rule="count")
    np.testing.assert_array_equal(np.asarray(got), t)
