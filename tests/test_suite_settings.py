"""The compiler effort the test run chooses (``JAX_DISABLE_MOST_OPTIMIZATIONS``; tests/conftest.py):
reduced on a CPU-only host, a caller's choice kept, full where an accelerator plugin is installed,
and ``RANKAX_TEST_FAST_COMPILE`` checked like the suite's other switches."""

import importlib.metadata
import importlib.util
import os

import conftest
import jax
import pytest

FLAG = "jax_disable_most_optimizations"
PLUGINS = ("jax_plugins", "libtpu")
REAL_FIND_SPEC = importlib.util.find_spec


@pytest.fixture
def settle(monkeypatch):
    """Runs conftest's rule on a host with the accelerator plugins named (no other, also on a
    GPU host running this test) and the environment given; restores this worker's jax setting."""
    before = jax.config.values[FLAG]
    names = ("JAX_DISABLE_MOST_OPTIMIZATIONS", "RANKAX_TEST_FAST_COMPILE", "JAX_PLATFORMS",
             "TPU_LIBRARY_PATH")

    def run(plugins=(), entry_points=(), **env):
        for name in names:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

        def find_spec(name, *args):
            return (object() if name in plugins else None) if name in PLUGINS else REAL_FIND_SPEC(name, *args)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: entry_points)
        conftest._fast_compiles()
        return os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS"), jax.config.values[FLAG]

    yield run
    jax.config.update(FLAG, before)


def test_cpu_only_host_compiles_with_most_optimizations_off(settle):
    assert settle() == ("1", True)


def test_accelerator_plugin_keeps_full_optimization_unless_the_cpu_is_forced(settle):
    jax.config.update(FLAG, False)  # untouched where the rule leaves the host's default
    assert settle(plugins=("jax_plugins",)) == (None, False)  # CUDA / ROCm plugin packages
    assert settle(plugins=("libtpu",)) == (None, False)
    assert settle(entry_points=("a plugin's entry point",)) == (None, False)
    assert settle(TPU_LIBRARY_PATH="/opt/libtpu.so") == (None, False)
    assert settle(plugins=("jax_plugins",), JAX_PLATFORMS="cpu") == ("1", True)


def test_callers_setting_is_kept_and_the_switch_turns_it_off(settle):
    jax.config.update(FLAG, True)
    assert settle(JAX_DISABLE_MOST_OPTIMIZATIONS="0") == ("0", True)  # the process's setting untouched
    assert settle(RANKAX_TEST_FAST_COMPILE="0", JAX_DISABLE_MOST_OPTIMIZATIONS="1") == ("0", False)


def test_switch_takes_only_0_or_1(settle):
    with pytest.raises(ValueError, match="RANKAX_TEST_FAST_COMPILE must be 1"):
        settle(RANKAX_TEST_FAST_COMPILE="yes")
