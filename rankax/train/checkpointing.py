"""Orbax checkpoints of the train state, keeping the last ``k`` and the best one.

Layout: ``<dir>/<step>/{state,history}``. ``state`` is the pytree (step, params, batch stats,
optimizer state, RNG, cross-batch memory); ``history`` the logged curve so plots survive a resume. Saving is
synchronous: when ``save`` returns, the step is on disk, so an interrupted run loses at most
the steps since the last checkpoint. A checkpoint that cannot be read (partial write,
corruption) is reported and the previous good one is used.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

_POLICIES = ocp.checkpoint_managers


def _saved_fields(state: Any) -> dict[str, Any]:
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "rng": state.rng,
        "memory": state.memory,
    }


class Checkpointer:
    """Saves/restores a ``TrainState``.

    Args:
      directory: where step folders go (created).
      config: reads ``keep_checkpoints`` (last k kept) and ``best_metric`` (a key of the
        evaluation dict, higher is better; the best checkpoint is kept too).
    """

    def __init__(self, directory: str, config: ml_collections.ConfigDict):
        self.directory = os.path.abspath(directory)
        best_metric = config.get("best_metric", "map@r")
        self.best_metric = best_metric
        policy = _POLICIES.AnyPreservationPolicy(
            policies=[
                _POLICIES.LatestN(n=int(config.get("keep_checkpoints", 3))),
                _POLICIES.BestN(
                    get_metric_fn=lambda m: m[best_metric],
                    reverse=True,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=False, create=True
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def has(self, step: int) -> bool:
        return step in self._mngr.all_steps()

    def save(
        self, state: Any, history: list[dict[str, Any]], metrics: dict[str, float] | None = None
    ) -> None:
        step = int(state.step)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_saved_fields(state)), history=ocp.args.JsonSave(history)
        )
        self._mngr.save(step, args=args, metrics=metrics, force=True)
        self._mngr.wait_until_finished()

    def restore_latest(self, state: Any) -> tuple[Any, list[dict[str, Any]]]:
        """``(state, history)`` from the newest readable checkpoint, or the inputs if none."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _saved_fields(state))
        for step in sorted(self._mngr.all_steps(), reverse=True):
            try:
                restored = self._mngr.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()
                    ),
                )
            except Exception as err:  # noqa: BLE001 - any read failure means "not usable"
                self._quarantine(step, err)
                continue
            fields = restored["state"]
            if int(np.asarray(fields["step"])) != step:
                print(f"WARNING: checkpoint {step} holds step {int(fields['step'])}; skipping it")
                continue
            print(f"Resuming from checkpoint step {step} in {self.directory}")
            return state.replace(**fields), list(restored["history"] or [])
        return state, []

    def _quarantine(self, step: int, err: Exception) -> None:
        """Moves an unreadable step to ``<directory>.corrupt/<step>`` (kept for inspection, out
        of the way of the step that will be written again)."""
        aside = os.path.join(self.directory + ".corrupt", str(step))
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.rmtree(aside, ignore_errors=True)
        shutil.move(os.path.join(self.directory, str(step)), aside)
        self._mngr.reload()
        logging.warning("checkpoint %s/%d is unreadable: %s", self.directory, step, err)
        print(
            f"WARNING: checkpoint step {step} in {self.directory} is unreadable "
            f"({type(err).__name__}); moved to {aside}, falling back to the previous one"
        )

    def close(self) -> None:
        self._mngr.close()
