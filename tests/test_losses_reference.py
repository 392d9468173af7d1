"""Every loss against a numpy reference written from its paper's formula, with loops.

The references below do not call rankax; exact AP comes from scikit-learn. Calls are eager on
one shared shape so that the compiled primitives are reused across tests and hparams.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import expit
from sklearn.metrics import average_precision_score

import rankax

B, N = 4, 10
RTOL, ATOL = 2e-5, 2e-5


def _lists(seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.uniform(-0.95, 0.95, (B, N)).astype(np.float64)
    labels = np.zeros((B, N))
    for i, npos in enumerate([1, 2, 3, 4]):
        labels[i, rng.choice(N, npos, replace=False)] = 1.0
    return scores.astype(np.float32), labels.astype(np.float32)


def _graded(seed=0):
    rng = np.random.default_rng(seed + 10)
    scores = rng.uniform(-0.95, 0.95, (B, N)).astype(np.float32)
    labels = rng.choice([0.0, 0.0, 0.5, 1.0, 2.0], size=(B, N)).astype(np.float32)
    labels[:, 0] = 2.0
    return scores, labels


def sig(x):
    return expit(np.asarray(x, np.float64))


def roadmap_h(x, tau=0.01, rho=100.0, delta=0.05, start=0.5, offset=1.44, variant="fixed"):
    """ROADMAP's piecewise step, branch by branch as in the paper."""
    if x <= 0:
        return sig(x / tau)
    if x <= delta:
        return start + sig(x / tau)
    return rho * (x - delta) + offset if variant == "fixed" else rho * x + offset


def exact_ap(s, y):
    return average_precision_score(y > 0, s)


# ----------------------------------------------------------------------------- references


def ref_smooth_ap(s, y, tau):
    pos = np.flatnonzero(y > 0)
    total = 0.0
    for k in pos:
        others = [j for j in range(len(s)) if j != k]
        rank = 1 + sum(sig((s[j] - s[k]) / tau) for j in others)
        rank_pos = 1 + sum(sig((s[j] - s[k]) / tau) for j in others if y[j] > 0)
        total += rank_pos / rank
    return 1 - total / len(pos)


def ref_supap(s, y, **kw):
    pos = np.flatnonzero(y > 0)
    total = 0.0
    for k in pos:
        rank_pos = 1 + sum(1 for j in pos if j != k and s[j] >= s[k])
        rank_neg = sum(roadmap_h(s[j] - s[k], **kw) for j in range(len(s)) if y[j] <= 0)
        total += rank_pos / (rank_pos + rank_neg)
    return 1 - total / len(pos)


def ref_calibration(S, Y, pos_margin=0.9, neg_margin=0.6):
    pos_terms = [max(0.0, pos_margin - s) for s, y in zip(S.ravel(), Y.ravel(), strict=True) if y > 0]
    neg_terms = [max(0.0, s - neg_margin) for s, y in zip(S.ravel(), Y.ravel(), strict=True) if y <= 0]
    pos_terms = [t for t in pos_terms if t > 0]
    neg_terms = [t for t in neg_terms if t > 0]
    return (np.mean(pos_terms) if pos_terms else 0.0) + (np.mean(neg_terms) if neg_terms else 0.0)


def ref_contrastive(S, Y, margin=1.0):
    terms = []
    for s, y in zip(S.ravel(), Y.ravel(), strict=True):
        d = math.sqrt(max(2 - 2 * s, 0.0))
        terms.append(0.5 * d * d if y > 0 else 0.5 * max(0.0, margin - d) ** 2)
    return np.mean(terms)


def ref_triplet(s, y, margin, mining):
    pos = [j for j in range(len(s)) if y[j] > 0]
    neg = [j for j in range(len(s)) if y[j] <= 0]
    if mining == "batch_hard":
        return max(0.0, margin + max(s[n] for n in neg) - min(s[p] for p in pos))
    losses = []
    for p in pos:
        semi = [s[n] for n in neg if s[n] < s[p]]
        s_n = max(semi) if semi else min(s[n] for n in neg)
        losses.append(max(0.0, margin + s_n - s[p]))
    return np.mean(losses)


def ref_multi_similarity(s, y, alpha=2.0, beta=50.0, base=0.5, eps=0.1):
    pos = [s[j] for j in range(len(s)) if y[j] > 0]
    neg = [s[j] for j in range(len(s)) if y[j] <= 0]
    kept_pos = [v for v in pos if v - eps < max(neg)]
    kept_neg = [v for v in neg if v + eps > min(pos)]
    if not kept_pos or not kept_neg:
        return 0.0
    pos_term = math.log(1 + sum(math.exp(-alpha * (v - base)) for v in kept_pos)) / alpha
    neg_term = math.log(1 + sum(math.exp(beta * (v - base)) for v in kept_neg)) / beta
    return pos_term + neg_term


def _recall_from_ranks(ranks, num_pos, ks, tau2, cap=False):
    """``tau2``: one temperature, one per cut-off, or None for tau2 = k (RS@k's default)."""
    taus = ks if tau2 is None else tau2 if isinstance(tau2, tuple | list) else [tau2] * len(ks)
    hits = [sum(sig((k - r) / t) for r in ranks) for k, t in zip(ks, taus, strict=True)]
    if cap:  # RS@k caps the soft number of hits at k
        hits = [min(h, k) for h, k in zip(hits, ks, strict=True)]
    return np.mean([h / min(num_pos, k) for h, k in zip(hits, ks, strict=True)])


def ref_sup_recall(s, y, ks=(1, 2, 4, 8, 16), tau2=1.0, **kw):
    pos = np.flatnonzero(y > 0)
    ranks = []
    for k in pos:
        rank_pos = 1 + sum(1 for j in pos if j != k and s[j] >= s[k])
        rank_neg = sum(roadmap_h(s[j] - s[k], **kw) for j in range(len(s)) if y[j] <= 0)
        ranks.append(rank_pos + rank_neg)
    return 1 - _recall_from_ranks(ranks, len(pos), ks, tau2)


