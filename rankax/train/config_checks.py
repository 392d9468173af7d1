"""Values of the generic config keys, checked before a run touches its workdir.

Each key has a rule (an int with a lower bound, a finite float in a range, one of a few
names); a value that breaks it raises :class:`~rankax.train.ConfigError` naming the dotted key,
the rule and the value, so a typo such as ``--config.checkpoint_every=0`` or
``--config.optimizer.lr=-0.1`` stops the start instead of a traceback deep in the loop or a
run that trains nonsense. Keys that only some pieces read (dataset names, samplers, which
schedule) are checked by those pieces; the loss's hyperparameters by the loss's own ranges
(:func:`rankax.train.losses.check_loss_hparams`).
"""

from __future__ import annotations

import difflib
import itertools
import math
from typing import Any

import ml_collections

from rankax.train.errors import ConfigError

Config = ml_collections.ConfigDict

# dotted key -> smallest allowed int
INT_KEYS: dict[str, int] = {
    "seed": 0,
    "dataset.split_seed": 0,  # digits: numpy's default_rng takes no negative seed
    "num_steps": 0,  # 0 only with num_epochs > 0 (check_config)
    "num_epochs": 0,
    "log_every": 1,
    "eval_every": 0,  # 0: evaluate at the end only
    "checkpoint_every": 1,
    "keep_checkpoints": 1,
    "eval_batch_size": 1,
    "max_consecutive_nonfinite": 1,
    "num_devices": 0,  # 0: all visible devices
    "model.embedding_dim": 1,  # or None: no projection head (DeiT's class token)
    "batch.classes_per_batch": 2,  # one class: no negatives, the ranking losses are 0
    "batch.samples_per_class": 2,  # one sample: no positives
    "xbm.size": 0,
    "xbm.start_step": 0,
    "optimizer.warmup_steps": 0,
    "optimizer.decay_every_epochs": 0,
    "dataset.max_shift": 0,
}
OPTIONAL_INT_KEYS = frozenset({"model.embedding_dim"})
# dotted key -> (largest allowed int, why): jax.random.PRNGKey keeps only the low 32 bits of a
# seed, so seeds 2**32 apart would give the same run.
INT_MAXIMA: dict[str, tuple[int, str]] = {
    "seed": (2**32 - 1, "jax.random.PRNGKey keeps only its low 32 bits"),
}
# dotted key -> (lowest, highest, whether lowest itself is allowed); None allowed where marked.
FLOAT_KEYS: dict[str, tuple[float, float, bool]] = {
    "optimizer.lr": (0.0, math.inf, False),
    "optimizer.weight_decay": (0.0, math.inf, True),
    "optimizer.momentum": (0.0, 1.0, True),
    "optimizer.decay_factor": (0.0, math.inf, False),
    "optimizer.final_lr_ratio": (0.0, math.inf, True),
    "optimizer.grad_clip": (0.0, math.inf, True),
}
OPTIONAL_FLOAT_KEYS: dict[str, tuple[float, float, bool]] = {
    "optimizer.head_lr": (0.0, math.inf, False),
    "optimizer.head_weight_decay": (0.0, math.inf, True),
    "optimizer.final_lr": (0.0, math.inf, True),
}
# dotted key -> (what its entries are, whether an entry may repeat). "step" decays at each
# fraction of the run, and a fraction listed twice decays once (rankax.train.optim._step);
# "multistep" at the start of each epoch listed, and an epoch listed twice decays twice, as in
# torch's MultiStepLR (it counts its milestones): allowed.
SCHEDULE_POINTS: dict[str, tuple[str, bool]] = {
    "optimizer.decay_at": ("fraction", False),
    "optimizer.decay_epochs": ("epoch", True),
}


def _get(config: Config, key: str) -> tuple[bool, Any]:
    node: Any = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False, None
        node = node[part]
    return True, node


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _range_text(low: float, high: float, closed: bool) -> str:
    if low == -math.inf:
        return ""
    left = f">= {low:g}" if closed else f"> {low:g}"
    return left if high == math.inf else f"in {'[' if closed else '('}{low:g}, {high:g})"


