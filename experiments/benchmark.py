"""Speed and memory of the batch path: ``rankax.batch_loss`` vs a dense JAX loss and PyTorch peers.

    python -m experiments.benchmark [--quick] [--docs docs] [--json rows.json]

For P x K batches (K = 4 samples per class, L2-normalised random embeddings) it measures the
fwd+bwd time (gradient with respect to the ``[B, D]`` embeddings, compilation excluded; best of
a few warm runs) and the peak resident memory of:

* ``rankax``: ``jax.jit(jax.value_and_grad(batch_loss))`` with traced labels, as in a train
  step, ``max_positives = capacity_limit = K - 1`` (one capacity rung: the P x K setting);
  H-AP uses ``[B, 2]`` label paths (class, super-class of 4 classes: 15 graded positives per
  query) and ``max_positives = capacity_limit = 15``;
* ``dense-jax``: the textbook formulation in JAX: the full ``[B, B]`` score matrix and the
  list loss ``vmap``-ed over its rows with every item as a positive slot (``O(B^3)`` memory);
* ``pml``: pytorch-metric-learning's ``PNPLoss`` (variant Dq), ``SmoothAPLoss`` and
  ``FastAPLoss``, when ``torch`` and ``pytorch-metric-learning`` are installed
  (``pip install 'rankax[bench]'``);
* ``matmul``: fwd+bwd of the similarity matmul ``E E^T`` alone -- the floor any batch loss pays.

Every configuration runs in its own subprocess, which reports its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``: the whole process, JAX or torch runtime included) and,
for JAX, the scratch memory XLA reserves for the compiled program. With ``--docs DIR`` (as
``make bench`` runs it) the script writes ``DIR/benchmarks.md`` (tables) and
``DIR/benchmark_batch.png`` (plot); without it, it only prints. It prints the
ratios the batch-path issue asks for: speed-up over pytorch-metric-learning at B = 512,
D = 512; SupAP's peak memory at B = 16384, D = 128; rankax / matmul at B = 4096, D = 512.

Losses plug in by name (``LOSSES`` below): a name whose function does not exist in
``rankax.losses`` is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from experiments import machine

K = 4

# name -> (rankax.losses attribute, hyperparameters, label kind, pml class or None)
LOSSES = {
    "supap": ("supap_loss", {}, "flat", None),
    "smooth-ap": ("smooth_ap_loss", {}, "flat", "SmoothAPLoss"),
    "pnp-Dq": ("pnp_loss", {"variant": "Dq", "alpha": 4.0}, "flat", "PNPLoss"),
    "hap": ("hap_loss", {}, "paths", None),
    "fastap": ("fast_ap_loss", {}, "flat", "FastAPLoss"),
}
PML_ARGS = {
    "SmoothAPLoss": {"temperature": 0.01},
    "PNPLoss": {"variant": "Dq", "alpha": 4, "anneal": 0.01, "b": 2},
    "FastAPLoss": {"num_bins": 10},
}
HAP_POSITIVES = 4 * K - 1


# ----------------------------------------------------------------------------- child process


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time(fn, repeats: int, budget_s: float = 20.0) -> float:
    """Best of ``repeats`` warm calls (fewer when one call is long)."""
    best = float("inf")
    spent = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        spent += elapsed
        if spent > budget_s:
            break
    return best


def _jax_inputs(b: int, d: int, kind: str):
    import jax
    import jax.numpy as jnp

    emb = jax.random.normal(jax.random.key(0), (b, d), jnp.float32)
    emb = emb / jnp.linalg.norm(emb, axis=1, keepdims=True)
    fine = jnp.repeat(jnp.arange(b // K, dtype=jnp.int32), K)
    labels = fine if kind == "flat" else jnp.stack([fine, fine // 4], axis=1)
    return emb, labels


def _child_jax(impl: str, loss: str, b: int, d: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    import rankax

    out: dict = {}
    if impl == "matmul":
        emb, _ = _jax_inputs(b, d, "flat")
        cotangent = jax.random.normal(jax.random.key(1), (b, b), jnp.float32)
        # The loss's similarity precision ("highest", batch_loss's default): float32 on every backend.
        fn = jax.jit(jax.value_and_grad(lambda e, g: jnp.vdot(g, jnp.matmul(e, e.T, precision="highest"))))
        args = (emb, cotangent)
    else:
        attr, hparams, kind, _ = LOSSES[loss]
        loss_fn = getattr(rankax.losses, attr)
        emb, labels = _jax_inputs(b, d, kind)
        args = (emb, labels)
        if impl == "rankax":
            cap = K - 1 if kind == "flat" else HAP_POSITIVES
            fn = jax.jit(
                jax.value_and_grad(
                    lambda e, y: rankax.batch_loss(
                        loss_fn, e, y, max_positives=cap, capacity_limit=cap, **hparams
                    )
                )
            )
        else:  # dense-jax

            def dense(e, y):
                scores = e @ e.T
                if kind == "flat":
                    rel = (y[:, None] == y[None, :]).astype(jnp.float32)
                else:
                    rel = rankax.hierarchy.hierarchical_relevance(y, y)
                where = ~jnp.eye(e.shape[0], dtype=bool)
                per_list = jax.vmap(
                    lambda s, r, w: loss_fn(s, r, where=w, reduce_fn=None, **hparams)
                )(scores, rel, where)
                valid = jnp.any((rel > 0) & where, axis=-1)
                return jnp.sum(jnp.where(valid, per_list, 0.0)) / jnp.maximum(jnp.sum(valid), 1)

            fn = jax.jit(jax.value_and_grad(dense))
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    out["compile_s"] = time.perf_counter() - start
    stats = compiled.memory_analysis()
    if stats is not None:
        out["xla_temp_mib"] = stats.temp_size_in_bytes / 2**20
    run = lambda: jax.block_until_ready(compiled(*args))
    value, _ = run()
    out["value"] = float(value)
    out["time_s"] = _time(run, repeats)
    return out


def _child_pml(loss: str, b: int, d: int, repeats: int) -> dict:
    import torch
    from pytorch_metric_learning import losses as pml_losses

    name = LOSSES[loss][3]
    criterion = getattr(pml_losses, name)(**PML_ARGS[name])
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(b, d), dim=1)
    labels = torch.arange(b // K).repeat_interleave(K)

    def run():
        e = emb.clone().requires_grad_(True)
        value = criterion(e, labels)
        value.backward()
        return float(value)

    out = {"value": run()}  # first call doubles as warm-up
    out["time_s"] = _time(run, repeats)
    return out


def child_main(spec: dict) -> None:
    if spec["impl"] == "pml":
        result = _child_pml(spec["loss"], spec["b"], spec["d"], spec["repeats"])
    else:
        result = _child_jax(spec["impl"], spec["loss"], spec["b"], spec["d"], spec["repeats"])
    result["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- parent


def run_config(impl: str, loss: str, b: int, d: int, repeats: int = 3, timeout: int = 900) -> dict:
    spec = dict(impl=impl, loss=loss, b=b, d=d, repeats=repeats)
    row = dict(spec)
    cmd = [sys.executable, "-m", "experiments.benchmark", "--child", json.dumps(spec)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        row["error"] = f"timeout {timeout}s"
        return row
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        row["error"] = "out of memory" if "RESOURCE_EXHAUSTED" in proc.stderr else tail[0][:160]
        return row
    row.update(json.loads(lines[-1][len("RESULT ") :]))
    return row


def _available_losses() -> list[str]:
    import rankax

    return [name for name, (attr, *_) in LOSSES.items() if hasattr(rankax.losses, attr)]


def _has_pml() -> bool:
    try:
        import pytorch_metric_learning  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def plan(quick: bool) -> list[tuple[str, str, int, int, int]]:
    """(impl, loss, B, D, repeats) of every configuration, cheapest first."""
    losses = [x for x in _available_losses() if x != "fastap"]
    configs: list[tuple[str, str, int, int, int]] = []
    d512 = [256, 512, 1024, 2048, 4096] if not quick else [256, 512]
    d128 = [1024, 4096, 16384] if not quick else [1024]
    for b in d512:
        configs.append(("matmul", "-", b, 512, 5))
        configs += [("rankax", loss, b, 512, 5) for loss in losses]
    for b in d128:
        configs.append(("matmul", "-", b, 128, 5))
        big = b > 4096
        configs += [
            ("rankax", loss, b, 128, 2 if big else 5) for loss in losses if not big or loss == "supap"
        ]
    if not quick:
        configs += [("rankax", "supap", 32768, 128, 1)]
    for b in (256, 512):
        dense = [x for x in ("supap", "smooth-ap", "pnp-Dq") if x in losses]
        configs += [("dense-jax", loss, b, 512, 3) for loss in dense]
    if _has_pml():
        # The peers build B x B x B tensors: 5 GB (PNP) and 22 GB (Smooth-AP, B = 1024) --
        # they stop at B = 512 here. FastAP is a histogram loss and cheap.
        for b in (256, 512):
            configs += [("pml", loss, b, 512, 2) for loss in ("pnp-Dq", "smooth-ap", "fastap")]
        configs += [("pml", "fastap", 4096, 512, 2)]
        if "fastap" in _available_losses():
            configs += [("rankax", "fastap", b, 512, 5) for b in (256, 512, 4096)]
    return configs


def _find(rows, impl, loss, b, d):
    for r in rows:
        if (r["impl"], r["loss"], r["b"], r["d"]) == (impl, loss, b, d) and "time_s" in r:
            return r
    return None


def summary(rows: list[dict]) -> list[str]:
    lines = []
    for loss in ("pnp-Dq", "smooth-ap", "fastap"):
        ours, peer = _find(rows, "rankax", loss, 512, 512), _find(rows, "pml", loss, 512, 512)
        if ours and peer:
            lines.append(
                f"speed-up vs pytorch-metric-learning, {loss}, B=512 D=512: "
                f"{peer['time_s'] / ours['time_s']:.0f}x ({peer['time_s'] * 1e3:.0f} ms vs "
                f"{ours['time_s'] * 1e3:.1f} ms)"
            )
    for b in (16384, 32768):
        big = _find(rows, "rankax", "supap", b, 128)
        if big:
            lines.append(
                f"supap fwd+bwd B={b} D=128 K=4: peak RSS {big['peak_rss_mib'] / 1024:.2f} GiB "
                f"(XLA scratch {big.get('xla_temp_mib', float('nan')):.0f} MiB), {big['time_s']:.2f} s"
            )
    mm = _find(rows, "matmul", "-", 4096, 512)
    for loss in _available_losses():
        ours = _find(rows, "rankax", loss, 4096, 512)
        if ours and mm:
            lines.append(
                f"{loss} B=4096 D=512: fwd+bwd / similarity-matmul fwd+bwd = "
                f"{ours['time_s'] / mm['time_s']:.2f} ({ours['time_s']:.3f} s vs {mm['time_s']:.3f} s)"
            )
    return lines


def reading(rows: list[dict]) -> list[str]:
    """The notes under the targets, their figures read from ``rows`` (a note whose rows are
    missing says so)."""
    mm = max((r for r in rows if r["impl"] == "matmul" and "peak_rss_mib" in r), key=lambda r: r["b"],
             default=None)
    big = f"{mm['peak_rss_mib'] / 1024:.1f} GiB of RSS at B = {mm['b']}" if mm else "(not run)"
    hap, sup = _find(rows, "rankax", "hap", 4096, 512), _find(rows, "rankax", "supap", 4096, 512)
    times = f"{hap['time_s'] / sup['time_s']:.1f}x SupAP's time" if hap and sup else "(not run)"
    fast, peer = _find(rows, "rankax", "fastap", 512, 512), _find(rows, "pml", "fastap", 512, 512)
    gap = f"{peer['time_s'] / fast['time_s']:.1f}x at B = 512" if fast and peer else "(not run)"
    return [
        "- `rankax` costs `O(B * C * B)` with `C` positive slots. Up to `2**26` scores",
        "  (B = 8192) it keeps the `B x B` similarity matrix for the backward pass; beyond that it",
        "  never materialises one and recomputes each block's scores in the backward pass: its",
        "  memory stays near the bare process up to B = 32768. The `matmul` reference needs its",
        f"  `[B, B]` cotangent as an input, which the benchmark draws at random: {big}, most of",
        "  it that draw (the cotangent itself is `4 B^2` bytes, 1 GiB at B = 16384). rankax's time",
        "  is the similarity matmul (forward, the two backward matmuls, and the recomputation above",
        "  the kept size) and elementwise work proportional to `C`.",
        "- `hap` runs on `[B, 2]` label paths where every query has 15 graded positives",
        f"  (`C = 15` instead of 3): {times} at B = 4096, D = 512.",
        "- `dense-jax` calls the list API on the dense `[B, B]` scores: its reserved memory grows as",
        "  `B^3` (the capacity ladder's tiles), its time about as rankax's; `pml` builds `[B, B, B]`",
        "  tensors, time and memory `B^3`. pytorch-metric-learning's losses count the query as its",
        "  own positive (`include_self=True` in rankax terms), so their values differ; only the cost",
        "  is compared.",
        f"- FastAP is a histogram loss (`O(B * B * bins)` in both libraries): pml / rankax {gap}.",
    ]


def _fmt_row(r: dict) -> str:
    if "error" in r:
        return f"| {r['impl']} | {r['loss']} | {r['b']} | {r['d']} | {r['error']} | | |"
    t = r["time_s"]
    t_str = f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"
    temp = f"{r['xla_temp_mib']:.0f}" if "xla_temp_mib" in r else ""
    return f"| {r['impl']} | {r['loss']} | {r['b']} | {r['d']} | {t_str} | {r['peak_rss_mib']:.0f} | {temp} |"


def _host() -> dict[str, str]:
    """What measured the rows: the CPU, the jax version and backend (kept in ``--json`` dumps,
    so that ``--from-json`` on another machine names the one that measured)."""
    import jax

    return {"cpu": machine.cpu_summary(), "jax": jax.__version__, "backend": jax.default_backend()}


def write_docs(rows: list[dict], lines: list[str], docs: Path, elapsed: float,
               host: dict[str, str] | None = None) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    host = host or _host()  # a dump without one (older): this machine, as before
    header = [
        "# Batch-path benchmark",
        "",
        "Generated by `python -m experiments.benchmark --docs docs` "
        "(see its docstring for what is measured).",
        f"Host: {host['cpu']} "
        f"(shared with other jobs while this ran: timings are noisy), jax {host['jax']}, "
        f"backend {host['backend']}; total run {elapsed / 60:.1f} min.",
        "",
        "fwd+bwd = value and gradient with respect to the `[B, D]` embeddings, compilation",
        "excluded, best of a few warm runs. Peak RSS is the whole process (a bare JAX process",
        "is about 0.3-0.5 GiB). P x K batches, K = 4.",
        "",
        "## Targets of the batch-path issue",
        "",
        *[f"- {x}" for x in lines],
        "",
        "![fwd+bwd time and peak memory vs batch size](benchmark_batch.png)",
        "",
        "Reading the numbers:",
        "",
        *reading(rows),
        "",
        "## All configurations",
        "",
        "| impl | loss | B | D | fwd+bwd | peak RSS (MiB) | XLA scratch (MiB) |",
        "|---|---|---|---|---|---|---|",
        *[_fmt_row(r) for r in rows],
        "",
    ]
    path = docs / "benchmarks.md"
    path.write_text("\n".join(header).rstrip("\n") + "\n" + _other_sections(path))
    plot(rows, docs / "benchmark_batch.png")


#: The sections of docs/benchmarks.md this script writes; every other "## " section (guards,
#: retrieval evaluation, GPU summary, the ScaNN section of benchmark_scann.py) is kept as is.
OWN_SECTIONS = ("## Targets of the batch-path issue", "## All configurations")


def _other_sections(path: Path) -> str:
    """The part of an existing ``benchmarks.md`` from its first section not written here."""
    if not path.exists():
        return ""
    lines = path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("## ") and not line.startswith(OWN_SECTIONS):
            return "\n" + "".join(lines[i:])
    return ""


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[tuple[str, str, int], list[dict]] = {}
    for r in rows:
        if "time_s" in r:
            series.setdefault((r["impl"], r["loss"], r["d"]), []).append(r)
    # Colour = loss, line style = implementation, marker = dimension.
    styles = {"rankax": "-", "dense-jax": "--", "pml": ":", "matmul": "-."}
    colours = dict(zip([*LOSSES, "-"], ["C0", "C1", "C2", "C3", "C4", "k"], strict=True))
    for (impl, loss, d), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["b"])
        label = f"{impl} {loss if impl != 'matmul' else 'E E^T'} D={d}"
        bs = [r["b"] for r in rs]
        style = dict(color=colours[loss], marker="o" if d == 512 else "s", label=label)
        ax_t.plot(bs, [r["time_s"] for r in rs], styles[impl], **style)
        ax_m.plot(bs, [r["peak_rss_mib"] / 1024 for r in rs], styles[impl], **style)
    for ax, title in ((ax_t, "fwd+bwd time (s)"), (ax_m, "peak RSS (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B (K = 4)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few small configurations only")
    parser.add_argument("--docs", default=None,
                        help="write benchmarks.md and the plot into this folder (default: print only)")
    parser.add_argument("--json", default=None, help="also dump the raw rows to this file")
    parser.add_argument("--from-json", default=None, help="rewrite the docs from a --json dump")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.from_json and not args.docs:
        parser.error("--from-json rewrites the docs: give --docs (e.g. --docs docs)")
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        lines = summary(saved["rows"])
        print("\n".join(lines))
        write_docs(saved["rows"], lines, Path(args.docs), saved["elapsed_s"], saved.get("host"))
        return
    if args.child:
        spec = json.loads(args.child)
        if spec["impl"] != "pml":  # a pml child imports no jax: its peak RSS is torch's alone
            machine.cold_compiles()
        child_main(spec)
        return
    machine.cold_compiles()  # here and in the JAX children it starts (through the environment)
    start = time.perf_counter()
    rows = []
    for impl, loss, b, d, repeats in plan(args.quick):
        row = run_config(impl, loss, b, d, repeats)
        rows.append(row)
        print(_fmt_row(row), flush=True)
    lines = summary(rows)
    print("\n".join(lines))
    elapsed = time.perf_counter() - start
    if args.json:
        dump = {"rows": rows, "elapsed_s": elapsed, "host": _host()}
        Path(args.json).write_text(json.dumps(dump, indent=1))
    if args.docs:
        write_docs(rows, lines, Path(args.docs), elapsed)


if __name__ == "__main__":
    main()
