"""rankax evaluation against a blocked ``q @ g^T`` + ``torch.topk`` loop, on whatever device JAX has.

    from experiments import benchmark_eval_gpu
    out = benchmark_eval_gpu.run()                     # H200: ~60k x 512, and 1M x 512
    out = benchmark_eval_gpu.run(sizes=((4000, 64),), large=(20000, 64))   # CPU smoke run

For each ``N x D`` (synthetic clustered, L2-normalised embeddings, ~5 per class; the query set
is the gallery, self excluded) it times :func:`rankax.retrieval.evaluate` (R@1/2/4/8, MAP@R,
R-precision and full-gallery mAP) on its first call (compilation included, and reported apart:
the backend compile seconds JAX's monitoring events count, and again after ``jax.clear_caches()``,
which leaves XLA's GPU autotuning results in place: the difference is the autotuning) and warm, and a
blocked PyTorch loop computing R@1 and MAP@R from ``torch.topk`` of float32 ``q @ g^T``
(TF32 off; on CUDA when torch sees a GPU, else on the CPU; skipped without torch), the
ratio between the fastest of ``PAIRS`` warm calls of each made in alternation, and warns
where the two give values more than 1e-6 apart. Then it evaluates ``large[1]``-dimensional queries
(10,000 gallery rows plus a little noise) against a ``large[0]``-row gallery and reports the
time and the device memory (``memory_stats()``, where the device has them). For both it
reports how much of one more warm call, profiled, waits on the device (``evaluate_device_wait_s``
of ``evaluate_profiled_s``, :func:`device_wait_seconds`): the rest is host work, which the
blocked PyTorch loop does not do. Both come from the same call, so the share does not depend on
the noise between calls.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from experiments import flags, machine
from rankax import retrieval


def embeddings(n: int, d: int, per_class: float = 5.3, seed: int = 0):
    """Class centres plus noise (as in ``benchmark_retrieval``), float32 throughout."""
    rng = np.random.default_rng(seed)
    num_classes = max(int(n / per_class), 1)
    y = rng.integers(0, num_classes, size=n)
    centers = rng.standard_normal((num_classes, d), dtype=np.float32)
    x = centers[y]
    x += (1.5 if d <= 128 else 2.25) * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _timed_compiling(fn):
    """``(out, seconds, compile seconds)``: the backend compilations (XLA's passes, and on a GPU
    its GEMM autotuning) that ``fn`` triggered, summed from JAX's monitoring events."""
    compiles: list[float] = []

    def record(event: str, seconds: float, **_: object) -> None:
        if event == _COMPILE_EVENT:
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(record)
    try:
        out, seconds = _timed(fn)
    finally:
        jax.monitoring.unregister_event_duration_listener(record)
    return out, seconds, sum(compiles)


def topk_loop(x: np.ndarray, y: np.ndarray, block: int = 4096) -> dict:
    """R@1 and MAP@R (self excluded) from a blocked float32 ``q @ g^T`` + ``torch.topk`` loop."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        g = torch.from_numpy(x).to(device)
        labels = torch.from_numpy(y).to(device)
        num_pos = torch.bincount(labels)[labels] - 1
        depth = int(num_pos.max()) + 1
        places = torch.arange(1, depth + 1, device=device)
        r1 = torch.zeros((), dtype=torch.float64, device=device)
        map_r = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, len(x), block):
            stop = min(start + block, len(x))
            s = g[start:stop] @ g.T
            rows = torch.arange(start, stop, device=device)
            s[rows - start, rows] = -torch.inf  # the query itself
            top = torch.topk(s, depth, dim=1).indices
            match = labels[top] == labels[start:stop, None]
            r = num_pos[start:stop]
            has = r > 0
            precision = torch.cumsum(match, 1) / places
            in_r = match & (places[None] <= r[:, None])
            ap = (precision * in_r).sum(1) / r.clamp(min=1)
            r1 += match[:, 0][has].sum()
            map_r += ap[has].sum()
        count = int((num_pos > 0).sum())
        return {"recall@1": r1.item() / count, "map@r": map_r.item() / count, "device": str(device)}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def device_wait_seconds(fn) -> tuple[float, float]:
    """``(wait, total)``: the seconds one call of ``fn`` spends inside ``jax.device_get``
    (cProfile) and the call's wall seconds, profiler included. ``evaluate`` fetches every
    block's ranks there at once, so on an accelerator, where dispatch is asynchronous, this is
    the wait for the device's work and the transfer of the results, and the rest of a warm call
    is host work (checks, class layout, reordering and sending the embeddings, the metrics from
    the ranks). A CPU may run a program during its dispatch, which this does not count."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(fn)
    total = time.perf_counter() - start
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    return sum(entry[3] for (_, _, name), entry in stats.items() if name == "device_get"), total


