"""Cross-batch memory: the ring buffer, and batch_loss against batch + memory equals dense."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rankax
from rankax import batch, xbm
from rankax.losses import smooth_ap_loss, supap_loss

LIST_LOSSES = getattr(rankax.losses, "LIST_LOSSES", (smooth_ap_loss, supap_loss))
POOLED = getattr(rankax.losses, "PAIR_POOLED_LOSSES", ())
B, M, D = 12, 10, 5


def _unit(key, shape):
    e = jax.random.normal(jax.random.key(key), shape)
    return 0.95 * e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def _filled_memory(label_shape=()):
    """A memory of 10 slots after 12 + 5 entries: wrapped around, all slots valid."""
    mem = xbm.init(M, D, label_shape=label_shape)
    rs = np.random.RandomState(1)
    for key, n in ((1, 12), (2, 5)):
        lab = rs.randint(0, 4, size=(n, *label_shape))
        mem = xbm.update(mem, _unit(key, (n, D)), jnp.asarray(lab, jnp.int32))
    return mem


def dense_with_memory(loss_fn, emb, labels, mem, relevance_fn=None):
    """Reference: lists over [batch, memory] built in full, vmap of the list loss."""
    items = jnp.concatenate([emb, jax.lax.stop_gradient(mem.embeddings)])
    # Invalid slots hold no label (-1), as in rankax.xbm.
    mem_labels = jnp.where(mem.valid.reshape(-1, *([1] * (mem.labels.ndim - 1))), mem.labels, -1)
    item_labels = jnp.concatenate([labels, mem_labels])
    b, n = emb.shape[0], items.shape[0]
    scores = jnp.matmul(emb, items.T, precision="highest")  # float32-exact as batch_loss (GPU: not TF32)
    rel_fn = batch.default_relevance(labels) if relevance_fn is None else relevance_fn
    rel = rel_fn(labels, item_labels).astype(jnp.float32)
    where = (jnp.arange(b)[:, None] != jnp.arange(n)[None, :]) & jnp.concatenate(
        [jnp.ones((b,), bool), mem.valid]
    )[None, :]
    if loss_fn in POOLED:
        return loss_fn(scores, rel, where=where)
    per_list = jax.vmap(lambda s, y, w: loss_fn(s, y, where=w, reduce_fn=None))(scores, rel, where)
    valid = jnp.any((rel > 0) & where, axis=-1)
    return jnp.sum(jnp.where(valid, per_list, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def test_ring_buffer():
    mem = xbm.init(4, 2)
    assert mem.size == 4 and int(xbm.num_entries(mem)) == 0
    assert np.all(np.asarray(mem.labels) == xbm.EMPTY_LABEL)
    emb = jnp.arange(12.0).reshape(6, 2)
    mem = xbm.update(mem, emb[:3], jnp.arange(3))
    assert int(mem.pointer) == 3 and int(xbm.num_entries(mem)) == 3
    mem = xbm.update(mem, emb[3:], jnp.arange(3, 6))  # wraps: slots 3, 0, 1
    assert int(mem.pointer) == 2 and int(xbm.num_entries(mem)) == 4
    np.testing.assert_array_equal(np.asarray(mem.labels), [4, 5, 2, 3])
    np.testing.assert_array_equal(np.asarray(mem.embeddings[0]), [8.0, 9.0])
    big = xbm.update(xbm.init(4, 2), emb, jnp.arange(6))  # B > M keeps the newest M
    np.testing.assert_array_equal(np.sort(np.asarray(big.labels)), [2, 3, 4, 5])
    assert int(big.pointer) == 2
    np.testing.assert_array_equal(np.asarray(big.labels), [4, 5, 2, 3])


def test_update_refuses_ids_that_the_memory_would_narrow():
    # int64 ids into the default int32 memory would wrap 2**32 + 1 onto class 1.
    with jax.enable_x64(True):
        ids = jnp.asarray([2**32 + 1, 7], jnp.int64)
        with pytest.raises(TypeError, match=r"label_dtype=jnp.int64"):
            xbm.update(xbm.init(4, 2), jnp.ones((2, 2)), ids)
        kept = xbm.update(xbm.init(4, 2, label_dtype=jnp.int64), jnp.ones((2, 2)), ids)
        assert int(kept.labels[0]) == 2**32 + 1
    with pytest.raises(TypeError, match=r"uint32 do not fit the memory's int32 labels: cast the labels"):
        xbm.update(xbm.init(4, 2), jnp.ones((2, 2)), jnp.asarray([1, 2], jnp.uint32))
    with jax.enable_x64(True):  # the advice given there works
        ids = jnp.asarray([2**32 - 1, 2], jnp.uint32)
        with pytest.raises(TypeError, match=r"label_dtype=jnp.int64"):
            xbm.update(xbm.init(4, 2), jnp.ones((2, 2)), ids)
        kept = xbm.update(xbm.init(4, 2, label_dtype=jnp.int64), jnp.ones((2, 2)), ids)
        assert int(kept.labels[0]) == 2**32 - 1
    small = xbm.update(xbm.init(4, 2), jnp.ones((2, 2)), jnp.asarray([1, 2], jnp.uint8))  # widened
    np.testing.assert_array_equal(np.asarray(small.labels[:2]), [1, 2])


def test_update_is_jittable_and_a_pytree():
    mem = xbm.init(8, 3, label_shape=(2,))
    step = jax.jit(xbm.update)
    mem = step(mem, _unit(0, (3, 3)), jnp.zeros((3, 2), jnp.int32))
    mem = step(mem, _unit(1, (3, 3)), jnp.ones((3, 2), jnp.int32))
    assert int(mem.pointer) == 6 and len(jax.tree.leaves(mem)) == 4
    with pytest.raises(ValueError, match="labels must be"):
        xbm.update(mem, _unit(0, (3, 3)), jnp.zeros((3,), jnp.int32))


# One loss per family: gathered positives, pair-pooled statistics, histogram, graded.
MEMORY_LOSSES = tuple(
    getattr(rankax.losses, name)
    for name in ("supap_loss", "pnp_loss", "roadmap_loss", "fast_ap_loss", "sup_ndcg_loss")
    if hasattr(rankax.losses, name)
) or LIST_LOSSES


@pytest.mark.parametrize("loss_fn", MEMORY_LOSSES, ids=lambda f: f.__name__)
def test_batch_plus_memory_equals_dense(loss_fn):
    emb = _unit(0, (B, D))
    lab = jnp.asarray(np.random.RandomState(0).randint(0, 4, B), jnp.int32)
    mem = _filled_memory()
    mem = mem._replace(valid=mem.valid.at[3].set(False))  # one empty slot
    ref_val, ref_grad = jax.value_and_grad(lambda e: dense_with_memory(loss_fn, e, lab, mem))(emb)
    val, grad = jax.value_and_grad(
        lambda e: rankax.batch_loss(loss_fn, e, lab, memory=mem, block_size=5)
    )(emb)
    np.testing.assert_allclose(val, ref_val, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-5, atol=2e-5)


def test_memory_under_jit_with_overflow_and_no_memory_gradient():
    """Traced labels, capacity ladder from 1; the memory receives no gradient."""
    emb = _unit(0, (B, D))
    lab = jnp.asarray(np.random.RandomState(0).randint(0, 4, B), jnp.int32)
    mem = _filled_memory()

    @jax.jit
    def step(e, y, mem):
        return jax.value_and_grad(
            lambda e, m: rankax.batch_loss(
                supap_loss, e, y, memory=mem._replace(embeddings=m), max_positives=1, block_size=4
            ),
            argnums=(0, 1),
        )(e, mem.embeddings)

    val, (grad, mem_grad) = step(emb, lab, mem)
    ref_val, ref_grad = jax.value_and_grad(lambda e: dense_with_memory(supap_loss, e, lab, mem))(emb)
    np.testing.assert_allclose(val, ref_val, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-5, atol=2e-5)
    assert float(jnp.max(jnp.abs(mem_grad))) == 0.0


def test_hierarchical_memory_equals_dense():
    loss_fn = getattr(rankax.losses, "hap_loss", supap_loss)
    emb = _unit(0, (B, D))
    fine = np.random.RandomState(0).randint(0, 4, B)
    paths = jnp.asarray(np.stack([fine, fine // 2], 1), jnp.int32)
    mem = _filled_memory(label_shape=(2,))
    mem = mem._replace(labels=mem.labels.at[:, 1].set(mem.labels[:, 0] // 2))
    mem = mem._replace(valid=mem.valid.at[7].set(False))
    ref = jax.value_and_grad(lambda e: dense_with_memory(loss_fn, e, paths, mem))(emb)
    got = jax.value_and_grad(lambda e: rankax.batch_loss(loss_fn, e, paths, memory=mem, block_size=5))(emb)
    np.testing.assert_allclose(got[0], ref[0], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got[1], ref[1], rtol=2e-5, atol=2e-5)


def test_empty_memory_equals_plain_batch():
    emb = _unit(0, (B, D))
    lab = jnp.asarray(np.random.RandomState(0).randint(0, 4, B), jnp.int32)
    with_mem = rankax.batch_loss(supap_loss, emb, lab, memory=xbm.init(M, D))
    np.testing.assert_allclose(with_mem, rankax.batch_loss(supap_loss, emb, lab), rtol=1e-6)
