"""Opt-in value checks inside ``jit``: non-finite scores, wrong labels, non-finite outputs.

Shapes, dtypes and hyperparameters of every public loss, metric and ``batch_loss`` are checked
at trace time, always. *Values* can only be checked when they are concrete; inside ``jit``
they are not, and by default rankax then only guarantees that a non-finite input never turns
into a finite, wrong number: the value and the gradient come out NaN
(``docs/behaviour.md``). To find *where* a NaN comes from, turn the checks on:

.. code-block:: python

    checked_step = rankax.debug.checked(train_step)   # jit + checkify, raises on the host
    state, metrics = checked_step(state, batch)
    # CheckError: batch_loss(supap_loss): embeddings has a non-finite value:
    # embeddings[3, 17] = nan (first of 128 entries)

Inside :func:`checked` or :func:`checkify` the rankax functions traced add
``jax.experimental.checkify`` checks that report the *first* offending entry with the name of
the function: non-finite scores/embeddings at valid positions, labels outside the function's
domain, and a non-finite result computed from finite inputs. The switch is read at trace time:
a function already compiled without checks keeps running without them, so wrap the Python
function (not an already-``jit``-ed one whose cache is warm). :func:`checks` is that switch
alone: what is traced under it needs ``checkify`` around it (``jax.jit`` or a ``batch_loss``
call under ``checks()`` without one raises JAX's "checkify.check which was not
functionalized"), so use :func:`checked` or :func:`checkify` unless you apply
``jax.experimental.checkify.checkify`` yourself.

Checks cost a reduction per checked array and a device-to-host error transfer per call; leave
them off for speed runs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import jax
from jax.experimental import checkify as _checkify

from rankax._core import validation

#: The exception :func:`checked` raises (``error.throw()`` of ``checkify``); a ``ValueError``.
CheckError = _checkify.JaxRuntimeError

#: The value checks of rankax (eager ``ValueError`` on concrete arrays, ``checkify`` checks on
#: traced ones while :func:`checks` is on), for use in your own code next to rankax's.
check_values = validation.check_values
check_finite = validation.check_finite

__all__ = ["CheckError", "check_finite", "check_values", "checked", "checkify", "checks", "enabled"]


def enabled() -> bool:
    """Whether functions traced now add value checks."""
    return validation.value_checks_enabled()


def checks(on: bool = True) -> contextlib.AbstractContextManager[None]:
    """Trace-time switch for the value checks: rankax functions traced under ``checks(True)``
    add ``checkify`` checks, so they must be traced inside ``checkify.checkify`` (which
    :func:`checkify` and :func:`checked` do for you); ``checks(False)`` turns them off inside
    those. See the module docstring."""
    return validation.value_checks(bool(on))


def checkify(fn: Callable[..., Any], errors: frozenset = _checkify.user_checks) -> Callable[..., Any]:
    """``jax.experimental.checkify.checkify`` of ``fn`` traced with rankax's checks enabled.

    Returns ``f(*args, **kwargs) -> (error, out)``; ``jax.jit`` it as you like and call
    ``error.throw()`` on the host. ``errors`` adds JAX's own checks, e.g.
    ``checkify.user_checks | checkify.float_checks`` to also locate the primitive that first
    produced a NaN (not through ``shard_map``: JAX 0.10's checkify cannot carry those
    across it; rankax's own checks of :mod:`rankax.sharding` run outside it and work).
    """

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        with checks(True):
            return fn(*args, **kwargs)

    return _checkify.checkify(traced, errors=errors)


def checked(
    fn: Callable[..., Any], errors: frozenset = _checkify.user_checks, **jit_kwargs: Any
) -> Callable[..., Any]:
    """``fn`` compiled with rankax's checks; raises the first failed check on the host.

    ``jit_kwargs`` go to ``jax.jit`` (e.g. ``static_argnames``). Raises :data:`CheckError`
    (checkify's ``JaxRuntimeError``, a ``ValueError``) whose message names the rankax function,
    the array, the index and the value of the first offending entry.
    """
    compiled = jax.jit(checkify(fn, errors), **jit_kwargs)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        err, out = compiled(*args, **kwargs)
        jax.device_get(err).throw()  # on the host: per-device error codes may be sharded
        return out

    return run
