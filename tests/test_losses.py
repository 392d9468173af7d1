"""Invariance battery over every list-level loss (``rankax.losses.LIST_LOSSES``), rax style.

Each loss is compiled a handful of times only (padded batch, vmap of one list, bfloat16, small
capacity); every property is checked on those compiled functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rankax
from rankax import losses

PAIR_POOLED = set(losses.PAIR_POOLED_LOSSES)
N, PAD, CAPACITY = 9, 3, 3


def _data(seed: int = 0):
    """Three lists of N items (<= CAPACITY positives each, one list with exact ties) padded
    with PAD invalid items at random positions."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(-0.9, 0.9, (3, N)).astype(np.float32)
    labels = np.zeros((3, N), np.float32)
    labels[0, [0, 4]] = 1
    labels[1, [1, 2, 7]] = 1
    labels[2, [3]] = 1
    # Exact ties: a positive tied with a negative and with another positive, all at 0.5.
    scores[1, [1, 2, 5]] = 0.5
    return scores, labels


def _pad(scores, labels, fill, seed=1):
    """Inserts PAD invalid items at random positions of each list; returns the padded arrays
    and the index of the valid items."""
    rng = np.random.default_rng(seed)
    b = scores.shape[0]
    total = N + PAD
    s = np.empty((b, total), np.float32)
    y = np.empty((b, total), np.float32)
    w = np.zeros((b, total), bool)
    idx = np.empty((b, N), int)
    for i in range(b):
        pos = np.sort(rng.choice(total, N, replace=False))
        idx[i] = pos
        s[i] = fill[i]
        y[i] = (np.arange(total) % 2).astype(np.float32)  # garbage labels, some "positive"
        s[i, pos], y[i, pos], w[i, pos] = scores[i], labels[i], True
    return s, y, w, idx


def _outputs(loss_fn):
    """One compiled function giving everything the battery compares (one compilation per
    loss): the padded batch in float32 and bfloat16, and vmap of the one-list function."""

    def per_list(s, y, w):
        return loss_fn(s, y, where=w, reduce_fn=None)

    def one_dtype(s, y, w):
        value, grad = jax.value_and_grad(lambda s: jnp.sum(per_list(s, y, w)))(s)
        return {
            "per_list": per_list(s, y, w),
            "grad": grad,
            "mean": loss_fn(s, y, where=w),
            "sum": loss_fn(s, y, where=w, reduce_fn=jnp.sum),
            "small": loss_fn(s, y, where=w, reduce_fn=None, max_positives=CAPACITY),
        }

    def outputs(s, y, w, unpadded_s, unpadded_y):
        return {
            "f32": one_dtype(s, y, w),
            "bf16": one_dtype(s.astype(jnp.bfloat16), y, w),
            "rounded": per_list(s.astype(jnp.bfloat16).astype(jnp.float32), y, w),
            "vmap": jax.vmap(lambda s, y: loss_fn(s, y, reduce_fn=None))(unpadded_s, unpadded_y),
        }

    return jax.jit(outputs)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_fn", losses.LIST_LOSSES, ids=lambda f: f.__name__)
