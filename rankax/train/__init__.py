"""The training system: ``train_lib.train_and_evaluate(config, workdir)``.

The loop's exceptions are exported here: :class:`NonFiniteLossError`,
:class:`CheckpointSaveError`, :class:`CheckpointReadError` (``docs/training.md``, Faults).
"""

from rankax.train.errors import CheckpointReadError, CheckpointSaveError, NonFiniteLossError

__all__ = ["CheckpointReadError", "CheckpointSaveError", "NonFiniteLossError"]
