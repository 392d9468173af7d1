"""The shared primitive: step surrogates, gathered positives, exact and smooth ranks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rankax import ranking


def np_roadmap_step(x, tau=0.01, rho=100.0, delta=0.05, start=0.5, offset=1.44, fixed=True):
    """Written from the ROADMAP paper's piecewise definition."""
    out = np.empty_like(x)
    for i, v in enumerate(x):
        sig = 1.0 / (1.0 + np.exp(-v / tau))
        if v <= 0:
            out[i] = sig
        elif v <= delta:
            out[i] = start + sig
        else:
            out[i] = rho * ((v - delta) if fixed else v) + offset
    return out


def test_heaviside_counts_ties_as_before():
    np.testing.assert_array_equal(ranking.heaviside(jnp.array([-1.0, 0.0, 2.0])), [0.0, 1.0, 1.0])


@pytest.mark.parametrize("variant", ["fixed", "neurips"])
def test_roadmap_step_matches_piecewise_formula(variant):
    x = np.linspace(-0.2, 0.3, 101)
    got = ranking.roadmap_step(jnp.asarray(x), variant=variant)
    want = np_roadmap_step(x, fixed=variant == "fixed")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_roadmap_step_upper_bounds_heaviside_off_zero():
    x = np.concatenate([np.linspace(-1, -1e-4, 50), np.linspace(1e-4, 1, 50)])
    assert np.all(np.asarray(ranking.roadmap_step(jnp.asarray(x))) >= (x >= 0))


def test_neurips_variant_jumps_at_delta():
    # The first release evaluated rho * x + offset above delta: 100 * 0.05 + 1.44 = 6.44.
    eps = 1e-6
    hi = float(ranking.roadmap_step(0.05 + eps, variant="neurips"))
    lo = float(ranking.roadmap_step(0.05, variant="neurips"))
    assert abs(hi - 6.44) < 1e-3 and abs(lo - (0.5 + 1 / (1 + np.exp(-5.0)))) < 1e-5


def test_unknown_variant_raises():
    with pytest.raises(ValueError, match="variant"):
        ranking.roadmap_step(0.0, variant="v3")


def test_sigmoid_step_tends_to_heaviside():
    x = jnp.array([-0.3, -0.01, 0.01, 0.3])
    np.testing.assert_allclose(ranking.sigmoid_step(x, 1e-4), [0, 0, 1, 1], atol=1e-6)


def np_ranks(s, where):
    n = len(s)
    return np.array(
        [1 + sum(where[j] and s[j] >= s[k] for j in range(n) if j != k) if where[k] else 0 for k in range(n)]
    )


def test_smooth_rank_exact_with_heaviside_and_limit():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, 12).astype(np.float32)  # many ties
    where = rng.random(12) < 0.8
    exact = ranking.smooth_rank(s, where=where, step_fn=ranking.heaviside)
    np.testing.assert_array_equal(exact, np_ranks(s, where))
    s2 = rng.normal(size=12).astype(np.float32)  # tie-free: sigmoid ranks converge
    smooth = ranking.smooth_rank(s2, where=where, step_fn=lambda d: ranking.sigmoid_step(d, 1e-5))
    np.testing.assert_allclose(smooth, np_ranks(s2, where), atol=1e-3)


def test_smooth_rank_ignores_nan_padding_in_value_and_gradient():
    """Invalid items neither count nor get a rank: NaN there had made every gradient NaN
    (the step's derivative at a NaN difference, times 0)."""
    from rankax import ranking

    where = jnp.array([True, False, True, True])
    padded = jnp.array([0.3, jnp.nan, 0.5, 0.1])
    clean = jnp.array([0.3, 0.0, 0.5, 0.1])
    for s in (padded, clean):
        np.testing.assert_allclose(ranking.smooth_rank(s, where=where),
                                   ranking.smooth_rank(clean, where=where), rtol=1e-6)
    grads = [jax.grad(lambda s: jnp.sum(ranking.smooth_rank(s, where=where) * jnp.arange(4.0)))(s)
             for s in (padded, clean)]
    assert np.all(np.isfinite(grads[0]))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)


def test_smooth_rank_gradient_matches_finite_differences():
    s = jnp.asarray(np.random.default_rng(1).normal(size=6))
    f = lambda x: ranking.smooth_rank(x, step_fn=lambda d: ranking.sigmoid_step(d, 0.5))
    check_grads(f, (s,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_gather_positives_and_exact_ranks():
    rng = np.random.default_rng(2)
    s = rng.integers(0, 5, (3, 10)).astype(np.float32)
    y = (rng.random((3, 10)) < 0.4).astype(np.float32)
    where = rng.random((3, 10)) < 0.9
    pos, num = ranking.gather_positives(jnp.asarray(s), jnp.asarray(y), jnp.asarray(where), 10)
    rank, rank_pos = ranking.exact_ranks(jnp.asarray(s), jnp.asarray(y), jnp.asarray(where), pos)
    for q in range(3):
        idx = np.flatnonzero((y[q] > 0) & where[q])
        assert num[q] == len(idx)
        np.testing.assert_array_equal(np.asarray(pos.index[q])[: len(idx)], idx)
        for slot, k in enumerate(idx):
            others = [j for j in range(10) if j != k and where[q, j]]
            assert rank[q, slot] == 1 + sum(s[q, j] >= s[q, k] for j in others)
            assert rank_pos[q, slot] == 1 + sum(s[q, j] >= s[q, k] and y[q, j] > 0 for j in others)


def test_gather_positives_capacity_is_static_under_jit():
    f = jax.jit(lambda s, y: ranking.gather_positives(s, y, jnp.ones_like(s, bool), 3)[0].index)
    assert f(jnp.zeros(8), jnp.ones(8)).shape == (3,)


@pytest.mark.parametrize(
    "scores, where, error, words",
    [
        (np.zeros(4, np.float32), np.ones(3, bool), ValueError, "where must have the shape of scores"),
        (np.zeros(4, np.float32), np.ones(4, np.int32), TypeError, "where must be a boolean mask"),
        (np.zeros(4, np.int32), None, TypeError, "scores must be a floating-point array"),
        (np.float32(1.0), None, ValueError, "scores must have at least one axis"),
    ],
)
def test_smooth_rank_names_bad_input(scores, where, error, words):
    with pytest.raises(error, match=f"smooth_rank: {words}"):
        ranking.smooth_rank(scores, where=where)
