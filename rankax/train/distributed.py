"""Multi-process (multi-host) runs: one JAX process per host, one global mesh.

A TPU pod slice or a multi-node GPU job runs one Python process per host (JAX's
multi-controller runtime). Every process runs the same program; ``jax.devices()`` lists the
devices of all of them and ``jax.local_devices()`` its own. A ``jit`` over a mesh of all
devices then computes one global step: the loss of the global batch is exact across hosts
(every query ranks all ``B`` embeddings, whichever host computed them).

What this module provides:

* :func:`initialize` -- ``jax.distributed.initialize`` from explicit flags
  (``coordinator_address``, ``num_processes``, ``process_id``), from a cluster JAX detects
  (Cloud TPU, SLURM, Open MPI, ...), or nothing at all (one process: today's behaviour).
* :func:`is_main` / :func:`barrier` -- process 0 writes logs, plots and ``metrics.json``;
  shared-directory housekeeping runs on process 0 between barriers.
* :func:`local_slice` -- the rows ``[lo, hi)`` of a global batch of ``B`` rows this process
  loads: ``B / num_processes`` consecutive rows, in process order (the order in which
  ``jax.make_array_from_process_local_data`` places them on a mesh of ``jax.devices()``).
* :func:`global_array` -- the global ``jax.Array`` of a sharding from this process's rows.
* :func:`replicate` -- a pytree every process holds whole, placed replicated on the mesh.
* :func:`host_local` -- a replicated global pytree as host numpy (every process has it all).
* :func:`all_gather_rows` -- the rows every process computed, concatenated in process order.
* :func:`eval_share` -- evaluation: each process reads and embeds its part of every test
  batch, and the embeddings are gathered (every process holds the whole gallery).

Faults: the coordinator waits ``initialization_timeout`` seconds for every process to join,
then raises on the ones that did; after that, a process whose heartbeat stops for
``heartbeat_timeout`` seconds is declared dead and the others fail instead of hanging in a
collective (a collective with a dead peer also fails on its own transport deadline).
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, Sharding
from jax.sharding import PartitionSpec as P

DEFAULT_INIT_TIMEOUT_S = 300
DEFAULT_HEARTBEAT_TIMEOUT_S = 100


class DistributedError(RuntimeError):
    """A multi-process setting that cannot work (bad flags, a process that did not join)."""


def on_every_process(err: Exception) -> Exception:
    """``err`` marked as raised by every process alike (a refusal all of them computed from the
    same facts): a failing command then waits for the others to print theirs before it leaves
    (``experiments.cli.run``); leaving at once, process 0 took down the coordination service
    and a peer aborted before it could say why."""
    err.on_every_process = True  # type: ignore[attr-defined]
    return err


def detected_cluster() -> str | None:
    """The name of the cluster environment JAX would auto-detect (``"SlurmCluster"``,
    ``"GceTpuCluster"``, ...), or None when there is none.

    Only the cheap presence checks of JAX's own cluster classes are run (environment
    variables, TPU device files); nothing waits on a network. Opt-in-only environments
    (e.g. mpi4py) are not auto-detected, as in ``jax.distributed.initialize``.
    """
    try:
        from jax._src.clusters import ClusterEnv
    except ImportError:  # a JAX without the cluster registry: the common variables
        if all(k in os.environ for k in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID")):
            return "SlurmCluster"
        return None
    for env in ClusterEnv._cluster_types:
        if getattr(env, "opt_in_only_method", False):
            continue
        try:
            if env.is_env_present():
                return env.__name__
        except Exception as err:  # noqa: BLE001 - a failing probe means "not this cluster"
            logging.debug("cluster probe %s failed: %s", env.__name__, err)
    return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = DEFAULT_INIT_TIMEOUT_S,
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
    auto: bool = True,
) -> bool:
    """Starts JAX's distributed runtime when this run is one of several processes.

    * ``coordinator_address`` (``HOST:PORT`` of process 0), ``num_processes`` and
      ``process_id`` given: exactly that (a local rehearsal, several GPU hosts by hand).
      All three or none.
    * none given and ``auto``: ``jax.distributed.initialize()`` if JAX detects a cluster
      (:func:`detected_cluster`): Cloud TPU pod slice, SLURM, Open MPI, Kubernetes.
    * otherwise: nothing (one process; everything else in rankax behaves as before).

    ``initialization_timeout`` (s): how long process 0 waits for all processes to join before
    every joined process fails. ``heartbeat_timeout`` (s): after start, how long a silent
    process may go before it is declared dead and the others fail. Returns True when the
    distributed runtime was started here.

    Raises:
      DistributedError: a partial or invalid set of flags (names the flag), or the runtime
        could not start (a process did not join within ``initialization_timeout``).
    """
    explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
                "process_id": process_id}
    given = {k for k, v in explicit.items() if v is not None}
    if given and given != set(explicit):
        missing = ", ".join(f"--{k}" for k in explicit if k not in given)
        raise DistributedError(
            f"a multi-process run needs --coordinator_address, --num_processes and --process_id "
            f"together; missing {missing}"
        )
    timeouts = {"initialization_timeout": initialization_timeout, "heartbeat_timeout": heartbeat_timeout}
    for name, value in timeouts.items():
        if int(value) < 1:
            raise DistributedError(f"--{name} must be >= 1 second, got {value}")
    kwargs: dict[str, Any] = dict(
        initialization_timeout=int(initialization_timeout),
        heartbeat_timeout_seconds=int(heartbeat_timeout),
    )
    if given:
        n, i = int(num_processes), int(process_id)
        if n < 1:
            raise DistributedError(f"--num_processes must be >= 1, got {n}")
        if not 0 <= i < n:
            raise DistributedError(f"--process_id must be in [0, {n - 1}] for --num_processes={n}, got {i}")
        host, sep, port = str(coordinator_address).rpartition(":")
        if not sep or not host or not port.isdigit():
            raise DistributedError(
                f"--coordinator_address must be HOST:PORT (process 0's host), got {coordinator_address!r}"
            )
        kwargs.update(coordinator_address=str(coordinator_address), num_processes=n, process_id=i)
        where = f"process {i} of {n}, coordinator {coordinator_address}"
    elif auto and (cluster := detected_cluster()) is not None:
        where = f"cluster detected by JAX: {cluster}"
    else:
        return False
    if jax.distributed.is_initialized():
        return False
    # A process that does not join makes the runtime abort every joined one (in C++, no Python
    # exception) once initialization_timeout has passed: say why in our words first.
    warn_after = max(0.5, 0.9 * int(initialization_timeout))
    watchdog = threading.Timer(warn_after, _not_joined_message, args=(where, int(initialization_timeout)))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as err:  # noqa: BLE001 - the runtime's own error, named and chained
        raise DistributedError(
            f"jax.distributed.initialize failed ({where}): {type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}. Every process must start "
            f"within --initialization_timeout={initialization_timeout}s and reach the coordinator"
        ) from err
    finally:
        watchdog.cancel()
    _check_topology(int(num_processes) if given else None)
    print(
        f"[rankax] process {jax.process_index()} of {jax.process_count()} ({where}): "
        f"{jax.local_device_count()} local of {jax.device_count()} devices",
        flush=True,
    )
    return True


def _check_topology(num_processes: int | None) -> None:
    """A :class:`DistributedError` when this process was told another process count than the
    coordinator's, or when the processes hold different numbers of devices (the data-parallel
    mesh and each process's rows of a batch assume the same number on every host)."""
    if num_processes is not None and jax.process_count() != num_processes:
        raise on_every_process(DistributedError(
            f"--num_processes={num_processes} here, but the coordinator's run has {jax.process_count()} "
            "processes: start every process with the same --num_processes"
        ))
    counts = collections.Counter(d.process_index for d in jax.devices())
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"process {i}: {counts[i]}" for i in sorted(counts))
        raise on_every_process(DistributedError(
            f"the processes hold different numbers of devices ({shown}); a data-parallel run needs the "
            "same number on every host (set CUDA_VISIBLE_DEVICES or JAX_NUM_CPU_DEVICES alike)"
        ))


