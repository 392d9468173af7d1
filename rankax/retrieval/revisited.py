"""The Revisited Oxford / Paris evaluation protocol (Radenović et al., CVPR 2018).

Each query has three disjoint sets of database images: ``easy``, ``hard`` and ``junk``.
Three setups decide which are positives and which are ignored:

======== ====================== ==========================
setup    positives              ignored ("junk")
======== ====================== ==========================
Easy     easy                   junk + hard
Medium   easy + hard            junk
Hard     hard                   junk + easy
======== ====================== ==========================

Ignored images are removed from the ranking before scoring: a positive's 0-based position
drops by the number of ignored images ranked before it. On the resulting positions
``r_0 < r_1 < ...`` of the ``n`` positives (``n`` = size of the positive set):

* AP is the area under the precision-recall curve by trapezoids, as the official code
  computes it: :math:`\\mathrm{AP} = \\frac{1}{n} \\sum_j \\frac{1}{2}\\big(p^0_j + p^1_j\\big)`
  with :math:`p^0_j = j / r_j` (1 when :math:`r_j = 0`) and :math:`p^1_j = (j + 1)/(r_j + 1)`;
  this is not the step-wise AP of :func:`rankax.metrics.average_precision`.
* mP@k uses :math:`k_q = \\min(k, \\text{1-based position of the last positive})` and is the
  fraction of the first :math:`k_q` (junk-free) places holding a positive.
* A query whose positive set is empty in a setup (e.g. no ``hard`` image) gets NaN and is
  left out of that setup's means; the means divide by the number of the other queries.

Positives missing from a truncated ``ranks`` count as never retrieved (AP terms of 0); a
query none of whose positives appears gets AP 0 and P@k 0 (the official code would fail).

Reference: F. Radenović, A. Iscen, G. Tolias, Y. Avrithis, O. Chum, "Revisiting Oxford and
Paris: Large-Scale Image Retrieval Benchmarking", CVPR 2018.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rankax._core import validation
from rankax.retrieval.exact import as_embeddings

SETUPS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}


def _ids(entry: Mapping, keys: Sequence[str]) -> np.ndarray:
    parts = [np.asarray(entry.get(key, ()), dtype=np.int64).reshape(-1) for key in keys]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _query_scores(ranking: np.ndarray, ok: np.ndarray, junk: np.ndarray, kappas) -> tuple[float, np.ndarray]:
    """``(AP, P@kappas)`` of one query; ``ranking`` = database ids, best first."""
    places = np.arange(len(ranking))
    pos = places[np.isin(ranking, ok)]
    junk_places = places[np.isin(ranking, junk)]
    pos = pos - np.searchsorted(junk_places, pos)  # junk ranked before each positive
    if len(pos) == 0:
        return 0.0, np.zeros(len(kappas))
    j = np.arange(len(pos))
    p0 = np.where(pos == 0, 1.0, j / np.maximum(pos, 1))
    p1 = (j + 1) / (pos + 1)
    ap = float(np.sum((p0 + p1) / 2.0) / len(ok))
    pos1 = pos + 1
    prs = np.empty(len(kappas))
    for i, kappa in enumerate(kappas):
        kq = min(int(pos1.max()), int(kappa))
        prs[i] = np.sum(pos1 <= kq) / kq
    return ap, prs


def protocol_map(
    ranks: np.ndarray, positives: Sequence[np.ndarray], junk: Sequence[np.ndarray], kappas=(1, 5, 10)
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """mAP and mP@k of one setup.

    Returns ``(map, aps [Q], mpk [len(kappas)], prs [Q, len(kappas)])``; queries with no
    positive have NaN in ``aps``/``prs`` and are excluded from ``map``/``mpk``.
    """
    ranks = np.asarray(ranks)
    num_q = ranks.shape[1]
    aps = np.full(num_q, np.nan)
    prs = np.full((num_q, len(kappas)), np.nan)
    for i in range(num_q):
        if len(positives[i]) == 0:
            continue
        aps[i], prs[i] = _query_scores(ranks[:, i], positives[i], junk[i], kappas)
    counted = ~np.isnan(aps)
    if not counted.any():
        return float("nan"), aps, np.full(len(kappas), np.nan), prs
    return float(aps[counted].mean()), aps, prs[counted].mean(axis=0), prs


def _check_ranks(ranks: Any, num_queries: int) -> np.ndarray:
    """``ranks`` as ``[num_database, num_queries]`` distinct non-negative integer ids per column."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be [num_database, num_queries], got shape {ranks.shape}")
    if ranks.shape[1] != num_queries:
        raise ValueError(f"ranks has {ranks.shape[1]} query columns but gnd has {num_queries} entries")
    if not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks must hold database ids (np.argsort(-similarity, axis=0)), not scores: "
                         f"got dtype {ranks.dtype}")
    ordered = np.sort(ranks, axis=0)
    if ranks.size and (ordered[0].min() < 0 or (np.diff(ordered, axis=0) == 0).any()):
        raise ValueError("ranks must list distinct database ids >= 0 in each query's column (an argsort of "
                         "the similarities)")
    return ranks


