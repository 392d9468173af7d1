"""The workdir remembers the run it holds: ``<workdir>/config.json``.

Written at the first start of a run (before its first step), it holds the resolved config,
the rankax version and the git commit of the code (when run from a checkout). Every later
start on the same workdir compares its config with the recorded one, key by key, and stops
with :class:`~rankax.train.WorkdirConfigMismatch` naming the differing keys, unless each of
them is allowed explicitly (``allow_changes``; ``--allow_config_change=num_steps`` on the
command line): a resumed run that silently changed its loss would report another run's
numbers under a new name.

Keys that never change the parameters a run trains (:data:`RUNTIME_KEYS`: logging,
evaluation and checkpoint cadence, evaluation batch size, the non-finite policy, which only acts
when a step already failed) may change freely. An allowed change is recorded in the file's
``changes`` list.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from typing import Any

import ml_collections

from rankax.train.errors import ConfigError, WorkdirConfigMismatch

RECORD = "config.json"
# Keys (or whole sections) that never change the trained parameters (resume is exact across
# them): free to differ.
RUNTIME_KEYS = frozenset({
    "input",
    "log_every",
    "eval_every",
    "eval_batch_size",
    "eval_baselines",
    "checkpoint_every",
    "keep_checkpoints",
    "on_nonfinite",
    "max_consecutive_nonfinite",
})


def flat(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """``{"loss.name": "supap", ...}``: the leaves of ``config`` as JSON values (tuples as lists)."""
    tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):  # an empty group has no leaf (its keys' absence says it)
            for key in sorted(node):
                walk(node[key], f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = json.loads(json.dumps(node, default=str))

    walk(tree, "")
    return out


def code_version() -> dict[str, str | None]:
    """The rankax version and, from a git checkout, the commit (``+dirty`` if modified)."""
    import rankax

    root = os.path.dirname(os.path.dirname(os.path.abspath(rankax.__file__)))
    commit = None
    try:
        git = lambda *a: subprocess.run(
            ["git", "-C", root, *a], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = git("rev-parse", "HEAD") or None
        if commit and git("status", "--porcelain", "--untracked-files=no"):
            commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return {"rankax_version": rankax.__version__, "git_commit": commit}


def read(workdir: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, RECORD)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"{path} is not valid JSON ({err}): it records the workdir's run; restore it, or use a "
            "new --workdir"
        ) from None


def differences(recorded: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """``{key: (recorded value, value now)}`` for every key that differs (absent: ``"<absent>"``)."""
    now = flat(config)
    absent = "<absent>"
    return {
        k: (recorded.get(k, absent), now.get(k, absent))
        for k in sorted(set(recorded) | set(now))
        if recorded.get(k, absent) != now.get(k, absent) and not is_runtime(k)
    }


def is_runtime(key: str) -> bool:
    """Whether the dotted ``key`` is in :data:`RUNTIME_KEYS` or in a section listed there."""
    return key in RUNTIME_KEYS or key.split(".", 1)[0] in RUNTIME_KEYS


def _format(diff: dict[str, tuple], limit: int = 8) -> str:
    shown = [f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(diff.items())[:limit]]
    more = f" (and {len(diff) - limit} more)" if len(diff) > limit else ""
    return "; ".join(shown) + more


def check(
    config: ml_collections.ConfigDict, workdir: str, allow_changes: Iterable[str] = ()
) -> dict[str, tuple]:
    """Raises :class:`WorkdirConfigMismatch` if ``workdir`` records another config.

    ``allow_changes``: dotted keys (``"num_steps"``, ``"loss.hparams.temperature"``) allowed
    to differ, a group (``"loss"``: every key under it) or ``"*"`` (any). Returns the allowed
    differences (empty for a first start or an identical config). Writes nothing.
    """
    record = read(workdir)
    allowed = set(allow_changes)
    if record is None:
        checkpoints = os.path.join(workdir, "checkpoints")
        if os.path.isdir(checkpoints) and os.listdir(checkpoints) and "*" not in allowed:
            raise WorkdirConfigMismatch(
                f"workdir {workdir} holds checkpoints but no {RECORD}, so nothing shows they come from "
                "this config. Use a new --workdir, or resume them anyway with --allow_config_change='*'",
                workdir=workdir, differences={},
            )
        return {}
    diff = differences(record.get("config", {}), config)
    ok = lambda k: "*" in allowed or any(k == a or k.startswith(a + ".") for a in allowed)
    refused = {k: v for k, v in diff.items() if not ok(k)}
    if refused:
        keys = ",".join(refused)
        raise WorkdirConfigMismatch(
            f"workdir {workdir} holds a run with another config ({_format(refused)}). Use a new "
            f"--workdir, or continue this run with the change: --allow_config_change={keys}",
            workdir=workdir,
            differences=refused,
        )
    return diff


LOCK = ".lock"


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
    """Holds ``<workdir>/.lock`` (an exclusive ``flock``, made with the workdir if needed) for
    the block: a second run starting on the same workdir meanwhile raises
    :class:`~rankax.train.ConfigError` instead of mixing its checkpoints and records with the
    first's. The operating system drops the lock when the process ends, killed or not."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"workdir {workdir} is in use by another run (it holds {path}): wait for that run to end, "
            "or use another --workdir"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def write(config: ml_collections.ConfigDict, workdir: str, changes: dict[str, tuple] | None = None) -> None:
    """Records ``config`` (first start) or appends the allowed ``changes`` (later starts)."""
    record = read(workdir)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    if record is None:
        record = {"created": stamp, **code_version(), "config": flat(config), "changes": []}
    elif changes:
        record["config"] = flat(config)
        record.setdefault("changes", []).append(
            {"time": stamp, **code_version(), "keys": {k: list(v) for k, v in changes.items()}}
        )
    else:
        return
    path = os.path.join(workdir, RECORD)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)
