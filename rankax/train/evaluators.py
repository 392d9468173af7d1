"""Evaluation of a train state: the evaluator of ``config.eval_protocol`` chosen from a registry,
the metrics it reports, and the restore of a checkpoint to evaluate.

:data:`EVALUATORS` maps a protocol name to an :class:`EvalProtocol`: how to build its
evaluator from the config and the dataset (an object with ``run(embed_fn) -> dict``), and the
metric names it returns. A new protocol is one entry.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from rankax._core.normalize import l2_normalize_host
from rankax.data.base import RetrievalDataset, Source
from rankax.train import checkpointing, distributed, input_pipeline
from rankax.train import state as state_lib
from rankax.train.state import TrainState
from rankax.train.step import embed_fn

Config = ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """``build(config, data)`` -> an evaluator (``run(embed_fn) -> dict``);
    ``keys(config, label_shape)`` -> the metric names its ``run`` returns for test labels whose
    items have the shape ``label_shape`` (``()``: class ids; ``(L,)``: label paths)."""

    build: Callable[[Config, RetrievalDataset], Any]
    keys: Callable[[Config, tuple[int, ...]], set[str]]


def _retrieval_evaluator(config: Config, data: RetrievalDataset) -> Any:
    """:class:`rankax.retrieval.RetrievalEvaluator` on the test split (query = gallery, self
    excluded, unless the dataset has a gallery)."""
    from rankax import retrieval

    gallery_labels = None if data.gallery is None else data.gallery.labels
    return retrieval.RetrievalEvaluator(
        data.test,
        data.test.labels,
        gallery_inputs=data.gallery,
        gallery_labels=gallery_labels,
        batch_size=int(config.eval_batch_size),
        backend=config.eval_backend,
        ks=tuple(config.eval_ks),
        levels=eval_levels(config, data.test.labels),
        level_means=bool(config.get("eval_level_means", True)),
        **input_pipeline.eval_reading(config, data),
    )


def eval_levels(config: Config, labels: Any) -> tuple[int, ...]:
    """``config.eval_levels`` checked against the columns of the test labels (``()``: none)."""
    from rankax.retrieval.evaluation import check_level_labels, check_levels

    levels = tuple(config.get("eval_levels", ()) or ())
    return check_levels(levels, check_level_labels(labels, None), "config.eval_levels") if levels else ()


def _retrieval_keys(config: Config, label_shape: tuple[int, ...]) -> set[str]:
    """R@k, MAP@R, R-precision; with the exact backend (or ``"auto"``, which resolves to it
    for label paths and levels) mAP, and H-AP/NDCG/ASI for label paths. With
    ``config.eval_levels``: those of :func:`rankax.retrieval.evaluate_levels` (``multi/*``
    for paths of more than one level; with ``config.eval_level_means=False`` the plain names
    of the labels as given, no ``multi/*``)."""
    levels = tuple(config.get("eval_levels", ()) or ())
    paths = len(label_shape) == 1

    def binary(exact: bool) -> set[str]:
        recalls = {f"recall@{k}" for k in config.eval_ks}
        return recalls | {"map@r", "r_precision"} | ({"map"} if exact else set())

    # "auto" picks exact search for label paths, and levels are evaluated as one-level paths
    exact_for = lambda one_level_paths: config.eval_backend == "exact" or (
        config.eval_backend == "auto" and one_level_paths)
    plain = binary(exact_for(paths)) | ({"hap", "ndcg", "asi"} if exact_for(paths) and paths else set())
    if not levels:
        return plain
    per_level = binary(exact_for(True)) | ({"asi"} if exact_for(True) else set())
    by_level = {f"level{level}/{key}" for level in levels for key in per_level}
    if not config.get("eval_level_means", True):  # the labels as given, the levels beside them
        return plain | by_level
    several = exact_for(True) and paths and label_shape[0] > 1
    return per_level | by_level | ({"multi/hap", "multi/ndcg", "multi/asi"} if several else set())


def _revisited_evaluator(config: Config, data: RetrievalDataset) -> Any:
    """:class:`rankax.retrieval.RevisitedEvaluator` with the ground truth of
    ``config.revisited_gnd``: the test split holds the queries and the gallery the database, in
    the ground truth's order. Queries read from image files are cut to the ground truth's
    ``bbx`` boxes before the test transform, as the protocol asks (revisitop; SupRank's
    ``suprank/datasets/revisited_dataset.py``), with a warning where the ground truth has no
    boxes (a JSON one, say); in-memory query arrays are taken as given."""
    from rankax import retrieval
    from rankax.data.image_source import ImageSource

    if data.gallery is None:
        raise ValueError(
            "config.eval_protocol='revisited' needs a dataset with a gallery (query/gallery CSVs)"
        )
    if not config.revisited_gnd:
        raise ValueError("config.revisited_gnd must name the ground-truth file (gnd_roxford5k.pkl)")
    gnd = retrieval.load_gnd(config.revisited_gnd)
    queries = data.test
    if isinstance(queries, ImageSource) and len(gnd) == len(queries):  # else the evaluator's error
        if "bbx" in gnd[0]:  # load_gnd: boxes for every query or for none
            queries = queries.with_boxes(np.array([g["bbx"] for g in gnd], np.float64))
        else:
            warnings.warn(f"config.revisited_gnd={config.revisited_gnd!r} has no query boxes ('bbx'): "
                          "the queries are embedded whole, not cropped as the revisited protocol does",
                          stacklevel=2)
    return retrieval.RevisitedEvaluator(
        queries,
        data.gallery,
        gnd,
        batch_size=int(config.eval_batch_size),
        kappas=tuple(config.eval_ks),
        **input_pipeline.eval_reading(config, data),
    )


def _revisited_keys(config: Config, label_shape: tuple[int, ...]) -> set[str]:
    """mAP and mP@k of the easy, medium and hard protocols."""
    metrics = ("map", *(f"mp@{k}" for k in config.eval_ks))
    return {f"{s}/{m}" for s in ("easy", "medium", "hard") for m in metrics}


def _landmarks_section(config: Config) -> dict:
    section = config.get("landmarks", None)
    if not section or not section.get("root"):
        raise ValueError(
            "config.eval_protocol='landmarks' needs config.landmarks.root: the folder holding "
            "oxford5k/ and paris6k/ (their gnd_*.pkl and jpg/), see docs/evaluation.md"
        )
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def _landmarks_evaluator(config: Config, data: RetrievalDataset) -> Any:
    """:class:`rankax.retrieval.LandmarkEvaluator` from ``config.landmarks``
    (:func:`rankax.retrieval.landmarks.evaluator_from_config`): the listwise-AP paper's
    protocol -- original-resolution images, bounding-box-cropped queries, a learned PCA
    whitening (power 0.25), optional multi-scale, Oxford5k / Paris6k / ROxford5k / RParis6k
    in one evaluation. The dataset's own test split is not used."""
    from rankax.retrieval import landmarks

    return landmarks.evaluator_from_config(_landmarks_section(config))


def _landmarks_keys(config: Config, label_shape: tuple[int, ...]) -> set[str]:
    """``<set>/map`` of Oxford5k/Paris6k; ``<set>/<easy|medium|hard>/{map, mp@1, mp@5, mp@10,
    num_empty}`` of ROxford5k/RParis6k."""
    from rankax.retrieval import landmarks

    names = tuple(_landmarks_section(config).get("benchmarks") or landmarks.BENCHMARKS)
    keys: set[str] = set()
    for name in names:
        if name in ("oxford5k", "paris6k"):
            keys.add(f"{name}/map")
            continue
        metrics = ("map", "mp@1", "mp@5", "mp@10", "num_empty")
        keys |= {f"{name}/{s}/{m}" for s in ("easy", "medium", "hard") for m in metrics}
    return keys


EVALUATORS: dict[str, EvalProtocol] = {
    "retrieval": EvalProtocol(_retrieval_evaluator, _retrieval_keys),
    "revisited": EvalProtocol(_revisited_evaluator, _revisited_keys),
    "landmarks": EvalProtocol(_landmarks_evaluator, _landmarks_keys),
}


def _protocol(config: Config) -> EvalProtocol:
    name = config.get("eval_protocol", "retrieval")
    if name not in EVALUATORS:
        known = " or ".join(repr(n) for n in EVALUATORS)
        raise ValueError(f"config.eval_protocol must be {known}, got {name!r}")
    return EVALUATORS[name]


def evaluation_keys(config: Config, label_shape: tuple[int, ...]) -> set[str]:
    """The metric names :func:`evaluate_state` returns for ``config`` (to check config keys
    such as ``best_metric`` before training rather than after)."""
    if not isinstance(label_shape, tuple | list):
        raise TypeError(f"evaluation_keys: label_shape is the shape of one test label, np.shape(labels)[1:] "
                        f"(() for class ids, (L,) for label paths), got {label_shape!r}")
    return _protocol(config).keys(config, tuple(label_shape))


def make_evaluator(config: Config, data: RetrievalDataset) -> Any:
    """The evaluator object of ``config.eval_protocol`` (``run(embed_fn) -> dict``), from
    :data:`EVALUATORS`: ``"retrieval"`` (default), ``"revisited"`` or ``"landmarks"``."""
    return _protocol(config).build(config, data)


def embed_source(
    state: TrainState, source: Source, batch_size: int = 256, *, workers: int = 0, devices: Any = None
) -> np.ndarray:
    """``[N, D]`` float32 embeddings of every item of ``source`` (test-time preprocessing; an
    image source is decoded by ``workers`` processes and normalised on the device), each batch
    split over ``devices`` (see :func:`rankax.train.step.embed_fn`)."""
    from rankax.retrieval.evaluator import embed_in_batches

    raw = input_pipeline.is_image_source(source)
    fn = embed_fn(state, input_pipeline.normalizer(source) if raw else None, devices)
    return embed_in_batches(fn, source, batch_size, workers=workers if raw else 0, raw=raw)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of ``metrics`` as floats (per-query arrays dropped)."""
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def evaluate_state(
    config: Config, state: TrainState, data: RetrievalDataset, evaluator: Any = None
) -> dict[str, float]:
    """Scalar metrics of ``state``'s model by ``evaluator`` (default: :func:`make_evaluator`),
    each batch of images embedded data parallel over this process's devices of the mesh
    (``config.num_devices``)."""
    evaluator = make_evaluator(config, data) if evaluator is None else evaluator
    # [multihost] the evaluator reads and embeds this process's share of every batch
    # (input_pipeline.eval_reading), split over its devices; every process gets the whole gallery
    embed = embed_fn(state, input_pipeline.normalizer(data.test), state_lib.local_devices(config))
    return scalars(evaluator.run(embed))


def raw_pixel_metrics(config: Config, data: RetrievalDataset) -> dict[str, float]:
    """Retrieval on the L2-normalised raw pixels of an in-memory test split (the baseline a
    trained embedding must beat)."""
    from rankax import retrieval

    flat = data.test.images.reshape(len(data.test), -1).astype(np.float32)
    flat = l2_normalize_host(flat)
    raw = retrieval.RetrievalEvaluator(
        flat, data.test.labels, batch_size=len(flat), backend=config.eval_backend, ks=tuple(config.eval_ks)
    )
    return scalars(raw.run(np.asarray))


def best_step(history: list[dict[str, Any]], best_metric: str, has: Callable[[int], bool]) -> int | None:
    """The step of the evaluation with the highest ``best_metric`` among the evaluated steps
    of ``history`` that have a checkpoint (``has(step)``; the earliest on a tie, as a
    keep-if-strictly-better rule does; NaN values never win); ``None`` if there is none."""
    key = f"eval/{best_metric}"
    candidates = [
        (float(h[key]), -int(h["step"]))
        for h in history
        if key in h and int(h["step"]) > 0 and np.isfinite(h[key]) and has(int(h["step"]))
    ]
    return -max(candidates)[1] if candidates else None


def _restore_readonly(
    config: Config, ckpt: checkpointing.Checkpointer, state: TrainState, step: int | None, directory: str
) -> TrainState:
    """Checkpoint ``step``; by default the model the run reports: the newest readable
    checkpoint, or with ``config.model_selection="best"`` the best step of its history."""
    if step is not None:
        return ckpt.restore(state, int(step))[0]
    steps = ckpt.steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    restored, history = ckpt.restore_latest(state)
    if ckpt.restored_step is None:
        raise FileNotFoundError(f"no readable checkpoint in {directory} (unreadable steps: {steps})")
    if config.get("model_selection", "last") == "best":
        chosen = best_step(history, config.best_metric, ckpt.has)
        if chosen is not None and chosen != ckpt.restored_step:
            if distributed.is_main():
                print(f"Model selection 'best': evaluating step {chosen}, the best {config.best_metric} "
                      f"(not the newest step {ckpt.restored_step})")
            return ckpt.restore(state, chosen)[0]
    return restored


def evaluation_state(config: Config, data: RetrievalDataset, *, pretrained: bool = True) -> TrainState:
    """The untrained state of ``config`` on ``data`` for evaluation: the model as training builds
    it, and an optimizer that is never stepped, built on a nominal clock (epoch ``e`` starts at
    step ``e``) instead of the training sampler's. The sampler is not built: a dataset override
    (another protocol, say) can leave a training split the run's batch settings cannot sample,
    which the evaluation of its test split does not need."""
    return state_lib.initial_state(config, data, pretrained=pretrained, epoch_start=int)


def restore_for_evaluation(
    config: Config, workdir: str, step: int | None = None
) -> tuple[TrainState, RetrievalDataset]:
    """The model of checkpoint ``step`` of ``workdir`` (default: the model the run reports, the
    newest readable checkpoint or, under ``config.model_selection="best"``, its best step) and
    the dataset of ``config``. Read-only: nothing in ``workdir`` is moved or removed, so it is safe
    next to a running training job (an unreadable newest step is skipped with a warning).

    The returned state holds the checkpoint's step and model variables (``params``,
    ``batch_stats``) only; its optimizer state, RNG, cross-batch memory and loss-term state
    (proxies) are ``config``'s untrained ones, which evaluation does not use (they may have other
    shapes under a config override). To read a checkpoint whole, use
    ``checkpointing.Checkpointer(directory, config, read_only=True).restore(template, step)``.

    Raises:
      FileNotFoundError: ``workdir/checkpoints`` holds no readable checkpoint.
      CheckpointReadError: ``step`` was given and is missing, incomplete or unreadable (names
        the step and path; the orbax/tensorstore error is chained).
    """
    data = input_pipeline.load(config)
    state = evaluation_state(config, data, pretrained=False)  # a template: restored below
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints directory in {workdir!r} (expected {directory})")
    # The model only: a dataset override may resize what evaluation never uses (the proxies of
    # a loss term, sized by the number of training classes).
    ckpt = checkpointing.Checkpointer(directory, config, read_only=True, model_only=True)
    try:
        state = _restore_readonly(config, ckpt, state, step, directory)
    finally:
        ckpt.close()
    return state, data
