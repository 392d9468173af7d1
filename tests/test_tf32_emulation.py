"""The suite's TF32 emulation (``RANKAX_EMULATE_TF32=1``, ``make test-tf32``; tests/conftest.py).

It stands in for a GPU's default matmul precision on the CPU, so these tests check that it rounds
what a GPU rounds and nothing else: the rounding against a numpy reference written from the
definition of TF32, and the emulated process (a subprocess: the lowerings it registers are
process-wide) against float64 products.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from conftest import round_to_tf32

ROOT = Path(__file__).resolve().parents[1]


def _tf32_reference(x: np.ndarray) -> np.ndarray:
    """Nearest value with an 11-bit significand (1 implicit + 10 stored bits), ties away from 0."""
    mantissa, exponent = np.frexp(x.astype(np.float64))  # x = m 2^e, 0.5 <= |m| < 1
    scaled = np.abs(mantissa) * 2.0**11
    return np.sign(mantissa) * np.floor(scaled + 0.5) / 2.0**11 * 2.0**exponent


def test_round_to_tf32_matches_the_definition():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=2000) * 10.0 ** rng.integers(-30, 30, size=2000),
                        [0.0, -0.0, 1.0, 1.5, 0.375, 1 + 2**-11, 1 + 3 * 2**-12, 65504.0]]).astype(np.float32)
    got = np.asarray(round_to_tf32(jnp.asarray(x)))
    np.testing.assert_array_equal(got, _tf32_reference(x).astype(np.float32))
    assert np.all(np.abs(got - x) <= 2.0**-11 * np.abs(x))  # half a TF32 ulp
    assert np.all(got.view(np.uint32) & 0x1FFF == 0)  # 13 low mantissa bits clear
    np.testing.assert_array_equal(np.asarray(round_to_tf32(jnp.asarray(got))), got)  # idempotent


def test_round_to_tf32_keeps_inf_and_nan():
    x = jnp.asarray([np.inf, -np.inf, np.nan, np.finfo(np.float32).max], jnp.float32)
    got = np.asarray(round_to_tf32(x))
    assert got[0] == np.inf and got[1] == -np.inf and np.isnan(got[2])
    assert got[3] == np.inf  # the largest float32 rounds up past TF32's largest finite value


_EMULATED = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
import rankax
a = jax.random.normal(jax.random.key(0), (64, 256))
b = jax.random.normal(jax.random.key(1), (256, 32))
ref = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
err = lambda out: float(np.abs(np.asarray(out, np.float64) - ref).max() / np.abs(ref).max())
c = jax.random.normal(jax.random.key(4), (64, 32))  # the cotangent of a @ b: grad = c b^T
grad = lambda prec: jax.grad(lambda a: jnp.vdot(c, jnp.matmul(a, b, precision=prec)))(a)
ref_grad = np.asarray(c, np.float64) @ np.asarray(b, np.float64).T
grad_err = lambda g: float(np.abs(np.asarray(g, np.float64) - ref_grad).max() / np.abs(ref_grad).max())
x = jax.random.normal(jax.random.key(2), (1, 6, 6, 8))
w = jax.random.normal(jax.random.key(3), (3, 3, 8, 4))
conv = lambda prec: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", precision=prec,
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
conv_ref = conv("highest")
emb = a / jnp.linalg.norm(a, axis=1, keepdims=True)
labels = jnp.repeat(jnp.arange(16), 4)
exact = rankax.batch_loss(rankax.losses.supap_loss, emb, labels)
tf32 = rankax.batch_loss(rankax.losses.supap_loss, emb, labels, precision="default")
with jax.default_matmul_precision("highest"):
    in_context = err(jnp.matmul(a, b))
print(json.dumps(dict(
    default=err(jnp.matmul(a, b)), highest=err(jnp.matmul(a, b, precision="highest")),
    in_context=in_context, grad_default=grad_err(grad(None)), grad_highest=grad_err(grad("highest")),
    conv_default=float(jnp.max(jnp.abs(conv(None) - conv_ref)) / jnp.max(jnp.abs(conv_ref))),
    batch_loss_exact=float(exact), batch_loss_tf32=float(tf32))))
"""


def _run(emulate: bool) -> dict:
    import json

    path = os.pathsep.join(filter(None, [str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "RANKAX_EMULATE_TF32": "1" if emulate else "0",
           "PYTHONPATH": path}
    code = "import conftest\n" + _EMULATED  # importing conftest applies the setting, as pytest does
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_emulation_rounds_default_precision_products_only():
    on, off = _run(True), _run(False)
    # float32 products of 256 terms: ~1e-7 relative; TF32 operands: ~1e-4 (2^-11 per operand).
    assert off["default"] < 2e-6 and off["grad_default"] < 2e-6
    assert 2e-5 < on["default"] < 2e-3 and 2e-5 < on["grad_default"] < 2e-2  # backward pass rounded too
    assert on["highest"] < 2e-6 and on["grad_highest"] < 2e-6 and on["in_context"] < 2e-6
    assert on["conv_default"] > 2e-5
    # rankax's default similarity is float32-exact, so the emulation leaves it alone ...
    assert on["batch_loss_exact"] == off["batch_loss_exact"]
    # ... while the TF32 opt-in is rounded under the emulation and exact without it.
    assert off["batch_loss_tf32"] == off["batch_loss_exact"]
    assert on["batch_loss_tf32"] != on["batch_loss_exact"]


def test_emulation_setting_must_be_0_or_1():
    env = {**os.environ, "RANKAX_EMULATE_TF32": "true", "PYTHONPATH": str(ROOT / "tests")}
    run = subprocess.run([sys.executable, "-c", "import conftest"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.returncode != 0
    assert "RANKAX_EMULATE_TF32 must be 1 (emulate TF32 products) or 0, got 'true'" in run.stderr
