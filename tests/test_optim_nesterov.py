"""SGD with Nesterov momentum (``optimizer.nesterov``) against torch's update rule, written out.

``torch.optim.SGD(lr, momentum=m, weight_decay=wd, nesterov=True)``, per step:
``g = grad + wd p``; ``b = g`` on the first step, else ``b = m b + g``; ``p -= lr (g + m b)``
(without Nesterov: ``p -= lr b``). The reference below runs that on a quadratic in numpy.
"""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from rankax.train import optim

A = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 3.0]])  # loss 1/2 p^T A p


def _torch_sgd(p, steps, lr, m, wd, nesterov):
    p, b = p.copy(), None
    for _ in range(steps):
        g = A @ p + wd * p
        b = g.copy() if b is None else m * b + g
        p = p - lr * ((g + m * b) if nesterov else b)
    return p


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_matches_torch_rule(nesterov):
    opt = ml_collections.ConfigDict({"weight_decay": 1e-2, "momentum": 0.9, "nesterov": nesterov})
    tx = optim.OPTIMIZERS["sgd"](opt, optax.constant_schedule(0.05))
    p0 = np.array([1.0, -2.0, 0.5])
    p = jnp.asarray(p0)
    state = tx.init(p)
    for _ in range(5):
        grad = jnp.matmul(jnp.asarray(A), p, precision="highest")  # float32 (a GPU's default: TF32)
        updates, state = tx.update(grad, state, p)
        p = optax.apply_updates(p, updates)
    want = _torch_sgd(p0, 5, 0.05, 0.9, 1e-2, nesterov)
    np.testing.assert_allclose(np.asarray(p), want, rtol=1e-5, atol=1e-6)
    if nesterov:  # the two rules really differ here
        assert not np.allclose(want, _torch_sgd(p0, 5, 0.05, 0.9, 1e-2, False), atol=1e-3)


def test_term_optimizer_takes_nesterov():
    c = ml_collections.ConfigDict(
        {"loss": {"terms": {"t": {"optimizer": {"name": "sgd", "nesterov": True}}}}}
    )
    assert optim.term_section(c, "t").nesterov is True


def _torch_adam(p, steps, lr, wd, decoupled, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam (``decoupled=False``: ``g += wd p``) and AdamW (``p *= 1 - lr wd``
    before the step), per torch's documented update rule: ``m = b1 m + (1 - b1) g``,
    ``v = b2 v + (1 - b2) g^2``, ``p -= lr m_hat / (sqrt(v_hat) + eps)`` with bias corrections."""
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t in range(1, steps + 1):
        g = A @ p
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_and_adamw_weight_decay_match_torch_rules(name):
    """Adam adds the L2 penalty to the gradient (torch.optim.Adam), AdamW decays the weights
    apart from the moments (torch.optim.AdamW); the configs use both with a weight decay."""
    wd, lr = 0.1, 0.05
    tx = optim.OPTIMIZERS[name](ml_collections.ConfigDict({"weight_decay": wd}), optax.constant_schedule(lr))
    p0 = np.array([1.0, -2.0, 0.5])
    p = jnp.asarray(p0)
    state = tx.init(p)
    for _ in range(10):
        grad = jnp.matmul(jnp.asarray(A), p, precision="highest")
        updates, state = tx.update(grad, state, p)
        p = optax.apply_updates(p, updates)
    want = _torch_adam(p0, 10, lr, wd, decoupled=name == "adamw")
    np.testing.assert_allclose(np.asarray(p), want, rtol=1e-4, atol=1e-5)  # float32 steps
    other = _torch_adam(p0, 10, lr, wd, decoupled=name != "adamw")
    assert not np.allclose(want, other, atol=1e-4)  # the two decays really differ here
    assert not np.allclose(want, _torch_adam(p0, 10, lr, 0.0, decoupled=False), atol=1e-4)
