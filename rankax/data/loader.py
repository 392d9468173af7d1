"""The input pipeline of image datasets: batches decoded ahead of the step, in worker
processes, shipped as uint8 and prefetched to the device.

A training batch is a pure function of ``(seed, step)``: the sampler gives the indices of
``step``, and the source draws the augmentation of batch position ``p`` from
``streams.generator(seed * 2**32 + step, Stream.AUGMENT, p)`` (:mod:`rankax.data.streams`:
no sampler draw shares it). The pipeline is therefore the map
``step -> batch`` over ``range(start, stop)``, and it is built on grain (the JAX ecosystem's
input-pipeline library) as ``MapDataset.range(start, stop).map(...)``:

- ``workers=0``: the batches are made in a background thread of this process (each batch's
  images decoded by the source's thread pool), ``prefetch`` batches ahead of the step.
- ``workers=W>0``: W worker processes each make whole batches (one decoding thread each, so
  that W = cores uses every core without oversubscription), ``prefetch`` per worker, returned
  in step order through shared memory. Whatever W, step ``s`` gets the same batch, and a
  resumed run starts the map at its checkpoint's step: resume is exact.

Why grain and not a thread pool or ``torch.utils.data``: PIL holds the GIL for part of
decoding and resizing, so threads stop scaling after a few cores (the issue that motivated
this measured 40 img/s per thread with 16 threads); grain's processes scale with cores,
return arrays through shared memory instead of pickles, keep the order deterministic and are
what flax/big_vision pipelines use. Images travel as uint8 (a quarter of float32's bytes)
and are normalised on the device (:func:`rankax.data.transforms.normalize_on_device`).
"""

from __future__ import annotations

import collections
import copy
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from rankax._core import optional


def pixels(source: Any, indices: np.ndarray, *, train: bool, seed: int = 0, offset: int = 0) -> np.ndarray:
    """``source``'s images of ``indices``: uint8 when it has ``get_pixels`` (image sources),
    else its ``get_batch`` (in-memory arrays, already model inputs). ``offset``: the position
    of ``indices[0]`` in the batch whose augmentation seed is ``seed``."""
    if hasattr(source, "get_pixels"):
        return source.get_pixels(indices, train=train, seed=seed, offset=offset)
    return source.get_batch(indices, train=train, seed=seed, offset=offset)


def step_seed(seed: int, step: int) -> int:
    """The augmentation seed of training step ``step`` (see the module docstring)."""
    return int(seed) * 2**32 + int(step)


def _single_threaded(source: Any) -> Any:
    """``source`` with one decoding thread (inside a worker process, the processes are the
    parallelism)."""
    if getattr(source, "num_threads", 1) == 1:
        return source
    source = copy.copy(source)
    source.num_threads = 1
    source._pool = None
    return source


class TrainBatch:
    """``step -> {"step", "indices", "images"}``: the training batch of ``step`` (picklable, so
    that grain's worker processes can run it). ``indices`` are the whole batch's rows,
    ``images`` those of ``rows`` only (a process's share of a global batch), augmented as
    when the whole batch is loaded."""

    def __init__(self, source: Any, sampler: Any, seed: int, rows: slice | None = None):
        self.source, self.sampler, self.seed = source, sampler, int(seed)
        self.rows = rows or slice(0, None)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        indices = np.asarray(self.sampler.indices(int(step)))
        seed, offset = step_seed(self.seed, step), self.rows.start or 0
        images = pixels(self.source, indices[self.rows], train=True, seed=seed, offset=offset)
        return {"step": np.int64(step), "indices": indices, "images": images}


