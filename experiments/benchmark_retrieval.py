"""Timing of retrieval evaluation: rankax exact and ScaNN vs faiss and pytorch-metric-learning.

    python -m experiments.benchmark_retrieval [--sizes 20000x128,60000x512] [--large 200000]
        [--large-queries 10000] [--skip scann,faiss,pml] [--output bench.json]
    python -m experiments.benchmark_retrieval --interleave 5 [--sizes ...]
    python -m experiments.benchmark_retrieval --coarse 8000

For each ``N x D`` (synthetic clustered, L2-normalised embeddings; ~5 images per class as in
Stanford Online Products; the query set is the gallery, self excluded) it times, in the same
process and run:

* ``rankax exact``: :func:`rankax.retrieval.evaluate` -- R@1/2/4/8, MAP@R, R-precision and
  full-gallery mAP (first call, compilation included, then a second, warm call);
* ``rankax scann``: the same without mAP, ScaNN ``auto`` configuration (index build included);
* ``faiss``: exact ``IndexFlatIP`` search of the top ``max(R) + 1`` neighbours plus the same
  metrics from the neighbour lists in numpy (when ``faiss`` is installed);
* ``pml``: pytorch-metric-learning's ``AccuracyCalculator`` (precision_at_1, r_precision,
  mean_average_precision_at_r; its default faiss kNN) when installed;

and prints each time with its ratio to ``rankax exact``, then rankax's first and warm times
over faiss's (the evaluation issue's target: at most 1). Then, on a ``--large`` gallery, it
compares ScaNN's ``tree_ah`` configuration with rankax's exact kNN: recall@10 of the true
neighbours and time. The optional baselines come with ``pip install 'rankax[bench]'``.

``--coarse N`` times instead, on ``N`` items of 64 dimensions with 64, 16, 4 and 2 classes
(N/64 ... N/2 positives per query), both ways of ranking the positives in the same run: counted
per positive, and one sort of each query's list (:data:`rankax.retrieval.exact.SORT_ABOVE` is
where :func:`~rankax.retrieval.evaluate` switches between them).

``--interleave ROUNDS`` prints instead, per size, the first call and then ROUNDS pairs of a
warm ``evaluate`` and faiss in alternation: each one's minimum and the median of the pairs'
ratios (the interleaved table of docs/benchmarks.md; single calls vary 2x on a shared host).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import jax
import numpy as np

from experiments import flags, machine
from rankax import retrieval
from rankax.retrieval import scann_backend


def clustered_embeddings(n: int, d: int, per_class: float = 5.3, noise: float | None = None, seed: int = 0):
    """Class centres ~ N(0, I) plus N(0, noise^2 I) per image, L2-normalised.

    The default noise (1.5 at D=128, 2.25 at D=512) gives an exact R@1 near 0.7-0.8, the
    range of trained models on SOP, rather than a trivially separable set.
    """
    if noise is None:
        noise = 1.5 if d <= 128 else 2.25
    rng = np.random.default_rng(seed)
    num_classes = max(int(n / per_class), 1)
    y = rng.integers(0, num_classes, size=n)
    centers = rng.normal(size=(num_classes, d)).astype(np.float32)
    x = centers[y] + noise * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def faiss_metrics(x, y, ks=(1, 2, 4, 8)):
    import faiss

    counts = np.bincount(y)[y] - 1
    depth = int(max(max(ks), counts.max())) + 1
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, nn = index.search(x, depth)
    nn, _ = scann_backend.without_self(nn, np.arange(len(x)))
    match = y[nn] == y[:, None]
    has = counts > 0
    places = np.arange(1, match.shape[1] + 1)
    r = np.maximum(counts, 1)[:, None]
    in_r = match & (places <= r)
    out = {f"recall@{k}": float(match[has, :k].any(1).mean()) for k in ks}
    prec = np.cumsum(match, 1) / places
    out["map@r"] = float((np.where(in_r, prec, 0).sum(1) / r[:, 0])[has].mean())
    out["r_precision"] = float((in_r.sum(1) / r[:, 0])[has].mean())
    return out


def pml_metrics(x, y):
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count", device=torch.device("cpu"),
    )
    return calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))


def bench_size(n: int, d: int, skip: set[str]) -> list[dict]:
    x, y = clustered_embeddings(n, d, seed=n + d)
    rows = []
    exact, t_exact = _timed(lambda: retrieval.evaluate(x, y))
    rows.append({"size": f"{n}x{d}", "method": "rankax exact", "seconds": t_exact,
                 "recall@1": exact["recall@1"], "map@r": exact["map@r"], "map": exact["map"]})
    # Second call: the compiled programs are reused (as in a training loop).
    again, t = _timed(lambda: retrieval.evaluate(x, y))
    rows.append({"size": f"{n}x{d}", "method": "rankax exact (warm)", "seconds": t,
                 "recall@1": again["recall@1"], "map@r": again["map@r"]})
    if "scann" not in skip:
        approx, t = _timed(lambda: retrieval.evaluate(x, y, backend="scann"))
        rows.append({"size": f"{n}x{d}", "method": "rankax scann (auto: "
                     f"{scann_backend.resolve_config('auto', n)})", "seconds": t,
                     "recall@1": approx["recall@1"], "map@r": approx["map@r"]})
    if "faiss" not in skip:
        try:
            importlib.import_module("faiss")  # imported before the clock starts
            out, t = _timed(lambda: faiss_metrics(x, y))
            rows.append({"size": f"{n}x{d}", "method": "faiss IndexFlatIP + numpy", "seconds": t,
                         "recall@1": out["recall@1"], "map@r": out["map@r"]})
        except ImportError:
            print("faiss not installed: skipped")
    if "pml" not in skip:
        try:
            # torch and pml take seconds to import: not part of the timed call
            importlib.import_module("pytorch_metric_learning.utils.accuracy_calculator")
            out, t = _timed(lambda: pml_metrics(x, y))
            rows.append({"size": f"{n}x{d}", "method": "pytorch-metric-learning AccuracyCalculator",
                         "seconds": t, "recall@1": out["precision_at_1"],
                         "map@r": out["mean_average_precision_at_r"]})
        except ImportError:
            print("pytorch-metric-learning not installed: skipped")
    for row in rows:
        row["ratio_to_rankax_exact"] = row["seconds"] / t_exact
    return rows


def faiss_summary(rows: list[dict]) -> str | None:
    """``rankax first / faiss`` and ``warm / faiss`` of one size, or None without faiss."""
    t = {row["method"]: row["seconds"] for row in rows}
    faiss_s = t.get("faiss IndexFlatIP + numpy")
    if faiss_s is None:
        return None
    return (f"{rows[0]['size']:>10}  rankax / faiss: first call x{t['rankax exact'] / faiss_s:.2f}, "
            f"warm x{t['rankax exact (warm)'] / faiss_s:.2f}")


def interleaved(n: int, d: int, rounds: int) -> dict:
    """``rounds`` pairs of warm ``evaluate`` and faiss + numpy, in alternation (single calls on a
    shared host vary 2x): the minimum of each and the median of the pairs' ratios."""
    x, y = clustered_embeddings(n, d, seed=n + d)
    importlib.import_module("faiss")
    _, first = _timed(lambda: retrieval.evaluate(x, y))
    warm, fast = [], []
    for _ in range(rounds):
        warm.append(_timed(lambda: retrieval.evaluate(x, y))[1])
        fast.append(_timed(lambda: faiss_metrics(x, y))[1])
    ratios = sorted(w / f for w, f in zip(warm, fast, strict=True))
    return {"size": f"{n}x{d}", "first_s": first, "warm_min_s": min(warm), "faiss_min_s": min(fast),
            "rounds": rounds, "warm_over_faiss": min(warm) / min(fast),
            "median_pair_ratio": float(np.median(ratios))}


