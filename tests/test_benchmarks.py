"""The benchmark scripts' own machinery (not their timings: those are for the scripts to print)."""

import argparse
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import profile_step


def test_op_times_names_the_compiled_ops():
    # A jit with one matmul: its dot (or the YNNPACK/cuBLAS fusion holding it) is among the ops,
    # every op name is an HLO name, and the ops come most expensive first.
    x = jnp.ones((128, 128))
    fn = jax.jit(lambda a: jnp.tanh(a @ a.T))
    ops = profile_step.op_times(lambda: fn(x), steps=2)
    names = [name for name, _, _ in ops]
    assert ops and all(profile_step._is_op(n) for n in names)
    assert any("dot" in n or "fusion" in n for n in names)
    assert all(s >= 0 and calls >= 1 for _, s, calls in ops)
    assert [s for _, s, _ in ops] == sorted((s for _, s, _ in ops), reverse=True)


def test_is_op_leaves_out_the_runtime():
    assert profile_step._is_op("select_select_fusion.2") and profile_step._is_op("dot.5")
    for name in ("ThunkExecutor::Execute", "$pjit.py:250 cache_miss", "ExecuteReplicated.__call__"):
        assert not profile_step._is_op(name)


def _meta(pid, kind, name, tid=None):
    event = {"ph": "M", "pid": pid, "name": kind, "args": {"name": name}}
    return event if tid is None else {**event, "tid": tid}


def test_op_events_on_a_gpu_trace_takes_the_device_ops_line():
    # A hand-written trace in the layout of a GPU profile: the host's runtime events, and a
    # device process whose "XLA Ops" line and stream both hold the same fusion (once each) and
    # whose kernels may have spaces in their names. Each op is counted once, from "XLA Ops".
    host, gpu = 1, 2
    events = [
        _meta(host, "process_name", "/host:CPU"), _meta(gpu, "process_name", "/device:GPU:0"),
        _meta(host, "thread_name", "python", 10), _meta(gpu, "thread_name", "XLA Modules", 20),
        _meta(gpu, "thread_name", "XLA Ops", 21), _meta(gpu, "thread_name", "Stream #13(Compute)", 22),
        {"ph": "X", "pid": host, "tid": 10, "name": "dot.5", "dur": 900},  # an HLO-like name on the host
        {"ph": "X", "pid": gpu, "tid": 20, "name": "jit_step", "dur": 70},
        {"ph": "X", "pid": gpu, "tid": 21, "name": "loop_fusion.3", "dur": 40},
        {"ph": "X", "pid": gpu, "tid": 21, "name": "custom-call.1", "dur": 25},
        {"ph": "X", "pid": gpu, "tid": 22, "name": "loop_fusion_3", "dur": 40},
        {"ph": "X", "pid": gpu, "tid": 22, "name": "void cutlass::Kernel<gemm>", "dur": 25},
    ]
    assert profile_step.op_events(events) == [("loop_fusion.3", 40), ("custom-call.1", 25)]
    # Without an "XLA Ops" line, the streams' kernels, names with spaces included.
    no_ops_line = [e for e in events if e.get("tid") != 21]
    assert profile_step.op_events(no_ops_line) == [("loop_fusion_3", 40), ("void cutlass::Kernel<gemm>", 25)]


def test_op_events_on_a_cpu_trace_takes_the_hlo_names():
    events = [_meta(1, "process_name", "/host:CPU"), _meta(1, "thread_name", "python", 10),
              {"ph": "X", "pid": 1, "tid": 10, "name": "ThunkExecutor::Execute", "dur": 5},
              {"ph": "X", "pid": 1, "tid": 11, "name": "ynn_fusion", "dur": 7},
              {"ph": "i", "pid": 1, "tid": 11, "name": "dot.1"}]
    assert profile_step.op_events(events) == [("ynn_fusion", 7)]


def test_profile_step_runs(capsys, tmp_path):
    hlo = tmp_path / "step.hlo.txt"
    profile_step.main(["--loss", "supap", "--batch", "64", "--top", "3", "--steps", "1", "--hlo", str(hlo)])
    out = capsys.readouterr().out
    assert "similarity matmul fwd+bwd" in out and "supap fwd+bwd (hint)" in out and "x the matmul" in out
    text = hlo.read_text()
    assert text.startswith("# supap fwd+bwd (hint), B=64") and "HloModule" in text and "ENTRY" in text


