"""The fast paths give the reference paths' values (not timed; speed is in the benchmarks).

* the list API under ``jax.vmap`` (capacity ladder with a batch-wide, unbatched choice) equals
  the exact ``N``-slot computation, also when one list needs a larger rung;
* ``batch_loss`` gives the same value and gradient whether its labels are numpy or ``jnp``,
  closed over or traced, and with or without ``jit``; called without ``jit`` it compiles once;
* the similarity is float32-exact by default (``precision="highest"``), against float64 numpy;
* keeping the scores for the backward pass equals recomputing them;
* the accelerator block/tile defaults equal the CPU ones;
* SupNDCG's ideal DCG sorts nothing (its values are checked against references elsewhere);
* the histogram losses search for no positives on given lists.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rankax
from rankax import batch
from rankax._core import positives as _lists
from rankax.losses import smooth_ap_loss, supap_loss
from tests import jaxprs

B, D = 48, 8


def _batch(seed=0, sizes=(4,) * 12):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(B, D)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes)[:B]).astype(np.int32)
    return jnp.asarray(emb), labels


def _close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "loss_fn, sizes",
    [(smooth_ap_loss, (4,) * 12), (supap_loss, (4,) * 8 + (16,))],
    ids=["smooth_ap-pk", "supap-one-large-class"],
)
def test_vmapped_list_api_equals_exact_slots(loss_fn, sizes, monkeypatch):
    """A 96-item list is above DENSE_LIST_LENGTH, so the ladder (4, 16, 64, 96) is used; with a
    class of 16 the batch-wide maximum takes rung 16 for every list."""
    emb, labels = _batch(sizes=sizes)
    emb = jnp.concatenate([emb, -emb])  # 96 items, lists longer than DENSE_LIST_LENGTH
    labels = np.concatenate([labels, labels + 100])
    n = emb.shape[0]
    assert n > _lists.DENSE_LIST_LENGTH

    def mean_loss(e, y):
        scores = jnp.matmul(e, e.T, precision="highest")
        rel = (y[:, None] == y[None, :]).astype(jnp.float32)
        where = ~jnp.eye(n, dtype=bool)
        return jnp.mean(jax.vmap(lambda s, r, w: loss_fn(s, r, where=w, reduce_fn=None))(scores, rel, where))

    fast = jax.jit(jax.value_and_grad(mean_loss))(emb, jnp.asarray(labels))
    monkeypatch.setattr(_lists, "DENSE_LIST_LENGTH", n)  # the reference: N slots, no ladder
    exact = jax.jit(jax.value_and_grad(mean_loss))(emb, jnp.asarray(labels))
    _close(fast[0], exact[0])
    _close(fast[1], exact[1])


def test_most_positives_is_batch_wide_and_unbatched_under_vmap():
    is_pos = jnp.asarray(np.arange(12).reshape(3, 4) % 3 == 0)  # rows: 2, 1, 1 positives
    assert int(_lists.most_positives(is_pos)) == 2
    # out_axes=None only accepts an unbatched result: the maximum over all lists.
    out = jax.vmap(_lists.most_positives, out_axes=None)(is_pos)
    assert jnp.shape(out) == () and int(out) == 2
    nested = jax.vmap(jax.vmap(_lists.most_positives, out_axes=None), out_axes=None)(is_pos[None, :, :, None])
    assert jnp.shape(nested) == () and int(nested) == 1  # each list is a single item there


def test_batch_loss_label_paths_agree():
    emb, labels_np = _batch(1)
    labels_jnp = jnp.asarray(labels_np)
    grad = lambda f: jax.value_and_grad(f)  # noqa: E731
    results = {
        "numpy closed": jax.jit(grad(lambda e: rankax.batch_loss(supap_loss, e, labels_np)))(emb),
        "jnp closed": jax.jit(grad(lambda e: rankax.batch_loss(supap_loss, e, labels_jnp)))(emb),
        "traced": jax.jit(grad(lambda e, y: rankax.batch_loss(supap_loss, e, y)))(emb, labels_jnp),
        "traced + hint": jax.jit(grad(
            lambda e, y: rankax.batch_loss(supap_loss, e, y, max_positives=3, capacity_limit=3)
        ))(emb, labels_jnp),
        "no jit": grad(lambda e: rankax.batch_loss(supap_loss, e, labels_np))(emb),
    }
    ref_value, ref_grad = results.pop("numpy closed")
    for name, (value, g) in results.items():
        _close(value, ref_value, rtol=1e-6, atol=0)
        _close(g, ref_grad, rtol=1e-5, atol=1e-7)
        assert name  # every path checked


def test_batch_loss_without_jit_compiles_once_per_shape():
    emb, labels = _batch(2)
    before = batch._batch_loss_compiled._cache_size()
    values = [rankax.batch_loss(supap_loss, emb, labels) for _ in range(3)]
    values += [rankax.batch_loss(supap_loss, emb * 1.0, np.asarray(labels)) for _ in range(2)]
    assert batch._batch_loss_compiled._cache_size() == before + 1
    assert len({float(v) for v in values}) == 1
    rankax.batch_loss(supap_loss, emb[:40], labels[:40])  # another shape: one more program
    assert batch._batch_loss_compiled._cache_size() == before + 2


def test_similarity_is_float32_exact_by_default():
    """The loss of scores computed by batch_loss equals the list loss on float64 scores rounded
    to float32 (a TF32 matmul would be ~1e-3 off); precision='default' is accepted."""
    emb, labels = _batch(3)
    e64 = np.asarray(emb, np.float64)
    scores = np.float32(e64 @ e64.T)
    rel = (labels[:, None] == labels[None, :]).astype(np.float32)
    where = ~np.eye(B, dtype=bool)
    ref = smooth_ap_loss(scores, rel, where=where)
    _close(rankax.batch_loss(smooth_ap_loss, emb, labels), ref, rtol=2e-6, atol=0)
    assert np.isfinite(float(rankax.batch_loss(smooth_ap_loss, emb, labels, precision="default")))


def test_saved_scores_equal_recomputed(monkeypatch):
    emb, labels = _batch(4)
    f = lambda e, y: rankax.batch_loss(smooth_ap_loss, e, y)  # noqa: E731  (block_size="auto")
    saved = jax.jit(jax.value_and_grad(f))(emb, jnp.asarray(labels))
    monkeypatch.setattr(batch, "SAVED_SCORES_ELEMENTS", 0)
    recomputed = jax.jit(jax.value_and_grad(f))(emb, jnp.asarray(labels))
    explicit = jax.jit(jax.value_and_grad(  # an explicit block size recomputes too
        lambda e, y: rankax.batch_loss(smooth_ap_loss, e, y, block_size=16)))(emb, jnp.asarray(labels))
    _close(explicit[0], recomputed[0], rtol=1e-6, atol=0)
    _close(saved[0], recomputed[0], rtol=0, atol=0)
    _close(saved[1], recomputed[1], rtol=1e-6, atol=1e-8)


def test_accelerator_defaults_equal_cpu_defaults():
    emb, labels = _batch(5)
    b_acc, t_acc = batch.default_sizes(B, B, backend="gpu")
    b_cpu, t_cpu = batch.default_sizes(B, B, backend="cpu")
    assert (b_acc, t_acc) == (B, 2**26) and (b_cpu, t_cpu) == (B, 2**24)
    assert batch.default_sizes(65536, 65536, backend="gpu") == (512, 2**26)
    f = lambda e, y, **kw: rankax.batch_loss(supap_loss, e, y, **kw)  # noqa: E731
    acc = jax.jit(jax.value_and_grad(lambda e, y: f(e, y, block_size=b_acc, max_tile_elements=t_acc)))
    cpu = jax.jit(jax.value_and_grad(lambda e, y: f(e, y, block_size=7, max_tile_elements=3 * 7 * B)))
    a, c = acc(emb, jnp.asarray(labels)), cpu(emb, jnp.asarray(labels))
    _close(a[0], c[0])
    _close(a[1], c[1])


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(block_size="autoo"), "block_size must be 'auto', None"),
        (dict(block_size=0), "block_size must be"),
        (dict(max_tile_elements=0), "max_tile_elements must be None"),
        (dict(precision="bogus"), "precision must be a jax.lax.Precision"),
    ],
)
def test_bad_sizes_and_precision_name_the_argument(kw, match):
    emb, labels = _batch(6)
    with pytest.raises(ValueError, match=r"batch_loss\(supap_loss\): " + match):
        rankax.batch_loss(supap_loss, emb, labels, **kw)


def _primitives(fn, *args):
    """Names of every primitive in ``fn``'s jaxpr, nested jaxprs (jit, custom_vjp, scan) included."""
    return {eqn.primitive.name for eqn in jaxprs.equations(jax.make_jaxpr(fn)(*args).jaxpr)}


