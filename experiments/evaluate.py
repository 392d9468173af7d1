"""Evaluate retrieval from precomputed embeddings or from a training checkpoint.

    python -m experiments.evaluate --embeddings test.npz [--gallery gallery.npz] \
        [--backend auto|exact|scann] [--scann-config auto|brute_force|tree_ah] \
        [--ks 1,2,4,8] [--normalize] [--output metrics.json]

Input files are ``.npz`` archives with two arrays:

* ``embeddings``: ``[N, D]`` float embeddings;
* ``labels``: ``[N]`` integer class ids, or ``[N, L]`` integer label paths (column 0 the
  finest level) for the hierarchical metrics (H-AP, NDCG, ASI).

Without ``--gallery`` the file is both the queries and the gallery, each query excluded from
its own list (SOP/CUB/Cars/iNat); with it, the first file holds the queries. The similarity is
the inner product (``--normalize`` L2-normalises first, for cosine similarity). The metrics
are printed as a table and, with ``--output``, written as JSON.

``--checkpoint WORKDIR --config FILE`` restores the newest readable checkpoint of a training
workdir (``python -m experiments.train --workdir WORKDIR``), embeds the test split of the
config's dataset (and its gallery, if any) and evaluates it; ``--save-embeddings FILE.npz``
also writes those embeddings in the format above.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from rankax.retrieval import RetrievalEvaluator
from rankax.retrieval.evaluation import BACKENDS
from rankax.retrieval.scann_backend import SCANN_CONFIGS

NPZ_EMBEDDINGS = "embeddings"
NPZ_LABELS = "labels"


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings, labels)`` from an ``.npz`` file with the keys above."""
    with np.load(path) as data:
        missing = [key for key in (NPZ_EMBEDDINGS, NPZ_LABELS) if key not in data]
        if missing:
            raise SystemExit(
                f"{path}: missing array(s) {missing}; expected keys '{NPZ_EMBEDDINGS}' [N, D] and "
                f"'{NPZ_LABELS}' [N] or [N, L] (found {sorted(data.keys())})"
            )
        return np.asarray(data[NPZ_EMBEDDINGS]), np.asarray(data[NPZ_LABELS])


def embed_fn_from_checkpoint(checkpoint: str, config: str | None, step: int | None = None):
    """``(embed_fn, inputs, labels, gallery_inputs, gallery_labels)`` for the test split of
    ``config`` embedded by the model restored from the training workdir ``checkpoint``.

    The embeddings are computed here (datasets may not fit in memory as images), so
    ``embed_fn`` is the identity on them.
    """
    if not config:
        raise SystemExit("--checkpoint needs --config (the experiment config it was trained with)")
    import runpy

    from rankax.train import train_lib

    try:
        cfg = runpy.run_path(config)["get_config"]()
    except FileNotFoundError as err:
        raise SystemExit(f"--config {config!r} does not exist") from err
    from rankax.train import CheckpointReadError

    try:
        state, data = train_lib.restore_for_evaluation(cfg, checkpoint, step=step)
    except (FileNotFoundError, CheckpointReadError) as err:
        raise SystemExit(f"--checkpoint: {err}") from err
    bs = int(cfg.eval_batch_size)
    queries = train_lib.embed_source(state, data.test, bs)
    gallery = None if data.gallery is None else train_lib.embed_source(state, data.gallery, bs)
    gallery_labels = None if data.gallery is None else np.asarray(data.gallery.labels)
    return np.asarray, queries, np.asarray(data.test.labels), gallery, gallery_labels


def format_table(metrics: dict) -> str:
    width = max(len(k) for k in metrics)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ---------"]
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", help="queries (and gallery) .npz: embeddings, labels")
    source.add_argument("--checkpoint", help="trained model directory (needs --config)")
    parser.add_argument("--config", help="experiment config, with --checkpoint")
    parser.add_argument("--step", type=int, help="with --checkpoint: this step (default: newest readable)")
    parser.add_argument("--gallery", help="separate gallery .npz (default: queries = gallery)")
    parser.add_argument("--backend", choices=BACKENDS, default="exact")
    parser.add_argument("--scann-config", choices=SCANN_CONFIGS, default="auto")
    parser.add_argument("--ks", default="1,2,4,8", help="comma-separated k of recall@k")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise embeddings")
    parser.add_argument("--block-size", type=int, default=512, help="queries per step")
    parser.add_argument("--output", help="write the metrics to this JSON file")
    parser.add_argument("--save-embeddings", help="with --checkpoint: also write the query embeddings (.npz)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        ks = tuple(int(k) for k in args.ks.split(",") if k.strip())
    except ValueError as err:
        raise SystemExit(f"--ks must be comma-separated integers, got {args.ks!r}") from err
    gallery = gallery_labels = None
    if args.checkpoint:
        embed_fn, inputs, labels, gallery, gallery_labels = embed_fn_from_checkpoint(
            args.checkpoint, args.config, args.step
        )
        if args.save_embeddings:
            np.savez(args.save_embeddings, **{NPZ_EMBEDDINGS: inputs, NPZ_LABELS: labels})
    else:
        embed_fn = np.asarray  # precomputed embeddings: the identity
        inputs, labels = load_npz(args.embeddings)
        if args.gallery:
            gallery, gallery_labels = load_npz(args.gallery)
    evaluator = RetrievalEvaluator(
        inputs, labels, gallery_inputs=gallery, gallery_labels=gallery_labels,
        batch_size=max(len(inputs), 1), backend=args.backend, ks=ks, normalize=args.normalize,
        scann_config=args.scann_config, block_size=args.block_size,
    )
    start = time.perf_counter()
    metrics = evaluator.run(embed_fn)
    metrics["seconds"] = time.perf_counter() - start
    print(format_table(metrics))
    if args.output:
        out = pathlib.Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"metrics": metrics, "backend": args.backend, "embeddings": args.embeddings,
                  "checkpoint": args.checkpoint, "config": args.config,
                  "gallery": args.gallery, "normalize": args.normalize}
        out.write_text(json.dumps(record, indent=2) + "\n")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