def test_timed_compiling_counts_the_compilations_of_the_call(cold_compiles):
    from experiments import benchmark_eval_gpu

    fn = jax.jit(lambda v: jnp.sin(v) * 3.0 + 1.0)  # new: compiled by its first call
    x = jnp.ones(17)
    _, seconds, compiling = benchmark_eval_gpu._timed_compiling(lambda: fn(x).block_until_ready())
    assert 0 < compiling <= seconds
    _, _, again = benchmark_eval_gpu._timed_compiling(lambda: fn(x).block_until_ready())
    assert again == 0  # cached: nothing compiled
    # Once JAX's caches are emptied the same call compiles again.
    assert benchmark_eval_gpu.recompile_seconds(lambda: fn(x).block_until_ready()) > 0


def test_device_wait_counts_only_the_time_inside_device_get(monkeypatch):
    from experiments import benchmark_eval_gpu

    original = jax.device_get

    def device_get(x):  # a device that takes 0.2 s to deliver
        time.sleep(0.2)
        return original(x)

    monkeypatch.setattr(jax, "device_get", device_get)

    def host_then_fetch():
        time.sleep(0.3)
        return jax.device_get(jnp.ones(3))

    start = time.perf_counter()
    wait, profiled = benchmark_eval_gpu.device_wait_seconds(host_then_fetch)
    total = time.perf_counter() - start
    assert 0.5 <= profiled <= total
    assert 0.2 <= wait < profiled - 0.3
    wait, profiled = benchmark_eval_gpu.device_wait_seconds(lambda: time.sleep(0.05))
    assert wait == 0 and profiled >= 0.05


COMPILE_TWICE = """
import os, sys, jax, jax.numpy as jnp
from experiments import benchmark_eval_gpu, machine
hits = []
jax.monitoring.register_event_listener(
    lambda event, **_: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
if sys.argv[1] == "cold":
    machine.cold_compiles()
f = jax.jit(lambda v: jnp.cos(v) * 5.0 - 2.0)
x = jnp.ones(23)
first = benchmark_eval_gpu._timed_compiling(lambda: f(x).block_until_ready())[2]
again = benchmark_eval_gpu.recompile_seconds(lambda: f(x).block_until_ready())
print("COMPILED", first > 0, again > 0, len(hits))
"""


def test_cold_compiles_keeps_the_persistent_cache_out_of_compile_times(tmp_path):
    # Two processes on one cache folder (JAX decides at the first compile whether it uses the
    # persistent cache): with the cache on, the programs are written there and a compile after
    # jax.clear_caches() reads one back; after cold_compiles nothing is written or read, the
    # folder filled by the first process included.
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir()
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_ENABLE_COMPILATION_CACHE", None)
    root = Path(__file__).resolve().parents[1]

    def run(mode: str) -> tuple[list[str], set[str]]:
        proc = subprocess.run([sys.executable, "-c", COMPILE_TWICE, mode], capture_output=True,
                              text=True, timeout=300, cwd=root, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("COMPILED"))
        return line.split()[1:], set(os.listdir(cache))

    (first, again, hits), written = run("cached")
    assert (first, again) == ("True", "True") and int(hits) >= 1 and written
    (first, again, hits), after = run("cold")
    assert (first, again, hits) == ("True", "True", "0")
    assert after == written


def test_profile_step_keeps_the_step_times_when_the_profiler_fails(capsys, monkeypatch):
    def no_profiler(fn, steps=3):
        raise RuntimeError("CUPTI unavailable")

    monkeypatch.setattr(profile_step, "op_times", no_profiler)
    profile_step.main(["--loss", "supap", "--batch", "64", "--steps", "1"])
    out = capsys.readouterr().out
    assert "jax.profiler failed on this host (RuntimeError: CUPTI unavailable)" in out
    assert "supap fwd+bwd (hint)" in out and "x the matmul" in out


