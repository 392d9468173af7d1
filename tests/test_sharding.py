"""Sharded global-batch ranking on 8 fake CPU devices equals the single-device loss.

The check runs in a subprocess: ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be
set before jax initialises its backend, which the pytest process (and its xdist workers) has
already done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# One subprocess for the module: with `--dist loadgroup` its tests stay on one xdist worker.
# `make test` uses the default `load` distribution (faster here overall), which hands out
# consecutive tests in chunks and may split the module; the second worker then reads the first
# one's results (the `once_per_run` fixture of tests/conftest.py) instead of running it again.
pytestmark = pytest.mark.xdist_group("sharding_subprocess")

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import rankax
    from rankax import sharding, xbm

    assert jax.device_count() == 8, jax.devices()
    B, D = 32, 6
    e = jax.random.normal(jax.random.key(0), (B, D))
    e = 0.95 * e / jnp.linalg.norm(e, axis=1, keepdims=True)
    fine = np.random.RandomState(0).permutation(np.repeat(np.arange(8), 4))
    lab = jnp.asarray(fine, jnp.int32)
    paths = jnp.asarray(np.stack([fine, fine // 2], 1), jnp.int32)
    memory = xbm.update(xbm.init(12, D, label_shape=(2,)),
                        jax.random.normal(jax.random.key(1), (9, D)) * 0.3,
                        jnp.asarray(np.stack([np.arange(9) % 8, (np.arange(9) % 8) // 2], 1)))
    explicit = jax.make_mesh((8,), ("data",))
    auto = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    results = {}

    def check(name, mesh, fn, labels, mode, memory=None, **kw):
        put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
        ref = jax.jit(jax.value_and_grad(lambda x: rankax.batch_loss(fn, x, labels, memory=memory, **kw)))(e)
        if mode == "shard_map":
            loss_of = sharding.sharded_batch_loss(fn, mesh, "data", block_size=3, **kw)
            f = lambda x, y: loss_of(x, y, memory)
        else:
            f = lambda x, y: rankax.batch_loss(fn, x, y, memory=memory, block_size=3, **kw)
        val, grad = jax.jit(jax.value_and_grad(f))(put(e), put(labels))
        results[name] = dict(
            value=float(ref[0]),
            value_err=float(abs(val - ref[0])),
            grad_err=float(jnp.max(jnp.abs(grad - ref[1]))),
            grad_norm=float(jnp.linalg.norm(ref[1])),
        )

    # max_positives=2 < 3 positives per query: the capacity ladder runs on every device.
    check("supap_shard_map", explicit, rankax.supap_loss, lab, "shard_map", max_positives=2)
    check("supap_jit_named_sharding", auto, rankax.supap_loss, lab, "jit", max_positives=3,
          capacity_limit=3)
    check("roadmap_pooled_include_self", auto, rankax.roadmap_loss, lab, "shard_map",
          include_self=True, max_positives=4)
    hap = getattr(rankax.losses, "hap_loss", rankax.supap_loss)
    check("hap_paths_with_memory", explicit, hap, paths, "shard_map", memory=memory,
          max_positives=4)
    # Every list loss, value and gradient through shard_map (FastAP's constant bin centres
    # once made its backward pass fail there: a cotangent that varied over the devices), on the
    # single rung of a P x K step without memory. The ladder's switch inside shard_map (traced
    # labels past the hint, as with a cross-batch memory or label paths) is checked above for
    # SupAP, ROADMAP and H-AP only.
    for fn in rankax.losses.LIST_LOSSES:
        check("every_" + fn.__name__, explicit, fn, lab, "shard_map", max_positives=3, capacity_limit=3)
    # BlackBox AP's random margin: the list of query r draws from fold_in(key, r) on whichever
    # device it sits (with the device's own rows it had repeated the first device's noise).
    check("blackbox_key_shard_map", explicit, rankax.blackbox_ap_loss, lab, "shard_map", max_positives=3,
          capacity_limit=3, key=jax.random.key(7))
    # The memory takes a batch sharded over the explicit mesh (smaller and larger than it).
    on_explicit = lambda x: jax.device_put(x, NamedSharding(explicit, P("data")))
    for size in (20, 40):
        want = xbm.update(xbm.init(size, D), e, lab)
        got = jax.jit(xbm.update)(xbm.init(size, D), on_explicit(e), on_explicit(lab))
        results[f"xbm_explicit_{size}"] = [
            bool(jnp.array_equal(got.labels, want.labels)),
            bool(jnp.array_equal(got.embeddings, want.embeddings)),
            int(got.pointer) == int(want.pointer),
        ]
    # A NaN on one device's shard (device 5) or in a filled memory slot: NaN loss and NaN
    # gradients on every device, never a finite number.
    loss_of = sharding.sharded_batch_loss(rankax.supap_loss, explicit, "data", max_positives=2)
    put = lambda x: jax.device_put(x, NamedSharding(explicit, P("data")))
    g = jax.jit(jax.value_and_grad(lambda x, y, m: loss_of(x, y, m)))
    flat_memory = xbm.update(xbm.init(12, D), e[:3], lab[:3])
    nan_memory = xbm.update(xbm.init(12, D), e[:3].at[1, 2].set(jnp.nan), lab[:3])
    clean_val, _ = g(put(e), put(lab), flat_memory)
    val, grad = g(put(e.at[21, 0].set(jnp.nan)), put(lab), flat_memory)
    mem_val, mem_grad = g(put(e), put(lab), nan_memory)
    results["nonfinite"] = dict(
        clean_finite=bool(jnp.isfinite(clean_val)),
        value_nan=bool(jnp.isnan(val)), grad_all_nan=bool(jnp.all(jnp.isnan(grad))),
        memory_value_nan=bool(jnp.isnan(mem_val)), memory_grad_all_nan=bool(jnp.all(jnp.isnan(mem_grad))),
    )
    try:  # checked mode on 8 devices: the global batch is checked outside shard_map
        rankax.debug.checked(lambda x, y: loss_of(x, y, flat_memory))(put(e.at[21, 0].set(jnp.inf)), put(lab))
        results["checked_message"] = ""
    except rankax.debug.CheckError as err:
        results["checked_message"] = str(err)
    # An eager call whose lists overflow capacity_limit raises CapacityError, as batch_loss does
    # (inside shard_map the host callback would only be logged).
    auto_put = lambda x: jax.device_put(x, NamedSharding(auto, P("data")))
    small = sharding.sharded_batch_loss(rankax.supap_loss, auto, "data", capacity_limit=2)
    try:
        small(auto_put(e), auto_put(lab))
        results["eager_overflow"] = ""
    except rankax.batch.CapacityError as err:
        results["eager_overflow"] = str(err)
    # Under jit (traced labels) on 8 devices, sharded or partitioned by XLA: NaN value and
    # gradients. A host callback that raised here had stopped one device and left the others
    # in their all-reduce until the runtime aborted the process.
    over = {
        "shard_map": small,
        "jit": lambda x, y: rankax.batch_loss(rankax.supap_loss, x, y, max_positives=2, capacity_limit=2),
    }
    for mode, fn in over.items():
        val, grad = jax.jit(jax.value_and_grad(fn))(auto_put(e), auto_put(lab))
        results["jit_overflow_" + mode] = [bool(jnp.isnan(val)), bool(jnp.all(jnp.isnan(grad)))]
        try:  # checked mode names the count
            rankax.debug.checked(fn)(auto_put(e), auto_put(lab))
            results["checked_overflow_" + mode] = ""
        except rankax.debug.CheckError as err:
            results["checked_overflow_" + mode] = str(err)
    # An explicit mesh takes arrays of any sharding (numpy labels, unsharded embeddings, a
    # memory on one device): the loss reshards them to its in_specs, eagerly and under jit.
    explicit_loss = sharding.sharded_batch_loss(rankax.supap_loss, explicit, "data", max_positives=3,
                                                capacity_limit=3)
    exp_put = lambda x: jax.device_put(x, NamedSharding(explicit, P("data")))
    want = float(explicit_loss(exp_put(e), exp_put(lab)))
    got = [float(explicit_loss(e, fine.astype(np.int32))), float(jax.jit(explicit_loss)(e, lab)),
           float(jax.jit(explicit_loss)(exp_put(e), fine.astype(np.int32)))]
    results["explicit_any_sharding"] = [want, got]
    try:  # a batch the mesh does not divide: named before any resharding is tried
        explicit_loss(e[:30], lab[:30])
        results["explicit_indivisible"] = ""
    except ValueError as err:
        results["explicit_indivisible"] = str(err)
    # List losses under jit with their lists sharded over an Explicit mesh (jax.set_mesh):
    # BlackBox AP's batched searchsorted failed there ("Resource axis: data ... not found").
    lists = jax.random.normal(jax.random.key(2), (8, 40)) * 0.3
    rel = (jax.random.uniform(jax.random.key(3), (8, 40)) < 0.2).astype(jnp.float32)
    for fn in (rankax.losses.blackbox_ap_loss, rankax.losses.supap_loss, rankax.losses.histogram_ap_loss):
        per_list = lambda s, y: fn(s, y, reduce_fn=None)
        want_value = jax.jit(per_list)(lists, rel)  # one device: the arguments are unsharded
        want_grad = jax.jit(jax.grad(lambda s: jnp.sum(per_list(s, rel))))(lists)
        with jax.set_mesh(explicit):
            s_, y_ = exp_put(lists), exp_put(rel)
            value = jax.jit(per_list)(s_, y_)
            grad = jax.jit(jax.grad(lambda s, y: jnp.sum(per_list(s, y))))(s_, y_)
        results["explicit_list_" + fn.__name__] = [float(jnp.max(jnp.abs(value - want_value))),
                                                   float(jnp.max(jnp.abs(grad - want_grad)))]
    # BlackBox AP's random margin on sharded lists: each list's draws, as on one device.
    keyed = lambda s, y: rankax.losses.blackbox_ap_loss(s, y, reduce_fn=None, key=jax.random.key(5))
    want_value = jax.jit(keyed)(lists, rel)
    with jax.set_mesh(explicit):
        value = jax.jit(keyed)(exp_put(lists), exp_put(rel))
    results["explicit_list_blackbox_key"] = [float(jnp.max(jnp.abs(value - want_value))), 0.0]
    # As batch_loss takes them: Python lists on an Auto mesh (they reached shard_map, which
    # refused them) and an integer JAX array ks (it was traced into the list loss and failed).
    auto_loss = sharding.sharded_batch_loss(rankax.supap_loss, auto, "data", max_positives=3)
    results["auto_python_lists"] = [float(rankax.batch_loss(rankax.supap_loss, e, lab)),
                                    float(auto_loss(e.tolist(), fine.tolist()))]
    recall = rankax.losses.sup_recall_at_k_loss
    by_array = sharding.sharded_batch_loss(recall, auto, "data", ks=jnp.array([1, 2, 4]))
    results["ks_as_jax_array"] = [float(rankax.batch_loss(recall, e, lab, ks=(1, 2, 4))),
                                  float(by_array(auto_put(e), auto_put(lab)))]
    # Eager jax.grad on an Explicit mesh inside jax.set_mesh, as the docstring says.
    ref_grad = jax.grad(lambda x: rankax.batch_loss(rankax.supap_loss, x, lab))(e)
    with jax.set_mesh(explicit):
        eager_grad = jax.grad(lambda x: explicit_loss(x, lab))(exp_put(e))
    results["explicit_eager_grad"] = float(jnp.max(jnp.abs(eager_grad - ref_grad)))
    print("RESULTS" + json.dumps(results))
    """
)


