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

Besides the config, the record holds what else makes a run (:func:`run_facts`): the data
(item counts and a hash of the labels of each split) and the topology (processes, devices).
A later start on other data is refused like a config change (``--allow_config_change=data``
lets it go on); a start on another topology or with other code (rankax version, git commit)
goes on, since both are legitimate (an elastic resume, a fixed bug), but is printed and
recorded in ``changes`` (:func:`fact_changes`): a resume on another topology is exact only
to float32 rounding, and other code may train differently.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from typing import Any

import ml_collections
import numpy as np

from rankax.train import distributed
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
    """The rankax version and, from a git checkout of rankax, the commit (``+dirty`` if
    modified); ``git_commit`` is None for an installed wheel."""
    import rankax

    commit = checkout_commit(os.path.dirname(rankax.__file__))
    return {"rankax_version": rankax.__version__, "git_commit": commit}


def checkout_commit(package_dir: str) -> str | None:
    """The commit of the git checkout whose top level holds ``package_dir`` and a
    ``pyproject.toml``, with ``+dirty`` if tracked files differ from it; None otherwise. A
    package installed into a virtual environment inside some other repository is not that
    repository's code, so its commit is not taken."""
    root = os.path.dirname(os.path.realpath(package_dir))
    if not os.path.isfile(os.path.join(root, "pyproject.toml")):
        return None
    try:
        git = lambda *a: subprocess.run(
            ["git", "-C", root, *a], capture_output=True, text=True, timeout=60, check=True
        ).stdout.strip()
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != root:
            return None
        commit = git("rev-parse", "HEAD") or None
        if commit and git("status", "--porcelain", "--untracked-files=no"):
            commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        return None
    return commit


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and values (the run record's data hashes and the
    checkpoints' checksums)."""
    a = np.ascontiguousarray(a)
    digest = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    digest.update(a.tobytes())
    return digest.hexdigest()


def _items_sha256(source: Any) -> str | None:
    """SHA-256 of what the items of ``source`` are: the pixels of an in-memory source, the names
    (relative image paths, record ids) of an image source that has them; None otherwise."""
    if getattr(source, "images", None) is not None:
        return array_sha256(np.asarray(source.images))
    names = getattr(source, "names", None)
    if names is not None:
        return hashlib.sha256("\0".join(names).encode()).hexdigest()
    return None


def run_facts(data: Any, devices: int, processes: int) -> dict[str, Any]:
    """What a run depends on besides its config: ``{"data": {split: {"items", "labels_sha256",
    "items_sha256"}}, "topology": {"processes", "devices"}}`` (splits ``train``, ``test`` and,
    if any, ``gallery``). The labels' hash covers their dtype, shape and values; the items'
    hash the pixels of in-memory images or the names of image files (``ImageSource.names``:
    paths relative to the dataset root, so a moved dataset is the same data), ``None`` for a
    source without names (TFDS: its split and version are in the config)."""
    splits = {"train": data.train, "test": data.test}
    if getattr(data, "gallery", None) is not None:
        splits["gallery"] = data.gallery
    described = {}
    for name, source in splits.items():
        described[name] = {
            "items": int(len(source.labels)),
            "labels_sha256": array_sha256(np.asarray(source.labels)),
            "items_sha256": _items_sha256(source),
        }
    return {"data": described, "topology": {"processes": int(processes), "devices": int(devices)}}


def _data_as_recorded(recorded: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """``now`` with only the fields each recorded split has (records written before a field
    existed are compared on the fields they hold)."""
    return {
        split: {k: v for k, v in facts.items() if k in recorded.get(split, facts)}
        for split, facts in now.items()
    }


def _recorded_code(record: dict[str, Any]) -> dict[str, Any]:
    """The code of the newest start the record knows of (its last change, else its creation)."""
    entries = [record, *record.get("changes", [])]
    newest = [e for e in entries if "rankax_version" in e][-1:] or [{}]
    return {k: newest[0].get(k) for k in ("rankax_version", "git_commit")}


def fact_changes(workdir: str, facts: dict[str, Any], allow_changes: Iterable[str] = ()) -> dict[str, tuple]:
    """``{"topology" | "code": (recorded, now)}`` where this start differs from the record in
    topology or code (changes that go on, recorded); raises :class:`WorkdirConfigMismatch` if
    the data differ, unless ``"data"`` (or ``"*"``) is in ``allow_changes`` (then ``"data"`` is
    among the returned changes). Records without these facts (older ones) are not compared."""
    record = read(workdir)
    if record is None:
        return {}
    out = {}
    recorded, code = _recorded_code(record), code_version()
    if recorded != code:
        out["code"] = (recorded, code)
    comparable = dict(facts)
    if "data" in record:
        comparable["data"] = _data_as_recorded(record["data"], facts["data"])
    for key in ("topology", "data"):
        if key in record and record[key] != comparable[key]:
            out[key] = (record[key], comparable[key])
    allowed = set(allow_changes)
    if "data" in out and not allowed & {"data", "*"}:
        old, new = out["data"]
        differ = [
            f"{split} {old.get(split, {}).get('items', 0)} -> {new.get(split, {}).get('items', 0)} items"
            + "".join(
                f", other {what}" for what in ("labels", "items")
                if f"{what}_sha256" in old.get(split, {})
                and old[split][f"{what}_sha256"] != new.get(split, {}).get(f"{what}_sha256")
            )
            for split in sorted(set(old) | set(new)) if old.get(split) != new.get(split)
        ]
        raise WorkdirConfigMismatch(
            f"workdir {workdir} holds a run trained on other data ({'; '.join(differ)}). Use a new "
            "--workdir, or continue this run on these data: --allow_config_change=data",
            workdir=workdir, differences={"data": out["data"]},
        )
    return out


def read(workdir: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, RECORD)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"{path} is not valid JSON ({err}): it records the workdir's run; restore it, or use a "
            "new --workdir"
        ) from None
    if not isinstance(record, dict) or (record and not record.keys() & RECORD_KEYS):
        raise ConfigError(
            f"{path} is not a rankax run record (none of {sorted(RECORD_KEYS)}; another tool's "
            f"{RECORD}?): use a new --workdir, or move that file away"
        )
    return record


#: Keys every rankax record has one of (older records: some of them).
RECORD_KEYS = frozenset({"config", "rankax_version", "created", "data", "topology"})


#: Config keys added after runs were recorded, each with the value that does what those runs
#: did: a record without the key reads as that value.
ADDED_KEYS: dict[str, Any] = {"eval_levels": [], "eval_level_means": True}


def differences(recorded: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """``{key: (recorded value, value now)}`` for every key that differs (absent: ``"<absent>"``;
    a key of :data:`ADDED_KEYS` absent from the record reads as its value there)."""
    now = flat(config)
    recorded = {**ADDED_KEYS, **recorded}
    absent = "<absent>"
    # Under model_selection="best" the evaluated steps are the candidate models: which one the
    # run reports depends on eval_every, so it is compared then.
    best = "best" in (recorded.get("model_selection"), now.get("model_selection"))
    return {
        k: (recorded.get(k, absent), now.get(k, absent))
        for k in sorted(set(recorded) | set(now))
        if recorded.get(k, absent) != now.get(k, absent)
        and not (is_runtime(k) and not (best and k in SELECTION_KEYS))
    }


#: Runtime keys that choose the model a ``model_selection="best"`` run reports.
SELECTION_KEYS = frozenset({"eval_every"})


def is_runtime(key: str) -> bool:
    """Whether the dotted ``key`` is in :data:`RUNTIME_KEYS` or in a section listed there."""
    return key in RUNTIME_KEYS or key.split(".", 1)[0] in RUNTIME_KEYS


def _format(diff: dict[str, tuple], limit: int = 8) -> str:
    shown = [f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(diff.items())[:limit]]
    more = f" (and {len(diff) - limit} more)" if len(diff) > limit else ""
    return "; ".join(shown) + more


#: The ``changes`` key of a start that adopted checkpoints written without a record.
UNRECORDED = "unrecorded_checkpoints"


def _warn_unknown_allowed_keys(allowed: set[str], keys: set[str]) -> None:
    """Says which ``--allow_config_change`` entries are neither ``"*"``, ``"data"``, a config key
    nor a section of keys (of the recorded or the new config): a typo allows nothing (the
    refusal then names the real key), while one allow list shared by several configs may name
    a section one of them lacks -- so a warning, not an error."""
    sections = {k.rsplit(".", i)[0] for k in keys for i in range(k.count(".") + 1)}
    for name in sorted(allowed - {"*", "data"} - sections) if distributed.is_main() else ():
        close = difflib.get_close_matches(name, sorted(sections), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"WARNING: --allow_config_change: {name!r} is not a key or section of this config{hint}; "
              "it allows nothing")


#: A run's result files: found without a record, they belong to a run nothing identifies.
RESULT_FILES = ("metrics.json", "history.json")


def unrecorded_outputs(workdir: str) -> list[str]:
    """What of a run's outputs ``workdir`` holds (``"checkpoints"``, the :data:`RESULT_FILES`)."""
    checkpoints = os.path.join(workdir, "checkpoints")
    found = ["checkpoints"] if os.path.isdir(checkpoints) and os.listdir(checkpoints) else []
    return found + [name for name in RESULT_FILES if os.path.exists(os.path.join(workdir, name))]


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
        found = unrecorded_outputs(workdir)
        if not found:
            return {}
        if "*" not in allowed:
            raise WorkdirConfigMismatch(
                f"workdir {workdir} holds {' and '.join(found)} but no {RECORD}, so nothing shows they come "
                "from this config. Use a new --workdir, or go on with them anyway with "
                "--allow_config_change='*'",
                workdir=workdir, differences={},
            )
        # Adopted: the record this start creates says so under "changes" (after its first step).
        what = f"{' and '.join(found)} without a record"
        return {UNRECORDED: (what, "adopted with --allow_config_change='*'")}
    _warn_unknown_allowed_keys(allowed, set(record.get("config", {})) | set(flat(config)))
    diff = differences(record.get("config", {}), config)
    ok = lambda k: "*" in allowed or any(k == a or k.startswith(a + ".") for a in allowed)
    refused = {k: v for k, v in diff.items() if not ok(k)}
    if refused:
        keys = ",".join(refused)
        checkpoints = os.path.join(workdir, "checkpoints")
        empty = "" if os.path.isdir(checkpoints) and os.listdir(checkpoints) else (
            "; it holds no checkpoint (that run stopped before its first save, e.g. on a non-finite "
            "first step: its report is nonfinite_steps.jsonl), so removing it starts afresh"
        )
        raise WorkdirConfigMismatch(
            f"workdir {workdir} holds a run with another config ({_format(refused)}){empty}. Use a new "
            f"--workdir, or continue this run with the change: --allow_config_change={keys}"
            f"{_keep_recorded(refused)}",
            workdir=workdir,
            differences=refused,
        )
    return diff


#: Config sections whose keys a ``--config.<key>=`` flag may add (the loss's keyword
#: arguments, ``experiments/cli.py``); elsewhere a flag only sets keys the config has.
OPEN_SECTIONS = ("loss.hparams.",)


def _keep_recorded(refused: dict[str, tuple]) -> str:
    """The flags that give the refused keys their recorded values back (a resume that left out
    the overrides the run was started with), when all of them can be written so."""
    flags = []
    for key, (old, new) in refused.items():
        settable = new != "<absent>" or key.startswith(OPEN_SECTIONS)  # a flag adds no other key
        if not settable or old == "<absent>" or old is None or isinstance(old, dict):
            return ""
        shown = _as_flag_value(old)
        if not shown or any(c.isspace() for c in shown):
            return ""
        flags.append(f"--config.{key}={shown}")
    return f", or keep the run's values: {' '.join(flags)}"


def _as_flag_value(value: Any) -> str:
    """A recorded JSON value as ``--config.<key>=`` takes it (lists comma-separated)."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


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


def write(
    config: ml_collections.ConfigDict,
    workdir: str,
    changes: dict[str, tuple] | None = None,
    facts: dict[str, Any] | None = None,
) -> None:
    """Records ``config`` and ``facts`` (:func:`run_facts`) at the first start (with ``changes``
    there: checkpoints adopted without a record), or appends the ``changes`` of a later start
    (allowed config keys and :func:`fact_changes`) and records its config and facts."""
    record = read(workdir)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    entry = {"time": stamp, **code_version(), "keys": {k: list(v) for k, v in (changes or {}).items()}}
    if record is None:  # changes here: checkpoints adopted without a record (check's UNRECORDED)
        record = {"created": stamp, **code_version(), "config": flat(config), **(facts or {}),
                  "changes": [entry] if changes else []}
    elif changes:
        record["config"] = flat(config)
        record.update(facts or {})
        record.setdefault("changes", []).append(entry)
    else:
        return
    path = os.path.join(workdir, RECORD)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)