def share_rows(b: int, batch_size: int, num_items: int, index: int = 0, count: int = 1) -> np.ndarray:
    """The item indices process ``index`` of ``count`` reads of evaluation batch ``b``.

    Batch ``b`` holds items ``[start, stop)`` with ``start = b * batch_size`` and ``stop =
    min(start + batch_size, num_items)``. One process (``count=1``): all of them (the last
    batch may be shorter). Several: the batch is split into ``count`` consecutive parts of
    ``per = ceil(batch_size / count)`` positions, process ``index`` taking positions
    ``start + index * per + [0, per)``; positions past ``stop - 1`` repeat item ``stop - 1``,
    so every process reads ``per`` rows of every batch (one shape for a jitted embedding) and
    the parts, concatenated in process order, begin with the batch's ``stop - start`` items.
    """
    start = int(b) * int(batch_size)
    stop = min(start + int(batch_size), int(num_items))
    if int(count) == 1:
        return np.arange(start, stop)
    per = -(-int(batch_size) // int(count))
    return np.minimum(start + int(index) * per + np.arange(per), stop - 1)


class EvalBatch:
    """``b -> images of`` :func:`share_rows` ``(b, batch_size, len(source), *share)`` with
    test-time preprocessing: uint8 :func:`pixels` when ``raw``, else the source's normalised
    ``get_batch``. ``share = (index, count)``: this process's part of every batch (default: the
    whole batch, the last one possibly shorter). A repeated row is decoded once."""

    def __init__(self, source: Any, batch_size: int, raw: bool = True, share: tuple[int, int] = (0, 1)):
        self.source, self.batch_size, self.raw = source, int(batch_size), bool(raw)
        self.share = (int(share[0]), int(share[1]))

    def __call__(self, b: int) -> np.ndarray:
        indices = share_rows(b, self.batch_size, len(self.source), *self.share)
        unique, inverse = np.unique(indices, return_inverse=True)
        if self.raw:
            images = pixels(self.source, unique, train=False)
        else:
            images = self.source.get_batch(unique, train=False)
        return images if len(unique) == len(indices) else np.asarray(images)[inverse]


def _mark_flags_parsed() -> None:
    """grain reads absl flags; a library caller has parsed none, so use their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _check(workers: int, prefetch: int) -> None:
    if int(workers) < 0:
        raise ValueError(f"workers must be >= 0 (0: decode in this process), got {workers}")
    if int(prefetch) < 1:
        raise ValueError(f"prefetch must be >= 1 batch, got {prefetch}")


def iterate(
    fn: Callable[[int], Any], start: int, stop: int, *, workers: int = 0, prefetch: int = 2
) -> Iterator[Any]:
    """``fn(i)`` for ``i`` in ``[start, stop)``, in order, computed ``prefetch`` ahead: in a
    background thread (``workers=0``) or in ``workers`` processes."""
    _check(workers, prefetch)
    if stop <= start:
        return iter(())
    grain = optional.require("grain", "the input pipeline (rankax.data.loader)")
    _mark_flags_parsed()
    dataset = grain.MapDataset.range(int(start), int(stop)).map(fn)
    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=int(prefetch))
    it = dataset.to_iter_dataset(read)
    if workers:
        options = grain.MultiprocessingOptions(num_workers=int(workers), per_worker_buffer_size=int(prefetch))
        it = it.mp_prefetch(options, worker_init_fn=_ignore_interrupts)
    return iter(it)


def _ignore_interrupts(worker_index: int, worker_count: int) -> None:
    """In each worker process: a terminal's Ctrl-C (SIGINT to the whole process group) is the main
    process's to handle; it stops the workers. (Each worker printed its own KeyboardInterrupt
    traceback.)"""
    del worker_index, worker_count
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_batches(
    source: Any,
    sampler: Any,
    *,
    seed: int,
    start: int,
    stop: int,
    workers: int = 0,
    prefetch: int = 2,
    rows: slice | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The training batches of steps ``[start, stop)`` (``{"step", "indices", "images"}``,
    images uint8 for image sources; only ``rows`` of each batch when given, see
    :class:`TrainBatch`), made ``prefetch`` batches ahead of the consumer."""
    if workers:
        source = _single_threaded(source)
    fn = TrainBatch(source, sampler, seed, rows)
    return iterate(fn, start, stop, workers=workers, prefetch=prefetch)


