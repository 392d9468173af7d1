"""Exact retrieval in JAX: blocked top-k and the exact ranks of every query's positives.

Both stream the gallery: queries are processed in blocks of ``block_size`` (a Python loop,
one compiled step per block shape), and inside a step the gallery is scanned in chunks of
``gallery_block_size`` rows, so the largest array is the ``[block, chunk]`` score tile and the
memory is ``O(block * N)`` at most -- an ``N x N`` score matrix is never formed. Every score
comes from the same ``[chunk, D] x [D, block]`` product (:func:`_chunk_scores`) with the same
shapes, so a score computed in two passes agrees (ties between duplicated embeddings stay
ties); a positive's count of itself is corrected by index, so its rank never depends on it.

With several devices the query block is split over a one-axis mesh (``shard_map``, axis
``"queries"``); the gallery is replicated. Results do not depend on the number of devices.

Ranks follow rankax's tie rule :math:`H(0) = 1`: the rank of positive ``p`` of query ``q`` is
the number of gallery items (the query itself excluded when the query set is the gallery)
scoring at least ``s_qp``, counted chunk by chunk -- no sort.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rankax import hierarchy

Array = jax.Array

DEFAULT_BLOCK_SIZE = 512
DEFAULT_GALLERY_BLOCK_SIZE = 4096
_AXIS = "queries"


# ----------------------------------------------------------------------------- layout helpers


def _round_up(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m) if x > 0 else m


def _bucket(x: int) -> int:
    """Next power of two (at least 1): limits the number of compiled shapes."""
    return 1 << max(int(x) - 1, 0).bit_length()


def query_mesh(devices: list | None = None) -> Mesh | None:
    """One-axis mesh over ``devices`` (default: all), or None with a single device."""
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) <= 1:
        return None
    return Mesh(np.asarray(devices), (_AXIS,))


class Gallery(NamedTuple):
    """The gallery on device, padded to whole chunks: ``chunks[c, i]`` is row ``c * G + i``."""

    chunks: Array  # [num_chunks, G, D]
    size: int  # true number of rows N


def put_gallery(gallery: np.ndarray, gallery_block_size: int, mesh: Mesh | None) -> Gallery:
    """Pads ``gallery [N, D]`` to whole chunks and places it (replicated) on the devices."""
    n, d = gallery.shape
    g = min(gallery_block_size, _round_up(n, 8))
    padded = np.zeros((_round_up(n, g), d), dtype=np.float32)
    padded[:n] = gallery
    chunks = padded.reshape(-1, g, d)
    if mesh is None:
        return Gallery(jnp.asarray(chunks), n)
    return Gallery(jax.device_put(chunks, NamedSharding(mesh, P())), n)


def _shard(fn, mesh: Mesh | None, in_specs, out_specs):
    """``fn`` as is on one device, ``shard_map``-ed over the query axis otherwise."""
    if mesh is None:
        return jax.jit(fn)
    # check_vma=False: scan carries start as replicated constants and become per-shard.
    return jax.jit(
        jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    )


def _put_queries(x: np.ndarray, mesh: Mesh | None) -> Array:
    if mesh is None:
        return jnp.asarray(x)
    return jax.device_put(x, NamedSharding(mesh, P(_AXIS)))


# ----------------------------------------------------------------------------- kernels


def _chunk_scores(chunk: Array, q: Array) -> Array:
    """The one score kernel: ``[G, D] x [b, D] -> [G, b]`` inner products in float32.

    Gallery-major output: the rank counting below streams over its rows, each a contiguous
    ``[b]`` vector, which XLA's CPU backend vectorises far better than a reduction along the
    minor axis of a ``[b, C, G]`` comparison (about 20x faster).
    """
    return jnp.einsum(
        "gd,bd->gb", chunk, q, precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )


def _valid_columns(chunk_index: Array, g: int, n: int, self_index: Array) -> Array:
    """``[b, G]`` True for real gallery rows of this chunk other than the query itself."""
    col = chunk_index * g + jnp.arange(g)
    return (col[None, :] < n) & (col[None, :] != self_index[:, None])


def _topk_step(q, self_index, chunks, *, k: int, n: int):
    g = chunks.shape[1]
    b = q.shape[0]

    def step(carry, xs):
        best_s, best_i = carry
        c, chunk = xs
        s = _chunk_scores(chunk, q).T
        s = jnp.where(_valid_columns(c, g, n, self_index), s, -jnp.inf)
        idx = jnp.broadcast_to(c * g + jnp.arange(g, dtype=jnp.int32), s.shape)
        # Earlier items first: among equal scores top_k keeps the lower gallery index.
        cat_s = jnp.concatenate([best_s, s], axis=1)
        cat_i = jnp.concatenate([best_i, idx], axis=1)
        top_s, pos = jax.lax.top_k(cat_s, k)
        return (top_s, jnp.take_along_axis(cat_i, pos, axis=1)), None

    init = (jnp.full((b, k), -jnp.inf, jnp.float32), jnp.full((b, k), -1, jnp.int32))
    xs = (jnp.arange(chunks.shape[0]), chunks)
    (scores, index), _ = jax.lax.scan(step, init, xs)
    return scores, index


def _scores_of(q, chunks, columns):
    """Scores of ``q [b, D]`` against gallery rows ``columns [U]`` with the chunk kernel."""
    g, d = chunks.shape[1], chunks.shape[2]
    rows = jnp.take(chunks.reshape(-1, d), columns, axis=0).reshape(-1, g, d)
    s = jax.lax.map(lambda chunk: _chunk_scores(chunk, q), rows)  # [U / G, G, b]
    return s.reshape(-1, q.shape[0]).T


def _rank_step(q, self_index, pos_slot, pos_mask, union, chunks, *, n: int):
    """Exact ranks of the positives of one query block.

    Args:
      q: ``[b, D]`` queries; self_index: ``[b]`` gallery row of the query itself or -1.
      pos_slot: ``[b, C]`` position of each positive in ``union``; pos_mask: ``[b, C]``.
      union: ``[U]`` gallery rows holding the positives of the block (U a multiple of G).

    Returns:
      ``(rank, rank_pos)`` ``[b, C]`` float32: the number of gallery items, and of
      positives, scoring at least as high as each positive (itself included).
    """
    g = chunks.shape[1]
    pos_index = jnp.take(union, pos_slot)  # [b, C] gallery rows of the positives
    pos_s = jnp.take_along_axis(_scores_of(q, chunks, union), pos_slot, axis=1)
    pos_s = jnp.where(pos_mask, pos_s, jnp.inf)  # empty slots count nothing

    b = q.shape[0]

    def count_rows(count, row):  # row: [b] scores of one gallery item
        return count + (row[:, None] >= pos_s).astype(jnp.int32), None

    def step(carry, xs):
        count, own_hit = carry
        c, chunk = xs
        s = _chunk_scores(chunk, q)  # [G, b]
        s = jnp.where(_valid_columns(c, g, n, self_index).T, s, -jnp.inf)
        count, _ = jax.lax.scan(count_rows, count, s, unroll=8)
        # Whether each positive counted itself (it does when its two scores are bitwise
        # equal, which the shared kernel gives); corrected below so that it counts once.
        local = pos_index - c * g
        here = (local >= 0) & (local < g)
        own = s[jnp.clip(local, 0, g - 1), jnp.arange(b)[:, None]]
        own_hit += (here & (own >= pos_s)).astype(jnp.int32)
        return (count, own_hit), None

    zeros = jnp.zeros(pos_s.shape, jnp.int32)
    (count, own_hit), _ = jax.lax.scan(step, (zeros, zeros), (jnp.arange(chunks.shape[0]), chunks))
    count = count - own_hit
    before_pos = (pos_s[:, None, :] >= pos_s[:, :, None]) & pos_mask[:, None, :]
    rank_pos = jnp.sum(before_pos, axis=-1)  # includes the positive itself
    return (1 + count).astype(jnp.float32), rank_pos.astype(jnp.float32)


# ----------------------------------------------------------------------------- public API


def knn(
    queries: np.ndarray,
    gallery: np.ndarray | None = None,
    *,
    k: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    gallery_block_size: int = DEFAULT_GALLERY_BLOCK_SIZE,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours by inner product, streaming the gallery in chunks.

    Args:
      queries: ``[Q, D]``.
      gallery: ``[N, D]``, or None: the queries are the gallery and each query's own row is
        excluded from its neighbours.
      k: number of neighbours, ``1 <= k <= N`` (``N - 1`` without a gallery).
      block_size: queries per step (rounded up to a multiple of the device count).
      gallery_block_size: gallery rows per chunk of the scan.
      mesh: a one-axis device mesh; default: all devices (see :func:`query_mesh`).

    Returns:
      ``(scores, indices)``, ``[Q, k]`` float32 and int64 numpy arrays sorted by decreasing
      score; among equal scores the lower gallery index comes first.

    Memory is ``O(block_size * (gallery_block_size + k) + N * D)`` per device.
    """
    queries = np.asarray(queries, np.float32)
    self_excluded = gallery is None
    gallery = queries if gallery is None else np.asarray(gallery, np.float32)
    n = gallery.shape[0] - (1 if self_excluded else 0)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] for this gallery, got {k}")
    mesh = query_mesh() if mesh is None else mesh
    gal = put_gallery(gallery, gallery_block_size, mesh)
    fn = _shard(
        functools.partial(_topk_step, k=k, n=gal.size), mesh,
        in_specs=(P(_AXIS), P(_AXIS), P()), out_specs=(P(_AXIS), P(_AXIS)),
    )
    out_s, out_i = [], []
    for start, qb, self_index in _query_blocks(queries, block_size, mesh, self_excluded):
        s, i = fn(_put_queries(qb, mesh), _put_queries(self_index, mesh), gal.chunks)
        m = min(block_size, queries.shape[0] - start)
        out_s.append(np.asarray(s)[:m])
        out_i.append(np.asarray(i)[:m])
    return np.concatenate(out_s), np.concatenate(out_i).astype(np.int64)


