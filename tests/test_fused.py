"""The fused pieces of the batch path: step sums with their custom gradient, positives found by
sorting class ids, and the checkpoint policy that keeps the sums (issue 16)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rankax
from rankax import ranking
from rankax._core import positives


def np_sigmoid(x, tau):
    return 1.0 / (1.0 + np.exp(-x / tau))


def np_roadmap(x, tau=0.01, rho=100.0, delta=0.05, start=0.5, offset=1.44):
    """The ROADMAP paper's piecewise step, elementwise in numpy."""
    sig = np_sigmoid(x, tau)
    return np.where(x <= 0, sig, np.where(x <= delta, start + sig, rho * (x - delta) + offset))


def np_roadmap_slope(x, tau=0.01, rho=100.0, delta=0.05):
    sig = np_sigmoid(x, tau)
    return np.where(x <= delta, sig * (1 - sig) / tau, rho)


STEPS = {
    "sigmoid": (functools.partial(ranking.sigmoid_step, temperature=0.05),
                lambda x: np_sigmoid(x, 0.05),
                lambda x: np_sigmoid(x, 0.05) * (1 - np_sigmoid(x, 0.05)) / 0.05),
    "roadmap": (ranking.roadmap_step, np_roadmap, np_roadmap_slope),
}


def _inputs(seed=0, q=5, c=3, n=40):
    rng = np.random.default_rng(seed)
    values = rng.uniform(-0.3, 0.3, (q, n)).astype(np.float32)
    excluded = rng.random((q, n)) < 0.3
    anchors = rng.uniform(-0.2, 0.2, (q, c)).astype(np.float32)
    return values, excluded, anchors


