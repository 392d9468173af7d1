"""rankax.batch_loss equals the dense per-list computation, in values and gradients.

The dense reference is written here on purpose, independently of the blocked engine: build the
full ``[B, B]`` score matrix, run the list-level loss on every row through ``jax.vmap`` with
``max_positives=None`` (all items are slots, nothing gathered) and average over the queries
that have a positive. Pair-pooled losses (statistics protocol) are called once on the whole
matrix, where they pool all pairs themselves.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rankax
from rankax import batch, hierarchy
from rankax.losses import smooth_ap_loss, supap_loss

LIST_LOSSES = getattr(rankax.losses, "LIST_LOSSES", (smooth_ap_loss, supap_loss))
POOLED = getattr(rankax.losses, "PAIR_POOLED_LOSSES", ())
B, D = 22, 6


def _name(fn):
    return fn.__name__


def _embeddings(b=B, d=D, seed=0):
    # Norm 0.95, not 1: with include_self the self-score would sit exactly on a kink of the
    # histogram losses (distance 0 = a bin centre), where float rounding of the score (full
    # matmul vs blocked matmul) picks one side of the kink or the other.
    e = jax.random.normal(jax.random.key(seed), (b, d))
    return 0.95 * e / jnp.linalg.norm(e, axis=1, keepdims=True)


def _labels(b=B, seed=0):
    # Classes of 1 to 6 samples: singletons (queries without positive) and lists with more
    # positives than the capacity used below.
    rs = np.random.RandomState(seed)
    sizes = [6, 1, 4, 3, 1, 5, 2]
    lab = np.repeat(np.arange(len(sizes)), sizes)[:b]
    return jnp.asarray(rs.permutation(lab), dtype=jnp.int32)


def _paths(b=B, seed=0):
    """[B, 2] label paths (finest class, super-class), column 0 finest."""
    fine = np.asarray(_labels(b, seed))
    return jnp.asarray(np.stack([fine, fine // 3], axis=1), dtype=jnp.int32)


def dense_reference(loss_fn, emb, labels, *, include_self=False, relevance_fn=None, **hparams):
    b = emb.shape[0]
    scores = jnp.matmul(emb, emb.T, precision="highest")  # float32-exact as batch_loss (GPU: not TF32)
    # The relevance rule the loss declares for label paths (SupNDCG: shared-level counts, the
    # official gains; H-AP: SupRank's "pop"), as batch_loss reads it.
    rule = getattr(loss_fn, "path_relevance", "pop")
    rel_fn = batch.default_relevance(labels, include_self, rule) if relevance_fn is None else relevance_fn
    rel = rel_fn(labels, labels).astype(jnp.float32)
    if not getattr(loss_fn, "graded", False):  # binary losses: relevant iff relevance > 0
        rel = (rel > 0).astype(jnp.float32)
    where = jnp.ones((b, b), bool) if include_self else ~jnp.eye(b, dtype=bool)
    if loss_fn in POOLED:
        return loss_fn(scores, rel, where=where, **hparams)
    per_list = jax.vmap(
        lambda s, y, w: loss_fn(s, y, where=w, reduce_fn=None, max_positives=None, **hparams)
    )(scores, rel, where)
    valid = jnp.any((rel > 0) & where, axis=-1)
    return jnp.sum(jnp.where(valid, per_list, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _assert_close(got, want, rtol=2e-5, atol=2e-6):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "label_kind, include_self", [("flat", False), ("paths", True)], ids=["flat", "paths-self"]
)
@pytest.mark.parametrize("loss_fn", LIST_LOSSES, ids=_name)
def test_blocked_equals_dense(loss_fn, label_kind, include_self):
    """Concrete labels (exact capacity), blocks of 5 queries (the last one padded): class ids
    without self, and [B, L] label paths with SupRank's graded relevance with self."""
    emb = _embeddings()
    lab = _labels() if label_kind == "flat" else _paths()
    ref_val, ref_grad = jax.value_and_grad(
        lambda e: dense_reference(loss_fn, e, lab, include_self=include_self)
    )(emb)
    val, grad = jax.value_and_grad(
        lambda e: rankax.batch_loss(loss_fn, e, lab, include_self=include_self, block_size=5)
    )(emb)
    _assert_close(val, ref_val)
    _assert_close(grad, ref_grad, atol=2e-5)


