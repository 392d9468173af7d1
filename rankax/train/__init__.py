"""The training system: ``train_lib.train_and_evaluate(config, workdir)``.

The loop's exceptions are exported here: :class:`NonFiniteLossError`,
:class:`CheckpointSaveError`, :class:`CheckpointReadError` (``docs/training.md``, Faults), and
the config errors a CLI reports in one line: :class:`ConfigError` and its subclass
:class:`WorkdirConfigMismatch` (the workdir records another run's config).
"""

from rankax.train.errors import (
    CheckpointReadError,
    CheckpointSaveError,
    ConfigError,
    NonFiniteLossError,
    WorkdirConfigMismatch,
)

__all__ = [
    "CheckpointReadError",
    "CheckpointSaveError",
    "ConfigError",
    "NonFiniteLossError",
    "WorkdirConfigMismatch",
]