#: The id lists of one query's ground truth: classic Oxford5k/Paris6k files, revisited ones.
CLASSIC_KEYS = ("ok", "junk")
REVISITED_KEYS = ("easy", "hard", "junk")


class GroundTruthError(ValueError):
    """A malformed Oxford/Paris ground truth (:func:`check_ground_truth`)."""


def check_ground_truth(
    gnd: Sequence[Any],
    *,
    kind: str | None = "revisited",
    num_database: int | None = None,
    num_queries: int | None = None,
    boxes: bool = False,
    source: str = "gnd",
) -> str:
    """Checks a ground truth before any image is embedded; returns its kind.

    ``gnd``: a non-empty list of one mapping per query, all of ``kind`` (``None``: either, as
    the first entry says): ``"revisited"`` entries hold id lists among :data:`REVISITED_KEYS`
    (a missing list is empty), ``"classic"`` ones an ``"ok"`` list and optionally ``"junk"``.
    One entry per query image when ``num_queries`` (a file's ``qimlist`` length) is given.
    Ids are integers in ``[0, num_database)`` (``num_database`` None: ``>= 0``); with
    ``boxes`` each entry has a ``"bbx"`` of four numbers ``(left, top, right, bottom)``,
    ``left < right`` and ``top < bottom``. An entry with other keys but none of ``"ok"``,
    ``"easy"``, ``"hard"`` is refused (a misnamed list: ``"good"``, ``"eazy"``). Errors are
    :class:`GroundTruthError` (a ValueError) naming ``source``, the query and the key.
    """
    sized = hasattr(gnd, "__len__") and not isinstance(gnd, Mapping | str | bytes)
    if not sized or not len(gnd):
        what = f"an empty {type(gnd).__name__}" if sized else type(gnd).__name__
        raise GroundTruthError(f"{source}: the ground truth must be a non-empty list of per-query dicts, "
                               f"got {what}")
    if num_queries is not None and num_queries != len(gnd):
        raise GroundTruthError(f"{source}: {num_queries} query images (qimlist) but {len(gnd)} ground-truth "
                               "entries (gnd)")
    for i, entry in enumerate(gnd):
        if not isinstance(entry, Mapping):
            raise GroundTruthError(f"{source}[{i}] must be a dict of id lists, got {type(entry).__name__}")
        this = "classic" if "ok" in entry else "revisited"
        kind = this if kind is None else kind
        keys = CLASSIC_KEYS if kind == "classic" else REVISITED_KEYS
        if this != kind:
            raise GroundTruthError(f"{source}[{i}] is a {this} entry but the ground truth is {kind}: its id "
                                   f"lists are {keys}, got keys {sorted(map(str, entry))}")
        for key in entry:
            if isinstance(key, str) and key.lower() in keys and key not in keys:
                raise GroundTruthError(f"{source}[{i}] has key {key!r}; the ground-truth keys are {keys} "
                                       "(lower case)")
        unknown = sorted(str(k) for k in entry if k not in (*keys, "bbx"))
        if unknown and not any(k in entry for k in ("ok", "easy", "hard")):
            raise GroundTruthError(f"{source}[{i}] has no positives list ('ok', or 'easy' and 'hard') but "
                                   f"keys {unknown}; the ground-truth keys are {keys} and 'bbx'")
        for key in keys:
            _check_ids(entry.get(key, ()), num_database, f"{source}[{i}][{key!r}]")
        if boxes:
            _check_box(entry.get("bbx"), f"{source}[{i}]['bbx']")
    return kind


def _check_ids(ids: Any, num_database: int | None, where: str) -> None:
    """Database ids: integers (whole-number floats too), in any array shape, as the setups
    read them (``_ids``); not booleans."""
    a = np.asarray(ids).reshape(-1)
    if a.size == 0:
        return
    whole = np.issubdtype(a.dtype, np.integer) or (
        np.issubdtype(a.dtype, np.floating) and bool(np.all(np.isfinite(a) & (a == np.round(a)))))
    if not whole:
        raise GroundTruthError(f"{where} must hold integer database ids, got {a.dtype} values such as "
                               f"{a[0]!r}")
    top = np.inf if num_database is None else num_database
    if a.min() < 0 or a.max() >= top:
        bound = "" if num_database is None else f" and < {num_database} (the images of imlist)"
        raise GroundTruthError(f"{where} has database id {a.min() if a.min() < 0 else a.max()}: ids count "
                               f"from 0{bound}")


def _check_box(box: Any, where: str) -> None:
    b = np.asarray(box if box is not None else (), dtype=object)
    ok = b.shape == (4,) and all(isinstance(v, int | float | np.integer | np.floating) for v in b)
    if not ok or not (float(b[0]) < float(b[2]) and float(b[1]) < float(b[3])):
        raise GroundTruthError(f"{where} must be (left, top, right, bottom) in pixels with left < right "
                               f"and top < bottom, got {box!r}")