OVERFLOW_LOSSES = tuple(
    getattr(rankax.losses, name)
    for name in ("supap_loss", "pnp_loss", "roadmap_loss")
    if hasattr(rankax.losses, name)
)


@pytest.mark.parametrize("include_self", [False])
@pytest.mark.parametrize("loss_fn", OVERFLOW_LOSSES, ids=_name)
def test_overflow_is_exact_under_jit(loss_fn, include_self):
    """Traced labels and a capacity of 1 (< most class sizes): every block climbs the capacity
    ladder (1, 4, 16, 22) and the larger rungs run in sub-blocks; nothing may be dropped."""
    emb, lab = _embeddings(), _labels()
    ref_val, ref_grad = jax.value_and_grad(
        lambda e: dense_reference(loss_fn, e, lab, include_self=include_self)
    )(emb)

    @jax.jit
    def blocked(e, y):
        return jax.value_and_grad(
            lambda e: rankax.batch_loss(
                loss_fn, e, y, include_self=include_self, max_positives=1, block_size=5,
                max_tile_elements=8 * B,
            )
        )(e)

    val, grad = blocked(emb, lab)
    _assert_close(val, ref_val)
    _assert_close(grad, ref_grad, atol=2e-5)


@pytest.mark.parametrize("include_self", [True])
def test_hierarchical_ladder(include_self):
    """Graded relevance through the capacity ladder (traced paths), H-AP."""
    loss_fn = getattr(rankax.losses, "hap_loss", supap_loss)
    emb, paths = _embeddings(), _paths()
    rel_fn = functools.partial(hierarchy.hierarchical_relevance, include_self=include_self)
    ref_val, ref_grad = jax.value_and_grad(
        lambda e: dense_reference(loss_fn, e, paths, include_self=include_self, relevance_fn=rel_fn)
    )(emb)
    val, grad = jax.jit(
        jax.value_and_grad(
            lambda e, p: rankax.batch_loss(
                loss_fn, e, p, include_self=include_self, relevance_fn=rel_fn, max_positives=2,
                block_size=4,
            )
        )
    )(emb, paths)
    _assert_close(val, ref_val)
    _assert_close(grad, ref_grad, atol=2e-5)


def test_concrete_and_traced_capacity_agree():
    emb, lab = _embeddings(), _labels()
    eager = rankax.batch_loss(supap_loss, emb, lab, block_size=7)
    traced = jax.jit(lambda e, y: rankax.batch_loss(supap_loss, e, y, max_positives=5))(emb, lab)
    one_block = rankax.batch_loss(supap_loss, emb, lab, block_size=None)
    _assert_close(eager, traced)
    _assert_close(eager, one_block)
    _assert_close(eager, dense_reference(supap_loss, emb, lab))


def test_capacity_helpers():
    lab = _labels()
    assert batch.exact_capacity(lab, lab, query_index=jnp.arange(B)) == 5
    assert batch.exact_capacity(lab, lab, query_index=jnp.arange(B), include_self=True) == 6
    assert batch.capacity_ladder(3, 100) == (3, 12, 48, 100)
    assert batch.capacity_ladder(200, 100) == (100,)
    assert batch.default_capacity_limit(4096, 2**24) == 4096
    assert batch.default_capacity_limit(16384, 2**24) == 1024


def test_no_positive_anywhere_gives_zero_and_finite_grad():
    emb = _embeddings(8)
    lab = jnp.arange(8, dtype=jnp.int32)
    val, grad = jax.value_and_grad(lambda e: rankax.batch_loss(supap_loss, e, lab))(emb)
    assert float(val) == 0.0
    assert np.all(np.isfinite(np.asarray(grad)))


