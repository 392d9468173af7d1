"""Where a loss's training step spends its time: XLA's ops ranked by time, next to the matmul.

    python -m experiments.profile_step [--loss hap] [--batch 4096] [--top 15] [--no-hint]
        [--hlo step.hlo.txt]

Runs ``jit(value_and_grad(batch_loss))`` of one loss of ``experiments.benchmark_paths`` (traced
labels, with the capacity hint unless ``--no-hint``) under ``jax.profiler.trace`` and prints,
per step, the time of the most expensive compiled ops (fusions, dots, YNNPACK/cuBLAS calls) and
the same for the similarity matmul fwd+bwd, the floor of every loss.

The step times are the fastest warm calls outside the profiler, the two timed in alternation.
``--hlo`` appends the step's optimised HLO (``compile().as_text()``) to a file, to read what
each fusion named in the table computes. On a GPU the ops are the device's (:func:`op_events`).

Reading the ops: an op's figure is the wall time of its thunk, summed over the calls of one step
(``x16``: 16 calls, one per query block). Thunks that run concurrently (on the CPU an Eigen
dot can run beside a fusion) overlap, so the figures need not add up to the step time, and a
thunk dispatched asynchronously shows only its dispatch. Ratios between two runs on a shared
host are noisy; the ranking of the ops is what this is for.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gzip
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from experiments import benchmark_paths as paths
from experiments import flags


def _is_op(name: str) -> bool:
    """HLO instruction names (``select_select_fusion.2``, ``dot.5``, ``ynn_fusion``) start in
    lower case; the runtime's own events (``ThunkExecutor::Execute``, Python frames) do not."""
    return name[:1].islower() and " " not in name


#: The device-side lines of a GPU/TPU trace that hold one event per compiled op, by preference:
#: XLA's per-op line, else the streams' kernels (whose names may hold spaces and templates).
_DEVICE_LINES = ("XLA Ops", "Stream")


def op_events(events: list[dict]) -> list[tuple[str, float]]:
    """``[(op, microseconds)]`` of the compiled ops in a ``trace.json`` event list.

    On an accelerator (a process named ``/device:...``) these are the events of the device's
    ``XLA Ops`` line, else of its ``Stream`` lines, else all of its events, whatever their
    names; on the CPU, where the ops run as thunks on the host's threads, the events whose
    names are HLO names (:func:`_is_op`).
    """
    process = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
    line = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name"}
    devices = {pid for pid, name in process.items() if name.startswith("/device:")}
    timed = [e for e in events if e.get("ph") == "X"]
    on_device = [e for e in timed if e["pid"] in devices]
    if not on_device:
        return [(e["name"], e["dur"]) for e in timed if _is_op(e["name"])]
    for prefix in _DEVICE_LINES:
        chosen = [e for e in on_device if line.get((e["pid"], e.get("tid")), "").startswith(prefix)]
        if chosen:
            return [(e["name"], e["dur"]) for e in chosen]
    return [(e["name"], e["dur"]) for e in on_device]


def op_times(fn: Callable[[], Any], steps: int = 3) -> list[tuple[str, float, int]]:
    """``[(op, seconds per step, calls per step)]``, most expensive first, of ``steps`` warm
    calls of ``fn`` under the JAX profiler (:func:`op_events`)."""
    jax.block_until_ready(fn())
    with tempfile.TemporaryDirectory() as out:
        with jax.profiler.trace(out):
            for _ in range(steps):
                jax.block_until_ready(fn())
        trace_file = next(Path(out).rglob("*.trace.json.gz"))
        events = json.loads(gzip.open(trace_file).read())["traceEvents"]
    total: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for name, us in op_events(events):
        total[name] += us
        calls[name] += 1
    return [(name, us / steps / 1e6, max(calls[name] // steps, 1)) for name, us in total.most_common()]


def report(title: str, step_s: float, ops: list[tuple[str, float, int]], top: int) -> list[str]:
    lines = [f"{title}: {step_s * 1e3:.1f} ms per step"]
    lines += [f"  {s * 1e3:9.2f} ms  x{n:<4d} {name[:90]}" for name, s, n in ops[:top]]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loss", default="hap", choices=sorted(paths.LOSSES))
    parser.add_argument("--batch", type=flags.multiple(paths.BATCH_MULTIPLE), default=4096,
                        help="whole classes and super-classes")
    parser.add_argument("--precision", default="highest")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-hint", action="store_true")
    parser.add_argument("--hlo", default=None, help="append the step's optimised HLO to this file")
    args = parser.parse_args(argv)
    fn, emb, labels = paths.step_parts(args.loss, args.batch, not args.no_hint, args.precision)
    step = functools.partial(fn, emb, labels)
    hint = "no hint" if args.no_hint else "hint"
    if args.hlo:  # first: it survives a profiler that fails on this host
        with open(args.hlo, "a") as f:
            f.write(f"# {args.loss} fwd+bwd ({hint}), B={args.batch}, {jax.devices()[0].device_kind}\n")
            f.write(fn.lower(emb, labels).compile().as_text() + "\n")
    matmul = paths.matmul_fn(args.batch, args.precision)
    mm_s, loss_s = paths.interleaved([matmul, step])  # fastest warm calls, outside the profiler
    try:
        mm_ops, loss_ops = op_times(matmul, args.steps), op_times(step, args.steps)
    except Exception as err:  # noqa: BLE001 -- the step times stand without the profiler's tables
        print(f"jax.profiler failed on this host ({type(err).__name__}: {err}); op tables left out")
        mm_ops = loss_ops = []
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, B={args.batch}, D={paths.D}")
    print("\n".join(report("similarity matmul fwd+bwd", mm_s, mm_ops, 5)))
    print("\n".join(report(f"{args.loss} fwd+bwd ({hint}), {loss_s / mm_s:.2f}x the matmul", loss_s,
                           loss_ops, args.top)))


if __name__ == "__main__":
    main()
