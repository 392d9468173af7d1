"""Input checking, positive-capacity handling and reduction shared by list-level functions.

Every list-level loss and metric of rankax has the signature

    fn(scores, labels, *, where=None, reduce_fn=jnp.mean, max_positives=None, **hparams)

with lists on the last axis. This module holds the parts of that contract that are the same
for all of them, so that a loss module contains only its formula.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

from rankax import _renames, ranking

Array = jax.Array
ReduceFn = Callable[..., Array] | None

# A kernel maps (scores, labels, where, positives) of lists [..., N] to per-list values [...].
Kernel = Callable[[Array, Array, Array, ranking.Positives], Array]


@contextlib.contextmanager
def setting(var: contextvars.ContextVar, value: Any) -> Iterator[None]:
    """Trace-time context: ``var`` holds ``value`` inside (the flags below, ``rankax.debug``)."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


# Set (at trace time) by callers that have already checked that no list has more positives
# than ``max_positives`` -- ``rankax.batch_loss`` dispatches on the true count itself. Inside,
# ``apply_kernel`` does not build its ``N``-slot fallback branch: XLA sizes a ``lax.cond`` for
# its larger branch, so the unused fallback would cost ``O(N^2)`` memory per list.
_CAPACITY_CHECKED = contextvars.ContextVar("rankax_capacity_checked", default=False)

# Set (at trace time) by callers that guard non-finite inputs themselves -- ``rankax.
# batch_loss`` checks the embeddings once, O(B * D), instead of every list, O(B * N) -- so that
# ``validated`` skips its per-list NaN propagation.
_FINITE_CHECKED = contextvars.ContextVar("rankax_finite_checked", default=False)


# Set (at trace time) by ``rankax.debug.checks``: value checks of traced arrays become
# ``checkify`` checks instead of being skipped.
_VALUE_CHECKS = contextvars.ContextVar("rankax_value_checks", default=False)


def capacity_checked() -> contextlib.AbstractContextManager[None]:
    """Trace-time context: the caller guarantees ``max_positives`` is never exceeded."""
    return setting(_CAPACITY_CHECKED, True)


def finite_checked() -> contextlib.AbstractContextManager[None]:
    """Trace-time context: the caller makes non-finite inputs give NaN values and gradients."""
    return setting(_FINITE_CHECKED, True)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _unsharded(x: Array) -> Array:
    """``x`` replicated if its type is sharded over explicit mesh axes (indexing a single entry
    of a sharded dimension is not defined there); unchanged otherwise."""
    sharding = jax.typeof(x).sharding
    spec = getattr(sharding, "spec", None)
    if spec is not None and any(axis is not None for axis in spec):
        return jax.sharding.reshard(x, sharding.update(spec=jax.sharding.PartitionSpec()))
    return x


def value_checks_apply(*arrays: Any) -> bool:
    """Whether :func:`check_values` would check arrays computed from ``arrays`` (all concrete,
    or checks on): lets callers skip building the check in a ``jit`` trace."""
    return _VALUE_CHECKS.get() or all(_is_concrete(a) for a in arrays if a is not None)