def coarse(n: int, classes: tuple[int, ...] = (64, 16, 4, 2), d: int = 64) -> list[dict]:
    """Warm ``evaluate`` of ``n`` items with few classes, the positives counted (the threshold
    above every class) and sorted (below every class), in alternation; each a second call."""
    from rankax.retrieval import exact

    saved, rows = dict(exact.SORT_ABOVE), []
    try:
        for c in classes:
            x, _ = clustered_embeddings(n, d, seed=c)
            y = np.random.default_rng(c).integers(0, c, n)
            times = {}
            for way, above in (("count", n), ("sort", 0)):
                exact.SORT_ABOVE.update(cpu=above, accelerator=above)
                retrieval.evaluate(x, y, ks=(1,))  # compiles
                out, times[way] = _timed(lambda: retrieval.evaluate(x, y, ks=(1,)))  # noqa: B023
            rows.append({"items": n, "classes": c, "positives": n // c, "count_s": times["count"],
                         "sort_s": times["sort"], "sort_over_count": times["sort"] / times["count"],
                         "map": out["map"]})
    finally:
        exact.SORT_ABOVE.update(saved)
    return rows


def bench_large(n: int, num_queries: int, d: int = 128, k: int = 10) -> dict:
    x, _ = clustered_embeddings(n, d, per_class=20, noise=1.0, seed=7)
    queries = x[np.random.default_rng(1).choice(n, num_queries, replace=False)]
    queries = queries + 0.05 * np.random.default_rng(2).normal(size=queries.shape).astype(np.float32)
    out = retrieval.scann_recall(queries, x, k=k, config="tree_ah")
    out.update(gallery=n, queries=num_queries, dim=d)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=flags.sizes, default="20000x128,60000x512")
    parser.add_argument("--large", type=flags.non_negative_int, default=200_000,
                        help="gallery size for ScaNN vs exact (0: skip)")
    parser.add_argument("--large-queries", type=flags.positive_int, default=10_000)
    parser.add_argument("--skip", type=flags.names(("scann", "faiss", "pml"), empty_ok=True), default="",
                        help="comma-separated: scann,faiss,pml")
    parser.add_argument("--interleave", type=flags.non_negative_int, default=0, metavar="ROUNDS",
                        help="instead: ROUNDS warm evaluate / faiss pairs per size (needs faiss)")
    parser.add_argument("--coarse", type=flags.non_negative_int, default=0, metavar="N",
                        help="instead: counted vs sorted positives on N items of 64 to 2 classes")
    parser.add_argument("--output", help="JSON file for the results")
    args = parser.parse_args(argv)
    machine.cold_compiles()
    if args.coarse:
        print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} cpus")
        print("| items | classes | positives / query | counted | sorted | sorted / counted |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in coarse(args.coarse):
            print(f"| {r['items']} | {r['classes']} | {r['positives']} | {r['count_s']:.2f} s | "
                  f"{r['sort_s']:.2f} s | {r['sort_over_count']:.2f} |", flush=True)
        return
    if args.interleave:
        print("| N x D | rankax first call | rankax warm (min) | faiss (min) | warm / faiss |")
        print("|---|---:|---:|---:|---:|")
        for n, d in args.sizes:
            r = interleaved(n, d, args.interleave)
            print(f"| {n} x {d} | {r['first_s']:.2f} s | {r['warm_min_s']:.2f} s ({r['rounds']} runs) | "
                  f"{r['faiss_min_s']:.2f} s | {r['warm_over_faiss']:.2f} (median of pairs "
                  f"{r['median_pair_ratio']:.2f}) |", flush=True)
        return
    skip = set(args.skip)
    print(f"cpus: {os.cpu_count()}")
    print(f"jax {jax.__version__}, backend {jax.default_backend()}")
    rows, summaries = [], []
    for n, d in args.sizes:
        size_rows = bench_size(n, d, skip)
        for row in size_rows:
            rows.append(row)
            print(f"{row['size']:>10}  {row['method']:<45} {row['seconds']:8.2f} s  "
                  f"x{row['ratio_to_rankax_exact']:.2f}  R@1 {row['recall@1']:.4f}  "
                  f"MAP@R {row['map@r']:.4f}", flush=True)
        summaries.append(faiss_summary(size_rows))
    for line in filter(None, summaries):
        print(line)
    large = None
    if args.large:
        large = bench_large(args.large, args.large_queries)
        print(f"ScaNN tree_ah vs exact on {large['gallery']} x {large['dim']} "
              f"({large['queries']} queries): recall@10 {large['recall@10']:.4f}, "
              f"scann build {large['scann_build_seconds']:.2f} s + search "
              f"{large['scann_search_seconds']:.2f} s, exact {large['exact_seconds']:.2f} s")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"rows": rows, "large": large}, f, indent=2)


if __name__ == "__main__":
    main()
