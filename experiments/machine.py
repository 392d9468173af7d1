"""What the benchmark reports say about the machine they ran on."""

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
