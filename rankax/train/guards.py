"""The loop's guard against non-finite steps (``config.on_nonfinite``, docs/training.md Faults)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rankax.train import checkpointing, distributed, errors, writers

NONFINITE_ACTIONS = ("raise", "skip")


def nonfinite_action(config: ml_collections.ConfigDict) -> str:
    """``config.on_nonfinite`` checked: ``"raise"`` (default) or ``"skip"``."""
    action = config.get("on_nonfinite", "raise")
    if action not in NONFINITE_ACTIONS:
        raise ValueError(f"config.on_nonfinite must be one of {NONFINITE_ACTIONS}, got {action!r}")
    return action


def max_consecutive_nonfinite(config: ml_collections.ConfigDict) -> int:
    """``config.max_consecutive_nonfinite`` (default 10) checked to be ``>= 1``."""
    n = int(config.get("max_consecutive_nonfinite", 10))
    if n < 1:
        raise ValueError(f"config.max_consecutive_nonfinite must be >= 1, got {n}")
    return n


class NonFiniteGuard:
    """Reads the finite flag of each step (one step late) and acts on ``config.on_nonfinite``.

    ``"raise"``: :class:`~rankax.train.NonFiniteLossError` at the first non-finite step, after
    diagnosing it from the (unchanged) pre-step state. ``"skip"``: the step was not applied;
    it is logged and counted, and more than ``config.max_consecutive_nonfinite`` in a row
    raise. Every event is appended to ``<workdir>/nonfinite_steps.jsonl``.

    ``train_step``: the :class:`~rankax.train.step.TrainStep` (its ``diagnose``); ``labels``:
    the training labels by dataset index; ``history``: the run's history so far (the skip
    count and the current run of non-finite steps survive a resume through it: in skip mode
    the loop logs both at every step it may checkpoint).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        train_step: Any,
        labels: np.ndarray,
        ckpt: checkpointing.Checkpointer,
        history: list[dict[str, Any]],
    ):
        self.action = nonfinite_action(config)
        self.max_consecutive = max_consecutive_nonfinite(config)
        self.report_path = os.path.join(os.path.abspath(workdir), "nonfinite_steps.jsonl")
        self.train_step, self.labels, self.ckpt = train_step, labels, ckpt
        logged = [h for h in history if "nonfinite_skipped" in h]
        self.skipped = int(logged[-1]["nonfinite_skipped"]) if logged else 0
        self.consecutive = int(logged[-1].get("nonfinite_consecutive", 0)) if logged else 0

    def check(self, step: int, idx: np.ndarray, images: np.ndarray, metrics: dict, state: Any) -> bool:
        """Acts on the finite flag of ``step`` (its number, 1-based: the ``state.step`` it makes;
        ``metrics`` of that step; ``state``: the
        current state, which in raise mode is still the one before ``step``). True when the
        step was finite (it trained); False when it was skipped; raises otherwise."""
        if bool(metrics["finite"]):
            self.consecutive = 0
            return True
        record = self._record(step, idx, images, metrics, state)
        if distributed.is_main():  # [multihost] one record per event
            with open(self.report_path, "a") as f:
                f.write(json.dumps(writers.jsonable(record)) + "\n")
        terms = record["terms"]
        summary = self._summary(
            step, idx, {k: v for k, v in terms.items() if not np.isfinite(v)}, terms, record
        )
        if self.action == "skip":
            self.skipped += 1
            self.consecutive += 1
            print(f"WARNING: skipped {summary}")
            if self.consecutive < self.max_consecutive:
                return False
            summary += f"; {self.consecutive} consecutive non-finite steps (config.max_consecutive_nonfinite)"
        self._raise(step, idx, summary, record, state)

    def _record(self, step: int, idx: np.ndarray, images: np.ndarray, metrics: dict, state: Any) -> dict:
        """The line of ``nonfinite_steps.jsonl`` for this step; in raise mode with every term
        recomputed from the pre-step ``state``."""
        pixels = distributed.host_rows(images)  # [multihost] every process's rows, gathered
        bad_inputs = idx[~np.isfinite(np.asarray(pixels).reshape(len(idx), -1)).all(axis=1)]
        record: dict[str, Any] = {
            "step": step,
            "action": self.action,
            "indices": idx,
            "labels": self.labels[idx],
            "nonfinite_inputs": bad_inputs,
            "last_checkpoint": self.ckpt.latest(),
        }
        if self.action == "raise":
            record.update(self._diagnosis(idx, images, state))
        else:
            record["terms"] = {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"])}
            if not bool(metrics["embeddings_finite"]):
                record["terms"]["embeddings"] = float("nan")
        return record

    def _diagnosis(self, idx: np.ndarray, images: np.ndarray, state: Any) -> dict[str, Any]:
        diag = self.train_step.diagnose(state, images, self.labels[idx])
        raw = {k: float(v) for k, v in diag["terms"].items()}
        order = ["loss", *sorted(set(raw) - {"loss", "grad_norm"}), "grad_norm"]
        out: dict[str, Any] = {
            "nonfinite_embeddings": idx[~diag["embeddings_finite"]],
            "nonfinite_grads": [k for k, ok in diag["grads_finite"].items() if not ok],
            "nonfinite_updates": [k for k, ok in diag["updated_finite"].items() if not ok],
        }
        if len(out["nonfinite_embeddings"]) == len(idx):  # the model, rather than this batch?
            leaves = [x for x in jax.tree.leaves(state.params) if jnp.issubdtype(x.dtype, jnp.inexact)]
            out["largest_parameter"] = max((float(jnp.max(jnp.abs(x))) for x in leaves), default=0.0)
        if "memory_active" in diag:
            out["memory_active"] = bool(diag["memory_active"])
        out["first_check"] = diag["first_check"]
        out["terms"] = {k: raw[k] for k in order}  # the objective first, the gradient last
        return out

    def _raise(self, step: int, idx: np.ndarray, summary: str, record: dict, state: Any) -> None:
        last = record["last_checkpoint"]
        intact = f"step {last} ({self.ckpt.step_path(last)})" if last is not None else "none yet"
        hint = (
            " If a few batches go non-finite, config.on_nonfinite='skip' skips them; if every step "
            "does (from the first one), look at the learning rate and the loss's hyperparameters."
            if self.action == "raise" else ""
        )
        raise errors.NonFiniteLossError(
            f"{summary}. Its update was not applied; newest intact checkpoint: {intact}.{hint}",
            step=step,
            indices=idx,
            terms=record["terms"],
            last_checkpoint=last,
            report_path=self.report_path,
            state=state,
        )

    def _summary(self, step: int, idx: np.ndarray, bad: dict, terms: dict, record: dict[str, Any]) -> str:
        fmt = lambda d: ", ".join(f"{k}={v:.6g}" for k, v in d.items())
        ok = {k: v for k, v in terms.items() if k not in bad}
        if bad:
            text = f"non-finite training step {step}: {fmt(bad)}" + (f" (finite: {fmt(ok)})" if ok else "")
        else:  # finite loss and gradient: a non-finite update, embedding or statistic (below)
            text = f"non-finite training step {step} (its loss terms are finite: {fmt(ok)})"
        shown = ", ".join(str(int(i)) for i in idx[:16]) + (", ..." if len(idx) > 16 else "")
        text += f"; batch dataset indices [{shown}] ({len(idx)}, all in {self.report_path})"
        every = "largest_parameter" in record and not len(record.get("nonfinite_inputs", ()))
        for key, what in (("nonfinite_inputs", "inputs"), ("nonfinite_embeddings", "embeddings")):
            if len(record.get(key, ())) and not (every and key == "nonfinite_embeddings"):
                text += f"; non-finite {what} at dataset indices {[int(i) for i in record[key]]}"
        if every:
            text += (f"; every embedding of the batch is non-finite, from finite inputs: the model rather "
                     f"than this batch (its largest parameter magnitude is "
                     f"{record['largest_parameter']:.3g}: a learning rate too large?)")
        if record.get("nonfinite_grads"):
            text += f"; non-finite gradients of {record['nonfinite_grads'][:8]}"
        elif record.get("nonfinite_updates"):  # finite gradients, an overflowing update
            text += (f"; finite gradients, but the update makes {record['nonfinite_updates'][:8]} "
                     "non-finite (the learning rate?)")
        if record.get("first_check"):
            text += f"; first failed check: {record['first_check'].splitlines()[0]}"
        return text