def check_float(key: str, value: Any, low: float, high: float, closed: bool, optional: bool = False) -> None:
    """``value`` is a finite number in the range (``None`` too where ``optional``)."""
    if value is None and optional:
        return
    ok = _is_real(value) and math.isfinite(value) and value < high
    if not (ok and (value >= low if closed else value > low)):
        expected = f"{'None or ' * optional}a finite number {_range_text(low, high, closed)}".rstrip()
        raise ConfigError(f"config.{key} must be {expected}, got {value!r}")


def check_int(key: str, value: Any, low: int, optional: bool = False) -> None:
    """``value`` is an int >= ``low``, and <= its bound in :data:`INT_MAXIMA` if it has one
    (``None`` too where ``optional``)."""
    if value is None and optional:
        return
    high, why = INT_MAXIMA.get(key, (math.inf, ""))
    if _is_int(value) and low <= value <= high:
        return
    rule = f">= {low}" if high == math.inf else f"in [{low}, {high}] ({why})"
    raise ConfigError(f"config.{key} must be {'None or ' * optional}an int {rule}, got {value!r}")


def _is_fraction(value: Any) -> bool:
    return _is_real(value) and 0 < value <= 1


def _is_epoch(value: Any) -> bool:
    return _is_int(value) and value >= 1


def check_schedule_points(key: str, values: Any, kind: str, repeats: bool) -> None:
    """``values`` is a sorted sequence of fractions of the run in (0, 1] (``kind="fraction"``)
    or of epochs, ints >= 1 (``kind="epoch"``), with no entry twice unless ``repeats``."""
    fraction = kind == "fraction"
    valid = _is_fraction if fraction else _is_epoch
    if isinstance(values, tuple | list) and all(map(valid, values)):
        if all(a < b or (repeats and a == b) for a, b in itertools.pairwise(values)):
            return
    rule = "fractions of the run in (0, 1]" if fraction else "epochs, ints >= 1"
    order = "in order (one listed twice decays twice, as MultiStepLR)" if repeats else "increasing, each once"
    example = "(0.5, 0.75)" if fraction else "(30, 70)"
    raise ConfigError(f"config.{key} must be {rule}, {order}, e.g. {example}; got {values!r}")


def check_config(config: Config) -> None:
    """Checks :data:`INT_KEYS` (with :data:`INT_MAXIMA`), :data:`FLOAT_KEYS`,
    :data:`OPTIONAL_FLOAT_KEYS`, :data:`SCHEDULE_POINTS` (where the config has them), the run
    length, ``eval_ks``, ``eval_backend``, ``model.name``, ``loss.name``, and the weights and
    optimizers of ``loss.terms``."""
    for key, low in INT_KEYS.items():
        present, value = _get(config, key)
        if present:
            check_int(key, value, low, key in OPTIONAL_INT_KEYS)
    for keys, optional in ((FLOAT_KEYS, False), (OPTIONAL_FLOAT_KEYS, True)):
        for key, (low, high, closed) in keys.items():
            present, value = _get(config, key)
            if present:
                check_float(key, value, low, high, closed, optional)
    for key, (kind, repeats) in SCHEDULE_POINTS.items():
        present, value = _get(config, key)
        if present:
            check_schedule_points(key, value, kind, repeats)
    if config.get("num_steps", 1) == 0 and not config.get("num_epochs", 0):
        raise ConfigError("config.num_steps must be >= 1 (or set config.num_epochs), got 0")
    _check_evaluation(config)
    _check_loss_name(config)
    _check_terms(config)
    _check_choices(config)


