"""Host-memory settings for runs on XLA:CPU.

XLA:CPU allocates the buffers of every call of a compiled program with the C library's
``malloc`` and frees them when the call ends. glibc serves an allocation at or above its mmap
threshold (128 KiB at start, adapting up to 32 MiB) with freshly mapped pages and unmaps them
on ``free``, so a program whose temporaries are larger than that -- the ``[B, B]`` score
cotangent of ``batch_loss`` is 64 MiB at ``B = 4096`` -- page-faults all of them in again on
every call. :func:`keep_freed_memory` makes glibc keep freed memory and hand it out again.

On the 2-core CPU host (jax 0.10.2, glibc 2.36) it took the hinted training step of the
losses at ``B = 4096, D = 512`` from 1.44-1.52x to 1.29-1.34x the similarity matmul (SupAP,
Smooth-AP; H-AP 3.18-3.22x -> 2.94-2.98x), the matmul itself unchanged (docs/benchmarks.md,
"Host memory"). Nothing changes on accelerators, whose buffers do not come from ``malloc``.
The same effect without code: ``MALLOC_MMAP_THRESHOLD_=1073741824
MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment, or another allocator such as tcmalloc
through ``LD_PRELOAD``.

XLA:CPU also takes a numpy array handed to ``jax.device_put`` (or to a jitted function) without
a copy when its data start on a 64-byte boundary, and copies it otherwise -- at about 1 GB/s on
that host (jax 0.10.2), slower than numpy's own copy; replicated over several CPU devices,
once per device. numpy aligns its arrays to 16 bytes only. :func:`aligned_zeros` allocates
buffers that XLA:CPU can alias; :mod:`rankax.retrieval` builds the padded blocks it sends in
them (a ``[1M, 512]`` float32 gallery: 2.2 s of copying -> nothing).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "XLA_CPU_ALIGNMENT",
    "aligned_zeros",
    "keep_freed_memory",
]

#: Byte boundary on which XLA:CPU aliases a host array instead of copying it.
XLA_CPU_ALIGNMENT = 64

#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1


def keep_freed_memory(max_chunk_bytes: int = 2**30) -> bool:
    """Lets glibc's ``malloc`` keep and reuse freed memory instead of unmapping it.

    Sets ``M_MMAP_THRESHOLD`` to ``max_chunk_bytes`` (allocations below it come from the heap,
    not from fresh ``mmap`` pages) and ``M_TRIM_THRESHOLD`` to its maximum (the heap is not
    shrunk when memory is freed). Process-wide and meant for a process's start: it cannot be
    undone (the adaptive threshold stays off), and the resident memory stays at its high-water
    mark rather than falling back after a peak. Computations and their results are unchanged.

    Args:
      max_chunk_bytes: allocations of at least this size still get their own mapping
        (default 1 GiB); an int in ``[128 KiB, 2**31 - 1]``.

    Returns:
      True if the C library is glibc and accepted both settings; False elsewhere (other C
      libraries, e.g. macOS or musl), where nothing is changed.
    """
    if isinstance(max_chunk_bytes, bool) or not isinstance(max_chunk_bytes, int | np.integer):
        raise TypeError(f"keep_freed_memory: max_chunk_bytes must be an int, got "
                        f"{type(max_chunk_bytes).__name__}")
    max_chunk_bytes = int(max_chunk_bytes)
    if not 128 * 1024 <= max_chunk_bytes <= _INT_MAX:
        raise ValueError(f"keep_freed_memory: max_chunk_bytes must be in [131072, {_INT_MAX}] bytes, "
                         f"got {max_chunk_bytes}")
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, max_chunk_bytes)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)
    )


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (it has ``gnu_get_libc_version``), else None."""
    name = ctypes.util.find_library("c")  # None on Windows, and on Linux hosts without ldconfig,
    try:  # where CDLL(None) opens the process's own symbols: glibc's among them
        libc = ctypes.CDLL(name)
    except (OSError, TypeError):  # TypeError: CDLL(None) on Windows
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def aligned_zeros(shape: int | tuple[int, ...], dtype: npt.DTypeLike = np.float32) -> np.ndarray:
    """``np.zeros(shape, dtype)`` whose data start on an :data:`XLA_CPU_ALIGNMENT`-byte
    boundary, so that XLA:CPU uses the buffer in place (module docstring). Fill it before it is
    handed to JAX and leave it alone after: the array JAX returns may share its memory. On
    accelerators the alignment changes nothing (the data are copied to the device anyway)."""
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.kind not in "biufc":
        raise TypeError(f"aligned_zeros: dtype must hold plain numbers (a buffer JAX can use), got {dtype}")
    if not isinstance(shape, int | np.integer | tuple | list):
        raise TypeError(f"aligned_zeros: shape must be an int or a tuple of ints, got {shape!r}")
    shape = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
    if not all(isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ValueError(f"aligned_zeros: shape must be non-negative ints, got {shape!r}")
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.zeros(nbytes + XLA_CPU_ALIGNMENT, np.uint8)  # calloc: untouched pages cost nothing
    start = -raw.ctypes.data % XLA_CPU_ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)