def ref_rs_at_k(s, y, ks=(1, 2, 4, 8, 16), tau1=0.01, tau2=None):
    """RS@k as the authors' code computes it: cut-offs past the list taken as its length
    (``min(batch_size, k)``), each keeping the temperature of the cut-off as given."""
    pos = np.flatnonzero(y > 0)
    ranks = [1 + sum(sig((s[j] - s[k]) / tau1) for j in range(len(s)) if j != k) for k in pos]
    taus = ks if tau2 is None else tau2 if isinstance(tau2, tuple | list) else [tau2] * len(ks)
    clamped = [min(k, len(s)) for k in ks]
    return 1 - _recall_from_ranks(ranks, len(pos), clamped, list(taus), cap=True)


def _suprank_rank(s, rel, k, **kw):
    step = 0.0
    for j in range(len(s)):
        if j == k:
            continue
        d = s[j] - s[k]
        step += roadmap_h(d, **kw) if rel[j] < rel[k] else float(d >= 0)
    return 1 + step


def ref_hap(s, rel, **kw):
    total = 0.0
    for k in np.flatnonzero(rel > 0):
        hrank = rel[k] + sum(
            min(rel[j], rel[k]) for j in range(len(s)) if j != k and rel[j] > 0 and s[j] >= s[k]
        )
        total += hrank / _suprank_rank(s, rel, k, **kw)
    return 1 - total / rel.sum()


def exact_hap(s, rel):
    """H-AP with exact ranks (H(0) = 1), from the definition."""
    total = 0.0
    for k in np.flatnonzero(rel > 0):
        before = [j for j in range(len(s)) if j != k and s[j] >= s[k]]
        hrank = rel[k] + sum(min(rel[j], rel[k]) for j in before)
        total += hrank / (1 + len(before))
    return total / rel.sum()


def ref_sup_ndcg(s, rel, **kw):
    dcg = sum(
        (2 ** rel[k] - 1) / math.log2(1 + _suprank_rank(s, rel, k, **kw)) for k in np.flatnonzero(rel > 0)
    )
    ideal = sorted(rel, reverse=True)
    idcg = sum((2 ** r - 1) / math.log2(1 + i) for i, r in enumerate(ideal, start=1))
    return 1 - dcg / idcg


def ref_pnp(s, y, variant, tau=0.01, b=2.0, alpha=4.0):
    out = []
    for i in np.flatnonzero(y > 0):
        r = sum(sig((s[j] - s[i]) / tau) for j in range(len(s)) if y[j] <= 0)
        out.append(
            {
                "O": r,
                "Iu": (1 + r) * math.log(1 + r),
                "Ib": (b * r - math.log(1 + b * r)) / b**2,
                "Ds": math.log(1 + r),
                "Dq": 1 - 1 / (1 + r) ** alpha,
            }[variant]
        )
    return np.mean(out)


def ref_histogram_ap(s, y, nq=25, lo=0.0, hi=1.0, tie_aware=False):
    """Revaud et al.'s quantiser: bin k is min of a falling and a rising line, clamped at 0;
    the first bin is flat above `hi`, the last flat below `lo`."""
    a = (nq - 1) / (hi - lo)
    q = np.zeros((nq, len(s)))
    for k in range(nq):
        centre = hi - k / a
        falling = 1 - a * (s - centre) if k > 0 else np.ones_like(s)
        rising = 1 + a * (s - centre) if k < nq - 1 else np.ones_like(s)
        q[k] = np.clip(np.minimum(falling, rising), 0, None)
    c = q.sum(1)
    cp = (q * (y > 0)).sum(1)
    num_pos = cp.sum()
    if not tie_aware:
        cum, cum_pos = np.cumsum(c), np.cumsum(cp)
        return 1 - sum(cp[m] * cum_pos[m] / cum[m] for m in range(nq) if cum[m] > 0) / num_pos
    total = 0.0
    for m in range(nq):
        if c[m] <= 0:
            continue
        prev, prev_pos = c[:m].sum(), cp[:m].sum()
        r = max(cp[m] - 1, 0) / max(c[m] - 1, 0) if c[m] > 1 else 0.0
        # mean precision of a positive at a uniformly random position t in [0, c] of the tie
        integral = c[m] * r + (prev_pos + 1 - r * (prev + 1)) * math.log((prev + c[m] + 1) / (prev + 1))
        total += cp[m] * integral / c[m]
    return 1 - total / num_pos


def ref_fast_ap(s, y, num_bins=10):
    d = 2 - 2 * np.asarray(s, np.float64)
    delta = 4.0 / num_bins
    h = np.array([np.clip(1 - np.abs(d - b * delta) / delta, 0, None) for b in range(num_bins + 1)])
    hp = (h * (y > 0)).sum(1)
    hh = h.sum(1)
    H, Hp = np.cumsum(hh), np.cumsum(hp)
    return 1 - sum(hp[b] * Hp[b] / H[b] for b in range(num_bins + 1) if H[b] > 0) / (y > 0).sum()


# ----------------------------------------------------------------------------- value tests


def _per_list(fn, scores, labels, **kw):
    return np.asarray(fn(scores, labels, reduce_fn=None, **kw), np.float64)


@pytest.mark.parametrize("temperature", [0.01, 0.1])
def test_smooth_ap_reference(temperature):
    s, y = _lists()
    expected = [ref_smooth_ap(s[i], y[i], temperature) for i in range(B)]
    got = _per_list(rankax.smooth_ap_loss, s, y, temperature=temperature)
    np.testing.assert_allclose(got, expected, RTOL, ATOL)