def _run_script() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS"))
    return json.loads(line[len("RESULTS") :])


@pytest.fixture(scope="module")
def sharded_results(once_per_run):
    return once_per_run("sharding_subprocess", _run_script)


@pytest.mark.parametrize(
    "name",
    [
        "supap_shard_map",
        "supap_jit_named_sharding",
        "roadmap_pooled_include_self",
        "hap_paths_with_memory",
        "blackbox_key_shard_map",
    ],
)
def test_sharded_equals_single_device(sharded_results, name):
    r = sharded_results[name]
    assert r["grad_norm"] > 1e-3  # a gradient worth comparing
    assert r["value_err"] < 1e-5, r
    assert r["grad_err"] < 1e-5, r


def _list_loss_names():
    from rankax.losses import LIST_LOSSES

    return [fn.__name__ for fn in LIST_LOSSES]


@pytest.mark.parametrize("name", _list_loss_names())
def test_every_list_loss_shards_with_its_gradient(sharded_results, name):
    r = sharded_results["every_" + name]
    assert r["value_err"] < 1e-5, r
    assert r["grad_err"] < 1e-5, r


@pytest.mark.parametrize("size", [20, 40])
def test_memory_takes_a_batch_sharded_over_an_explicit_mesh(sharded_results, size):
    assert sharded_results[f"xbm_explicit_{size}"] == [True, True, True]


