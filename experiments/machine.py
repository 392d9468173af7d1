"""The machine under the benchmarks: what their reports say about it, and JAX's persistent
compilation cache kept out of their timings."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, where ``platform.processor()`` is
    often empty), else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_summary() -> str:
    """``"<model>, <n> CPU cores"``: which CPU measured the figures next to it."""
    return f"{cpu_model()}, {os.cpu_count()} CPU cores"


def cold_compiles() -> None:
    """Turns JAX's persistent compilation cache off in this process and in the processes it
    starts, so that first-call and compile times measure compiling. A ``JAX_COMPILATION_CACHE_DIR``
    in the environment (the test run sets one, and users set it to reuse programs across runs)
    would otherwise turn them into reads of programs compiled by an earlier run."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # JAX decides whether to use the cache once, at the first compile