def test_benchmark_paths_records_the_host_memory_setting(tmp_path):
    # In its own process: the setting is process-wide.
    import json
    import subprocess
    import sys

    out = tmp_path / "paths.json"
    cmd = [sys.executable, "-m", "experiments.benchmark_paths", "--sizes", "64", "--losses", "supap",
           "--list-sizes", "", "--label-size", "64", "--keep-freed-memory", "--json", str(out)]
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    from rankax import host

    assert result["keep_freed_memory"] is (host._glibc() is not None)
    losses = [r for r in result["rows"] if r["what"] == "loss"]
    assert {(r["loss"], r["hint"]) for r in losses} == {("supap", False), ("supap", True)}
    assert all(r["ratio"] > 0 for r in losses)


def _junit(path: Path, suites: list[dict], wrapped: bool) -> None:
    body = "".join('<testsuite name="pytest" ' + " ".join(f'{k}="{v}"' for k, v in s.items()) + "/>"
                   for s in suites)
    path.write_text(f"<testsuites>{body}</testsuites>" if wrapped else body)


@pytest.mark.parametrize("wrapped", [True, False])
def test_gpu_test_counts_read_pytest_junit(tmp_path, wrapped):
    from experiments import benchmark_gpu

    # 10 tests, 2 failures + 1 error, 3 skipped: 4 passed (pytest-xdist writes one <testsuite>,
    # under <testsuites>; older pytest wrote a bare <testsuite>).
    junit, slow, missing = tmp_path / "t.xml", tmp_path / "slow.xml", str(tmp_path / "missing.xml")
    _junit(junit, [{"tests": 10, "failures": 2, "errors": 1, "skipped": 3}], wrapped)
    assert benchmark_gpu.test_counts(str(junit)) == {"passed": 4, "failed": 3, "skipped": 3}
    assert benchmark_gpu.test_counts(str(junit), partial=True)["partial"] is True
    assert benchmark_gpu.test_counts(missing) is None
    # Two tiers (the quick tests, then the slow ones) add up; a tier never run is left out.
    _junit(slow, [{"tests": 5, "failures": 0, "errors": 0, "skipped": 1}], wrapped)
    both = benchmark_gpu.test_counts(f"{junit},{slow},{missing}")
    assert both == {"passed": 8, "failed": 3, "skipped": 4}


def test_gpu_table_reads_a_partial_result():
    # A run stopped after the loss sweep: only the sections it finished are in the JSON, and the
    # table shows them and a dash for the rest instead of raising.
    from experiments import benchmark_gpu

    result = {"device": "NVIDIA H200", "jax": "0.11.2", "list_api_ratio": None, "gpu_tests": None,
              "losses": {"supap": {"4096": 2.004}, "hap (no hint)": {"4096": 5.109, "16384": 3.25}},
              "evaluation": {}, "labels": {}}
    text = benchmark_gpu.table(result)
    lines = text.splitlines()
    assert lines[0] == "NVIDIA H200 / jax 0.11.2"
    assert lines[1].split() == ["loss", "/", "matmul", "B=4096", "B=16384"]
    assert lines[2].split() == ["supap", "2.00", "-"]
    assert lines[3].split() == ["hap", "(no", "hint)", "5.11", "3.25"]
    assert "list API / batch_loss: -" in text and "evaluate: not run" in text