def test_sharded_nonfinite_is_nan_everywhere(sharded_results):
    assert sharded_results["nonfinite"] == dict(
        clean_finite=True, value_nan=True, grad_all_nan=True, memory_value_nan=True, memory_grad_all_nan=True
    )


def test_sharded_checked_mode_names_the_first_nonfinite_embedding(sharded_results):
    message = sharded_results["checked_message"]
    assert "sharded_batch_loss(supap_loss): embeddings has a non-finite value" in message, message
    assert "embeddings[21, 0] = inf (first of 1 entries)" in message, message


def test_sharded_eager_overflow_raises_capacity_error(sharded_results):
    assert "a query has 3 positives but capacity_limit=2" in sharded_results["eager_overflow"]


@pytest.mark.parametrize("mode", ["shard_map", "jit"])
def test_sharded_jit_overflow_is_nan_not_a_hang(sharded_results, mode):
    assert sharded_results["jit_overflow_" + mode] == [True, True]
    assert "a query has 3 positives but capacity_limit=2" in sharded_results["checked_overflow_" + mode]


def test_explicit_mesh_reshards_its_inputs(sharded_results):
    want, got = sharded_results["explicit_any_sharding"]
    np.testing.assert_allclose(got, [want] * 3, rtol=1e-6)
    message = sharded_results["explicit_indivisible"]
    assert message.startswith("sharded_batch_loss(supap_loss): the global batch (30) must be divisible")
    assert "a multiple of 8" in message
    # Padding was advised: padded rows rank as negatives in every list and change the loss.
    assert "pad the batch" not in message and "padding rows would change the loss" in message


