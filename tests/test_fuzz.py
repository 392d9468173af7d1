"""Fuzz: random valid lists never give a non-finite value or gradient, for any loss.

Hypothesis draws batches of 1-4 lists of 1-24 items (padded to one shape and masked with
``where``, so each loss configuration is compiled once), scores in [-1, 1] or [-50, 50], often
drawn from a handful of values (exact ties), random validity masks, binary labels (graded for
the hierarchical losses). Every loss, a few variants, both positive-capacity paths and float16
inputs must give finite values and gradients, zero gradient on invalid items, and 0
for a list without positive. Examples are derandomised: the run is the same on every machine.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rankax
from rankax import losses

B, N = 4, 24
# max_positives=3: lists with <= 3 positives take the 3-slot path, others the exact fallback;
# the mean (max_positives=None) always the exact path.
CAPACITIES = (3,)
GRADED = {rankax.hap_loss, rankax.sup_ndcg_loss}
PAIR_POOLED = set(losses.PAIR_POOLED_LOSSES)

CONFIGS = [(fn, {}) for fn in losses.LIST_LOSSES] + [
    (rankax.supap_loss, {"variant": "neurips", "start": 0.0, "offset": 1.0}),
    (rankax.pnp_loss, {"variant": "O"}),
    (rankax.pnp_loss, {"variant": "Iu"}),
    (rankax.pnp_loss, {"variant": "Ib"}),
    (rankax.pnp_loss, {"variant": "Ds"}),
    (rankax.histogram_ap_loss, {"tie_aware": True, "score_range": (-1.0, 1.0), "num_bins": 20}),
    (rankax.blackbox_ap_loss, {"key": jax.random.key(0)}),
    (rankax.triplet_loss, {"mining": "semi_hard"}),
]


def _config_id(config):
    fn, kw = config
    extra = ",".join(f"{k}={v}" for k, v in kw.items() if k != "key") + ("key" if "key" in kw else "")
    return fn.__name__ + (f"[{extra}]" if extra else "")


@functools.cache
def _compiled(index: int):
    """Every output checked for one configuration, in one compiled function."""
    fn, kw = CONFIGS[index]

    def outputs(s, y, w):
        out = {}
        for c in CAPACITIES:
            def total(s, c=c):
                per_list = fn(s, y, where=w, reduce_fn=None, max_positives=c, **kw)
                return jnp.sum(per_list), per_list
            (_, out[f"per_list_{c}"]), out[f"grad_sum_{c}"] = jax.value_and_grad(total, has_aux=True)(s)
        out["mean"], out["grad_mean"] = jax.value_and_grad(lambda s: fn(s, y, where=w, **kw))(s)
        # float16 (computed in float32; its gradient is cast back and could overflow).
        out["mean_float16"], out["grad_float16"] = jax.value_and_grad(
            lambda s: fn(s, y, where=w, **kw)
        )(s.astype(jnp.float16))
        return out

    return jax.jit(outputs)


@st.composite
def valid_lists(draw, graded: bool):
    """Hypothesis draws the structure (sizes, scale, tie values -- edge floats included --,
    label and hole rates, a seed); numpy fills the [B, N] arrays from the seed (fast)."""
    b = draw(st.integers(1, B))
    n = draw(st.integers(1, N))
    scale = draw(st.sampled_from([1.0, 50.0]))
    pool = draw(st.lists(st.floats(-scale, scale, width=32), min_size=1, max_size=4))
    tied = draw(st.booleans())  # many exact ties: every score from a handful of values
    positive_rate = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    hole_rate = draw(st.sampled_from([0.0, 0.0, 0.3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if tied:
        scores = rng.choice(np.asarray(pool, np.float32), (B, N))
    else:
        scores = rng.uniform(-scale, scale, (B, N)).astype(np.float32)
    positive = rng.uniform(size=(B, N)) < positive_rate
    if graded:
        grades = rng.choice(np.float32([0.25, 0.5, 1.0, 2.0, 3.0]), (B, N))
        labels = np.where(positive, grades, 0.0).astype(np.float32)
    else:
        labels = positive.astype(np.float32)
    mask = rng.uniform(size=(B, N)) >= hole_rate
    mask &= (np.arange(B)[:, None] < b) & (np.arange(N)[None, :] < n)
    return scores, labels, mask


def _finite(x) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x, np.float32))))


@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=[_config_id(c) for c in CONFIGS])
def test_random_valid_lists_give_finite_values_and_gradients(index):
    fn = CONFIGS[index][0]
    compiled = _compiled(index)

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(valid_lists(graded=fn in GRADED))
    def check(data):
        scores, labels, mask = data
        out = jax.device_get(compiled(scores, labels, mask))
        for name, value in out.items():
            assert _finite(value), f"{name} is not finite"
            if name.startswith("grad"):
                np.testing.assert_array_equal(np.asarray(value, np.float32)[~mask], 0.0, err_msg=name)
        assert out["mean"].dtype == np.float32
        assert out["mean_float16"].dtype == np.float32
        if fn not in PAIR_POOLED:
            no_positive = ~np.any((labels > 0) & mask, axis=-1)
            for c in CAPACITIES:
                np.testing.assert_array_equal(out[f"per_list_{c}"][no_positive], 0.0)

    check()
