"""The list API's conventions: masked lists from embeddings, the batch loss as
``f(embeddings, labels)``, and the deprecated ``tau`` spellings (numpy references)."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit

import rankax


def _batch(seed=0, classes=4, per_class=4, dim=8):
    emb = np.random.default_rng(seed).normal(size=(classes * per_class, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32), np.repeat(np.arange(classes), per_class)


def _smooth_ap_without_self(emb, labels, t=0.01, refs=None, ref_labels=None):
    """1 - mean over queries of Smooth-AP over the other items and the references, if any
    (float64 numpy)."""
    items = emb if refs is None else np.concatenate([emb, refs])
    item_labels = labels if refs is None else np.concatenate([labels, ref_labels])
    s = emb.astype(np.float64) @ items.T.astype(np.float64)
    aps = []
    for q in range(len(emb)):
        others = [j for j in range(len(items)) if j != q]
        pos = [k for k in others if item_labels[k] == labels[q]]
        terms = []
        for k in pos:
            rank = 1 + sum(expit((s[q, j] - s[q, k]) / t) for j in others if j != k)
            rank_pos = 1 + sum(expit((s[q, j] - s[q, k]) / t) for j in pos if j != k)
            terms.append(rank_pos / rank)
        aps.append(np.mean(terms))
    return 1 - np.mean(aps)


def test_lists_from_embeddings_masks_the_query_and_gives_relevance():
    emb, labels = _batch()
    scores, relevance, where = rankax.lists_from_embeddings(emb, labels)
    np.testing.assert_allclose(scores, emb.astype(np.float64) @ emb.T.astype(np.float64), atol=1e-6)
    assert not np.any(np.diag(where)) and np.all(where | np.eye(len(emb), dtype=bool))
    np.testing.assert_array_equal(relevance, (labels[:, None] == labels[None, :]).astype(np.float32))
    want = _smooth_ap_without_self(emb, labels)
    assert float(rankax.smooth_ap_loss(scores, relevance, where=where)) == pytest.approx(want, abs=1e-5)
    # The trap the helper avoids: the unmasked matrix counts each query as its own first positive.
    unmasked = float(rankax.smooth_ap_loss(emb @ emb.T, relevance))
    assert abs(unmasked - want) > 0.05
    _, _, kept = rankax.lists_from_embeddings(emb, labels, include_self=True)
    assert np.all(kept)
    with pytest.raises(ValueError, match="labels must be \\[B\\] class ids"):
        rankax.lists_from_embeddings(emb, np.stack([labels, labels], 1))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_lists_from_half_precision_embeddings_are_scored_in_float32(dtype):
    emb, labels = _batch()
    half = jnp.asarray(emb, dtype)
    scores, relevance, where = rankax.lists_from_embeddings(half, labels)
    assert scores.dtype == relevance.dtype == jnp.float32
    rounded = np.asarray(half, np.float64)  # the half-precision values, multiplied exactly
    np.testing.assert_allclose(scores, rounded @ rounded.T, atol=1e-6)
    lists = float(rankax.supap_loss(scores, relevance, where=where))
    assert lists == pytest.approx(float(rankax.batch_loss(rankax.supap_loss, half, labels)), abs=1e-6)


def test_make_batch_loss_takes_embeddings_first():
    emb, labels = _batch(1)
    f = rankax.make_batch_loss(rankax.smooth_ap_loss, temperature=0.05)
    assert float(f(emb, labels)) == pytest.approx(_smooth_ap_without_self(emb, labels, 0.05), abs=1e-5)
    grad = jax.grad(f)(jnp.asarray(emb), labels)  # argnums=0: the embeddings
    direction = np.random.default_rng(2).normal(size=emb.shape).astype(np.float64)
    eps = 1e-4
    numeric = (
        _smooth_ap_without_self(emb + eps * direction, labels, 0.05)
        - _smooth_ap_without_self(emb - eps * direction, labels, 0.05)
    ) / (2 * eps)
    assert float(np.sum(np.asarray(grad) * direction)) == pytest.approx(numeric, rel=2e-2, abs=1e-4)


def test_make_batch_loss_checks_the_hyperparameters_when_built():
    """A misspelt or out-of-range hyperparameter is named when the loss is made, not at its
    first call inside a training step; batch_loss's own options pass through."""
    with pytest.raises(TypeError, match="make_batch_loss\\(supap_loss\\).*'temprature'; did you mean"):
        rankax.make_batch_loss(rankax.supap_loss, temprature=0.05)
    with pytest.raises(ValueError, match="make_batch_loss\\(supap_loss\\): temperature must be"):
        rankax.make_batch_loss(rankax.supap_loss, temperature=-1.0)
    emb, labels = _batch(2)
    f = rankax.make_batch_loss(rankax.smooth_ap_loss, temperature=0.05, max_positives=3, block_size=8)
    assert float(f(emb, labels)) == pytest.approx(_smooth_ap_without_self(emb, labels, 0.05), abs=1e-5)


