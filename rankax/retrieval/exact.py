"""Exact retrieval in JAX: blocked top-k, and the exact ranks of every query's positives.

Both stream the gallery in chunks of ``gallery_block_size`` rows, so the largest array is one
``[chunk, block]`` score tile and an ``N x N`` score matrix is never formed. Every score of the
rank counting comes from the same ``[chunk, D] x [D, block]`` product (:func:`_chunk_scores`,
float32 with ``Precision.HIGHEST``) with the same shapes, so a score read twice agrees bitwise
(ties between duplicated embeddings stay ties); :func:`knn` scores query-major ``[block,
chunk]`` tiles (:func:`_query_scores`, same precision) and its scores may differ from the rank
counting's in the last bit.

Ranks follow rankax's tie rule :math:`H(0) = 1`: the rank of positive ``p`` of query ``q`` is
one plus the number of other gallery items (the query itself excluded when the query set is
the gallery) scoring at least ``s_qp``. :func:`positive_ranks` counts them -- no sort, no
top-k: queries and gallery are sorted by class (:func:`class_layout`) so that a block's
positives lie in a few consecutive chunks; those chunks are scored first (giving the
positives' scores), then every chunk's tile is computed once and compared with them. One
compiled loop over query blocks and gallery chunks per group of queries, results brought to
the host once.

With several devices the queries are split over a one-axis mesh (``shard_map``, axis
``"queries"``); the gallery is replicated. Results do not depend on the number of devices.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rankax import hierarchy, host, metrics
from rankax._core import validation

Array = jax.Array

DEFAULT_BLOCK_SIZE = 512
DEFAULT_GALLERY_BLOCK_SIZE = 4096
#: knn's gallery rows per chunk: larger than the rank counting's, as its top-k costs per row.
KNN_GALLERY_BLOCK_SIZE = 16384
#: Consecutive gallery positions per group in :func:`_top_k`.
TOP_K_GROUP = 32
# Accelerators: bigger tiles, fewer loop steps (each step costs a few kernel launches).
ACCELERATOR_BLOCK_SIZES = (2048, 8192)
#: Most gallery chunks a query block's positive runs may span for their score tiles to be
#: kept (``[t * G, b]``) and counted from; blocks whose runs span more (a gallery apart from
#: the queries, few queries per class) read the positives' scores in a first pass over those
#: chunks and count in a second, in ``O(G * b)`` memory.
MAX_KEPT_RUN_CHUNKS = 4
_AXIS = "queries"


# ----------------------------------------------------------------------------- layout helpers


class NonFiniteEmbeddingsError(ValueError):
    """Embeddings given to the retrieval evaluation hold NaN or inf (a ``ValueError``)."""


def as_embeddings(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a finite float32 ``[num, dim]`` array, or a ValueError naming ``name``."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a [num, dim] array of embeddings, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one embedding of dimension >= 1, got shape {a.shape}")
    if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)):
        raise ValueError(f"{name} must hold real numbers (computed in float32), got dtype {a.dtype}")
    with np.errstate(over="ignore"):  # reported below, with the value as given
        given, a = a, a.astype(np.float32, copy=False)
    if not all(_by_row_chunks(lambda lo, hi: bool(np.isfinite(a[lo:hi]).all()), len(a))):
        bad = ~np.isfinite(a)
        row, col = (int(i) for i in np.argwhere(bad)[0])
        if np.isfinite(given[row, col]):  # finite as given, beyond float32 once cast
            raise ValueError(
                f"{name} has {int(bad.sum())} values that are NaN, inf or beyond float32's range, "
                f"in which it is scored (first: {name}[{row}, {col}] = {given[row, col]}): rescale them"
            )
        raise NonFiniteEmbeddingsError(
            f"{name} contains {int(bad.sum())} NaN or inf values "
            f"(first: {name}[{row}, {col}] = {a[row, col]})"
        )
    return a


#: Rows per piece of the host's work on large arrays (:func:`_by_row_chunks`).
HOST_CHUNK_ROWS = 32768


@functools.cache
def _host_pool() -> concurrent.futures.ThreadPoolExecutor:
    """One thread per core this process may run on (the affinity mask, where the OS has one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return concurrent.futures.ThreadPoolExecutor(cores or 1, thread_name_prefix="rankax-host")


# A forked child has none of the parent's threads: it makes its own pool.
os.register_at_fork(after_in_child=_host_pool.cache_clear)


def check_score_range(queries: np.ndarray, gallery: np.ndarray, caller: str) -> None:
    """A ValueError where a float32 score ``q . g`` could overflow: where the largest query
    and gallery norms (Cauchy-Schwarz; first bounded by ``D * max|q| * max|g|``, one pass of
    each) multiply past half of float32's largest value, rather than ranking by infinite
    scores. Embeddings of norm below about ``1e19`` always pass."""
    limit = float(np.finfo(np.float32).max) / 2

    def peak(x: np.ndarray, fn) -> float:
        return max(_by_row_chunks(lambda lo, hi: fn(x[lo:hi]), len(x)))

    def abs_max(block):
        return float(np.max(np.abs(block)))

    def norm_max(block):
        return float(np.linalg.norm(block.astype(np.float64), axis=1).max())

    if queries.shape[1] * peak(queries, abs_max) * peak(gallery, abs_max) <= limit:
        return
    nq, ng = peak(queries, norm_max), peak(gallery, norm_max)
    if nq * ng > limit:
        raise ValueError(
            f"{caller}: scores could overflow float32: the largest query and gallery norms are "
            f"{nq:.3g} and {ng:.3g}; rescale the embeddings or pass normalize=True (cosine similarity)"
        )


def _by_row_chunks(fn, num_rows: int) -> list:
    """``[fn(lo, hi), ...]`` over consecutive row ranges of at most :data:`HOST_CHUNK_ROWS`,
    run on the host's cores: numpy's copies, gathers and ufuncs release the GIL, and a
    ``[1M, 512]`` gallery's checks and reordering took 0.6 s on one core (2026-12-06)."""
    edges = list(range(0, num_rows, HOST_CHUNK_ROWS)) + [num_rows]
    ranges = list(zip(edges[:-1], edges[1:], strict=True))
    if len(ranges) <= 1:
        return [fn(lo, hi) for lo, hi in ranges]
    return list(_host_pool().map(lambda r: fn(*r), ranges))


def _gather_rows(out: np.ndarray, src: np.ndarray, order: np.ndarray | None = None) -> None:
    """``out[i] = src[order[i]]`` (``src[i]`` without ``order``) for the first ``len(order)``
    (``len(src)``) rows of ``out``, in row chunks on the host's cores."""
    def copy(lo: int, hi: int) -> None:
        if order is None:
            out[lo:hi] = src[lo:hi]
        else:  # mode="clip": np.take writes into out directly ("raise" buffers the whole output)
            np.take(src, order[lo:hi], axis=0, out=out[lo:hi], mode="clip")

    _by_row_chunks(copy, len(src) if order is None else len(order))


def _round_up(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m) if x > 0 else m


def _bucket(x: int) -> int:
    """Next power of two (at least 1): limits the number of compiled shapes."""
    return 1 << max(int(x) - 1, 0).bit_length()


def check_mesh(mesh: Any) -> None:
    """A ValueError naming ``mesh=`` unless it is None or a one-axis mesh named ``"queries"``."""
    if mesh is not None and (not isinstance(mesh, Mesh) or tuple(mesh.axis_names) != (_AXIS,)):
        names = getattr(mesh, "axis_names", None)
        raise ValueError(
            f"mesh must be None or a one-axis jax.sharding.Mesh whose axis is named {_AXIS!r} (the query "
            f"blocks are split over it), e.g. rankax.retrieval.exact.query_mesh(devices); got axes {names!r}"
        )


def query_mesh(devices: list | None = None) -> Mesh | None:
    """One-axis mesh over ``devices`` (default: this process's, ``jax.local_devices()``: all of
    them in a one-process run; in a multi-process run each process ranks the whole gallery on
    its own devices), or None with a single device."""
    devices = jax.local_devices() if devices is None else list(devices)
    if len(devices) <= 1:
        return None
    return Mesh(np.asarray(devices), (_AXIS,))


class Gallery(NamedTuple):
    """The gallery on device, padded to whole chunks: ``chunks[c, i]`` is row ``c * G + i``."""

    chunks: Array  # [num_chunks, G, D]
    size: int  # true number of rows N


def put_gallery(
    gallery: np.ndarray, gallery_block_size: int, mesh: Mesh | None, multiple: int = 8
) -> Gallery:
    """Pads ``gallery [N, D]`` to whole chunks of ``min(gallery_block_size, N rounded up to
    a multiple of multiple)`` rows and places it (replicated) on the devices."""
    n, d = gallery.shape
    g = min(gallery_block_size, _round_up(n, multiple))
    padded = host.aligned_zeros((_round_up(n, g), d), np.float32)  # aliased on XLA:CPU
    _gather_rows(padded, gallery)
    return Gallery(put(padded.reshape(-1, g, d), mesh, P()), n)


def _shard(fn, mesh: Mesh | None, in_specs, out_specs):
    """``fn`` as is on one device, ``shard_map``-ed over the query axis otherwise."""
    if mesh is None:
        return jax.jit(fn)
    # check_vma=False: scan carries start as replicated constants and become per-shard.
    return jax.jit(
        jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    )


def put(x: np.ndarray, mesh: Mesh | None, spec: P) -> Array:
    """``x`` on the device (one device) or laid out on ``mesh`` by ``spec``.

    ``jax.device_put``, not ``jnp.asarray``: with jax 0.10 the latter compiles a copy program
    for every new shape, a cost each first call of ``evaluate`` paid per array it sent. The
    large blocks are built in :func:`rankax.host.aligned_zeros` buffers, which XLA:CPU uses in
    place instead of copying them."""
    return jax.device_put(x) if mesh is None else jax.device_put(x, NamedSharding(mesh, spec))


def _put_queries(x: np.ndarray, mesh: Mesh | None) -> Array:
    return put(x, mesh, P(_AXIS))


def _fetch_blocks(pending: list, rows: list[int]) -> list[tuple[np.ndarray, ...]]:
    """The outputs of every dispatched query block in one ``device_get`` (no block waits for a
    host read), each cut to the block's real rows (``rows``; blocks are padded to the devices)."""
    return [tuple(v[:m] for v in out) for out, m in zip(jax.device_get(pending), rows, strict=True)]


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


def _query_scores(q: Array, chunk: Array) -> Array:
    """``[b, D] x [G, D] -> [b, G]`` inner products in float32 (``Precision.HIGHEST``): the
    query-major tile of :func:`knn`, whose top-k runs along the gallery axis (transposing a
    :func:`_chunk_scores` tile cost XLA's CPU backend more than the product)."""
    return jnp.einsum(
        "bd,gd->bg", q, chunk, precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )


def _top_k(s: Array, valid: Array, k: int) -> tuple[Array, Array]:
    """``jax.lax.top_k(jnp.where(valid, s, -inf), k)`` of ``[b, M]`` scores without NaN: the
    ``k`` largest, and among equal scores the lower position first.

    Via the maxima of groups of ``TOP_K_GROUP`` consecutive positions: fewer than ``k`` groups
    can have a maximum above the ``k``-th largest score ``v``, and the items equal to ``v`` that
    are kept (the lowest positions) lie in the lowest-indexed groups holding a ``v``; so the
    ``k`` best groups (ties: lower group first) hold the ``k`` best items, and one max pass over
    ``s`` plus top-k over ``M / TOP_K_GROUP`` maxima and ``k * TOP_K_GROUP`` candidates (kept in
    position order) replace a top-k over ``M``. Plain ``top_k`` where ``M`` is not a whole
    number of groups or the groups would not cut the work (``2 k TOP_K_GROUP > M``).
    """
    b, m = s.shape
    if m % TOP_K_GROUP or 2 * k * TOP_K_GROUP > m:
        return jax.lax.top_k(jnp.where(valid, s, -jnp.inf), k)
    groups = s.reshape(b, m // TOP_K_GROUP, TOP_K_GROUP)
    valid = valid.reshape(groups.shape)
    _, best = jax.lax.top_k(jnp.max(jnp.where(valid, groups, -jnp.inf), axis=-1), k)
    best = jnp.sort(best, axis=-1)[:, :, None]
    candidates = jnp.where(
        jnp.take_along_axis(valid, best, axis=1), jnp.take_along_axis(groups, best, axis=1), -jnp.inf
    )
    top, at = jax.lax.top_k(candidates.reshape(b, -1), k)
    position = best * TOP_K_GROUP + jnp.arange(TOP_K_GROUP, dtype=best.dtype)
    return top, jnp.take_along_axis(position.reshape(b, -1), at, axis=1)


def _topk_step(q, self_index, chunks, *, k: int, n: int):
    g = chunks.shape[1]
    b = q.shape[0]
    kc = min(k, g)  # a chunk holds at most g neighbours

    def step(carry, xs):
        best_s, best_i = carry
        c, chunk = xs
        valid = jnp.broadcast_to(_valid_columns(c, g, n, self_index), (b, g))
        top_s, top_p = _top_k(_query_scores(q, chunk), valid, kc)
        # Earlier chunks first: among equal scores top_k keeps the lower gallery index.
        cat_s = jnp.concatenate([best_s, top_s], axis=1)
        cat_i = jnp.concatenate([best_i, c * g + top_p], axis=1)
        merged_s, pos = jax.lax.top_k(cat_s, k)
        return (merged_s, jnp.take_along_axis(cat_i, pos, axis=1)), None

    init = (jnp.full((b, k), -jnp.inf, jnp.float32), jnp.full((b, k), -1, jnp.int32))
    xs = (jnp.arange(chunks.shape[0], dtype=jnp.int32), chunks)  # int32 indices under x64 too
    (scores, index), _ = jax.lax.scan(step, init, xs)
    return scores, index


def knn_chunk_size(n: int, gallery_block_size: int) -> int:
    """Gallery rows per chunk of :func:`knn`: the fewest chunks of at most
    ``gallery_block_size`` rows, made equal and rounded up to whole ``TOP_K_GROUP`` groups where
    that stays within the bound (padding under one group per chunk; e.g. 20,000 items: 2 chunks
    of 10,016), else equal chunks as they come (e.g. 37 items in chunks of at most 8: 8)."""
    chunks = -(-n // max(gallery_block_size, 1))
    size = -(-n // chunks)
    grouped = _round_up(size, TOP_K_GROUP)
    return grouped if grouped <= gallery_block_size else size


# ----------------------------------------------------------------------------- public API


def knn(
    queries: np.ndarray,
    gallery: np.ndarray | None = None,
    *,
    k: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    gallery_block_size: int = KNN_GALLERY_BLOCK_SIZE,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours by inner product, streaming the gallery in chunks.

    Args:
      queries: ``[Q, D]``.
      gallery: ``[N, D]``, or None: the queries are the gallery and each query's own row is
        excluded from its neighbours.
      k: number of neighbours, ``1 <= k <= N`` (``N - 1`` without a gallery).
      block_size: queries per step (rounded up to a multiple of the device count).
      gallery_block_size: at most this many gallery rows per chunk of the scan
        (:func:`knn_chunk_size`).
      mesh: a one-axis device mesh whose axis is named ``"queries"``; default: all local
        devices (see :func:`query_mesh`).

    Returns:
      ``(scores, indices)``, ``[Q, k]`` float32 and int64 numpy arrays sorted by decreasing
      score; among equal scores the lower gallery index comes first.

    Memory is ``O(block_size * (gallery_block_size + k) + N * D)`` per device.
    """
    self_excluded = gallery is None
    queries, gallery, k = check_knn(queries, gallery, k)
    block_size = validation.check_int("block_size", block_size)
    gallery_block_size = validation.check_int("gallery_block_size", gallery_block_size)
    check_mesh(mesh)
    mesh = query_mesh() if mesh is None else mesh
    chunk = knn_chunk_size(gallery.shape[0], gallery_block_size)
    gal = put_gallery(gallery, chunk, mesh, multiple=TOP_K_GROUP)
    fn = _topk_fn(mesh, k, gal.size)
    pending, rows = [], []
    for start, qb, self_index in _query_blocks(queries, block_size, mesh, self_excluded):
        pending.append(fn(_put_queries(qb, mesh), _put_queries(self_index, mesh), gal.chunks))
        rows.append(min(len(qb), queries.shape[0] - start))
    blocks = _fetch_blocks(pending, rows)
    return np.concatenate([s for s, _ in blocks]), np.concatenate([i for _, i in blocks]).astype(np.int64)


def check_knn(
    queries: np.ndarray, gallery: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The checks of a top-``k`` search (:func:`knn`, ``scann_knn``): finite float32
    ``[Q, D]`` queries and ``[N, D]`` gallery (the queries themselves for ``gallery=None``)
    and ``1 <= k <= N`` (``N - 1`` without a gallery); ValueErrors name the argument."""
    queries = as_embeddings(queries, "queries")
    self_excluded = gallery is None
    gallery = queries if gallery is None else as_embeddings(gallery, "gallery")
    if gallery.shape[1] != queries.shape[1]:
        raise ValueError(
            f"gallery has dimension {gallery.shape[1]} but queries have dimension {queries.shape[1]}"
        )
    check_score_range(queries, gallery, "knn")
    n = gallery.shape[0] - (1 if self_excluded else 0)
    k = validation.check_int("k", k)
    if n < 1:
        raise ValueError("the gallery holds no item besides each query (one query, gallery=None)")
    if k > n:
        raise ValueError(f"k must be at most {n}, the gallery's items{' besides the query' * self_excluded}; "
                         f"got {k}")
    return queries, gallery, k


@functools.lru_cache(maxsize=32)
def _topk_fn(mesh: Mesh | None, k: int, n: int):
    """Compiled once per ``(mesh, k, n)`` (and shapes), not per call."""
    return _shard(
        functools.partial(_topk_step, k=k, n=n), mesh,
        in_specs=(P(_AXIS), P(_AXIS), P()), out_specs=(P(_AXIS), P(_AXIS)),
    )


def _query_blocks(queries: np.ndarray, block_size: int, mesh: Mesh | None, self_excluded: bool):
    """Yields ``(start, block [b, D], self_index [b])`` with ``b`` fixed and device-divisible."""
    devices = 1 if mesh is None else mesh.size
    b = _round_up(min(block_size, queries.shape[0]), devices)
    for start in range(0, queries.shape[0], b):
        qb = host.aligned_zeros((b, queries.shape[1]), np.float32)
        m = min(b, queries.shape[0] - start)
        qb[:m] = queries[start : start + m]
        self_index = np.full(b, -1, np.int32)
        if self_excluded:
            self_index[:m] = np.arange(start, start + m)
        yield start, qb, self_index


# ----------------------------------------------------------------------------- positive ranks


class ClassLayout(NamedTuple):
    """Queries and gallery sorted by ``(gallery size of the class, class)``.

    In that order the gallery rows of a query's class are one run ``[lo, hi)``, the runs of
    consecutive queries are non-decreasing, and so are the queries' numbers of positives.
    Everything is indexed in the sorted orders.
    """

    query_order: np.ndarray  # [Q] original index of each sorted query
    gallery_order: np.ndarray  # [N] original index of each sorted gallery row
    lo: np.ndarray  # [Q] first sorted-gallery row of the query's class
    hi: np.ndarray  # [Q] one past its last (lo = hi = 0 when the class is not in the gallery)
    self_index: np.ndarray  # [Q] sorted-gallery row of the query itself, or -1
    num_pos: np.ndarray  # [Q] number of positives

    @property
    def span(self) -> np.ndarray:
        return self.hi - self.lo


def class_layout(query_classes: np.ndarray, gallery_classes: np.ndarray, self_excluded: bool) -> ClassLayout:
    """The sorted layout of :class:`ClassLayout` (host side, numpy, ``O(N log N)``: one
    ``unique`` and one stable sort of the gallery, a sort of the queries when they are apart)."""
    classes, inverse, size = np.unique(gallery_classes, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    # Sorting by (size, class) is sorting by size * (number of classes) + (the class's place
    # among the sorted classes); stable, so each run keeps the gallery's order.
    gallery_order = np.argsort(size[inverse] * len(classes) + inverse, kind="stable").astype(np.int64)
    by_size = np.argsort(size * len(classes) + np.arange(len(classes)), kind="stable")
    run_start = np.empty(len(classes), np.int64)  # each class's first row in the sorted gallery
    run_start[by_size] = np.cumsum(size[by_size]) - size[by_size]
    if self_excluded:
        query_order = gallery_order
        query_class = inverse[gallery_order]  # place among the classes, every query's found
        query_size = size[query_class]
    else:
        place = np.minimum(np.searchsorted(classes, query_classes), len(classes) - 1)
        found = classes[place] == query_classes
        query_size = np.where(found, size[place], 0)
        query_order = np.lexsort((query_classes, query_size)).astype(np.int64)
        query_size, query_class = query_size[query_order], place[query_order]
    lo = np.where(query_size > 0, run_start[query_class], 0)
    hi = lo + query_size
    q = len(query_order)
    self_index = np.arange(q) if self_excluded else np.full(q, -1)
    num_pos = query_size - (1 if self_excluded else 0)
    return ClassLayout(query_order, gallery_order, lo, hi, self_index, num_pos)


def _coarse_bucket(x: int) -> int:
    """The next of 1, 2, 3, 4, 6, 8, 12, 16, ... (2^k or 3 * 2^(k-1)): at most 50% padding,
    a handful of compiled shapes across sizes."""
    p = _bucket(x)
    return 3 * p // 4 if p >= 4 and 3 * p // 4 >= x else p


def block_sizes(block_size: int | None, gallery_block_size: int | None, mesh: Mesh | None = None):
    """``(block_size, gallery_block_size)``, each None replaced by the default of the platform."""
    cpu = _platform(mesh) == "cpu"
    default = (DEFAULT_BLOCK_SIZE, DEFAULT_GALLERY_BLOCK_SIZE) if cpu else ACCELERATOR_BLOCK_SIZES
    return (default[0] if block_size is None else block_size,
            default[1] if gallery_block_size is None else gallery_block_size)


def _platform(mesh: Mesh | None) -> str:
    return (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform


def _count_by_rows(platform: str) -> bool:
    """Whether to count row by row and group queries by slot count (CPU) or not (accelerators)."""
    return platform == "cpu"


def _count_at_least(count, s, x, by_rows: bool):
    """``count[b, C] += #{g : s[g, b] >= x[b, C]}`` for a score tile ``s [G, b]``.

    On the CPU a loop over the tile's rows (each a contiguous ``[b]`` vector) vectorises ~5x
    better than XLA's reduction of the ``[G, b, C]`` comparison, which is what GPUs want.
    """
    if by_rows:
        return jax.lax.fori_loop(
            0, s.shape[0], lambda g, c: c + (s[g][:, None] >= x).astype(jnp.int32), count, unroll=8
        )
    return count + jnp.sum(s[:, :, None] >= x[None], axis=0, dtype=jnp.int32)


def _positive_ranks_block(
    q, lo, hi, self_index, first, chunks, num_chunks, n, *, c: int, t: int, by_rows: bool
):
    """Exact ranks of the positives of one query block: one matmul per gallery chunk.

    Args:
      q: ``[b, D]`` queries; lo, hi: ``[b]`` their positives' run of gallery rows; self_index:
        ``[b]`` the query's own row or -1.
      first: the first of ``t`` consecutive chunks holding every run of the block.
      chunks: ``[num_chunks_padded, G, D]`` gallery (zero rows past ``n``); num_chunks: the
        chunks holding real rows.

    Returns:
      ``(rank, rank_pos)`` ``[b, C]`` int32: ``1 +`` the number of gallery items other than the
      positive (and the query) scoring at least as high as it (:math:`H(0) = 1`), and the same
      among the positives. Slots ``lo + j`` outside ``[lo, hi)`` or on the query are garbage.
    """
    b = q.shape[0]
    g = chunks.shape[1]
    slot = lo[:, None] + jnp.arange(c)[None, :]  # [b, C] gallery rows
    mask = (slot < hi[:, None]) & (slot != self_index[:, None])
    # One kernel, one shape for every score: equal embeddings score bitwise equal, stay tied.
    score = lambda i: _chunk_scores(jax.lax.dynamic_index_in_dim(chunks, i, keepdims=False), q)
    if t <= MAX_KEPT_RUN_CHUNKS:
        # The chunks holding the runs go first: the positives' scores (and the query's own)
        # are read off their kept tiles, then counted against like every other chunk's.
        run_chunks = jax.lax.dynamic_slice_in_dim(chunks, first, t)
        run_scores = jax.lax.map(lambda chunk: _chunk_scores(chunk, q), run_chunks).reshape(t * g, b)
        cols = jnp.arange(b)[:, None]
        at = lambda rows: run_scores[jnp.clip(rows - first * g, 0, t * g - 1), cols]
        x = jnp.where(mask, at(slot), jnp.inf)
        own = at(self_index[:, None])
        count = _count_at_least(jnp.zeros((b, c), jnp.int32), run_scores, x, by_rows)
        count = jax.lax.fori_loop(
            0, num_chunks - t,
            lambda i, count: _count_at_least(count, score(jnp.where(i < first, i, i + t)), x, by_rows),
            count,
        )
    else:  # runs too wide to keep: read the scores chunk by chunk, then count over them all
        x, own = jax.lax.fori_loop(
            first, first + t, lambda i, xo: _read_rows(score(i), i * g, (slot, self_index[:, None]), xo),
            (jnp.full((b, c), jnp.inf), jnp.full((b, 1), jnp.inf)),
        )
        x = jnp.where(mask, x, jnp.inf)
        count = jax.lax.fori_loop(
            0, num_chunks, lambda i, count: _count_at_least(count, score(i), x, by_rows),
            jnp.zeros((b, c), jnp.int32),
        )
    count -= mask.astype(jnp.int32)  # the positive itself (its score is x)
    count -= ((self_index >= 0)[:, None] & (own >= x)).astype(jnp.int32)  # the query
    count -= (num_chunks * g - n) * (0.0 >= x).astype(jnp.int32)  # zero padding rows
    return 1 + count, _count_positives_at_least(x, mask)


def _count_positives_at_least(x: Array, mask: Array) -> Array:
    """``[b, C]`` int32 ``#{j : mask_j, x_j >= x_k}`` for each slot ``k`` (itself included), from
    one sort of each row: ``O(b C log C)`` time and ``O(b C)`` memory, where comparing every
    pair took ``[b, C, C]`` (35 GB at ``C = 4096`` and the default block)."""
    ascending = jnp.sort(jnp.where(mask, x, -jnp.inf), axis=1)
    below = jax.vmap(lambda row, v: jnp.searchsorted(row, v, side="left"))(ascending, x)
    return (x.shape[1] - below).astype(jnp.int32)


def _read_rows(s: Array, row0: int, rows: tuple[Array, ...], values: tuple[Array, ...]) -> tuple[Array, ...]:
    """Each ``values[k][i, j]`` replaced by ``s[rows[k][i, j] - row0, i]`` where that row lies in
    the tile ``s [G, b]`` of gallery rows ``row0 .. row0 + G - 1``."""
    g = s.shape[0]
    cols = jnp.arange(s.shape[1])[:, None]

    def read(r, v):
        inside = (r >= row0) & (r < row0 + g)
        return jnp.where(inside, s[jnp.clip(r - row0, 0, g - 1), cols], v)

    return tuple(read(r, v) for r, v in zip(rows, values, strict=True))


@functools.lru_cache(maxsize=64)
def _positive_ranks_fn(mesh: Mesh | None, c: int, t: int, by_rows: bool):
    """One compiled program per ``(mesh, C, T)`` and shapes: a loop over the query blocks."""

    def run(q, lo, hi, self_index, base, num_blocks, chunks, num_chunks, n, q_start):
        """``q`` ``[nb * b, D]``, or ``[0, D]``: rows ``q_start + ...`` of the gallery."""
        nb, b = base.shape[0], lo.shape[0] // base.shape[0]
        block = functools.partial(_positive_ranks_block, c=c, t=t, by_rows=by_rows)

        def step(i, out):
            sl = lambda a: jax.lax.dynamic_slice_in_dim(a, i * b, b)
            if q.shape[0]:
                qb = sl(q)
            else:
                qb = jax.lax.dynamic_slice_in_dim(chunks.reshape(-1, chunks.shape[2]), q_start + i * b, b)
            r = block(qb, sl(lo), sl(hi), sl(self_index), base[i], chunks, num_chunks, n)
            write = lambda o, v: jax.lax.dynamic_update_slice_in_dim(o, v, i * b, 0)
            return tuple(write(o, v) for o, v in zip(out, r, strict=True))

        init = (jnp.zeros((nb * b, c), jnp.int32),) * 2
        return jax.lax.fori_loop(0, num_blocks[0], step, init)

    if mesh is None:
        return jax.jit(run)
    q_spec = P(_AXIS)
    return jax.jit(jax.shard_map(
        run, mesh=mesh, in_specs=(q_spec,) * 6 + (P(),) * 4, out_specs=(q_spec, q_spec),
        check_vma=False,
    ))


def positive_ranks(
    queries: np.ndarray,
    gallery: np.ndarray,
    layout: ClassLayout,
    *,
    block_size: int | None = None,
    gallery_block_size: int | None = None,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ranks of every query's positives, in the sorted order of ``layout``.

    ``queries [Q, D]`` and ``gallery [N, D]`` are in their original order (the same array when
    the query set is the gallery). Returns ``(rank, rank_pos, mask)``, ``[Q, C]`` for the
    sorted queries: ``rank`` counts the gallery items scoring at least as high as the positive,
    itself included and the query excluded -- its exact rank with :math:`H(0) = 1`, counted
    without any sort; ``rank_pos`` the same among the positives; ``mask`` the filled slots.

    On the CPU (where the count costs ``O(C)`` per score) the blocks of sorted queries are
    grouped by ``C``, the power of two >= 8 above their longest run; on accelerators there is
    one group. Each group is one compiled loop over query blocks and gallery chunks, and all
    the results reach the host at once.
    Shapes are padded to coarse buckets so that other sizes mostly reuse the programs.
    """
    devices = 1 if mesh is None else mesh.size
    by_rows = _count_by_rows(_platform(mesh))
    block_size, gallery_block_size = block_sizes(block_size, gallery_block_size, mesh)
    n, d = gallery.shape
    b = _round_up(min(block_size, len(layout.lo)), devices)
    g = min(gallery_block_size, _round_up(n, 8))
    num_chunks = -(-n // g)
    # The query set is the gallery: blocks of queries are read from the gallery on the device
    # (which then holds a block of spare rows), not sent twice.
    from_gallery = mesh is None and bool(np.all(layout.self_index >= 0))
    padded = host.aligned_zeros((_coarse_bucket(-(-(n + b * from_gallery) // g)) * g, d), np.float32)
    _gather_rows(padded, gallery, layout.gallery_order)
    chunks = padded.reshape(-1, g, d)
    chunks = put(chunks, mesh, P())
    consts = (chunks, put(np.int32(num_chunks), mesh, P()), put(np.int32(n), mesh, P()))

    span = layout.span
    c_all = np.maximum(8, 2 ** np.ceil(np.log2(np.maximum(span, 1))).astype(np.int64)) if by_rows else None
    groups = _split_groups(c_all, len(span), max(span.max(initial=1), 1), b)
    pending = []
    for start, stop, c in groups:
        args, t = _group_inputs(None if from_gallery else queries, layout, start, stop, b, g, devices,
                                num_chunks)
        fn = _positive_ranks_fn(mesh, c, t, by_rows)
        rank, rank_pos = fn(*(put(a, mesh, P(_AXIS)) for a in args), *consts, put(np.int32(start), mesh, P()))
        pending.append((start, stop, c, rank, rank_pos))
    width = int(max(span.max(initial=1), 1))  # slots past the longest run are empty
    rank = np.ones((len(span), width), np.int32)
    rank_pos = np.ones((len(span), width), np.int32)
    fetched = jax.device_get([(r, rp) for *_, r, rp in pending])  # one transfer
    for (start, stop, c, _, _), (r, rp) in zip(pending, fetched, strict=True):
        rows = _device_rows(stop - start, b, devices, r.shape[0])
        rank[start:stop, : min(c, width)] = r[rows, :width]
        rank_pos[start:stop, : min(c, width)] = rp[rows, :width]
    slot = layout.lo[:, None] + np.arange(width)[None, :]
    mask = (slot < layout.hi[:, None]) & (slot != layout.self_index[:, None])
    return rank, rank_pos, mask


#: Queries with more positives than this are ranked by one sort of their whole list
#: (:func:`sorted_binary_metrics`, ``O(N log N)`` each) instead of counting the items above each
#: positive (:func:`positive_ranks`, ``O(N C)`` each, and ``[Q, C]`` ranks on the host): coarse
#: labels, a few classes over the whole gallery, need it. On the CPU, where XLA sorts about
#: 4M items a second, the two cost the same near C = 4096 at N = 8000 (``experiments.
#: benchmark_retrieval --coarse``); on accelerators, which sort fast and count a ``[G, b, C]``
#: comparison, 1024 is an estimate awaiting a GPU measurement.
SORT_ABOVE = {"cpu": 4096, "accelerator": 1024}
#: Queries per block of :func:`sorted_binary_metrics` (``[b, N]`` score rows are sorted at once);
#: ``evaluate``'s ``block_size`` lowers it.
SORTED_BLOCK_SIZE = 64


def sort_above(mesh: Mesh | None) -> int:
    """The :data:`SORT_ABOVE` threshold of the platform of ``mesh`` (default: JAX's)."""
    return SORT_ABOVE["cpu" if _platform(mesh) == "cpu" else "accelerator"]


def _binary_sorted_step(q, self_index, q_class, chunks, g_class, *, n: int, ks: tuple[int, ...]):
    """The binary metrics of one query block from one sort of its ``[b, N]`` score rows:
    ``rank`` and ``rank_pos`` of every item at its place (ties: :math:`H(0) = 1`), the positives
    masked, into :func:`rankax.metrics.binary_from_ranks` (float32 sums over the list)."""
    s, valid = _block_scores(q, self_index, chunks, n)
    rank, positive = _sorted_ranks(s, valid & (g_class[None, :] == q_class[:, None]))
    cum = jnp.cumsum(positive, axis=1, dtype=jnp.int32)
    rank_pos = jnp.take_along_axis(cum, rank - 1, axis=1)
    values = metrics.binary_from_ranks(rank.astype(jnp.float32), rank_pos.astype(jnp.float32), positive,
                                       cum[:, -1].astype(jnp.float32), ks)
    return tuple(values[key] for key in sorted(values))


@functools.lru_cache(maxsize=32)
def _binary_sorted_fn(mesh: Mesh | None, n: int, ks: tuple[int, ...]):
    return _shard(
        functools.partial(_binary_sorted_step, n=n, ks=ks), mesh,
        in_specs=(P(_AXIS), P(_AXIS), P(_AXIS), P(), P()), out_specs=(P(_AXIS),) * (3 + len(ks)),
    )


def sorted_binary_metrics(
    queries: np.ndarray,
    query_classes: np.ndarray,
    gallery: Gallery,
    gallery_classes: np.ndarray,
    *,
    self_rows: np.ndarray | None,
    ks: tuple[int, ...],
    block_size: int = SORTED_BLOCK_SIZE,
    mesh: Mesh | None = None,
) -> dict[str, np.ndarray]:
    """Per-query ``map``, ``map@r``, ``r_precision`` and ``recall@k`` (:func:`rankax.metrics.
    binary_from_ranks`) of ``queries [Q, D]`` against the whole ``gallery`` (original order),
    from one sort of each query's list: the path of queries with many positives.

    ``query_classes [Q]``, ``gallery_classes [N]``: int32 class ids (a positive shares the
    query's); ``self_rows [Q]``: each query's own gallery row, left out of its list (None: the
    gallery is apart). Repeated ``ks`` are one metric, as in :func:`rankax.metrics.binary_from_ranks`."""
    ks = tuple(sorted(set(ks)))
    fn = _binary_sorted_fn(mesh, gallery.size, ks)
    g_class = put(gallery_classes.astype(np.int32), mesh, P())
    rows = np.full(len(queries), -1, np.int32) if self_rows is None else self_rows.astype(np.int32)
    pending, counts = [], []
    for start, qb, _ in _query_blocks(queries, block_size, mesh, False):
        b = qb.shape[0]
        m = min(b, queries.shape[0] - start)
        self_index, q_class = np.full(b, -1, np.int32), np.full(b, -1, np.int32)
        self_index[:m], q_class[:m] = rows[start : start + m], query_classes[start : start + m]
        pending.append(fn(_put_queries(qb, mesh), _put_queries(self_index, mesh),
                          _put_queries(q_class, mesh), gallery.chunks, g_class))
        counts.append(m)
    blocks = _fetch_blocks(pending, counts)
    keys = sorted(("map", "map@r", "r_precision", *(f"recall@{k}" for k in ks)))
    return {key: np.concatenate([block[j] for block in blocks]).astype(np.float64)
            for j, key in enumerate(keys)}


def _split_groups(c_all: np.ndarray | None, q: int, max_span: int, b: int) -> list[tuple[int, int, int]]:
    """``(start, stop, C)`` runs of whole blocks of ``b`` sorted queries sharing a slot count
    ``C`` (that of the block's last, longest-run query): no block is split between groups."""
    if c_all is None:
        return [(0, q, _bucket(max_span))]
    c_block = c_all[np.minimum(np.arange(b, q + b, b), q) - 1]
    edges = np.flatnonzero(np.r_[True, c_block[1:] != c_block[:-1], True])
    runs = zip(edges[:-1], edges[1:], strict=True)
    return [(int(a) * b, min(int(z) * b, q), int(c_block[a])) for a, z in runs]


def _device_rows(m: int, b: int, devices: int, total: int) -> np.ndarray:
    """Rows of the device output holding sorted queries ``0..m-1`` of a group."""
    per_device = total // devices
    blocks_per_device = -(-m // (b * devices)) if m else 0
    used = blocks_per_device * b
    i = np.arange(m)
    return (i // used) * per_device + i % used


def _group_inputs(queries, layout: ClassLayout, start: int, stop: int, b: int, g: int, devices: int,
                  num_chunks: int):
    """Blocked, padded inputs of one group: each device gets a whole number of blocks."""
    m = stop - start
    blocks_per_device = -(-m // (b * devices))
    slots = _coarse_bucket(blocks_per_device)  # padded blocks per device: fewer shapes
    lo = np.zeros(devices * slots * b, np.int32)
    hi = np.zeros_like(lo)
    self_index = np.full_like(lo, -1)
    dest = _device_rows(m, b, devices, len(lo))
    if queries is None:  # read from the gallery (see positive_ranks)
        q_rows = np.zeros((0, 1), np.float32)
    else:
        q_rows = host.aligned_zeros((len(lo), queries.shape[1]), np.float32)
        q_rows[dest] = queries[layout.query_order[start:stop]]
    lo[dest], hi[dest] = layout.lo[start:stop], layout.hi[start:stop]
    self_index[dest] = layout.self_index[start:stop]
    has = np.zeros(len(lo), bool)
    has[dest] = layout.num_pos[start:stop] > 0
    # The chunks holding each block's runs (the query's own row included): t of them from base.
    in_run = has | (self_index >= 0)
    blo = np.where(in_run, np.minimum(lo, np.where(self_index >= 0, self_index, lo)), 2**31 - 1)
    bhi = np.where(in_run, np.maximum(hi, self_index + 1), 0)
    blo, bhi = blo.reshape(-1, b).min(1), bhi.reshape(-1, b).max(1)
    first = np.minimum(blo, bhi) // g
    t = max(int(np.max(-(-bhi // g) - first, initial=1)), 1)
    base = np.minimum(first, num_chunks - t).astype(np.int32)
    num_blocks = np.full(devices, blocks_per_device, np.int32)
    return (q_rows, lo, hi, self_index, base, num_blocks), t


# ----------------------------------------------------------------------------- hierarchy


def _hierarchy_step(q, self_index, q_paths, counts, chunks, g_paths, *, n: int, rule: str, alpha: float):
    """H-AP, NDCG and ASI of one query block over the whole gallery.

    ``counts [b, L + 1]``: each query's count of items per shared level, which the ``"pop"``
    rule divides each level's weight by (:func:`rankax.hierarchy.pop_relevance_from_counts`).

    Builds the block's ``[b, N]`` score rows (chunk by chunk, the same kernel) and sorts them:
    with graded relevance every item can be relevant, so counting per positive would cost
    ``O(b * N^2)``; one sort costs ``O(b * N log N)``. Ties follow :math:`H(0) = 1`: every item
    takes the last place of its tie group. The formulas from the ranks are those of
    :mod:`rankax.metrics` (``hap_from_ranks``, ``dcg``, ``asi_from_depths``).

    Returns ``[b]`` arrays ``(hap, ndcg, asi, has_relevant, has_relevance)``: whether some item
    shares a level with the query, and whether those items' relevance sums to more than 0 (under
    ``"pop"`` with another population's counts a level can weigh 0: H-AP is 0 / 0 there).
    """
    s, valid = _block_scores(q, self_index, chunks, n)
    t = jnp.where(valid, hierarchy.shared_levels(q_paths, g_paths), 0)  # [b, N]
    if rule == "pop":
        rel = jnp.where(valid, hierarchy.pop_relevance_from_counts(t, counts, q_paths.shape[1], alpha), 0.0)
    else:
        rel = hierarchy.path_relevance(q_paths, g_paths, rule=rule, alpha=alpha, where=valid)
    ranked = _ranked_levels(s, t, rel, q_paths.shape[1])
    positive = ranked.levels > 0
    r = jnp.sum(positive, axis=1).astype(jnp.float32)
    has_relevance = jnp.sum(jnp.where(positive, ranked.rel, 0.0), axis=1) > 0
    return _hap(ranked, positive), _ndcg(ranked, positive), _asi(ranked, positive, r), r > 0, has_relevance


class _RankedLevels(NamedTuple):
    """A block's items in decreasing score order: their exact rank (``H(0) = 1``), shared
    level ``t`` and relevance, and the per-level counts the metrics need (``L + 1`` levels)."""

    rank: Array  # [b, N] float, 1-based
    levels: Array  # [b, N] int, shared levels t of each item
    rel: Array  # [b, N] relevance
    at_rank: Array  # [b, N, L+1] items of each level ranked <= rank
    order_in_level: Array  # [b, N] place of the item within its level, in ranked order
    per_level: Array  # [b, L+1] items per level
    higher: Array  # [b, L+1] items of higher levels than each level


def _block_scores(q: Array, self_index: Array, chunks: Array, n: int) -> tuple[Array, Array]:
    """``(s, valid)``: ``[b, N]`` scores of a query block against the whole gallery (the one
    kernel, chunk by chunk), ``-inf`` on each query's own row, and where they are not."""
    s = jax.lax.map(lambda chunk: _chunk_scores(chunk, q), chunks)  # [num_chunks, G, b]
    s = s.reshape(-1, q.shape[0]).T[:, :n]
    valid = jnp.arange(n)[None, :] != self_index[:, None]
    return jnp.where(valid, s, -jnp.inf), valid


def _sorted_ranks(s: Array, *carried: Array) -> tuple[Array, ...]:
    """``(rank, *carried)`` in the decreasing order of each row of ``s [b, N]`` (one stable
    sort that carries the ``[b, N]`` arrays ``carried`` along): ``rank`` is the rank of the item
    at each place, 1-based, the number of items scoring at least as high (the end of its tie
    group, :math:`H(0) = 1`, found by a reversed running minimum); ``-inf`` items rank ``N``
    and never count."""
    n = s.shape[1]
    descending, *carried = jax.lax.sort((-s, *carried), dimension=1, is_stable=True, num_keys=1)
    place = jnp.arange(n, dtype=jnp.int32)
    group_end = jnp.concatenate([descending[:, 1:] != descending[:, :-1], jnp.ones_like(s[:, :1], bool)], 1)
    rank = jax.lax.cummin(jnp.where(group_end, place, n - 1), axis=1, reverse=True) + 1
    return (jnp.where(jnp.isfinite(descending), rank, n), *carried)


def _ranked_levels(s: Array, t: Array, rel: Array, num_levels: int) -> _RankedLevels:
    rank, t_sorted, rel_sorted = _sorted_ranks(s, t, rel)
    onehot = (t_sorted[..., None] == jnp.arange(num_levels + 1)).astype(jnp.float32)  # [b, N, L+1]
    cum = jnp.cumsum(onehot, axis=1)
    per_level = jnp.sum(onehot, axis=1)
    return _RankedLevels(
        rank=rank.astype(jnp.float32),
        levels=t_sorted,
        rel=rel_sorted,
        at_rank=jnp.take_along_axis(cum, (rank - 1)[..., None], axis=1),
        order_in_level=jnp.take_along_axis(cum, t_sorted[..., None], axis=2)[..., 0],
        per_level=per_level,
        higher=jnp.cumsum(per_level[:, ::-1], axis=1)[:, ::-1] - per_level,
    )


def _hap(ranked: _RankedLevels, positive: Array) -> Array:
    """H-AP: H-rank = sum over levels of min(rel_level, rel_k) * #(level items ranked <= rank)."""
    onehot = ranked.levels[..., None] == jnp.arange(ranked.per_level.shape[1])
    # Relevance of each level for this query (constant within a level under both rules).
    level_rel = jnp.max(jnp.where(onehot, ranked.rel[..., None], 0.0), axis=1)  # [b, L+1]
    shared = jnp.minimum(level_rel[:, None, :], ranked.rel[..., None])
    h_rank = jnp.sum(shared * ranked.at_rank, axis=-1)
    rel_total = jnp.sum(jnp.where(positive, ranked.rel, 0.0), axis=1)
    return metrics.hap_from_ranks(h_rank, ranked.rank, positive, rel_total)


def _ndcg(ranked: _RankedLevels, positive: Array) -> Array:
    """NDCG with gain ``2^t - 1`` on shared levels (SupRank's evaluation); the ideal list holds
    the levels in decreasing order, so IDCG sums each level's gain over its block of places."""
    n = ranked.rank.shape[1]
    gain = jnp.exp2(jnp.arange(ranked.per_level.shape[1], dtype=jnp.float32)) - 1.0  # [L+1]
    dcg = metrics.dcg(gain[ranked.levels], ranked.rank, positive)
    disc = jnp.concatenate([jnp.zeros(1), jnp.cumsum(1.0 / jnp.log2(2.0 + jnp.arange(n)))])
    start = ranked.higher.astype(jnp.int32)
    stop = (ranked.higher + ranked.per_level).astype(jnp.int32)
    idcg = jnp.sum(gain[1:] * (disc[stop] - disc[start])[:, 1:], axis=1)
    return metrics.ndcg_from_dcgs(dcg, idcg)


def _asi(ranked: _RankedLevels, positive: Array, r: Array) -> Array:
    """ASI up to depth R: an item is in the intersection from depth max(rank, ideal place of
    the m-th item of its level), m its order within its level."""
    ideal_place = jnp.take_along_axis(ranked.higher, ranked.levels, axis=1) + ranked.order_in_level
    depth = jnp.maximum(ranked.rank, ideal_place)
    return metrics.asi_from_depths(depth, positive, r)


@functools.lru_cache(maxsize=32)
def _hierarchy_fn(mesh: Mesh | None, n: int, rule: str, alpha: float):
    return _shard(
        functools.partial(_hierarchy_step, n=n, rule=rule, alpha=alpha), mesh,
        in_specs=(P(_AXIS), P(_AXIS), P(_AXIS), P(_AXIS), P(), P()), out_specs=(P(_AXIS),) * 5,
    )


def _paths_for_device(query_paths: np.ndarray, gallery_paths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paths as the device holds them (int32 without ``jax_enable_x64``): ids outside that
    range are renumbered per column over both sets (:func:`rankax.hierarchy.row_ids` of each
    column), which keeps which ids are equal, hence the shared levels, where JAX would wrap them."""
    both = np.concatenate([query_paths, gallery_paths])
    if not validation.wraps_on_device(both):
        return query_paths, gallery_paths
    ids = np.stack([hierarchy.row_ids(both[:, [j]])[0] for j in range(both.shape[1])], axis=1)
    ids = ids.astype(jax.dtypes.canonicalize_dtype(both.dtype))
    return ids[: len(query_paths)], ids[len(query_paths) :]


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
    level_counts: np.ndarray | None = None,
    mesh: Mesh | None = None,
) -> dict[str, np.ndarray]:
    """Per-query ``hap``, ``ndcg``, ``asi``, ``has_relevant`` and ``has_relevance``
    (:func:`_hierarchy_step`) over the whole gallery.

    ``level_counts [Q, L + 1]``: under ``"pop"``, each query's items per shared level that a
    level's weight is shared among (:func:`rankax.hierarchy.level_counts`); ``None``: those
    of its own list (the gallery, without the query where ``self_excluded``)."""
    if level_counts is None:
        level_counts = hierarchy.level_counts(query_paths, gallery_paths)
        if self_excluded:
            level_counts[:, -1] -= 1
    query_paths, gallery_paths = _paths_for_device(query_paths, gallery_paths)
    fn = _hierarchy_fn(mesh, gallery.size, rule, alpha)
    g_paths = put(gallery_paths, mesh, P())
    keys = ("hap", "ndcg", "asi", "has_relevant", "has_relevance")
    pending, rows = [], []
    for start, qb, self_index in _query_blocks(queries, block_size, mesh, self_excluded):
        b = qb.shape[0]
        m = min(b, queries.shape[0] - start)
        paths = np.zeros((b, query_paths.shape[1]), query_paths.dtype)
        paths[:m] = query_paths[start : start + m]
        counts = np.zeros((b, level_counts.shape[1]), np.float32)
        counts[:m] = level_counts[start : start + m]
        pending.append(fn(
            _put_queries(qb, mesh), _put_queries(self_index, mesh), _put_queries(paths, mesh),
            _put_queries(counts, mesh), gallery.chunks, g_paths,
        ))
        rows.append(m)
    blocks = _fetch_blocks(pending, rows)
    return {key: np.concatenate([block[j] for block in blocks]) for j, key in enumerate(keys)}
