"""Argument checks of the list functions and the wording of their errors.

Every check takes ``caller``, the public function being called (``"supap_loss"``,
``"batch_loss(supap_loss)"``, ...), and every message starts with it. Checks come in three
tiers (``docs/behaviour.md``): shapes, dtypes and hyperparameters always, at trace time;
*values* of arrays when they are concrete (eager calls), and inside ``jit`` only while the
user has switched on :mod:`rankax.debug` checks.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

Array = jax.Array
ReduceFn = Callable[..., Array] | None

# The one piece of trace-time state: the user's explicit opt-in to value checks inside ``jit``
# (``rankax.debug.checks`` / ``checked`` / ``checkify``). Nothing else changes what a rankax
# function does depending on who calls it.
_VALUE_CHECKS = contextvars.ContextVar("rankax_value_checks", default=False)


def value_checks_enabled() -> bool:
    """Whether :mod:`rankax.debug` checks are on for functions traced now."""
    return _VALUE_CHECKS.get()


@contextlib.contextmanager
def value_checks(on: bool) -> Iterator[None]:
    """Trace-time switch of :mod:`rankax.debug` (value checks of traced arrays)."""
    token = _VALUE_CHECKS.set(bool(on))
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def prefix(caller: str) -> str:
    """``"caller: "`` (or ``""``), the start of every error message."""
    return f"{caller}: " if caller else ""


def replicated(x: Array) -> Array:
    """``x`` resharded to replicated if its type is sharded over explicit mesh axes; else ``x``.

    Indexing single entries (error reports) and gathering blocks of queries with dynamic
    indices (``rankax.batch``) are not typed for explicitly sharded dimensions. Arrays without
    explicit sharding (``jit`` + ``NamedSharding``, inside ``shard_map``) are returned as is.
    """
    sharding = jax.typeof(x).sharding
    spec = getattr(sharding, "spec", None)
    if spec is not None and any(axis is not None for axis in spec):
        return jax.sharding.reshard(x, sharding.update(spec=jax.sharding.PartitionSpec()))
    return x


# ----------------------------------------------------------------------------- value checks


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def value_checks_apply(*arrays: Any) -> bool:
    """Whether :func:`check_values` would check arrays computed from ``arrays`` (all concrete,
    or checks on): lets callers skip building the check in a ``jit`` trace."""
    return _VALUE_CHECKS.get() or all(_is_concrete(a) for a in arrays if a is not None)


def check_values(wrong: ArrayLike, what: str, values: ArrayLike, name: str, *, caller: str = "") -> None:
    """The value check ``not any(wrong)`` of every rankax function, in two modes.

    Concrete arrays (eager calls): ``ValueError`` now. Traced arrays (inside ``jit``/``grad``):
    a ``checkify`` check when :mod:`rankax.debug` checks are on, else nothing (the NaN guards
    keep the result honest). Either way the message is ``"<caller>: <what>: name[i, j] =
    value (first of n entries)"``, naming the first offending entry of ``values``.
    """
    wrong = jnp.asarray(wrong, bool)
    values = jnp.asarray(values)
    if wrong.ndim == 0:
        wrong, values = wrong[None], values[None]
    traced = not _is_concrete(wrong)
    if (traced and not _VALUE_CHECKS.get()) or (not traced and not bool(jnp.any(wrong))):
        return
    wrong, values = replicated(wrong), replicated(values.astype(jnp.float32))
    flat = jnp.argmax(wrong.reshape(-1))
    axes = {f"i{d}": i.astype(jnp.int32) for d, i in enumerate(jnp.unravel_index(flat, wrong.shape))}
    fields = {"value": values.reshape(-1)[flat], "count": jnp.sum(wrong), **axes}
    index = ", ".join(f"{{{key}}}" for key in axes)
    message = f"{prefix(caller)}{what}: {name}[{index}] = {{value}} (first of {{count}} entries)"
    if traced:
        checkify.check(~jnp.any(wrong), message, **fields)
    else:
        raise ValueError(message.format(**{k: np.asarray(v).item() for k, v in fields.items()}))


def check_finite(x: ArrayLike, name: str, *, where: ArrayLike | None = None, caller: str = "") -> None:
    """:func:`check_values` for NaN/inf in ``x`` (at ``where``, broadcast against ``x``)."""
    if not value_checks_apply(x, where):
        return
    x = jnp.asarray(x)
    bad = ~jnp.isfinite(x)
    if where is not None:
        bad = bad & jnp.asarray(where, bool)
    check_values(bad, f"{name} has a non-finite value", x, name, caller=caller)


def as_array(x: Any, name: str, p: str = "", what: str = "a numeric array") -> Array:
    """``jnp.asarray(x)``, or a TypeError naming ``name`` (``p``: the caller's prefix) where
    ``x`` is None or not of a JAX type (strings, Python objects); JAX arrays as they are."""
    if isinstance(x, jax.Array):
        return x
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError):
        kind = f"dtype {x.dtype}" if hasattr(x, "dtype") else type(x).__name__
        raise TypeError(f"{p}{name} must be {what}, got {kind}") from None


def int_ids(x: ArrayLike, name: str, *, caller: str = "") -> Array:
    """``x`` (class ids, label paths) as a JAX array, refusing integers that JAX would wrap:
    without ``jax_enable_x64``, an int64 (uint64) array becomes int32 (uint32) *modulo*
    ``2**32`` -- ids ``2**32`` and ``0`` would become one class. JAX arrays are taken as they are
    (their conversion already happened)."""
    if isinstance(x, jax.Array):
        return x
    a = np.asarray(x)
    if a.dtype.kind not in "biufc":  # None, strings, objects
        return as_array(x, name, prefix(caller))
    if wraps_on_device(a):
        raise ValueError(
            f"{prefix(caller)}{name}: ids {a.min()}..{a.max()} do not fit "
            f"{jax.dtypes.canonicalize_dtype(a.dtype)}, and JAX would wrap them (jax_enable_x64 is "
            f"off): renumber them (np.unique({name}, return_inverse=True)[1], per column for label "
            "paths) or enable x64"
        )
    return jnp.asarray(a)


def wraps_on_device(a: np.ndarray) -> bool:
    """Whether integers ``a`` leave the range of the dtype JAX would hold them in (int32 /
    uint32 without ``jax_enable_x64``), so that converting them would wrap some."""
    target = jax.dtypes.canonicalize_dtype(a.dtype)
    if a.dtype.kind not in "iu" or target == a.dtype or not a.size:
        return False
    info = np.iinfo(target)
    return bool(a.min() < info.min or a.max() > info.max)


# ----------------------------------------------------------------------------- list arrays


def _check_scores(scores: ArrayLike, p: str) -> Array:
    scores = as_array(scores, "scores", p)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        raise TypeError(
            f"{p}scores must be a floating-point array (float32/bfloat16/float16/float64), got "
            f"dtype {scores.dtype}; cast integer or boolean scores with .astype(jnp.float32)"
        )
    if scores.ndim == 0:
        raise ValueError(f"{p}scores must have at least one axis (the list axis [..., N]), got a scalar")
    if scores.shape[-1] == 0:
        raise ValueError(f"{p}scores must have at least one item on the list axis, got shape {scores.shape}")
    return scores.astype(jnp.promote_types(scores.dtype, jnp.float32))


def _check_labels_array(labels: ArrayLike, shape: tuple[int, ...], p: str) -> Array:
    labels = as_array(labels, "labels", p, "a boolean, integer or floating array")  # None, str, objects
    if labels.shape != shape:
        hint = ""
        if labels.shape == (*shape, 1):
            hint = " (a trailing axis of 1: pass labels[..., 0])"
        raise ValueError(f"{p}labels must have the shape of scores {shape}, got {labels.shape}{hint}")
    if not (
        labels.dtype == jnp.bool_
        or jnp.issubdtype(labels.dtype, jnp.integer)
        or jnp.issubdtype(labels.dtype, jnp.floating)
    ):
        raise TypeError(f"{p}labels must be a boolean, integer or floating array, got dtype {labels.dtype}")
    if labels.dtype == jnp.bool_ or not jnp.issubdtype(labels.dtype, jnp.floating):
        labels = labels.astype(jnp.float32)
    return labels.astype(jnp.promote_types(labels.dtype, jnp.float32))


def _check_where(where: ArrayLike | None, shape: tuple[int, ...], p: str) -> Array:
    if where is None:
        return jnp.ones(shape, dtype=bool)
    where = as_array(where, "where", p)
    if where.shape != shape:
        raise ValueError(f"{p}where must have the shape of scores {shape}, got {where.shape}")
    if where.dtype != jnp.bool_:
        raise TypeError(f"{p}where must be a boolean mask, got dtype {where.dtype}")
    return where


def _check_label_values(labels: Array, where: Array, graded: bool, caller: str) -> None:
    lab = jnp.where(where, labels, 0.0)
    if graded:
        wrong = ~jnp.isfinite(lab) | (lab < 0)
        what = "labels must be finite graded relevance >= 0 at valid positions"
    else:
        wrong = ~((lab == 0) | (lab == 1))
        what = (
            "labels must be binary labels (0 or 1) at valid positions (graded relevance needs a "
            "graded loss: hap_loss, sup_ndcg_loss)"
        )
    check_values(wrong, what, lab, "labels", caller=caller)


def check_lists(
    scores: ArrayLike,
    labels: ArrayLike,
    where: ArrayLike | None,
    *,
    graded: bool = False,
    caller: str = "",
) -> tuple[Array, Array, Array]:
    """Validates and normalises the three list arrays.

    Scores are computed in float32 at least (bfloat16/float16 inputs are upcast, so sums of
    many smooth steps keep their precision) and set to 0 at invalid (``where=False``)
    positions, so padding may hold anything, NaN included; labels become relevances in the
    scores' dtype (float32, float64 for float64 scores);
    ``where`` becomes boolean (all True when None); labels that are not a finite value > 0, and
    every label at an invalid position, become 0. Values (NaN/inf scores at valid positions,
    negative/NaN labels, labels other than 0/1 where ``graded=False``) go through
    :func:`check_values`.

    Raises:
      TypeError: ``scores`` is not a floating array (integer scores included: ranks of
        integers are tied everywhere and have no gradient; cast them), labels are not
        real/boolean, or ``where`` is not boolean.
      ValueError: ``scores`` is a scalar; ``labels``/``where`` do not have the shape of
        ``scores``; concrete scores contain NaN/inf at valid positions; concrete labels are
        negative or NaN, or not 0/1 for a binary (``graded=False``) function.
    """
    p = prefix(caller)
    scores_arr = _check_scores(scores, p)
    labels_arr = _check_labels_array(labels, scores_arr.shape, p)
    where_arr = _check_where(where, scores_arr.shape, p)
    check_finite(scores_arr, "scores", where=where_arr, caller=caller)
    if value_checks_apply(labels_arr, where_arr):
        _check_label_values(labels_arr, where_arr, graded, caller)
    # Unchecked (traced) labels: a negative, NaN or infinite relevance is "not relevant", for
    # the graded sums (H-AP's total relevance, NDCG's gains) as for the binary `labels > 0`.
    labels_arr = jnp.where(where_arr & (labels_arr > 0) & jnp.isfinite(labels_arr), labels_arr, 0.0)
    # In the scores' dtype: float64 labels (numpy's default, under x64) beside float32 scores
    # made some losses' values float64.
    labels_arr = labels_arr.astype(scores_arr.dtype)
    scores_arr = jnp.where(where_arr, scores_arr, 0.0)
    return scores_arr, labels_arr, where_arr


# ----------------------------------------------------------------------------- options


# Ranges of the hyperparameters, by argument name (the same name means the same thing in
# every loss). "positive": finite and > 0; "nonnegative": finite and >= 0; "finite": any
# finite real. Temperatures and exponents must be > 0 (0 divides, < 0 flips the ranking);
# ROADMAP's slope rho and width delta, loss weights and MS's epsilon >= 0 (0 switches a
# branch off); offsets and margins are any finite number.
#: Hyperparameters that may also be ``None`` or one value per cut-off ``ks`` (the recall losses).
PER_CUTOFF_HPARAMS = frozenset({"k_temperature"})
HPARAM_RANGES: dict[str, str] = {
    "temperature": "positive",
    "tau": "positive",
    "tau1": "positive",
    "tau2": "positive",
    "k_temperature": "positive",
    "rho": "nonnegative",
    "delta": "nonnegative",
    "lambda_": "positive",
    "alpha": "positive",
    "beta": "positive",
    "b": "positive",
    "supap_weight": "nonnegative",
    "calibration_weight": "nonnegative",
    "epsilon": "nonnegative",
    "leak": "nonnegative",
    "gamma": "finite",
    "start": "finite",
    "offset": "finite",
    "pos_margin": "finite",
    "neg_margin": "finite",
    "base": "finite",
    "margin": "finite",
}
_RANGE_TEXT = {
    "positive": "a finite number > 0",
    "nonnegative": "a finite number >= 0",
    "finite": "a finite number",
}


def is_prng_key(x: Any) -> bool:
    """A typed PRNG key (``jax.random.key``) or a raw ``uint32[2]`` one (``jax.random.PRNGKey``)."""
    if not isinstance(x, jax.Array):
        return False
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key) or (x.dtype == jnp.uint32 and x.shape == (2,))


def list_keys(key: jax.Array, ids: Any) -> jax.Array:
    """Typed PRNG keys, one per list: ``fold_in(key, r)`` for each list id ``r`` in ``ids`` (a
    raw ``uint32[2]`` key is wrapped first). A loss drawing per-item noise gives list ``r`` of its
    ``[..., N]`` scores (``r`` the flat index over the leading axes) this key, and
    ``rankax.batch_loss`` gives the list of query ``r`` of the batch the same one, so the noise
    does not depend on how lists are split into blocks, devices or calls."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    ids = jnp.asarray(ids, jnp.uint32)
    return jax.vmap(jax.random.fold_in, (None, 0))(key, ids.reshape(-1)).reshape(ids.shape)


def is_int_at_least(value: Any, low: int = 1) -> bool:
    """An int (Python or numpy, not bool) >= ``low``: a size, a count, a step."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= low


def not_static(name: str, kind: str, caller: str = "") -> TypeError:
    """The error for a traced value where a static one is needed (it sets shapes or the program)."""
    return TypeError(f"{prefix(caller)}{name} must be a static Python {kind} (it sets the computation's "
                     "shapes or program), not a traced value: close over it or mark it static in jit")


def check_int(name: str, value: Any, low: int = 1, *, optional: bool = False, caller: str = "") -> int | None:
    """``value`` as an int >= ``low`` (``None`` passes where ``optional``), or a ValueError
    ``"<caller>: <name> must be [None or ]an int >= <low>, got <value>"``."""
    if value is None and optional:
        return None
    if isinstance(value, jax.core.Tracer):
        raise not_static(name, "int", caller)
    if not is_int_at_least(value, low):
        expected = f"{'None or ' * optional}an int >= {low}"
        raise ValueError(f"{prefix(caller)}{name} must be {expected}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, kind: str, *, caller: str = "") -> None:
    """Validates a scalar hyperparameter; traced values pass (their values are unknown)."""
    p = prefix(caller)
    if isinstance(value, jax.core.Tracer):
        if jnp.ndim(value) != 0:
            raise ValueError(f"{p}{name} must be a scalar, got shape {jnp.shape(value)}")
        return
    ok_type = isinstance(value, int | float | np.number) or (
        isinstance(value, np.ndarray | jax.Array) and np.ndim(value) == 0
    )
    if ok_type and np.iscomplexobj(value):  # float() would drop the imaginary part (or raise)
        ok_type = False
    if isinstance(value, bool) or not ok_type:
        raise TypeError(f"{p}{name} must be {_RANGE_TEXT[kind]}, got {value!r}")
    v = float(value)
    ok = np.isfinite(v) and (v > 0 if kind == "positive" else v >= 0 if kind == "nonnegative" else True)
    if not ok:
        raise ValueError(f"{p}{name} must be {_RANGE_TEXT[kind]}, got {value!r}")
    if kind == "positive" and v > LARGEST_POSITIVE:
        raise ValueError(f"{p}{name} must be at most {LARGEST_POSITIVE:g} (float32 flushes its reciprocal "
                         f"to zero, and a left-out item's -inf divided by it is NaN), got {value!r}")


#: The largest ``"positive"`` hyperparameter (a temperature, a scale): its float32 reciprocal is
#: still a normal number, 1 / 1.18e-38 = 8.5e37. Above it, XLA's division by it multiplies by a
#: reciprocal flushed to zero, and the ``-inf`` of a left-out item gives NaN.
LARGEST_POSITIVE = 1e37


def check_flag(name: str, value: Any, *, caller: str = "") -> None:
    """A Python or numpy bool (a string such as "no" would read as True)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{prefix(caller)}{name} must be True or False, got {value!r}")


def check_num_bins(value: Any, *, caller: str = "") -> None:
    """``num_bins`` of the histogram losses: an int >= 2 (one bin has no ranking)."""
    if isinstance(value, jax.core.Tracer):
        raise not_static("num_bins", "int", caller)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 2:
        raise ValueError(f"{prefix(caller)}num_bins must be an int >= 2, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple, *, caller: str = "") -> None:
    if value not in choices:
        raise ValueError(f"{prefix(caller)}{name} must be one of {choices}, got {value!r}")


def is_sequence(value: Any) -> bool:
    """A list, tuple or 1-D numpy or JAX array (traced included): one value per cut-off
    (``k_temperature``; ``ks`` must be static, :func:`check_ks`)."""
    return isinstance(value, list | tuple) or (isinstance(value, np.ndarray | jax.Array) and value.ndim == 1)


def check_hparams(hparams: dict[str, Any], *, caller: str = "") -> None:
    """Checks every hyperparameter named in :data:`HPARAM_RANGES` (and ``num_bins``)."""
    for name, value in hparams.items():
        if name in PER_CUTOFF_HPARAMS and (value is None or is_sequence(value)):
            for entry in () if value is None else value:  # None: the loss's own per-cut-off default
                check_number(name, entry, HPARAM_RANGES[name], caller=caller)
        elif name in HPARAM_RANGES:
            check_number(name, value, HPARAM_RANGES[name], caller=caller)
        elif name == "num_bins":
            check_num_bins(value, caller=caller)


def check_capacity(max_positives: Any, *, caller: str = "") -> int | None:
    """``max_positives``: None or an int >= 1 (Python, numpy, or a concrete 0-d JAX integer),
    returned as a Python int."""
    if isinstance(max_positives, jax.core.Tracer):
        raise not_static("max_positives", "int", caller)
    if isinstance(max_positives, jax.Array) and max_positives.ndim == 0 and jnp.issubdtype(
            max_positives.dtype, jnp.integer):
        max_positives = int(max_positives)
    bad_type = isinstance(max_positives, bool) or not isinstance(max_positives, int | np.integer)
    if max_positives is not None and (bad_type or max_positives < 1):
        raise ValueError(
            f"{prefix(caller)}max_positives must be a positive int or None, got {max_positives!r}"
        )
    return None if max_positives is None else int(max_positives)


def check_reduce_fn(reduce_fn: Any, *, caller: str = "") -> None:
    if reduce_fn is not None and not callable(reduce_fn):
        raise TypeError(
            f"{prefix(caller)}reduce_fn must be jnp.mean, jnp.sum, None or a callable "
            f"reduce_fn(values, where=has_positive), got {reduce_fn!r}"
        )


def _is_cutoff(k: Any, integer: bool) -> bool:
    kinds = int | np.integer if integer else int | float | np.integer | np.floating
    return not isinstance(k, bool) and isinstance(k, kinds) and k > 0


def check_k(k: Any, *, allow_none: bool = False, caller: str = "") -> None:
    """A rank cut-off ``k``: a positive int (or None where ``allow_none``)."""
    if k is None and allow_none:
        return
    if isinstance(k, jax.core.Tracer):
        raise not_static("k", "int", caller)
    if not _is_cutoff(k, integer=True):
        expected = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"{prefix(caller)}k must be {expected}, got {k!r}")


def check_ks(ks: Sequence[Any], *, integer: bool = True, caller: str = "", name: str = "ks") -> tuple:
    """A non-empty sequence of positive cut-offs, as a tuple (ints where ``integer``; the
    smooth recall losses also accept real cut-offs); errors name the argument ``name``."""
    p = prefix(caller)
    listed = isinstance(ks, Sequence) and not isinstance(ks, str)
    if isinstance(ks, jax.core.Tracer) or (listed and any(isinstance(k, jax.core.Tracer) for k in ks)):
        raise TypeError(f"{p}{name} must be static cut-offs, a tuple of Python numbers such as (1, 4), "
                        "not a traced array (they set the shapes of the computation)")
    if isinstance(ks, np.ndarray | jax.Array):
        ks = np.asarray(ks).tolist() if np.ndim(ks) == 1 else ks
    if isinstance(ks, str) or not isinstance(ks, Sequence):  # a 0-d or n-d array among them
        raise TypeError(
            f"{p}{name} must be a sequence of cut-offs such as (1, 4) (one cut-off k: (k,)), got {ks!r}"
        )
    ks = tuple(ks)
    if not ks or not all(_is_cutoff(k, integer) for k in ks):
        kind = "ints" if integer else "cut-offs"
        raise ValueError(f"{p}{name} must be a non-empty sequence of positive {kind}, got {ks!r}")
    return tuple(int(k) for k in ks) if integer else ks


def bind(caller: str, signature: inspect.Signature, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    """``signature.bind`` whose error names the function and suggests the closest argument."""
    try:
        return signature.bind(*args, **kwargs)
    except TypeError as err:
        known = [p for p in signature.parameters if p not in ("scores", "labels")]
        unknown = [k for k in kwargs if k not in signature.parameters]
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"{caller}() got an unknown argument {unknown[0]!r}{hint} (known: {', '.join(known)})"
            ) from None
        raise TypeError(f"{caller}(): {err}") from None


def check_loss_fn(loss_fn: Any, caller: str, call: str) -> None:
    """A TypeError unless ``loss_fn`` is callable, naming what was passed by its type and shape
    (an array passed first by mistake printed all of its values) and the call's order
    ``call``."""
    if callable(loss_fn):
        return
    shape = getattr(loss_fn, "shape", None)
    got = type(loss_fn).__name__ + ("" if shape is None else f" of shape {tuple(shape)}")
    raise TypeError(
        f"{caller}: loss_fn must be a list loss such as rankax.supap_loss, got {got}; the call is {call}"
    )


def reject_torch(caller: str, **arrays: Any) -> None:
    """A TypeError naming the argument when one of ``arrays`` is a torch tensor: rankax
    computes in JAX, and no gradient flows back to torch (``batch_loss`` failed in JAX's
    argument handling with no fix, a tensor that requires grad failed in numpy, and the list
    losses converted the others silently)."""
    for name, x in arrays.items():
        if type(x).__module__.split(".")[0] == "torch":
            raise TypeError(
                f"{prefix(caller)}{name} is a torch.{type(x).__name__}: rankax computes in JAX; pass "
                f"jnp.asarray({name}.detach().cpu().numpy()) (no gradient flows back to torch)"
            )
