"""``RetrievalEvaluator``: embed a dataset with any function, then :func:`evaluate` it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rankax.retrieval.evaluation import evaluate
from rankax.retrieval.revisited import revisited_from_embeddings

EmbedFn = Callable[[np.ndarray], Any]


def _rows(inputs: Any, start: int, stop: int) -> np.ndarray:
    if hasattr(inputs, "get_batch"):  # a rankax.data Source: test-time preprocessing
        return np.asarray(inputs.get_batch(np.arange(start, min(stop, len(inputs))), train=False))
    return inputs[start:stop]


def embed_in_batches(embed_fn: EmbedFn, inputs: Any, batch_size: int) -> np.ndarray:
    """``embed_fn`` over ``inputs`` in batches of ``batch_size``; the last batch is padded
    (repeating its last row) so a jitted ``embed_fn`` sees one shape, and the padding dropped.

    ``inputs`` is an array ``[N, ...]`` or a :class:`rankax.data.Source` (read with
    ``get_batch(indices, train=False)``, so datasets that do not fit in memory work too)."""
    if not hasattr(inputs, "get_batch"):
        inputs = np.asarray(inputs)
    outs = []
    for start in range(0, len(inputs), batch_size):
        batch = _rows(inputs, start, start + batch_size)
        m = len(batch)
        if m < batch_size and len(inputs) > batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - m, axis=0)])
        emb = np.asarray(embed_fn(batch), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(batch):
            raise ValueError(
                f"embed_fn must map a batch [{len(batch)}, ...] to [{len(batch)}, D] embeddings, "
                f"got shape {emb.shape}"
            )
        outs.append(emb[:m])
    return np.concatenate(outs)


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
        **evaluate_kwargs: Any,
    ):
        if (gallery_inputs is None) != (gallery_labels is None):
            raise ValueError("gallery_inputs and gallery_labels must be given together")
        if len(inputs) != len(labels):
            raise ValueError(f"labels has {len(labels)} rows but inputs has {len(inputs)}")
        if gallery_inputs is not None and len(gallery_inputs) != len(gallery_labels):
            raise ValueError(
                f"gallery_labels has {len(gallery_labels)} rows but gallery_inputs has {len(gallery_inputs)}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.inputs, self.labels = inputs, labels
        self.gallery_inputs, self.gallery_labels = gallery_inputs, gallery_labels
        self.batch_size = batch_size
        self.prefix = prefix
        self.evaluate_kwargs = dict(backend=backend, ks=tuple(ks), normalize=normalize, **evaluate_kwargs)

    def run(self, embed_fn: EmbedFn) -> dict[str, float]:
        """Embeds the inputs with ``embed_fn`` and returns the metrics of :func:`evaluate`."""
        queries = embed_in_batches(embed_fn, self.inputs, self.batch_size)
        gallery = None
        if self.gallery_inputs is not None:
            gallery = embed_in_batches(embed_fn, self.gallery_inputs, self.batch_size)
        result = evaluate(queries, self.labels, gallery, self.gallery_labels, **self.evaluate_kwargs)
        result.pop("per_query", None)
        return {f"{self.prefix}{key}": value for key, value in result.items()}


class RevisitedEvaluator:
    """The Revisited Oxford/Paris evaluation as an object with ``run(embed_fn)``.

    Args:
      query_inputs, gallery_inputs: arrays or ``rankax.data`` Sources, in the order of the
        ground truth's ``qimlist`` / ``imlist``.
      gnd: per-query dicts ``{"easy", "hard", "junk"}`` of gallery ids (see
        :func:`rankax.retrieval.revisited.load_gnd`).
      batch_size: inputs per ``embed_fn`` call; kappas: the ``k`` of mP@k; prefix: key prefix.
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
    ):
        if len(gnd) != len(query_inputs):
            raise ValueError(f"gnd has {len(gnd)} queries but query_inputs has {len(query_inputs)} rows")
        self.query_inputs, self.gallery_inputs, self.gnd = query_inputs, gallery_inputs, list(gnd)
        self.batch_size, self.kappas, self.prefix = batch_size, tuple(kappas), prefix

    def run(self, embed_fn: EmbedFn) -> dict[str, float]:
        """``{"easy/map", "medium/map", "hard/map", ".../mp@k", ".../num_empty"}``."""
        queries = embed_in_batches(embed_fn, self.query_inputs, self.batch_size)
        gallery = embed_in_batches(embed_fn, self.gallery_inputs, self.batch_size)
        result = revisited_from_embeddings(queries, gallery, self.gnd, self.kappas)
        return {f"{self.prefix}{key}": value for key, value in result.items()}