def _check_choices(config: Config) -> None:
    """The keys that name one of a fixed set (model, dataset, sampler, dtype, precision, model
    selection, non-finite action): checked here too so that ``--print_config`` refuses what a
    run would (they were checked only once the data had loaded); a near miss is suggested."""
    from rankax.data import registry, samplers
    from rankax.models.factory import MODELS
    from rankax.train import guards, loop, state

    choices = {
        "model.name": tuple(sorted(MODELS)),
        "dataset.name": registry.DATASETS,
        "batch.sampler": samplers.SAMPLERS,
        "dtype": tuple(state.DTYPES),
        "precision": state.PRECISIONS,
        "model_selection": loop.MODEL_SELECTIONS,
        "on_nonfinite": guards.NONFINITE_ACTIONS,
    }
    for key, allowed in choices.items():
        present, value = _get(config, key)
        if present and value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config.{key} must be one of {list(allowed)}, got {value!r}{hint}")


def _check_evaluation(config: Config) -> None:
    from rankax._core import validation
    from rankax.retrieval.evaluation import BACKENDS

    if "eval_ks" in config:
        try:
            validation.check_ks(config.eval_ks, name="config.eval_ks")
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{err} (on the command line: --config.eval_ks=1,2,4,8)") from None
    if config.get("eval_backend", "exact") not in BACKENDS:
        raise ConfigError(f"config.eval_backend must be one of {BACKENDS}, got {config.eval_backend!r}")
    levels = config.get("eval_levels", ()) or ()
    if not config.get("eval_level_means", True) and not levels:
        raise ConfigError("config.eval_level_means=False keeps the plain metric names for the labels "
                          "as given beside the levels of config.eval_levels, which is empty: set "
                          "config.eval_levels (e.g. 0,1) or leave eval_level_means at True")
    if levels:
        if config.get("eval_protocol", "retrieval") != "retrieval":
            raise ConfigError(f"config.eval_levels applies to eval_protocol='retrieval', not "
                              f"{config.eval_protocol!r}; set config.eval_levels=()")
        from rankax.retrieval.evaluation import check_levels

        try:
            check_levels(levels, None, "config.eval_levels")
        except ValueError as err:
            raise ConfigError(f"{err} (on the command line: --config.eval_levels=0,1,2)") from None


def _check_loss_name(config: Config) -> None:
    from rankax.train import losses

    present, name = _get(config, "loss.name")
    if not present or name in losses.loss_names(losses.LIST_LOSS_ARG):
        return
    if name in losses.loss_names(losses.TERM_LOSS_ARG):
        raise ConfigError(
            f"config.loss.name={name!r} is a loss of the embeddings (with class proxies), not a list "
            "loss: add it as a term under config.loss.terms (docs/training.md); loss.name takes a list loss"
        )
    names = losses.loss_names(losses.LIST_LOSS_ARG)
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"config.loss.name must be one of {', '.join(names)}, got {name!r}{hint}")


def _check_terms(config: Config) -> None:
    present, terms = _get(config, "loss.terms")
    terms = terms.to_dict() if present and hasattr(terms, "to_dict") else {}
    for term, spec in terms.items():
        if not isinstance(spec, dict):
            continue  # the loss-term builder names a malformed term
        if "weight" in spec:
            check_float(f"loss.terms.{term}.weight", spec["weight"], 0.0, math.inf, True)
        for key, (low, high, closed) in (("lr", FLOAT_KEYS["optimizer.lr"]),
                                          ("weight_decay", FLOAT_KEYS["optimizer.weight_decay"])):
            if key in spec.get("optimizer", {}):
                check_float(f"loss.terms.{term}.optimizer.{key}", spec["optimizer"][key], low, high, closed)
        for key, (kind, repeats) in SCHEDULE_POINTS.items():
            leaf = key.removeprefix("optimizer.")
            if leaf in spec.get("optimizer", {}):
                check_schedule_points(f"loss.terms.{term}.{key}", spec["optimizer"][leaf], kind, repeats)
    present, weight = _get(config, "loss.weight")
    if present:  # any finite number: a negative weight maximises the loss (a test's worsening run)
        check_float("loss.weight", weight, -math.inf, math.inf, True)
    weighted = [t for t, s in terms.items() if isinstance(s, dict) and s.get("weight", 0) > 0]
    if present and weight == 0 and not weighted:
        raise ConfigError("config.loss.weight is 0 and no loss term has a weight > 0: nothing would train")
