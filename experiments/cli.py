"""The command-line convention shared by ``experiments.train`` and ``experiments.evaluate``.

``--config FILE`` names an ``ml_collections`` config file (``get_config()``), and any
``--config.<key>=<value>`` overrides one of its keys, typed as the key's current value
(``--config.num_steps=50``, ``--config.eval_ks=1,10``, ``--config.model.pretrained=w.pth``;
a tuple of strings as ``--config.optimizer.frozen_groups=backbone,head`` or ``=head``).
``config.loss.hparams`` is open: ``--config.loss.hparams.temperature=0.05`` adds or replaces a
keyword argument of the loss (the training program checks it is one). Other flags are
``--name=value`` or ``--name value`` (``-`` and ``_`` alike). A mistake is reported in one or two
lines that name the flag or key and the fix, never as a traceback: :class:`CliError` is a
``SystemExit`` carrying that message.
"""

from __future__ import annotations

import _thread
import ast
import contextlib
import difflib
import gc
import os
import pathlib
import runpy
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "configs"
CONFIG_PREFIX = "--config."
HPARAMS = "loss.hparams"


class CliError(SystemExit):
    """A usage error: ``str(err)`` is the message printed (``error: ...``); uncaught, it exits
    with status 1 (a ``SystemExit`` with a string argument prints it and exits 1). ``cause``: the
    error it reports, whose mark of being raised on every process it keeps
    (:func:`rankax.train.distributed.on_every_process`)."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(f"error: {message}")
        if getattr(cause, "on_every_process", False):
            self.on_every_process = True


@contextlib.contextmanager
def prompt_interrupts() -> Iterator[threading.Event]:
    """Ctrl-C (SIGINT) raises ``KeyboardInterrupt`` where the command's code sees it; yields an
    event set once it has.

    Python's own handler raises it in whatever code runs when the signal arrives. In a ``gc``
    callback (JAX registers one that runs at every collection, often while JAX loads) it is
    printed as "Exception ignored" and dropped, and the run went on: there this handler asks
    again 50 ms later instead. In a C extension's initialisation (numpy's, while JAX loads) it
    becomes an ``ImportError``: the event tells the caller that this one was the interrupt. A
    SIGINT that the parent set to be ignored (a background job) stays ignored, and the previous
    handler comes back on exit."""
    raised = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN or threading.current_thread() is not threading.main_thread():
        yield raised
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        if _in_gc_callback(frame):
            threading.Timer(0.05, _thread.interrupt_main).start()
            return
        raised.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield raised
    finally:
        signal.signal(signal.SIGINT, previous)


def interruptible(run: Callable[[], Any], after: Callable[[], str]) -> Any:
    """``run()`` under :func:`prompt_interrupts`; on Ctrl-C one line, ``interrupted: `` and
    ``after()`` (what the interrupted command left), and exit status 130 instead of a traceback."""
    interrupt = None
    try:  # an interrupt while JAX and orbax load, too
        with prompt_interrupts() as interrupt:
            return run()
    except KeyboardInterrupt:
        pass
    except ImportError:  # an interrupt inside a C extension's initialisation becomes one
        if interrupt is None or not interrupt.is_set():
            raise
    print(f"interrupted: {after()}", file=sys.stderr)
    raise SystemExit(130) from None


def _in_gc_callback(frame: Any) -> bool:
    """Whether ``frame`` runs in a ``gc`` callback, where a raised exception is dropped."""
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks:
            return True
        frame = frame.f_back
    return False


def check_output_file(flag: str, path: str) -> None:
    """``path`` can be written as a file (its missing folders made): it is not a folder, and no
    file stands where a folder above it would go."""
    if os.path.isdir(path):
        raise CliError(f"{flag} {path} is a directory; give a file name")
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise CliError(f"{flag} {path}: {existing} is a file, not a folder")
    if os.path.exists(path) and not os.path.isfile(path):
        return  # /dev/stdout, a pipe, a FIFO: opening it to probe would consume or block it
    try:  # checked now, not after the work (permissions, a read-only or immutable folder or file)
        if os.path.exists(path):
            with open(path, "ab"):
                pass
        else:
            with tempfile.TemporaryFile(dir=existing):
                pass
    except OSError as err:
        raise CliError(f"{flag} {path} cannot be written ({err.strerror or err})") from None


def check_workdir(path: str) -> None:
    """``path`` is a directory, or can be made one: no file in the way, the nearest existing
    folder above it writable."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"--workdir {path} is a file, not a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise CliError(f"--workdir {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"--workdir {path}: no permission to write in {existing}")


def available_configs() -> list[tuple[str, str]]:
    """``(path, first docstring line)`` of every experiment config under ``configs/``."""
    out = []
    for path in sorted(CONFIG_DIR.glob("*.py")):
        if path.stem in ("__init__", "default"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        out.append((os.path.relpath(path, os.getcwd()) if path.is_relative_to(os.getcwd()) else str(path),
                    doc.strip().splitlines()[0] if doc.strip() else ""))
    return out


def configs_listing() -> str:
    rows = available_configs()
    width = max((len(p) for p, _ in rows), default=0)
    return "\n".join(f"  {p:<{width}}  {d}" for p, d in rows)


#: Flags naming a file or folder: an empty value is refused, ``~`` expanded.
PATH_FLAGS = frozenset({"workdir", "checkpoint", "config", "embeddings", "gallery", "weights", "output",
                        "save_embeddings"})


def parse(
    argv: Sequence[str], flags: dict[str, str], bool_flags: Sequence[str] = ()
) -> tuple[dict[str, Any], list[tuple[str, str]], bool]:
    """``(flag values, [(config key, text)], help requested)`` from ``argv`` (program name
    excluded). ``flags``: name -> help text of the flags this program takes."""
    values: dict[str, Any] = {}
    overrides: list[tuple[str, str]] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-h", "--help", "--helpfull"):
            return values, overrides, True
        if arg.startswith(CONFIG_PREFIX):
            key, eq, text = arg[len(CONFIG_PREFIX) :].partition("=")
            if not eq:
                if i >= len(args):
                    raise CliError(f"--config.{key} needs a value: --config.{key}=VALUE")
                text, i = args[i], i + 1
            overrides.append((key, text))
            continue
        if not arg.startswith("--"):
            previous = args[i - 2][2:].replace("-", "_") if i >= 2 and args[i - 2].startswith("--") else ""
            if previous in bool_flags and arg.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
                raise CliError(f"--{previous} is a switch: write --{previous}={arg} (or --{previous} alone "
                               "for true)")
            raise CliError(f"unexpected argument {arg!r}; flags are --name=value (see --help)")
        name, eq, text = arg[2:].partition("=")
        name = name.replace("-", "_")
        if name not in flags:
            close = difflib.get_close_matches(name, list(flags), n=1)
            hint = f"; did you mean --{close[0]}?" if close else ""
            raise CliError(f"unknown flag --{name}{hint} (flags: {', '.join('--' + f for f in flags)})")
        if name in values:
            raise CliError(f"--{name} is given twice; pass it once")
        if eq and not text and name not in bool_flags:
            raise CliError(f"--{name}= needs a value")
        if name in bool_flags and not eq:
            values[name] = True
            continue
        if not eq:
            if i >= len(args):
                raise CliError(f"--{name} needs a value")
            text, i = args[i], i + 1
        if name in bool_flags:
            values[name] = _parse_bool(f"--{name}", text)
        elif name in PATH_FLAGS and not text:  # `--workdir "$RUN"` with RUN unset
            raise CliError(f"--{name} was given an empty value")
        else:  # `--workdir=~/run`: no shell expands it
            values[name] = os.path.expanduser(text) if name in PATH_FLAGS else text
    return values, overrides, False


def load_config(path: str, flag: str = "--config") -> ml_collections.ConfigDict:
    """The ``get_config()`` of the file ``path``; a missing file lists the configs."""
    if not os.path.isfile(path):
        raise CliError(f"{flag} {path}: no such config file. The experiment configs:\n{configs_listing()}")
    if str(ROOT) not in sys.path:  # configs import `configs.default`
        sys.path.insert(0, str(ROOT))
    module = runpy.run_path(path)
    if "get_config" not in module:
        raise CliError(f"{flag} {path} defines no get_config(); see configs/digits.py for the form")
    config = module["get_config"]()
    check_known_keys(config, f"{flag} {path}")
    return config


#: Groups whose keys depend on the model, dataset, loss or protocol: any key is accepted there.
OPEN_GROUPS = ("model", "dataset", "loss.hparams", "loss.terms", "landmarks", "reported")


def check_known_keys(config: ml_collections.ConfigDict, where: str) -> None:
    """A :class:`CliError` naming a key of ``config`` that ``configs/default.py`` does not have,
    outside :data:`OPEN_GROUPS`: a misspelt key in a config file (``c.num_stepz = 3``) was kept
    and ignored, the run using the default."""
    from configs import default
    from rankax.train import workdir

    known = set(workdir.flat(default.get_config()))
    for key in workdir.flat(config):
        if key in known or any(key == g or key.startswith(g + ".") for g in OPEN_GROUPS):
            continue
        group, _, leaf = key.rpartition(".")
        siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == group}
        close = difflib.get_close_matches(leaf, sorted(siblings), n=1)
        hint = f"; did you mean config.{siblings[close[0]]}?" if close else ""
        raise CliError(f"{where}: config.{key} is not a key of configs/default.py{hint} (rankax would "
                       f"ignore it; the groups {', '.join(OPEN_GROUPS)} take keys of their own)")


def config_from_record(record: dict[str, Any]) -> ml_collections.ConfigDict:
    """The ConfigDict of a flat ``{"a.b": value}`` record (``<workdir>/config.json``)."""
    tree: dict[str, Any] = {}
    for key, value in record.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tuple(value) if isinstance(value, list) else value
    return ml_collections.ConfigDict(tree)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]) -> None:
    """Sets each ``--config.<key>=<text>`` on ``config``, typed as the key's current value."""
    for key, text in overrides:
        parent, leaf = _locate(config, key)
        if key.startswith(HPARAMS + ".") and key.count(".") == 2:
            current = parent.get(leaf, None)
            value = _literal(text) if current is None else _typed(key, text, type(current), current)
            parent[leaf] = value
            continue
        field_type = parent.get_type(leaf)
        if isinstance(parent[leaf], ml_collections.ConfigDict):
            sub = ", ".join(sorted(parent[leaf].keys())) or "none"
            raise CliError(f"config.{key} is a group of keys ({sub}); set one: --config.{key}.<key>=VALUE")
        value = _typed(key, text, field_type, parent[leaf])
        try:
            parent[leaf] = value
        except (TypeError, ValueError) as err:
            raise CliError(f"--config.{key}={text}: {err}") from None


