"""Test tiers: ``make test`` runs everything (what CI runs); ``make test-quick`` deselects the
modules marked ``slow`` here -- end-to-end runs of every paper config, notebooks, property-based
fuzzing, multi-device and fault-injection training, TFDS pipelines and torch weight conversion --
and keeps the core: losses against numpy references, the batch path, metrics, retrieval, the
training program and CLI on digits."""

import pytest

SLOW_MODULES = {
    "test_configs",
    "test_notebooks",
    "test_fuzz",
    "test_faults",
    "test_train_sharded",
    "test_sharding",
    "test_data_tfds",
    "test_convert",
    "test_edge_cases",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