@pytest.mark.parametrize(
    "kw", [{}, {"variant": "neurips"}, {"start": 0.0, "offset": 1.0}], ids=["sop", "neurips", "inat"]
)
def test_supap_reference(kw):
    s, y = _lists()
    expected = [ref_supap(s[i], y[i], **kw) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.supap_loss, s, y, **kw), expected, RTOL, ATOL)


def test_roadmap_step_variants_jump_at_delta():
    """The NeurIPS'21 branch jumps from about 1.49 to about 6.44 at delta; the fixed one not."""
    below = roadmap_h(0.05, variant="neurips")
    assert abs(below - 1.4933) < 1e-3
    assert abs(roadmap_h(0.0500001, variant="neurips") - 6.44) < 1e-3
    assert abs(roadmap_h(0.0500001) - 1.44) < 1e-3
    got = rankax.ranking.roadmap_step(np.array([0.05, 0.0500001], np.float32), variant="neurips")
    np.testing.assert_allclose(got, [below, 6.44], rtol=1e-4)


def test_calibration_and_contrastive_pool_over_pairs():
    s, y = _lists()
    np.testing.assert_allclose(rankax.calibration_loss(s, y), ref_calibration(s, y), RTOL, ATOL)
    per_list = [ref_calibration(s[i : i + 1], y[i : i + 1]) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.calibration_loss, s, y), per_list, RTOL, ATOL)
    np.testing.assert_allclose(
        rankax.calibration_loss(s, y, pos_margin=0.5, neg_margin=0.0),
        ref_calibration(s, y, 0.5, 0.0), RTOL, ATOL,
    )
    np.testing.assert_allclose(rankax.contrastive_loss(s, y), ref_contrastive(s, y), RTOL, ATOL)
    np.testing.assert_allclose(
        rankax.contrastive_loss(s, y, margin=1.5), ref_contrastive(s, y, 1.5), RTOL, ATOL
    )


def test_roadmap_is_supap_plus_pooled_calibration():
    s, y = _lists()
    supap = np.mean([ref_supap(s[i], y[i]) for i in range(B)])
    expected = 0.9 * supap + 0.1 * ref_calibration(s, y)
    got = rankax.roadmap_loss(s, y, supap_weight=0.9, calibration_weight=0.1)
    np.testing.assert_allclose(got, expected, RTOL, ATOL)


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_triplet_reference(mining):
    s, y = _lists()
    expected = [ref_triplet(s[i], y[i], 0.1, mining) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.triplet_loss, s, y, mining=mining), expected, RTOL, ATOL)
    expected = [ref_triplet(s[i], y[i], 0.5, mining) for i in range(B)]
    got = _per_list(rankax.triplet_loss, s, y, mining=mining, margin=0.5)
    np.testing.assert_allclose(got, expected, RTOL, ATOL)


def test_multi_similarity_reference():
    s, y = _lists()
    expected = [ref_multi_similarity(s[i], y[i]) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.multi_similarity_loss, s, y), expected, RTOL, ATOL)
    kw = dict(alpha=1.0, beta=10.0, base=0.2, epsilon=0.3)
    expected = [ref_multi_similarity(s[i], y[i], 1.0, 10.0, 0.2, 0.3) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.multi_similarity_loss, s, y, **kw), expected, RTOL, ATOL)


def test_recall_surrogates_reference():
    s, y = _lists()
    expected = [ref_sup_recall(s[i], y[i]) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.sup_recall_at_k_loss, s, y), expected, RTOL, ATOL)
    expected = [ref_sup_recall(s[i], y[i], ks=(1, 3), tau2=0.5) for i in range(B)]
    got = _per_list(rankax.sup_recall_at_k_loss, s, y, ks=(1, 3), k_temperature=0.5)
    np.testing.assert_allclose(got, expected, RTOL, ATOL)
    expected = [ref_rs_at_k(s[i], y[i]) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.recall_at_k_surrogate_loss, s, y), expected, RTOL, ATOL)
    expected = [ref_rs_at_k(s[i], y[i], (2, 4), 0.05, 0.5) for i in range(B)]
    got = _per_list(rankax.recall_at_k_surrogate_loss, s, y, ks=(2, 4), temperature=0.05, k_temperature=0.5)
    np.testing.assert_allclose(got, expected, RTOL, ATOL)
    # A flat recall sigmoid makes the soft hits of the 4-positive list exceed k = 1: capped.
    expected = [ref_rs_at_k(s[i], y[i], (1, 2), 0.01, 5.0) for i in range(B)]
    got = _per_list(rankax.recall_at_k_surrogate_loss, s, y, ks=(1, 2), k_temperature=5.0)
    np.testing.assert_allclose(got, expected, RTOL, ATOL)
    pos = np.flatnonzero(y[3])
    ranks = [1 + sum(sig((s[3, j] - s[3, k]) / 0.01) for j in range(N) if j != k) for k in pos]
    assert 1 - _recall_from_ranks(ranks, len(pos), (1, 2), 5.0) < got[3] - 1e-3
    # One temperature per cut-off (a list too), for both surrogates.
    expected = [ref_rs_at_k(s[i], y[i], (1, 4), 0.01, (0.5, 3.0)) for i in range(B)]
    got = _per_list(rankax.recall_at_k_surrogate_loss, s, y, ks=(1, 4), k_temperature=[0.5, 3.0])
    np.testing.assert_allclose(got, expected, RTOL, ATOL)
    expected = [ref_sup_recall(s[i], y[i], ks=(1, 3), tau2=(2.0, 0.5)) for i in range(B)]
    got = _per_list(rankax.sup_recall_at_k_loss, s, y, ks=(1, 3), k_temperature=(2.0, 0.5))
    np.testing.assert_allclose(got, expected, RTOL, ATOL)
    # A numpy array is a sequence too, as for ks (it was refused as "a finite number").
    got = _per_list(rankax.sup_recall_at_k_loss, s, y, ks=(1, 3), k_temperature=np.array([2.0, 0.5]))
    np.testing.assert_allclose(got, expected, RTOL, ATOL)
    with pytest.raises(ValueError, match=r"one per cut-off of ks=\(1, 2\), got \(1.0, 2.0, 3.0\)"):
        rankax.sup_recall_at_k_loss(s, y, ks=(1, 2), k_temperature=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"k_temperature must be one temperature or one per cut-off"):
        rankax.recall_at_k_surrogate_loss(s, y, ks=(1, 2), k_temperature=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=r"k_temperature must be a finite number > 0"):
        rankax.sup_recall_at_k_loss(s, y, ks=(1, 2), k_temperature=(1.0, -2.0))


