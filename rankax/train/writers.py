"""What a run writes and prints: JSON files, TensorBoard scalars, the progress bar, the table."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np


def write_json(path: str, obj: Any, **kwargs: Any) -> None:
    """Writes ``path`` whole or not at all (a temporary file renamed over it), so a kill never
    leaves a truncated ``metrics.json``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, **kwargs)
    os.replace(tmp, path)


def jsonable(x: Any) -> Any:
    """Floats that JSON can hold (non-finite ones as strings), lists for arrays."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, float | np.floating):
        return float(x) if np.isfinite(x) else str(float(x))
    if isinstance(x, np.integer | np.bool_):
        return x.item()
    return x


class EventWriter:
    """TensorBoard scalars written as they come (``add_scalar(tag, value, step)``, ``flush``,
    ``close``): tensorboardX's own ``SummaryWriter`` hands events to a thread, and its
    ``flush`` does not wait for that thread, so "flushed" events could still be missing from
    the file. This writes each event to the file object at once, in tensorboardX's format
    (its ``EventsWriter`` and ``summary.scalar``); ``flush`` hands all of them to the operating
    system, so they outlive a killed process.

    The file begins with a purge marker at ``purge_step``: TensorBoard drops the events of
    earlier files at that step and after. Its name ends in the nanosecond it was made
    (tensorboardX names a file by the second and would truncate a same-named one). It is made
    at the first event, so a start that writes nothing (a finished run started again) leaves
    no file.
    """

    def __init__(self, logdir: str, purge_step: int):
        self._logdir, self._purge_step, self._writer = logdir, int(purge_step), None
        # tensorboardX takes seconds to import (its protobufs): here, before the loop times its
        # steps, not at the first event (inside a resumed run's progress-bar rate).
        import tensorboardX.event_file_writer  # noqa: F401
        import tensorboardX.summary  # noqa: F401

    def _events(self) -> Any:
        if self._writer is None:
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event, SessionLog

            os.makedirs(self._logdir, exist_ok=True)
            self._writer = EventsWriter(os.path.join(self._logdir, "events"), f".{time.time_ns()}")
            start = SessionLog(status=SessionLog.START)
            self._writer.write_event(Event(wall_time=time.time(), step=self._purge_step, session_log=start))
        return self._writer

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        summary = scalar(tag, float(value))
        self._events().write_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def summary_writer(workdir: str, start: int = 0) -> Any:
    """A TensorBoard writer of ``<workdir>/tensorboard`` (``add_scalar(tag, value, step)``) for
    a run that starts after step ``start`` (0: a new run, which writes its baselines at step
    0); on processes other than 0 of a multi-process run, one that writes nothing.

    Its file begins with a purge marker (:class:`EventWriter`): TensorBoard drops the events of
    earlier files at steps the run writes again (from ``start + 1`` on a resume, everything on
    a new run), so an interrupted run's events after its checkpoint never show twice. The loop
    flushes the writer before each checkpoint, so a kill loses no event up to the checkpoint
    it resumes from."""
    from rankax.train import distributed

    if not distributed.is_main():  # [multihost] TensorBoard from process 0 only
        return distributed.NullWriter()
    return EventWriter(os.path.join(workdir, "tensorboard"), start + 1 if start else 0)


def write_scalars(writer: Any, prefix: str, values: dict[str, float], step: int) -> None:
    """``values`` as TensorBoard scalars ``<prefix>/<key>`` at ``step``."""
    for key, value in values.items():
        writer.add_scalar(f"{prefix}/{key}", value, step)


def progress(start: int, total: int) -> Any:
    """A tqdm bar of the training steps, starting at ``start`` of ``total`` (process 0's only)."""
    from rankax.train import distributed

    if not distributed.is_main():  # [multihost] one progress bar: process 0's
        return distributed.NullWriter()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)


def table_keys(metrics: dict[str, float]) -> list[str]:
    """The metrics a table shows: every ``recall@k`` (by ``k``: the run's ``eval_ks``, e.g.
    DyML's 1/10/20 or SOP's 1/10/100/1000), then the other metrics in their order; counts,
    timings and the per-level values of ``eval_levels`` (``level<l>/...``, ``multi/...``: the
    table shows their means; ``metrics.json`` keeps them) left out."""
    shown = [k for k in metrics if not k.startswith(("level", "multi/"))]
    recall = sorted((k for k in shown if k.startswith("recall@")), key=lambda k: int(k.split("@")[1]))
    rest = [k for k in shown if not k.startswith("recall@") and "num_" not in k and k != "seconds"]
    return recall + rest


def print_table(report: dict[str, dict[str, float]]) -> None:
    """One row per entry of ``report`` (raw pixels, untrained, trained), one column per metric
    of the first row (:func:`table_keys`); a metric a row lacks shows as nan."""
    keys = table_keys(next(iter(report.values())))
    width = max(len(n) for n in report) + 2
    columns = [max(12, len(k) + 2) for k in keys]
    print("\n" + "".ljust(width) + "".join(k.rjust(c) for k, c in zip(keys, columns, strict=True)))
    for name, vals in report.items():
        cells = (f"{vals.get(k, float('nan')):{c}.4f}" for k, c in zip(keys, columns, strict=True))
        print(name.ljust(width) + "".join(cells))
    print()