def check_values(wrong: ArrayLike, what: str, values: ArrayLike, name: str) -> None:
    """The value check ``not any(wrong)`` of every rankax function, in two modes.

    Concrete arrays (eager calls): ``ValueError`` now. Traced arrays (inside ``jit``/``grad``):
    a ``checkify`` check when :mod:`rankax.debug` checks are on, else nothing (the NaN guards
    keep the result honest). Either way the message is ``"<function>: <what>: name[i, j] =
    value (first of n entries)"``, naming the first offending entry of ``values``.
    """
    wrong = jnp.asarray(wrong, bool)
    values = jnp.asarray(values)
    if wrong.ndim == 0:
        wrong, values = wrong[None], values[None]
    traced = not _is_concrete(wrong)
    if (traced and not _VALUE_CHECKS.get()) or (not traced and not bool(jnp.any(wrong))):
        return
    wrong, values = _unsharded(wrong), _unsharded(values.astype(jnp.float32))
    flat = jnp.argmax(wrong.reshape(-1))
    axes = {f"i{d}": i.astype(jnp.int32) for d, i in enumerate(jnp.unravel_index(flat, wrong.shape))}
    fields = {"value": values.reshape(-1)[flat], "count": jnp.sum(wrong), **axes}
    index = ", ".join(f"{{{key}}}" for key in axes)
    message = f"{error_prefix()}{what}: {name}[{index}] = {{value}} (first of {{count}} entries)"
    if traced:
        checkify.check(~jnp.any(wrong), message, **fields)
    else:
        raise ValueError(message.format(**{k: np.asarray(v).item() for k, v in fields.items()}))


def check_finite(x: ArrayLike, name: str, *, where: ArrayLike | None = None) -> None:
    """:func:`check_values` for NaN/inf in ``x`` (at ``where``, broadcast against ``x``)."""
    if not value_checks_apply(x, where):
        return
    x = jnp.asarray(x)
    bad = ~jnp.isfinite(x)
    if where is not None:
        bad = bad & jnp.asarray(where, bool)
    check_values(bad, f"{name} has a non-finite value", x, name)


# The public function being called ("smooth_ap_loss", "batch_loss(supap_loss)", ...), set by
# ``rankax.losses._base.validated`` and the metrics so that every error names it.
_CALLER = contextvars.ContextVar("rankax_caller", default="")


def calling(name: str) -> contextlib.AbstractContextManager[None]:
    """Trace-time context naming the public function in error messages (outermost wins)."""
    return setting(_CALLER, _CALLER.get() or name)


def caller() -> str:
    """The name of the public function being called, or ``""``."""
    return _CALLER.get()


def error_prefix() -> str:
    name = _CALLER.get()
    return f"{name}: " if name else ""


def check_lists(
    scores: ArrayLike,
    labels: ArrayLike,
    where: ArrayLike | None,
    *,
    graded: bool = False,
) -> tuple[Array, Array, Array]:
    """Validates and normalises the three list arrays.

    Scores are computed in float32 at least (bfloat16/float16 inputs are upcast, so sums of
    many smooth steps keep their precision) and set to 0 at invalid (``where=False``)
    positions, so padding may hold anything, NaN included; labels become float32 relevances;
    ``where`` becomes boolean (all True when None).

    Checks happen in three tiers (``docs/behaviour.md``): shapes, dtypes and ranks always, at
    trace time; values (NaN/inf scores at valid positions, negative/NaN labels, labels other
    than 0/1 where ``graded=False``) through :func:`check_values`: when the arrays are
    concrete (eager calls), and inside ``jit`` when :mod:`rankax.debug` checks are enabled.

    Raises:
      TypeError: ``scores`` is not a floating array (integer scores included: ranks of
        integers are tied everywhere and have no gradient; cast them), labels are not
        real/boolean, or ``where`` is not boolean.
      ValueError: ``scores`` is a scalar; ``labels``/``where`` do not have the shape of
        ``scores``; concrete scores contain NaN/inf at valid positions; concrete labels are
        negative or NaN, or not 0/1 for a binary (``graded=False``) function.
    """
    prefix = error_prefix()
    scores_arr = jnp.asarray(scores)
    if not jnp.issubdtype(scores_arr.dtype, jnp.floating):
        raise TypeError(
            f"{prefix}scores must be a floating-point array (float32/bfloat16/float16/float64), got "
            f"dtype {scores_arr.dtype}; cast integer scores with .astype(jnp.float32)"
        )
    if scores_arr.ndim == 0:
        raise ValueError(f"{prefix}scores must have at least one axis (the list axis [..., N]), got a scalar")
    if scores_arr.shape[-1] == 0:
        raise ValueError(
            f"{prefix}scores must have at least one item on the list axis, got shape {scores_arr.shape}"
        )
    scores_arr = scores_arr.astype(jnp.promote_types(scores_arr.dtype, jnp.float32))
    labels_arr = jnp.asarray(labels)
    if labels_arr.shape != scores_arr.shape:
        raise ValueError(
            f"{prefix}labels must have the shape of scores {scores_arr.shape}, got {labels_arr.shape}"
        )
    if not (
        labels_arr.dtype == jnp.bool_
        or jnp.issubdtype(labels_arr.dtype, jnp.integer)
        or jnp.issubdtype(labels_arr.dtype, jnp.floating)
    ):
        raise TypeError(
            f"{prefix}labels must be a boolean, integer or floating array, got dtype {labels_arr.dtype}"
        )
    if labels_arr.dtype == jnp.bool_ or not jnp.issubdtype(labels_arr.dtype, jnp.floating):
        labels_arr = labels_arr.astype(jnp.float32)
    labels_arr = labels_arr.astype(jnp.promote_types(labels_arr.dtype, jnp.float32))
    if where is None:
        where_arr = jnp.ones(scores_arr.shape, dtype=bool)
    else:
        where_arr = jnp.asarray(where)
        if where_arr.shape != scores_arr.shape:
            raise ValueError(
                f"{prefix}where must have the shape of scores {scores_arr.shape}, got {where_arr.shape}"
            )
        if where_arr.dtype != jnp.bool_:
            raise TypeError(f"{prefix}where must be a boolean mask, got dtype {where_arr.dtype}")
    check_finite(scores_arr, "scores", where=where_arr)
    if value_checks_apply(labels_arr, where_arr):
        _check_labels(labels_arr, where_arr, graded)
    scores_arr = jnp.where(where_arr, scores_arr, 0.0)
    return scores_arr, labels_arr, where_arr


