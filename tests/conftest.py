"""Settings and test tiers every test process (and the subprocesses it starts) shares.

Tiers: ``make test`` runs everything (what CI runs); ``make test-quick`` deselects the modules
marked ``slow`` here -- end-to-end runs of every paper config, notebooks, property-based
fuzzing, multi-device and fault-injection training, TFDS pipelines and torch weight conversion
-- and keeps the core: losses against numpy references, the batch path, metrics, retrieval, the
training program and CLI on digits.

Determinism: on a GPU, XLA may pick different kernels (autotuning, split reductions) in two
processes, so a run resumed in another process would differ from the uninterrupted one in the
last bits. The resume tests assert bitwise equality, so the test run asks XLA for deterministic
kernels (``--xla_gpu_deterministic_ops``; ignored on the CPU). Training users who need bitwise
resume on a GPU set the same flag (docs/training.md, Faults).

GPU precision on a CPU: ``RANKAX_EMULATE_TF32=1`` (``make test-tf32``) rounds the float32 operands
of every matrix product and convolution that does not ask for ``Precision.HIGHEST`` to TF32 (10 explicit
mantissa bits, what an NVIDIA GPU computes them with by default) when the test process lowers
it, backward passes included, so that a test that would fail on a GPU for want of
``precision="highest"`` fails here too. Subprocesses started by tests are not emulated.

Compilation cache: compiling is most of the suite's CPU time, and many tests compile programs
another test (or the same test's subprocess: training runs, resumes, two-process runs) has
compiled already. The test run therefore shares one JAX persistent compilation cache between
its processes: a fresh temporary directory per run (``JAX_COMPILATION_CACHE_DIR``), made by the
process pytest starts, inherited by its xdist workers and the subprocesses tests start, and
removed when pytest exits; each run compiles every program at least once. It keeps the programs
that took a second or more to compile (JAX's default threshold): keeping every program made
compile-bound tests slower (test_sharding.py 276 s against 161 s without a cache and 156 s with
this one). A ``JAX_COMPILATION_CACHE_DIR`` set by the caller is used as it is and kept;
``RANKAX_TEST_COMPILE_CACHE=0`` turns any persistent cache off, the caller's too. On a GPU the
folder also holds XLA's autotuning results (JAX enables that cache with it). A test that times or
counts compiles takes the ``cold_compiles`` fixture.

Compiler effort: on a CPU-only host the test run also sets ``JAX_DISABLE_MOST_OPTIMIZATIONS=1``
for its processes and the subprocesses they start. It is JAX's switch for programs that compile
longer than they run: LLVM at ``-O0`` without its expensive passes. XLA's HLO optimisations,
fusion and buffer assignment are unchanged, but the machine code differs, so a result may differ
from a user's program in its last bits. The suite's programs are small and run a few times, so
compiling is most of their cost: the edge-case batch tests took 25 % less time. A test whose
programs run longer than they compile sets ``JAX_DISABLE_MOST_OPTIMIZATIONS=0`` for the processes
it starts, over any other setting (the training-comparison notebook: 35 s against 53 s without
optimisation). Otherwise a ``JAX_DISABLE_MOST_OPTIMIZATIONS`` set by the caller is kept;
``RANKAX_TEST_FAST_COMPILE=0`` compiles with the full optimisation, and so does a host with a
CUDA, ROCm or TPU plugin for JAX (unless ``JAX_PLATFORMS=cpu``), as users run there.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile

import pytest


def _switch(name: str, default: str, meaning: str) -> bool:
    """Whether the environment variable ``name`` (``default`` when unset) is 1, or a ValueError."""
    value = os.environ.get(name, default)
    if value not in ("0", "1", ""):
        raise ValueError(f"{name} must be 1 ({meaning}) or 0, got {value!r}")
    return value == "1"


def _shared_compilation_cache() -> str | None:
    """Sets up the run's compilation cache (module docstring); the folder this process made."""
    if not _switch("RANKAX_TEST_COMPILE_CACHE", "1", "share compiled programs"):
        os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"  # a caller's cache folder too
        return None
    if "PYTEST_XDIST_WORKER" in os.environ or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return None  # a worker (the folder is inherited) or the caller's folder
    folder = tempfile.mkdtemp(prefix="rankax-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    if "jax" in sys.modules:  # imported before this file (a plugin): set the running process too
        sys.modules["jax"].config.update("jax_compilation_cache_dir", folder)
    return folder


_OWN_CACHE = _shared_compilation_cache()


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def _cpu_only() -> bool:
    """Whether JAX will run on the CPU alone: ``JAX_PLATFORMS=cpu``, or none of the ways JAX
    finds an accelerator: the ``jax_plugins`` namespace (CUDA, ROCm), a ``jax_plugins`` entry
    point, ``libtpu`` or ``TPU_LIBRARY_PATH``."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return True
    if os.environ.get("TPU_LIBRARY_PATH") or importlib.metadata.entry_points(group="jax_plugins"):
        return False
    return not any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu"))


def _fast_compiles() -> None:
    """Most XLA optimisations off on a CPU-only host (module docstring)."""
    if not _switch("RANKAX_TEST_FAST_COMPILE", "1", "compile with most optimisations off"):
        os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0"  # a caller's setting too
    elif "JAX_DISABLE_MOST_OPTIMIZATIONS" not in os.environ and _cpu_only():
        os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    else:
        return
    if "jax" in sys.modules:  # imported before this file (a plugin): set the running process too
        value = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
        sys.modules["jax"].config.update("jax_disable_most_optimizations", value)


_fast_compiles()


_FLAG = "--xla_gpu_deterministic_ops=true"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()


def round_to_tf32(x):
    """The TF32 value nearest to each float32 of ``x`` (ties away from zero): the low 13 of the 23
    mantissa bits cleared after rounding; inf and NaN are kept (a mantissa carry into the
    exponent is the correct rounding)."""
    import jax
    import jax.numpy as jnp

    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    finite = jnp.isfinite(x)
    rounded = (bits + jnp.uint32(1 << 12)) & jnp.uint32(0xFFFFE000)
    return jnp.where(finite, jax.lax.bitcast_convert_type(rounded, jnp.float32), x)


def _float32_exact(precision) -> bool:
    """Whether a dot/conv ``precision`` parameter asks for float32-exact products."""
    import jax

    if precision is None:
        return jax.config.jax_default_matmul_precision in ("highest", "float32")
    if isinstance(precision, tuple):
        return all(p == jax.lax.Precision.HIGHEST for p in precision)
    return "TF32" not in str(precision) and "BF16" not in str(precision)  # a DotAlgorithmPreset


def _is_gemm(avals, dimension_numbers) -> bool:
    """Whether a GPU computes the op as a matrix product, where TF32 applies: convolutions
    (whose ``dimension_numbers`` are not a pair), and dots that contract a dimension and keep a
    free one on either side. XLA's GPU compiler turns the other dots into exact float32
    multiplies and sums: those without a contracted dimension (outer products, ``vdot``'s
    transpose) and vector-vector dots (``vdot``), which its algebraic simplifier strength-reduces."""
    if not (isinstance(dimension_numbers, tuple) and len(dimension_numbers) == 2):
        return True
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    lhs_free = avals[0].ndim - len(lhs_contract) - len(lhs_batch)
    rhs_free = avals[1].ndim - len(rhs_contract) - len(rhs_batch)
    return len(lhs_contract) > 0 and (lhs_free > 0 or rhs_free > 0)


def emulate_tf32() -> None:
    """Registers CPU lowerings of ``dot_general`` and ``conv_general_dilated`` that round their
    float32 operands with :func:`round_to_tf32` unless the op asks for float32-exact products."""
    import numpy as np
    from jax._src.interpreters import mlir
    from jax._src.lax import convolution
    from jax._src.lax import lax as lax_internal

    round_lowered = mlir.lower_fun(round_to_tf32, multiple_results=False)

    def rounded(ctx, value, aval):
        if aval.dtype != np.float32:
            return value
        (value,) = round_lowered(ctx.replace(primitive=None, avals_in=[aval], avals_out=[aval]), value)
        return value

    for prim in (lax_internal.dot_general_p, convolution.conv_general_dilated_p):
        entry = mlir._platform_specific_lowerings["cpu"].get(prim) or mlir._lowerings[prim]

        def rule(ctx, lhs, rhs, *, precision, _inner=entry.rule, **params):
            if not _float32_exact(precision) and _is_gemm(ctx.avals_in, params.get("dimension_numbers")):
                lhs, rhs = rounded(ctx, lhs, ctx.avals_in[0]), rounded(ctx, rhs, ctx.avals_in[1])
            return _inner(ctx, lhs, rhs, precision=precision, **params)

        mlir.register_lowering(prim, rule, platform="cpu")


if _switch("RANKAX_EMULATE_TF32", "0", "emulate TF32 products"):
    emulate_tf32()


SLOW_MODULES = {
    "test_configs",
    "test_notebooks",
    "test_fuzz",
    "test_faults",
    "test_train_sharded",
    "test_multihost_train",
    "test_sharding",
    "test_data_tfds",
    "test_convert",
    "test_edge_cases",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def float32_matmuls():
    """Float32-exact matrix products for the test (``jax.default_matmul_precision("highest")``):
    for tests that compare two differently compiled programs to float32 tolerances, which TF32
    products (a GPU's default, or ``RANKAX_EMULATE_TF32``) would not meet."""
    import jax

    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture
def cold_compiles(monkeypatch):
    """JAX's persistent compilation cache off in this process for the test (as the benchmark
    scripts run, ``experiments.machine.cold_compiles``), restored after it: for tests that time
    or count compiles, which the run's shared cache would turn into reads."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    from experiments import machine

    monkeypatch.setenv("JAX_ENABLE_COMPILATION_CACHE", "false")  # monkeypatch restores the variable
    before = jax.config.jax_enable_compilation_cache
    machine.cold_compiles()
    yield
    jax.config.update("jax_enable_compilation_cache", before)
    compilation_cache.reset_cache()


@pytest.fixture(scope="session")
def once_per_run(tmp_path_factory):
    """``once_per_run(name, compute)``: the JSON value of ``compute()``, computed by one process
    of the test run and read from a file by the others. xdist's default ``load`` distribution
    (``make test``) may split a module between the two workers, and a module fixture that runs
    an expensive subprocess would then run twice at once on the 2-core host. The workers share
    their base folder's parent; a lock file makes the second wait for the first's result (if
    the first fails, the second computes it itself). Without xdist: ``compute()``."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return lambda name, compute: compute()
    shared = tmp_path_factory.getbasetemp().parent

    def get(name: str, compute):
        path = shared / f"once-{name}.json"
        with open(shared / f"once-{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if path.exists():
                return json.loads(path.read_text())
            value = compute()
            partial = path.with_suffix(".partial")
            partial.write_text(json.dumps(value))
            partial.replace(path)
            return value

    return get