def test_hap_and_sup_ndcg_reference():
    s, rel = _graded()
    expected = [ref_hap(s[i], rel[i]) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.hap_loss, s, rel), expected, RTOL, ATOL)
    expected = [ref_sup_ndcg(s[i], rel[i]) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.sup_ndcg_loss, s, rel), expected, RTOL, ATOL)


@pytest.mark.parametrize("variant", ["O", "Iu", "Ib", "Ds", "Dq"])
def test_pnp_reference(variant):
    s, y = _lists()
    expected = [ref_pnp(s[i], y[i], variant) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.pnp_loss, s, y, variant=variant), expected, RTOL, ATOL)
    if variant == "Dq":
        expected = [ref_pnp(s[i], y[i], "Dq", tau=0.1, alpha=8.0) for i in range(B)]
        got = _per_list(rankax.pnp_loss, s, y, variant="Dq", temperature=0.1, alpha=8.0)
        np.testing.assert_allclose(got, expected, RTOL, ATOL)


def official_tap_loss(x, label, nq=25, lo=0.0, hi=1.0):
    """Per-list ``1 - AP`` of naver/deep-image-retrieval's ``TAPLoss`` (``dirtorch/loss.py``,
    ``simplified=False``), written in float64 numpy from that code: its quantiser is a 1x1
    convolution with ``2 nq`` channels (slopes ``-a`` then ``+a``, ``a = (nq - 1) / (hi - lo)``,
    the first and last channel flat at 1), the bin weight the smaller of a channel pair,
    clamped at 0; then the counts, their cumulative sums and the tie-aware closed form with
    its ``eps = 1e-8``."""
    x, label = np.asarray(x, np.float64), np.asarray(label, np.float64)
    a = (nq - 1) / (hi - lo)
    weight = np.concatenate([np.full(nq, -a), np.full(nq, a)])
    bias = np.concatenate([a * lo + np.arange(nq, 0, -1), np.arange(2 - nq, 2, 1) - a * lo])
    weight[0] = weight[-1] = 0.0
    bias[0] = bias[-1] = 1.0
    lines = weight[None, :, None] * x[:, None, :] + bias[None, :, None]  # [N, 2 nq, M]
    q = np.maximum(np.minimum(lines[:, :nq], lines[:, nq:]), 0.0)
    c = q.sum(-1)
    cp = (q * label[:, None, :]).sum(-1)
    big_c, big_cp = np.cumsum(c, -1), np.cumsum(cp, -1)
    c_before = np.concatenate([np.zeros((len(x), 1)), big_c[:, :-1]], -1)
    cp_before = np.concatenate([np.zeros((len(x), 1)), big_cp[:, :-1]], -1)
    eps = 1e-8
    ratio = np.maximum(cp - 1, 0) / (np.maximum(c - 1, 0) + eps)
    log_term = np.log((big_c + 1) / (c_before + 1))
    aps = cp * (c * ratio + (cp_before + 1 - ratio * (c_before + 1)) * log_term) / (c + eps)
    return 1.0 - aps.sum(-1) / label.sum(-1)