def _check_labels(labels: Array, where: Array, graded: bool) -> None:
    lab = jnp.where(where, labels, 0.0)
    if graded:
        wrong, what = jnp.isnan(lab) | (lab < 0), "labels must be graded relevance >= 0 at valid positions"
    else:
        wrong = ~((lab == 0) | (lab == 1))
        what = (
            "labels must be binary labels (0 or 1) at valid positions (graded relevance needs a "
            "graded loss: hap_loss, sup_ndcg_loss)"
        )
    check_values(wrong, what, lab, "labels")


def nonfinite_lists(scores: ArrayLike, where: ArrayLike | None) -> Array:
    """``[...]`` True for the lists (rows) with a NaN/inf entry at a valid position (``where``
    broadcasts against ``scores``: ``mask[:, None]`` selects whole rows)."""
    scores = jnp.asarray(scores)
    bad = ~jnp.isfinite(scores)
    if where is not None:
        bad = bad & jnp.asarray(where, bool)
    return jnp.any(bad, axis=-1)


@jax.custom_vjp
def _poison(x: Array, bad: Array) -> Array:
    return jnp.where(bad, jnp.nan, x)


def _poison_fwd(x, bad):
    return _poison(x, bad), bad


def _poison_bwd(bad, g):
    return jnp.where(bad, jnp.nan, g), None


_poison.defvjp(_poison_fwd, _poison_bwd)


def _nonfinite_or_none(scores: Any, where: Any) -> Array | None:
    """:func:`nonfinite_lists` for well-formed floating inputs, else ``None``."""
    s = jnp.asarray(scores)
    if not jnp.issubdtype(s.dtype, jnp.floating) or s.ndim == 0:
        return None
    if where is not None and (jnp.shape(where) != s.shape or jnp.asarray(where).dtype != jnp.bool_):
        return None
    return nonfinite_lists(s, where)


@jax.custom_vjp
def _poison_cotangent(scores: Array, bad_lists: Array) -> Array:
    """Identity whose cotangent is NaN on the lists marked bad (for custom-gradient losses,
    e.g. BlackBox AP, whose backward pass would turn a NaN cotangent into finite numbers)."""
    return scores


