"""ScaNN neighbour search (``scann.scann_ops_pybind``) and its recall against exact search.

Two configurations, by inner product (``"dot_product"``):

* ``"brute_force"``: exact float32 scoring of every gallery item inside ScaNN (a check and
  a baseline; same neighbours as :func:`rankax.retrieval.knn` up to ties).
* ``"tree_ah"``: ScaNN's recommended recipe for large galleries -- a k-means tree of
  ``num_leaves`` partitions (default ``round(sqrt(N))``) of which ``leaves_to_search``
  are scored (default ``max(num_leaves // 5, 1)``), asymmetric hashing with 2 dimensions
  per 4-bit block and anisotropic threshold 0.2, then exact re-scoring of the best
  ``reorder_k`` candidates (default ``max(250, 2 * k)``).

``config="auto"`` (the default) is ``"brute_force"`` below 100,000 gallery items and
``"tree_ah"`` from there on. Below that size ScaNN's brute force is both exact and already
faster than the tree once the index build is counted (docs/evaluation.md has the numbers),
and the tree loses recall on hard (spread-out) data: check it with :func:`scann_recall`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

SCANN_CONFIGS = ("auto", "brute_force", "tree_ah")
AUTO_TREE_THRESHOLD = 100_000


def _import_scann():
    try:
        from scann import scann_ops_pybind
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "backend='scann' needs the `scann` package: pip install 'rankax[scann]'"
        ) from err
    return scann_ops_pybind


def resolve_config(config: str, n: int) -> str:
    if config not in SCANN_CONFIGS:
        raise ValueError(f"config must be one of {SCANN_CONFIGS}, got {config!r}")
    if config == "auto":
        return "brute_force" if n < AUTO_TREE_THRESHOLD else "tree_ah"
    return config


def build_searcher(
    gallery: np.ndarray,
    k: int,
    *,
    config: str = "auto",
    num_leaves: int | None = None,
    leaves_to_search: int | None = None,
    reorder_k: int | None = None,
    training_sample_size: int = 250_000,
) -> Any:
    """Builds a ScaNN searcher over ``gallery [N, D]`` returning ``k`` neighbours by default."""
    scann_ops = _import_scann()
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    n = gallery.shape[0]
    config = resolve_config(config, n)
    builder = scann_ops.builder(gallery, k, "dot_product")
    if config == "brute_force":
        return builder.score_brute_force().build()
    num_leaves = num_leaves or max(int(round(math.sqrt(n))), 2)
    leaves_to_search = leaves_to_search or max(num_leaves // 5, 1)
    reorder_k = max(reorder_k or max(250, 2 * k), k)
    return (
        builder.tree(
            num_leaves=num_leaves,
            num_leaves_to_search=leaves_to_search,
            training_sample_size=min(n, training_sample_size),
        )
        .score_ah(2, anisotropic_quantization_threshold=0.2)
        .reorder(reorder_k)
        .build()
    )


def scann_knn(
    queries: np.ndarray,
    gallery: np.ndarray | None = None,
    *,
    k: int,
    config: str = "auto",
    **config_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``k`` neighbours with ScaNN; same contract as :func:`~.exact.knn`.

    ``gallery=None`` searches the queries among themselves, self excluded (one extra
    neighbour is requested and the query's own row removed).

    Returns ``(scores [Q, k] float32, indices [Q, k] int64)``, best first.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    self_excluded = gallery is None
    gallery = queries if self_excluded else np.ascontiguousarray(gallery, dtype=np.float32)
    extra = 1 if self_excluded else 0
    k_search = min(k + extra, gallery.shape[0])
    searcher = build_searcher(gallery, k_search, config=config, **config_kwargs)
    index, scores = searcher.search_batched(queries, final_num_neighbors=k_search)
    index = np.asarray(index, np.int64)
    scores = np.asarray(scores, np.float32)
    if self_excluded:
        keep = index != np.arange(len(queries))[:, None]
        # Drop the query itself where found, else the last neighbour.
        keep[keep.all(axis=1), -1] = False
        index = index[keep].reshape(len(queries), -1)
        scores = scores[keep].reshape(len(queries), -1)
    return scores[:, :k], index[:, :k]


def scann_recall(
    queries: np.ndarray,
    gallery: np.ndarray,
    *,
    k: int = 10,
    config: str = "auto",
    block_size: int = 512,
    **config_kwargs: Any,
) -> dict[str, float]:
    """How many of the exact top-``k`` neighbours ScaNN finds, and how long each takes.

    Args:
      queries: ``[Q, D]``; gallery: ``[N, D]`` (a separate gallery).
      k, config, **config_kwargs: as for :func:`build_searcher`.

    Returns:
      ``{"recall@k": mean over queries of |ScaNN top-k ∩ exact top-k| / k,
      "scann_build_seconds", "scann_search_seconds", "exact_seconds" (rankax's blocked exact
      search, compilation included), "config": the resolved configuration}``.
    """
    from rankax.retrieval.exact import knn

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    t0 = time.perf_counter()
    searcher = build_searcher(gallery, k, config=config, **config_kwargs)
    t1 = time.perf_counter()
    approx, _ = searcher.search_batched(queries, final_num_neighbors=k)
    t2 = time.perf_counter()
    _, exact = knn(queries, gallery, k=k, block_size=block_size)
    t3 = time.perf_counter()
    hits = [len(np.intersect1d(a, e)) for a, e in zip(np.asarray(approx), exact, strict=True)]
    return {
        f"recall@{k}": float(np.mean(hits) / k),
        "scann_build_seconds": t1 - t0,
        "scann_search_seconds": t2 - t1,
        "exact_seconds": t3 - t2,
        "config": resolve_config(config, gallery.shape[0]),
    }
