"""Where a loss's training step spends its time: XLA's ops ranked by time, next to the matmul.

    python -m experiments.profile_step [--loss hap] [--batch 4096] [--top 15] [--no-hint]

Runs ``jit(value_and_grad(batch_loss))`` of one loss of ``experiments.benchmark_paths`` (traced
labels, with the capacity hint unless ``--no-hint``) under ``jax.profiler.trace`` and prints,
per step, the time of the most expensive compiled ops (fusions, dots, YNNPACK/cuBLAS calls) and
the same for the similarity matmul fwd+bwd, the floor of every loss.

The step times are the fastest warm calls outside the profiler, the two timed in alternation.
Reading the ops: an op's figure is the wall time of its thunk, summed over the calls of one step
(``x16``: 16 calls, one per query block). Thunks that run concurrently (on the CPU an Eigen
dot can run beside a fusion) overlap, so the figures need not add up to the step time, and a
thunk dispatched asynchronously shows only its dispatch. Ratios between two runs on a shared
host are noisy; the ranking of the ops is what this is for.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from experiments import benchmark_paths as paths


def _is_op(name: str) -> bool:
    """HLO instruction names (``select_select_fusion.2``, ``dot.5``, ``ynn_fusion``) start in
    lower case; the runtime's own events (``ThunkExecutor::Execute``, Python frames) do not."""
    return name[:1].islower() and " " not in name


def op_times(fn: Callable[[], Any], steps: int = 3) -> list[tuple[str, float, int]]:
    """``[(op, seconds per step, calls per step)]``, most expensive first, of ``steps`` warm
    calls of ``fn`` under the JAX profiler."""
    jax.block_until_ready(fn())
    with tempfile.TemporaryDirectory() as out:
        with jax.profiler.trace(out):
            for _ in range(steps):
                jax.block_until_ready(fn())
        trace_file = next(Path(out).rglob("*.trace.json.gz"))
        events = json.loads(gzip.open(trace_file).read())["traceEvents"]
    total: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") != "X":
            continue
        name = e["name"]
        if not _is_op(name):
            continue
        total[name] += e["dur"]
        calls[name] += 1
    return [(name, us / steps / 1e6, calls[name] // steps) for name, us in total.most_common()]


def report(title: str, step_s: float, ops: list[tuple[str, float, int]], top: int) -> list[str]:
    lines = [f"{title}: {step_s * 1e3:.1f} ms per step"]
    lines += [f"  {s * 1e3:9.2f} ms  x{n:<4d} {name[:90]}" for name, s, n in ops[:top]]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loss", default="hap", choices=sorted(paths.LOSSES))
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--precision", default="highest")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-hint", action="store_true")
    args = parser.parse_args(argv)
    if args.batch < 2 * paths.K or args.batch % (4 * paths.K):
        parser.error(f"--batch must be a multiple of {4 * paths.K} (whole classes and super-classes)")
    step, _ = paths.step_fn(args.loss, args.batch, not args.no_hint, args.precision)
    matmul = paths.matmul_fn(args.batch, args.precision)
    mm_s, loss_s = paths.interleaved([matmul, step])  # fastest warm calls, outside the profiler
    mm_ops, loss_ops = op_times(matmul, args.steps), op_times(step, args.steps)
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, B={args.batch}, D={paths.D}")
    print("\n".join(report("similarity matmul fwd+bwd", mm_s, mm_ops, 5)))
    hint = "no hint" if args.no_hint else "hint"
    print("\n".join(report(f"{args.loss} fwd+bwd ({hint}), {loss_s / mm_s:.2f}x the matmul", loss_s,
                           loss_ops, args.top)))


if __name__ == "__main__":
    main()