def _query_blocks(queries: np.ndarray, block_size: int, mesh: Mesh | None, self_excluded: bool):
    """Yields ``(start, block [b, D], self_index [b])`` with ``b`` fixed and device-divisible."""
    devices = 1 if mesh is None else mesh.size
    b = _round_up(min(block_size, queries.shape[0]), devices)
    for start in range(0, queries.shape[0], b):
        qb = np.zeros((b, queries.shape[1]), np.float32)
        m = min(b, queries.shape[0] - start)
        qb[:m] = queries[start : start + m]
        self_index = np.full(b, -1, np.int32)
        if self_excluded:
            self_index[:m] = np.arange(start, start + m)
        yield start, qb, self_index


class PositiveIndex:
    """For each query, the gallery rows sharing its class (host side, numpy).

    Args:
      query_classes: ``[Q]`` int class ids; gallery_classes: ``[N]`` int class ids.
      self_excluded: the queries are the gallery; query ``i`` is not its own positive.
    """

    def __init__(self, query_classes: np.ndarray, gallery_classes: np.ndarray, self_excluded: bool):
        self.order = np.argsort(gallery_classes, kind="stable")
        sorted_classes = gallery_classes[self.order]
        self.lo = np.searchsorted(sorted_classes, query_classes, side="left")
        self.hi = np.searchsorted(sorted_classes, query_classes, side="right")
        self.counts = self.hi - self.lo - (1 if self_excluded else 0)
        self.self_excluded = self_excluded

    def block(self, start: int, b: int, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(pos_slot [b, C], pos_mask [b, C], union [U])`` for queries ``start:start+b``."""
        stop = min(start + b, len(self.lo))
        rows = []
        for q in range(start, stop):
            r = self.order[self.lo[q] : self.hi[q]]
            rows.append(r[r != q] if self.self_excluded else r)
        c = _bucket(max([len(r) for r in rows] + [1]))
        union = np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
        slot = np.zeros((b, c), np.int32)
        mask = np.zeros((b, c), bool)
        for i, r in enumerate(rows):
            slot[i, : len(r)] = np.searchsorted(union, r)
            mask[i, : len(r)] = True
        size = min(_bucket(max(len(union), 1)), len(self.order))  # at most the whole gallery
        padded_union = np.zeros(_round_up(size, g), np.int32)
        padded_union[: len(union)] = union
        return slot, mask, padded_union


def positive_ranks(
    queries: np.ndarray,
    gallery: Gallery,
    positives: PositiveIndex,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    mesh: Mesh | None = None,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yields ``(start, m, rank [m, C], rank_pos [m, C], mask [m, C])`` block by block.

    ``rank`` counts the gallery items scoring at least as high as the positive (itself
    included, the query excluded when ``positives.self_excluded``): its exact rank with
    :math:`H(0) = 1`; ``rank_pos`` the same among the positives.
    """
    fn = _shard(
        functools.partial(_rank_step, n=gallery.size), mesh,
        in_specs=(P(_AXIS), P(_AXIS), P(_AXIS), P(_AXIS), P(), P()),
        out_specs=(P(_AXIS), P(_AXIS)),
    )
    g = gallery.chunks.shape[1]
    for start, qb, self_index in _query_blocks(queries, block_size, mesh, positives.self_excluded):
        b = qb.shape[0]
        slot, mask, union = positives.block(start, b, g)
        rank, rank_pos = fn(
            _put_queries(qb, mesh), _put_queries(self_index, mesh), _put_queries(slot, mesh),
            _put_queries(mask, mesh), jnp.asarray(union), gallery.chunks,
        )
        m = min(b, queries.shape[0] - start)
        yield start, m, np.asarray(rank)[:m], np.asarray(rank_pos)[:m], mask[:m]


# ----------------------------------------------------------------------------- hierarchy


def _harmonic(n: Array) -> Array:
    """Harmonic number :math:`H_n = \\sum_{i=1}^n 1/i` (0 for n = 0)."""
    return jax.scipy.special.digamma(n + 1.0) + np.euler_gamma


def _hierarchy_step(q, self_index, q_paths, chunks, g_paths, *, n: int, rule: str, alpha: float):
    """H-AP, NDCG and ASI of one query block over the whole gallery.

    Builds the block's ``[b, N]`` score rows (chunk by chunk, the same kernel) and sorts them:
    with graded relevance every item can be relevant, so counting per positive would cost
    ``O(b * N^2)``; one sort costs ``O(b * N log N)``. Ties follow :math:`H(0) = 1`: every item
    takes the last place of its tie group.

    Returns ``[b]`` arrays ``(hap, ndcg, asi, has_relevant)``.
    """
    num_levels = q_paths.shape[1]
    s = jax.lax.map(lambda chunk: _chunk_scores(chunk, q), chunks)  # [num_chunks, G, b]
    s = s.reshape(-1, q.shape[0]).T[:, :n]
    valid = jnp.arange(n)[None, :] != self_index[:, None]
    s = jnp.where(valid, s, -jnp.inf)
    t = hierarchy.shared_levels(q_paths, g_paths)  # [b, N]
    rel = hierarchy.path_relevance(q_paths, g_paths, rule=rule, alpha=alpha, where=valid)
    t = jnp.where(valid, t, 0)

    order = jnp.argsort(-s, axis=1, stable=True)
    s_sorted = jnp.take_along_axis(s, order, axis=1)
    t_sorted = jnp.take_along_axis(t, order, axis=1)
    rel_sorted = jnp.take_along_axis(rel, order, axis=1)
    # rank = number of items scoring >= s (the end of the tie group); -inf rows never count.
    ascending = s_sorted[:, ::-1]
    below = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left"))(ascending, s_sorted)
    rank = (n - below).astype(jnp.int32)  # [b, N], 1-based
    rank = jnp.where(jnp.isfinite(s_sorted), rank, n)

    levels = jnp.arange(num_levels + 1)
    onehot = (t_sorted[..., None] == levels).astype(jnp.float32)  # [b, N, L+1]
    cum = jnp.cumsum(onehot, axis=1)
    at_rank = jnp.take_along_axis(cum, (rank - 1)[..., None], axis=1)  # [b, N, L+1]
    per_level = jnp.sum(onehot, axis=1)  # [b, L+1] items per level
    # Relevance of each level for this query (constant within a level under both rules).
    level_rel = jnp.max(jnp.where(onehot > 0, rel_sorted[..., None], 0.0), axis=1)  # [b, L+1]
    positive = t_sorted > 0
    rank_f = rank.astype(jnp.float32)

    # H-AP: H-rank = sum over levels of min(rel_level, rel_k) * #(level items ranked <= rank).
    shared = jnp.minimum(level_rel[:, None, :], rel_sorted[..., None])
    h_rank = jnp.sum(shared * at_rank, axis=-1)
    rel_total = jnp.sum(jnp.where(positive, rel_sorted, 0.0), axis=1)
    hap = jnp.sum(jnp.where(positive, h_rank / rank_f, 0.0), axis=1) / jnp.maximum(rel_total, 1e-30)

    # NDCG with gain 2^t - 1 on shared levels (SupRank's evaluation).
    gain = jnp.exp2(levels.astype(jnp.float32)) - 1.0  # [L+1]
    dcg = jnp.sum(jnp.where(positive, gain[t_sorted] / jnp.log2(1.0 + rank_f), 0.0), axis=1)
    disc = jnp.concatenate([jnp.zeros(1), jnp.cumsum(1.0 / jnp.log2(2.0 + jnp.arange(n)))])
    higher = jnp.cumsum(per_level[:, ::-1], axis=1)[:, ::-1] - per_level  # items of higher levels
    start = higher.astype(jnp.int32)
    stop = (higher + per_level).astype(jnp.int32)
    idcg = jnp.sum(gain[1:] * (disc[stop] - disc[start])[:, 1:], axis=1)
    ndcg = dcg / jnp.maximum(idcg, 1e-30)

    # ASI up to depth R: an item is in the intersection from depth max(rank, ideal place of
    # the m-th item of its level), m its order within its level.
    order_in_level = jnp.take_along_axis(cum, t_sorted[..., None], axis=2)[..., 0]
    ideal_place = jnp.take_along_axis(higher, t_sorted, axis=1) + order_in_level
    depth = jnp.maximum(rank_f, ideal_place)
    r = jnp.sum(positive, axis=1).astype(jnp.float32)
    terms = jnp.where(positive & (depth <= r[:, None]), _harmonic(r[:, None]) - _harmonic(depth - 1), 0.0)
    asi = jnp.sum(terms, axis=1) / jnp.maximum(r, 1.0)
    has_relevant = r > 0
    return hap, ndcg, asi, has_relevant


def hierarchical_metrics(
    queries: np.ndarray,
    query_paths: np.ndarray,
    gallery: Gallery,
    gallery_paths: np.ndarray,
    *,
    self_excluded: bool,
    block_size: int = 64,
    rule: str = "pop",
    alpha: float = 1.0,
    mesh: Mesh | None = None,
) -> dict[str, np.ndarray]:
    """Per-query ``hap``, ``ndcg``, ``asi`` and ``has_relevant`` over the whole gallery."""
    fn = _shard(
        functools.partial(_hierarchy_step, n=gallery.size, rule=rule, alpha=alpha), mesh,
        in_specs=(P(_AXIS), P(_AXIS), P(_AXIS), P(), P()), out_specs=(P(_AXIS),) * 4,
    )
    g_paths = jnp.asarray(gallery_paths)
    out: dict[str, list] = {"hap": [], "ndcg": [], "asi": [], "has_relevant": []}
    for start, qb, self_index in _query_blocks(queries, block_size, mesh, self_excluded):
        b = qb.shape[0]
        m = min(b, queries.shape[0] - start)
        paths = np.zeros((b, query_paths.shape[1]), query_paths.dtype)
        paths[:m] = query_paths[start : start + m]
        values = fn(
            _put_queries(qb, mesh), _put_queries(self_index, mesh), _put_queries(paths, mesh),
            gallery.chunks, g_paths,
        )
        for key, v in zip(out, values, strict=True):
            out[key].append(np.asarray(v)[:m])
    return {key: np.concatenate(v) for key, v in out.items()}