def _memory() -> dict:
    stats = jax.devices()[0].memory_stats() or {}
    return {k: stats[k] for k in ("peak_bytes_in_use", "bytes_limit") if k in stats}


def bench_size(n: int, d: int) -> dict:
    x, y = embeddings(n, d, seed=n + d)
    first, t_first, t_compile = _timed_compiling(lambda: retrieval.evaluate(x, y))
    warm, t_warm = _timed(lambda: retrieval.evaluate(x, y))
    out = {"size": f"{n}x{d}", "evaluate_first_s": t_first, "evaluate_first_compile_s": t_compile,
           "evaluate_warm_s": t_warm,
           "recall@1": warm["recall@1"], "map@r": warm["map@r"], "map": warm["map"]}
    out["repeatable"] = first == warm  # the same program on the same inputs, called twice
    out["evaluate_recompile_s"] = recompile_seconds(lambda: retrieval.evaluate(x, y))
    out["evaluate_device_wait_s"], out["evaluate_profiled_s"] = device_wait_seconds(
        lambda: retrieval.evaluate(x, y))
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch not installed: top-k loop skipped")
        return out
    topk_loop(x, y)  # warm-up (CUDA context, cuBLAS handles)
    # The ratio from the fastest of PAIRS calls of each, in alternation: one call of each,
    # moments apart, moved it by the host's noise.
    t_eval, t_loop = [], []  # PAIRS of each (the earlier warm call is reported on its own)
    for _ in range(PAIRS):
        t_eval.append(_timed(lambda: retrieval.evaluate(x, y))[1])
        ref, seconds = _timed(lambda: topk_loop(x, y))
        t_loop.append(seconds)
    out.update(evaluate_warm_s=min(t_eval), topk_loop_s=min(t_loop), topk_loop_device=ref["device"],
               evaluate_ratio_to_topk_loop=min(t_eval) / min(t_loop), timing_pairs=PAIRS,
               max_abs_diff=max(abs(ref[k] - warm[k]) for k in ("recall@1", "map@r")))
    # Recorded, not asserted: the two sum the dot products in different orders, and a near-tie
    # that swaps moves MAP@R by about 1 / (R * N). A run's figures must not be lost to that.
    if out["max_abs_diff"] > AGREEMENT:
        print(f"warning: rankax and the top-k loop differ by {out['max_abs_diff']:.1e}: {ref} vs {warm}")
    return out


#: Warm calls of ``evaluate`` and of the top-k loop, in alternation, behind their ratio.
PAIRS = 3
#: The largest difference of R@1 / MAP@R between ``evaluate`` and the top-k loop that the
#: benchmark reports without a warning.
AGREEMENT = 1e-6


def recompile_seconds(fn) -> float:
    """Backend compile seconds of ``fn`` once JAX's caches are emptied. XLA keeps the results
    of GPU GEMM autotuning for the life of the process, apart from JAX's caches, so this
    compilation repeats XLA's passes without the autotuning: next to the first call's compile
    seconds it shows the autotuning's share (a CPU does not autotune, but there the first
    compile also pays one-off costs, e.g. 3.2 s first against 1.4-1.9 s again in a review)."""
    jax.clear_caches()
    return _timed_compiling(fn)[2]


