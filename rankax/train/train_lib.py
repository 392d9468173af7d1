"""The names of the training program, gathered in one namespace (kept for existing imports).

The program lives in small modules; ``train_lib.<name>`` keeps working for each name below:

* :mod:`rankax.train.optim`: ``make_optimizer``, ``make_schedule`` (registries of schedules
  and optimizers);
* :mod:`rankax.train.state`: ``TrainState``, ``build_model``, ``create_train_state``,
  ``make_mesh``, ``local_devices``;
* :mod:`rankax.train.losses`: ``resolve_loss``, ``check_loss_hparams``,
  ``loss_term_weights``, ``training_labels``, ``make_objective``;
* :mod:`rankax.train.step`: the pure ``train_step``, ``diagnose_step``, ``eval_step`` and
  ``embed_fn``; ``make_train_step`` jits them over a mesh (``TrainStep``);
* :mod:`rankax.train.guards`: ``nonfinite_action``, ``NonFiniteGuard`` (``_NonFiniteGuard``);
* :mod:`rankax.train.evaluators`: ``EVALUATORS``, ``make_evaluator``, ``evaluation_keys``,
  ``embed_source``, ``evaluate_state``, ``raw_pixel_metrics``, ``restore_for_evaluation``;
* :mod:`rankax.train.writers`: JSON/TensorBoard output, the progress bar, the printed table;
* :mod:`rankax.train.loop`: ``train_and_evaluate`` and its phases.
"""

from rankax.train.evaluators import (
    EVALUATORS,
    embed_source,
    evaluate_state,
    evaluation_keys,
    make_evaluator,
    raw_pixel_metrics,
    restore_for_evaluation,
)
from rankax.train.guards import NONFINITE_ACTIONS, NonFiniteGuard, nonfinite_action
from rankax.train.loop import pretrained_warning, train_and_evaluate
from rankax.train.losses import (
    check_loss_hparams,
    loss_term_weights,
    make_objective,
    resolve_loss,
    training_labels,
)
from rankax.train.optim import make_optimizer, make_schedule
from rankax.train.state import TrainState, build_model, create_train_state, local_devices, make_mesh
from rankax.train.step import TrainStep, diagnose_step, embed_fn, eval_step, make_train_step, train_step

_NonFiniteGuard = NonFiniteGuard  # its former private name (tests build one directly)

__all__ = [
    "EVALUATORS",
    "NONFINITE_ACTIONS",
    "NonFiniteGuard",
    "TrainState",
    "TrainStep",
    "build_model",
    "check_loss_hparams",
    "create_train_state",
    "diagnose_step",
    "embed_fn",
    "embed_source",
    "eval_step",
    "evaluate_state",
    "evaluation_keys",
    "loss_term_weights",
    "make_evaluator",
    "local_devices",
    "make_mesh",
    "make_objective",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "nonfinite_action",
    "pretrained_warning",
    "raw_pixel_metrics",
    "resolve_loss",
    "restore_for_evaluation",
    "train_and_evaluate",
    "train_step",
    "training_labels",
]