def _not_joined_message(where: str, timeout_s: int) -> None:
    print(
        f"[rankax] ERROR: not every process has joined the distributed run ({where}) after "
        f"{0.9 * timeout_s:.0f}s; the run stops at --initialization_timeout={timeout_s}s "
        "('DEADLINE_EXCEEDED ... RegisterTask'). Start every process with the same "
        "--coordinator_address and --num_processes and the process ids 0..N-1, and check that "
        "the coordinator's HOST:PORT is reachable from every host",
        file=sys.stderr,
        flush=True,
    )


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main() -> bool:
    """True on process 0 (the one that writes logs, plots, TensorBoard and metrics)."""
    return jax.process_index() == 0


def barrier(name: str, timeout_s: int | None = None) -> None:
    """Waits until every process reaches ``barrier(name)``; a no-op with one process.

    ``name`` must be the same on every process and unique per use. ``timeout_s`` (default:
    the runtime's own) bounds the wait: a missing process raises instead of hanging."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    client = _client()
    if client is not None and timeout_s is not None:
        client.wait_at_barrier(f"rankax:{name}", int(timeout_s * 1000))
        return
    multihost_utils.sync_global_devices(f"rankax:{name}")


def check_same_everywhere(
    values: dict[str, Any], what: str, advice: str = "Start every process with the same command and code"
) -> None:
    """Raises :class:`~rankax.train.ConfigError` on every process unless each process's
    ``values`` (a flat dict of JSON values) equal process 0's; a no-op with one process.

    Processes started with different commands would otherwise train one run mixing both:
    nothing else compares them (the workdir's record is written by process 0 alone). Each
    process's error names the keys where it differs from process 0."""
    if jax.process_count() == 1:
        return
    import hashlib
    import json

    from jax.experimental import multihost_utils

    from rankax.train.errors import ConfigError

    text = json.dumps(values, sort_keys=True, default=str).encode()
    digest = np.frombuffer(hashlib.sha256(text).digest(), np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(digest)).reshape(jax.process_count(), -1)
    differ = [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]
    if not differ:
        return
    size = int(multihost_utils.broadcast_one_to_all(np.int64(len(text))))
    main = np.zeros(size, np.uint8)
    if is_main():
        main[:] = np.frombuffer(text, np.uint8)
    main_values = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(main))).decode())
    keys = [k for k in sorted(set(values) | set(main_values)) if values.get(k) != main_values.get(k)]
    shown = "; ".join(f"{k}: {main_values.get(k, '<absent>')!r} here {values.get(k, '<absent>')!r}"
                      for k in keys[:6])
    where = f"process {process_index()} differs from process 0 ({shown})" if keys else (
        f"processes {differ} differ from process 0")
    raise on_every_process(
        ConfigError(f"the processes were started with different {what}: {where}. {advice}"))


