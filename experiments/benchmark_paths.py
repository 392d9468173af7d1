"""The call paths users write, each against its baseline measured in the same process and run.

    python -m experiments.benchmark_paths [--sizes 1024,4096] [--losses supap,smooth-ap]
        [--precision highest] [--json out.json]

On whatever JAX backend is the default (CPU here, one GPU in ``experiments.benchmark_gpu``),
with ``D = 512`` and P x K batches (``K = 4``), it times fwd+bwd with respect to the embeddings
(compilation excluded) of:

* ``matmul``: the similarity matmul ``E E^T`` alone, at the loss's precision -- the floor;
* every loss through ``rankax.batch_loss`` inside the user's ``jax.jit`` with *traced* labels
  (the training-step path), without and with the capacity hint ``max_positives =
  capacity_limit = K - 1`` (H-AP: ``[B, 2]`` label paths, 15 graded positives, hint 15);
* the labels of one loss as numpy / ``jnp`` closed over in the user's ``jit``, as a traced
  argument, and ``batch_loss`` called without ``jit`` (first call and warm calls);
* the list API: ``jit(grad(mean(vmap(loss))))`` over the rows of ``E E^T`` with the diagonal
  masked, against ``batch_loss`` on the same batch.

Every row prints its ratio to its baseline. Each loss and the list API are timed in alternation
with their baseline, and the label paths in alternation with each other; each ratio is between
the fastest warm calls (:func:`interleaved`). Ratios, not absolute times, are what to
compare: the hosts these run on are shared and noisy.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import rankax
from experiments import flags, machine

K = 4
D = 512
#: Batch sizes are whole super-classes (4 classes of K images: H-AP's label paths).
BATCH_MULTIPLE = 4 * K
# name -> (rankax.losses attribute, hyperparameters, label kind)
LOSSES: dict[str, tuple[str, dict, str]] = {
    "supap": ("supap_loss", {}, "flat"),
    "roadmap": ("roadmap_loss", {}, "flat"),
    "smooth-ap": ("smooth_ap_loss", {}, "flat"),
    "pnp-Dq": ("pnp_loss", {"variant": "Dq", "alpha": 4.0}, "flat"),
    "fastap": ("fast_ap_loss", {}, "flat"),
    "hap": ("hap_loss", {}, "paths"),
    "sup-ndcg": ("sup_ndcg_loss", {}, "paths"),
    "histogram-ap": ("histogram_ap_loss", {}, "flat"),
    "blackbox-ap": ("blackbox_ap_loss", {}, "flat"),
}
#: The losses the GPU issue names (``benchmark_gpu``'s default: its run has a time budget).
ISSUE_LOSSES = ("supap", "roadmap", "smooth-ap", "pnp-Dq", "fastap", "hap")
HAP_POSITIVES = 4 * K - 1
#: ``time.perf_counter()`` after which the loops below stop adding rows (a budgeted run).
DEADLINE = float("inf")


def batch(b: int, kind: str = "flat", d: int = D) -> tuple[jax.Array, np.ndarray]:
    """L2-normalised random ``[b, d]`` embeddings and numpy labels (``[b]`` class ids, K per
    class; ``"paths"``: ``[b, 2]`` class and super-class of 4 classes)."""
    emb = jax.random.normal(jax.random.key(0), (b, d), jnp.float32)
    emb = emb / jnp.linalg.norm(emb, axis=1, keepdims=True)
    fine = np.repeat(np.arange(b // K, dtype=np.int32), K)
    labels = fine if kind == "flat" else np.stack([fine, fine // 4], axis=1)
    return emb, labels


def timed(fn: Callable[[], Any], repeats: int = 7, budget_s: float = 10.0) -> float:
    """Median seconds of warm calls (the first call, compilation included, is not counted)."""
    jax.block_until_ready(fn())
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
        if sum(times) > budget_s:
            break
    return float(np.median(times))


def interleaved(fns: list[Callable[[], Any]], rounds: int = 5, budget_s: float = 20.0) -> list[float]:
    """Fastest warm call of each of ``fns``, called in turn round after round: on a shared host
    a change of load during the run slows all of them alike, so their ratio holds."""
    for fn in fns:
        jax.block_until_ready(fn())
    best = [float("inf")] * len(fns)
    start = time.perf_counter()
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            best[i] = min(best[i], time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return best


def matmul_fn(b: int, precision: str, d: int = D) -> Callable[[], Any]:
    """fwd+bwd of ``<G, E E^T>`` (a fixed cotangent ``G``): the similarity matmul alone."""
    emb, _ = batch(b, d=d)
    g = jax.random.normal(jax.random.key(1), (b, b), jnp.float32)
    fn = jax.jit(jax.value_and_grad(lambda e, g: jnp.vdot(g, jnp.matmul(e, e.T, precision=precision))))
    return lambda: fn(emb, g)


def matmul_time(b: int, precision: str, d: int = D) -> float:
    """Median seconds of :func:`matmul_fn`."""
    return timed(matmul_fn(b, precision, d))


def loss_fn_of(name: str) -> tuple[Callable, dict, str]:
    attr, hparams, kind = LOSSES[name]
    return getattr(rankax.losses, attr), hparams, kind


def step_time(name: str, b: int, hint: bool, precision: str) -> tuple[float, float]:
    """(seconds, value) of ``jit(value_and_grad(batch_loss))`` with traced labels."""
    fn, value = step_fn(name, b, hint, precision)
    return timed(fn), value


def step_parts(name: str, b: int, hint: bool, precision: str) -> tuple[Any, jax.Array, jax.Array]:
    """``(fn, embeddings, labels)``: ``fn = jit(value_and_grad(batch_loss))`` of one loss with
    the labels as a traced argument, and a batch to call it with."""
    loss_fn, hparams, kind = loss_fn_of(name)
    emb, labels = batch(b, kind)
    cap = (K - 1 if kind == "flat" else HAP_POSITIVES) if hint else None
    kw = dict(max_positives=cap, capacity_limit=cap) if hint else {}
    fn = jax.jit(jax.value_and_grad(
        lambda e, y: rankax.batch_loss(loss_fn, e, y, precision=precision, **kw, **hparams)
    ))
    return fn, emb, jnp.asarray(labels)


def step_fn(name: str, b: int, hint: bool, precision: str) -> tuple[Callable[[], Any], float]:
    """(call, value) of :func:`step_parts`'s step on its batch."""
    fn, emb, y = step_parts(name, b, hint, precision)
    value = float(fn(emb, y)[0])
    return lambda: fn(emb, y), value