def _poison_cotangent_fwd(scores, bad_lists):
    return scores, bad_lists


def _poison_cotangent_bwd(bad_lists, g):
    return jnp.where(bad_lists[..., None], jnp.nan, g), None


_poison_cotangent.defvjp(_poison_cotangent_fwd, _poison_cotangent_bwd)


def propagate_nonfinite(out: Array, bad_lists: Array) -> Array:
    """Makes ``out`` (and everything differentiated through it) NaN where an input was not finite.

    ``out`` is either per list (the shape of ``bad_lists``) or reduced (any other shape: it
    becomes NaN if any list is bad). The cotangent is NaN there too, so ``jax.grad`` of a loss
    of non-finite scores is non-finite instead of a silently finite, wrong number.
    """
    out = jnp.asarray(out)
    bad = bad_lists if out.shape == bad_lists.shape else jnp.broadcast_to(jnp.any(bad_lists), out.shape)
    if not jnp.issubdtype(out.dtype, jnp.floating):
        return out
    return _poison(out, bad)


# Ranges of the hyperparameters, by argument name (the same name means the same thing in
# every loss). "positive": finite and > 0; "nonnegative": finite and >= 0; "finite": any
# finite real. Temperatures and exponents must be > 0 (0 divides, < 0 flips the ranking);
# ROADMAP's slope rho and width delta, loss weights and MS's epsilon >= 0 (0 switches a
# branch off); offsets and margins are any finite number.
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


def check_number(name: str, value: Any, kind: str) -> None:
    """Validates a scalar hyperparameter; traced values pass (their values are unknown)."""
    if isinstance(value, jax.core.Tracer):
        if jnp.ndim(value) != 0:
            raise ValueError(f"{error_prefix()}{name} must be a scalar, got shape {jnp.shape(value)}")
        return
    ok_type = isinstance(value, int | float | np.number) or (
        isinstance(value, np.ndarray | jax.Array) and np.ndim(value) == 0
    )
    if isinstance(value, bool) or not ok_type:
        raise TypeError(f"{error_prefix()}{name} must be {_RANGE_TEXT[kind]}, got {value!r}")
    v = float(value)
    ok = np.isfinite(v) and (v > 0 if kind == "positive" else v >= 0 if kind == "nonnegative" else True)
    if not ok:
        raise ValueError(f"{error_prefix()}{name} must be {_RANGE_TEXT[kind]}, got {value!r}")