@pytest.mark.parametrize(("num_bins", "score_range"), [(25, (0.0, 1.0)), (20, (-1.0, 1.0))])
def test_tie_aware_histogram_ap_equals_the_official_tap_loss(num_bins, score_range):
    """The tie-aware variant against the official code's arithmetic (not rankax's closed form),
    scores spilling past both ends of the range (the flat end bins)."""
    rng = np.random.default_rng(5)
    lo, hi = score_range
    s = rng.uniform(lo - 0.2, hi + 0.2, (6, 30)).astype(np.float32)
    y = (rng.uniform(size=(6, 30)) < 0.3).astype(np.float32)
    y[:, 0] = 1
    options = dict(num_bins=num_bins, score_range=score_range, tie_aware=True)
    got = _per_list(rankax.histogram_ap_loss, s, y, **options)
    np.testing.assert_allclose(got, official_tap_loss(s, y, num_bins, lo, hi), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("tie_aware", [False, True])
def test_histogram_ap_reference(tie_aware):
    s, y = _lists()
    expected = [ref_histogram_ap(s[i], y[i], tie_aware=tie_aware) for i in range(B)]
    got = _per_list(rankax.histogram_ap_loss, s, y, tie_aware=tie_aware)
    np.testing.assert_allclose(got, expected, RTOL, ATOL)
    expected = [ref_histogram_ap(s[i], y[i], 20, -1.0, 1.0, tie_aware) for i in range(B)]
    got = _per_list(rankax.histogram_ap_loss, s, y, num_bins=20, score_range=(-1.0, 1.0), tie_aware=tie_aware)
    np.testing.assert_allclose(got, expected, RTOL, ATOL)


def test_fast_ap_reference():
    s, y = _lists()
    for num_bins in (10, 4):
        expected = [ref_fast_ap(s[i], y[i], num_bins) for i in range(B)]
        got = _per_list(rankax.fast_ap_loss, s, y, num_bins=num_bins)
        np.testing.assert_allclose(got, expected, RTOL, ATOL)


def test_blackbox_ap_forward_and_rule():
    s, y = _lists()
    margin, lam = 0.02, 4.0
    shifted = s - margin * ((y > 0) - 0.5)
    expected = [1 - exact_ap(shifted[i], y[i]) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.blackbox_ap_loss, s, y), expected, RTOL, ATOL)

    # Gradient of one list by the blackbox rule, written out in numpy.
    i = 3
    sh, yy = shifted[i].astype(np.float64), y[i] > 0
    n = len(sh)

    def ranks(v):  # normalised ranks with H(0) = 1
        return np.array([(v >= v[k]).sum() for k in range(n)]) / n

    r = ranks(sh)
    r_pos = np.array([(sh[yy] >= sh[k]).sum() for k in range(n)]) / n
    # L = 1 - mean_{k in P} r_pos_k / r_k  =>  dL/dr_k = r_pos_k / r_k^2 / |P| on positives.
    g = np.where(yy, r_pos / r**2 / yy.sum(), 0.0)
    r_prime = ranks(sh + lam * g)
    expected_grad = -(r - r_prime) / lam
    grad = jax.grad(lambda v: rankax.blackbox_ap_loss(v, y[i]))(jnp.asarray(s[i]))
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_blackbox_random_margin_matches_official_shift():
    s, y = _lists()
    s = s * np.float32(0.02)  # scores as close as the margin: the noise reorders them
    key = jax.random.PRNGKey(0)
    # List i draws its N values from fold_in(key, i) (the batch path's rule, block-independent).
    z = np.abs(np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, i), s.shape[1:]))
                         for i in range(B)]))
    shifted = s - 0.02 * z * ((y > 0) - 0.5)
    expected = np.mean([1 - exact_ap(shifted[i], y[i]) for i in range(B)])
    np.testing.assert_allclose(rankax.blackbox_ap_loss(s, y, key=key), expected, RTOL, ATOL)
    assert abs(float(rankax.blackbox_ap_loss(s, y)) - expected) > 1e-3  # the draws matter


def _blackbox_rule(shifted, positive, valid, lam):
    """1 - AP and its gradient by the blackbox rule on one list, in numpy from the definition:
    normalised ranks #{valid j : v_j >= v_k} / n, rank among positives alike, AP's cotangent
    on the positives' ranks, ranks of the perturbed scores, -(r - r') / lambda."""
    v, pos = shifted.astype(np.float64), positive & valid
    n = max(valid.sum(), 1)

    def ranks(x):
        return np.array([np.sum(valid & (x >= x[k])) for k in range(len(x))]) / n

    r = ranks(v)
    r_pos = np.array([np.sum(pos & (v >= v[k])) for k in range(len(v))]) / n
    loss = 1 - np.mean(r_pos[pos] / r[pos])
    g = np.zeros(len(v))
    g[pos] = r_pos[pos] / r[pos] ** 2 / pos.sum()
    grad = np.where(valid, -(r - ranks(v + lam * g)) / lam, 0.0)
    return loss, grad


@pytest.mark.parametrize("lam", [0.05, 4.0, 300.0])
def test_blackbox_slots_and_sort_follow_the_rule(lam):
    """BlackBox AP's two algorithms -- ranks by sorting every list (given lists) and counts
    against the positives' slots (the ``batch_loss`` path) -- against the rule in numpy, on
    lists with exact ties (scores on a 0.05 grid) and invalid items."""
    rng = np.random.default_rng(11)
    s = (np.round(rng.uniform(-1, 1, (6, 40)) * 20) / 20).astype(np.float32)
    y = rng.random((6, 40)) < 0.2
    y[:, 0] = True
    w = rng.random((6, 40)) < 0.85
    w[:, 0] = True
    s, y, w = jnp.asarray(s), jnp.asarray(y, jnp.float32), jnp.asarray(w)
    def sorted_path(t):
        return rankax.blackbox_ap_loss(t, y, where=w, lambda_=lam, margin=0.02, reduce_fn=jnp.sum)

    def slot_path(t):  # the slots of all 40 items
        return rankax.blackbox_ap_loss(t, y, where=w, lambda_=lam, margin=0.02, reduce_fn=jnp.sum,
                                       max_positives=40)

    # The shifted scores as the loss computes them (float32), then the rule in float64.
    shifted = np.asarray(s - 0.02 * jnp.ones_like(s) * (((y > 0) & w).astype(jnp.float32) - 0.5))
    want = [_blackbox_rule(shifted[i], np.asarray(y[i] > 0), np.asarray(w[i]), lam) for i in range(6)]
    for path in (sorted_path, slot_path):
        value, grad = jax.jit(jax.value_and_grad(path))(s)
        np.testing.assert_allclose(value, sum(v for v, _ in want), rtol=1e-6, err_msg=path.__name__)
        np.testing.assert_allclose(grad, np.stack([g for _, g in want]), rtol=1e-5, atol=1e-6,
                                   err_msg=path.__name__)