def test_hparams_are_forwarded():
    emb, lab = _embeddings(), _labels()
    got = rankax.batch_loss(smooth_ap_loss, emb, lab, temperature=0.5)
    _assert_close(got, dense_reference(smooth_ap_loss, emb, lab, temperature=0.5))
    assert abs(float(got) - float(rankax.batch_loss(smooth_ap_loss, emb, lab))) > 1e-4


def test_bfloat16_embeddings():
    emb, lab = _embeddings(), _labels()
    got = rankax.batch_loss(supap_loss, emb.astype(jnp.bfloat16), lab)
    _assert_close(got, dense_reference(supap_loss, emb.astype(jnp.bfloat16).astype(jnp.float32), lab))


def _blocked_grad_scratch(b: int, d: int = 16) -> int | None:
    """XLA's scratch bytes for ``grad`` of a blocked SupAP ``batch_loss`` at batch size ``b``
    (blocks of 64 queries, capacity ladder 3, 12, 48 under jit), or None without a memory analysis."""
    emb = _embeddings(b, d)
    lab = jnp.repeat(jnp.arange(b // 4), 4)
    loss = lambda e, y: rankax.batch_loss(  # noqa: E731
        supap_loss, e, y, max_positives=3, capacity_limit=48, block_size=64,
        max_tile_elements=64 * 3 * b,
    )
    stats = jax.jit(jax.grad(loss)).lower(emb, lab).compile().memory_analysis()
    return None if stats is None else stats.temp_size_in_bytes


def test_peak_memory_is_blocked():
    """The compiled fwd+bwd program needs O(block * B) scratch, not the B^2 of the score
    matrix (nor B^3): doubling B adds what the blocks and tiles add (linear in B), far less
    than the score matrix would (quadratic). Measured as the growth from B = 2048 to 4096, so
    that a backend's fixed scratch (on a GPU, cuBLAS workspaces of tens of MiB) cancels out."""
    small, large = _blocked_grad_scratch(2048), _blocked_grad_scratch(4096)
    if small is None or large is None:
        pytest.skip("backend gives no memory analysis")
    # Blocked: one block of scores grows 0.5 -> 1 MiB, a [64, 3, B] tile 1.5 -> 3 MiB. The
    # B x B score matrix would grow 16 -> 64 MiB (a dense per-query loss B^2 * C, a B^3 one
    # from 32 GiB to 256 GiB).
    assert large - small < 16 * 2**20, (small, large)


def test_overflow_of_traced_labels_is_nan_and_named_by_checks():
    # Traced labels whose lists outgrow capacity_limit: the program cannot raise (no host
    # callback; one would stall the other devices of a mesh), so the value and every gradient
    # are NaN -- never a loss computed without some positives -- and rankax.debug checks name
    # the count. Lists that fit give the dense reference.
    emb, lab = _embeddings(), _labels()  # the largest class has 6 samples: 5 positives
    over = lambda e, y: rankax.batch_loss(supap_loss, e, y, max_positives=2, capacity_limit=4)  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(over))(emb, lab)
    assert np.isnan(value) and np.all(np.isnan(grads))
    assert np.all(np.isnan(jax.jit(jax.grad(over))(emb, lab)))  # the gradient alone, too
    with pytest.raises(rankax.debug.CheckError, match="a query has 5 positives but capacity_limit=4"):
        rankax.debug.checked(over)(emb, lab)
    # Without the sort of class ids (a relevance_fn): the count comes from a pass over the lists.
    graded = lambda e, y: rankax.batch_loss(  # noqa: E731
        supap_loss, e, y, max_positives=2, capacity_limit=4, relevance_fn=batch.binary_relevance)
    assert np.isnan(jax.jit(graded)(emb, lab))
    fits = jax.jit(lambda e, y: rankax.batch_loss(supap_loss, e, y, max_positives=5, capacity_limit=5))
    _assert_close(fits(emb, lab), dense_reference(supap_loss, emb, lab))


@pytest.mark.parametrize("name", ["calibration_loss", "blackbox_ap_loss", "triplet_loss",
                                  "multi_similarity_loss"])
def test_overflow_and_nonfinite_are_nan_for_losses_that_mask(name):
    """Losses whose kernels select or mask (the NaN of a poisoned query need not reach their
    value, and their backward passes drop a NaN cotangent): an overflowing list under jit,
    and a NaN embedding, still give a NaN value and every embedding's gradient NaN (they gave
    0.0, and 2 to 16 finite gradients of 24)."""
    fn = getattr(rankax.losses, name)
    emb, lab = _embeddings(), _labels()  # the largest class has 6 samples: 5 positives
    over = lambda e, y: rankax.batch_loss(fn, e, y, max_positives=2, capacity_limit=4)  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(over))(emb, lab)
    assert np.isnan(value) and np.all(np.isnan(grads))
    fits = lambda e: rankax.batch_loss(fn, e, lab)  # noqa: E731
    assert np.isfinite(jax.jit(fits)(emb))
    value, grads = jax.jit(jax.value_and_grad(fits))(emb.at[3, 1].set(jnp.nan))
    assert np.isnan(value) and np.all(np.isnan(grads))


