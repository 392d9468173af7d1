"""The compiler effort the test run chooses (``JAX_DISABLE_MOST_OPTIMIZATIONS``; tests/conftest.py):
reduced on a CPU-only host, a caller's choice kept, full where an accelerator plugin is installed,
and ``RANKAX_TEST_FAST_COMPILE`` checked like the suite's other switches."""

import importlib.util
import os

import conftest
import jax
import pytest

FLAG = "jax_disable_most_optimizations"
PLUGINS = ("jax_plugins", "libtpu")


@pytest.fixture
def settle(monkeypatch):
    """Runs conftest's rule in a controlled environment; restores this worker's jax setting."""
    before = jax.config.values[FLAG]
    for name in ("JAX_DISABLE_MOST_OPTIMIZATIONS", "RANKAX_TEST_FAST_COMPILE", "JAX_PLATFORMS"):
        monkeypatch.delenv(name, raising=False)

    def run(plugins=(), **env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        real = importlib.util.find_spec
        # The plugins named are installed, no other (also on a GPU host running this test).
        fake = lambda name, *a: (object() if name in plugins else None) if name in PLUGINS else real(name, *a)  # noqa: E731
        monkeypatch.setattr(importlib.util, "find_spec", fake)
        conftest._fast_compiles()
        return os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS"), jax.config.values[FLAG]

    yield run
    jax.config.update(FLAG, before)


def test_cpu_only_host_compiles_with_most_optimizations_off(settle):
    assert settle() == ("1", True)


def test_accelerator_plugin_keeps_full_optimization_unless_the_cpu_is_forced(settle):
    assert settle(plugins=("jax_plugins",))[0] is None  # CUDA / ROCm plugins
    assert settle(plugins=("libtpu",))[0] is None
    assert settle(plugins=("jax_plugins",), JAX_PLATFORMS="cpu") == ("1", True)


def test_callers_setting_is_kept_and_the_switch_turns_it_off(settle):
    assert settle(JAX_DISABLE_MOST_OPTIMIZATIONS="0")[0] == "0"
    assert settle(RANKAX_TEST_FAST_COMPILE="0", JAX_DISABLE_MOST_OPTIMIZATIONS="1") == ("0", False)


def test_switch_takes_only_0_or_1(settle):
    with pytest.raises(ValueError, match="RANKAX_TEST_FAST_COMPILE must be 1"):
        settle(RANKAX_TEST_FAST_COMPILE="yes")
