"""Settings every test process (and the subprocesses it starts) shares.

On a GPU, XLA may pick different kernels (autotuning, split reductions) in two processes, so a
run resumed in another process would differ from the uninterrupted one in the last bits. The
resume tests assert bitwise equality, so the test run asks XLA for deterministic kernels
(``--xla_gpu_deterministic_ops``; ignored on the CPU). Training users who need bitwise resume
on a GPU set the same flag (docs/training.md, Faults).
"""

from __future__ import annotations

import os

_FLAG = "--xla_gpu_deterministic_ops=true"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