def test_input_errors():
    emb, lab = _embeddings(), _labels()
    with pytest.raises(ValueError, match="embeddings must be"):
        rankax.batch_loss(supap_loss, emb[0], lab)
    with pytest.raises(ValueError, match="labels of embeddings"):
        rankax.batch_loss(supap_loss, emb, lab[:-1])
    with pytest.raises(TypeError, match="integer"):
        rankax.batch_loss(supap_loss, emb, lab.astype(jnp.float32))
    with pytest.raises(ValueError, match="max_positives"):
        rankax.batch_loss(supap_loss, emb, lab, max_positives=0)
    with pytest.raises(ValueError, match="reference_labels"):
        rankax.batch_loss(supap_loss, emb, lab, references=emb)


def test_capacity_limit_counts_references_and_memory_with_concrete_labels():
    """With references or XBM memory, concrete labels are counted over the batch and the
    filled slots before anything runs (they returned NaN); masked slots do not count."""
    from rankax import xbm

    rng = np.random.default_rng(3)
    emb = rng.normal(size=(7, 8)).astype(np.float32)
    lab = np.array([0, 0, 0, 0, 1, 1, 2])  # class 0: 3 positives within the batch
    refs = rng.normal(size=(3, 8)).astype(np.float32)
    with pytest.raises(batch.CapacityError, match=r"^batch_loss\(supap_loss\): a query has 4 positives"):
        rankax.batch_loss(supap_loss, emb, lab, capacity_limit=3, references=refs,
                          reference_labels=np.array([0, 1, 2]))
    memory = xbm.update(xbm.init(3, 8), refs, np.array([0, 1, 2]))
    with pytest.raises(batch.CapacityError, match="a query has 4 positives"):
        rankax.batch_loss(supap_loss, emb, lab, capacity_limit=3, memory=memory)
    # A masked class-0 reference does not count: 3 positives fit, the value is the list API's.
    mask = np.array([True, True, False])
    got = rankax.batch_loss(supap_loss, emb, lab, capacity_limit=3, references=refs,
                            reference_labels=np.array([1, 1, 0]), reference_mask=mask)
    want = rankax.batch_loss(supap_loss, emb, lab, references=refs[:2], reference_labels=np.array([1, 1]))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_empty_reference_slots_share_no_level_with_negative_path_ids():
    """Empty reference / XBM slots were labelled -1 on every level: with label paths whose
    coarsest id is -1 they joined that level's "pop" population and diluted H-AP. Masked
    slots must count as absent, whatever the ids (here: shifted by one, or removed)."""
    from rankax import xbm

    rng = np.random.default_rng(8)
    paths = np.array([[0, -1], [0, -1], [1, -1], [2, 0], [3, 0]])
    emb = rng.normal(size=(5, 6)).astype(np.float32)
    refs = rng.normal(size=(3, 6)).astype(np.float32)
    ref_paths, mask = np.array([[9, 9], [9, 9], [1, -1]]), np.array([False, False, True])
    hap = functools.partial(rankax.batch_loss, rankax.hap_loss, emb)
    masked = hap(paths, references=refs, reference_labels=ref_paths, reference_mask=mask)
    removed = hap(paths, references=refs[2:], reference_labels=ref_paths[2:])
    shifted = hap(paths + 1, references=refs, reference_labels=ref_paths + 1, reference_mask=mask)
    np.testing.assert_allclose(masked, removed, rtol=1e-6)
    np.testing.assert_allclose(masked, shifted, rtol=1e-6)
    empty = xbm.init(4, 6, label_shape=(2,))
    np.testing.assert_allclose(rankax.batch_loss(rankax.hap_loss, emb, paths, memory=empty),
                               rankax.batch_loss(rankax.hap_loss, emb, paths), rtol=1e-6)
    # Ids at the ends of their dtype: uint8 paths using 0 and 255 (an empty slot's id had
    # wrapped from -1 to 255, joining the fine class 255 under the coarse class 255 that also
    # holds class 2: graded relevance), and the same ids moved to int32's least; masked = removed.
    small = np.array([[0, 0], [0, 0], [2, 255], [2, 255], [255, 255], [255, 255]], np.uint8)
    emb6 = rng.normal(size=(6, 6)).astype(np.float32)
    hap6 = functools.partial(rankax.batch_loss, rankax.hap_loss, emb6)
    for ids in (small, small.astype(np.int32) + np.iinfo(np.int32).min):
        refs_ids = np.array([ids[0], ids[0], ids[4]])
        masked = hap6(ids, references=refs, reference_labels=refs_ids, reference_mask=mask)
        removed = hap6(ids, references=refs[2:], reference_labels=refs_ids[2:])
        np.testing.assert_allclose(masked, removed, rtol=1e-6, err_msg=str(ids.dtype))
    np.testing.assert_allclose(hap6(small, references=refs[2:], reference_labels=small[4:5]),
                               hap6(small.astype(np.int32), references=refs[2:],
                                    reference_labels=small[4:5].astype(np.int32)), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int8, np.int16])