def check_num_bins(value: Any) -> None:
    """``num_bins`` of the histogram losses: an int >= 2 (one bin has no ranking)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 2:
        raise ValueError(f"{error_prefix()}num_bins must be an int >= 2, got {value!r}")


_LIST_ARGS = ("scores", "labels", "where", "reduce_fn", "max_positives")


def check_hparams(fn_name: str, hparams: dict[str, Any]) -> None:
    """Checks every hyperparameter named in :data:`HPARAM_RANGES` (and ``num_bins``)."""
    with calling(fn_name):
        for name, value in hparams.items():
            if name in HPARAM_RANGES:
                check_number(name, value, HPARAM_RANGES[name])
            elif name == "num_bins":
                check_num_bins(value)


def _bind(fn_name: str, signature: inspect.Signature, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as err:
        known = [p for p in signature.parameters if p not in ("scores", "labels")]
        unknown = [k for k in kwargs if k not in signature.parameters]
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"{fn_name}() got an unknown argument {unknown[0]!r}{hint} (known: {', '.join(known)})"
            ) from None
        raise TypeError(f"{fn_name}(): {err}") from None
    return bound


def validated(
    fn: Callable[..., Array] | None = None, *, graded: bool = False
) -> Callable[..., Array]:
    """Decorator of the public list losses and metrics: names errors, checks hyperparameters, guards NaN.

    At trace time: an unknown keyword raises ``TypeError`` with the closest known name;
    every hyperparameter in :data:`HPARAM_RANGES` is range-checked (``ValueError`` naming it,
    the expected range and the value); array errors raised inside are prefixed with the
    function's name. At run time: a list with a NaN/inf score at a valid position gives a NaN
    value and NaN gradients (:func:`rankax.propagate_nonfinite`), never a finite
    number; with :mod:`rankax.debug` checks on, the first such score and a non-finite result
    from finite inputs are reported instead.

    ``graded=True`` marks functions that read graded relevance (``fn.graded``; the others
    require binary 0/1 labels, and ``rankax.batch_loss`` binarises graded relevance, ``> 0``,
    before calling them). Use as ``@validated`` or ``@validated(graded=True)``.
    """
    if fn is None:
        return functools.partial(validated, graded=graded)  # type: ignore[return-value]
    signature = inspect.signature(fn)
    fn_name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Array:
        kwargs = _renames.rename_kwargs(fn_name, signature.parameters, kwargs)  # deprecated names
        bound = _bind(fn_name, signature, args, kwargs)
        hparams = {k: v for k, v in bound.arguments.items() if k not in _LIST_ARGS}
        check_hparams(fn_name, hparams)
        with calling(fn_name):
            bad = None if _FINITE_CHECKED.get() else _nonfinite_or_none(
                bound.arguments["scores"], bound.arguments.get("where")
            )
            if bad is None:  # the caller guards NaN itself, or malformed arrays: fn raises
                return fn(*args, **kwargs)
            bound.arguments["scores"] = _poison_cotangent(jnp.asarray(bound.arguments["scores"]), bad)
            out = fn(*bound.args, **bound.kwargs)
            if _VALUE_CHECKS.get():
                from_finite = ~jnp.broadcast_to(jnp.any(bad), jnp.shape(out))
                wrong = ~jnp.isfinite(out) & from_finite
                check_values(wrong, "non-finite result from finite scores", out, "result")
            return propagate_nonfinite(out, bad)

    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    wrapper.graded = graded  # type: ignore[attr-defined]
    return wrapper


def check_capacity(max_positives: int | None) -> None:
    bad_type = isinstance(max_positives, bool) or not isinstance(max_positives, int | np.integer)
    if max_positives is not None and (bad_type or max_positives < 1):
        raise ValueError(
            f"{error_prefix()}max_positives must be a positive int or None, got {max_positives!r}"
        )


def has_positive(labels: Array, where: Array) -> Array:
    """``[...]`` True for lists with at least one valid item of relevance > 0."""
    return jnp.any((labels > 0) & where, axis=-1)


#: Lists up to this length use ``N`` positive slots directly (``O(N^2)`` per list is then
#: cheaper than compiling a capacity ladder).
DENSE_LIST_LENGTH = 64
#: First rungs of the capacity ladder when ``max_positives`` is not given: 3 and 4 positives,
#: a P x K batch with the papers' K = 4 without and with the query in its own list; then x4.
DEFAULT_CAPACITY = 4


def default_ladder(num_items: int) -> tuple[int, ...]:
    """The capacities tried without a ``max_positives`` hint: ``3, 4, 16, 64, ..., N``."""
    return tuple(sorted({min(3, num_items), *capacity_ladder(DEFAULT_CAPACITY, num_items)}))


@jax.custom_batching.custom_vmap
def most_positives(is_positive: Array) -> Array:
    """Largest number of positives of any list of ``is_positive [..., N]``, a scalar.

    Under ``jax.vmap`` the maximum is taken over the whole batch of lists and stays
    *unbatched*, so that a capacity chosen from it (``lax.switch``) remains one branch taken
    for all lists instead of becoming a select that runs every branch.
    """
    return jnp.max(jnp.sum(is_positive, axis=-1), initial=0)


@most_positives.def_vmap
def _most_positives_vmap(axis_size, in_batched, is_positive):
    del axis_size, in_batched
    return most_positives(is_positive), False


def capacity_ladder(first: int, num_items: int, growth: int = 4) -> tuple[int, ...]:
    """The static positive capacities ``first, first*growth, ...`` up to ``num_items``."""
    first = max(1, min(int(first), num_items))
    ladder = [first]
    while ladder[-1] < num_items:
        ladder.append(min(ladder[-1] * growth, num_items))
    return tuple(ladder)


def apply_kernel(
    kernel: Kernel,
    scores: Array,
    labels: Array,
    where: Array,
    max_positives: int | None,
) -> Array:
    """Runs ``kernel`` on the positives gathered to a static number of slots, exactly.

    The slots come from a ladder of capacities ``C, 4C, 16C, ..., N`` (``C = max_positives``;
    without it :func:`default_ladder`, ``3, 4, 16, ...``; lists of at most :data:`DENSE_LIST_LENGTH` items use
    ``N`` slots directly): the call takes (``lax.switch``) the smallest capacity that holds the
    largest positive count of all its lists (:func:`most_positives`, also across ``jax.vmap``),
    so the cost is ``O(C * N)`` per list for P x K lists and positives are never dropped -- a
    capacity that is too small costs time, never correctness. Each rung runs under
    ``jax.checkpoint``, so the rungs not taken keep no residuals for the backward pass.
    """
    check_capacity(max_positives)
    n = scores.shape[-1]

    def run(capacity: int, scores: Array, labels: Array, where: Array) -> Array:
        positives, _ = ranking.gather_positives(scores, labels, where, capacity)
        return kernel(scores, labels, where, positives)

    if _CAPACITY_CHECKED.get() and max_positives is not None:
        return run(min(max_positives, n), scores, labels, where)
    if max_positives is None and n <= DENSE_LIST_LENGTH:
        return run(n, scores, labels, where)
    capacities = default_ladder(n) if max_positives is None else capacity_ladder(max_positives, n)
    if len(capacities) == 1:
        return run(capacities[0], scores, labels, where)
    most = most_positives(jax.lax.stop_gradient((labels > 0) & where))
    level = jnp.minimum(jnp.searchsorted(jnp.asarray(capacities), most), len(capacities) - 1)
    branches = [jax.checkpoint(functools.partial(run, c), prevent_cse=False) for c in capacities]
    return jax.lax.switch(level, branches, scores, labels, where)


def reduce_lists(values: Array, valid: Array, reduce_fn: ReduceFn) -> Array:
    """Reduces per-list values over the valid lists.

    ``reduce_fn=jnp.mean`` divides by the number of valid lists (0 when there is none);
    ``None`` returns the per-list values with 0 for invalid lists; any other callable is
    called as ``reduce_fn(values, where=valid)`` (``jnp.sum`` works).
    """
    if reduce_fn is not None and not callable(reduce_fn):
        raise TypeError(
            f"{error_prefix()}reduce_fn must be jnp.mean, jnp.sum, None or a callable, got {reduce_fn!r}"
        )
    values = jnp.where(valid, values, 0.0)
    if reduce_fn is None:
        return values
    if reduce_fn is jnp.mean:
        return jnp.sum(values) / jnp.maximum(jnp.sum(valid), 1)
    return reduce_fn(values, where=valid)


def safe_divide(num: Array, den: Array) -> Array:
    """``num / den`` with 0 where ``den == 0`` and a gradient that stays finite there."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def kernel_lists(
    kernel: Kernel,
    scores: ArrayLike,
    labels: ArrayLike,
    where: ArrayLike | None,
    reduce_fn: ReduceFn,
    max_positives: int | None,
    *,
    graded: bool = False,
) -> Array:
    """Checks inputs, runs ``kernel`` on gathered positives (exactly), reduces over lists.

    The whole body of a gathered-positives metric or loss (``rankax.metrics``,
    ``rankax.losses._base.list_loss``).
    """
    scores, labels, where = check_lists(scores, labels, where, graded=graded)
    values = apply_kernel(kernel, scores, labels, where, max_positives)
    return reduce_lists(values, has_positive(labels, where), reduce_fn)