def _pnp_dq(s, y, t, alpha=4.0):
    pos, neg = s[y > 0], s[y == 0]
    r = np.array([np.sum(expit((neg - p) / t)) for p in pos])
    return np.mean(1 - (1 + r) ** -alpha)


def test_old_temperature_spellings_still_work_with_a_deprecation_warning():
    rng = np.random.default_rng(3)
    s = rng.uniform(-1, 1, size=12).astype(np.float32)
    y = (np.arange(12) % 3 == 0).astype(np.float32)
    with pytest.warns(DeprecationWarning, match="'tau' is deprecated, use 'temperature'"):
        old = float(rankax.pnp_loss(s, y, tau=0.1))
    assert old == pytest.approx(_pnp_dq(s.astype(np.float64), y, 0.1), rel=1e-5)
    with pytest.warns(DeprecationWarning) as caught:
        rankax.recall_at_k_surrogate_loss(s, y, tau1=0.05, tau2=0.5)
    messages = " ".join(str(w.message) for w in caught)
    assert "'tau1' is deprecated, use 'temperature'" in messages
    assert "'tau2' is deprecated, use 'k_temperature'" in messages
    with pytest.raises(TypeError, match="'tau' and another spelling of 'temperature'"):
        rankax.pnp_loss(s, y, tau=0.1, temperature=0.1)
    with pytest.raises(TypeError, match="'tau' and another spelling of 'temperature'"):
        rankax.pnp_loss(s, y, tau=0.1, tau1=0.5)  # two old spellings of one argument
    emb, labels = _batch(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = float(rankax.batch_loss(rankax.roadmap_loss, emb, labels, temperature=0.05))
    with pytest.warns(DeprecationWarning, match="roadmap_loss"):
        assert float(rankax.batch_loss(rankax.roadmap_loss, emb, labels, tau=0.05)) == pytest.approx(new)
    with pytest.warns(DeprecationWarning):
        assert float(rankax.ranking.roadmap_step(0.01, tau=0.05)) == pytest.approx(0.5 + expit(0.2))


def test_deprecation_warnings_point_at_the_callers_line():
    # Python shows a DeprecationWarning by default only where it is attributed to __main__: it
    # must name the user's line, not a line of rankax (nor "sys:1"), and come once per call of
    # the batch path, not from inside its compiled program.
    s, y = np.linspace(0, 1, 8, dtype=np.float32), (np.arange(8) % 2).astype(np.float32)
    emb, labels = _batch(5)
    e, p = emb[:, :3], np.eye(3, dtype=np.float32)
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    items = jnp.asarray(emb)
    calls = {
        "list loss": lambda: rankax.pnp_loss(s, y, tau=0.1),
        "batch_loss": lambda: rankax.batch_loss(rankax.smooth_ap_loss, emb, labels, tau=0.05),
        "make_batch_loss": lambda: rankax.make_batch_loss(rankax.smooth_ap_loss, tau=0.5),
        "sharded_batch_loss": lambda: rankax.sharding.sharded_batch_loss(
            rankax.smooth_ap_loss, mesh, tau=0.5),
        "batch_statistics": lambda: rankax.batch.batch_statistics(
            rankax.smooth_ap_loss, items, labels, items, labels, query_index=np.arange(len(labels)), tau=0.5),
        "step function": lambda: rankax.ranking.roadmap_step(0.1, tau=0.5),
        "other function": lambda: rankax.losses.normalized_softmax_loss(e, labels % 3, p, tau=0.1),
    }
    for what, call in calls.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        deprecations = [(w.filename, w.lineno) for w in caught if issubclass(w.category, DeprecationWarning)]
        assert deprecations == [(__file__, call.__code__.co_firstlineno)], what


def test_make_batch_loss_gives_a_function_of_embeddings_and_labels():
    f = rankax.make_batch_loss(rankax.smooth_ap_loss, temperature=0.5)
    assert list(inspect.signature(f).parameters) == ["embeddings", "labels"]
    assert f.__name__ == "batch_smooth_ap_loss" and "temperature" in f.__doc__
    emb, labels = _batch(6)
    with pytest.raises(TypeError, match="loss_fn must be a list loss"):  # not read as the list loss
        rankax.batch_loss(f, emb, labels)


def _normalized_softmax(e, y, p, t):
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    logits = e @ p.T / t
    log_z = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
    return np.mean(log_z - logits[np.arange(len(y)), y])


def test_functions_outside_the_list_api_take_the_old_spelling_and_name_unknown_arguments():
    rng = np.random.default_rng(4)
    e, p = rng.normal(size=(6, 4)), rng.normal(size=(3, 4))
    y = np.array([0, 1, 2, 0, 1, 2])
    with pytest.warns(DeprecationWarning, match="normalized_softmax_loss\\(\\): argument 'tau'"):
        old = float(rankax.losses.normalized_softmax_loss(e.astype("f4"), y, p.astype("f4"), tau=0.1))
    assert old == pytest.approx(_normalized_softmax(e, y, p, 0.1), rel=1e-5)
    with pytest.raises(TypeError, match="'temprature'; did you mean 'temperature'"):
        rankax.losses.normalized_softmax_loss(e, y, p, temprature=0.1)
    with pytest.raises(TypeError, match="roadmap_step\\(\\) got an unknown argument 'rh'; did you mean"):
        rankax.ranking.roadmap_step(0.1, rh=3.0)


def _pk_lists(seed=11, classes=7, per_class=10, dim=6):
    rng = np.random.default_rng(seed)
    emb = jnp.asarray(rng.normal(size=(classes * per_class, dim)).astype(np.float32))
    emb = emb / jnp.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), per_class)
    rel = jnp.asarray((labels[:, None] == labels[None, :]).astype(np.float32))
    return emb, labels, rel, jnp.asarray(~np.eye(len(labels), dtype=bool))


