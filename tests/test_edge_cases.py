"""Valid edge cases of every loss (``rankax.losses.LIST_LOSSES``), at list level and through
``rankax.batch_loss``: the behaviour documented in ``docs/losses.md`` ("Edge cases").

Every expected number comes from a closed form written from the loss's formula, a numpy /
scikit-learn computation, a limit of the formula, or an identity; none from rankax.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import average_precision_score

import rankax
from rankax import losses
from tests import jaxprs

LOSSES = losses.LIST_LOSSES
PAIR_POOLED = set(losses.PAIR_POOLED_LOSSES)
KS = (1, 2, 4, 8, 16)  # the recall losses' default cut-offs
ids = lambda f: f.__name__  # noqa: E731
# Losses of graded relevance, run through batch_loss on [B, 2] label paths.
HIERARCHICAL = {rankax.hap_loss, rankax.sup_ndcg_loss}
# Losses of score differences only: L(s + c) = L(s), so their gradient sums to 0 over a list.
SHIFT_INVARIANT = {
    rankax.smooth_ap_loss, rankax.supap_loss, rankax.sup_recall_at_k_loss, rankax.sup_ndcg_loss,
    rankax.hap_loss, rankax.pnp_loss, rankax.recall_at_k_surrogate_loss, rankax.triplet_loss,
}


@functools.cache
def _compiled(fn, dtype=jnp.float32, hparams=()):
    """Per-list values, the mean, the gradients of their sum and of the mean, and the per-list
    values with one positive slot (exact fallback): one compilation per loss, dtype and
    hyperparameters, every list test of this module uses the shape [2, 8]."""
    kw = dict(hparams)

    def outputs(scores, labels):
        def total(s):
            per_list = fn(s, labels, reduce_fn=None, **kw)
            return jnp.sum(per_list), per_list

        (_, per_list), grad_sum = jax.value_and_grad(total, has_aux=True)(scores)
        mean, grad_mean = jax.value_and_grad(lambda s: fn(s, labels, **kw))(scores)
        small = fn(scores, labels, reduce_fn=None, max_positives=1, **kw)
        return dict(per_list=per_list, grad_sum=grad_sum, mean=mean, grad_mean=grad_mean, small=small)

    return jax.jit(outputs)


def _run(fn, scores, labels, dtype=jnp.float32, **hparams):
    # Rounded to ``dtype`` here, outside the compiled function: inside it XLA may keep the
    # float32 value of a float32 -> low-precision -> float32 round trip (excess precision, the
    # GPU default), and the test would no longer compare rounded inputs with rounded inputs.
    scores = jnp.asarray(np.float32(scores)).astype(dtype)
    out = _compiled(fn, dtype, tuple(sorted(hparams.items())))(scores, np.float32(labels))
    assert out["mean"].dtype == jnp.float32 and out["grad_sum"].dtype == jnp.dtype(dtype)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def _assert_finite(out):
    for name, value in out.items():
        assert np.all(np.isfinite(value)), name


def _recall_from_ranks(ranks, num_pos, tau2=1.0, cap=False, length=None):
    """1 - mean_k sum_p sigmoid((k - rank_p) / tau2) / min(|P|, k) (RS@k caps the sum at k, and
    with the list's ``length`` takes k = min(k, length)); ``tau2=None``: tau2 = k at cut-off k as
    given (RS@k's default)."""
    terms = []
    for k in KS:
        tau = k if tau2 is None else tau2
        k = k if length is None else min(k, length)
        hits = np.sum(expit((k - np.asarray(ranks, np.float64)) / tau))
        terms.append((min(hits, k) if cap else hits) / min(num_pos, k))
    return 1.0 - np.mean(terms)


def _rs_at_k_ref(s, y, tau1=0.01, tau2=None):
    s = np.asarray(s, np.float64)
    pos = np.flatnonzero(y > 0)
    ranks = [1 + sum(expit((s[j] - s[p]) / tau1) for j in range(len(s)) if j != p) for p in pos]
    return _recall_from_ranks(ranks, len(pos), tau2, cap=True, length=len(s))


# ----------------------------------------------------------------------------- all scores tied

TIES, N_TIED = (0.3, -0.2), 8
TIED_LABELS = np.float32([[1, 1, 0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 1, 0, 1, 0]])


def _tied_value(fn, t, n=N_TIED, p=3):
    """Each loss on a list of n items all scored t, p of them positive, from its formula:
    sigmoid(0) = 1/2 in the smooth steps (and in SupRank's h for negatives), H(0) = 1 in the
    exact steps (rank+ of SupAP/H-AP/SupR@k, BlackBox), every item in the same histogram bins."""
    neg = n - p
    name = fn.__name__
    supap = 1 - p / (p + neg / 2)  # rank+ = p (H(0) = 1), rank- = neg * sigmoid(0)
    calibration = max(0.0, 0.9 - t) + max(0.0, t - 0.6)  # every active term is equal
    ideal_dcg = sum(1 / math.log2(1 + i) for i in range(1, p + 1))
    values = {
        "smooth_ap_loss": 1 - (1 + (p - 1) / 2) / (1 + (n - 1) / 2),
        "supap_loss": supap,
        "hap_loss": supap,
        "calibration_loss": calibration,
        "roadmap_loss": supap + calibration,
        "sup_recall_at_k_loss": _recall_from_ranks([p + neg / 2] * p, p),
        "sup_ndcg_loss": 1 - (p / math.log2(1 + p + neg / 2)) / ideal_dcg,
        "pnp_loss": 1 - (1 + neg / 2) ** -4.0,  # Dq, alpha = 4, R = neg * sigmoid(0)
        "histogram_ap_loss": 1 - p / n,  # one (split) bin: precision p/n for every positive
        "fast_ap_loss": 1 - p / n,
        "blackbox_ap_loss": 1 - p / n,  # margin puts negatives first; positives tied: rank n
        "recall_at_k_surrogate_loss": _recall_from_ranks([1 + (n - 1) / 2] * p, p, tau2=None, cap=True,
                                                         length=n),
        # d = sqrt(2 - 2t) > margin 1: negative terms vanish; positives d^2 / 2 = 1 - t.
        "contrastive_loss": p * (1 - t) / n,
        "triplet_loss": 0.1,  # margin + max_n s - min_p s = margin
        "multi_similarity_loss": math.log1p(p * math.exp(-2 * (t - 0.5))) / 2
        + math.log1p(neg * math.exp(50 * (t - 0.5))) / 50,
    }
    return values[name]


@pytest.mark.parametrize("loss_fn", LOSSES, ids=ids)
def test_all_scores_tied(loss_fn):
    scores = np.repeat(np.float32(TIES)[:, None], N_TIED, axis=1)
    out = _run(loss_fn, scores, TIED_LABELS)
    _assert_finite(out)
    expected = [_tied_value(loss_fn, t) for t in TIES]
    np.testing.assert_allclose(out["per_list"], expected, rtol=1e-5, atol=1e-6)
    if loss_fn not in PAIR_POOLED:
        np.testing.assert_allclose(out["mean"], np.mean(expected), rtol=1e-5, atol=1e-6)
        # One slot for three positives: the exact fallback, the same values.
        np.testing.assert_allclose(out["small"], out["per_list"], rtol=1e-6, atol=1e-7)
    if loss_fn in SHIFT_INVARIANT:
        for g in out["grad_sum"]:
            np.testing.assert_allclose(np.sum(g), 0.0, atol=1e-5 * np.sum(np.abs(g)) + 1e-6)


# ----------------------------------------------------------------------------- no positive / no negative


def _two_lists():
    rng = np.random.default_rng(0)
    scores = rng.uniform(-0.9, 0.9, (2, 8)).astype(np.float32)
    labels = np.zeros((2, 8), np.float32)
    labels[0, [1, 4, 6]] = 1.0  # list 1 has no positive
    return scores, labels


def _negative_half(s):
    """Pair-pooled losses on a list of negatives only: calibration's and contrastive's
    negative terms, each averaged as the loss does."""
    s = np.asarray(s, np.float64)
    calib_terms = np.maximum(s - 0.6, 0.0)
    calibration = calib_terms[calib_terms > 0].mean() if np.any(calib_terms > 0) else 0.0
    contrastive = np.mean(0.5 * np.maximum(1.0 - np.sqrt(2 - 2 * s), 0.0) ** 2)
    return {"calibration_loss": calibration, "roadmap_loss": calibration, "contrastive_loss": contrastive}


@pytest.mark.parametrize("loss_fn", LOSSES, ids=ids)
def test_list_without_positive(loss_fn):
    scores, labels = _two_lists()
    out = _run(loss_fn, scores, labels)
    _assert_finite(out)
    if loss_fn in PAIR_POOLED:
        # Defined on negative pairs too: the list's value is its negative half.
        expected = _negative_half(scores[1])[loss_fn.__name__]
        np.testing.assert_allclose(out["per_list"][1], expected, rtol=1e-5, atol=1e-6)
        return
    # 0 per list, zero gradient, excluded from the mean.
    assert out["per_list"][1] == 0.0
    np.testing.assert_array_equal(out["grad_sum"][1], 0.0)
    np.testing.assert_array_equal(out["grad_mean"][1], 0.0)
    np.testing.assert_allclose(out["mean"], out["per_list"][0], rtol=1e-6)
    # Every list without positive: mean 0.0 exactly, all-zero gradients.
    none = _run(loss_fn, scores, np.zeros_like(labels))
    assert none["mean"] == 0.0 and np.all(none["per_list"] == 0.0)
    np.testing.assert_array_equal(none["grad_mean"], 0.0)
    np.testing.assert_array_equal(none["grad_sum"], 0.0)


def _no_negative_value(fn, s):
    """Each loss on a list whose items are all positive (tie-free scores ``s``)."""
    s64 = np.asarray(s, np.float64)
    n = len(s)
    calibration = np.mean(np.maximum(0.9 - s64, 0.0)[0.9 - s64 > 0])
    values = {
        "calibration_loss": calibration,
        "roadmap_loss": calibration,  # SupAP part: rank = rank+, AP = 1
        "contrastive_loss": np.mean(1.0 - s64),  # d^2 / 2 on every (positive) pair
        # exact ranks 1..n (SupRank's rank+ is exact): no gradient, but sigmoid(k - r) != H
        "sup_recall_at_k_loss": _recall_from_ranks(np.arange(1, n + 1), n),
        "recall_at_k_surrogate_loss": _rs_at_k_ref(s, np.ones(n)),
    }
    return values.get(fn.__name__, 0.0)  # all AP/NDCG/PNP/triplet/MS: perfect list, 0


@pytest.mark.parametrize("loss_fn", LOSSES, ids=ids)
def test_list_without_negative(loss_fn):
    first = np.float32([0.81, 0.62, 0.43, 0.27, 0.08, -0.15, -0.38, -0.6])
    scores = np.stack([first, first[::-1] * 0.9])
    labels = np.ones_like(scores)
    out = _run(loss_fn, scores, labels)
    _assert_finite(out)
    expected = [_no_negative_value(loss_fn, s) for s in scores]
    np.testing.assert_allclose(out["per_list"], expected, rtol=1e-5, atol=1e-6)
    if loss_fn not in PAIR_POOLED:  # counted in the mean (pair-pooled: pooled, not averaged)
        np.testing.assert_allclose(out["mean"], np.mean(expected), rtol=1e-5, atol=1e-6)
    if loss_fn not in PAIR_POOLED | {rankax.recall_at_k_surrogate_loss}:
        # Nothing to push: zero gradient (SupR@k's ranks are exact among positives).
        np.testing.assert_allclose(out["grad_sum"], 0.0, atol=1e-6)


# ----------------------------------------------------------------------------- batches

B, D = 12, 6


def _embeddings(seed=0):
    """L2-normalised, then rounded to bfloat16 (also exact in float16): the float32 batch is
    the reference of the low-precision ones, with no rounding in between."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(B, D)).astype(np.float32)
    emb = np.float32((emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(jnp.bfloat16))
    assert np.array_equal(np.float32(emb.astype(jnp.float16)), emb)
    return emb


BATCH_CASES = {
    "k1": np.arange(B),  # every class once: no query has a positive
    "one_class": np.zeros(B, np.int64),  # every other item is a positive, no negative
    "pk": np.repeat(np.arange(4), 3),
}
PATH_CASES = {
    "paths_k1": np.stack([np.arange(B), np.arange(B) + 100], axis=1),  # no level shared
    "paths_one_class": np.zeros((B, 2), np.int64),
}
DTYPES = (jnp.bfloat16, jnp.float16)
# A rounded gradient is within one unit in the last place of the float32 one (bfloat16 keeps
# 8 significant bits, float16 11; float16's subnormals are 6e-8 apart).
GRAD_RTOL = {jnp.bfloat16: 2.0**-7, jnp.float16: 2.0**-10}
GRAD_ATOL = {jnp.bfloat16: 0.0, jnp.float16: 6e-8}


def _batch_outputs(loss_fn):
    """(value, gradient) of batch_loss for every case below, compiled once: the label cases
    are traced and vmapped, so batch_loss takes its capacity ladder: under vmap every rung is
    computed for every case, and each case keeps its own rung's result. ``max_positives=3``, the
    default ladder's first rung, leaves rungs 3 and 12 (the 12 items include the masked query);
    the default ladder 3, 4, 12 would add a rung that no case takes."""

    def value_and_grad(emb, labels):
        def loss(e):
            return rankax.batch_loss(loss_fn, e, labels, block_size=None, max_positives=3)

        return jax.value_and_grad(loss)(emb)

    def outputs(emb, emb16, labels, paths):
        values, grads = jax.vmap(value_and_grad, in_axes=(None, 0))(emb, labels)
        out = {name: (values[i], grads[i]) for i, name in enumerate(BATCH_CASES)}
        if paths is not None:
            values, grads = jax.vmap(value_and_grad, in_axes=(None, 0))(emb, paths)
            out.update({name: (values[i], grads[i]) for i, name in enumerate(PATH_CASES)})
        out["float16"] = value_and_grad(emb16, labels[2])
        return out

    hierarchical = loss_fn in HIERARCHICAL
    paths = np.stack(list(PATH_CASES.values())) if hierarchical else None
    labels = np.stack(list(BATCH_CASES.values()))
    emb = _embeddings()  # float16 made outside jit: an argument, no round trip to elide
    return jax.device_get(jax.jit(outputs)(emb, jnp.asarray(emb, jnp.float16), labels, paths))


def _pairs(emb, labels):
    sim = emb.astype(np.float64) @ emb.T.astype(np.float64)
    off = ~np.eye(B, dtype=bool)
    same = labels[:, None] == labels[None, :]
    return sim[off], same[off]


def _pooled_pair_value(fn, emb, labels):
    """calibration / contrastive / ROADMAP pooled over every pair i != j of the batch."""
    s, same = _pairs(emb, labels)
    pos_terms, neg_terms = np.maximum(0.9 - s[same], 0), np.maximum(s[~same] - 0.6, 0)
    calibration = sum(t[t > 0].mean() if np.any(t > 0) else 0.0 for t in (pos_terms, neg_terms))
    d = np.sqrt(np.maximum(2 - 2 * s, 0))
    contrastive = np.mean(np.where(same, 0.5 * d**2, 0.5 * np.maximum(1 - d, 0) ** 2))
    return {"calibration_loss": calibration, "roadmap_loss": calibration, "contrastive_loss": contrastive}[
        fn.__name__
    ]


def _single_class_value(fn, emb):
    """Every query's list is all positives: AP-type losses are 0; the recall surrogates keep
    their sigmoid's offset on the exact ranks 1..B-1; pair losses pool their positive half."""
    name = fn.__name__
    if fn in PAIR_POOLED:
        return _pooled_pair_value(fn, emb, BATCH_CASES["one_class"])
    if name == "sup_recall_at_k_loss":
        return _recall_from_ranks(np.arange(1, B), B - 1)
    if name == "recall_at_k_surrogate_loss":
        sim = emb.astype(np.float64) @ emb.T.astype(np.float64)
        return np.mean([_rs_at_k_ref(np.delete(sim[i], i), np.ones(B - 1)) for i in range(B)])
    return 0.0


@pytest.mark.parametrize("loss_fn", LOSSES, ids=ids)
def test_batch_edge_cases(loss_fn):
    """Through batch_loss: a batch where no query has a positive (K = 1, label paths sharing no
    level), a single-class batch, float16 embeddings."""
    out = _batch_outputs(loss_fn)
    emb = _embeddings()
    for case, (value, grad) in out.items():
        assert value.dtype == np.float32 and np.all(np.isfinite(grad)), case

    # No query has a positive: 0.0 and all-zero gradients. Pair-pooled losses still pool the
    # negative pairs of the batch.
    for case in [c for c in out if c.endswith("k1")]:
        value, grad = out[case]
        if loss_fn in PAIR_POOLED:
            expected = _pooled_pair_value(loss_fn, emb, BATCH_CASES["k1"])
            np.testing.assert_allclose(value, expected, rtol=1e-5, err_msg=case)
        else:
            assert value == 0.0, case
            np.testing.assert_array_equal(grad, 0.0, err_msg=case)

    # Single class: no negatives anywhere.
    expected = _single_class_value(loss_fn, emb)
    for case in [c for c in out if c.endswith("one_class")]:
        value, grad = out[case]
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6, err_msg=case)
        if loss_fn not in PAIR_POOLED | {rankax.recall_at_k_surrogate_loss}:
            np.testing.assert_allclose(grad, 0.0, atol=1e-6, err_msg=case)

    # float16 embeddings (exactly representable: no rounding of the inputs): the float32 value
    # of the float32 batch; a float16 gradient, finite, the float32 gradient rounded.
    (value, grad), (value32, grad32) = out["float16"], out["pk"]
    assert grad.dtype == np.float16
    np.testing.assert_allclose(value, value32, rtol=1e-5, atol=1e-6)
    rtol, atol = GRAD_RTOL[jnp.float16], GRAD_ATOL[jnp.float16]
    np.testing.assert_allclose(np.float32(grad), grad32, rtol=rtol, atol=atol + 1e-7)


@pytest.mark.parametrize("loss_fn", LOSSES, ids=ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_low_precision_lists(loss_fn, dtype):
    rng = np.random.default_rng(3)
    scores = rng.uniform(-1, 1, (2, 8)).astype(np.float32)
    scores[1, :4] = 0.5  # exact ties
    labels = (rng.uniform(size=(2, 8)) < 0.4).astype(np.float32)
    labels[:, 0], labels[:, 1] = 1.0, 0.0
    low = _run(loss_fn, scores, labels, dtype=dtype)  # rounded to dtype inside
    ref = _run(loss_fn, np.float32(scores.astype(dtype)), labels)
    _assert_finite(low)
    np.testing.assert_allclose(low["per_list"], ref["per_list"], rtol=1e-5, atol=1e-6)
    for g in ("grad_sum", "grad_mean"):
        np.testing.assert_allclose(low[g], ref[g], rtol=GRAD_RTOL[dtype], atol=GRAD_ATOL[dtype] + 1e-7)


# Primitives that only move, compare or test values: exact in any dtype. Everything else that
# reads or writes a bfloat16/float16 value is arithmetic in that dtype.
EXACT_PRIMITIVES = {
    "convert_element_type", "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose",
    "slice", "dynamic_slice", "dynamic_update_slice", "concatenate", "gather", "scatter", "copy",
    "copy_p", "select_n", "is_finite", "eq", "ne", "lt", "le", "gt", "ge", "sharding_constraint",
}


def _low_precision_arithmetic(jaxpr) -> list[str]:
    """Primitives outside ``EXACT_PRIMITIVES`` with a bfloat16/float16 operand or result,
    searched through every nested program (jit, custom_vjp, cond, scan, ...)."""
    low = {np.dtype(jnp.bfloat16), np.dtype(jnp.float16)}
    found = []
    for eqn in jaxprs.equations(jaxpr):
        dtypes = {getattr(v.aval, "dtype", None) for v in (*eqn.invars, *eqn.outvars)}
        if not jaxprs.nested(eqn) and eqn.primitive.name not in EXACT_PRIMITIVES and dtypes & low:
            found.append(eqn.primitive.name)
    return found


LOW_PRECISION_METRICS = (rankax.metrics.average_precision, rankax.metrics.map_at_r, rankax.metrics.ndcg)


@pytest.mark.parametrize("fn", LOSSES + LOW_PRECISION_METRICS, ids=ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_low_precision_inputs_are_computed_in_float32(fn, dtype):
    """No arithmetic in bfloat16/float16, forward or backward, in a list function or in
    batch_loss: only the conversions at the edges touch the low-precision values. XLA:CPU
    computes low-precision elementwise ops in float32 anyway, so the value tests above would
    pass on the CPU even for a loss written in bfloat16, where a GPU computes them natively.
    This inspects the traced program, which is the same on every backend (docs/benchmarks.md,
    "Call paths and the GPU")."""
    rng = np.random.default_rng(0)
    scores = jnp.asarray(rng.uniform(-1, 1, (2, 8)), dtype)
    labels = np.float32(rng.uniform(size=(2, 8)) < 0.4)
    labels[:, 0] = 1.0
    program = jax.make_jaxpr(jax.value_and_grad(lambda s: fn(s, labels)))(scores)
    assert _low_precision_arithmetic(program.jaxpr) == []
    if fn in LOW_PRECISION_METRICS:
        return
    emb = jnp.asarray(_embeddings(), dtype)
    pk = BATCH_CASES["pk"]
    batch_labels = np.stack([pk, pk], axis=1) if fn in HIERARCHICAL else pk
    closed_over = jax.make_jaxpr(jax.value_and_grad(lambda e: rankax.batch_loss(fn, e, batch_labels)))(emb)
    traced = jax.make_jaxpr(jax.value_and_grad(lambda e, y: rankax.batch_loss(fn, e, y)))(emb, batch_labels)
    for program in (closed_over, traced):
        assert _low_precision_arithmetic(program.jaxpr) == []


def test_bfloat16_cross_batch_memory_is_scored_in_float32():
    """rankax.xbm stores bfloat16 embeddings on request (docs: "the scores are computed in
    float32 anyway"): enqueuing and ranking against that memory does no bfloat16 arithmetic."""
    emb = _embeddings()

    def step(e, memory):
        memory = rankax.xbm.update(memory, e, BATCH_CASES["pk"])
        return rankax.batch_loss(rankax.supap_loss, e, BATCH_CASES["pk"], memory=memory)

    memory = rankax.xbm.init(2 * B, D, dtype=jnp.bfloat16)
    program = jax.make_jaxpr(jax.value_and_grad(step))(emb, memory)
    assert _low_precision_arithmetic(program.jaxpr) == []


def test_low_precision_check_sees_arithmetic():
    """The inspection above finds bfloat16 arithmetic nested in jit and custom_vjp programs."""

    @jax.custom_vjp
    def double(x):
        return 2 * x

    double.defvjp(lambda x: (2 * x, None), lambda _, g: (2 * g,))
    nested = jax.jit(lambda s: jnp.sum(double(jnp.exp(s)).astype(jnp.float32)))
    program = jax.make_jaxpr(jax.value_and_grad(nested))(jnp.ones(3, jnp.bfloat16))
    assert {"exp", "mul"} <= set(_low_precision_arithmetic(program.jaxpr))
    converted = jax.make_jaxpr(lambda s: jnp.exp(s.astype(jnp.float32)))(jnp.ones(3, jnp.bfloat16))
    assert _low_precision_arithmetic(converted.jaxpr) == []


# ----------------------------------------------------------------------------- extreme temperatures

# Two tie-free lists (every gap >= 0.02, so sigmoid(gap / 1e-6) is exactly 0 or 1 in float32),
# with negatives just above (within delta = 0.05) and far above (linear branch) positives.
EXTREME_SCORES = np.float32(
    [[0.9, 0.71, 0.68, 0.5, 0.47, 0.2, -0.1, -0.4], [0.3, 0.62, -0.55, 0.05, 0.83, -0.2, 0.44, 0.1]]
)
EXTREME_LABELS = np.float32([[0, 1, 0, 1, 0, 0, 1, 0], [1, 0, 0, 1, 0, 0, 1, 0]])


def _h(x, tau=0.01, rho=100.0, delta=0.05, start=0.5, offset=1.44):
    """ROADMAP's step h (fixed variant), float64, any tau."""
    x = np.asarray(x, np.float64)
    sig = expit(x / tau)
    return np.where(x <= 0, sig, np.where(x <= delta, start + sig, rho * (x - delta) + offset))


def _suprank_ranks(s, y, **step):
    """Binary SupRank rank of each positive: exact H among positives, h for negatives."""
    s = np.asarray(s, np.float64)
    pos, neg = np.flatnonzero(y > 0), np.flatnonzero(y == 0)
    rank_pos = np.array([1 + np.sum(s[pos] >= s[k]) - 1 for k in pos], np.float64)
    rank = rank_pos + np.array([np.sum(_h(s[neg] - s[k], **step)) for k in pos])
    return rank, rank_pos


def _supap_ref(s, y, **step):
    rank, rank_pos = _suprank_ranks(s, y, **step)
    return 1 - np.mean(rank_pos / rank)


def _sup_ndcg_ref(s, y, **step):
    rank, _ = _suprank_ranks(s, y, **step)
    ideal = sum(1 / np.log2(1 + i) for i in range(1, int(y.sum()) + 1))
    return 1 - np.sum(1 / np.log2(1 + rank)) / ideal


def _sup_recall_ref(s, y, tau2=1.0, **step):
    rank, _ = _suprank_ranks(s, y, **step)
    return _recall_from_ranks(rank, len(rank), tau2)


def _negatives_before(s, y, tau):
    s = np.asarray(s, np.float64)
    return np.array([np.sum(expit((s[y == 0] - s[k]) / tau)) for k in np.flatnonzero(y > 0)])


def _one_minus_ap(s, y):
    return 1 - average_precision_score(y > 0, s)


def _ms_ref(s, y, alpha=2.0, beta=50.0, base=0.5, eps=0.1):
    s = np.asarray(s, np.float64)
    sp, sn = s[y > 0], s[y == 0]
    mp, mn = sp[sp - eps < sn.max()], sn[sn + eps > sp.min()]
    if not (mp.size and mn.size):
        return 0.0
    log1p_sum_exp = lambda x: np.logaddexp.reduce(np.concatenate([[0.0], x]))  # noqa: E731
    return log1p_sum_exp(-alpha * (mp - base)) / alpha + log1p_sum_exp(beta * (mn - base)) / beta


def _ms_hinge(s, y, base=0.5, eps=0.1):
    """The alpha, beta -> inf limit: (1/a) log(1 + sum e^{a x}) -> max(0, max x)."""
    s = np.asarray(s, np.float64)
    sp, sn = s[y > 0], s[y == 0]
    mp, mn = sp[sp - eps < sn.max()], sn[sn + eps > sp.min()]
    return max(0.0, np.max(base - mp)) + max(0.0, np.max(mn - base))


def _n_p(y):
    return len(y), int(np.sum(y > 0))


TINY, HUGE = 1e-6, 1e6
EXTREMES = [
    # tau -> 0: exact 1 - AP (tie-free); tau -> inf: sigmoid = 1/2 everywhere.
    (rankax.smooth_ap_loss, {"temperature": TINY}, _one_minus_ap),
    (rankax.smooth_ap_loss, {"temperature": HUGE}, lambda s, y: 1 - (_n_p(y)[1] + 1) / (_n_p(y)[0] + 1)),
    (rankax.supap_loss, {"temperature": TINY}, functools.partial(_supap_ref, tau=TINY)),
    (rankax.supap_loss, {"temperature": HUGE}, functools.partial(_supap_ref, tau=HUGE)),
    (rankax.supap_loss, {"rho": 1e12}, functools.partial(_supap_ref, rho=1e12)),
    (rankax.hap_loss, {"temperature": TINY}, functools.partial(_supap_ref, tau=TINY)),  # binary: SupAP
    (rankax.hap_loss, {"temperature": HUGE}, functools.partial(_supap_ref, tau=HUGE)),
    (rankax.sup_ndcg_loss, {"temperature": TINY}, functools.partial(_sup_ndcg_ref, tau=TINY)),
    (rankax.sup_ndcg_loss, {"temperature": HUGE}, functools.partial(_sup_ndcg_ref, tau=HUGE)),
    (rankax.sup_recall_at_k_loss, {"temperature": TINY, "k_temperature": TINY},
     functools.partial(_sup_recall_ref, tau=TINY, tau2=TINY)),
    # tau2 -> inf: every soft hit -> 1/2, the sum |P|/2 / min(|P|, k) can exceed 1 (loss < 0);
    # at 1e6 ranks ~ 30 are still 1e-5 away from that limit: the formula itself.
    (rankax.sup_recall_at_k_loss, {"k_temperature": HUGE}, functools.partial(_sup_recall_ref, tau2=HUGE)),
    (rankax.recall_at_k_surrogate_loss, {"temperature": TINY, "k_temperature": TINY},
     functools.partial(_rs_at_k_ref, tau1=TINY, tau2=TINY)),
    (rankax.recall_at_k_surrogate_loss, {"temperature": HUGE, "k_temperature": HUGE},
     lambda s, y: 1 - np.mean([min(k, _n_p(y)[1] / 2) / min(_n_p(y)[1], k) for k in KS])),
    # PNP-Dq: tau -> 0 counts the negatives above each positive; tau -> inf: R = |Neg| / 2.
    (rankax.pnp_loss, {"temperature": TINY},
     lambda s, y: np.mean(1 - (1 + _negatives_before(s, y, TINY)) ** -4.0)),
    (rankax.pnp_loss, {"temperature": HUGE}, lambda s, y: 1 - (1 + (_n_p(y)[0] - _n_p(y)[1]) / 2) ** -4.0),
    (rankax.pnp_loss, {"alpha": HUGE},
     lambda s, y: np.mean(-np.expm1(-HUGE * np.log1p(_negatives_before(s, y, 0.01))))),
    # PNP-Ib: b -> 0 gives R^2 / 2; b -> inf gives R / b.
    (rankax.pnp_loss, {"variant": "Ib", "b": 1e-30},
     lambda s, y: np.mean(_negatives_before(s, y, 0.01) ** 2 / 2)),
    (rankax.pnp_loss, {"variant": "Ib", "b": 1e30},
     lambda s, y: np.mean(_negatives_before(s, y, 0.01) / 1e30)),
    (rankax.blackbox_ap_loss, {"lambda_": 1e-30}, lambda s, y: _one_minus_ap(s - 0.02 * (y - 0.5), y)),
    (rankax.blackbox_ap_loss, {"lambda_": 1e30}, lambda s, y: _one_minus_ap(s - 0.02 * (y - 0.5), y)),
    (rankax.multi_similarity_loss, {"alpha": 1e-8, "beta": 1e-8},
     functools.partial(_ms_ref, alpha=1e-8, beta=1e-8)),
    (rankax.multi_similarity_loss, {"alpha": 1e8, "beta": 1e8}, _ms_hinge),
    (rankax.contrastive_loss, {"margin": HUGE},
     lambda s, y: np.mean(np.where(y > 0, 1 - s, 0.5 * (HUGE - np.sqrt(2 - 2 * np.float64(s))) ** 2))),
    (rankax.triplet_loss, {"margin": HUGE}, lambda s, y: HUGE + s[y == 0].max() - s[y > 0].min()),
    (rankax.calibration_loss, {"pos_margin": HUGE, "neg_margin": -HUGE},
     lambda s, y: np.mean(HUGE - s[y > 0]) + np.mean(s[y == 0] + HUGE)),
]


@pytest.mark.parametrize(
    "loss_fn, hparams, reference", EXTREMES, ids=[f"{f.__name__}-{kw}" for f, kw, _ in EXTREMES]
)
def test_extreme_hyperparameters(loss_fn, hparams, reference):
    out = _run(loss_fn, EXTREME_SCORES, EXTREME_LABELS, **hparams)
    _assert_finite(out)
    expected = [reference(s, y) for s, y in zip(EXTREME_SCORES, EXTREME_LABELS, strict=True)]
    np.testing.assert_allclose(out["per_list"], expected, rtol=1e-4, atol=1e-6)
    if loss_fn is rankax.blackbox_ap_loss:
        # (rank(s + lambda g) - rank(s)) / (n lambda): 0 when lambda g moves no score by an ulp,
        # at most 1 / lambda in size.
        bound = 0.0 if hparams["lambda_"] < 1 else 1.0 / hparams["lambda_"]
        assert np.all(np.abs(out["grad_sum"]) <= bound * (1 + 1e-6))


@pytest.mark.parametrize(
    "loss_fn, hparams",
    [
        (rankax.histogram_ap_loss, {"num_bins": 1025}),
        (rankax.histogram_ap_loss, {"num_bins": 1025, "score_range": (-1.0, 1.0)}),
        (rankax.fast_ap_loss, {"num_bins": 1024}),
    ],
    ids=["histogram", "histogram-[-1,1]", "fast_ap"],
)
def test_many_bins_give_exact_ap_on_bin_centres(loss_fn, hparams):
    """Scores on distinct bin centres: every bin holds one item, the quantised AP is AP."""
    rng = np.random.default_rng(5)
    if loss_fn is rankax.fast_ap_loss:  # centres at distance 4 l / 1024, i.e. s = 1 - 2 l / 1024
        scores = 1 - 2 * rng.choice(1025, (2, 8), replace=False) / 1024
    else:
        lo, hi = hparams.get("score_range", (0.0, 1.0))
        scores = lo + (hi - lo) * rng.choice(1025, (2, 8), replace=False) / 1024
    labels = EXTREME_LABELS
    out = _run(loss_fn, scores, labels, **hparams)
    _assert_finite(out)
    expected = [_one_minus_ap(s, y) for s, y in zip(scores, labels, strict=True)]
    np.testing.assert_allclose(out["per_list"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "loss_fn, hparams",
    [
        (rankax.smooth_ap_loss, {"temperature": 1e-30}),
        (rankax.smooth_ap_loss, {"temperature": 1e30}),
        (rankax.roadmap_loss, {"temperature": 1e-30, "rho": 1e30}),
        (rankax.pnp_loss, {"variant": "Iu", "temperature": 1e-30}),
        (rankax.pnp_loss, {"variant": "Dq", "alpha": 1e-30}),
        (rankax.recall_at_k_surrogate_loss, {"temperature": 1e-30, "k_temperature": 1e30}),
        (rankax.sup_recall_at_k_loss, {"temperature": 1e30, "k_temperature": 1e-30}),
        (rankax.pnp_loss, {"temperature": 1e30}),
        (rankax.histogram_ap_loss, {"num_bins": 2, "tie_aware": True}),
        (rankax.histogram_ap_loss, {"num_bins": 4097, "tie_aware": True}),
        (rankax.histogram_ap_loss, {"score_range": (-1e-6, 1e-6)}),
        (rankax.multi_similarity_loss, {"alpha": 1e30, "beta": 1e30}),
    ],
    ids=lambda v: v.__name__ if callable(v) else str(v),
)
def test_far_extremes_stay_finite_on_ties(loss_fn, hparams):
    """Down to float32's range: finite values and gradients, exact ties included."""
    scores = EXTREME_SCORES.copy()
    scores[1, :4] = 0.25
    out = _run(loss_fn, scores, EXTREME_LABELS, **hparams)
    _assert_finite(out)


def test_ndcg_gains_do_not_overflow_for_large_relevance():
    """NDCG with relevance up to 300 (2^300 overflows float32): the metric equals a Python
    double reference of the formula, and SupNDCG's value and gradient are finite."""
    import math

    scores = np.array([0.3, 0.9, 0.1, 0.5, -0.2], np.float32)
    rel = np.array([300.0, 1.0, 0.0, 130.0, 129.0], np.float32)
    order = np.argsort(-scores)
    gains = [2.0 ** float(r) - 1.0 for r in rel]
    dcg = sum(gains[i] / math.log2(2 + place) for place, i in enumerate(order))
    idcg = sum(g / math.log2(2 + place) for place, g in enumerate(sorted(gains, reverse=True)))
    np.testing.assert_allclose(float(rankax.metrics.ndcg(scores[None], rel[None])), dcg / idcg, rtol=1e-6)
    value, grad = jax.value_and_grad(lambda s: rankax.losses.sup_ndcg_loss(s, rel[None]))(scores[None])
    assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()


def test_ndcg_gains_keep_their_precision_for_small_relevance():
    """SupRank's "pop" relevances are small (about 5e-4 here): 2^(rel - top) - 2^-top cancelled in
    float32 and lost about 1e-5 of NDCG; against a Python double reference of the formula."""
    import math

    rng = np.random.default_rng(3)
    scores = rng.normal(size=40).astype(np.float32)
    rel = (rng.integers(0, 4, size=40) * 1.7e-4).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    gains = [2.0 ** float(r) - 1.0 for r in rel]
    dcg = sum(gains[i] / math.log2(2 + place) for place, i in enumerate(order))
    idcg = sum(g / math.log2(2 + place) for place, g in enumerate(sorted(gains, reverse=True)))
    np.testing.assert_allclose(float(rankax.metrics.ndcg(scores[None], rel[None])), dcg / idcg, rtol=1e-6)
    value, grad = jax.value_and_grad(lambda s: rankax.losses.sup_ndcg_loss(s, rel[None]))(scores[None])
    assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()


def test_fast_ap_scores_above_one_count_as_one():
    """FastAP's distance 2 - 2s is a squared distance, never negative: a positive at a score a
    rounding above 1 (or at 1.1) is ranked as at 1, with no gradient pushing it down (before,
    the triangle below bin 0 made the loss rise with its score there)."""
    y = jnp.array([1.0, 0, 1, 0, 0, 0, 0, 0])
    rest = jnp.array([0.5, 0.2, 0.1, -0.3, 0.0, 0.4, 0.3])
    loss = lambda top: rankax.fast_ap_loss(jnp.concatenate([top[None], rest]), y)  # noqa: E731
    at_one = float(loss(jnp.float32(1.0)))
    for top in (np.nextafter(np.float32(1), np.float32(2)), np.float32(1.05), np.float32(1.1)):
        value, grad = jax.value_and_grad(loss)(jnp.float32(top))
        assert float(value) == pytest.approx(at_one, abs=1e-6) and float(grad) == 0.0
    assert float(jax.grad(loss)(jnp.float32(0.7))) < 0  # below 1, where it shares bins, it is raised


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
def test_normalized_softmax_zero_rows_get_a_zero_gradient(dtype):
    """A zero embedding or proxy has no direction: its gradient is 0 (through torch's clamp it
    was 1e12, inf in float16), and the value is that of a zero logit row, ln(#proxies)."""
    proxies = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), dtype)
    labels = jnp.array([0, 1])
    loss = lambda e, p: rankax.losses.normalized_softmax_loss(e, labels, proxies=p)  # noqa: E731
    value, (ge, gp) = jax.value_and_grad(loss, argnums=(0, 1))(jnp.zeros((2, 4), dtype), proxies)
    assert float(value) == pytest.approx(math.log(3), rel=1e-3)
    np.testing.assert_array_equal(np.asarray(ge, np.float32), 0.0)
    assert np.isfinite(np.asarray(gp, np.float32)).all()
    zero_proxy = proxies.at[2].set(0)
    emb = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4)), dtype)
    _, gp = jax.grad(loss, argnums=(0, 1))(emb, zero_proxy)
    np.testing.assert_array_equal(np.asarray(gp[2], np.float32), 0.0)
