"""Sweep of ScaNN ``tree_ah`` settings against rankax's exact search, in one process.

    python -m experiments.sweep_scann [--items 1000000] [--queries 10000] [--dim 128]
        [--config "leaves=2000,dpb=2,threshold=0.2,reorder=250,search=0.25/0.3"]...
        [--noise 1.0] [--output sweep.json]

Same data, queries and measures as :mod:`experiments.benchmark_scann` (SOP-like clustered
embeddings, ``--queries`` of them as queries, each excluded from its own list). Each
``--config`` is one index: ``leaves`` k-means leaves, ``dpb`` dimensions per 4-bit AH block,
``threshold`` the anisotropic quantization threshold, ``reorder`` the exactly re-scored
candidates, ``sample`` the training sample, ``codes`` how the items of the searched leaves
are scored before re-scoring (``ah``: the 4-bit AH codes of
:func:`~rankax.retrieval.scann_backend.build_searcher`; ``int8``: ScaNN's int8 scalar
quantisation, ``score_brute_force(quantize=True)``, nearly exact: it isolates what the
partition alone loses), and ``search`` the fractions of the leaves
searched (``/``-separated), each a ``search_batched_parallel`` call on the same index.
``--noise`` is the per-image noise of :func:`~experiments.benchmark_retrieval.clustered_embeddings`
(default: its own, 1.5 at D = 128; smaller values give better separated classes).
Before each index is built, rankax's exact :func:`~rankax.retrieval.knn` runs again, so
each configuration's speed-up is against an exact search timed next to it (the host is
shared: load comes and goes), and the best exact time of the run is reported too.

Each search and each exact search is timed ``--repeats`` times, best kept, in wall seconds
and in CPU seconds of the process (all threads; less sensitive to other jobs' load).
Printed per search: build s, search s, adjacent exact s, speed-up (exact s / search s, wall
then CPU), R@1 and its difference from exact search, and recall@10 of the exact 10
neighbours.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from experiments import flags, machine
from experiments.benchmark_retrieval import clustered_embeddings
from experiments.benchmark_scann import K, hit_rate_at_1, neighbours
from rankax.retrieval import knn, scann_backend

DEFAULT_CONFIGS = (
    "leaves=1000,dpb=2,threshold=0.2,reorder=250,search=0.3/0.35/0.4/0.45",
    "leaves=2000,dpb=2,threshold=0.2,reorder=250,search=0.25/0.3/0.35/0.4",
    "leaves=1000,dpb=4,threshold=0.2,reorder=1000,search=0.35/0.45/0.55",
)


CODES = ("ah", "int8")


def parse_config(text: str) -> dict:
    """``"leaves=2000,dpb=2,search=0.3/0.4"`` -> a dict of build settings and fractions; a key
    left out takes the library's default (``rankax.retrieval.scann_backend``: dpb 3, threshold
    0.2, reorder 1000, sample 100,000, search 0.45; leaves 0: its rule for the gallery)."""
    out = {"leaves": 0, "dpb": scann_backend.DIMENSIONS_PER_BLOCK,
           "threshold": scann_backend.ANISOTROPIC_THRESHOLD, "reorder": scann_backend.REORDER_K,
           "sample": scann_backend.TRAINING_SAMPLE_SIZE, "codes": "ah", "search": [0.45]}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in out:
            raise ValueError(f"key must be one of {sorted(out)}, got {key!r} in {text!r}")
        if key == "codes":
            if value not in CODES:
                raise ValueError(f"codes must be one of {CODES}, got {value!r} in {text!r}")
            out[key] = value
            continue
        try:
            if key == "search":
                out[key] = [float(f) for f in value.split("/")]
            else:
                out[key] = float(value) if key == "threshold" else int(value)
        except ValueError:
            kind = "fractions separated by /" if key == "search" else "a number"
            raise ValueError(f"{key} must be {kind}, got {value!r} in {text!r}") from None
    return out


def _config_flag(text: str) -> dict:
    """``--config``: :func:`parse_config`'s errors as usage errors."""
    try:
        return parse_config(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _best_of(fn, repeats: int):
    """``fn()``'s output, its best wall seconds and its best CPU seconds (all threads)."""
    wall, cpu = math.inf, math.inf
    for _ in range(repeats):
        cpu_start = time.process_time()
        out, seconds = _timed(fn)
        wall, cpu = min(wall, seconds), min(cpu, time.process_time() - cpu_start)
    return out, wall, cpu


def _build(x: np.ndarray, cfg: dict, leaves: int):
    """One ``tree_ah`` index of rankax (``codes=ah``), or the same tree over int8 scoring."""
    if cfg["codes"] == "ah":
        return scann_backend.build_searcher(
            x, K + 1, config="tree_ah", num_leaves=leaves, reorder_k=cfg["reorder"],
            training_sample_size=cfg["sample"], dimensions_per_block=cfg["dpb"],
            anisotropic_threshold=cfg["threshold"])
    from scann import scann_ops_pybind

    sample = min(len(x), cfg["sample"])
    return (scann_ops_pybind.builder(x, K + 1, "dot_product")
            .tree(num_leaves=leaves, num_leaves_to_search=1, training_sample_size=sample)
            .score_brute_force(quantize=True).reorder(max(cfg["reorder"], K + 1)).build())


def sweep(n: int, num_queries: int, dim: int, configs: list[dict], repeats: int = 1,
          noise: float | None = None) -> dict:
    x, y = clustered_embeddings(n, dim, noise=noise, seed=n + dim)  # the data of benchmark_scann
    ids = np.sort(np.random.default_rng(0).choice(n, num_queries, replace=False))
    queries = x[ids]
    exact_index, first = _timed(lambda: knn(queries, x, k=K + 1)[1])  # compiles
    exact_index = neighbours(exact_index, ids)
    exact_r1 = hit_rate_at_1(exact_index, y, ids)
    print(f"{n} x {dim}, {num_queries} queries: exact R@1 {exact_r1:.4f}, first call {first:.1f} s",
          flush=True)
    rows, exact_times = [], [first]
    for cfg in configs:
        _, exact_s, exact_cpu = _best_of(lambda: knn(queries, x, k=K + 1)[1], repeats)
        exact_times.append(exact_s)
        leaves = cfg["leaves"] or scann_backend.default_num_leaves(n)
        searcher = None  # free the previous index first
        searcher, build_s = _timed(lambda cfg=cfg, leaves=leaves: _build(x, cfg, leaves))
        for fraction in cfg["search"]:
            to_search = max(math.ceil(fraction * leaves), 1)
            def search(s=searcher, t=to_search):
                return scann_backend.search(s, queries, K + 1, leaves_to_search=t)

            (index, _), search_s, search_cpu = _best_of(search, repeats)
            index = neighbours(index, ids)
            hits = [len(np.intersect1d(a, e)) for a, e in zip(index[:, :K], exact_index[:, :K], strict=True)]
            r1 = hit_rate_at_1(index, y, ids)
            row = {**cfg, "leaves": leaves, "search": fraction, "leaves_to_search": to_search,
                   "build_seconds": build_s, "search_seconds": search_s, "exact_seconds": exact_s,
                   "speedup": exact_s / search_s, "exact_cpu_seconds": exact_cpu,
                   "search_cpu_seconds": search_cpu, "cpu_speedup": exact_cpu / search_cpu,
                   "r@1": r1, "r@1_delta": r1 - exact_r1,
                   "recall@10": float(np.mean(hits) / K)}
            rows.append(row)
            codes = f"dpb={cfg['dpb']}" if cfg["codes"] == "ah" else "int8"
            print(f"| L={leaves} {codes} t={cfg['threshold']} reorder={cfg['reorder']} "
                  f"sample={cfg['sample']} search {to_search}/{leaves} | {build_s:.1f} | {search_s:.2f} | "
                  f"{exact_s:.1f} | {row['speedup']:.2f}x | {row['cpu_speedup']:.2f}x | "
                  f"{r1:.4f} ({row['r@1_delta']:+.4f}) | {row['recall@10']:.3f} |", flush=True)
    return {"items": n, "queries": num_queries, "dim": dim, "noise": noise, "exact_r@1": exact_r1,
            "exact_seconds": exact_times, "runs": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=flags.positive_int, default=1_000_000)
    parser.add_argument("--queries", type=flags.positive_int, default=10_000)
    parser.add_argument("--dim", type=flags.positive_int, default=128)
    parser.add_argument("--config", action="append", type=_config_flag,
                        help="one index (repeatable): comma-separated key=value of leaves, dpb, threshold, "
                             "reorder, sample, codes (ah or int8) and search (fractions separated by /), "
                             "e.g. leaves=2000,dpb=2,search=0.3/0.4")
    parser.add_argument("--noise", type=float, help="per-image noise of the data (default: the generator's)")
    parser.add_argument("--repeats", type=flags.positive_int, default=1,
                        help="best of this many timings of each search")
    parser.add_argument("--output", help="JSON file for the results")
    args = parser.parse_args(argv)
    machine.cold_compiles()
    configs = args.config or [parse_config(c) for c in DEFAULT_CONFIGS]
    res = sweep(args.items, min(args.queries, args.items), args.dim, configs, args.repeats, args.noise)
    print(f"exact seconds (each before an index build): {[round(t, 1) for t in res['exact_seconds']]}")
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
