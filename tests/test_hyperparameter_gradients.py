"""Gradients with respect to the losses' hyperparameters (a learned temperature, a margin, ...):
every float hyperparameter of every list loss, traced and differentiated, against central
finite differences of the same loss in float64, for single lists, the list API and
``batch_loss`` (issue 16's custom gradients must not stop them)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rankax
from rankax import losses

# BlackBox AP's value is piecewise constant in its margin; its margin "gradient" is the
# blackbox surrogate, not a derivative finite differences could check (lambda_ is tested below).
SURROGATE_ONLY = {("blackbox_ap_loss", "margin"), ("blackbox_ap_loss", "lambda_")}
GRADED = {"hap_loss", "sup_ndcg_loss"}


def _float_hyperparameters(loss_fn):
    return {name: p.default for name, p in inspect.signature(loss_fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY and isinstance(p.default, float)
            and (loss_fn.__name__, name) not in SURROGATE_ONLY}


def _lists(graded: bool, n: int = 60):
    rng = np.random.default_rng(0)
    scores = rng.uniform(-0.6, 0.6, (3, n))
    labels = rng.integers(0, 4 if graded else 2, (3, n)).astype(np.float64)
    return jnp.asarray(scores), jnp.asarray(labels)


def _central_difference(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


def _check(value_fn, params):
    """jit(grad) of value_fn w.r.t. the dict params against central differences, one by one."""
    with jax.enable_x64(True):
        p64 = {k: jnp.float64(v) for k, v in params.items()}
        got = jax.jit(jax.grad(value_fn))(p64)
        value = jax.jit(value_fn)
        for name, x in params.items():
            h = 1e-6 * max(abs(x), 1e-2)
            want = _central_difference(lambda t, n=name: value({**p64, n: t}), jnp.float64(x), h)
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("loss_fn", [f for f in losses.LIST_LOSSES if _float_hyperparameters(f)],
                         ids=lambda f: f.__name__)
def test_float_hyperparameters_have_their_derivative(loss_fn):
    params = _float_hyperparameters(loss_fn)
    with jax.enable_x64(True):
        scores, labels = _lists(loss_fn.__name__ in GRADED)
    _check(lambda p: loss_fn(scores, labels, **p), params)


def test_h_rank_hyperparameters_have_their_derivative():
    """H-AP with HAPPIER's smoothed H-rank (``with_hrank=True``), where beta, gamma and leak
    enter the value (they do not without it)."""
    params = _float_hyperparameters(losses.hap_loss)
    with jax.enable_x64(True):
        scores, labels = _lists(graded=True)
    _check(lambda p: losses.hap_loss(scores, labels, with_hrank=True, **p), params)


def test_temperature_of_the_list_api_beyond_the_grouped_rungs():
    """The list API (jit(grad(mean(vmap(loss))))) on lists with more positives than the rungs
    kept as they are (64), so the grouped rung falls back to its checkpoint."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        scores = jnp.asarray(rng.uniform(-0.6, 0.6, (4, 300)))
        labels = jnp.asarray((rng.random((4, 300)) < 0.4).astype(np.float64))

    def value(p):
        per_list = jax.vmap(lambda s, y: losses.supap_loss(s, y, temperature=p["temperature"]))
        return jnp.mean(per_list(scores, labels))

    _check(value, {"temperature": 0.05})


@pytest.mark.parametrize("loss_fn", [losses.supap_loss, losses.smooth_ap_loss, losses.pnp_loss],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("max_positives", [None, 3])
def test_temperature_of_batch_loss_with_traced_labels(loss_fn, max_positives):
    """batch_loss under jit with traced labels (the capacity ladder, or the hint)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        e = rng.normal(size=(64, 8))
        e = jnp.asarray(e / np.linalg.norm(e, axis=1, keepdims=True))
        labels = jnp.asarray(np.repeat(np.arange(16), 4))

    def value(p):
        return rankax.batch_loss(loss_fn, e, labels, max_positives=max_positives, **p)

    _check(value, {"temperature": 0.05})


def test_blackbox_lambda_may_be_traced_and_has_no_gradient():
    """BlackBox AP's value does not depend on lambda_: a traced lambda_ gives the value and the
    score gradient of the same Python float, and a zero gradient of its own."""
    scores, labels = _lists(False)
    loss = lambda s, lam: losses.blackbox_ap_loss(s, labels, lambda_=lam)  # noqa: E731
    traced = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(scores, 4.0)
    value, d_scores = jax.value_and_grad(lambda s: loss(s, 4.0))(scores)
    np.testing.assert_allclose(traced[0], value, rtol=1e-6)
    np.testing.assert_allclose(traced[1][0], d_scores, rtol=1e-6, atol=1e-9)
    assert traced[1][1] == 0.0
