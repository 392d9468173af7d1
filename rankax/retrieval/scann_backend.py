"""ScaNN neighbour search (``scann.scann_ops_pybind``), its recall against exact search, and
the rule by which ``evaluate(backend="auto")`` chooses between ScaNN and exact search.

ScaNN: Guo, Sun, Lindgren, Geng, Simcha, Chern, Kumar. "Accelerating Large-Scale Inference
with Anisotropic Vector Quantization." ICML 2020.

Two configurations, by inner product (``"dot_product"``):

* ``"brute_force"``: exact float32 scoring of every gallery item inside ScaNN (a check and
  a baseline; same neighbours as :func:`rankax.retrieval.knn` up to ties).
* ``"tree_ah"``: a k-means tree of ``num_leaves`` partitions (default ``round(sqrt(N))``)
  of which ``leaves_to_search`` are scored (default ``ceil(LEAVES_TO_SEARCH_FRACTION *
  num_leaves)``, 45 % of them), asymmetric hashing (AH) with 3 dimensions per 4-bit block
  and anisotropic threshold 0.2, then exact re-scoring of the best ``reorder_k`` candidates
  (default ``max(1000, 2 * k)``); k-means and AH trained on up to 100,000 items.

Queries are searched with ``search_batched_parallel`` (all cores). The defaults were chosen
by ``python -m experiments.sweep_scann`` at 1M x 128 (10,000 queries, SOP-like clustered
data, best of 2 timings, rankax's exact :func:`~rankax.retrieval.knn` timed in the same
process before each index; table in docs/evaluation.md): searching 45 % of the 1000 leaves
with 3-dimension blocks and 1000 re-scored candidates lost 0.007 of R@1 with a search 6.7x
faster than exact search on a quiet host and 5.6x under load (build 13 s, apart), where the
previous default (2-dimension blocks, 250 re-scored, same leaves) lost the same R@1 at
5.2x; half of the leaves lost 0.005 but fell to 4.9x under load. On this shared 2-core host
the ratio depends on other jobs: a benchmark rerun under heavy load measured 3.4x. Coarser
codes scan faster and the larger re-scoring pool wins back what they lose (4-dimension
blocks needed 2000 re-scored candidates for the same R@1 and lost more of the exact top 10);
500 or 2000 leaves lost more R@1 than 1000 for the same share of leaves searched, and a
300,000-item training sample did not help. These ratios are against ``knn`` before its grouped
top-k made exact search 1.5x faster: since then the default searches 4.1x faster than ``knn``
and 3.0x faster than faiss's flat index at 1M x 128. The R@1 it loses is the partition's:
int8 scoring of the same leaves loses the same (docs/evaluation.md). docs/benchmarks.md (ScaNN
section) has the default's numbers from ``experiments.benchmark_scann``. ``evaluate``'s
``scann_options`` replaces any default (:func:`check_options`).

``config="auto"`` (the default) is ``"brute_force"`` below ``AUTO_TREE_THRESHOLD`` =
100,000 gallery items and ``"tree_ah"`` from there on: below that size ScaNN's brute force
is exact and as fast as the tree once the index build is counted.

:func:`choose_backend` is the cost model of ``evaluate(backend="auto")``; docs/evaluation.md
states the same rule.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from rankax._core import optional, validation
from rankax.retrieval import exact

SCANN_CONFIGS = ("auto", "brute_force", "tree_ah")
AUTO_TREE_THRESHOLD = 100_000
LEAVES_TO_SEARCH_FRACTION = 0.45
TRAINING_SAMPLE_SIZE = 100_000
DIMENSIONS_PER_BLOCK = 3
ANISOTROPIC_THRESHOLD = 0.2
REORDER_K = 1000
#: Codes per block of ScaNN's asymmetric hashing (4 bits): ``tree_ah`` trains them by k-means on
#: at least this many items.
AH_CODEBOOK_SIZE = 16

# Cost model of backend="auto" (seconds; Q queries, N gallery items, D dimensions), fitted to
# the default configuration's runs of experiments/benchmark_scann.py at 200k and 1M x 128 on
# the 2-core CPU host (docs/benchmarks.md, ScaNN section; geometric mean of the two sizes):
#   exact(Q, N, D) = EXACT_CPU_SECONDS_PER_MAC * Q * N * D
#   scann(Q, N, D) = SCANN_BUILD_SECONDS_PER_MAC * D * L * (12 * min(N, 100_000) + N)
#                    + SCANN_SEARCH_SECONDS_PER_MAC * (leaves searched / L) * Q * N * D
# with L = sqrt(N) leaves, 45 % of them searched (LEAVES_TO_SEARCH_FRACTION) by default.
# The build runs 12 k-means iterations over the training sample and assigns every item, both
# against sqrt(N) centres (AH training is folded into the constant); the search scores the
# fraction of the items in the searched leaves with 4-bit codes, per item and dimension.
EXACT_CPU_SECONDS_PER_MAC = 1.5e-11  # 2.4e-11 before knn's grouped top-k
SCANN_BUILD_SECONDS_PER_MAC = 5.0e-11
SCANN_SEARCH_SECONDS_PER_MAC = 9.7e-12
KMEANS_ITERATIONS = 12  # ScaNN's default for the tree


def _import_scann():
    return optional.require("scann", "backend='scann'").scann_ops_pybind


def scann_available() -> bool:
    """Whether ``scann`` can be imported here (it has no wheels for some platforms)."""
    try:
        _import_scann()
    except ImportError:
        return False
    return True


def resolve_config(config: str, n: int) -> str:
    if config not in SCANN_CONFIGS:
        raise ValueError(f"scann_config must be one of {SCANN_CONFIGS}, got {config!r}")
    if config == "auto":
        return "brute_force" if n < AUTO_TREE_THRESHOLD else "tree_ah"
    return config


def default_num_leaves(n: int) -> int:
    """The ``tree_ah`` default number of k-means leaves for ``n`` gallery items."""
    return max(int(round(math.sqrt(n))), 2)


def default_leaves_to_search(num_leaves: int) -> int:
    """The ``tree_ah`` default number of leaves scored per query."""
    return max(math.ceil(LEAVES_TO_SEARCH_FRACTION * num_leaves), 1)


def predicted_seconds(
    num_queries: int,
    num_items: int,
    dim: int,
    *,
    num_leaves: int | None = None,
    leaves_to_search: int | None = None,
    training_sample_size: int = TRAINING_SAMPLE_SIZE,
) -> dict[str, float]:
    """The cost model's CPU seconds of exact search and of ScaNN ``tree_ah`` build + search.

    The ``tree_ah`` settings default as in :func:`build_searcher`: ``L = num_leaves``
    centres, a share ``leaves_to_search / L`` of the items scored per query, k-means over
    ``min(N, training_sample_size)`` items (the other settings are not modelled)."""
    q, n, d = float(num_queries), float(num_items), float(dim)
    leaves = default_num_leaves(num_items) if num_leaves is None else num_leaves
    searched = default_leaves_to_search(leaves) if leaves_to_search is None else leaves_to_search
    share = min(searched / leaves, 1.0)
    build = SCANN_BUILD_SECONDS_PER_MAC * d * leaves * (
        KMEANS_ITERATIONS * min(n, training_sample_size) + n
    )
    search = SCANN_SEARCH_SECONDS_PER_MAC * share * q * n * d
    return {"exact": EXACT_CPU_SECONDS_PER_MAC * q * n * d, "scann": build + search}


def choose_backend(
    num_queries: int,
    num_items: int,
    dim: int,
    *,
    platform: str | None = None,
    label_paths: bool = False,
    scann_config: str = "auto",
    scann_options: Mapping[str, Any] | None = None,
) -> str:
    """The backend ``evaluate(backend="auto")`` uses: ``"scann"`` or ``"exact"``.

    ``"scann"`` only when all of these hold, else ``"exact"``:

    * the exact search would run on the CPU (``platform``, default
      ``jax.default_backend()``, is ``"cpu"``): on a GPU or TPU the blocked exact search runs
      at accelerator speed, which the CPU-fitted constants below do not describe, and
      computes every metric;
    * the labels are class ids (``label_paths=False``): H-AP, NDCG and ASI need exact ranks;
    * ``num_items >= AUTO_TREE_THRESHOLD`` and ``scann_config`` is not ``"brute_force"``
      (ScaNN then searches the tree; its brute force is never faster than exact search);
    * ScaNN is installed;
    * the cost model predicts build + search faster than exact search:
      ``predicted_seconds(...)["scann"] < predicted_seconds(...)["exact"]``, with the
      ``tree_ah`` settings of ``scann_options`` (:func:`check_options`) where given.
    """
    if platform is None:
        import jax

        platform = jax.default_backend()
    tree = resolve_config(scann_config, max(num_items, AUTO_TREE_THRESHOLD)) == "tree_ah"
    if platform != "cpu" or label_paths or num_items < AUTO_TREE_THRESHOLD or not tree:
        return "exact"
    modelled = ("num_leaves", "leaves_to_search", "training_sample_size")
    settings = {k: v for k, v in check_options(scann_options).items() if k in modelled}
    cost = predicted_seconds(num_queries, num_items, dim, **settings)
    if cost["scann"] >= cost["exact"] or not scann_available():
        return "exact"
    return "scann"


def build_searcher(
    gallery: np.ndarray,
    k: int,
    *,
    config: str = "auto",
    num_leaves: int | None = None,
    leaves_to_search: int | None = None,
    reorder_k: int | None = None,
    training_sample_size: int = TRAINING_SAMPLE_SIZE,
    dimensions_per_block: int = DIMENSIONS_PER_BLOCK,
    anisotropic_threshold: float = ANISOTROPIC_THRESHOLD,
) -> Any:
    """Builds a ScaNN searcher over ``gallery [N, D]`` returning ``k`` neighbours by default.

    ``training_sample_size`` items (at most) train the k-means tree and the hashes;
    ``dimensions_per_block`` dimensions (at most ``D``; the last block takes the remainder)
    share one 4-bit code of the asymmetric hashing and ``anisotropic_threshold`` is ScaNN's
    ``anisotropic_quantization_threshold`` (both ``tree_ah`` only). A bad value raises a
    ``ValueError`` naming the keyword; ``tree_ah`` needs at least :data:`AH_CODEBOOK_SIZE`
    training items, at most as many leaves as training items (k-means needs one item per
    centre) and ``leaves_to_search <= num_leaves``.
    """
    checked = _check_tuning(
        num_leaves=num_leaves, leaves_to_search=leaves_to_search, reorder_k=reorder_k,
        training_sample_size=training_sample_size, dimensions_per_block=dimensions_per_block,
        anisotropic_threshold=anisotropic_threshold,
    )
    num_leaves, leaves_to_search, reorder_k, training_sample_size, dimensions_per_block = (
        checked[k] for k in ("num_leaves", "leaves_to_search", "reorder_k", "training_sample_size",
                             "dimensions_per_block")
    )
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    n = gallery.shape[0]
    config = resolve_config(config, n)
    sample = min(n, training_sample_size)
    if config == "tree_ah" and sample < AH_CODEBOOK_SIZE:
        raise ValueError(
            f"tree_ah trains its 4-bit codes on at least {AH_CODEBOOK_SIZE} items, got {sample} "
            f"(gallery {n}, training_sample_size {training_sample_size}): use config='brute_force' "
            "(evaluate's scann_config)"
        )
    num_leaves = default_num_leaves(n) if num_leaves is None else num_leaves
    leaves_to_search = default_leaves_to_search(num_leaves) if leaves_to_search is None else leaves_to_search
    if config == "tree_ah" and num_leaves > sample:
        raise ValueError(
            f"num_leaves={num_leaves} is more than the {sample} items k-means trains on (gallery {n}, "
            f"training_sample_size {training_sample_size}): use num_leaves <= {sample}"
        )
    if config == "tree_ah" and leaves_to_search > num_leaves:
        raise ValueError(
            f"leaves_to_search={leaves_to_search} is more than num_leaves={num_leaves}: "
            f"use leaves_to_search <= {num_leaves} (= num_leaves searches every leaf)"
        )
    reorder_k = max(max(REORDER_K, 2 * k) if reorder_k is None else reorder_k, k)
    builder = _import_scann().builder(gallery, k, "dot_product")
    if config == "brute_force":
        return builder.score_brute_force().build()
    return (
        builder.tree(
            num_leaves=num_leaves,
            num_leaves_to_search=leaves_to_search,
            training_sample_size=sample,
        )
        .score_ah(
            min(dimensions_per_block, gallery.shape[1]),
            anisotropic_quantization_threshold=anisotropic_threshold,
            training_sample_size=sample,
        )
        .reorder(reorder_k)
        .build()
    )


def check_options(options: Mapping[str, Any] | None, name: str = "scann_options") -> dict[str, Any]:
    """``options`` as a dict of :func:`build_searcher`'s tuning keywords (``num_leaves``,
    ``leaves_to_search``, ``reorder_k``, ``training_sample_size``, ``dimensions_per_block``,
    ``anisotropic_threshold``); any other key raises a ``ValueError`` naming ``name``."""
    options = dict(options or {})
    known = [p.name for p in inspect.signature(build_searcher).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "config"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}; the known ones are {known}")
    _check_tuning(**options, caller=name)
    return options


def _check_tuning(*, caller: str = "", **options: Any) -> dict[str, Any]:
    """:func:`build_searcher`'s tuning keywords that are given, checked: whole numbers ``>= 1``
    as ints (``num_leaves``, ``leaves_to_search`` and ``reorder_k`` may be None: the default)
    and a finite ``anisotropic_threshold``; a ValueError names the keyword (and ``caller``)."""
    checked = {}
    for key, value in options.items():
        if key == "anisotropic_threshold":
            validation.check_number(key, value, "finite", caller=caller)
            checked[key] = value
        else:
            optional = key in ("num_leaves", "leaves_to_search", "reorder_k")
            checked[key] = validation.check_int(key, value, optional=optional, caller=caller)
    return checked


def search(searcher: Any, queries: np.ndarray, k: int, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(index [Q, k] int64, scores [Q, k] float32)`` of ``searcher.search_batched_parallel``
    (``options``: its keywords, e.g. ``leaves_to_search``), with the padding of lists that
    found fewer than ``k`` items (ScaNN's index 0 and NaN score) as index ``-1``, score ``-inf``."""
    index, scores = searcher.search_batched_parallel(queries, final_num_neighbors=k, **options)
    index = np.asarray(index, np.int64)
    scores = np.asarray(scores, np.float32)
    missing = np.isnan(scores)
    index[missing], scores[missing] = -1, -np.inf
    return index, scores