def _assert_grouped_like_batch_loss(fn, loss_of, emb, labels, monkeypatch):
    """``loss_of(emb)`` (a mean over the 70 lists of ``E E^T``) compiled with the default tile
    and with a tile of 3 lists of the 70-slot rung: the value and gradient equal batch_loss's
    (a separate implementation: sorted slots, query blocks), and the reserved memory falls."""
    from rankax._core import positives

    def compiled(tile):
        monkeypatch.setattr(positives, "LADDER_TILE_ELEMENTS", tile)
        f = jax.jit(jax.value_and_grad(loss_of))
        return f, f.lower(emb).compile().memory_analysis().temp_size_in_bytes

    most = int(np.max(np.bincount(labels))) - 1
    batch = lambda e: rankax.batch_loss(fn, e, labels, max_positives=most)
    want_value, want_grad = jax.value_and_grad(batch)(emb)
    _, whole = compiled(2**26)
    grouped, small = compiled(70 * 70 * 3)  # top rung (70 slots): 3 lists a group, 24 groups
    value, grad = grouped(emb)
    np.testing.assert_allclose(float(value), float(want_value), rtol=2e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=2e-4, atol=1e-6)
    assert small < whole / 4, (small, whole)


@pytest.mark.parametrize("name", ["supap_loss", "smooth_ap_loss", "pnp_loss"])
def test_ladder_rungs_run_their_lists_in_groups_with_bounded_memory(name, monkeypatch):
    """A rung whose [lists, C, N] terms exceed LADDER_TILE_ELEMENTS runs its lists in groups
    (lax.map, padded), on lists with more positives than max_positives (every rung of the
    lax.switch is sized, taken or not). (The histogram losses have no rungs on given lists.)"""
    fn = getattr(rankax.losses, name)
    emb, labels, rel, where = _pk_lists()  # 9 positives per list, max_positives=2: rung 8 or 32
    loss_of = lambda e: jnp.mean(fn(e @ e.T, rel, where=where, max_positives=2))
    _assert_grouped_like_batch_loss(fn, loss_of, emb, labels, monkeypatch)