def ndcg_gains(relevance: Array, top: Array) -> Array:
    """NDCG's gain ``2^rel - 1`` divided by ``2^top`` (``top``: the list's largest relevance).

    NDCG is a ratio of two sums of gains, so the common factor cancels; scaled, the gains stay
    finite for any relevance (``2^rel`` overflows float32 from ``rel = 128``) and are exactly 0
    for ``rel = 0``.
    """
    return jnp.exp2(relevance - top) - jnp.exp2(-top)


def num_positives(labels: Array, where: Array) -> Array:
    """``[...]`` float number of valid items with relevance > 0."""
    return jnp.sum((labels > 0) & where, axis=-1).astype(jnp.float32)


def ap_from_ranks(rank: Array, rank_pos: Array, positives: ranking.Positives) -> Array:
    """Mean of ``rank_pos / rank`` over the filled slots of each list (``[..., C] -> [...]``).

    With exact ranks this is average precision; empty slots neither count nor divide (the
    guard keeps gradients finite there)."""
    ratio = jnp.where(positives.mask, rank_pos / jnp.where(positives.mask, rank, 1.0), 0.0)
    return safe_divide(jnp.sum(ratio, axis=-1), jnp.sum(positives.mask, axis=-1))


# ----------------------------------------------------------------------------- batch protocol
#
# ``rankax.batch_loss`` (and its sharded/XBM versions) never sees a per-query value directly:
# it asks the loss for additive per-list *statistics*, sums them over query blocks (and
# devices), and turns the totals into the loss. For an ordinary list loss the statistics are
# ``{"sum": value of lists with a positive, "count": 1 for such lists}`` and the loss is
# sum / count. A loss pooled over the pairs of the batch (ROADMAP's calibration term) instead
# defines two attributes on the public function:
#
#   loss_fn.list_statistics(scores, labels, where, *, max_positives, **hparams) -> dict[str, [...]]
#   loss_fn.from_statistics(totals: dict[str, scalar], **hparams) -> scalar
#
# so that the batch value is pooled over all pairs exactly as the paper's code does.