def test_unsigned_and_narrow_class_ids_rank_as_int32_ones(dtype):
    """Any integer ids in range: uint32 ones raised an OverflowError (the sort's sentinel, a
    Python int, was read as int32), eagerly and under jit."""
    emb, lab = _embeddings(), _labels()
    want = rankax.batch_loss(supap_loss, emb, lab.astype(np.int32))
    np.testing.assert_allclose(rankax.batch_loss(supap_loss, emb, lab.astype(dtype)), want, rtol=1e-6)
    traced = jax.jit(lambda e, y: rankax.batch_loss(supap_loss, e, y))(emb, jnp.asarray(lab.astype(dtype)))
    np.testing.assert_allclose(traced, want, rtol=1e-6)


def test_nan_in_an_empty_reference_slot_reaches_neither_value_nor_gradient():
    """An empty slot holds no entry: a NaN left there is ignored by the value and (it had
    turned a column of the gradient NaN through the matmul's backward pass) the gradient."""
    from rankax import xbm

    rng = np.random.default_rng(9)
    emb = rng.normal(size=(8, 4)).astype(np.float32)
    lab = np.repeat(np.arange(4), 2)
    filled = xbm.update(xbm.init(6, 4), emb[:3] * 0.5, lab[:3])
    nan_slot = filled._replace(embeddings=filled.embeddings.at[4, 0].set(jnp.nan))
    refs = dict(references=nan_slot.embeddings, reference_labels=nan_slot.labels,
                reference_mask=nan_slot.valid)
    for fn in (supap_loss, rankax.smooth_ap_loss, rankax.blackbox_ap_loss):
        grads = [jax.value_and_grad(lambda e, m=m, fn=fn: rankax.batch_loss(fn, e, lab, memory=m))(emb)
                 for m in (filled, nan_slot)]
        np.testing.assert_array_equal(grads[1][0], grads[0][0])
        np.testing.assert_array_equal(grads[1][1], grads[0][1])
        grad = jax.jit(jax.grad(lambda e, fn=fn: rankax.batch_loss(fn, e, lab, **refs)))(emb)
        np.testing.assert_allclose(grad, grads[0][1], rtol=1e-6, atol=1e-10)  # finite, same