#: The file :func:`check_shared_directory` writes in the directory for a moment.
SHARED_MARK = ".rankax-shared"


def check_shared_directory(path: str, what: str) -> None:
    """Raises :class:`~rankax.train.ConfigError` on every process unless every process sees
    the file process 0 writes in ``path``: orbax and the workdir's record need one directory
    that all processes read and write (a shared file system). Each process with its own local
    directory of that name waited in the first save without a word. A no-op with one
    process."""
    if jax.process_count() == 1:
        return
    import secrets

    from jax.experimental import multihost_utils

    from rankax.train.errors import ConfigError

    token = np.zeros(16, np.uint8)
    marker = os.path.join(path, SHARED_MARK)
    try:
        if is_main():
            token[:] = np.frombuffer(secrets.token_bytes(16), np.uint8)
            os.makedirs(path, exist_ok=True)
            with open(marker, "wb") as f:
                f.write(token.tobytes())
        token = np.asarray(multihost_utils.broadcast_one_to_all(token))  # after process 0 wrote it
        try:
            with open(marker, "rb") as f:
                seen = f.read() == token.tobytes()
        except OSError:
            seen = False
        seen_by = np.asarray(multihost_utils.process_allgather(np.int32(seen))).reshape(-1)
    finally:  # also when a peer failed between the write and the gather
        if is_main() and os.path.exists(marker):
            os.remove(marker)
    blind = [i for i, ok in enumerate(seen_by) if not ok]
    if blind:
        raise on_every_process(ConfigError(
            f"{what} {path!r} is not shared: process(es) {blind} do not see the file process 0 wrote "
            f"there. A multi-process run needs one {what} that every process reads and writes (a "
            "shared file system mounted on every host)"
        ))


