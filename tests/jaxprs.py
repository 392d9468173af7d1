"""Walking a traced program: the equations of a jaxpr and of every program nested in it."""

from __future__ import annotations

from collections.abc import Iterator

import jax.extend


def nested(eqn) -> list:
    """The programs an equation holds (a jit's, a custom_vjp's, a scan's or cond's bodies)."""
    return list(jax.extend.core.jaxprs_in_params(eqn.params))


def equations(jaxpr) -> Iterator:
    """Every equation of ``jaxpr`` and, after each, those of the programs it holds (depth first)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in nested(eqn):
            yield from equations(sub)