def _locate(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        path = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        open_group = ".".join(parts[:depth]) == HPARAMS  # loss.hparams takes any loss argument
        if not isinstance(node, ml_collections.ConfigDict):
            raise CliError(f"config.{'.'.join(parts[:depth])} is a value, not a group: no key {path!r}")
        if part not in node and not (last and open_group):
            close = difflib.get_close_matches(part, list(node.keys()), n=1)
            prefix = ".".join(parts[:depth])
            hint = f"did you mean config.{prefix + '.' if prefix else ''}{close[0]}? " if close else ""
            where = f"config.{prefix}" if prefix else "the config"
            if not node.keys():  # an empty group, e.g. loss.terms: its entries come from a config file
                raise CliError(
                    f"config.{path} does not exist: config.{prefix} is empty in this config; add the "
                    f"whole entry in a config file (docs/training.md shows loss.terms)"
                )
            raise CliError(
                f"config.{path} does not exist in {where}; {hint}"
                f"(keys: {', '.join(sorted(node.keys()))}; all keys: --print_config)"
            )
        if last:
            return node, part
        node = node[part]
    raise CliError(f"empty config key in --config.{key}")


def _parse_bool(name: str, text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise CliError(f"{name}={text!r} is not a boolean (true/false)")


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _typed(key: str, text: str, field_type: type | None, current: Any = None) -> Any:
    """``text`` as a value of ``field_type`` (None: the key holds None, any literal);
    ``current``, the key's value now, tells a tuple of strings from one of numbers."""
    if text.strip() == "None":
        return None
    try:
        if field_type is bool:
            return _parse_bool(f"--config.{key}", text)
        if field_type is int:
            return int(text)
        if field_type is float:
            return float(text)
        if field_type in (tuple, list):
            return field_type(_sequence(text, current))
        if field_type is str:
            return text
    except (ValueError, SyntaxError):
        name = getattr(field_type, "__name__", str(field_type))
        listed = field_type in (tuple, list)
        example = f" (comma-separated values, e.g. {_example(current)})" if listed else ""
        raise CliError(f"--config.{key}={text!r} is not a valid {name}{example}") from None
    return _literal(text)


def _holds_strings(current: Any) -> bool:
    return bool(current) and all(isinstance(v, str) for v in current)


def _example(current: Any) -> str:
    if not current:
        return "1,2,4 or a,b"
    return "a,b" if _holds_strings(current) else "1,2,4"


def _sequence(text: str, current: Any) -> tuple:
    """The entries of a tuple written as a Python literal (``(1, 2)``, ``['a']``) or separated
    by commas: ``1,2,4``, and ``backbone,head`` or ``head`` where the key holds strings (bare
    words) or is empty (then each entry is a literal if it parses as one, else a word)."""
    if "(" in text or "[" in text:
        value = ast.literal_eval(text)
        return tuple(value) if isinstance(value, tuple | list) else (value,)
    items = [item.strip() for item in text.split(",")]
    if len(items) > 1 and not items[-1]:  # "head,": one entry
        items.pop()
    if _holds_strings(current):
        return tuple(_word(item) for item in items)
    if current:  # numbers: every entry must be one (a literal)
        return tuple(ast.literal_eval(item) for item in items)
    return tuple(_literal_or_word(item) for item in items)


def _word(item: str) -> str:
    """A string entry: quoted (``'head'``) or a bare word (``head``: no spaces or quotes)."""
    if item[:1] in ("'", '"'):
        value = ast.literal_eval(item)
        if isinstance(value, str):
            return value
    if not item or any(c.isspace() or c in "'\"" for c in item):
        raise ValueError(f"not a string entry: {item!r}")
    return item


def _literal_or_word(item: str) -> Any:
    try:
        return ast.literal_eval(item)
    except (ValueError, SyntaxError):
        return _word(item)


# ----------------------------------------------------------------------------- multi-process

DISTRIBUTED_FLAGS = {
    "coordinator_address": "multi-process run: HOST:PORT of process 0 (with --num_processes and "
    "--process_id; a TPU pod slice or SLURM job is detected without them; docs/multihost.md)",
    "num_processes": "multi-process run: the number of processes (one per host)",
    "process_id": "multi-process run: this process's index in [0, num_processes)",
    "initialization_timeout": "multi-process run: seconds to wait for every process to join "
    "(default 300)",
    "heartbeat_timeout": "multi-process run: seconds after which a silent process is declared "
    "dead and the others stop (default 100)",
}


def run(main: Any) -> None:
    """Runs a command's ``main()``. In a multi-process run, a process that fails (an error,
    Ctrl-C, a :class:`CliError`) prints what Python would print and leaves at once with
    ``os._exit``: Python's exit would run JAX's shutdown, which waits up to 300 s for the
    other processes while they wait for this one in the step's collectives, and then every
    process aborted ("Shutdown barrier has failed") without saying why. Gone, the others stop
    within seconds (their collective's connection is reset, or its heartbeat stops). One
    process, or a process that succeeds: an ordinary return."""
    try:
        main()
    except BaseException as err:
        code = _exit_status(err)
        if code == 0 or not _distributed_started():
            raise
        import traceback

        if isinstance(err, SystemExit):  # a CliError's message, or an exit status alone
            if not isinstance(err.code, int) and err.code is not None:
                print(err.code, file=sys.stderr)
        elif not isinstance(err, KeyboardInterrupt):
            traceback.print_exc()
        print(f"[rankax] process {_process_index()} failed: leaving now (exit status {code}) so that the "
              "other processes stop too; start them all again with the same command", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        if getattr(err, "on_every_process", False):  # every process refuses: let each say why first
            _wait_for_the_others()
        os._exit(code)


def _wait_for_the_others(timeout_s: int = 30) -> None:
    """A barrier of at most ``timeout_s`` before leaving (best effort: a peer gone meanwhile
    only shortens it)."""
    try:
        from rankax.train import distributed

        distributed.barrier("refused-everywhere", timeout_s)
    except BaseException:  # noqa: BLE001 - leaving anyway
        pass


def _exit_status(err: BaseException) -> int:
    """The status Python would exit with on ``err``."""
    if isinstance(err, SystemExit):
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    return 130 if isinstance(err, KeyboardInterrupt) else 1


def _distributed_started() -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1


def _process_index() -> int:
    import jax

    return jax.process_index()


def start_distributed(values: dict[str, Any]) -> bool:
    """Starts JAX's distributed runtime from the multi-process flags in ``values`` (or a
    cluster JAX detects); nothing with none of them. Returns True when started."""
    from rankax.train import distributed

    def integer(name: str) -> int | None:
        if name not in values:
            return None
        try:
            return int(values[name])
        except ValueError:
            raise CliError(f"--{name}={values[name]!r} is not an integer") from None

    defaults = {"initialization_timeout": distributed.DEFAULT_INIT_TIMEOUT_S,
                "heartbeat_timeout": distributed.DEFAULT_HEARTBEAT_TIMEOUT_S}
    timeouts = {k: v if integer(k) is None else integer(k) for k, v in defaults.items()}
    try:
        return distributed.initialize(
            values.get("coordinator_address"),
            integer("num_processes"),
            integer("process_id"),
            **timeouts,
        )
    except distributed.DistributedError as err:
        raise CliError(str(err), err) from None
