"""``evaluate``: every retrieval metric of a query set against a gallery, in one call."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from jax.sharding import Mesh
from numpy.typing import ArrayLike

from rankax import hierarchy, metrics
from rankax._core import validation
from rankax._core.normalize import l2_normalize_host
from rankax.retrieval import exact, scann_backend

BACKENDS = ("auto", "exact", "scann")
#: Where the "pop" relevance of H-AP counts the items of each level (`evaluate`'s `relevance_counts`).
RELEVANCE_COUNTS = ("official", "list")


# ----------------------------------------------------------------------------- input checks


def _as_labels(y, name: str, num: int, emb_name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be [N] class ids or [N, L] label paths, got an array of rank {a.ndim} "
            f"(shape {a.shape})"
        )
    if a.shape[0] != num:
        raise ValueError(f"{name} has {a.shape[0]} rows but {emb_name} has {num}")
    if a.ndim == 2 and a.shape[1] < 1:
        raise ValueError(f"{name} label paths need at least one level, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        whole = np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a) & (a == np.round(a)))
        if not whole:
            raise ValueError(f"{name} must hold integer ids (finite whole numbers), got dtype {a.dtype}")
        if a.size and np.max(np.abs(a)) > _EXACT_FLOAT_IDS:
            raise ValueError(f"{name}: float ids beyond 2**53 are not exact (distinct ids can round to "
                             f"one float, or overflow int64); pass integer ids")
    elif a.dtype == np.uint64 and a.size and np.max(a) > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: uint64 ids above 2**63 - 1 do not fit int64; renumber them "
                         f"(e.g. np.unique(ids, return_inverse=True)[1])")
    return a.astype(np.int64)


#: The largest magnitude up to which every whole float64 is a distinct, exact integer id.
_EXACT_FLOAT_IDS = 2.0**53


def _finest_classes(query_labels: np.ndarray, gallery_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class ids for binary relevance: the label itself, or the whole path for ``[N, L]``."""
    if query_labels.ndim == 1:
        return query_labels, gallery_labels
    ids, _ = hierarchy.row_ids(np.concatenate([query_labels, gallery_labels]))
    return ids[: len(query_labels)], ids[len(query_labels) :]


# ----------------------------------------------------------------------------- metrics


def _binary_from_neighbours(match: np.ndarray, num_pos: np.ndarray, ks) -> dict[str, np.ndarray]:
    """Per-query metrics from ``match [Q, K]`` (neighbour ``i`` at place ``i + 1`` is relevant),
    ``K >= R``: the positives' ranks are their places, known down to depth ``K``."""
    place = np.broadcast_to(np.arange(1, match.shape[1] + 1, dtype=np.float64), match.shape)
    rank_pos = np.cumsum(match, axis=1).astype(np.float64)
    return metrics.binary_from_ranks(place, rank_pos, match, num_pos.astype(np.float64), ks, full=False)