def revisited_map(
    ranks: np.ndarray, gnd: Sequence[Mapping], kappas: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Revisited Oxford/Paris mAP and mP@k for the Easy, Medium and Hard setups.

    Args:
      ranks: ``[num_database, num_queries]`` database ids sorted by decreasing similarity, one
        column per query (``np.argsort(-sim, axis=0)`` of a ``[db, queries]`` similarity, as
        the official evaluation builds it). Rows may be truncated.
      gnd: one dict per query with integer id lists ``"easy"``, ``"hard"``, ``"junk"`` (a
        missing key is an empty list).
      kappas: the ``k`` of mP@k.

    Returns:
      ``{"easy/map", "easy/mp@k" (each k), "easy/num_empty", same for "medium" and
      "hard"}``: means over the queries whose positive set is non-empty in that setup
      (values in [0, 1]; the papers report them x 100); NaN in a setup where no query has a
      positive (``num_empty`` is then the number of queries).
    """
    ranks = _check_ranks(ranks, len(gnd))
    kappas = validation.check_ks(kappas, name="kappas")
    check_ground_truth(gnd)
    out: dict[str, float] = {}
    for setup, (ok_keys, junk_keys) in SETUPS.items():
        ok = [_ids(g, ok_keys) for g in gnd]
        junk = [_ids(g, junk_keys) for g in gnd]
        m, aps, mpk, _ = protocol_map(ranks, ok, junk, kappas)
        out[f"{setup}/map"] = m
        for kappa, v in zip(kappas, mpk, strict=True):
            out[f"{setup}/mp@{kappa}"] = float(v)
        out[f"{setup}/num_empty"] = int(np.isnan(aps).sum())
    return out


def revisited_from_embeddings(
    queries: np.ndarray, gallery: np.ndarray, gnd: Sequence[Mapping], kappas: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """:func:`revisited_map` of ``queries [Q, D]`` against ``gallery [N, D]`` by inner product.

    Ranks the whole database for every query (``np.argsort`` of the ``[N, Q]`` similarity, as
    the official evaluation does; ROxford5k/RParis6k have 5-6k images). ``gnd``: one
    ``{"easy", "hard", "junk"}`` dict of database ids per query (:func:`load_gnd`); ``kappas``:
    the cut-offs of the mean precision ``mP@k`` (revisitop's 1, 5, 10). Returns
    :func:`revisited_map`'s dict (mAP and mP@k of the Easy, Medium and Hard protocols).
    """
    queries, gallery = as_embeddings(queries, "queries"), as_embeddings(gallery, "gallery")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"queries [Q, D] and gallery [N, D] must share D, got {queries.shape} and {gallery.shape}"
        )
    if len(gnd) != len(queries):
        raise ValueError(f"gnd has {len(gnd)} queries but queries has {len(queries)} rows")
    ranks = np.argsort(-(gallery @ queries.T), axis=0, kind="stable")
    return {k: float(v) for k, v in revisited_map(ranks, gnd, kappas=kappas).items()}


def load_gnd(path: str) -> list[dict]:
    """Per-query ``{"easy", "hard", "junk"}`` id lists from the official ``gnd_*.pkl``
    (``{"gnd": [...], "imlist", "qimlist"}``) or a JSON list of such dicts.

    Raises:
      FileNotFoundError: ``path`` does not exist (the message says where the files come from).
      ValueError: a malformed ground truth (:func:`check_ground_truth`: ids outside ``imlist``,
        a ``qimlist`` of another length, boxes for some queries only), naming ``path``.
    """
    import json
    import os
    import pickle

    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"ground-truth file {path!r} does not exist; gnd_roxford5k.pkl / gnd_rparis6k.pkl come "
            "with the Revisited Oxford/Paris release (Radenović et al., CVPR 2018)"
        )
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
    else:
        with open(path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 - the benchmark's own ground-truth format
    if isinstance(data, dict) and "gnd" not in data:
        raise GroundTruthError(f"{path}: no 'gnd' key (a ground-truth file holds 'gnd', 'imlist', "
                               f"'qimlist'); got keys {sorted(map(str, data))}")
    gnd = data["gnd"] if isinstance(data, dict) else data
    num_database = len(data["imlist"]) if isinstance(data, dict) and "imlist" in data else None
    num_queries = len(data["qimlist"]) if isinstance(data, dict) and "qimlist" in data else None
    # boxes for all queries or for none
    boxes = isinstance(gnd, list | tuple) and any(isinstance(g, Mapping) and "bbx" in g for g in gnd)
    check_ground_truth(gnd, num_database=num_database, num_queries=num_queries, boxes=boxes, source=path)
    return [dict(g) for g in gnd]
