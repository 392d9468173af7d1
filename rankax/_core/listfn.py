"""The two faces of every list loss and metric: a checked public function, an unchecked kernel.

A list function module defines

* ``_xxx_values(lists, **hparams) -> [...]``, the *unchecked kernel*: per-list values of
  validated :class:`Lists` with every hyperparameter given (no defaults, no checks), and
* ``xxx(scores, labels, *, where, reduce_fn, max_positives, **hparams)``, the public function:
  ``lists = listfn.check(...)``, then the kernel, then ``lists.reduce``, decorated with
  :func:`list_function`, which checks the hyperparameters, guards non-finite scores and
  publishes the kernel as ``xxx.unchecked`` for the batch path (``rankax.batch``), which
  validates its lists once and calls the kernel directly.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rankax import _renames
from rankax._core import nonfinite, positives, validation

Array = jax.Array
ReduceFn = validation.ReduceFn

_LIST_ARGS = ("scores", "labels", "where", "reduce_fn", "max_positives")
_ARRAY_ARGS = ("scores", "labels", "where")  # a torch tensor among them is refused


class Lists(NamedTuple):
    """Validated lists ``[..., N]``: float32 scores (0 at invalid items), float32 relevance,
    boolean validity; how to size the positive slots; the caller named in errors."""

    scores: Array
    labels: Array
    where: Array
    max_positives: int | None = None
    #: ``max_positives`` is the exact largest positive count (the batch path computed it).
    exact_capacity: bool = False
    caller: str = ""
    #: The positives' positions when the caller knows them (``positives.slots_of``).
    slots: positives.Slots | None = None

    @property
    def has_positive(self) -> Array:
        return positives.has_positive(self.labels, self.where)

    def gather(self, kernel: positives.Kernel) -> Array:
        """``kernel`` run on each list's positives gathered to static slots (exactly)."""
        return positives.apply_kernel(
            kernel, self.scores, self.labels, self.where, self.max_positives,
            exact=self.exact_capacity, slots=self.slots,
        )

    def reduce(self, values: Array, reduce_fn: ReduceFn) -> Array:
        """Per-list ``values`` reduced over the lists that have a positive."""
        return positives.reduce_lists(values, self.has_positive, reduce_fn, caller=self.caller)


def check(
    scores: ArrayLike,
    labels: ArrayLike,
    where: ArrayLike | None,
    max_positives: int | None,
    *,
    graded: bool = False,
    exact_capacity: bool = False,
    caller: str,
    slots: positives.Slots | None = None,
) -> Lists:
    """:func:`rankax._core.validation.check_lists` and ``max_positives``, as :class:`Lists`."""
    max_positives = validation.check_capacity(max_positives, caller=caller)
    s, y, w = validation.check_lists(scores, labels, where, graded=graded, caller=caller)
    return Lists(s, y, w, max_positives, exact_capacity, caller, slots)


def _hparam_checker(
    fn_name: str,
    signature: inspect.Signature,
    choices: dict[str, tuple],
    extra: Callable[[dict[str, Any], str], None] | None,
) -> Callable[..., dict[str, Any]]:
    def hparams(given: dict[str, Any], *, caller: str, warn: bool = True) -> dict[str, Any]:
        """``given`` hyperparameters checked, completed with the defaults of ``fn_name``."""
        given = _renames.rename_kwargs(fn_name, signature.parameters, given, warn=warn)
        bound = validation.bind(fn_name, signature, (None, None), given)
        bound.apply_defaults()
        out = {k: v for k, v in bound.arguments.items() if k not in _LIST_ARGS}
        validation.check_hparams(out, caller=caller)
        for name, allowed in choices.items():
            validation.check_choice(name, out[name], allowed, caller=caller)
        if extra is not None:
            extra(out, caller)
        return out

    return hparams


def list_function(
    unchecked: Callable[..., Array] | None,
    *,
    graded: bool = False,
    choices: dict[str, tuple] | None = None,
    check_hparams: Callable[[dict[str, Any], str], None] | None = None,
    statistics: Callable[..., dict[str, Array]] | None = None,
    from_statistics: Callable[..., Array] | None = None,
    path_relevance: str = "pop",
) -> Callable[[Callable[..., Array]], Callable[..., Array]]:
    """Decorator of the public list losses and metrics: checks options, guards NaN.

    At trace time: an unknown keyword raises ``TypeError`` with the closest known name;
    every hyperparameter in :data:`~rankax._core.validation.HPARAM_RANGES` is range-checked,
    each of ``choices`` must be one of its values and ``check_hparams(hparams, caller)`` runs
    the rest. At run time: a list with a NaN/inf score at a valid position gives a NaN value
    and NaN gradients (:func:`~rankax._core.nonfinite.propagate_nonfinite`); with
    :mod:`rankax.debug` checks on, a non-finite result from finite inputs is reported.

    The decorated function gets the attributes the batch path reads: ``unchecked`` (the
    kernel), ``graded`` (whether it reads graded relevance; binary ones see ``labels > 0``),
    ``path_relevance`` (the :mod:`rankax.hierarchy` rule that turns label paths into its
    relevance when ``batch_loss`` is given none: ``"pop"``, or ``"count"`` for SupNDCG),
    ``hparams(given, caller=...)`` (checked hyperparameters with defaults) and, for losses
    pooled over the pairs of a batch, ``list_statistics(lists, **hparams)`` /
    ``from_statistics(totals, **hparams)`` (:mod:`rankax._core.stats`).
    """
    choices = choices or {}

    def decorate(fn: Callable[..., Array]) -> Callable[..., Array]:
        signature = inspect.signature(fn)
        fn_name = fn.__name__
        hparams = _hparam_checker(fn_name, signature, choices, check_hparams)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Array:
            kwargs = _renames.rename_kwargs(fn_name, signature.parameters, kwargs)  # deprecated names
            bound = validation.bind(fn_name, signature, args, kwargs)
            validation.reject_torch(fn_name, **{k: bound.arguments.get(k) for k in _ARRAY_ARGS})
            given = {k: v for k, v in bound.arguments.items() if k not in _LIST_ARGS}
            hparams(given, caller=fn_name, warn=False)
            bad = nonfinite.nonfinite_or_none(bound.arguments["scores"], bound.arguments.get("where"))
            if bad is None:  # malformed arrays: fn raises the shape or dtype error
                return fn(*args, **kwargs)
            scores = jnp.asarray(bound.arguments["scores"])
            bound.arguments["scores"] = nonfinite.poison_cotangent(scores, bad)
            out = fn(*bound.args, **bound.kwargs)
            if validation.value_checks_enabled():
                from_finite = ~jnp.broadcast_to(jnp.any(bad), jnp.shape(out))
                wrong = ~jnp.isfinite(out) & from_finite
                what = "non-finite result from finite scores"
                validation.check_values(wrong, what, out, "result", caller=fn_name)
            return nonfinite.propagate_nonfinite(out, bad)

        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        wrapper.unchecked = unchecked  # type: ignore[attr-defined]
        wrapper.graded = graded  # type: ignore[attr-defined]
        wrapper.path_relevance = path_relevance  # type: ignore[attr-defined]
        wrapper.hparams = hparams  # type: ignore[attr-defined]
        if statistics is not None:
            wrapper.list_statistics = statistics  # type: ignore[attr-defined]
            wrapper.from_statistics = from_statistics  # type: ignore[attr-defined]
        return wrapper

    return decorate