@pytest.mark.parametrize("name", ["supap_loss", "smooth_ap_loss"])
def test_a_vmapped_loss_groups_every_list_of_the_vmap(name, monkeypatch):
    """Under jit(grad(mean(vmap(loss)))) each call sees one list; the rungs above
    KEPT_CAPACITY (here the 70-slot one, taken: 34 positives > 32) see the whole vmapped batch
    and group it, as without vmap."""
    fn = getattr(rankax.losses, name)
    emb, labels, rel, where = _pk_lists(classes=2, per_class=35)
    one = lambda s, r, w: fn(s, r, where=w, max_positives=2)  # rungs 2, 8, 32, 70
    loss_of = lambda e: jnp.mean(jax.vmap(one)(e @ e.T, rel, where))
    _assert_grouped_like_batch_loss(fn, loss_of, emb, labels, monkeypatch)


def test_per_list_gradients_and_second_derivatives_through_a_grouped_rung():
    """vmap(grad(loss)) gives each list its own gradient (that of a call on that list alone),
    and a second reverse-mode derivative through the 70-slot rung (40 positives, hint 2: rungs
    2, 8, 32, 70) matches central differences of the gradient (Smooth-AP: smooth)."""
    emb, _, rel, where = _pk_lists(classes=2, per_class=35, seed=12)
    scores = emb @ emb.T
    loss = lambda s, r, w: rankax.smooth_ap_loss(s, r, where=w, temperature=0.05, max_positives=2)
    per_list = jax.vmap(jax.grad(loss))(scores, rel, where)
    one_grad = jax.jit(jax.grad(loss))
    each = np.stack([one_grad(scores[i], rel[i], where[i]) for i in range(len(scores))])
    np.testing.assert_allclose(np.asarray(per_list), np.asarray(each), rtol=1e-5, atol=1e-7)

    rng = np.random.default_rng(0)
    s = scores[0]
    r = jnp.asarray((np.arange(70) % 7 < 4).astype(np.float32))  # 40 positives
    direction, probe = (jnp.asarray(rng.normal(size=70).astype(np.float32)) for _ in range(2))
    grad_dot = lambda s: jnp.vdot(jax.grad(loss)(s, r, where[0]), direction)
    hvp = jax.grad(grad_dot)(s)
    eps = 1e-3
    numeric = (grad_dot(s + eps * probe) - grad_dot(s - eps * probe)) / (2 * eps)
    assert float(jnp.vdot(hvp, probe)) == pytest.approx(float(numeric), rel=2e-2, abs=1e-3)


def test_batch_loss_with_references_ranks_them_in_every_list():
    """references= (e.g. a memory of earlier batches) are extra items in every query's list,
    masked where reference_mask is False; their gradient is stopped. Smooth-AP against the
    float64 formula on the dense lists, and the embeddings' gradient against central
    differences of that formula with the references held fixed."""
    rng = np.random.default_rng(7)
    emb, labels = _batch(7, classes=3, per_class=4, dim=6)
    refs = rng.normal(size=(5, 6))
    refs = (refs / np.linalg.norm(refs, axis=1, keepdims=True)).astype(np.float32)
    ref_labels = np.array([0, 1, 2, 0, 1])
    mask = np.array([True, True, False, True, True])  # the third reference does not exist

    def reference(e):
        return _smooth_ap_without_self(e.astype(np.float64), labels, 0.05, refs[mask], ref_labels[mask])

    extra = dict(reference_labels=ref_labels, reference_mask=mask, temperature=0.05)
    f = lambda e, r: rankax.batch_loss(rankax.smooth_ap_loss, e, labels, references=r, **extra)
    value, (grad, ref_grad) = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(emb), jnp.asarray(refs))
    assert float(value) == pytest.approx(reference(emb), abs=1e-5)
    assert not np.asarray(ref_grad).any()  # stopped
    direction = rng.normal(size=emb.shape)
    eps = 1e-4
    numeric = (reference(emb + eps * direction) - reference(emb - eps * direction)) / (2 * eps)
    assert float(np.sum(np.asarray(grad) * direction)) == pytest.approx(numeric, rel=2e-2, abs=1e-4)