def test_gpu_check_refuses_a_host_without_a_gpu(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {"PATH": os.environ["PATH"], "PY": sys.executable, "OUT": str(tmp_path), "WHEELS": str(tmp_path),
           "JAX_PLATFORMS": "cpu", "HOME": str(tmp_path)}
    run = subprocess.run(["bash", "experiments/gpu_check.sh"], capture_output=True, text=True,
                         timeout=300, cwd=root, env=env)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "jax sees no GPU" in run.stdout
    assert not (tmp_path / "benchmarks_gpu.json").exists()
    bad = subprocess.run(["bash", "experiments/gpu_check.sh"], capture_output=True, text=True,
                         timeout=60, cwd=root, env={**env, "TOTAL_S": "10m"})
    assert bad.returncode == 2 and "TOTAL_S must be a whole number, got '10m'" in bad.stdout
    bad = subprocess.run(["bash", "experiments/gpu_check.sh"], capture_output=True, text=True,
                         timeout=60, cwd=root, env={**env, "PHASES": "bench benchmark"})
    assert bad.returncode == 2 and "PHASES takes bench, profile and tests, got 'benchmark'" in bad.stdout
    # A lent machine stops a command at 600 s: a longer TOTAL_S is cut, with a warning.
    long = subprocess.run(["bash", "experiments/gpu_check.sh"], capture_output=True, text=True,
                          timeout=300, cwd=root, env={**env, "TOTAL_S": "720"})
    assert long.returncode == 2 and "TOTAL_S=720 cut to TOTAL_S_MAX=570" in long.stdout


def test_gpu_check_defaults_and_time_left(tmp_path):
    """The documented plain call (no BENCH_ARGS: it stopped at 'unbound variable' before the
    benchmark) passes the budget from BENCH_LIMIT_S; with too little of TOTAL_S left the
    benchmark is not started. A stand-in python records its arguments (no JAX needed)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "PY": str(fake), "OUT": str(tmp_path / "out"),
           "WHEELS": str(tmp_path), "ALLOW_CPU": "1", "PHASES": "bench", "HOME": str(tmp_path)}
    run = subprocess.run(["bash", "experiments/gpu_check.sh"], capture_output=True, text=True,
                         timeout=120, cwd=root, env=env)
    assert run.returncode == 0 and "unbound" not in run.stderr, run.stdout + run.stderr
    calls = [line for line in log.read_text().splitlines() if "experiments.benchmark_gpu" in line]
    assert calls == [f"-m experiments.benchmark_gpu --out {tmp_path / 'out'} --budget-s 260"]
    assert "the benchmark wrote no JSON (exit 0)" in run.stdout
    log.unlink()
    short = subprocess.run(["bash", "experiments/gpu_check.sh"], capture_output=True, text=True,
                           timeout=120, cwd=root, env={**env, "TOTAL_S": "80"})
    assert short.returncode == 124, short.stdout + short.stderr
    assert "left of TOTAL_S=80 for the benchmark (60 s at least): not run" in short.stdout
    assert "experiments.benchmark_gpu" not in log.read_text()


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_a_cpu(tmp_path):
    # The GPU script's smoke run (ALLOW_CPU=1, tiny sizes, one small test module): every file it
    # promises comes back, and the JSON has the keys the GPU issue names, test counts included.
    import json
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    bench = ("--sizes 128 --losses supap --skip pml,large,tf32 --budget-s 120 "
             "--eval-sizes 600x16 --eval-large none")
    env = {"PATH": os.environ["PATH"], "PY": sys.executable, "OUT": str(out), "WHEELS": str(tmp_path),
           "ALLOW_CPU": "1", "JAX_PLATFORMS": "cpu", "HOME": str(tmp_path), "BENCH_ARGS": bench,
           "TESTS": "tests/test_repository.py", "WORKERS": "1", "TOTAL_S": "400", "PROFILE_B": "64",
           "PROFILE_S": "120",
           # Tiny sizes, compile-bound: the test run's compiler effort (tests/conftest.py).
           "JAX_DISABLE_MOST_OPTIMIZATIONS": os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")}
    run = subprocess.run(["bash", "experiments/gpu_check.sh"], capture_output=True, text=True,
                         timeout=600, cwd=root, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = {"benchmarks_gpu.md", "benchmarks_gpu.json", "benchmarks_gpu_rows.json", "bench.log",
             "device.log", "profile.txt", "tests.xml", "tests_slow.xml", "tests.log"}
    assert {p.name for p in out.iterdir()} == files
    result = json.loads((out / "benchmarks_gpu.json").read_text())
    assert {"device", "jax", "losses", "list_api_ratio", "evaluate_ratio_to_topk_loop",
            "gpu_tests"} <= set(result)
    assert set(result["losses"]) == {"supap", "supap (no hint)"}
    assert all(set(by_b) == {"128"} and by_b["128"] > 0 for by_b in result["losses"].values())
    assert result["list_api_ratio"] > 0
    evaluation = result["evaluation"]
    assert 0 < evaluation["evaluate_first_compile_s"] <= evaluation["evaluate_first_s"]
    assert evaluation["evaluate_recompile_s"] > 0  # the CPU has no autotuning to skip
    # The wait and the profiled call's time come from the same call (not from two noisy ones).
    assert 0 < evaluation["evaluate_device_wait_s"] < evaluation["evaluate_profiled_s"]
    suite = ET.parse(out / "tests.xml").getroot().find("testsuite")
    assert result["gpu_tests"] == {"passed": int(suite.get("tests")), "failed": 0, "skipped": 0}
    profile = (out / "profile.txt").read_text()
    assert profile.count("x the matmul") == 3 and profile.count("HloModule") == 3, profile[-3000:]
    assert "supap fwd+bwd (no hint)" in profile and "hap fwd+bwd (hint)" in profile
    assert "FAILED" not in run.stdout
    assert run.stdout.rstrip().splitlines()[-1].startswith("gpu_check: benchmark exit 0, pytest exit 0")
    # The split for a lent machine: the tests alone in a second call on the same folder print
    # their counts, keep the first call's files and merge into its JSON; a stale
    # tests_partial from an earlier call is removed, not merged.
    kept = {name: (out / name).read_bytes() for name in ("bench.log", "profile.txt")}
    (out / "tests_partial").write_text("left by an earlier call")
    split = {**env, "PHASES": "tests"}
    tests_only = subprocess.run(["bash", "experiments/gpu_check.sh"], capture_output=True, text=True,
                                timeout=600, cwd=root, env=split)
    assert tests_only.returncode == 0, tests_only.stdout[-3000:] + tests_only.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == files
    assert all((out / name).read_bytes() == data for name, data in kept.items())
    assert f"tests on this device: {result['gpu_tests']}" in tests_only.stdout
    assert json.loads((out / "benchmarks_gpu.json").read_text())["gpu_tests"] == result["gpu_tests"]
    # The benchmark alone: no test files to merge, no usage error.
    alone = {**env, "PHASES": "bench", "OUT": str(tmp_path / "b")}
    bench_only = subprocess.run(["bash", "experiments/gpu_check.sh"], capture_output=True, text=True,
                                timeout=600, cwd=root, env=alone)
    assert bench_only.returncode == 0 and "usage:" not in bench_only.stdout + bench_only.stderr, (
        bench_only.stdout[-3000:] + bench_only.stderr[-3000:])
    # A benchmark that dies before writing: an earlier call's JSON is not left to pass for it.
    (tmp_path / "b" / "benchmarks_gpu.json").write_text('{"stale": true}')
    dies = subprocess.run(["bash", "experiments/gpu_check.sh"], capture_output=True, text=True, timeout=600,
                          cwd=root, env={**alone, "BENCH_ARGS": "--sizes abc"})
    assert dies.returncode != 0 and "the benchmark wrote no JSON" in dies.stdout, dies.stdout[-3000:]
    assert not (tmp_path / "b" / "benchmarks_gpu.json").exists()


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("benchmark_paths", ["--sizes", "abc"], "argument --sizes: expected an integer >= 1, got 'abc'"),
        ("benchmark_paths", ["--losses", "supap,nosuch"], "argument --losses: unknown nosuch; valid: supap"),
        ("benchmark_paths", ["--precision", "fast"], "argument --precision: invalid choice"),
        ("benchmark_gpu", ["--skip", "pml,foo"], "argument --skip: unknown foo"),
        ("benchmark_gpu", ["--eval-sizes", "1x4"], "argument --eval-sizes: expected at least 2x1, got '1x4'"),
        ("benchmark_gpu", ["--large", "65540"], "argument --large: expected a multiple of 16, got '65540'"),
        ("benchmark_gpu", ["--sizes", ""], "argument --sizes: expected a comma-separated list"),
        ("benchmark_gpu", ["--add-tests", "t.xml", "--out", "{tmp}"], "--add-tests needs benchmarks_gpu"),
        ("benchmark_eval_gpu", ["--large", "1000000"], "argument --large: expected two integers joined by x"),
        ("benchmark_retrieval", ["--sizes", "20000x128,60000"], "argument --sizes: expected two integers"),
        ("benchmark_retrieval", ["--skip", "torch"], "argument --skip: unknown torch"),
        ("benchmark_scann", ["--fractions", "0.4,1.5"], "argument --fractions: expected fractions in (0, 1]"),
        ("benchmark_paths", ["--precision", "tf32"], "argument --precision: invalid choice: 'tf32'"),
        ("benchmark_scann", ["--from-json", "x.json"], "--from-json rewrites the docs"),
        ("benchmark_input", ["--warmup", "-1"], "argument --warmup: expected an integer >= 0, got '-1'"),
        ("benchmark_scann", ["--large", "-5"], "argument --large: expected an integer >= 0, got '-5'"),
        ("benchmark_retrieval", ["--large", "x"], "argument --large: expected an integer >= 0, got 'x'"),
        ("benchmark_guards", ["--batch", "6"], "argument --batch: expected a multiple of 4, got '6'"),
        ("profile_step", ["--batch", "30"], "argument --batch: expected a multiple of 16, got '30'"),
        ("sweep_scann", ["--config", "leafs=10"], "argument --config: key must be one of"),
        ("sweep_scann", ["--config", "leaves=ten"], "argument --config: leaves must be a number, got 'ten'"),
        ("benchmark", ["--from-json", "x.json"], "--from-json rewrites the docs: give --docs"),
    ],
)
def test_benchmark_scripts_report_bad_flags_as_usage_errors(module, argv, message, tmp_path, capsys):
    """A bad value stops the script before any work, with argparse's exit status 2 and one line
    naming the flag (not a traceback from deep inside the run)."""
    import importlib

    main = importlib.import_module(f"experiments.{module}").main

    def cache_setting():
        return os.environ.get("JAX_ENABLE_COMPILATION_CACHE"), jax.config.jax_enable_compilation_cache

    before = cache_setting()
    with pytest.raises(SystemExit) as err:
        main([a.format(tmp=tmp_path) for a in argv])
    assert err.value.code == 2
    assert message in capsys.readouterr().err
    # Stopped before machine.cold_compiles: the worker keeps the run's shared compilation cache.
    assert cache_setting() == before


def test_flag_types_parse_what_the_scripts_document():
    from experiments import flags

    assert flags.multiples(16)("1024, 4096,") == [1024, 4096]
    assert flags.sizes("20000x128,60000X512") == [(20000, 128), (60000, 512)]
    assert flags.fractions("0.25,1") == [0.25, 1.0] and flags.fractions("") == []
    assert flags.sizes("20000x128, ", empty_ok=True) == [(20000, 128)]
    assert flags.multiples(16, empty_ok=True)("") == [] and flags.multiple(16)("64") == 64
    assert flags.names(("a", "b"), empty_ok=True)("") == []
    assert flags.names(("a", "b"))("b,a") == ["b", "a"]
    for parse, text in ((flags.multiples(16), ""), (flags.fractions, "nan"), (flags.fractions, "0"),
                        (flags.size, "3x0"), (flags.names(("a",)), ""), (flags.multiple(16), "24")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_merging_test_counts_keeps_them_partial_and_refuses_no_files(tmp_path, capsys):
    """The counts merged on another machine are partial when a tier's file is missing or
    gpu_check.sh marked the run (a stopped tier's JUnit file looks complete); a --add-tests
    naming no existing file is refused instead of wiping the saved counts."""
    import json

    from experiments import benchmark_gpu

    out = tmp_path / "out"
    out.mkdir()
    saved = {"device": "NVIDIA H200", "jax": "0.11.2", "losses": {"supap": {"4096": 2.0}},
             "list_api_ratio": 1.1, "evaluate_ratio_to_topk_loop": 1.5, "gpu_tests": None,
             "evaluation": {}, "labels": {}, "supap_tf32_opt_in": None, "large_batch": None, "pml": None}
    (out / "benchmarks_gpu.json").write_text(json.dumps(saved))
    (out / "benchmarks_gpu_rows.json").write_text("[]")
    tests = tmp_path / "calls"
    tests.mkdir()
    _junit(tests / "tests.xml", [{"tests": 10, "failures": 0, "errors": 0, "skipped": 1}], True)

    def merged(*files):
        benchmark_gpu.main(["--out", str(out), "--add-tests", ",".join(str(tests / f) for f in files)])
        return json.loads((out / "benchmarks_gpu.json").read_text())["gpu_tests"]

    _junit(tests / "tests_slow.xml", [{"tests": 2, "failures": 0, "errors": 0, "skipped": 0}], True)
    assert merged("tests.xml", "tests_slow.xml") == {"passed": 11, "failed": 0, "skipped": 1}
    (tests / "tests_slow.xml").unlink()  # the slow tier never ran
    assert merged("tests.xml", "tests_slow.xml")["partial"] is True
    _junit(tests / "tests_slow.xml", [{"tests": 2, "failures": 0, "errors": 0, "skipped": 0}], True)
    (tests / "tests_partial").write_text("a test tier was stopped or not reached\n")
    assert merged("tests.xml", "tests_slow.xml")["partial"] is True
    with pytest.raises(SystemExit):
        merged("nothere.xml")
    assert "none of" in capsys.readouterr().err
    assert json.loads((out / "benchmarks_gpu.json").read_text())["gpu_tests"]["passed"] == 11  # kept


def test_batch_benchmark_docs_come_from_the_rows_and_their_host(tmp_path):
    """The notes under the targets are computed from the rows (they were fixed text: "4.3 GiB",
    "about twice the time"), and --from-json names the host of the dump, not the rewriting one."""
    import json

    from experiments import benchmark

    rows = [
        {"impl": "matmul", "loss": "-", "b": 2048, "d": 128, "time_s": 0.05, "peak_rss_mib": 3 * 1024},
        {"impl": "rankax", "loss": "supap", "b": 4096, "d": 512, "time_s": 0.3, "peak_rss_mib": 600},
        {"impl": "rankax", "loss": "hap", "b": 4096, "d": 512, "time_s": 0.9, "peak_rss_mib": 700},
    ]
    dump = tmp_path / "rows.json"
    dump.write_text(json.dumps({"rows": rows, "elapsed_s": 60.0,
                                "host": {"cpu": "Test CPU, 99 CPU cores", "jax": "9.9", "backend": "cpu"}}))
    benchmark.main(["--from-json", str(dump), "--docs", str(tmp_path / "docs")])
    text = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "Host: Test CPU, 99 CPU cores" in text and "jax 9.9" in text
    assert "3.0 GiB of RSS at B = 2048" in text  # the largest matmul row's peak
    assert "3.0x SupAP's time at B = 4096" in text  # 0.9 / 0.3
    assert "pml / rankax (not run)" in text  # no FastAP rows


def test_coarse_retrieval_benchmark_times_both_ways_and_restores_the_threshold(capsys):
    """``benchmark_retrieval --coarse``: counted and sorted positives on the same items give
    the same mAP (the table's rows), and the threshold it varies is restored."""
    from experiments import benchmark_retrieval
    from rankax.retrieval import exact

    saved = dict(exact.SORT_ABOVE)
    rows = benchmark_retrieval.coarse(96, classes=(4, 2), d=8)
    assert exact.SORT_ABOVE == saved
    assert [r["positives"] for r in rows] == [24, 48]
    x, _ = benchmark_retrieval.clustered_embeddings(96, 8, seed=2)
    y = np.random.default_rng(2).integers(0, 2, 96)
    assert rows[1]["map"] == pytest.approx(retrieval_map(x, y), abs=1e-6)
    benchmark_retrieval.main(["--coarse", "64"])
    assert "| 64 | 2 | 32 |" in capsys.readouterr().out


def retrieval_map(x, y):
    """Full-gallery mAP from the definition (self excluded, ties: H(0) = 1), in float64."""
    s = x.astype(np.float64) @ x.astype(np.float64).T
    aps = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        si, pos = s[i, keep], y[keep] == y[i]
        if not pos.any():
            continue
        rank = (si[None, :] >= si[pos][:, None]).sum(1)
        rank_pos = (si[pos][None, :] >= si[pos][:, None]).sum(1)
        aps.append(np.mean(rank_pos / rank))
    return float(np.mean(aps))