def _client():
    try:
        from jax._src import distributed as _dist

        return _dist.global_state.client
    except Exception:  # noqa: BLE001 - older/newer JAX: fall back to a device barrier
        return None


def local_slice(global_size: int) -> slice:
    """The rows of a global batch of ``global_size`` rows this process loads.

    Process ``i`` of ``n`` gets ``[i * B / n, (i + 1) * B / n)``: with a 1-D mesh over
    ``jax.devices()`` (devices ordered by process), those are exactly the rows its own
    devices hold under ``PartitionSpec("data")``.

    Raises:
      ValueError: ``global_size`` is not divisible by the number of processes.
    """
    n, i = jax.process_count(), jax.process_index()
    if global_size % n:
        raise ValueError(
            f"the global batch of {global_size} is not divisible by the {n} processes; choose "
            "config.batch.classes_per_batch * samples_per_class as a multiple of jax.device_count()"
        )
    per = global_size // n
    return slice(i * per, (i + 1) * per)


def global_array(local: Any, sharding: Sharding, global_shape: Sequence[int] | None = None) -> jax.Array:
    """The global array of ``sharding`` whose rows on this process are ``local`` (numpy).

    With one process this is ``jax.device_put(local, sharding)``. With several, each process
    passes its own rows (:func:`local_slice`) and ``jax.make_array_from_process_local_data``
    assembles the global array (``global_shape`` defaults to the local rows times the number
    of processes along the sharded first axis)."""
    local = np.asarray(local)
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    if global_shape is None and _rows_sharded(sharding):
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def _rows_sharded(sharding: Sharding) -> bool:
    spec = getattr(sharding, "spec", None)
    return bool(spec) and spec[0] is not None


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """``tree`` (the same values on every process: host numpy or local arrays) placed
    replicated on ``mesh``. One process: ``jax.device_put(tree, NamedSharding(mesh, P()))``."""
    sharding = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)), tree
    )


def host_local(tree: Any) -> Any:
    """Host numpy copies of a pytree of fully replicated (or fully addressable) arrays."""
    return jax.tree.map(np.asarray, tree)


def processes_where(flag: bool) -> list[int]:
    """The processes whose ``flag`` is true (every process calls it); ``[0]`` or ``[]`` with
    one process."""
    if jax.process_count() == 1:
        return [0] if flag else []
    from jax.experimental import multihost_utils

    flags = np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).reshape(-1)
    return [int(i) for i in np.flatnonzero(flags)]


def all_gather_rows(local: np.ndarray) -> np.ndarray:
    """``[n * m, ...]``: the ``[m, ...]`` rows of every process, in process order (every
    process calls it with the same ``m``). One process: ``local`` itself."""
    if jax.process_count() == 1:
        return np.asarray(local)
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(local), tiled=True)
    return np.asarray(gathered)


def eval_share() -> Any:
    """This process's part of every evaluation batch, as a
    :class:`rankax.retrieval.evaluator.Share` (gathered with :func:`all_gather_rows`), or
    None with one process. Evaluators given it read (decode) and embed only this process's
    rows of each batch; every process then holds every embedding."""
    if jax.process_count() == 1:
        return None
    from rankax.retrieval.evaluator import Share

    return Share(jax.process_index(), jax.process_count(), all_gather_rows)


class NullWriter:
    """Stands in for a TensorBoard writer or a progress bar on processes other than 0:
    every method call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def host_rows(x: Any) -> Any:
    """A global array spanning several processes as host numpy (every process's rows,
    gathered: a collective every process must call); anything else unchanged."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x


def like_batch(labels: Any, images: Any) -> Any:
    """``labels`` (host numpy of the whole global batch) as a global array sharded as the
    global array ``images`` is, when ``images`` spans several processes; else unchanged."""
    spans_processes = isinstance(images, jax.Array) and not images.is_fully_addressable
    if spans_processes and not isinstance(labels, jax.Array):
        labels = np.asarray(labels)
        rows = local_slice(len(labels))
        return global_array(labels[rows], images.sharding, labels.shape)
    return labels