def without_self(
    index: np.ndarray, query_ids: np.ndarray, scores: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Neighbour lists ``[Q, k]`` of queries that are themselves gallery items, less one entry
    each: the query's own id ``query_ids [Q]`` where it was found, else the last entry (the
    list's worst). Returns ``(index [Q, k - 1], scores [Q, k - 1] or None)``; the padding
    ``-1`` of :func:`search` stays in place."""
    index = np.asarray(index)
    keep = index != np.asarray(query_ids)[:, None]
    keep[keep.all(axis=1), -1] = False
    rows = len(index)
    kept_scores = None if scores is None else np.asarray(scores)[keep].reshape(rows, -1)
    return index[keep].reshape(rows, -1), kept_scores


def scann_knn(
    queries: np.ndarray,
    gallery: np.ndarray | None = None,
    *,
    k: int,
    config: str = "auto",
    **config_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``k`` neighbours by inner product with ScaNN (Guo et al., "Accelerating
    Large-Scale Inference with Anisotropic Vector Quantization", ICML 2020); same contract as
    :func:`~.exact.knn`.

    ``gallery=None`` searches the queries among themselves, self excluded (one extra
    neighbour is requested and the query's own row removed). ``config``: ``"auto"`` (default:
    ``"brute_force"`` below :data:`AUTO_TREE_THRESHOLD` gallery items, else ``"tree_ah"``),
    ``"brute_force"`` or ``"tree_ah"`` (module docstring: leaves, hashing, re-scoring and their
    defaults); ``config_kwargs``: :func:`build_searcher`'s keywords, replacing those defaults.

    Returns ``(scores [Q, k] float32, indices [Q, k] int64)``, best first. Where the searched
    leaves of ``tree_ah`` hold fewer than ``k`` items (few or small leaves searched), the
    missing neighbours come last as index ``-1`` and score ``-inf`` (ScaNN pads them with
    index 0 and a NaN score).
    """
    self_excluded = gallery is None
    queries, gallery, k = exact.check_knn(queries, gallery, k)
    k_search = k + 1 if self_excluded else k  # at most N: check_knn bounds k by N - 1 there
    searcher = build_searcher(gallery, k_search, config=config, **config_kwargs)
    index, scores = search(searcher, queries, k_search)
    if self_excluded:
        index, scores = without_self(index, np.arange(len(queries)), scores)
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
      block_size: queries per block of the exact search it is compared with
        (:func:`rankax.retrieval.knn`).

    Returns:
      ``{"recall@k": mean over queries of |ScaNN top-k ∩ exact top-k| / k,
      "scann_build_seconds", "scann_search_seconds", "exact_seconds" (rankax's blocked exact
      search, compilation included), "config": the resolved configuration}``.
    """
    # Every argument checked before the build (minutes at a million items), as scann_knn does.
    if gallery is None:
        raise ValueError("scann_recall: gallery must be an [N, D] array (a gallery apart from the queries)")
    queries, gallery, k = exact.check_knn(queries, gallery, k)
    block_size = validation.check_int("block_size", block_size, caller="scann_recall")
    t0 = time.perf_counter()
    searcher = build_searcher(gallery, k, config=config, **config_kwargs)
    t1 = time.perf_counter()
    approx, _ = search(searcher, queries, k)
    t2 = time.perf_counter()
    _, exact_index = exact.knn(queries, gallery, k=k, block_size=block_size)
    t3 = time.perf_counter()
    hits = [len(np.intersect1d(a, e)) for a, e in zip(approx, exact_index, strict=True)]
    return {
        f"recall@{k}": float(np.mean(hits) / k),
        "scann_build_seconds": t1 - t0,
        "scann_search_seconds": t2 - t1,
        "exact_seconds": t3 - t2,
        "config": resolve_config(config, gallery.shape[0]),
    }