def eval_batches(
    source: Any,
    batch_size: int,
    *,
    workers: int = 0,
    prefetch: int = 2,
    raw: bool = True,
    share: tuple[int, int] = (0, 1),
) -> Iterator[np.ndarray]:
    """``source``'s items in order, ``batch_size`` at a time, with test-time preprocessing
    (uint8 pixels when ``raw``, else normalised float32), made ahead as :func:`iterate` says.
    ``share = (index, count)``: only process ``index`` of ``count``'s rows of each batch
    (:func:`share_rows`), so each process decodes its part of the test set only. In-memory
    sources (no ``get_pixels``) are indexed in the caller's thread, without grain.

    Raises:
      ValueError: ``share`` is not ``(index, count)`` with ``0 <= index < count``.
    """
    index, count = (int(v) for v in share)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"share must be (index, count) with 0 <= index < count, got {share!r}")
    if workers:
        source = _single_threaded(source)
    n = -(-len(source) // int(batch_size))
    fn = EvalBatch(source, batch_size, raw, (index, count))
    if not hasattr(source, "get_pixels"):  # in memory: rows are read in the caller's thread
        return (fn(b) for b in range(n))
    return iterate(fn, 0, n, workers=workers, prefetch=prefetch)


SMALL_HOST_CORES = 4  # up to this many cores, auto decodes in threads of the training process


def usable_cores() -> int:
    """The cores this process may run on."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_workers(workers: int) -> int:
    """``workers`` with -1 (auto) resolved: 0 (the source's decoding threads in this process)
    on a host of at most :data:`SMALL_HOST_CORES` cores, else one worker process per core but
    one.

    Why: worker processes cost a little per batch (shared-memory hand-off, grain's
    bookkeeping) that a small host feels -- on 2 cores, 2 decoding threads delivered 1.3x the
    images per second of 2 worker processes (``experiments/benchmark_input.py``) -- while
    threads stop scaling on large hosts, PIL holding the GIL for part of each image (16
    threads gave 40 img/s each where one thread alone gives 364)."""
    workers = int(workers)
    if workers < -1:
        raise ValueError(f"workers must be -1 (auto), 0 (this process) or a count, got {workers}")
    if workers == -1:
        cores = usable_cores()
        return 0 if cores <= SMALL_HOST_CORES else cores - 1
    return workers


def pad_rows(batch: np.ndarray, size: int) -> np.ndarray:
    """``batch`` with its last row repeated up to ``size`` rows (a jitted function then sees
    one shape; the caller drops the padding's outputs)."""
    batch = np.asarray(batch)
    if len(batch) >= size:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], size - len(batch), axis=0)])


def close(iterator: Any) -> None:
    """Closes ``iterator`` if it can be closed (a generator, grain's iterators: the worker
    processes stop and their shared-memory batches are freed now, not by Python's resource
    tracker at exit, which warns of "leaked shared_memory objects")."""
    closer = getattr(iterator, "close", None)
    if closer is not None:
        closer()


class Timed:
    """An iterator that adds the seconds its consumer waited in ``next()`` to ``waited``
    (read and reset by the training loop's logging window); ``close()`` closes the iterator
    it wraps."""

    def __init__(self, iterator: Iterator[Any]):
        self._it = iter(iterator)
        self.waited = 0.0

    def __iter__(self) -> Timed:
        return self

    def __next__(self) -> Any:
        t = time.perf_counter()
        try:
            return next(self._it)
        finally:
            self.waited += time.perf_counter() - t

    def take_waited(self) -> float:
        """The seconds waited since the last call."""
        waited, self.waited = self.waited, 0.0
        return waited

    def close(self) -> None:
        close(self._it)


def prefetch_to_device(
    iterator: Iterator[Any], put: Callable[[Any], Any], size: int = 2
) -> Iterator[Any]:
    """``put(batch)`` (e.g. ``jax.device_put`` with the step's input sharding) issued ``size``
    batches ahead, so the copy of the next batch overlaps the current step (double buffering
    for ``size=2``). Closing it closes ``iterator``."""
    if int(size) < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    queue: collections.deque = collections.deque()
    try:
        for batch in iterator:
            queue.append(put(batch))
            if len(queue) >= size:
                yield queue.popleft()
        while queue:
            yield queue.popleft()
    finally:  # closed early (an error, an interrupt): so is the source
        close(iterator)
