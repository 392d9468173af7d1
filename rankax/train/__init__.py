"""The training system: ``loop.train_and_evaluate(config, workdir)``.

Modules, in the order a reader meets them: ``optim`` (optimizers, schedules), ``state``
(train state, model, mesh), ``losses`` (the objective), ``step`` (the pure train/eval steps),
``guards`` (non-finite steps), ``evaluators``, ``writers``, ``loop``; ``train_lib`` re-exports
their names for older imports.

The loop's exceptions are exported here: :class:`NonFiniteLossError`,
:class:`NonFiniteEvaluationError`, :class:`CheckpointSaveError`, :class:`CheckpointReadError`
(``docs/training.md``, Faults), and the config errors a CLI reports in one line:
:class:`ConfigError` and its subclass :class:`WorkdirConfigMismatch` (the workdir records
another run's config).
"""

from rankax.train.errors import (
    CheckpointReadError,
    CheckpointSaveError,
    ConfigError,
    NonFiniteEvaluationError,
    NonFiniteLossError,
    WorkdirConfigMismatch,
)

__all__ = [
    "CheckpointReadError",
    "CheckpointSaveError",
    "ConfigError",
    "NonFiniteEvaluationError",
    "NonFiniteLossError",
    "WorkdirConfigMismatch",
]