def test_invariance_battery(loss_fn):
    scores, labels = _data()
    rng = np.random.default_rng(2)
    compiled = _outputs(loss_fn)
    run = lambda s, y, w: compiled(s, y, w, scores, labels)  # noqa: E731

    # Padding with `where`: the invalid items' scores and labels have no influence.
    s_a, y_a, w_a, idx = _pad(scores, labels, rng.uniform(-1, 1, (3, N + PAD)))
    s_b, y_b, w_b, _ = _pad(scores, labels, rng.uniform(-1, 1, (3, N + PAD)))
    y_b[~w_b] = 1.0 - y_b[~w_b]  # other garbage labels at the padded slots
    full = run(s_a, y_a, w_a)
    out = full["f32"]
    _close(run(s_b, y_b, w_b)["f32"]["per_list"], out["per_list"])

    # vmap of the one-list function (unpadded lists) equals the batched, padded call.
    _close(full["vmap"], out["per_list"])

    # Permutation of the items (padding included) leaves every list's loss unchanged.
    perm = rng.permutation(N + PAD)
    out_perm = run(s_a[:, perm], y_a[:, perm], w_a[:, perm])["f32"]
    _close(out_perm["per_list"], out["per_list"])
    _close(out_perm["grad"], out["grad"][:, perm])

    # jit equals eager.
    _close(loss_fn(s_a, y_a, where=w_a, reduce_fn=None), out["per_list"])

    # Finite values and gradients with exact ties (list 1 has a positive tied with a positive
    # and a negative; then every valid score tied) at the default tau = 0.01, and no gradient
    # on invalid items.
    assert np.all(np.isfinite(out["per_list"])) and np.all(np.isfinite(out["grad"]))
    np.testing.assert_array_equal(np.asarray(out["grad"])[~w_a], 0.0)
    tied = run(np.where(w_a, 0.3, s_a).astype(np.float32), y_a, w_a)["f32"]
    assert np.all(np.isfinite(tied["per_list"])) and np.all(np.isfinite(tied["grad"]))

    # bfloat16 inputs are computed in float32: the values of the float32 call on the
    # bfloat16-rounded scores, and finite bfloat16 gradients.
    out_bf16 = full["bf16"]
    assert out_bf16["per_list"].dtype == jnp.float32 and out_bf16["grad"].dtype == jnp.bfloat16
    _close(out_bf16["per_list"], full["rounded"])
    assert np.all(np.isfinite(np.asarray(out_bf16["grad"], np.float32)))

    # A small capacity gives the exact values, also when a list has more positives than slots
    # (then the whole call falls back to the exact path: nothing is dropped).
    _close(out["small"], out["per_list"])
    y_many = y_a.copy()
    y_many[0, idx[0, :5]] = 1.0
    out_many = run(s_a, y_many, w_a)["f32"]
    _close(out_many["small"], out_many["per_list"])

    # Reductions: sum of per-list values; mean over the lists with a positive (pair-pooled
    # losses pool over all pairs instead); per-list 0 for a list without positive.
    _close(out["sum"], np.sum(out["per_list"]))
    no_pos = y_a.copy()
    no_pos[2] = 0.0
    out_no_pos = run(s_a, no_pos, w_a)["f32"]
    if loss_fn not in PAIR_POOLED:
        assert out_no_pos["per_list"][2] == 0.0
        _close(out_no_pos["mean"], np.mean(out_no_pos["per_list"][:2]))


def test_list_losses_registry():
    names = {f.__name__ for f in losses.LIST_LOSSES}
    assert len(names) == len(losses.LIST_LOSSES)  # no loss registered twice
    # Complete: every public ``*_loss`` is registered, except the proxy loss (not a list loss).
    public = {n for n in losses.__all__ if n.endswith("_loss")}
    assert names == public - {"normalized_softmax_loss"}
    for f in losses.LIST_LOSSES:
        assert getattr(rankax, f.__name__) is f
        assert f.__doc__ and "References" in f.__doc__
    for f in losses.PAIR_POOLED_LOSSES:
        assert callable(f.list_statistics) and callable(f.from_statistics)


@pytest.mark.parametrize("loss_fn", losses.LIST_LOSSES, ids=lambda f: f.__name__)
def test_bad_inputs_name_the_argument(loss_fn):
    s = np.zeros(4, np.float32)
    y = np.array([1, 0, 0, 1], np.float32)
    with pytest.raises(ValueError, match="scores"):
        loss_fn(np.float32(0.3), np.float32(1.0))
    with pytest.raises(ValueError, match="labels"):
        loss_fn(s, y[:3])
    with pytest.raises(ValueError, match="where"):
        loss_fn(s, y, where=np.ones(3, bool))
    with pytest.raises(TypeError, match="where"):
        loss_fn(s, y, where=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="labels"):
        loss_fn(s, np.array([1, -1, 0, 0], np.float32))
    with pytest.raises(ValueError, match="max_positives"):
        loss_fn(s, y, max_positives=0)


@pytest.mark.parametrize(
    "loss_fn, kwargs, name",
    [
        (rankax.supap_loss, {"variant": "nips"}, "variant"),
        (rankax.roadmap_loss, {"variant": "v2"}, "variant"),
        (rankax.hap_loss, {"variant": "x"}, "variant"),
        (rankax.sup_ndcg_loss, {"variant": "x"}, "variant"),
        (rankax.sup_recall_at_k_loss, {"variant": "x"}, "variant"),
        (rankax.pnp_loss, {"variant": "D"}, "variant"),
        (rankax.triplet_loss, {"mining": "hard"}, "mining"),
        (rankax.histogram_ap_loss, {"num_bins": 1}, "num_bins"),
        (rankax.histogram_ap_loss, {"score_range": (1.0, 0.0)}, "score_range"),
        (rankax.fast_ap_loss, {"num_bins": 0}, "num_bins"),
        (rankax.recall_at_k_surrogate_loss, {"ks": ()}, "ks"),
        (rankax.blackbox_ap_loss, {"lambda_": 0.0}, "lambda_"),
    ],
)
def test_bad_hparams_name_the_argument(loss_fn, kwargs, name):
    with pytest.raises(ValueError, match=name):
        loss_fn(np.zeros(4, np.float32), np.array([1, 0, 0, 1], np.float32), **kwargs)


