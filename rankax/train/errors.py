"""Exceptions of the training loop, each naming the step and path it concerns.

Kept free of JAX imports so ``rankax.train`` can export them cheaply.
"""

from __future__ import annotations

from typing import Any


class NonFiniteLossError(FloatingPointError):
    """A training step produced a non-finite loss, gradient or embedding.

    Raised by the loop (``config.on_nonfinite="raise"``, or after
    ``config.max_consecutive_nonfinite`` skipped steps in ``"skip"`` mode). The update of the
    failing step was not applied.

    Attributes:
      step: the number of the step whose update was non-finite, 1-based as checkpoints, history
        and the progress bar count (the ``state.step`` it would have made).
      indices: ``[B]`` dataset indices of that step's batch (``sampler.indices(step - 1)``: the
        samplers number their batches from 0).
      terms: name -> value of what the step computed (loss, its terms, gradient norm ...);
        the non-finite ones are listed in the message.
      last_checkpoint: the newest intact checkpoint step on disk (None: none yet).
      report_path: the JSON-lines file with the full record (all indices, labels, terms).
      state: the in-memory train state after the failure (raise mode: the state *before*
        ``step``, bit for bit), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        step: int,
        indices: Any,
        terms: dict[str, float],
        last_checkpoint: int | None,
        report_path: str | None,
        state: Any = None,
    ):
        super().__init__(message)
        self.step = step
        self.indices = indices
        self.terms = terms
        self.last_checkpoint = last_checkpoint
        self.report_path = report_path
        self.state = state


class NonFiniteEvaluationError(FloatingPointError):
    """The model's test embeddings are NaN or inf at ``step``: the run diverged (with
    ``config.on_nonfinite="skip"`` the steps that were skipped left the parameters finite but
    the model useless). The original error is chained (``__cause__``)."""

    def __init__(self, message: str, *, step: int):
        super().__init__(message)
        self.step = step


class CheckpointSaveError(OSError):
    """Writing checkpoint ``step`` into ``directory`` failed (disk full, I/O error ...).

    The partial output was removed and no older checkpoint was deleted; ``previous`` is the
    newest intact step (None: none). The original exception is chained (``__cause__``).
    """

    def __init__(
        self, message: str, *, step: int, directory: str, previous: int | None, errno: int | None = None
    ):
        if errno is None:
            super().__init__(message)
        else:  # keeps ``err.errno`` (e.g. ``errno.ENOSPC``) for callers that branch on it
            super().__init__(errno, message)
        self.message = message
        self.step = step
        self.directory = directory
        self.previous = previous

    def __str__(self) -> str:
        return self.message


class CheckpointReadError(OSError):
    """Checkpoint ``step`` at ``path`` cannot be read (truncated, corrupted, or written for
    another model/config). The original exception is chained (``__cause__``)."""

    def __init__(self, message: str, *, step: int, path: str):
        super().__init__(message)
        self.message = message
        self.step = step
        self.path = path

    def __str__(self) -> str:
        return self.message


class ConfigError(ValueError):
    """A config key holds a value this run cannot use (names the key and the fix)."""


class WorkdirConfigMismatch(ConfigError):
    """The workdir holds a run started with another config (``<workdir>/config.json``).

    Attributes:
      workdir: the directory.
      differences: ``{key: (recorded value, value now)}`` of the refused keys.
    """

    def __init__(self, message: str, *, workdir: str, differences: dict[str, tuple]):
        super().__init__(message)
        self.workdir = workdir
        self.differences = differences