def bench_large(n: int, d: int, num_queries: int = 10_000) -> dict:
    x, y = embeddings(n, d, seed=7)
    pick = np.random.default_rng(1).choice(n, min(num_queries, n), replace=False)
    q = x[pick] + 0.05 * np.random.default_rng(2).standard_normal((len(pick), d), dtype=np.float32)
    first, t_first = _timed(lambda: retrieval.evaluate(q, y[pick], x, y))
    _, t_warm = _timed(lambda: retrieval.evaluate(q, y[pick], x, y))
    wait, profiled = device_wait_seconds(lambda: retrieval.evaluate(q, y[pick], x, y))
    return {"gallery": n, "queries": len(pick), "dim": d, "evaluate_first_s": t_first,
            "evaluate_warm_s": t_warm, "evaluate_device_wait_s": wait, "evaluate_profiled_s": profiled,
            "recall@1": first["recall@1"], "map": first["map"], **_memory()}


def run(sizes=((60000, 512),), large=(1_000_000, 512)) -> dict:
    """Times everything above; returns the first size's numbers at the top level, every size's
    under ``"sizes"`` and the large gallery's under ``"large_gallery"``, and prints a table."""
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}")
    rows = [bench_size(n, d) for n, d in sizes]
    for row in rows:
        line = (f"{row['size']:>12}  evaluate first {row['evaluate_first_s']:7.3f} s "
                f"(compiling {row['evaluate_first_compile_s']:.3f} s"
                + (f", {row['evaluate_recompile_s']:.3f} s again" if "evaluate_recompile_s" in row else "")
                + f")  warm {row['evaluate_warm_s']:7.3f} s"
                + f" (profiled {row['evaluate_profiled_s']:.3f} s, {row['evaluate_device_wait_s']:.3f} s"
                + " of it waiting on the device)")
        if "topk_loop_s" in row:
            line += (f"  | topk loop ({row['topk_loop_device']}) {row['topk_loop_s']:7.3f} s  "
                     f"ratio {row['evaluate_ratio_to_topk_loop']:5.2f}  |diff| {row['max_abs_diff']:.1e}")
        print(line + f"  R@1 {row['recall@1']:.4f} MAP@R {row['map@r']:.4f}", flush=True)
    out = dict(rows[0]) if rows else {}
    out["sizes"] = rows
    if large:
        big = bench_large(*large)
        out["large_gallery"] = big
        mem = big.get("peak_bytes_in_use")
        print(f"{big['queries']} queries x {big['gallery']} x {big['dim']} gallery: first "
              f"{big['evaluate_first_s']:.3f} s, warm {big['evaluate_warm_s']:.3f} s "
              f"(profiled {big['evaluate_profiled_s']:.3f} s, {big['evaluate_device_wait_s']:.3f} s "
              "of it waiting on the device)"
              + (f", peak device memory {mem / 2**30:.2f} GiB" if mem else ""), flush=True)
    return out


def gallery_sizes(text: str) -> list[tuple[int, int]]:
    """``--sizes``: ``N x D`` sets of at least 2 rows (each query needs another row)."""
    return flags.sizes(text, min_first=2, empty_ok=True)


def large_gallery(text: str) -> tuple[int, int] | None:
    """``--large``: gallery rows x D, or ``"none"``."""
    return None if text.strip().lower() == "none" else flags.size(text, min_first=2)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=gallery_sizes, default="60000x512",
                        help="comma-separated N x D, e.g. 4000x64,8000x64")
    parser.add_argument("--large", type=large_gallery, default="1000000x512",
                        help="gallery rows x D, or 'none'")
    args = parser.parse_args(argv)
    machine.cold_compiles()
    run(sizes=tuple(args.sizes), large=args.large)


if __name__ == "__main__":
    main()
