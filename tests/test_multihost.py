"""rankax.train.distributed without a cluster: flag checks, one-process behaviour, cluster
detection, and a process whose peers never join (bounded, with a message naming the fix).

The multi-process training runs are in test_multihost_train.py (slow)."""

import subprocess
import sys
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
    fn = lambda b: b[:, :2]
    assert distributed.sharded_embed_fn(fn) is fn


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