def test_eager_overflow_with_memory_raises_at_the_default_limit():
    """Concrete labels with a memory past the ladder's default largest rung (the tile bound's,
    here 200 // 48 = 4): CapacityError naming the count, as with capacity_limit= given (it
    returned NaN); under jit the labels are traced and the loss is NaN."""
    from rankax import xbm

    rng = np.random.default_rng(10)
    emb = rng.normal(size=(8, 4)).astype(np.float32)
    lab = np.repeat(np.arange(4), 2).astype(np.int32)
    memory = xbm.update(xbm.init(40, 4), rng.normal(size=(40, 4)).astype(np.float32), np.zeros(40, np.int32))
    with pytest.raises(batch.CapacityError, match=r"^batch_loss\(supap_loss\): a query has 41 positives "
                                                  r"but capacity_limit=4"):
        rankax.batch_loss(supap_loss, emb, lab, memory=memory, max_tile_elements=200)
    value = jax.jit(lambda e, y, m: rankax.batch_loss(supap_loss, e, y, memory=m, max_tile_elements=200))(
        emb, lab, memory)
    assert np.isnan(value)
    # Within the limit: no error (41 positives fit a tile bound of 41 * 48).
    assert np.isfinite(rankax.batch_loss(supap_loss, emb, lab, memory=memory, max_tile_elements=41 * 48))


def test_capacity_limit_raises_instead_of_dropping():
    emb, lab = _embeddings(), _labels()  # the largest class has 6 samples: 5 positives
    with pytest.raises(batch.CapacityError, match=r"^batch_loss\(supap_loss\): a query has 5 positives"):
        rankax.batch_loss(supap_loss, emb, lab, capacity_limit=4)
    # numpy labels closed over in jit stay concrete: the same error, at trace time.
    with pytest.raises(batch.CapacityError, match="5 positives"):
        jax.jit(lambda e: rankax.batch_loss(supap_loss, e, np.asarray(lab), capacity_limit=4))(emb)
    # Without capacity_limit the limit comes from the tile budget (4 * B elements allow 4
    # positives), for concrete labels as for traced ones and the sharded loss: concrete labels
    # used to take their exact capacity whatever the budget (a value eagerly, NaN under jit).
    with pytest.raises(batch.CapacityError, match="a query has 5 positives but capacity_limit=4"):
        rankax.batch_loss(supap_loss, emb, lab, max_tile_elements=4 * B)
    _assert_close(rankax.batch_loss(supap_loss, emb, lab, max_tile_elements=5 * B),
                  dense_reference(supap_loss, emb, lab))
    small_tile = jax.jit(
        lambda e, y: rankax.batch_loss(supap_loss, e, y, max_positives=2, max_tile_elements=4 * B)
    )
    assert np.isnan(small_tile(emb, lab))  # traced: NaN (test above)
    # A limit that holds every list: a single rung, exact.
    fits = jax.jit(lambda e, y: rankax.batch_loss(supap_loss, e, y, max_positives=5, capacity_limit=5))
    _assert_close(fits(emb, lab), dense_reference(supap_loss, emb, lab))
