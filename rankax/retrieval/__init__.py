"""Retrieval evaluation: exact blocked kNN and ScaNN, every metric of the papers, evaluators.

Main entry points
-----------------
``evaluate(queries, query_labels, gallery=None, gallery_labels=None, *, backend="exact",
ks=(1, 2, 4, 8), ...) -> dict``
    R@k, MAP@R, R-precision, full-gallery mAP (+ H-AP, NDCG, ASI for ``[N, L]`` label
    paths), ``num_queries`` and ``num_queries_without_positive``. ``gallery=None``: the query
    set is the gallery, self excluded. See :func:`rankax.retrieval.evaluation.evaluate`.

``evaluate_levels(queries, query_labels, ..., levels=(0, 1, 2))``
    the binary metrics at each label level and their means over the levels (the DyML
    evaluation of SupRank/HAPPIER). See :func:`rankax.retrieval.evaluation.evaluate_levels`.

``knn(queries, gallery=None, *, k)`` / ``scann_knn(...)`` / ``scann_recall(...)``
    exact blocked top-k in JAX, ScaNN top-k, and ScaNN's recall against exact.

``revisited_map(ranks, gnd, kappas=(1, 5, 10))``
    the Revisited Oxford/Paris protocol (Easy / Medium / Hard mAP and mP@k);
    ``revisited_from_embeddings`` ranks by inner product first; ``load_gnd`` reads the
    official ground truth; ``RevisitedEvaluator`` wraps it as an evaluator.

``LandmarkEvaluator(benchmarks, whitening_images=..., scales=...)`` (:mod:`rankax.retrieval.landmarks`)
    the landmark protocol of the listwise-AP paper: original-resolution images, queries
    cropped to their box, learned PCA whitening (power 0.25), optional multi-scale, and
    Oxford5k / Paris6k / ROxford5k / RParis6k in one run.

Evaluator interface (for the training loop and ``experiments/evaluate.py``)
--------------------------------------------------------------------------
::

    evaluator = rankax.retrieval.RetrievalEvaluator(
        inputs, labels,                      # numpy: [N, ...] model inputs, [N] or [N, L] labels
        gallery_inputs=None, gallery_labels=None,   # None: query set = gallery, self excluded
        batch_size=256, backend="exact", ks=(1, 2, 4, 8), normalize=False, prefix="",
    )
    metrics = evaluator.run(embed_fn)        # dict[str, float]

``embed_fn`` maps one numpy batch of inputs ``[b, ...]`` to embeddings ``[b, D]`` (numpy or
jax array). The training loop passes e.g. ``lambda x: model.apply(params, x)``; the CLI passes
the identity on precomputed embeddings. ``run`` embeds the inputs batch by batch (the last
batch padded to ``batch_size`` so that a jitted ``embed_fn`` compiles once), calls
:func:`evaluate` and returns its scalar metrics, keys prefixed by ``prefix``.
"""

from rankax.retrieval.evaluation import evaluate, evaluate_levels
from rankax.retrieval.evaluator import RetrievalEvaluator, RevisitedEvaluator
from rankax.retrieval.exact import knn
from rankax.retrieval.landmarks import LandmarkEvaluator
from rankax.retrieval.revisited import load_gnd, revisited_from_embeddings, revisited_map
from rankax.retrieval.scann_backend import scann_knn, scann_recall

__all__ = [
    "LandmarkEvaluator",
    "RetrievalEvaluator",
    "RevisitedEvaluator",
    "evaluate",
    "evaluate_levels",
    "knn",
    "load_gnd",
    "revisited_from_embeddings",
    "revisited_map",
    "scann_knn",
    "scann_recall",
]