def evaluate(
    queries: ArrayLike,
    query_labels: ArrayLike,
    gallery: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    *,
    backend: str = "exact",
    ks: Sequence[int] = (1, 2, 4, 8),
    block_size: int | None = None,
    gallery_block_size: int | None = None,
    hierarchy_block_size: int = 64,
    normalize: bool = False,
    relevance_rule: str = "pop",
    relevance_alpha: float = 1.0,
    relevance_counts: str = "official",
    scann_config: str = "auto",
    scann_options: Mapping[str, Any] | None = None,
    mesh: Mesh | None = None,
    return_per_query: bool = False,
) -> dict[str, Any]:
    """Retrieval metrics of ``queries`` against a gallery, by inner product.

    Args:
      queries: ``[Q, D]`` embeddings (L2-normalise them, or pass ``normalize=True``, for
        cosine similarity).
      query_labels: ``[Q]`` integer class ids, or ``[Q, L]`` integer label paths (column 0 the
        finest level, as in :mod:`rankax.hierarchy`).
      gallery, gallery_labels: ``[N, D]`` and labels of the same kind as ``query_labels``; both
        None (default) means the query set is the gallery with each query removed from its own
        list (SOP/CUB/Cars/iNat protocol).
      backend: ``"exact"`` (blocked JAX search, sharded over the local devices),
        ``"scann"`` (approximate; see :mod:`rankax.retrieval.scann_backend`) or ``"auto"``:
        ScaNN where :func:`~rankax.retrieval.scann_backend.choose_backend` predicts its
        build + search faster than exact search (CPU only, class-id labels, >= 100k gallery
        items), else exact; docs/evaluation.md states the rule.
      ks: the ``k`` of ``recall@k``.
      block_size / gallery_block_size: queries per step and gallery rows per chunk (exact);
        None: 512 / 4096 on the CPU, 2048 / 8192 on accelerators
        (:func:`rankax.retrieval.exact.block_sizes`); ``hierarchy_block_size`` queries per
        step for the hierarchical metrics.
      relevance_rule, relevance_alpha: graded relevance for H-AP
        (:func:`rankax.hierarchy.path_relevance`).
      relevance_counts: the items among which ``"pop"`` shares each level's weight:
        ``"official"`` (default) the query set, the query included, as the official HAPPIER
        and SupRank evaluations count them (``elias-ramzi/HAPPIER@5af91b3:``
        ``happier/datasets/base_dataset.py``,
        ``get_all_relevance``: the relevances of a split's labels against themselves, with a
        separate gallery those of the query split), so ``hap`` compares with the papers'
        tables; ``"list"`` the items of each query's ranked list (the gallery, the query
        excluded), the papers' formula read literally.
      scann_config: ``"auto"``, ``"brute_force"`` or ``"tree_ah"``.
      scann_options: ``tree_ah`` settings other than the defaults, as keywords of
        :func:`~rankax.retrieval.scann_backend.build_searcher` (e.g. ``{"leaves_to_search":
        300}`` where :func:`~rankax.retrieval.scann_recall` showed that a gallery keeps its
        neighbours with fewer leaves); ``backend="auto"`` prices the leaves and training sample
        given here. With ``backend="exact"`` a ``scann_config`` other than ``"auto"`` or any
        ``scann_options`` is refused (it was ignored).
      mesh: one-axis device mesh for the exact backend, its axis named ``"queries"``
        (default: all local devices, :func:`rankax.retrieval.exact.query_mesh`).
      return_per_query: also return ``"per_query"``: a dict of ``[Q]`` arrays (NaN for
        queries without a positive).

    Returns:
      A dict with ``"recall@k"`` for each ``k``, ``"map@r"`` (MAP@R, Musgrave et al.,
      ECCV 2020), ``"r_precision"``, ``"map"`` (AP over the whole gallery; exact backend
      only), ``"num_queries"`` and ``"num_queries_without_positive"``. A positive is an item
      of the query's class (for label paths: the same full path). Metrics are means over
      the queries that have at least one positive; the others are only counted.

      With ``[N, L]`` label paths (exact backend), also ``"hap"`` (H-AP with
      ``relevance_rule``), ``"ndcg"`` and ``"asi"`` (gain ``2^t - 1`` and levels ``t`` =
      number of shared hierarchy levels, as SupRank's evaluation does), averaged over the
      queries sharing at least one level with some gallery item (H-AP: whose relevant items'
      relevance sums to more than 0), ``"num_queries_without_relevant"`` and
      ``"num_queries_without_hap_relevance"`` (queries with a relevant item left out of H-AP's
      mean: under ``relevance_counts="official"`` with a separate gallery, a level that no
      other query shares weighs 0, and H-AP would be 0 / 0).

    Ties: an item scoring exactly as a positive counts as ranked before it (:math:`H(0)=1`)
    with the exact backend; ScaNN returns neighbours in its own order.

    Raises:
      ValueError: mismatched lengths, gallery dimension different from the queries',
        labels of the wrong rank or kind, an unknown backend, bad ``ks``, unknown
        ``scann_options`` keys.
    """
    ks, scann_options = check_options(
        backend=backend, ks=ks, block_size=block_size, gallery_block_size=gallery_block_size,
        hierarchy_block_size=hierarchy_block_size, relevance_rule=relevance_rule,
        relevance_alpha=relevance_alpha, relevance_counts=relevance_counts, scann_config=scann_config,
        scann_options=scann_options,
    )
    for name, flag in (("normalize", normalize), ("return_per_query", return_per_query)):
        if not isinstance(flag, bool | np.bool_):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    exact.check_mesh(mesh)
    data = _checked_sets(queries, query_labels, gallery, gallery_labels, normalize)
    q_classes, g_classes = _finest_classes(data.query_labels, data.gallery_labels)
    layout = exact.class_layout(q_classes, g_classes, data.self_excluded)
    num_pos = np.empty(len(data.queries), np.int64)
    num_pos[layout.query_order] = layout.num_pos
    backend = resolve_backend(
        backend, data.queries.shape, data.gallery.shape, label_paths=data.query_labels.ndim == 2, mesh=mesh,
        scann_config=scann_config, scann_options=scann_options,
    )
    if backend == "exact":
        mesh = exact.query_mesh() if mesh is None else mesh
        # The gallery in original order on the devices, sent once for the sorted binary metrics
        # and the hierarchical ones (whichever needs it first).
        placed = functools.cache(lambda: _gallery_on(data, gallery_block_size, mesh))
        per_query = _exact_binary(
            data, layout, (q_classes, g_classes), ks, block_size, gallery_block_size, mesh, placed
        )
    else:
        per_query = _scann_binary(data, q_classes, g_classes, num_pos, ks, scann_config, scann_options)
    result = _means_over(per_query, num_pos > 0, ks)
    if not np.any(num_pos > 0):
        warnings.warn(
            f"evaluate: none of the {len(num_pos)} queries has a positive in the gallery (labels that "
            "share no class?): every binary metric is reported as 0.0",
            stacklevel=2,
        )
    if data.query_labels.ndim == 2 and backend == "exact":
        hierarchical = exact.hierarchical_metrics(
            data.queries, data.query_labels, placed(), data.gallery_labels,
            self_excluded=data.self_excluded, block_size=hierarchy_block_size,
            rule=relevance_rule, alpha=relevance_alpha, mesh=mesh,
            level_counts=hierarchy.level_counts(data.query_labels, data.query_labels)
            if relevance_counts == "official" else None,
        )
        result.update(_hierarchical_means(hierarchical, per_query))
    if return_per_query:
        result["per_query"] = per_query
    return result