def test_sup_ndcg_ideal_dcg_sorts_nothing():
    """SupNDCG's ideal DCG comes from the gathered positives' places (``O(C^2)``), not from a
    sort of the list's ``N`` gains, which cost several times the rest of the loss; the
    reference suites check its values (test_supndcg_official, test_losses_reference)."""
    rng = np.random.default_rng(0)
    scores = jnp.asarray(rng.uniform(-1, 1, (4, 64)), jnp.float32)
    rel = jnp.asarray(rng.integers(0, 3, (4, 64)), jnp.float32)
    value_and_grad = jax.value_and_grad(lambda s: rankax.sup_ndcg_loss(s, rel, max_positives=64))
    assert "sort" not in _primitives(value_and_grad, scores)


@pytest.mark.parametrize("name", ["histogram_ap_loss", "fast_ap_loss"])
def test_histogram_losses_locate_positives_only_where_batch_loss_sorted_them(name):
    """The histogram losses take their positives' histogram from slots only where
    ``batch_loss``'s sort gave them: on given lists they make two masked passes, with no search
    for the positives (no ``argmax``/``gather``/``scatter-add`` of the slots, no capacity
    ladder's ``cond``), which cost the listwise AP 2-150x on the CPU."""
    rng = np.random.default_rng(0)
    scores = jnp.asarray(rng.uniform(-1, 1, (4, 64)), jnp.float32)
    labels = jnp.asarray(rng.uniform(size=(4, 64)) < 0.5, jnp.float32)
    loss = getattr(rankax, name)
    value_and_grad = jax.value_and_grad(lambda s, y: loss(s, y))
    found = _primitives(value_and_grad, scores, labels)
    assert not found & {"argmax", "gather", "scatter-add", "cond", "sort"}, found
