"""Every speed and memory figure of the GPU issue, in one run on one accelerator (under 5 minutes).

    python -m experiments.benchmark_gpu [--out docs] [--sizes 4096,16384] [--junit tests.xml]
    python -m experiments.benchmark_gpu --add-tests tests.xml --out runs/gpu  # test counts only
    python -m experiments.benchmark_gpu --table docs                       # print the summary

``experiments/gpu_check.sh`` runs the test suite and this script in one command on a GPU host.

Measured on the default JAX device, each against a baseline measured in the same run:

* every loss of ``experiments.benchmark_paths`` through ``batch_loss`` in the user's ``jit``
  with traced labels, without and with the capacity hint, as a ratio to the similarity matmul
  fwd+bwd at the same precision (float32-exact ``"highest"``, the default), and SupAP with the
  TF32 opt-in (``precision="default"``) against the TF32 matmul;
* the label paths (numpy / ``jnp`` closed over, traced, no ``jit``) against the fastest;
* the list API (``jit(grad(mean(vmap(loss))))``) against ``batch_loss``;
* SupAP fwd+bwd at ``B = 65536`` in a fresh process: time and the device's peak memory;
* pytorch-metric-learning's SmoothAP, PNP and FastAP at ``B = 1024`` on the same GPU (when
  torch sees one and the package is importable);
* retrieval evaluation at 60k x 512 against a blocked PyTorch matmul + top-k loop, and a 1M x
  512 gallery (``experiments.benchmark_eval_gpu``; ``--eval-sizes`` / ``--eval-large`` change
  the sizes, e.g. for a smoke run on a CPU).

It writes ``benchmarks_gpu.md`` and ``benchmarks_gpu.json`` into ``--out`` (the repository's
``docs/`` by default) with the device, the jax version and the pass/fail counts of the test
suite run on the same device (``--junit``: pytest's ``--junitxml`` file). Both files are
rewritten after each section, so a run stopped by a time limit keeps the sections it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

# torch runs in this process too (the pytorch-metric-learning rows): JAX must not reserve 75 %
# of the device first, and its peaks are then what each phase allocates. Set before jax loads.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments import benchmark_eval_gpu, flags, machine  # noqa: E402
from experiments import benchmark_paths as paths  # noqa: E402

PML = {"smooth-ap": ("SmoothAPLoss", {"temperature": 0.01}),
       "pnp-Dq": ("PNPLoss", {"variant": "Dq", "alpha": 4, "anneal": 0.01, "b": 2}),
       "fastap": ("FastAPLoss", {"num_bins": 10})}
LARGE_B = 65536


def _large_child(b: int) -> None:
    """In a fresh process: SupAP fwd+bwd at ``b`` (hint K - 1), time and peak device memory."""
    emb, labels = paths.batch(b)
    y = jnp.asarray(labels)
    fn = jax.jit(jax.value_and_grad(lambda e, y: paths.rankax.batch_loss(
        paths.rankax.supap_loss, e, y, max_positives=paths.K - 1, capacity_limit=paths.K - 1)))
    t = paths.timed(lambda: fn(emb, y), repeats=3)
    stats = jax.devices()[0].memory_stats() or {}
    print("RESULT " + json.dumps({"b": b, "time_s": t, "peak_bytes": stats.get("peak_bytes_in_use")}))


def _in_child(flag: str, value: str, timeout_s: float) -> dict:
    """The ``RESULT`` JSON line of ``python -m experiments.benchmark_gpu <flag> <value>`` run in a
    fresh process (its device-memory peak is its own), or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "experiments.benchmark_gpu", flag, value]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {timeout_s:.0f} s (--budget-s)"}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(lines[-1][7:])


def large_batch_row(b: int = LARGE_B, timeout_s: float = 240.0) -> dict:
    """SupAP at ``b`` in a child process (:func:`_large_child`), stopped after ``timeout_s``."""
    row = {"what": "large", "b": b, **_in_child("--large-child", str(b), timeout_s)}
    if "error" in row:
        return row
    peak = row.get("peak_bytes")
    print(f"B={b} supap fwd+bwd {row['time_s'] * 1e3:.0f} ms, peak device memory "
          f"{peak / 2**30 if peak else float('nan'):.2f} GiB", flush=True)
    return row