def compiled_steps(b: int, specs: list[tuple[str, bool]], precision: str) -> list[Any]:
    """:func:`step_parts`'s steps of ``(loss, hint)`` pairs at batch ``b``, compiled ahead of
    time in threads (XLA compiles outside the GIL: most of a row's time on a many-core GPU host
    was its compilation, one after the other): ``(compiled, embeddings, labels)`` each, or the
    exception that building or compiling it raised."""

    def build(spec: tuple[str, bool]) -> Any:
        try:
            fn, emb, y = step_parts(spec[0], b, spec[1], precision)
            return fn.lower(emb, y).compile(), emb, y
        except Exception as err:  # noqa: BLE001 -- one row's error, recorded by loss_rows
            return err

    workers = max(1, min(len(specs), (os.cpu_count() or 1)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(build, specs))


def loss_rows(sizes: list[int], names: list[str], precision: str) -> list[dict]:
    """Every loss, with and without the hint, as a ratio to the matmul of the same size, the two
    timed in alternation (:func:`interleaved`). A row that raises (out of memory, a compile
    error) is an ``"error"`` row; the others are still measured. A size starts only before
    :data:`DEADLINE`; once its rows are compiled, all of them are measured."""
    rows = []
    for b in sizes:
        if time.perf_counter() > DEADLINE:  # checked per size: its rows compile together
            print(f"time budget spent: B={b} and later sizes skipped")
            return rows
        mm_fn = matmul_fn(b, precision)
        mm = interleaved([mm_fn])[0]
        rows.append(dict(what="matmul", b=b, precision=precision, time_s=mm, ratio=1.0))
        print(f"B={b:6d} matmul ({precision}) fwd+bwd {mm * 1e3:8.2f} ms", flush=True)
        specs = [(name, hint) for name in names for hint in (False, True)]
        for (name, hint), built in zip(specs, compiled_steps(b, specs, precision), strict=True):
            try:
                if isinstance(built, Exception):
                    raise built
                compiled, emb, y = built
                value = float(compiled(emb, y)[0])
                t, mm_here = interleaved([lambda: compiled(emb, y), mm_fn])  # noqa: B023
            except Exception as err:  # noqa: BLE001 -- recorded; the other rows go on
                rows.append(dict(what="error", loss=name, b=b, hint=hint, precision=precision,
                                 error=f"{type(err).__name__}: {err}"[:300]))
                print(f"B={b:6d} {name:10s} hint={hint!s:5s} {type(err).__name__}: {err}"[:300], flush=True)
                continue
            rows.append(dict(what="loss", loss=name, b=b, hint=hint, precision=precision,
                             time_s=t, matmul_s=mm_here, value=value, ratio=t / mm_here))
            print(f"B={b:6d} {name:10s} hint={hint!s:5s} {t * 1e3:8.2f} ms  "
                  f"= {t / mm_here:5.2f} x matmul", flush=True)
    return rows


def label_path_rows(b: int, name: str = "smooth-ap") -> list[dict]:
    """The same loss with labels given five ways; ratios to the fastest of them."""
    loss_fn, hparams, _ = loss_fn_of(name)
    emb, labels_np = batch(b)
    labels_jnp = jnp.asarray(labels_np)
    grad = lambda f: jax.value_and_grad(f)  # noqa: E731
    paths: dict[str, Callable[[], Any]] = {}
    f_np = jax.jit(grad(lambda e: rankax.batch_loss(loss_fn, e, labels_np, **hparams)))
    paths["numpy closed over"] = lambda: f_np(emb)
    f_jnp = jax.jit(grad(lambda e: rankax.batch_loss(loss_fn, e, labels_jnp, **hparams)))
    paths["jnp closed over"] = lambda: f_jnp(emb)
    f_tr = jax.jit(grad(lambda e, y: rankax.batch_loss(loss_fn, e, y, **hparams)))
    paths["traced argument"] = lambda: f_tr(emb, labels_jnp)
    paths["traced + hint"] = (lambda f: lambda: f(emb, labels_jnp))(jax.jit(grad(
        lambda e, y: rankax.batch_loss(loss_fn, e, y, max_positives=K - 1, capacity_limit=K - 1, **hparams)
    )))
    eager = grad(lambda e: rankax.batch_loss(loss_fn, e, labels_np, **hparams))
    start = time.perf_counter()
    jax.block_until_ready(eager(emb))
    first = time.perf_counter() - start
    paths["no jit (numpy labels)"] = lambda: eager(emb)
    times = dict(zip(paths, interleaved(list(paths.values())), strict=True))
    best = min(times.values())
    rows = [dict(what="labels", loss=name, b=b, path=k, time_s=t, ratio=t / best) for k, t in times.items()]
    rows.append(dict(what="labels", loss=name, b=b, path="no jit, first call", time_s=first,
                     ratio=first / best))
    for r in rows:
        print(f"B={b:6d} {name} labels: {r['path']:24s} {r['time_s'] * 1e3:9.2f} ms "
              f"= {r['ratio']:5.2f} x fastest", flush=True)
    return rows


def _temp_bytes(compiled: Any) -> int | None:
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - a backend without memory analysis
        return None


def list_api_rows(b: int, name: str = "supap") -> list[dict]:
    """``jit(grad(mean(vmap(loss))))`` over the masked rows of ``E E^T`` vs ``batch_loss``."""
    loss_fn, hparams, _ = loss_fn_of(name)
    emb, labels = batch(b)
    y = jnp.asarray(labels)

    def list_api(e, y):
        scores = jnp.matmul(e, e.T, precision="highest")
        rel = (y[:, None] == y[None, :]).astype(jnp.float32)
        where = ~jnp.eye(e.shape[0], dtype=bool)
        one_list = lambda s, r, w: loss_fn(s, r, where=w, reduce_fn=None, **hparams)  # noqa: E731
        return jnp.mean(jax.vmap(one_list)(scores, rel, where))

    start = time.perf_counter()
    f_list = jax.jit(jax.value_and_grad(list_api)).lower(emb, y).compile()
    compile_s = time.perf_counter() - start
    f_batch = jax.jit(jax.value_and_grad(lambda e, y: rankax.batch_loss(loss_fn, e, y, **hparams)))
    # XLA's scratch for each program (None where the backend does not say): the list API's was
    # O(Q N^2) before its large rungs grouped the vmapped lists (docs/losses.md, Cost).
    temp = [_temp_bytes(f) for f in (f_list, f_batch.lower(emb, y).compile())]
    t_list, t_batch = interleaved([lambda: f_list(emb, y), lambda: f_batch(emb, y)])
    (v_list, g_list), (v_batch, g_batch) = f_list(emb, y), f_batch(emb, y)
    err = float(jnp.max(jnp.abs(g_list - g_batch)) / jnp.max(jnp.abs(g_batch)))
    row = dict(what="list_api", loss=name, b=b, time_s=t_list, batch_time_s=t_batch, ratio=t_list / t_batch,
               compile_s=compile_s, value_diff=abs(float(v_list) - float(v_batch)), grad_rel_err=err,
               temp_bytes=temp[0], batch_temp_bytes=temp[1])
    memory = ""
    if None not in temp and temp[1]:
        mib = [t / 2**20 for t in temp]
        memory = f"; XLA scratch {mib[0]:.0f} MiB vs {mib[1]:.0f} MiB = {temp[0] / temp[1]:.1f} x"
    print(f"B={b:6d} list API ({name}) {t_list * 1e3:8.2f} ms vs batch_loss {t_batch * 1e3:8.2f} ms "
          f"= {row['ratio']:.2f} x (compiled in {compile_s:.1f} s; |dvalue| {row['value_diff']:.1e}, "
          f"grad rel err {err:.1e}{memory})", flush=True)
    return [row]


def markdown(out: dict) -> str:
    """The rows as ``docs/benchmarks_paths.md``."""
    rows = out["rows"]
    sizes = sorted({r["b"] for r in rows if r["what"] == "loss"})
    precision = next((r["precision"] for r in rows if r["what"] == "matmul"), "highest")
    lines = [
        "# Call paths against their baselines",
        "",
        f"Generated by `python -m experiments.benchmark_paths` (`make bench`) on {out['device']}, "
        f"jax {out['jax']}, {out['cpu']} (shared: ratios within one run, not absolute "
        "times, are the result). fwd+bwd w.r.t. `[B, 512]` embeddings, K = 4; each loss and the "
        "list API timed in alternation with their baseline, the label paths with each other; "
        "fastest warm calls"
        + ("; glibc kept freed memory (`rankax.host.keep_freed_memory()`)." if out.get("keep_freed_memory")
           else "."),
        "",
        "## Losses through `batch_loss`, traced labels, / similarity matmul (both "
        f'`precision="{precision}"`)',
        "",
        "| loss | hint | " + " | ".join(f"B={b}" for b in sizes) + " |",
        "|---|---|" + "---|" * len(sizes),
    ]
    names = list(dict.fromkeys(r["loss"] for r in rows if r["what"] == "loss"))
    for name in names:
        for hint in (False, True):
            by_b = {r["b"]: r["ratio"] for r in rows if r["what"] == "loss" and r["loss"] == name
                    and r["hint"] == hint}
            cells = " | ".join(f"{by_b[b]:.2f}" if b in by_b else "" for b in sizes)
            cap = (K - 1 if LOSSES[name][2] == "flat" else HAP_POSITIVES) if hint else "none"
            lines.append(f"| {name} | {cap} | {cells} |")
    def median_matmul(b: int) -> float:  # the denominators the ratios above used
        return float(np.median([r["matmul_s"] for r in rows if r["what"] == "loss" and r["b"] == b]))

    mm = ", ".join(f"B={r['b']}: {median_matmul(r['b']) * 1e3:.1f} ms" for r in rows
                   if r["what"] == "matmul" and any(x["what"] == "loss" and x["b"] == r["b"] for x in rows))
    lines += ["", f"Matmul fwd+bwd (median of the rows' own matmul times, each ratio's denominator): {mm}.",
              "", "## Labels given five ways (Smooth-AP) / the fastest", ""]
    lines += [f"- {r['path']}: {r['time_s'] * 1e3:.1f} ms = {r['ratio']:.2f}x"
              for r in rows if r["what"] == "labels"]
    lines += ["", "## The list API (`jit(grad(mean(vmap(loss))))`) / `batch_loss`", ""]
    lines += [f"- B={r['b']}: {r['time_s'] * 1e3:.1f} ms vs {r['batch_time_s'] * 1e3:.1f} ms = "
              f"{r['ratio']:.2f}x, compiled in {r['compile_s']:.1f} s"
              + (f"; XLA scratch {r['temp_bytes'] / 2**20:.0f} MiB vs {r['batch_temp_bytes'] / 2**20:.0f} MiB"
                 if r.get("temp_bytes") is not None and r.get("batch_temp_bytes") is not None else "")
              for r in rows if r["what"] == "list_api"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=flags.multiples(BATCH_MULTIPLE, empty_ok=True), default="1024,4096",
                        help=f'batch sizes of the loss rows, multiples of {BATCH_MULTIPLE} ("": none)')
    parser.add_argument("--losses", type=flags.names(LOSSES, empty_ok=True), default=",".join(LOSSES))
    parser.add_argument("--precision", default="highest", choices=rankax.batch.PRECISION_NAMES)
    parser.add_argument("--label-size", type=flags.multiple(BATCH_MULTIPLE), default=1024)
    parser.add_argument("--list-sizes", type=flags.multiples(BATCH_MULTIPLE, empty_ok=True), default="1024",
                        help='batch sizes of the list API rows ("": none)')
    parser.add_argument("--json", default=None)
    parser.add_argument("--docs", default=None, help="write benchmarks_paths.md into this folder")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="first call rankax.host.keep_freed_memory() (glibc keeps freed memory)")
    args = parser.parse_args(argv)
    machine.cold_compiles()
    kept = args.keep_freed_memory and rankax.host.keep_freed_memory()
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, "
          f"keep_freed_memory: {bool(kept)}", flush=True)
    rows = loss_rows(args.sizes, args.losses, args.precision)
    rows += label_path_rows(args.label_size)
    for b in args.list_sizes:
        rows += list_api_rows(b)
    out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "cpu": machine.cpu_summary(),
           "keep_freed_memory": bool(kept), "rows": rows}
    if args.docs:
        with open(os.path.join(args.docs, "benchmarks_paths.md"), "w") as f:
            f.write(markdown(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