def test_temperatures_can_be_traced():
    """Annealed temperatures are passed as arrays inside a jitted step."""
    scores, labels = _data()

    @jax.jit
    def step(t):
        return (
            rankax.pnp_loss(scores, labels, temperature=t)
            + rankax.recall_at_k_surrogate_loss(scores, labels, temperature=t, k_temperature=10 * t)
        )

    expected = (
        rankax.pnp_loss(scores, labels, temperature=0.05)
        + rankax.recall_at_k_surrogate_loss(scores, labels, temperature=0.05, k_temperature=0.5)
    )
    _close(step(jnp.float32(0.05)), expected)


METRICS = (rankax.metrics.average_precision, rankax.metrics.map_at_r, rankax.metrics.r_precision,
           rankax.metrics.ndcg, rankax.metrics.hap, rankax.metrics.asi)


@pytest.mark.parametrize("fn", losses.LIST_LOSSES + METRICS, ids=lambda f: f.__name__)
def test_float32_and_bfloat16_scores_give_float32_under_x64(fn):
    """losses.md § Dtypes: the value is float32 unless the scores are float64, also with
    jax_enable_x64 on, where a Python float constant summed on its own becomes float64
    (BlackBox AP, the R@k losses and AP returned float64 through the positives' count)."""
    scores, labels = _data()
    with jax.enable_x64(True):
        for dtype in (jnp.float32, jnp.bfloat16):
            s = jnp.asarray(scores, dtype)
            assert fn(s, labels).dtype == jnp.float32, dtype
            # float64 labels (numpy's default) beside float32 scores: relevance in the scores'
            # dtype (H-AP, NDCG, BlackBox AP, the R@k losses and AP had returned float64).
            assert fn(s, labels.astype(np.float64)).dtype == jnp.float32, dtype
        if fn not in METRICS:
            grad = jax.grad(lambda s: fn(s, labels))(jnp.asarray(scores))
            assert grad.dtype == jnp.float32
            # float64 scores, also with max_positives (BlackBox AP's count against the slots
            # gave a float32 cotangent, which JAX's custom VJP refused).
            s64 = jnp.asarray(scores, jnp.float64)
            for kwargs in ({}, {"max_positives": 3}):
                value, grad = jax.value_and_grad(lambda s, kw=kwargs: fn(s, labels, **kw))(s64)
                assert value.dtype == jnp.float64 and grad.dtype == jnp.float64, kwargs


def test_blackbox_ranks_for_explicit_meshes_count_like_the_search():
    """The two-sort ranks that BlackBox AP uses on an Explicit mesh: #{valid j : s_j >= s_k}
    for each valid k, ties included (numpy count from the definition)."""
    from rankax.losses import blackbox

    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=(4, 30)), 1).astype(np.float32)  # many exact ties
    where = rng.random((4, 30)) < 0.8
    masked = jnp.where(where, scores, -jnp.inf)
    got = np.asarray(blackbox._ranks_by_two_sorts(masked))
    want = np.sum(np.where(where[:, None, :], scores[:, None, :] >= scores[:, :, None], False), axis=-1)
    np.testing.assert_array_equal(got[where], want[where])


def test_max_positives_takes_numpy_and_concrete_jax_ints():
    """A concrete 0-d JAX integer is an int like numpy's (it was refused); the value is the
    same whatever the form, for the list API and batch_loss."""
    scores, labels = _data()
    want = rankax.supap_loss(scores, labels, max_positives=3)
    for form in (np.int64(3), jnp.int32(3)):
        np.testing.assert_array_equal(rankax.supap_loss(scores, labels, max_positives=form), want)
    emb = np.random.default_rng(1).normal(size=(12, 5)).astype(np.float32)
    lab = np.repeat(np.arange(3), 4)
    want = rankax.batch_loss(rankax.supap_loss, emb, lab, max_positives=3)
    got = rankax.batch_loss(rankax.supap_loss, emb, lab, max_positives=jnp.int32(3))
    np.testing.assert_array_equal(got, want)