def _large_gallery_child(size: str) -> None:
    """In a fresh process: :func:`benchmark_eval_gpu.bench_large` of ``GALLERYxDIM``, whose peak
    device memory is then this evaluation's alone (JAX's peak counter cannot be reset)."""
    print("RESULT " + json.dumps(benchmark_eval_gpu.bench_large(*benchmark_eval_gpu.large_gallery(size))))


def large_gallery_row(size: tuple[int, int], timeout_s: float = 300.0) -> dict:
    """The large-gallery evaluation in a child process (:func:`_large_gallery_child`)."""
    big = _in_child("--large-gallery-child", f"{size[0]}x{size[1]}", timeout_s)
    if "error" not in big:
        mem = big.get("peak_bytes_in_use")
        print(f"{big['queries']} queries x {big['gallery']} x {big['dim']} gallery: first "
              f"{big['evaluate_first_s']:.3f} s, warm {big['evaluate_warm_s']:.3f} s"
              + (f", peak device memory {mem / 2**30:.2f} GiB (its own process)" if mem else ""), flush=True)
    return big


def pml_rows(b: int = 1024) -> list[dict]:
    """pytorch-metric-learning on the same GPU, against rankax's traced-label step."""
    try:
        import torch
        from pytorch_metric_learning import losses as pml_losses
    except ImportError as err:
        return [{"what": "pml", "error": f"not installed: {err}"}]
    if not torch.cuda.is_available():
        return [{"what": "pml", "error": "torch sees no GPU"}]
    rows = []
    emb = torch.nn.functional.normalize(torch.randn(b, paths.D, device="cuda"), dim=1)
    labels = torch.arange(b // paths.K, device="cuda").repeat_interleave(paths.K)
    for name, (cls, kw) in PML.items():
        criterion = getattr(pml_losses, cls)(**kw)

        def step(criterion=criterion):
            e = emb.clone().requires_grad_(True)
            criterion(e, labels).backward()
            torch.cuda.synchronize()

        torch.cuda.reset_peak_memory_stats()
        try:
            t = paths.timed(step, repeats=3)
            peak = torch.cuda.max_memory_allocated()
        except torch.OutOfMemoryError:
            rows.append({"what": "pml", "loss": name, "b": b, "error": "out of memory"})
            continue
        finally:
            torch.cuda.empty_cache()
        ours, _ = paths.step_time(name, b, hint=True, precision="highest")
        rows.append({"what": "pml", "loss": name, "b": b, "time_s": t, "peak_bytes": peak,
                     "rankax_time_s": ours, "speedup": t / ours})
        print(f"B={b} pml {cls} {t * 1e3:9.2f} ms ({peak / 2**30:.1f} GiB) vs rankax {ours * 1e3:.2f} ms "
              f"= {t / ours:.0f}x", flush=True)
    return rows


#: The file gpu_check.sh writes beside the JUnit files when a tier was stopped or not reached.
PARTIAL_MARK = "tests_partial"


def test_counts(junit: str | None, partial: bool = False) -> dict | None:
    """Passed / failed (failures + errors) / skipped, summed over pytest's ``--junitxml`` files
    (``junit``: their paths, comma-separated; those missing are left out, ``None`` when all
    are); ``partial``: a run was stopped at its time limit before the end."""
    files = [Path(f) for f in (junit or "").split(",") if f and Path(f).exists()]
    if not files:
        return None
    suites = []
    for f in files:
        root = ET.parse(f).getroot()
        suites += [root] if root.tag == "testsuite" else list(root)
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = total["failures"] + total["errors"]
    passed = total["tests"] - failed - total["skipped"]
    counts = {"passed": passed, "failed": failed, "skipped": total["skipped"]}
    return {**counts, "partial": True} if partial else counts


def summary(rows: list[dict], extra: dict) -> dict:
    """The JSON the issue asks for: ratios by loss and batch size, list API, evaluation, tests."""
    losses: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.get("what") == "loss" and r["precision"] == "highest":
            key = r["loss"] + ("" if r["hint"] else " (no hint)")
            losses.setdefault(key, {})[str(r["b"])] = round(r["ratio"], 3)
    tf32 = {str(r["b"]): round(r["ratio"], 3) for r in rows
            if r.get("what") == "loss" and r["precision"] == "default" and r["hint"]}
    list_api = [r for r in rows if r.get("what") == "list_api"]
    evaluation = extra.get("evaluation", {})
    return {
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "losses": losses,
        "supap_tf32_opt_in": tf32,
        "list_api_ratio": round(list_api[0]["ratio"], 3) if list_api else None,
        "evaluate_ratio_to_topk_loop": evaluation.get("evaluate_ratio_to_topk_loop"),
        "gpu_tests": extra.get("gpu_tests"),
        "labels": {r["path"]: round(r["ratio"], 3) for r in rows if r.get("what") == "labels"},
        "large_batch": extra.get("large"),
        "pml": extra.get("pml"),
        "evaluation": evaluation,
    }


def write(out: Path, result: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "benchmarks_gpu.json", json.dumps(result, indent=1, default=float) + "\n")
    lines = [
        "# GPU benchmark",
        "",
        f"Generated by `python -m experiments.benchmark_gpu` on **{result['device']}**, jax "
        f"{result['jax']}. fwd+bwd with respect to the `[B, 512]` embeddings, P x K batches "
        "(K = 4); each loss and its matmul timed in alternation, fastest of 5 warm calls each "
        "(SupAP at the large batch and pytorch-metric-learning: median of 3); every ratio is "
        "against a baseline of the same run.",
        "",
        "## Losses / similarity matmul (both float32-exact, `precision=\"highest\"`)",
        "",
    ]
    sizes = sorted({int(b) for by_b in result["losses"].values() for b in by_b})
    lines += ["| loss | " + " | ".join(f"B={b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for name, by_b in result["losses"].items():
        cells = " | ".join(f"{by_b.get(str(b), float('nan')):.2f}" for b in sizes)
        lines.append(f"| {name} | {cells} |")
    mm = {(r["b"], r["precision"]): r["time_s"] for r in rows if r.get("what") == "matmul"}
    lines += ["", "Matmul fwd+bwd: " + ", ".join(
        f"B={b} {p}: {t * 1e3:.2f} ms" for (b, p), t in sorted(mm.items())), ""]
    if result["supap_tf32_opt_in"]:
        lines += [f"SupAP with the TF32 opt-in (`precision=\"default\"`) / TF32 matmul: "
                  f"{result['supap_tf32_opt_in']}", ""]
    lines += ["## Label paths (Smooth-AP) / fastest", "",
              *[f"- {k}: {v:.2f}" for k, v in result["labels"].items()], ""]
    lines += [f"## List API / batch_loss: {result['list_api_ratio']}", ""]
    if result.get("large_batch"):
        b = result["large_batch"].get("b", LARGE_B)
        lines += [f"## SupAP at B = {b}: {json.dumps(result['large_batch'])}", ""]
    if result.get("pml"):
        lines += ["## pytorch-metric-learning, same GPU", ""]
        lines += [f"- {json.dumps(r)}" for r in result["pml"]] + [""]
    evaluation = json.dumps(result["evaluation"], indent=1, default=float)
    lines += ["## Evaluation", "", f"```\n{evaluation}\n```", ""]
    lines += [f"## Test suite on this device: {result['gpu_tests']}", ""]
    _write_text(out / "benchmarks_gpu.md", "\n".join(lines))


SKIPPABLE = ("pml", "eval", "large", "tf32")


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(result: dict) -> str:
    """A short plain-text summary of ``benchmarks_gpu.json``: what the issue's targets read."""
    sizes = sorted({int(b) for by_b in result.get("losses", {}).values() for b in by_b})
    lines = [f"{result.get('device')} / jax {result.get('jax')}",
             f"{'loss / matmul':<22}" + "".join(f"{'B=' + str(b):>10}" for b in sizes)]
    for name, by_b in result.get("losses", {}).items():
        lines.append(f"{name:<22}" + "".join(f"{_fmt(by_b.get(str(b))):>10}" for b in sizes))
    labels = result.get("labels") or {}
    if labels:
        lines.append("label paths / fastest: " + ", ".join(f"{k} {v:.2f}" for k, v in labels.items()))
    lines.append(f"list API / batch_loss: {_fmt(result.get('list_api_ratio'))}")
    evaluation = result.get("evaluation") or {}
    if "error" in evaluation:
        lines.append(f"evaluate: {evaluation['error']}")
    elif evaluation:
        lines.append(f"evaluate {evaluation.get('size')}: / top-k loop "
                     f"{_fmt(evaluation.get('evaluate_ratio_to_topk_loop'))}, first call "
                     f"{_fmt(evaluation.get('evaluate_first_s'))} s (compiling "
                     f"{_fmt(evaluation.get('evaluate_first_compile_s'))} s; without autotuning "
                     f"{_fmt(evaluation.get('evaluate_recompile_s'))} s), warm "
                     f"{_fmt(evaluation.get('evaluate_warm_s'))} s; a profiled call "
                     f"{_fmt(evaluation.get('evaluate_profiled_s'))} s, "
                     f"{_fmt(evaluation.get('evaluate_device_wait_s'))} s of it on the device")
    else:
        lines.append("evaluate: not run")
    big = evaluation.get("large_gallery") or {}
    if "error" in big:
        lines.append(f"large gallery: {big['error']}")
    elif big:
        lines.append(f"{big['queries']} queries x {big['gallery']} x {big['dim']}: warm "
                     f"{_fmt(big.get('evaluate_warm_s'))} s "
                     f"(profiled {_fmt(big.get('evaluate_profiled_s'))} s, "
                     f"{_fmt(big.get('evaluate_device_wait_s'))} s of it on the device), first "
                     f"{_fmt(big.get('evaluate_first_s'))} s")
    large = result.get("large_batch") or {}
    if large.get("time_s") is not None:
        peak = large.get("peak_bytes")
        lines.append(f"SupAP B={large['b']}: {large['time_s'] * 1e3:.0f} ms, peak "
                     f"{_fmt(peak / 2**30 if peak else None)} GiB")
    lines.append(f"tests on this device: {result.get('gpu_tests')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs")
    parser.add_argument("--sizes", type=flags.multiples(paths.BATCH_MULTIPLE), default="4096,16384")
    parser.add_argument("--losses", type=flags.names(paths.LOSSES), default=",".join(paths.ISSUE_LOSSES))
    parser.add_argument("--junit", default=None)
    parser.add_argument("--add-tests", default=None,
                        help="only add test counts (pytest JUnit files, comma-separated) to an existing JSON")
    parser.add_argument("--tests-partial", action="store_true",
                        help="with --add-tests: the test run was stopped at its time limit (also "
                             "read from a missing file or a tests_partial file beside them)")
    parser.add_argument("--large", type=flags.multiple(paths.BATCH_MULTIPLE), default=LARGE_B)
    parser.add_argument("--eval-sizes", type=benchmark_eval_gpu.gallery_sizes, default="60000x512",
                        help="comma list of ROWSxDIM sets evaluated against the top-k loop")
    parser.add_argument("--eval-large", type=benchmark_eval_gpu.large_gallery, default="1000000x512",
                        help="GALLERYxDIM of the large-gallery evaluation (10,000 queries), or none")
    parser.add_argument("--table", default=None, metavar="DIR",
                        help="only print the summary table of DIR/benchmarks_gpu.json")
    parser.add_argument("--skip", type=flags.names(SKIPPABLE, empty_ok=True), default="",
                        help=f"comma list of: {','.join(SKIPPABLE)}")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="the loss sweep stops adding rows after this many seconds")
    parser.add_argument("--large-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--large-gallery-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.large_child:
        machine.cold_compiles()
        _large_child(args.large_child)
        return
    if args.large_gallery_child:
        _large_gallery_child(args.large_gallery_child)
        return
    if args.table:
        print(table(json.loads((Path(args.table) / "benchmarks_gpu.json").read_text())))
        return
    out = Path(args.out)
    if args.add_tests:
        missing = [f for f in ("benchmarks_gpu.json", "benchmarks_gpu_rows.json") if not (out / f).exists()]
        if missing:
            parser.error(f"--add-tests needs {' and '.join(missing)} in --out {out}: the folder a full "
                         "run wrote (gpu_check.sh's $OUT; docs/ holds no rows file)")
        junits = [Path(f) for f in args.add_tests.split(",") if f]
        if not any(f.exists() for f in junits):
            parser.error(f"--add-tests: none of {args.add_tests} exists (the saved counts are kept)")
        # A tier not reached, or stopped (gpu_check.sh leaves tests_partial beside the files):
        # the counts are partial whoever merges them.
        partial = args.tests_partial or any(not f.exists() or (f.parent / PARTIAL_MARK).exists()
                                            for f in junits)
        saved = json.loads((out / "benchmarks_gpu.json").read_text())
        saved["gpu_tests"] = test_counts(args.add_tests, partial)
        rows = json.loads((out / "benchmarks_gpu_rows.json").read_text())
        write(out, saved, rows)
        print(table(saved))
        return
    skip = set(args.skip)
    machine.cold_compiles()  # here and in the child of large_batch_row
    start = time.perf_counter()
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
    sizes = args.sizes
    rows: list[dict] = []
    extra: dict = {"gpu_tests": test_counts(args.junit)}

    def save() -> dict:
        """Both files as they stand: a run stopped by its time limit keeps what it measured."""
        result = summary(rows, extra)
        result["elapsed_s"] = time.perf_counter() - start
        _write_text(out / "benchmarks_gpu_rows.json", json.dumps(rows, indent=1, default=float))
        write(out, result, rows)
        return result

    def section(name: str, fn: Callable[[], Any], failed: Callable[[str], Any]) -> Any:
        """``fn()``, or ``failed(reason)`` when it raises or the budget is spent: one section's
        error must not cost the sections after it."""
        if time.perf_counter() - start > args.budget_s:
            print(f"time budget spent: {name} skipped", flush=True)
            return failed(f"skipped: --budget-s {args.budget_s:.0f} spent")
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 -- recorded in the JSON instead
            print(f"{name}: {type(err).__name__}: {err}", flush=True)
            return failed(f"{type(err).__name__}: {err}"[:300])

    def no_rows(reason: str) -> list[dict]:
        return [{"what": "error", "error": reason}]

    # The figures the issue's JSON names first (losses, list API, evaluation at 60k), each saved
    # as soon as it is measured; then the others, each within what is left of --budget-s.
    # The losses: a size starts within 55 % of the budget (the rest is for the sections after
    # them); its rows compile in parallel, and each size is saved as soon as it is measured.
    paths.DEADLINE = start + args.budget_s * 0.55
    for b in sizes:
        rows += section(f"losses B={b}", lambda b=b: paths.loss_rows([b], args.losses, "highest"), no_rows)
        save()
    rows += section("label paths", lambda: paths.label_path_rows(min(4096, max(sizes))), no_rows)
    rows += section("list API", lambda: paths.list_api_rows(min(1024, max(sizes))), no_rows)
    save()
    if "eval" not in skip:
        extra["evaluation"] = section(
            "evaluation", lambda: benchmark_eval_gpu.run(sizes=tuple(args.eval_sizes), large=None),
            lambda reason: {"error": reason})
        save()
    if "tf32" not in skip:
        paths.DEADLINE = max(paths.DEADLINE, time.perf_counter() + args.budget_s * 0.1)
        rows += section("tf32", lambda: paths.loss_rows(
            [s for s in sizes if s >= 4096] or sizes, ["supap"], "default"), no_rows)
        save()
    if "large" not in skip:
        left = lambda: max(30.0, args.budget_s - (time.perf_counter() - start))  # noqa: E731
        extra["large"] = section("large batch", lambda: large_batch_row(args.large, min(240.0, left())),
                                 lambda reason: {"what": "large", "b": args.large, "error": reason})
        save()
    if "pml" not in skip:
        extra["pml"] = section("pytorch-metric-learning", lambda: pml_rows(min(1024, max(sizes))),
                               lambda reason: [{"what": "pml", "error": reason}])
        save()
    if "eval" not in skip and args.eval_large:  # tried even when the 60k evaluation failed
        extra["evaluation"]["large_gallery"] = section(
            "large gallery", lambda: large_gallery_row(args.eval_large), lambda reason: {"error": reason})
    result = save()
    print(table(result))
    print(f"total {result['elapsed_s']:.0f} s")


def _write_text(path: Path, text: str) -> None:
    """``path`` replaced whole (a temporary file renamed over it): a run stopped mid-write keeps
    the previous version, never half a JSON file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