@pytest.mark.parametrize("name", sorted(STEPS))
@pytest.mark.parametrize("num_anchors", [3, 20])  # values' gradient: per-anchor passes, one sum
def test_step_sums_value_and_gradient_follow_the_formula(name, num_anchors):
    step, np_step, np_slope = STEPS[name]
    values, excluded, anchors = _inputs(c=num_anchors)
    g = np.random.default_rng(1).normal(size=anchors.shape).astype(np.float32)
    masked = np.where(excluded, -np.inf, values)

    x = values[:, None, :] - anchors[:, :, None]                    # [q, c, n], float64 below
    keep = ~excluded[:, None, :]
    want = np.sum(np.where(keep, np_step(x.astype(np.float64)), 0.0), axis=-1)
    got = ranking.step_sums(step, jnp.asarray(masked), jnp.asarray(anchors))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)

    # d/dv_j sum_c g_c T_c = sum_c g_c f'(v_j - a_c) on kept items, 0 on excluded ones;
    # d/da_c = -g_c sum_j f'(v_j - a_c).
    slope = np.where(keep, np_slope(x.astype(np.float64)), 0.0) * g[:, :, None]
    dv, da = jax.grad(lambda v, a: jnp.vdot(g, ranking.step_sums(step, v, a)), argnums=(0, 1))(
        jnp.asarray(masked), jnp.asarray(anchors)
    )
    np.testing.assert_allclose(dv, np.sum(slope, axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(da, -np.sum(slope, axis=2), rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(dv)[excluded] == 0.0)


def test_step_sums_gradient_matches_finite_differences():
    step = STEPS["sigmoid"][0]
    values, _, anchors = _inputs(seed=3, q=2, c=2, n=7)
    f = lambda v, a: jnp.sum(ranking.step_sums(step, v, a) ** 2)  # noqa: E731
    check_grads(f, (jnp.asarray(values, jnp.float32), jnp.asarray(anchors)), order=1,
                              modes=["rev"], atol=5e-2, rtol=5e-2, eps=1e-3)


def np_slots(qk, ik, mask, qidx, include_self, capacity):
    """Brute force: the first `capacity` valid items with the query's key, in list order."""
    index = np.zeros((len(qk), capacity), np.int64)
    filled = np.zeros((len(qk), capacity), bool)
    count = np.zeros(len(qk), np.int64)
    for i, key in enumerate(qk):
        pos = [j for j in range(len(ik)) if mask[j] and ik[j] == key
               and (include_self or qidx is None or j != qidx[i])]
        count[i] = len(pos)
        for p, j in enumerate(pos[:capacity]):
            index[i, p], filled[i, p] = j, True
    return index, filled, count


@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("capacity", [1, 3, 6])
def test_key_run_slots_equal_a_brute_force_scan(include_self, capacity):
    rng = np.random.default_rng(capacity + 10 * include_self)
    n = 30
    ik = rng.integers(0, 6, n).astype(np.int32)
    ik[[2, 3, 5]] = np.iinfo(np.int32).max  # a class id equal to the sort's sentinel
    mask = rng.random(n) < 0.8
    mask[[2, 3, 5]] = [False, True, True]  # an invalid item before valid ones of that class
    qidx = np.r_[3, rng.permutation(n)[:12]].astype(np.int32)
    qk = ik[qidx]
    runs = positives.key_runs(
        jnp.asarray(qk), jnp.asarray(ik), jnp.asarray(mask), jnp.asarray(qidx), include_self
    )
    slots = positives.slots_of(runs, capacity)
    index, filled, want_count = np_slots(qk, ik, mask, qidx, include_self, capacity)
    np.testing.assert_array_equal(runs.count, want_count)
    np.testing.assert_array_equal(slots.mask, filled)
    np.testing.assert_array_equal(np.where(filled, slots.index, -1), np.where(filled, index, -1))
    # The slots of some rows (the batch path's blocks) are those rows of the brute-force scan.
    rows = np.array([4, 0, 9])
    some = positives.slots_of(runs, capacity, jnp.asarray(rows))
    np.testing.assert_array_equal(some.mask, filled[rows])
    want = np.where(filled[rows], index[rows], -1)
    np.testing.assert_array_equal(np.where(filled[rows], some.index, -1), want)


def test_key_run_slots_without_query_positions():
    ik = np.array([2, 1, 2, 2, 5, 1], np.int32)
    mask = np.array([True, True, False, True, True, True])
    qk = np.array([2, 1, 7], np.int32)
    runs = positives.key_runs(jnp.asarray(qk), jnp.asarray(ik), jnp.asarray(mask), None, False)
    slots = positives.slots_of(runs, 2)
    index, filled, want_count = np_slots(qk, ik, mask, None, False, 2)
    np.testing.assert_array_equal(runs.count, want_count)
    np.testing.assert_array_equal(slots.mask, filled)
    np.testing.assert_array_equal(np.where(filled, slots.index, -1), np.where(filled, index, -1))


def _dense_reference(loss_fn, emb, labels, **hp):
    """The list API on the rows of E E^T with the diagonal masked, reduced by its mean (over the
    lists with a positive; ROADMAP's calibration pooled over all pairs): the definition of the
    batch loss, without slots, blocks or checkpoints."""
    scores = jnp.matmul(emb, emb.T, precision="highest")
    rel = (labels[:, None] == labels[None, :]).astype(jnp.float32)
    where = ~jnp.eye(emb.shape[0], dtype=bool)
    return loss_fn(scores, rel, where=where, **hp)


@pytest.mark.parametrize("loss_name", ["supap_loss", "smooth_ap_loss", "pnp_loss", "roadmap_loss"])
@pytest.mark.parametrize("traced", [False, True])
def test_fused_batch_path_equals_the_list_definition(loss_name, traced):
    """Unequal class sizes (1 to 5 images, one singleton), several blocks, traced or concrete
    labels: value and gradient of batch_loss equal the dense per-list computation."""
    loss_fn = getattr(rankax.losses, loss_name)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), rng.integers(1, 6, 12)).astype(np.int32)
    rng.shuffle(labels)
    emb = jax.random.normal(jax.random.key(0), (labels.shape[0], 16))
    emb = emb / jnp.linalg.norm(emb, axis=1, keepdims=True)
    y = jnp.asarray(labels)
    ref = jax.value_and_grad(lambda e: _dense_reference(loss_fn, e, y))(emb)
    if traced:
        fn = jax.jit(jax.value_and_grad(lambda e, y: rankax.batch_loss(loss_fn, e, y, block_size=7)))
        got = fn(emb, y)
    else:
        got = jax.value_and_grad(lambda e: rankax.batch_loss(loss_fn, e, labels, block_size=7))(emb)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("paths", [False, True])
