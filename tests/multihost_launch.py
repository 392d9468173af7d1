"""Launches ``experiments.train`` as N local processes (the multi-process tests' helper).

Each process is a separate ``python -m experiments.train`` on the CPU with ``8 / N`` fake
devices (``JAX_NUM_CPU_DEVICES``), joined through ``--coordinator_address 127.0.0.1:PORT`` on
a free port. Every wait has a hard timeout; on a timeout or a failure the processes still
running are killed by PID and every process's log is part of the assertion message.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_DEVICES = 8


# Below Linux's default ephemeral range (32768-60999), from which the OS picks the local ports
# of outgoing connections (the other test worker's gloo and gRPC clients among them): a port
# taken from there by bind(0) could be taken again in the seconds before process 0 listens.
_PORTS = (20000, 32000)


def free_port() -> int:
    """A localhost port nothing listens on now, outside the ephemeral range."""
    rng = random.Random()  # seeded from the OS: two test workers draw independently
    for _ in range(200):
        port = rng.randrange(*_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free localhost port in {_PORTS}")


def child_env(devices: int) -> dict[str, str]:
    # The repository first, then what the caller had on the path (a GPU host's carried wheels).
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=path)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Run:
    procs: list[subprocess.Popen]
    logs: list[str]

    def text(self, i: int) -> str:
        with open(self.logs[i], errors="replace") as f:
            return f.read()

    def all_logs(self, tail: int = 6000) -> str:
        return "\n".join(
            f"----- process {i} (rc={p.returncode}) log {self.logs[i]} (last {tail} chars):\n"
            f"{self.text(i)[-tail:]}"
            for i, p in enumerate(self.procs)
        )

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()

    def wait(self, timeout_s: float) -> list[int]:
        """Return codes of every process; kills them all and fails (with the logs) when one
        is still running after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"timed out after {timeout_s}s\n{self.all_logs()}") from None
        return [p.returncode for p in self.procs]

    def check(self, timeout_s: float) -> None:
        codes = self.wait(timeout_s)
        if any(codes):
            raise AssertionError(f"return codes {codes}\n{self.all_logs()}")


def launch(workdir: str, num_processes: int, args: list[str], only: list[int] | None = None,
           extra: list[str] = (), module: str = "experiments.train", log: str | None = None,
           port: int | None = None, devices: int | None = None) -> Run:
    """Starts processes ``only`` (default: all) of ``num_processes`` of ``python -m module
    --workdir workdir args``; logs go to ``<log or workdir>.log<i>``. ``port``: the
    coordinator's (default: a free one), to start the processes of one run in several calls;
    ``devices``: each process's CPU devices (default ``8 / num_processes``)."""
    devices = TOTAL_DEVICES // num_processes if devices is None else devices
    port = free_port() if port is None else port
    procs, logs = [], []
    for i in range(num_processes) if only is None else only:
        cmd = [sys.executable, "-m", module, "--workdir", workdir, *args]
        if num_processes > 1:
            cmd += ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(num_processes),
                    "--process_id", str(i), *extra]
        path = f"{log or workdir}.log{i}"
        with open(path, "w") as f:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=child_env(devices), stdout=f,
                                          stderr=subprocess.STDOUT))
        logs.append(path)
    return Run(procs, logs)
