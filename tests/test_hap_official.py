"""H-AP against a numpy transcription of the official loss, both H-rank options.

``HAPLoss`` (elias-ramzi/HAPPIER@5af91b3: ``happier/losses/hap_loss.py``, ``quick_forward``;
the same ``SupHAPLoss`` in elias-ramzi/SupRank@d3d0e3c) ranks each item ``a`` of a list against
every other item ``b`` on ``x = s_b - s_a``:

* rank: ROADMAP's step where ``b`` is less relevant than ``a``, else Heaviside (1 at a tie);
* H-rank: ``rel_a + sum_b min(rel_a, rel_b) g(x)`` with ``g`` Heaviside (``with_hrank=False``)
  or, with ``with_hrank=True``, ``step_hrank``: Heaviside where ``b`` is as or less relevant,
  else ``leak * x`` for ``x <= 0`` and ``min(beta * x + gamma, 1)`` (1 if ``gamma > 1``) above;
* loss ``1 - sum_a hrank_a / rank_a / sum_a rel_a``.

The reference below is written from that code in float64, independently of rankax; values are
compared directly and gradients against its central finite differences.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rankax


def _sigmoid(x, tau):
    return 1.0 / (1.0 + np.exp(np.clip(-x / tau, -50, 50)))


def _roadmap(x, tau=0.01, rho=100.0, delta=0.05, start=0.5, offset=1.44):
    if x > delta:
        return rho * (x - delta) + offset
    if x > 0:
        return start + _sigmoid(x, tau)
    return _sigmoid(x, tau)


def _official_hrank_step(x, beta, gamma, leak):
    if x <= 0:
        return leak * x
    return 1.0 if gamma > 1.0 else min(beta * x + gamma, 1.0)


def official_hap_loss(s, level, rel, *, with_hrank, beta=25.0, gamma=0.5, leak=10.0):
    """One list: scores ``s``, hierarchy levels shared with the query ``level`` (the official
    ``target``), relevance ``rel`` (increasing with the level)."""
    n = len(s)
    total = 0.0
    for a in range(n):
        rank, hrank = 1.0, rel[a]
        for b in range(n):
            if b == a:
                continue
            x = s[b] - s[a]
            heaviside = 1.0 if x >= 0 else 0.0
            rank += _roadmap(x) if level[a] > level[b] else heaviside
            if with_hrank and level[b] > level[a]:
                g = _official_hrank_step(x, beta, gamma, leak)
            else:
                g = heaviside
            hrank += min(rel[a], rel[b]) * g
        total += hrank / rank
    return 1.0 - total / np.sum(rel)


def _list(seed, n=30):
    rng = np.random.default_rng(seed)
    s = rng.uniform(-0.4, 0.4, n)
    level = rng.choice([0, 1, 2, 3], n, p=[0.55, 0.2, 0.15, 0.1])
    level[:3] = [1, 2, 3]  # every level present
    rel = level / 3.0
    return s, level, rel


SETTINGS = [  # (with_hrank, beta, gamma, leak): the configs' values, a gamma > 1, a gentler step
    (False, 25.0, 0.5, 10.0), (True, 25.0, 0.5, 10.0), (True, 25.0, 1.5, 10.0), (True, 5.0, 0.2, 3.0),
]


@pytest.mark.parametrize(("with_hrank", "beta", "gamma", "leak"), SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_hap_loss_equals_the_official_loss_and_its_gradient(with_hrank, beta, gamma, leak, seed):
    s, level, rel = _list(seed)
    kw = {"with_hrank": with_hrank, "beta": beta, "gamma": gamma, "leak": leak}
    want = official_hap_loss(s, level, rel, **kw)
    with jax.enable_x64(True):
        y = jnp.asarray(rel)
        value_and_grad = jax.jit(jax.value_and_grad(lambda t: rankax.hap_loss(t, y, **kw)))
        got, grad = value_and_grad(jnp.asarray(s))
    np.testing.assert_allclose(float(got), want, rtol=1e-10)
    h = 1e-7
    fd = [(official_hap_loss(s + h * e, level, rel, **kw) - official_hap_loss(s - h * e, level, rel, **kw))
          / (2 * h) for e in np.eye(len(s))]
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(("with_hrank", "beta", "gamma", "leak"), SETTINGS)
def test_hap_loss_on_tied_scores_equals_the_official_loss(with_hrank, beta, gamma, leak):
    """Scores on a 0.01 grid: items tied with a positive (the exact step counts 1, the smoothed
    one 0 for a more relevant item) and differences on the clamp's corner (beta x + gamma = 1)."""
    s, level, rel = _list(2)
    s = np.round(s * 100) / 100
    s[1] = s[0]  # levels 2 and 1: a more relevant item tied with a positive
    s[2] = s[0] + 0.02  # level 3 over level 1 on the corner beta x + gamma = 1 (25, 0.5)
    s[3] = s[2] - 0.16  # ... and on the corner of (5, 0.2) below it when it is a positive
    s[4:6] = s[0]  # two more items tied with it, of whatever relevance
    kw = {"with_hrank": with_hrank, "beta": beta, "gamma": gamma, "leak": leak}
    with jax.enable_x64(True):
        got = rankax.hap_loss(jnp.asarray(s), jnp.asarray(rel), **kw)
    np.testing.assert_allclose(float(got), official_hap_loss(s, level, rel, **kw), rtol=1e-10)


