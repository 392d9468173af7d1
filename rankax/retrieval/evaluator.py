"""``RetrievalEvaluator``: embed a dataset with any function, then :func:`evaluate` it."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from rankax._core import validation
from rankax.retrieval.evaluation import (
    check_level_labels,
    check_levels,
    check_options,
    evaluate,
    evaluate_levels,
    resolve_backend,
)
from rankax.retrieval.revisited import revisited_from_embeddings

EmbedFn = Callable[[np.ndarray], Any]


@dataclasses.dataclass(frozen=True)
class Share:
    """Process ``index`` of ``count`` embeds only its part of every evaluation batch.

    ``gather([per, D]) -> [count * per, D]``: every process's part, concatenated in process
    order (a collective every process calls once per batch, e.g.
    :func:`rankax.train.distributed.all_gather_rows`). See :func:`embed_in_batches`."""

    index: int
    count: int
    gather: Callable[[np.ndarray], np.ndarray]

    def __post_init__(self):
        if int(self.count) < 1 or not 0 <= int(self.index) < int(self.count):
            raise ValueError(f"Share needs 0 <= index < count, got index={self.index}, count={self.count}")


def _batches(
    inputs: Any, batch_size: int, workers: int, raw: bool, share: tuple[int, int]
) -> Iterator[np.ndarray]:
    from rankax.data import loader

    if hasattr(inputs, "get_batch"):  # a rankax.data Source: test-time preprocessing
        return loader.eval_batches(inputs, batch_size, workers=workers, raw=raw, share=share)
    n = -(-len(inputs) // batch_size)
    return (inputs[loader.share_rows(b, batch_size, len(inputs), *share)] for b in range(n))


def embed_in_batches(
    embed_fn: EmbedFn,
    inputs: Any,
    batch_size: int,
    *,
    workers: int = 0,
    raw: bool = False,
    share: Share | None = None,
) -> np.ndarray:
    """``[N, D]`` float32 (float64 if ``embed_fn`` returns it): ``embed_fn`` over ``inputs`` in
    batches of ``batch_size``; the last batch is
    padded (repeating its last row) so a jitted ``embed_fn`` sees one shape, and the padding
    dropped.

    ``inputs`` is an array ``[N, ...]`` or a :class:`rankax.data.Source`, read with test-time
    preprocessing through :func:`rankax.data.loader.eval_batches` (so datasets that do not fit
    in memory work too): decoded ``workers`` processes ahead (0: in a background thread), as
    uint8 pixels when ``raw`` (``embed_fn`` then normalises them, e.g. on the device) or
    normalised float32 (default).

    ``share`` (several processes): every process calls this with the same arguments; of each
    batch of ``b = min(batch_size, N)`` items, process ``share.index`` reads and embeds only
    its ``ceil(b / share.count)`` rows (:func:`rankax.data.loader.share_rows`), and
    ``share.gather`` assembles the batch's embeddings, so every process returns all ``[N, D]``
    -- the rows a one-process call returns, as ``embed_fn`` embeds each row on its own."""
    from rankax.data import loader

    if not hasattr(inputs, "get_batch"):
        inputs = np.asarray(inputs)
    n = len(inputs)
    if n == 0:
        raise ValueError("embed_in_batches needs at least one input, got an empty set")
    split = share is not None and share.count > 1
    parts = (share.index, share.count) if split else (0, 1)
    size = min(int(batch_size), n)
    outs = []
    batches = _batches(inputs, size, workers, raw, parts)
    try:
        for b, batch in enumerate(batches):
            m = min(size, n - b * size)
            if not split:
                batch = loader.pad_rows(batch, size)
            emb = np.asarray(embed_fn(batch))
            if emb.dtype != np.float64:  # float64 stays: evaluate reports values beyond float32's range
                emb = emb.astype(np.float32, copy=False)
            if emb.ndim != 2 or emb.shape[0] != len(batch):
                raise ValueError(
                    f"embed_fn must map a batch [{len(batch)}, ...] to [{len(batch)}, D] embeddings, "
                    f"got shape {emb.shape}"
                )
            outs.append((np.asarray(share.gather(emb)) if split else emb)[:m])
    finally:  # the reading workers stop now, also on an error
        loader.close(batches)
    return np.concatenate(outs)


class Embedder:
    """:func:`embed_in_batches` of a query set and an optional gallery with fixed reading
    options (``share``: this process's part of every batch, see :func:`embed_in_batches`);
    ``images_per_s`` holds the rate of the last call (decoding included)."""

    def __init__(self, batch_size: int, workers: int = 0, raw: bool = False, share: Share | None = None):
        batch_size = validation.check_int("batch_size", batch_size)  # numpy ints too
        self.batch_size, self.workers, self.raw, self.share = batch_size, workers, raw, share
        self.images_per_s: float | None = None

    def __call__(self, embed_fn: EmbedFn, queries: Any, gallery: Any = None):
        t = time.perf_counter()
        kw = dict(workers=self.workers, raw=self.raw, share=self.share)
        q = embed_in_batches(embed_fn, queries, self.batch_size, **kw)
        g = None if gallery is None else embed_in_batches(embed_fn, gallery, self.batch_size, **kw)
        self.images_per_s = (len(q) + (0 if g is None else len(g))) / max(time.perf_counter() - t, 1e-9)
        return q, g


#: :func:`evaluate`'s keywords that ``RetrievalEvaluator(**evaluate_kwargs)`` passes on.
_EVALUATE_OPTIONS = tuple(p for p in inspect.signature(evaluate).parameters if p not in (
    "queries", "query_labels", "gallery", "gallery_labels", "backend", "ks", "normalize"))


def _check_evaluate_kwargs(kwargs: dict[str, Any]) -> None:
    """``kwargs`` are keywords of :func:`evaluate` (the ones RetrievalEvaluator sets excluded)."""
    known = list(_EVALUATE_OPTIONS)
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, [*known, "batch_size", "gallery_inputs", "workers"], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"RetrievalEvaluator got an unknown argument {key!r}{hint} (evaluate options: "
                            f"{', '.join(known)})")


class RetrievalEvaluator:
    """A retrieval evaluation the training loop calls and the CLI can call alone.

    Args:
      inputs: ``[N, ...]`` model inputs of the query set (numpy), or a ``rankax.data`` Source.
      labels: ``[N]`` class ids or ``[N, L]`` label paths.
      gallery_inputs, gallery_labels: a separate gallery; None (default) = the query set is
        the gallery, each query excluded from its own list.
      batch_size: inputs per ``embed_fn`` call.
      backend, ks, normalize, **evaluate_kwargs: passed to :func:`evaluate`.
      prefix: prepended to every metric name (e.g. ``"test/"``).
      levels: label levels to evaluate one by one with :func:`evaluate_levels` (their binary
        metrics and the means over them, DyML's protocol); empty (default): :func:`evaluate`.
      level_means: with ``levels``, :func:`evaluate_levels`' ``means`` (default True; False:
        the plain names are :func:`evaluate`'s on the labels as given, the levels' beside them).
      workers, raw: how Sources are read (see :func:`embed_in_batches`); after ``run``,
        ``images_per_s`` is the embedding rate (decoding included).
      share: several processes: each reads and embeds its part of every batch, and all get
        every embedding (see :func:`embed_in_batches`); None (default): all of it here.

    Example::

        ev = RetrievalEvaluator(x_test, y_test, batch_size=512)
        metrics = ev.run(lambda x: model.apply(params, x))   # {"recall@1": ..., ...}
    """

    def __init__(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        *,
        gallery_inputs: np.ndarray | None = None,
        gallery_labels: np.ndarray | None = None,
        batch_size: int = 256,
        backend: str = "exact",
        ks: Sequence[int] = (1, 2, 4, 8),
        normalize: bool = False,
        prefix: str = "",
        levels: Sequence[int] = (),
        level_means: bool = True,
        workers: int = 0,
        raw: bool = False,
        share: Share | None = None,
        **evaluate_kwargs: Any,
    ):
        if (gallery_inputs is None) != (gallery_labels is None):
            raise ValueError("gallery_inputs and gallery_labels must be given together")
        if len(inputs) != len(labels):
            raise ValueError(f"labels has {len(labels)} rows but inputs has {len(inputs)}")
        for name, rows in (("inputs", inputs), ("gallery_inputs", gallery_inputs)):
            if rows is not None and len(rows) == 0:
                raise ValueError(f"{name} is empty: nothing to embed and evaluate")
        if gallery_inputs is not None and len(gallery_inputs) != len(gallery_labels):
            raise ValueError(
                f"gallery_labels has {len(gallery_labels)} rows but gallery_inputs has {len(gallery_inputs)}"
            )
        _check_evaluate_kwargs(evaluate_kwargs)
        ks, _ = check_options(backend=backend, ks=ks, **{
            k: v for k, v in evaluate_kwargs.items() if k in inspect.signature(check_options).parameters
        })
        self.inputs, self.labels = inputs, labels
        self.gallery_inputs, self.gallery_labels = gallery_inputs, gallery_labels
        self.embedder = Embedder(batch_size, workers, raw, share)
        self.batch_size = self.embedder.batch_size
        self.prefix = prefix
        self.levels = tuple(levels)
        if self.levels:  # checked against the labels now, not after embedding
            check_levels(self.levels, check_level_labels(labels, gallery_labels))
        if not isinstance(level_means, bool | np.bool_):
            raise TypeError(f"level_means must be True or False, got {level_means!r}")
        self.level_means = level_means
        self.evaluate_kwargs = dict(backend=backend, ks=tuple(ks), normalize=normalize, **evaluate_kwargs)

    def run(self, embed_fn: EmbedFn) -> dict[str, float]:
        """Embeds the inputs with ``embed_fn`` and returns the metrics of :func:`evaluate`
        (:func:`evaluate_levels` with ``levels``). Sets ``backend_used``: ``"exact"`` or
        ``"scann"``, what ``backend="auto"`` resolved to."""
        queries, gallery = self.embedder(embed_fn, self.inputs, self.gallery_inputs)
        if self.levels:
            result = evaluate_levels(queries, self.labels, gallery, self.gallery_labels, levels=self.levels,
                                     means=self.level_means, **self.evaluate_kwargs)
        else:
            result = evaluate(queries, self.labels, gallery, self.gallery_labels, **self.evaluate_kwargs)
        result.pop("per_query", None)
        kw = self.evaluate_kwargs  # the inputs are valid: evaluate has checked them
        self.backend_used = resolve_backend(  # each level is evaluated on one-level label paths
            kw["backend"], np.shape(queries), np.shape(queries if gallery is None else gallery),
            label_paths=bool(self.levels and self.level_means) or np.ndim(self.labels) == 2,
            mesh=kw.get("mesh"),
            scann_config=kw.get("scann_config", "auto"), scann_options=kw.get("scann_options"),
        )
        return {f"{self.prefix}{key}": value for key, value in result.items()}


class RevisitedEvaluator:
    """The Revisited Oxford/Paris evaluation as an object with ``run(embed_fn)``.

    Args:
      query_inputs, gallery_inputs: arrays or ``rankax.data`` Sources, in the order of the
        ground truth's ``qimlist`` / ``imlist``.
      gnd: per-query dicts ``{"easy", "hard", "junk"}`` of gallery ids (see
        :func:`rankax.retrieval.revisited.load_gnd`).
      batch_size: inputs per ``embed_fn`` call; kappas: the ``k`` of mP@k; prefix: key prefix.
      workers, raw, share: how Sources are read (see :func:`embed_in_batches`).
    """

    def __init__(
        self,
        query_inputs: Any,
        gallery_inputs: Any,
        gnd: Sequence[Any],
        *,
        batch_size: int = 64,
        kappas: Sequence[int] = (1, 5, 10),
        prefix: str = "",
        workers: int = 0,
        raw: bool = False,
        share: Share | None = None,
    ):
        if len(gnd) != len(query_inputs):
            raise ValueError(f"gnd has {len(gnd)} queries but query_inputs has {len(query_inputs)} rows")
        self.query_inputs, self.gallery_inputs, self.gnd = query_inputs, gallery_inputs, list(gnd)
        self.kappas = validation.check_ks(kappas, name="kappas")
        self.embedder = Embedder(batch_size, workers, raw, share)
        self.batch_size, self.prefix = self.embedder.batch_size, prefix

    def run(self, embed_fn: EmbedFn) -> dict[str, float]:
        """``{"easy/map", "medium/map", "hard/map", ".../mp@k", ".../num_empty"}``."""
        queries, gallery = self.embedder(embed_fn, self.query_inputs, self.gallery_inputs)
        result = revisited_from_embeddings(queries, gallery, self.gnd, self.kappas)
        return {f"{self.prefix}{key}": value for key, value in result.items()}
