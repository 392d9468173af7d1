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
"""

from __future__ import annotations

import os

import pytest

_FLAG = "--xla_gpu_deterministic_ops=true"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()

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