@pytest.mark.parametrize("max_positives", [1, 3, 40])
def test_blackbox_list_api_with_max_positives_counts_as_the_sort_does(max_positives):
    """Given lists with ``max_positives`` are counted against slots (1: the ladder's larger
    rungs hold the lists with more positives), without it sorted: the same values and
    gradients under jit(grad(vmap)), on lists with exact ties and invalid items."""
    rng = np.random.default_rng(13)
    s = jnp.asarray(np.round(rng.uniform(-1, 1, (8, 40)) * 20) / 20, jnp.float32)
    y = jnp.asarray(rng.random((8, 40)) < 0.15, jnp.float32)
    w = jnp.asarray(rng.random((8, 40)) < 0.9)

    def mean_loss(t, mp):
        one = lambda a, b, c: rankax.blackbox_ap_loss(a, b, where=c, reduce_fn=None, max_positives=mp)  # noqa: E731
        return jnp.mean(jax.vmap(one)(t, y, w))

    want_value, want_grad = jax.jit(jax.value_and_grad(lambda t: mean_loss(t, None)))(s)
    value, grad = jax.jit(jax.value_and_grad(lambda t: mean_loss(t, max_positives)))(s)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


def test_blackbox_batch_loss_equals_the_list_api_with_ties():
    """``batch_loss`` (slot counts, dot products in tiles) against the list API on ``E E^T``
    (sorted ranks): embeddings on a coarse grid make exact ties between items; concrete labels,
    traced labels, traced with the capacity hint; also with a random margin's key."""
    rng = np.random.default_rng(12)
    b = 48
    e = np.round(rng.normal(size=(b, 4)) * 2) / 4  # exact products: ties between items
    e = jnp.asarray(e, jnp.float32)
    labels = np.repeat(np.arange(b // 4), 4)
    off = ~np.eye(b, dtype=bool)
    same = (labels[:, None] == labels[None, :]).astype(np.float32)

    def listwise(t, key=None):
        return rankax.blackbox_ap_loss(t @ t.T, same, where=off, key=key)

    want_value, want_grad = jax.value_and_grad(listwise)(e)
    calls = {
        "concrete": lambda t, lab: rankax.batch_loss(rankax.blackbox_ap_loss, t, labels),
        "traced": lambda t, lab: rankax.batch_loss(rankax.blackbox_ap_loss, t, lab),
        "hint": lambda t, lab: rankax.batch_loss(rankax.blackbox_ap_loss, t, lab, max_positives=3,
                                                capacity_limit=3),
    }
    for name, fn in calls.items():
        value, grad = jax.jit(jax.value_and_grad(fn))(e, jnp.asarray(labels))
        np.testing.assert_allclose(value, want_value, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6, err_msg=name)
    # The random margin: query r's list draws from fold_in(key, r) in the batch path, whatever
    # its blocks and tiles (one block, 16 rows, 7 rows with 3-row tiles), as row r of the list
    # API does, and as a vmap over the rows given those keys. Keys typed and raw, given to
    # batch_loss eagerly (they used to be turned into tuples) and traced.
    for key in (jax.random.key(3), jax.random.PRNGKey(3)):
        want_value, want_grad = jax.value_and_grad(lambda t, key=key: listwise(t, key))(e)
        assert abs(float(want_value) - float(listwise(e))) > 1e-4  # the noise changes the loss
        for block, tile in (("auto", None), (16, None), (7, 3 * 3 * b)):
            value, grad = jax.value_and_grad(lambda t, key=key, block=block, tile=tile: rankax.batch_loss(
                rankax.blackbox_ap_loss, t, labels, key=key, block_size=block, max_tile_elements=tile))(e)
            np.testing.assert_allclose(value, want_value, rtol=1e-6, err_msg=str(block))
            np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6, err_msg=str(block))
        traced = jax.jit(jax.value_and_grad(lambda t, lab, k: rankax.batch_loss(
            rankax.blackbox_ap_loss, t, lab, key=k, block_size=16)))
        value, grad = traced(e, jnp.asarray(labels), key)
        np.testing.assert_allclose(value, want_value, rtol=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
    key = jax.random.key(3)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(b, dtype=jnp.uint32))
    per_list = jax.vmap(lambda s, y, w, k: rankax.blackbox_ap_loss(s, y, where=w, key=k))
    np.testing.assert_allclose(jnp.mean(per_list(e @ e.T, same, off, keys)), listwise(e, key), rtol=1e-6)
    # One key per list, given whole: used as given (the batch path's form).
    np.testing.assert_allclose(rankax.blackbox_ap_loss(e @ e.T, same, where=off, key=keys),
                               listwise(e, key), rtol=1e-6)
    with pytest.raises(ValueError, match=r"key must be one key, or one per list \(shape \(48,\)\)"):
        rankax.blackbox_ap_loss(e @ e.T, same, where=off, key=keys[:3])
    with pytest.raises(ValueError, match="key must be one PRNG key"):
        rankax.batch_loss(rankax.blackbox_ap_loss, e, labels, key=keys)
    with pytest.raises(TypeError, match=r"batch_loss\(blackbox_ap_loss\): key must be None or a PRNG key"):
        rankax.batch_loss(rankax.blackbox_ap_loss, e, labels, key=3)

def test_normalized_softmax_reference():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(6, 5)).astype(np.float32)
    proxies = rng.normal(size=(3, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    p = proxies / np.linalg.norm(proxies, axis=1, keepdims=True)
    logits = e @ p.T / 0.05
    top = logits.max(1, keepdims=True)
    log_prob = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    expected = -log_prob[np.arange(6), labels]
    got = rankax.normalized_softmax_loss(emb, labels, proxies, reduce_fn=None)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    mean = rankax.normalized_softmax_loss(emb, labels, proxies)
    np.testing.assert_allclose(mean, expected.mean(), rtol=1e-4)
    with pytest.raises(ValueError, match="proxies"):
        rankax.normalized_softmax_loss(emb, labels, proxies[:, :4])
    with pytest.raises(ValueError, match="labels"):
        rankax.normalized_softmax_loss(emb, labels[:5], proxies)
    with pytest.raises(TypeError, match="labels"):
        rankax.normalized_softmax_loss(emb, labels.astype(np.float32), proxies)


# ----------------------------------------------------------------------------- limits


def _separated_list():
    """One tie-free list: scores 0.0545 apart (so no difference falls in (0, delta])."""
    rng = np.random.default_rng(5)
    s = rng.permutation(np.linspace(-0.3, 0.3, 12)).astype(np.float32)
    y = np.zeros(12, np.float32)
    y[[0, 3, 4, 9]] = 1.0
    return s, y


def test_smooth_ap_tends_to_ap():
    s, y = _separated_list()
    target = 1 - exact_ap(s, y)
    errors = [
        abs(float(rankax.smooth_ap_loss(s, y, temperature=t)) - target) for t in (0.1, 0.03, 0.01, 0.003)
    ]
    assert all(a > b or b < 1e-6 for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-5, errors


def test_histogram_ap_tends_to_ap_as_bins_grow():
    """Scores on the grid j/32: once the bin centres contain the grid (M - 1 a multiple of 32)
    every item sits on its own centre and the quantised AP is the exact AP."""
    rng = np.random.default_rng(6)
    s = (rng.choice(33, 14, replace=False) / 32).astype(np.float32)
    y = (rng.uniform(size=14) < 0.4).astype(np.float32)
    y[0] = 1.0
    target = 1 - exact_ap(s, y)
    errors = {
        m: abs(float(rankax.histogram_ap_loss(s, y, num_bins=m)) - target) for m in (3, 9, 33)
    }
    assert errors[3] > errors[9] > errors[33] and errors[33] < 1e-6, errors


@pytest.mark.parametrize(("num_bins", "score_range"), [(25, (0.0, 1.0)), (2, (0.0, 1.0)), (3, (0.0, 1.0)),
                                                      (7, (0.1, 0.9))])
def test_histogram_ends_are_flat_and_keep_each_item_s_mass(num_bins, score_range):
    """Every item weighs 1 in total over the bins (a partition of unity), so no score can move
    the total: its derivative is 0 everywhere, at the range's ends and one bin beyond them too.
    A score at or beyond an end sits in the flat end bin: the loss's gradient there is 0 (a
    top positive at ``hi``, e.g. a duplicate embedding, is not pushed down)."""
    from rankax.losses import histogram

    lo, hi = score_range
    w = (hi - lo) / (num_bins - 1)
    # (Off the inner centres, where the triangle's own kink has one-sided slopes.)
    points = jnp.array([lo, hi, hi + w, lo - w, hi + 0.3, lo - 0.3, (lo + hi) / 2 + w / 7, lo + w / 3])
    where = jnp.ones(points.shape, bool)

    def total(s):
        return jnp.sum(histogram._bin_counts(s, where, num_bins=num_bins, score_range=score_range))

    np.testing.assert_allclose(float(total(points)), len(points), rtol=1e-6)
    np.testing.assert_array_equal(jax.grad(total)(points), np.zeros(len(points)))
    s = jnp.array([hi, lo + 0.3 * w, hi + 0.1, lo, lo - 0.2, (lo + hi) / 2])
    y = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    grad = jax.grad(lambda t: rankax.histogram_ap_loss(t, y, num_bins=num_bins, score_range=score_range))(s)
    np.testing.assert_array_equal(np.asarray(grad)[[0, 2, 3, 4]], 0.0)


def test_supap_upper_bounds_one_minus_ap():
    rng = np.random.default_rng(7)
    s = rng.uniform(-1, 1, (B, N)).astype(np.float32)
    y = (rng.uniform(size=(B, N)) < 0.35).astype(np.float32)
    y[:, 0] = 1.0
    target = np.array([1 - exact_ap(s[i], y[i]) for i in range(B)])
    for variant in ("fixed", "neurips"):
        got = _per_list(rankax.supap_loss, s, y, variant=variant)
        assert np.all(got >= target - 1e-6), (variant, got - target)
    # and so are the graded SupRank losses on binary labels
    assert np.all(_per_list(rankax.hap_loss, s, y) >= target - 1e-6)


def test_sup_recall_tends_to_recall_at_k():
    """With h -> H (rho=0, start=0, offset=1, tau -> 0) and tau2 -> 0, SupR@k is the exact
    R@k = #{positives in the top k} / min(|P|, k) (no positive sits exactly at a cut-off)."""
    s, y = _separated_list()
    ranks = [1 + int((s > s[k]).sum()) for k in np.flatnonzero(y)]
    ks = tuple(k for k in (1, 2, 3, 5, 8, 11) if k not in ranks)
    recall = np.mean([sum(r <= k for r in ranks) / min(len(ranks), k) for k in ks])
    errors = []
    for t in (0.3, 0.1, 0.01):
        loss = rankax.sup_recall_at_k_loss(
            s, y, ks=ks, k_temperature=t, temperature=t / 10, rho=0.0, start=0.0, offset=1.0
        )
        errors.append(abs(float(loss) - (1 - recall)))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4, errors


def test_hap_is_ap_for_binary_relevance():
    s, y = _lists()
    np.testing.assert_allclose(
        _per_list(rankax.hap_loss, s, y), _per_list(rankax.supap_loss, s, y), rtol=1e-6, atol=1e-6
    )
    exact = dict(temperature=1e-4, rho=0.0, start=0.0, offset=1.0)
    expected = [1 - exact_ap(s[i], y[i]) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.hap_loss, s, y, **exact), expected, atol=1e-5)
    s, rel = _graded()
    expected = [1 - exact_hap(s[i], rel[i]) for i in range(B)]
    np.testing.assert_allclose(_per_list(rankax.hap_loss, s, rel, **exact), expected, atol=1e-5)


# ----------------------------------------------------------------------------- gradients

_SMOOTH = [
    (rankax.smooth_ap_loss, {"temperature": 0.1}),
    (rankax.supap_loss, {"temperature": 0.1}),
    (rankax.contrastive_loss, {}),
    (rankax.pnp_loss, {"temperature": 0.1, "variant": "Dq"}),
    (rankax.sup_recall_at_k_loss, {"temperature": 0.1, "ks": (1, 2, 4)}),
    (rankax.recall_at_k_surrogate_loss, {"temperature": 0.1, "ks": (1, 2, 4)}),
    (rankax.hap_loss, {"temperature": 0.1}),
    (rankax.sup_ndcg_loss, {"temperature": 0.1}),
    (rankax.histogram_ap_loss, {"num_bins": 10, "score_range": (-1.0, 1.0)}),
    (rankax.histogram_ap_loss, {"num_bins": 10, "score_range": (-1.0, 1.0), "tie_aware": True}),
    (rankax.fast_ap_loss, {}),
    (rankax.multi_similarity_loss, {}),
]


@pytest.mark.parametrize(
    "loss_fn, kw", _SMOOTH, ids=[f"{f.__name__}-{'-'.join(map(str, k.values()))}" for f, k in _SMOOTH]
)
def test_gradients_match_finite_differences(loss_fn, kw):
    s, _ = _separated_list()
    _, rel = _graded()
    y = rel[0, :12] if loss_fn in (rankax.hap_loss, rankax.sup_ndcg_loss) else _separated_list()[1]
    y = np.resize(y, 12)
    y[0] = max(y[0], 1.0)
    with jax.enable_x64(True):
        scores = jnp.asarray(s, jnp.float64) * 0.9
        fn = jax.jit(lambda v: loss_fn(v, jnp.asarray(y, jnp.float64), **kw))
        check_grads(fn, (scores,), order=1, modes=("rev",), eps=1e-5)


def test_normalized_softmax_gradients():
    rng = np.random.default_rng(8)
    with jax.enable_x64(True):
        emb = jnp.asarray(rng.normal(size=(5, 4)))
        proxies = jnp.asarray(rng.normal(size=(3, 4)))
        labels = jnp.array([0, 1, 2, 0, 1])
        fn = jax.jit(lambda e, p: rankax.normalized_softmax_loss(e, labels, p))
        check_grads(fn, (emb, proxies), order=1, modes=("rev",), eps=1e-5)


def ref_rs_at_k_authors_batch(x, y, ks=(1, 2, 4, 8, 16), tau1=0.01):
    """The RS@k of a batch as the authors' code computes it (``yash0307/RecallatK_surrogate:
    src/losses.py``), transcribed in float64: every item of the batch, the query included with
    its score ``x_q . x_q``, ranks each positive ``p != q`` of the query's class,
    ``rank_p = 1 + sum_{j != p} sigmoid((s_j - s_p) / tau1)``; cut-offs ``k' = min(k, n)`` with
    temperature ``k``, hits capped at ``k'``, over ``min(k', |P|)``; the mean of ``1 - RS@k``."""
    n = len(x)
    s = x @ x.T
    losses = []
    for q in range(n):
        pos = [p for p in range(n) if y[p] == y[q] and p != q]
        ranks = np.array([1 + sum(sig((s[q, j] - s[q, p]) / tau1) for j in range(n) if j != p) for p in pos])
        terms = []
        for k in ks:
            kk = min(k, n)
            terms.append(min(kk, np.sum(sig((kk - ranks) / k))) / min(kk, len(pos)))
        losses.append(1 - np.mean(terms))
    return np.mean(losses)


def test_rs_at_k_self_score_gives_the_authors_batch_loss():
    """``self_score=1.0`` with the default list (the query left out) is the authors' batch loss
    for unit-norm embeddings, value and gradient; without it the loss is another one."""
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(6), 4)
    centres = rng.normal(size=(6, 12))
    emb = centres[y] + 0.8 * rng.normal(size=(24, 12))  # classes that overlap a little

    def unit(e):
        return e / np.linalg.norm(e, axis=-1, keepdims=True)

    def ours(e, **kw):
        e = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
        return rankax.batch_loss(rankax.recall_at_k_surrogate_loss, e, jnp.asarray(y), **kw)

    with jax.enable_x64(True):
        want = ref_rs_at_k_authors_batch(unit(emb), y)
        got = float(ours(jnp.asarray(emb), self_score=1.0))
        without = float(ours(jnp.asarray(emb)))
        print(f"RS@k batch: authors {want:.6f}, self_score=1.0 {got:.6f}, without {without:.6f}")
        assert got == pytest.approx(want, rel=1e-10)
        assert abs(without - want) > 1e-2
        # 9 items: cut-offs 16 and 8... reach past the list, where k = min(k, n) counts the query
        small = np.r_[0:3, 4:7, 8:11]
        want = ref_rs_at_k_authors_batch(unit(emb[small]), y[small])
        got = rankax.batch_loss(rankax.recall_at_k_surrogate_loss, jnp.asarray(unit(emb[small])),
                                jnp.asarray(y[small]), self_score=1.0)
        assert float(got) == pytest.approx(want, rel=1e-10)
        # the gradient along a random direction, from central differences of the transcription
        direction = rng.normal(size=emb.shape)
        eps = 1e-6
        fd = (ref_rs_at_k_authors_batch(unit(emb + eps * direction), y)
              - ref_rs_at_k_authors_batch(unit(emb - eps * direction), y)) / (2 * eps)
        grad = jax.grad(lambda e: ours(e, self_score=1.0))(jnp.asarray(emb))
        assert float(jnp.sum(grad * direction)) == pytest.approx(fd, rel=1e-5, abs=1e-9)
    with pytest.raises(ValueError, match=r"self_score must be a finite number, got nan"):
        rankax.recall_at_k_surrogate_loss(np.zeros((1, 3)), np.ones((1, 3)), self_score=float("nan"))
