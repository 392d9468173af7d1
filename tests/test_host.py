"""rankax.host: glibc keeps and reuses freed memory, measured by the page faults it saves;
aligned buffers that XLA:CPU uses in place."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from rankax import host

# Mallocs, writes and frees 64 MiB three times, as XLA:CPU does with a call's buffers, and
# prints the minor page faults of the last round: fresh mmap-ed pages fault when first written
# (16,384 pages of 4 KiB; fewer with transparent huge pages), reused heap memory does not.
_FAULTS = """
import ctypes, resource, sys
from rankax import host
libc = host._glibc()
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
if sys.argv[1] == "keep":
    assert host.keep_freed_memory()
size = 64 * 2**20
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults)
"""


def _last_round_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(host._glibc() is None, reason="the C library is not glibc")
def test_freed_memory_is_reused_without_page_faults():
    default, kept = _last_round_faults("default"), _last_round_faults("keep")
    # glibc unmaps a 64 MiB chunk on free, so its pages fault in again (at least one per 2 MiB
    # huge page); with the setting the chunk stays mapped and nothing faults.
    assert default >= 32 and kept < default / 10, (default, kept)


def test_keep_freed_memory_checks_its_argument():
    with pytest.raises(ValueError, match="max_chunk_bytes must be in"):
        host.keep_freed_memory(1024)
    with pytest.raises(TypeError, match="keep_freed_memory: max_chunk_bytes must be an int"):
        host.keep_freed_memory(2.0**30)
    with pytest.raises(ValueError, match="keep_freed_memory: max_chunk_bytes must be in"):
        host.keep_freed_memory(np.int64(1024))  # numpy ints are ints, checked as such


def test_keep_freed_memory_takes_numpy_ints(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, option, value):
            calls.append((option, value, type(value)))
            return 1

    monkeypatch.setattr(host, "_glibc", lambda: FakeLibc())
    assert host.keep_freed_memory(np.int64(2**20)) is True
    assert calls[0][1:] == (2**20, int)  # handed to ctypes as a Python int


def test_keep_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(host, "_glibc", lambda: None)
    assert host.keep_freed_memory() is False


def test_no_c_library_by_name_means_no_glibc(monkeypatch):
    # Windows: find_library("c") is None, and ctypes.CDLL(None) raises TypeError there.
    def cdll(name):
        raise TypeError("argument of type 'NoneType' is not iterable")

    monkeypatch.setattr(host.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(host.ctypes, "CDLL", cdll)
    assert host.keep_freed_memory() is False


@pytest.mark.parametrize("shape, dtype", [((5, 3), np.float32), ((7,), np.int32), (4, np.bool_),
                                          ((0, 16), np.float32), ((3, 1, 2), np.float64),
                                          (np.int64(5), np.float32)])
def test_aligned_zeros_are_zeros_on_the_boundary(shape, dtype):
    a = host.aligned_zeros(shape, dtype)
    expected = np.zeros(shape, dtype)
    assert a.shape == expected.shape and a.dtype == expected.dtype
    assert a.flags.c_contiguous and a.flags.writeable
    np.testing.assert_array_equal(a, expected)
    if a.size:
        assert a.ctypes.data % host.XLA_CPU_ALIGNMENT == 0


def test_aligned_zeros_refuses_object_dtypes():
    with pytest.raises(TypeError, match="aligned_zeros: dtype must hold plain numbers"):
        host.aligned_zeros((2,), object)


@pytest.mark.parametrize("shape", [(-1,), (3, -2), (2.0, 3), (True,)])
def test_aligned_zeros_names_a_bad_shape(shape):
    with pytest.raises(ValueError, match="aligned_zeros: shape must be non-negative ints"):
        host.aligned_zeros(shape)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's zero-copy transfer")
def test_xla_cpu_uses_an_aligned_buffer_in_place_and_copies_a_misaligned_one():
    # Why rankax.retrieval builds its blocks in aligned buffers: an aligned array is aliased,
    # a numpy array starting 16 bytes off the boundary is copied.
    a = host.aligned_zeros((64, 32), np.float32)
    a[:] = np.arange(a.size, dtype=np.float32).reshape(a.shape)
    on_device = jax.device_put(a)
    assert np.shares_memory(np.asarray(on_device), a)
    raw = host.aligned_zeros(64 * 32 * 4 + 16, np.uint8)
    off = raw[16:].view(np.float32).reshape(64, 32)
    off[:] = a
    assert not np.shares_memory(np.asarray(jax.device_put(off)), off)
    np.testing.assert_array_equal(np.asarray(on_device), np.asarray(jax.device_put(off)))
