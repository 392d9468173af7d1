"""The benchmark scripts' own machinery (not their timings: those are for the scripts to print)."""

from pathlib import Path

import jax
import jax.numpy as jnp
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


def test_profile_step_runs(capsys):
    profile_step.main(["--loss", "supap", "--batch", "64", "--top", "3", "--steps", "1"])
    out = capsys.readouterr().out
    assert "similarity matmul fwd+bwd" in out and "supap fwd+bwd (hint)" in out and "x the matmul" in out


def test_profile_step_rejects_a_partial_class():
    with pytest.raises(SystemExit):
        profile_step.main(["--batch", "30"])


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