def list_statistics(
    loss_fn: Callable[..., Array],
    scores: Array,
    labels: Array,
    where: Array,
    *,
    max_positives: int | None = None,
    **hparams: Any,
) -> dict[str, Array]:
    """Additive per-list statistics of ``loss_fn`` (``[...]`` arrays); see the note above."""
    name, params = getattr(loss_fn, "__name__", "loss_fn"), inspect.signature(loss_fn).parameters
    hparams = _renames.rename_kwargs(name, params, hparams)  # deprecated spellings
    custom = getattr(loss_fn, "list_statistics", None)
    if custom is not None:
        return custom(scores, labels, where, max_positives=max_positives, **hparams)
    values = loss_fn(scores, labels, where=where, reduce_fn=None, max_positives=max_positives, **hparams)
    valid = has_positive(labels, where)
    return {"sum": jnp.where(valid, values, 0.0), "count": valid.astype(jnp.float32)}


def from_statistics(loss_fn: Callable[..., Array], totals: dict[str, Array], **hparams: Any) -> Array:
    """The batch loss from statistics summed over all lists."""
    name, params = getattr(loss_fn, "__name__", "loss_fn"), inspect.signature(loss_fn).parameters
    hparams = _renames.rename_kwargs(name, params, hparams, warn=False)  # warned in list_statistics
    custom = getattr(loss_fn, "from_statistics", None)
    if custom is not None:
        return custom(totals, **hparams)
    return totals["sum"] / jnp.maximum(totals["count"], 1.0)