@pytest.mark.parametrize("include_self", [False, True])
def test_exact_capacity_of_the_default_relevance_is_the_largest_class_count(paths, include_self):
    """Counted on the host by sorting: equals a brute-force count of each query's relevant,
    valid items (label paths: those sharing the coarsest level), self excluded or not."""
    rng = np.random.default_rng(int(paths) * 2 + int(include_self))
    n = 40
    fine = rng.integers(0, 9, n)
    labels = np.stack([fine, fine // 3], 1) if paths else fine
    mask = rng.random(n) < 0.7
    qidx = rng.permutation(n)[:15]
    key = labels[:, -1] if paths else labels
    want = max(
        sum(1 for j in range(n) if mask[j] and key[j] == key[i] and (include_self or j != i)) for i in qidx
    )
    got = rankax.batch.exact_capacity(
        labels[qidx], labels, query_index=qidx, item_mask=mask, include_self=include_self
    )
    assert got == max(want, 1)


@pytest.mark.parametrize("loss_name", ["smooth_ap_loss", "supap_loss", "fast_ap_loss", "pnp_loss"])
@pytest.mark.parametrize("given_scores", [False, True])
def test_slots_from_the_caller_give_the_list_losses_values(loss_name, given_scores):
    """Positives placed in slots by the caller (as batch_loss does from its sort), with their
    scores gathered or given: value and gradient equal the public list loss, which finds the
    positives itself."""
    from rankax._core import stats

    loss_fn = getattr(rankax.losses, loss_name)
    rng = np.random.default_rng(3)
    q, n, capacity = 6, 30, 7
    scores = jnp.asarray(rng.uniform(-1, 1, (q, n)).astype(np.float32))
    labels = jnp.asarray((rng.random((q, n)) < 0.15).astype(np.float32))
    where = jnp.asarray(rng.random((q, n)) < 0.8)
    is_pos = np.asarray((labels > 0) & where)
    index = np.zeros((q, capacity), np.int32)
    filled = np.zeros((q, capacity), bool)
    for i in range(q):  # the positives in a shuffled order: the kernels must not rely on it
        pos = rng.permutation(np.flatnonzero(is_pos[i]))
        assert len(pos) <= capacity
        index[i, : len(pos)], filled[i, : len(pos)] = pos, True

    def with_slots(s, shift=0.0):
        slots = positives.Slots(jnp.asarray(index), jnp.asarray(filled))
        if given_scores:
            slots = slots._replace(scores=jnp.take_along_axis(s, slots.index, axis=-1) + shift)
        hp = stats.hparams_of(loss_fn, {}, caller="test")
        out = stats.list_statistics(loss_fn, s, labels, where, capacity=capacity, hparams=hp,
                                    caller="test", slots=slots)
        return jnp.sum(out["sum"])

    def reference(s):
        return jnp.sum(loss_fn(s, labels, where=where, reduce_fn=None))

    got = jax.value_and_grad(with_slots)(scores)
    want = jax.value_and_grad(reference)(scores)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-6)
    if given_scores:  # the kernel read the given scores: moving them moves the loss
        assert float(jax.grad(with_slots, argnums=1)(scores, 0.0)) != 0.0


def np_roadmap_parameter_slopes(x, tau=0.01, rho=100.0, delta=0.05):
    """d h(x) / d (temperature, rho, delta, start, offset) of the ROADMAP step, by hand."""
    sig = np_sigmoid(x, tau)
    d_tau = np.where(x <= delta, -sig * (1 - sig) * x / tau**2, 0.0)
    linear = x > delta
    middle = (x > 0) & ~linear
    return {"temperature": d_tau, "rho": np.where(linear, x - delta, 0.0),
            "delta": np.where(linear, -rho, 0.0), "start": middle.astype(float),
            "offset": linear.astype(float)}


@pytest.mark.parametrize("num_anchors", [3, 20])
def test_step_parameters_bound_as_arrays_get_their_gradient(num_anchors):
    """A step's parameters bound as JAX arrays by functools.partial are differentiated:
    d/dθ sum_c g_c T_c = sum_c g_c sum_j ∂f(v_j - a_c)/∂θ over the kept items (excluded
    items at -inf contribute 0, not NaN). Sigmoid: ∂σ(x/τ)/∂τ = -σ(1 - σ) x / τ²."""
    values, excluded, anchors = _inputs(seed=5, c=num_anchors)
    g = np.random.default_rng(2).normal(size=anchors.shape).astype(np.float32)
    masked = jnp.asarray(np.where(excluded, -np.inf, values))
    x = (values[:, None, :] - anchors[:, :, None]).astype(np.float64)
    keep = ~excluded[:, None, :]

    def want(slope):
        return np.sum(np.where(keep, slope, 0.0) * g[:, :, None])

    def sigmoid_sums(tau):
        return jnp.vdot(g, ranking.step_sums(
            functools.partial(ranking.sigmoid_step, temperature=tau), masked, jnp.asarray(anchors)))

    tau = 0.05
    s = np_sigmoid(x, tau)
    np.testing.assert_allclose(jax.grad(sigmoid_sums)(jnp.float32(tau)),
                               want(-s * (1 - s) * x / tau**2), rtol=1e-4)

    params = {"temperature": 0.01, "rho": 100.0, "delta": 0.05, "start": 0.5, "offset": 1.44}

    def roadmap_sums(p):
        step = functools.partial(ranking.roadmap_step, variant="fixed", **p)
        return jnp.vdot(g, ranking.step_sums(step, masked, jnp.asarray(anchors)))

    got = jax.jit(jax.grad(roadmap_sums))({k: jnp.float32(v) for k, v in params.items()})
    slopes = np_roadmap_parameter_slopes(x, params["temperature"], params["rho"], params["delta"])
    for name, slope in slopes.items():
        np.testing.assert_allclose(got[name], want(slope), rtol=1e-4, atol=1e-3, err_msg=name)


def test_step_parameters_traced_but_not_differentiated_change_nothing():
    """A temperature passed into jit (traced, not differentiated) gives the values and gradients
    of the same temperature as a Python float."""
    values, excluded, anchors = _inputs(seed=6)
    masked = jnp.asarray(np.where(excluded, -np.inf, values))

    def total(v, a, tau):
        step = functools.partial(ranking.sigmoid_step, temperature=tau)
        return jnp.sum(ranking.step_sums(step, v, a) ** 2)

    traced = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(masked, jnp.asarray(anchors), 0.05)
    concrete = jax.value_and_grad(lambda v, a: total(v, a, 0.05), argnums=(0, 1))(
        masked, jnp.asarray(anchors))
    for t, c in zip(jax.tree.leaves(traced), jax.tree.leaves(concrete), strict=True):
        np.testing.assert_allclose(t, c, rtol=1e-6, atol=1e-7)


def test_an_integer_array_parameter_beside_a_differentiated_one():
    """A step binding an integer JAX array (no gradient) next to a differentiated temperature:
    the temperature's derivative is d/dτ Σ k σ(x/τ) = -k Σ σ(1 - σ) x / τ² (kept items only)."""
    values, excluded, anchors = _inputs(seed=7, c=2, n=12)
    masked = jnp.asarray(np.where(excluded, -np.inf, values))

    def scaled_sigmoid(x, temperature, k):
        return k * ranking.sigmoid_step(x, temperature)

    def total(tau):
        step = functools.partial(scaled_sigmoid, temperature=tau, k=jnp.int32(3))
        return jnp.sum(ranking.step_sums(step, masked, jnp.asarray(anchors)))

    x = (values[:, None, :] - anchors[:, :, None]).astype(np.float64)
    s = np_sigmoid(x, 0.1)
    want = np.sum(np.where(~excluded[:, None, :], -3 * s * (1 - s) * x / 0.1**2, 0.0))
    np.testing.assert_allclose(jax.grad(total)(jnp.float32(0.1)), want, rtol=1e-4)