def test_hyperparameters_vmapped_and_graded_labels_differentiated_through_a_large_rung():
    """Lists of 80 items take a ladder up to the 80-slot rung (grouped under vmap). A loss
    vmapped over its temperature (a tracer the rung closes over) equals one call per value;
    and the gradient w.r.t. graded labels reaches them through that rung (central
    differences on continuous relevances: min(rel_j, rel_k) is smooth away from ties)."""
    rng = np.random.default_rng(3)
    s = jnp.asarray(rng.normal(size=80).astype(np.float32))
    r = jnp.asarray((rng.random(80) < 0.5).astype(np.float32))
    temps = jnp.array([0.01, 0.05])
    got = jax.vmap(lambda t: rankax.smooth_ap_loss(s, r, temperature=t))(temps)
    want = [float(rankax.smooth_ap_loss(s, r, temperature=float(t))) for t in temps]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    lists = jnp.stack([s, s[::-1]]), jnp.stack([r, r])
    per_rho = lambda rho: jax.vmap(lambda a, b: rankax.supap_loss(a, b, rho=rho))(*lists)
    nested = jax.vmap(per_rho)(jnp.array([10.0, 100.0]))
    for row, rho in zip(np.asarray(nested), (10.0, 100.0), strict=True):
        want = rankax.supap_loss(*lists, rho=rho, reduce_fn=None)
        np.testing.assert_allclose(row, np.asarray(want), rtol=1e-6)

    scores, rel = rng.normal(size=(2, 100)), rng.uniform(0.5, 2.5, (2, 100)) * (rng.random((2, 100)) < 0.8)
    direction = rng.normal(size=rel.shape) * (rel > 0)  # move the positives' relevance only
    with jax.enable_x64(True):  # float64: central differences to 1e-10 (80 positives: rung 100)
        loss = lambda y: rankax.hap_loss(jnp.asarray(scores), y, max_positives=2)
        grad = np.asarray(jax.grad(loss)(jnp.asarray(rel)))
        eps = 1e-5
        numeric = (float(loss(jnp.asarray(rel + eps * direction)))
                   - float(loss(jnp.asarray(rel - eps * direction)))) / (2 * eps)
    assert np.abs(grad).max() > 1e-4
    assert float(np.sum(grad * direction)) == pytest.approx(numeric, rel=1e-6)


def _export_lists(seed, b, n=12):
    rng = np.random.default_rng(seed)
    scores = rng.uniform(-1, 1, (b, n)).astype(np.float32)
    labels = (rng.uniform(size=(b, n)) < 0.3).astype(np.float32)
    labels[:, 0] = 1.0
    return scores, labels


def _round_trip(exported):
    """The export itself, or (with the optional ``flatbuffers`` package) its serialised copy."""
    from jax import export

    try:
        import flatbuffers  # noqa: F401
    except ImportError:
        return exported
    return export.deserialize(exported.serialize())


def test_exported_loss_and_gradient_give_the_direct_values():
    # docs/losses.md, "Export": a loss and its gradient export (and serialise, where flatbuffers
    # is installed) and run with concrete shapes (values as the direct call's).
    from jax import export

    s, y = _export_lists(0, 5)
    for loss in (rankax.supap_loss, rankax.smooth_ap_loss, rankax.hap_loss):
        fn = jax.jit(jax.value_and_grad(lambda t, lab, loss=loss: loss(t, lab)))
        exported = _round_trip(export.export(fn)(s, y))
        (value, grad), (want, want_grad) = exported.call(s, y), fn(s, y)
        np.testing.assert_allclose(value, want, rtol=1e-6, err_msg=loss.__name__)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7, err_msg=loss.__name__)


@pytest.mark.parametrize("name", ["histogram_ap_loss", "fast_ap_loss", "blackbox_ap_loss", "triplet_loss",
                                  "multi_similarity_loss", "contrastive_loss"])
def test_losses_without_positive_slots_export_with_a_symbolic_number_of_lists(name):
    # docs/losses.md, "Export": these losses never compare the number of lists with a tile
    # size, so one program serves every number of lists.
    from jax import export

    loss = getattr(rankax, name)
    fn = jax.jit(jax.value_and_grad(lambda t, lab: loss(t, lab)))
    b = export.symbolic_shape("b")[0]
    spec = jax.ShapeDtypeStruct((b, 12), jnp.float32)
    exported = _round_trip(export.export(fn)(spec, spec))
    for num_lists in (1, 6):
        s, y = _export_lists(num_lists, num_lists)
        (value, grad), (want, want_grad) = exported.call(s, y), fn(s, y)
        np.testing.assert_allclose(value, want, rtol=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


def test_rank_losses_name_the_symbolic_dimension_they_cannot_export():
    from jax import export

    b = export.symbolic_shape("b")[0]
    spec = jax.ShapeDtypeStruct((b, 12), jnp.float32)
    with pytest.raises(Exception, match="'b'"):
        export.export(jax.jit(rankax.supap_loss))(spec, spec)
