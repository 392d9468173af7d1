"""rankax.train.distributed without a cluster: flag checks, one-process behaviour, cluster
detection, and a process whose peers never join (bounded, with a message naming the fix).

The multi-process training runs are in test_multihost_train.py (slow)."""

import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import cli
from rankax.train import distributed
from tests.multihost_launch import ROOT, child_env, free_port


def _all(address="h:1", n="2", i="0"):
    return {"coordinator_address": address, "num_processes": n, "process_id": i}


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"coordinator_address": "h:1"}, "missing --num_processes, --process_id"),
        ({"num_processes": "2", "process_id": "0"}, "missing --coordinator_address"),
        (_all(address="h"), "HOST:PORT"),
        (_all(i="2"), "--process_id must be in [0, 1]"),
        (_all(n="0"), "--num_processes must be >= 1"),
        (_all(n="two"), "--num_processes='two'"),
        ({"heartbeat_timeout": "-1"}, "--heartbeat_timeout must be >= 1"),
        ({"initialization_timeout": "0"}, "--initialization_timeout must be >= 1"),
    ],
)
def test_bad_flags_name_the_flag(values, needle):
    with pytest.raises(cli.CliError) as err:
        cli.start_distributed(values)
    assert needle in str(err.value)
    assert not jax.distributed.is_initialized()


def test_no_flags_no_cluster_is_one_process(monkeypatch):
    for var in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    assert cli.start_distributed({}) is False
    assert jax.process_count() == 1 and distributed.is_main()
    distributed.barrier("no-op")  # one process: returns at once


def test_slurm_job_is_detected(monkeypatch):
    """The presence check JAX runs for SLURM (its environment variables), nothing else."""
    env = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert distributed.detected_cluster() == "SlurmCluster"


def test_one_process_helpers_are_identities():
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    assert distributed.local_slice(8) == slice(0, 8)
    np.testing.assert_array_equal(distributed.all_gather_rows(x), x)
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    g = distributed.global_array(x, NamedSharding(mesh, P("data")))
    np.testing.assert_array_equal(np.asarray(g), x)
    tree = distributed.replicate({"w": x}, mesh)
    np.testing.assert_array_equal(distributed.host_local(tree)["w"], x)


def test_process_whose_peers_never_join_stops_with_a_message(tmp_path):
    """Process 1 of 2 alone: it stops after --initialization_timeout with rankax's message
    (what to check) and JAX's, never waiting forever."""
    cmd = [sys.executable, "-m", "experiments.train", "--config", "configs/digits.py",
           "--workdir", str(tmp_path / "w"), "--coordinator_address", f"127.0.0.1:{free_port()}",
           "--num_processes", "2", "--process_id", "1", "--initialization_timeout", "3"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(4), capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log
    assert "not every process has joined" in log and "--initialization_timeout=3s" in log, log
    assert took < 90, log
    assert not (tmp_path / "w").exists()  # nothing was written


class _Recording:
    """A Source over ``images`` that records every index it decodes (thread-safe)."""

    def __init__(self, images):
        self.images, self.labels = images, np.zeros(len(images), np.int32)
        self.read, self._lock = [], threading.Lock()

    def __len__(self):
        return len(self.images)

    def get_batch(self, indices, *, train, seed=0, offset=0):
        with self._lock:
            self.read.extend(int(i) for i in indices)
        return self.images[np.asarray(indices)]


class _Gather:
    """``count`` threads standing in for processes: ``gather`` (one call per batch from every
    thread) returns every thread's rows of that call in thread order, as the collective does."""

    def __init__(self, count):
        self.count, self.parts = count, {}
        self.barrier, self.calls = threading.Barrier(count, timeout=60), threading.local()

    def for_process(self, index):
        def gather(rows):
            call = getattr(self.calls, "n", 0)
            self.calls.n = call + 1
            self.parts[call, index] = np.asarray(rows)
            self.barrier.wait()
            return np.concatenate([self.parts[call, j] for j in range(self.count)])

        return gather


@pytest.mark.parametrize("n, batch_size, count", [(23, 8, 2), (23, 8, 3), (5, 16, 2), (16, 8, 4), (7, 3, 4)])
@pytest.mark.parametrize("source", [False, True])
def test_each_process_reads_only_its_rows_and_all_get_every_embedding(n, batch_size, count, source):
    """``count`` simulated processes (threads) embed a set of ``n`` items with ``share``: each
    returns the one-process embeddings (the numpy map of every row), each decoded only its
    own rows of every batch (a Source), and together they decoded every item."""
    from rankax.retrieval.evaluator import Share, embed_in_batches

    rng = np.random.default_rng(n + count)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    w = rng.normal(size=(5, 3)).astype(np.float32)
    expected = x @ w
    shapes = set()

    def embed(batch):
        shapes.add(np.shape(batch))
        return np.asarray(batch) @ w

    gather = _Gather(count)
    sources = [_Recording(x) if source else x for _ in range(count)]
    out = [None] * count

    def process(i):
        out[i] = embed_in_batches(embed, sources[i], batch_size, share=Share(i, count, gather.for_process(i)))

    threads = [threading.Thread(target=process, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for got in out:
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    per = -(-min(batch_size, n) // count)
    assert shapes == {(per, 5)}  # one shape for a jitted embed_fn
    if source:
        size = min(batch_size, n)
        reads = [set(s.read) for s in sources]
        assert set().union(*reads) == set(range(n))
        for i, r in enumerate(reads):  # process i decodes positions [i * per, (i + 1) * per) of each batch
            own = {min(b * size + i * per + k, min((b + 1) * size, n) - 1)
                   for b in range(-(-n // size)) for k in range(per)}
            assert r == own
            assert len(sources[i].read) == len(r)  # a repeated (padding) row is decoded once per batch
        assert sum(len(r) for r in reads) < n + count * -(-n // size)


def test_bad_share_is_rejected():
    from rankax.data import loader
    from rankax.retrieval.evaluator import Share

    with pytest.raises(ValueError, match="0 <= index < count"):
        Share(2, 2, np.asarray)
    with pytest.raises(ValueError, match="share must be"):
        loader.eval_batches(np.zeros((4, 2)), 2, share=(0, 0))
