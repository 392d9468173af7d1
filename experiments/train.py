"""Train and evaluate a rankax experiment.

    python -m experiments.train --config configs/digits.py --workdir runs/digits \\
        [--config.num_steps=50 --config.loss.hparams.temperature=0.05 ...]

Running the same command on a workdir that holds checkpoints resumes from the latest one. The
workdir records the config of its run (config.json); a start with another config stops and
names the differing keys, unless --allow_config_change=KEY[,KEY] allows them (e.g. more steps:
--config.num_steps=600 --allow_config_change=num_steps).

Config keys: every key of configs/default.py, overridden by --config.<key>=<value>;
--print_config prints the resolved config of --config (with overrides) and exits.
"""

from __future__ import annotations

import logging
import os
import sys

from experiments import cli

FLAGS = {
    "config": "experiment config file (the list below)",
    "workdir": "directory for checkpoints, config.json, metrics.json and plots",
    "allow_config_change": "comma-separated config keys (or groups, or '*') allowed to differ "
    "from the config the workdir recorded",
    "print_config": "print the resolved config and exit",
    "keep_freed_memory": "first call rankax.host.keep_freed_memory() (glibc keeps freed memory: "
    "CPU steps with large batches run faster; the process never shrinks after its peak)",
    **cli.DISTRIBUTED_FLAGS,  # [multihost]
}


def usage() -> str:
    flags = "\n".join(f"  --{name:<20} {text}" for name, text in FLAGS.items())
    return f"{__doc__.strip()}\n\nflags:\n{flags}\n\nconfigs:\n{cli.configs_listing()}\n"


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    values, overrides, want_help = cli.parse(argv, FLAGS, bool_flags=("print_config", "keep_freed_memory"))
    if want_help:
        print(usage())
        return None
    if "config" not in values:
        raise cli.CliError(f"--config is required. The experiment configs:\n{cli.configs_listing()}")
    # Reading the config imports JAX (seconds): Ctrl-C there is handled as in the run itself.
    after = (lambda: _resumes(values["workdir"])) if "workdir" in values else (lambda: "nothing was written")
    return cli.interruptible(lambda: _configured(values, overrides), after)


def _configured(values: dict, overrides: list) -> dict | None:
    """The config of the command line, printed (``--print_config``) or trained."""
    config = cli.load_config(values["config"])
    cli.apply_overrides(config, overrides)
    if values.get("print_config"):  # checked as a run checks it: a typo is an error here too
        from rankax.train import ConfigError, config_checks, losses

        try:
            config_checks.check_config(config)
            config = losses.check_loss_hparams(config)  # deprecated spellings as the run records them
        except ConfigError as err:
            raise cli.CliError(str(err), err) from None
        print(config)
        return None
    if "workdir" not in values:
        raise cli.CliError("--workdir is required (a new directory, or the one of the run to resume)")
    cli.check_workdir(values["workdir"])
    # orbax logs every file operation at INFO and a few harmless notices at WARNING
    logging.getLogger("absl").setLevel(logging.ERROR)
    return _train(values, config)


def _resumes(workdir: str) -> str:
    """What the same command does after Ctrl-C."""
    checkpoints = os.path.join(workdir, "checkpoints")
    saved = os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))
    where = (f"resumes from the newest checkpoint in {workdir}" if saved
             else "starts afresh (no checkpoint was written)")
    return f"the same command {where}"


def _train(values: dict, config) -> dict:
    """``train_and_evaluate`` of the parsed command line; the loop's explained errors as a
    :class:`cli.CliError` (one line)."""
    if values.get("keep_freed_memory"):
        import rankax.host

        rankax.host.keep_freed_memory()
    cli.start_distributed(values)  # [multihost] before anything touches a device
    from rankax.data import ImageReadError
    from rankax.retrieval.revisited import GroundTruthError
    from rankax.train import (
        CheckpointReadError,
        CheckpointSaveError,
        ConfigError,
        NonFiniteEvaluationError,
        NonFiniteLossError,
        loop,
    )

    # Errors whose message says what happened and what to do: the message, not a traceback.
    explained = (ConfigError, CheckpointReadError, CheckpointSaveError, NonFiniteLossError,
                 NonFiniteEvaluationError, FileNotFoundError, ImageReadError, GroundTruthError)

    allowed = [k.strip() for k in values.get("allow_config_change", "").split(",") if k.strip()]
    try:
        return loop.train_and_evaluate(config, values["workdir"], allow_config_change=allowed)
    except explained as err:  # a dataset not prepared is a FileNotFoundError
        raise cli.CliError(str(err), err) from None
    except ValueError as err:  # a config value the program checked: the message names the key
        if not str(err).startswith("config."):
            raise
        raise cli.CliError(str(err), err) from None


if __name__ == "__main__":
    cli.run(main)