def test_python_lists_and_array_ks_shard_as_batch_loss_takes_them(sharded_results):
    for name in ("auto_python_lists", "ks_as_jax_array"):
        want, got = sharded_results[name]
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)


def test_eager_grad_on_an_explicit_mesh_inside_set_mesh(sharded_results):
    assert sharded_results["explicit_eager_grad"] <= 1e-6


@pytest.mark.parametrize("name", ["blackbox_ap_loss", "supap_loss", "histogram_ap_loss", "blackbox_key"])
def test_list_losses_under_jit_on_an_explicit_mesh(sharded_results, name):
    """Values and gradients of lists sharded over an Explicit mesh equal the unsharded ones."""
    value_err, grad_err = sharded_results["explicit_list_" + name]
    assert value_err <= 1e-6 and grad_err <= 1e-5


def test_batch_must_divide_the_mesh():
    import jax

    from rankax import sharding
    from rankax.losses import supap_loss

    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match=r"^sharded_batch_loss\(supap_loss\): axis_name 'model' is not an "
                                         r"axis of the mesh \{'data': 1\}: pass one of \('data',\)"):
        sharding.sharded_batch_loss(supap_loss, mesh, "model")
    with pytest.raises(ValueError, match=r"axis_name \('data', 'data'\) repeats an axis"):
        sharding.sharded_batch_loss(supap_loss, mesh, ("data", "data"))
    # batch_loss's memory/references: the memory goes to loss_of, references are not taken.
    with pytest.raises(TypeError, match=r"memory= is not an option of sharded_batch_loss: pass the "
                                        r"cross-batch memory to the returned function: "
                                        r"loss_of\(embeddings, labels, memory\)"):
        sharding.sharded_batch_loss(supap_loss, mesh, memory=None)
    with pytest.raises(TypeError, match="reference_mask= is not an option of sharded_batch_loss: the "):
        sharding.sharded_batch_loss(supap_loss, mesh, reference_mask=None)
    with pytest.raises(TypeError, match=r"\(sharded_batch_loss options: block_size, capacity_limit, "
                                        r"include_self, max_positives, max_tile_elements, precision, "
                                        r"relevance_fn;"):
        sharding.sharded_batch_loss(supap_loss, mesh, blok_size=3)
    # Built with bad arguments: refused at once, not at the first call.
    with pytest.raises(TypeError, match="loss_fn must be a list loss"):
        sharding.sharded_batch_loss("supap", mesh)
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        sharding.sharded_batch_loss(supap_loss, None)
    with pytest.raises(TypeError, match="axis_name must be a mesh axis name"):
        sharding.sharded_batch_loss(supap_loss, mesh, 0)
    with pytest.raises(TypeError, match="unknown argument 'temprature'; did you mean 'temperature'"):
        sharding.sharded_batch_loss(supap_loss, mesh, temprature=0.1)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        sharding.sharded_batch_loss(supap_loss, mesh, temperature=-1.0)
    loss_of = sharding.sharded_batch_loss(supap_loss, mesh, "data")
    assert callable(loss_of)
    emb, lab = np.ones((4, 3), np.float32), np.arange(4) // 2
    with pytest.raises(TypeError, match=r"sharded_batch_loss\(supap_loss\): memory must be a rankax.xbm.XBM"):
        loss_of(emb, lab, (emb, lab))


def test_an_eager_sharded_loss_compiles_once_per_shape(monkeypatch):
    """Eager calls of loss_of reuse one compiled program (an eager shard_map had traced and
    compiled its body at every call: 12 s each for a 16-row batch on 2 CPU devices)."""
    import jax

    import rankax
    from rankax import sharding

    traced = []
    local = sharding._local_loss
    monkeypatch.setattr(sharding, "_local_loss", lambda *a, **k: traced.append(1) or local(*a, **k))
    mesh = jax.make_mesh((1,), ("data",))
    loss_of = sharding.sharded_batch_loss(rankax.supap_loss, mesh, "data")
    rng = np.random.default_rng(0)
    emb, lab = rng.normal(size=(8, 4)).astype(np.float32), np.repeat(np.arange(4), 2)
    values = [float(loss_of(emb, lab)) for _ in range(3)]
    assert len(traced) == 1
    np.testing.assert_allclose(values, [float(rankax.batch_loss(rankax.supap_loss, emb, lab))] * 3, rtol=1e-6)
    loss_of(emb[:6], lab[:6])  # another shape: compiled once more
    assert len(traced) == 2