def resolve_backend(
    backend: str,
    queries_shape: tuple[int, ...],
    gallery_shape: tuple[int, ...],
    *,
    label_paths: bool,
    mesh: Mesh | None = None,
    scann_config: str = "auto",
    scann_options: Mapping[str, Any] | None = None,
) -> str:
    """The backend :func:`evaluate` searches with: ``backend`` itself, or for ``"auto"`` the
    choice of :func:`~rankax.retrieval.scann_backend.choose_backend` for ``[Q, D]`` queries
    against an ``[N, D]`` gallery (``label_paths``: the labels are ``[Q, L]`` paths; the
    platform is the ``mesh``'s, default JAX's)."""
    if backend != "auto":
        return backend
    return scann_backend.choose_backend(
        queries_shape[0], gallery_shape[0], queries_shape[1], label_paths=label_paths,
        platform=None if mesh is None else mesh.devices.flat[0].platform,
        scann_config=scann_config, scann_options=scann_options,
    )


#: The per-level metrics :func:`evaluate_levels` averages over the levels (those present).
LEVEL_KEYS = ("map@r", "r_precision", "map", "asi")


def evaluate_levels(
    queries: ArrayLike,
    query_labels: ArrayLike,
    gallery: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    *,
    levels: Sequence[int],
    means: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Binary retrieval metrics at each level of the labels, and their means over the levels:
    the DyML evaluation of SupRank and HAPPIER (``accuracy_calculator.compute_for_hierarchy_levels``
    with ``overall_accuracy=True`` and ``with_binary_asi=True``); with ``means=False`` the
    levels' metrics beside :func:`evaluate`'s on the labels as given, as their SOP and
    iNaturalist runs report them (``overall_accuracy=False``).

    At level ``l`` an item is a positive of a query when their labels agree in column ``l``
    (``elias-ramzi/SupRank@99041e8:suprank/lib/create_label_matrix.py``; ``[N]`` class ids
    are level 0). :func:`evaluate` on those labels gives ``level{l}/recall@k``,
    ``level{l}/map@r``, ``level{l}/r_precision``, ``level{l}/map`` and
    ``level{l}/num_queries_without_positive``, and with the exact backend the binary ASI
    ``level{l}/asi`` :math:`= \\frac{1}{R}\\sum_{k \\le R} P@k` (``R``: the query's positives).
    The plain names (``recall@k``, ``map@r``, ``r_precision``, ``map``, ``asi``) are the means
    of the levels' values: the official "overall accuracy" of one test set
    (``suprank/engine/overall_accuracy_hook.py``, ``intra_set_overall_accuracy_hook``).

    With ``[N, L]`` label paths of ``L > 1`` levels and the exact backend, the path metrics
    of :func:`evaluate` come as ``multi/hap``, ``multi/ndcg`` and ``multi/asi``, and the
    plain ``asi`` averages ``multi/asi`` with the levels' binary ASIs: the official hook
    averages every metric named ``ASI_*``, the multi-level ``ASI_multi`` included.

    Args:
      queries, query_labels, gallery, gallery_labels: as :func:`evaluate`.
      levels: the label columns to evaluate, e.g. ``(0, 1, 2)`` for DyML-Product's fine,
        middle and coarse labels; ``(0,)`` for one level.
      means: True (default): the plain names are the means over the levels (above). False:
        they are :func:`evaluate`'s on the labels as given (for ``[N, L]`` paths: binary metrics
        of the whole path, ``hap``, ``ndcg``, ``asi``; no ``multi/*``), and ``level{l}/*`` come
        beside them: the official ``<metric>_multi`` and ``<metric>_level<l>`` of
        ``suprank/engine/accuracy_calculator.py`` ``batch_metrics``.
      **options: keywords of :func:`evaluate` (``return_per_query`` excepted). Each level is
        evaluated on one-level label paths, so ``backend="auto"`` resolves as for label paths:
        exact (the binary ASI needs it); ``backend="scann"`` gives each level's R@k, MAP@R
        and R-precision, without ``map`` and ``asi``.

    Queries without a positive at a level are left out of that level's means and counted,
    as :func:`evaluate` does (the official code averages over every query; every DyML query
    has positives at every level).
    """
    if options.get("return_per_query"):
        raise TypeError("evaluate_levels does not return per-query values; call evaluate per level")
    if not isinstance(means, bool | np.bool_):
        raise TypeError(f"means must be True or False, got {means!r}")
    labels = np.asarray(query_labels)
    other = None if gallery_labels is None else np.asarray(gallery_labels)
    width = check_level_labels(labels, other)
    levels = check_levels(levels, width)

    def column(y: np.ndarray, level: int) -> np.ndarray:
        return (y[:, level] if y.ndim == 2 else y)[:, None]  # one-level paths: binary ASI too

    result: dict[str, Any] = {}
    for level in levels:
        gallery_column = None if other is None else column(other, level)
        one = evaluate(queries, column(labels, level), gallery, gallery_column, **options)
        for key in ("hap", "ndcg", "num_queries_without_relevant", "num_queries_without_hap_relevance"):
            one.pop(key, None)  # one level: H-AP is AP; the counts repeat num_queries_without_positive
        result["num_queries"] = one.pop("num_queries")
        result.update({f"level{level}/{key}": value for key, value in one.items()})
    if not means:
        return {**evaluate(queries, labels, gallery, other, **options), **result}
    averaged = [key for key in one if key in LEVEL_KEYS or key.startswith("recall@")]  # report order
    means = {key: float(np.mean([result[f"level{level}/{key}"] for level in levels])) for key in averaged}
    if width > 1 and "asi" in means:
        multi = evaluate(queries, labels, gallery, other, **options)
        result.update({f"multi/{key}": multi[key] for key in ("hap", "ndcg", "asi")})
        asis = [result[f"level{level}/asi"] for level in levels]
        means["asi"] = float(np.mean([multi["asi"], *asis]))
    return {**means, **result}


def check_level_labels(query_labels: ArrayLike, gallery_labels: ArrayLike | None) -> int:
    """The number of label levels (columns; ``[N]`` class ids: 1), or a ValueError when the
    gallery's labels are of another kind (each level compares a query's column with the
    gallery's)."""
    shape = np.shape(query_labels)
    if gallery_labels is not None and np.shape(gallery_labels)[1:] != shape[1:]:
        raise ValueError(
            f"gallery_labels must be of the kind of query_labels (the same columns): got shapes "
            f"{np.shape(gallery_labels)} and {shape}"
        )
    return shape[1] if len(shape) == 2 else 1


def check_levels(levels: Sequence[int], width: int | None, name: str = "levels") -> tuple[int, ...]:
    """``levels`` as a tuple of distinct label columns ``0 <= l < width`` (``width`` None: the
    labels are not known yet, any ``l >= 0``); else a ValueError naming ``name``. Integers
    only: no strings, booleans or fractions."""
    items = () if isinstance(levels, str | bytes) or not hasattr(levels, "__iter__") else tuple(levels)
    whole = all(isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_) for v in items)
    out = tuple(int(v) for v in items) if whole else ()
    top = math.inf if width is None else width
    if not out or len(set(out)) != len(out) or not all(0 <= level < top for level in out):
        columns = "label columns >= 0" if width is None else (
            f"label columns 0..{width - 1} (the labels have {width} level{'s' if width > 1 else ''})")
        raise ValueError(f"{name} must be distinct {columns}, e.g. (0, 1, 2); got {levels!r}")
    return out


def check_options(
    *,
    backend: str = "exact",
    ks: Sequence[int] = (1, 2, 4, 8),
    block_size: int | None = None,
    gallery_block_size: int | None = None,
    hierarchy_block_size: int = 64,
    relevance_rule: str = "pop",
    relevance_alpha: float = 1.0,
    relevance_counts: str = "official",
    scann_config: str = "auto",
    scann_options: Mapping[str, Any] | None = None,
) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Checks :func:`evaluate`'s options (whatever the labels and backend, so a typo fails
    before any work); returns ``(ks, scann_options)`` normalised. Errors name the keyword."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ks = validation.check_ks(ks)
    validation.check_int("block_size", block_size, optional=True)
    validation.check_int("gallery_block_size", gallery_block_size, optional=True)
    validation.check_int("hierarchy_block_size", hierarchy_block_size)
    if relevance_rule not in hierarchy.RELEVANCE_RULES:
        raise ValueError(f"relevance_rule must be one of {hierarchy.RELEVANCE_RULES}, got {relevance_rule!r}")
    validation.check_number("relevance_alpha", relevance_alpha, "positive")
    if relevance_counts not in RELEVANCE_COUNTS:
        raise ValueError(f"relevance_counts must be one of {RELEVANCE_COUNTS}, got {relevance_counts!r}")
    scann_backend.resolve_config(scann_config, 0)
    options = scann_backend.check_options(scann_options)
    if backend == "exact" and (options or scann_config != "auto"):
        given = " and ".join(name for name, on in (("scann_config", scann_config != "auto"),
                                                    ("scann_options", bool(options))) if on)
        them = "them" if " and " in given else "it"
        raise ValueError(f"backend='exact' does not use ScaNN, so {given} would be ignored: leave {them} "
                         "out, or choose backend='scann' or 'auto' (which prices ScaNN's settings)")
    return ks, options


class _Sets(NamedTuple):
    """Checked queries and gallery (the queries themselves when ``self_excluded``)."""

    queries: np.ndarray
    query_labels: np.ndarray
    gallery: np.ndarray
    gallery_labels: np.ndarray
    self_excluded: bool


def _wide_normalized(x: Any, normalize: bool) -> Any:
    """With ``normalize``, float64 embeddings L2-normalised in float64 first: values beyond
    float32's range (finite as given) were refused by the float32 cast before normalising."""
    a = np.asarray(x) if normalize and x is not None else None
    if a is None or a.dtype != np.float64 or a.ndim != 2:
        return x
    return l2_normalize_host(a)


def warn_zero_rows(queries: np.ndarray, gallery: np.ndarray | None) -> None:
    """A warning naming how many query (and separate gallery) embeddings are all zero: each
    scores 0 against every item, normalised or not, so its list is one tie group and the tie
    rule decides its metrics (a dead or collapsed embedding is the usual cause)."""
    counts = [(name, int(np.sum(~np.any(x != 0, axis=1))), len(x))
              for name, x in (("queries", queries), ("gallery items", gallery)) if x is not None]
    found = [f"{zero} of {total} {name}" for name, zero, total in counts if zero]
    if found:
        warnings.warn(
            f"evaluate: {' and '.join(found)} are all-zero embeddings: they score 0 against every "
            "item, so their lists are ties that the tie rule orders (docs/evaluation.md); check the "
            "model's output",
            stacklevel=4,  # the caller of evaluate
        )


def _checked_sets(queries, query_labels, gallery, gallery_labels, normalize: bool) -> _Sets:
    queries, gallery = _wide_normalized(queries, normalize), _wide_normalized(gallery, normalize)
    queries = exact.as_embeddings(queries, "queries")
    query_labels = _as_labels(query_labels, "query_labels", len(queries), "queries")
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("gallery and gallery_labels must be given together (or both None)")
    self_excluded = gallery is None
    if self_excluded:
        gallery, gallery_labels = queries, query_labels
    else:
        gallery = exact.as_embeddings(gallery, "gallery")
        if gallery.shape[1] != queries.shape[1]:
            raise ValueError(
                f"gallery has dimension {gallery.shape[1]} but queries have dimension "
                f"{queries.shape[1]}"
            )
        gallery_labels = _as_labels(gallery_labels, "gallery_labels", len(gallery), "gallery")
        if gallery_labels.ndim != query_labels.ndim or gallery_labels.shape[1:] != query_labels.shape[1:]:
            raise ValueError(
                f"gallery_labels must be of the kind of query_labels: got shapes "
                f"{gallery_labels.shape} and {query_labels.shape}"
            )
    if len(gallery) - int(self_excluded) < 1:
        raise ValueError("the gallery must hold at least one item besides the query")
    warn_zero_rows(queries, None if self_excluded else gallery)
    if normalize:
        queries = l2_normalize_host(queries)
        gallery = queries if self_excluded else l2_normalize_host(gallery)
    else:
        exact.check_score_range(queries, gallery, "evaluate")
    return _Sets(queries, query_labels, gallery, gallery_labels, self_excluded)


def _exact_binary(
    data: _Sets, layout, classes, ks, block_size, gallery_block_size, mesh, placed
) -> dict[str, np.ndarray]:
    """Per-query binary metrics (query order) from the exact ranks of every positive: counted
    per positive for the queries with at most :data:`~rankax.retrieval.exact.SORT_ABOVE`
    positives, from one sort of the whole list for the others (``classes``: the query and
    gallery class ids; ``placed()``: the gallery on the devices, for the sorted ones)."""
    narrow = int(np.searchsorted(layout.num_pos, exact.sort_above(mesh), side="right"))  # they ascend
    values = {}
    if narrow:
        head = layout._replace(**{k: getattr(layout, k)[:narrow] for k in _QUERY_FIELDS})
        rank, rank_pos, mask = exact.positive_ranks(
            data.queries, data.gallery, head, block_size=block_size,
            gallery_block_size=gallery_block_size, mesh=mesh,
        )
        values = metrics.binary_from_ranks(
            rank.astype(np.float64), rank_pos.astype(np.float64), mask, head.num_pos.astype(np.float64), ks,
        )
    if narrow < len(layout.span):
        rows = layout.query_order[narrow:]
        ids = np.unique(np.concatenate(classes), return_inverse=True)[1].reshape(-1).astype(np.int32)
        wide = exact.sorted_binary_metrics(
            data.queries[rows], ids[: len(data.queries)][rows], placed(), ids[len(data.queries) :],
            self_rows=rows if data.self_excluded else None, ks=tuple(ks),
            block_size=min(exact.SORTED_BLOCK_SIZE, block_size or exact.SORTED_BLOCK_SIZE), mesh=mesh,
        )
        values = {key: np.concatenate([values[key], wide[key]]) if narrow else wide[key] for key in wide}
    per_query = {}
    for key, v in values.items():
        per_query[key] = np.empty(len(data.queries))
        per_query[key][layout.query_order] = v
    return per_query


#: The fields of :class:`~rankax.retrieval.exact.ClassLayout` indexed by sorted query.
_QUERY_FIELDS = ("query_order", "lo", "hi", "self_index", "num_pos")


def _scann_binary(
    data: _Sets, q_classes, g_classes, num_pos, ks, scann_config, scann_options
) -> dict[str, np.ndarray]:
    """Per-query binary metrics from ScaNN's neighbours, down to depth ``max(k, R)``."""
    depth = min(max(max(ks), int(num_pos.max(initial=1))), len(data.gallery) - int(data.self_excluded))
    _, index = scann_backend.scann_knn(
        data.queries, None if data.self_excluded else data.gallery, k=depth, config=scann_config,
        **scann_options,
    )
    match = (g_classes[index] == q_classes[:, None]) & (index >= 0)  # -1: no neighbour found
    if depth < max(ks):  # a gallery smaller than k: pad with misses
        match = np.pad(match, ((0, 0), (0, max(ks) - depth)))
    return _binary_from_neighbours(match, num_pos, ks)


_BINARY_KEYS = ("map@r", "r_precision", "map")


def _means_over(per_query: dict[str, np.ndarray], has: np.ndarray, ks) -> dict[str, Any]:
    """Means over the queries in ``has`` (0 if none) of the metrics, in report order; the
    per-query values of the others become NaN (in place). With ``ks``, the binary metrics and
    the query counts."""
    if ks:
        keys = [f"recall@{k}" for k in ks] + [k for k in _BINARY_KEYS if k in per_query]
    else:
        keys = list(per_query)
    result: dict[str, Any] = {key: float(np.mean(per_query[key][has])) if has.any() else 0.0 for key in keys}
    if ks:
        result["num_queries"] = len(has)
        result["num_queries_without_positive"] = int((~has).sum())
    for key in per_query:
        per_query[key] = np.where(has, per_query[key], np.nan)
    return result


def _hierarchical_means(
    hierarchical: dict[str, np.ndarray], per_query: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Means of NDCG and ASI over the queries with a relevant item, of H-AP over those whose
    relevant items weigh more than 0 in total (their per-query values join ``per_query``, NaN
    for the others), and the counts of the queries left out."""
    has_rel = hierarchical.pop("has_relevant")
    has_weight = hierarchical.pop("has_relevance")
    hap = {"hap": hierarchical.pop("hap")}
    result = {**_means_over(hap, has_weight, ()), **_means_over(hierarchical, has_rel, ())}
    result["num_queries_without_relevant"] = int((~has_rel).sum())
    result["num_queries_without_hap_relevance"] = int((has_rel & ~has_weight).sum())
    per_query.update(hap, **hierarchical)
    return result


def _gallery_on(data: _Sets, gallery_block_size, mesh) -> exact.Gallery:
    return exact.put_gallery(data.gallery, exact.block_sizes(None, gallery_block_size, mesh)[1], mesh)