def test_hrank_step_at_its_corners():
    """Values and slopes of HAPPIER's step from its formula: ``leak`` at and below 0 (value 0 at
    0), ``beta`` up to and at the clamp (``torch.clamp`` passes the gradient at its bound), 0
    above it, and 0 everywhere above 0 when ``gamma > 1``."""
    step = lambda x, **kw: rankax.ranking.hrank_step(x, beta=4.0, leak=3.0, **kw)
    x = jnp.array([-0.5, 0.0, 0.0625, 0.125, 0.25])  # beta x + gamma = 1 at 0.125 (exact in binary)
    np.testing.assert_array_equal(step(x, gamma=0.5), [-1.5, 0.0, 0.75, 1.0, 1.0])
    slope = jax.vmap(jax.grad(lambda t: step(t, gamma=0.5)))(x)
    np.testing.assert_array_equal(slope, [3.0, 3.0, 4.0, 4.0, 0.0])
    np.testing.assert_array_equal(step(x, gamma=1.5), [-1.5, 0.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(jax.vmap(jax.grad(lambda t: step(t, gamma=1.5)))(x), [3.0, 3.0, 0, 0, 0])


def test_the_smoothed_h_rank_moves_the_more_relevant_items_up():
    """Only with ``with_hrank`` does the H-rank carry a gradient: on a list where a fine positive
    (relevance 1) sits below a coarse one (relevance 1/2), the descent direction of the loss
    raises the fine positive more than the exact H-rank alone does."""
    s = jnp.array([0.30, 0.10, -0.20, -0.25, 0.0])
    y = jnp.array([0.5, 1.0, 0.0, 0.0, 0.0])
    g_exact = jax.grad(lambda t: rankax.hap_loss(t, y))(s)
    g_smooth = jax.grad(lambda t: rankax.hap_loss(t, y, with_hrank=True))(s)
    # The difference is the H-rank's own gradient: leak * rel_k / rank_k on j (the fine item,
    # index 1, under k = the coarse item, index 0), the opposite on k.
    rank_k = 1.0 + sum(float(jax.nn.sigmoid(x / 0.01)) for x in (-0.5, -0.55, -0.3))
    expected = 10.0 * 0.5 / rank_k / 1.5
    np.testing.assert_allclose(float(g_exact[1] - g_smooth[1]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(g_smooth[0] - g_exact[0]), expected, rtol=1e-5)


def test_with_hrank_needs_a_static_bool():
    s, y = jnp.zeros(4), jnp.array([1.0, 0.5, 0.0, 0.0])
    with pytest.raises(TypeError, match="with_hrank must be a static Python bool"):
        rankax.hap_loss(s, y, with_hrank=1)
    with pytest.raises(ValueError, match="beta"):
        rankax.hap_loss(s, y, with_hrank=True, beta=-1.0)


def test_batch_loss_passes_with_hrank_through():
    """batch_loss on label paths equals the mean of the per-list official losses (each query in
    its own list, as the official quick_forward ranks it), with the smoothed H-rank."""
    rng = np.random.default_rng(3)
    fine = np.repeat(np.arange(6), 3)
    paths = np.stack([fine, fine // 2], axis=1)
    emb = rng.normal(size=(len(fine), 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    level = (paths[:, None, :] == paths[None, :, :]).sum(-1)
    rel = level / 2.0
    scores = emb @ emb.T
    want = np.mean([official_hap_loss(scores[i], level[i], rel[i], with_hrank=True)
                    for i in range(len(fine))])
    got = rankax.batch_loss(
        rankax.losses.hap_loss, jnp.asarray(emb, jnp.float32), jnp.asarray(paths), include_self=True,
        relevance_fn=lambda q, i: (q[:, None, :] == i[None, :, :]).sum(-1) / 2.0, with_hrank=True,
    )
    np.testing.assert_allclose(float(got), want, rtol=2e-5)


def np_pop(level, num_levels, alpha=1.0):
    """SupRank's ``get_relevances_pop`` for one list: ``w_t / n_t``, ``w_t = (t / (L - 1))^alpha``
    (``[0, 1]`` for ``L = 1``), ``n_t`` the list's items at level ``t``; 0 at ``t = 0``."""
    weights = (np.arange(num_levels + 1) / max(num_levels - 1, 1)) ** alpha
    counts = np.bincount(level, minlength=num_levels + 1)
    return np.where(level > 0, weights[level] / np.maximum(counts[level], 1), 0.0)


def _uneven_list(seed, n=24):
    """Levels 1..3 of a skewed tree: few items at the coarse levels, so their "pop" share is
    as large as or larger than a finer level's (relevance not increasing with the level)."""
    rng = np.random.default_rng(seed)
    level = np.zeros(n, np.int64)
    level[:8] = [3, 3, 3, 3, 2, 1, 2, 1]  # 4 at level 3, 2 at level 2, 2 at level 1
    rng.shuffle(level)
    return rng.uniform(-0.4, 0.4, n), level


@pytest.mark.parametrize(("with_hrank", "beta", "gamma", "leak"), SETTINGS[:2])
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_hap_loss_reads_shared_levels_as_the_official_code(with_hrank, beta, gamma, leak, alpha):
    """rule="pop": labels are the shared levels, the relevance is the list's pop share and
    "less relevant" compares levels. Here pop gives the 4 items of level 3 (weight 1.5 with
    alpha 1) less relevance each than the 2 of level 2 (weight 1): comparing values, as
    without a rule, smooths the wrong items."""
    s, level = _uneven_list(0)
    rel = np_pop(level, 3, alpha)
    assert rel[level == 3][0] < rel[level == 2][0]  # relevance not increasing with the level
    kw = {"with_hrank": with_hrank, "beta": beta, "gamma": gamma, "leak": leak}
    want = official_hap_loss(s, level, rel, **kw)
    with jax.enable_x64(True):
        fn = jax.jit(jax.value_and_grad(lambda t: rankax.hap_loss(
            t, jnp.asarray(level), rule="pop", num_levels=3, alpha=alpha, **kw)))
        got, grad = fn(jnp.asarray(s))
        by_value = rankax.hap_loss(jnp.asarray(s), jnp.asarray(rel), **kw)
    np.testing.assert_allclose(float(got), want, rtol=1e-10)
    assert abs(float(by_value) - want) > 1e-4  # comparing values is not the official loss here
    h = 1e-7
    fd = [(official_hap_loss(s + h * e, level, rel, **kw) - official_hap_loss(s - h * e, level, rel, **kw))
          / (2 * h) for e in np.eye(len(s))]
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-5, atol=1e-8)


def test_batch_loss_on_uneven_label_paths_equals_the_official_loss():
    """batch_loss on [B, 3] paths of a skewed tree (default relevance: pop over each list, the
    query in its own list): the mean of the official per-list losses, which compare levels."""
    rng = np.random.default_rng(5)
    # classes of 3 images; super-classes of 1 or 3 classes; one root of everything.
    fine = np.repeat(np.arange(8), 3)
    middle = np.array([0, 1, 1, 1, 2, 3, 3, 3])[fine]
    paths = np.stack([fine, middle, middle // 2], axis=1)
    emb = rng.normal(size=(len(fine), 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    level = np.zeros((len(fine), len(fine)), np.int64)  # shared levels, from the coarsest
    agree = np.ones_like(level, bool)
    for col in (2, 1, 0):
        agree &= paths[:, None, col] == paths[None, :, col]
        level += agree
    rel = np.stack([np_pop(row, 3) for row in level])
    scores = emb @ emb.T
    want = np.mean([official_hap_loss(scores[i], level[i], rel[i], with_hrank=False)
                    for i in range(len(fine))])
    with jax.enable_x64(True):
        got = rankax.batch_loss(rankax.losses.hap_loss, jnp.asarray(emb), jnp.asarray(paths),
                                include_self=True)
    np.testing.assert_allclose(float(got), want, rtol=1e-10)
    with jax.enable_x64(True):  # comparing relevance values (the hierarchical_relevance given)
        by_value = rankax.batch_loss(rankax.losses.hap_loss, jnp.asarray(emb), jnp.asarray(paths),
                                     include_self=True, relevance_fn=hierarchical_relevance_with_self)
    assert abs(float(by_value) - want) > 1e-4


def hierarchical_relevance_with_self(q, items):
    return rankax.hierarchy.hierarchical_relevance(q, items, include_self=True)


def test_hap_loss_levels_errors():
    s = jnp.zeros(4)
    with pytest.raises(ValueError, match="pass num_levels=L"):
        rankax.hap_loss(s, jnp.array([3, 1, 0, 0]), rule="pop")
    with pytest.raises(ValueError, match="rule must be None"):
        rankax.hap_loss(s, jnp.array([3, 1, 0, 0]), rule="popularity", num_levels=3)
    with pytest.raises(TypeError, match="hap_loss: labels must be integer shared-level counts"):
        rankax.hap_loss(s, jnp.array([1.0, 0.5, 0.0, 0.0]), rule="pop", num_levels=3)
    with pytest.raises(ValueError, match=r"hap_loss: labels must lie in 0..L = 0..2: labels\[0\] = 3"):
        rankax.hap_loss(s, jnp.array([3, 1, 0, 0]), rule="pop", num_levels=2)
    # under jit (unchecked) a level above L reads as level 0, relevance 0, as negative ones do
    # (it was given relevance 0 but still compared as the most relevant item: 0.9458 here)
    traced = jax.jit(lambda sc, y: rankax.hap_loss(sc, y, rule="pop", num_levels=2))
    sc = jnp.array([0.9, 0.5, 0.3, 0.1])
    at_zero = rankax.hap_loss(sc, jnp.array([0, 0, 1, 0]), rule="pop", num_levels=2)
    for level in (3, 7, -1):
        assert float(traced(sc, jnp.array([level, 0, 1, 0]))) == pytest.approx(float(at_zero), abs=1e-7)
    paths = jnp.array([[0, 0], [0, 0], [1, 0], [2, 1]])
    with pytest.raises(ValueError, match="num_levels=3 differs from the label paths' L = 2"):
        rankax.batch_loss(rankax.losses.hap_loss, jnp.eye(4), paths, num_levels=3)


def test_alpha_without_a_rule_is_refused_not_ignored():
    """``alpha`` weights a rule's levels; with ``rule=None`` (relevance values, or a batch of flat
    labels or of a ``relevance_fn``) it was ignored without a word. Label paths in ``batch_loss``
    get a rule, so there it changes the value (the pop weights ``(t / (L - 1))^alpha``)."""
    s, rel = jnp.array([0.9, 0.5, 0.3, 0.1]), jnp.array([2.0, 0.0, 1.0, 0.0])
    for call in (lambda: rankax.hap_loss(s, rel, alpha=0.5),
                 lambda: jax.jit(lambda x: rankax.hap_loss(x, rel, alpha=0.5))(s),
                 lambda: rankax.batch_loss(rankax.losses.hap_loss, jnp.eye(4), np.array([0, 0, 1, 1]),
                                           alpha=2.0)):
        with pytest.raises(ValueError, match=r"hap_loss: alpha=.* rule=None .* would ignore it"):
            call()
    assert float(rankax.hap_loss(s, rel, alpha=1.0)) == float(rankax.hap_loss(s, rel))
    emb = jax.random.normal(jax.random.key(0), (8, 4))
    paths = np.array([[0, 0], [0, 0], [1, 0], [1, 0], [2, 1], [2, 1], [3, 1], [3, 1]])
    level = np.asarray(rankax.hierarchy.shared_levels(paths, paths))
    values = []
    for alpha in (0.5, 2.0):
        got = rankax.batch_loss(rankax.losses.hap_loss, emb, paths, alpha=alpha)
        values.append(float(got))
        scores = emb @ emb.T
        off = ~np.eye(8, dtype=bool)
        want = jnp.mean(jnp.stack([
            rankax.hap_loss(scores[i][off[i]], jnp.asarray(level[i][off[i]]), rule="pop", num_levels=2,
                            alpha=alpha)
            for i in range(8)]))
        assert float(got) == pytest.approx(float(want), abs=1e-6)
    assert abs(values[0] - values[1]) > 1e-3  # alpha is used


def test_hrank_parameters_without_with_hrank_are_refused_not_ignored():
    """``beta``, ``gamma`` and ``leak`` shape HAPPIER's smoothed H-rank step; with
    ``with_hrank=False`` the step is exact and they were ignored without a word. Their defaults
    pass; with ``with_hrank=True`` each changes the value (they are used there)."""
    # the item of relevance 1 (0.44) has one of relevance 2 just above it (beta, gamma) and one below (leak)
    s, rel = jnp.array([0.9, 0.5, 0.44, 0.1, 0.45, 0.3]), jnp.array([2.0, 0.0, 1.0, 0.0, 2.0, 2.0])
    for kw in ({"beta": 30.0}, {"gamma": 0.2, "leak": 1.0}):
        for call in (lambda kw=kw: rankax.hap_loss(s, rel, **kw),
                     lambda kw=kw: jax.jit(lambda x: rankax.hap_loss(x, rel, **kw))(s),
                     lambda kw=kw: rankax.batch_loss(rankax.losses.hap_loss, jnp.eye(4),
                                                     np.array([0, 0, 1, 1]), **kw)):
            with pytest.raises(ValueError, match=r"hap_loss\)?: (beta|gamma)=.* with_hrank=False does not"):
                call()
    defaults = {"beta": 25.0, "gamma": 0.5, "leak": 10.0}
    assert float(rankax.hap_loss(s, rel, **defaults)) == float(rankax.hap_loss(s, rel))
    smoothed = float(rankax.hap_loss(s, rel, with_hrank=True))
    for key, value in (("beta", 5.0), ("gamma", 0.1), ("leak", 1.0)):
        assert abs(float(rankax.hap_loss(s, rel, with_hrank=True, **{key: value})) - smoothed) > 1e-4, key
