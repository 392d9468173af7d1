"""The data-parallel train step on 8 fake CPU devices equals the single-device step."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    from tests.test_train import tiny_config
    from rankax.train import input_pipeline, train_lib
    from jax.sharding import NamedSharding, PartitionSpec as P

    def run(num_devices, dtype="float32", xbm=0, loss_sharding="shard_map"):
        c = tiny_config(num_devices=num_devices, dtype=dtype, loss_sharding=loss_sharding)
        c.batch.classes_per_batch, c.batch.samples_per_class = 8, 4   # 32 = 4 per device
        c.xbm.size = xbm
        data = input_pipeline.load(c)
        mesh = train_lib.make_mesh(c)
        sampler = input_pipeline.make_sampler(c, data)
        model = train_lib.build_model(c)
        state = train_lib.create_train_state(c, model, data.train.images[:2])
        state = jax.device_put(state, NamedSharding(mesh, P()))
        step = train_lib.make_train_step(c, input_pipeline.augment_fn(c), mesh)
        losses = []
        for t in range(3):
            idx = sampler.indices(t)
            state, m = step(state, data.train.images[idx], data.train.labels[idx])
            losses.append(float(m["loss"]))
        return state, losses

    one, l1 = run(1)
    eight, l8 = run(8)
    jit8, lj8 = run(8, loss_sharding="jit")
    for other, lo in ((eight, l8), (jit8, lj8)):
        np.testing.assert_allclose(lo, l1, rtol=1e-5, atol=1e-6)
        for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(other.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # the memory bank travels through the sharded step too
    m1, lm1 = run(1, xbm=64)
    m8, lm8 = run(8, xbm=64)
    np.testing.assert_allclose(lm8, lm1, rtol=1e-5, atol=1e-6)
    assert int(m8.memory.valid.sum()) == 64
    # bfloat16 compute: finite loss, float32 params
    bf, lb = run(8, dtype="bfloat16")
    assert np.all(np.isfinite(lb)), lb
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf.params))
    print("SHARDED-OK", l1, l8, lb)
    """
)


def test_sharded_step_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "SHARDED-OK" in proc.stdout


EMBED_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    from tests.test_train import tiny_config
    from rankax.train import evaluators, input_pipeline, train_lib
    from rankax.train.step import embed_fn

    c = tiny_config(num_devices=4)
    data = input_pipeline.load(c)
    state = train_lib.create_train_state(c, train_lib.build_model(c), data.train.images[:2])
    devices = train_lib.local_devices(c)
    assert devices == jax.devices()[:4], devices
    seen = []
    def apply(variables, images, train):  # records how the batch is laid out on the devices
        jax.debug.inspect_array_sharding(images, callback=lambda s: seen.append(s))
        return state.apply_fn(variables, images, train=train)
    spy = state.replace(apply_fn=apply)
    images = np.asarray(data.test.images[:10])  # 10 rows: padded to 12 on 4 devices
    one = embed_fn(spy, None)(images)
    four = embed_fn(spy, None, devices)(images)
    assert len(seen) == 2 and len(seen[0].device_set) == 1, seen
    rest = images.shape[1:]
    assert seen[1].device_set == set(devices) and seen[1].shard_shape((12, *rest)) == (3, *rest), seen
    assert one.shape == four.shape == (10, c.model.embedding_dim), (one.shape, four.shape)
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-6)
    # the mesh's own device array works as well (an ndarray, not a list); none is an error
    on_mesh = embed_fn(state, None, train_lib.make_mesh(c).devices)(images)
    np.testing.assert_allclose(on_mesh, one, rtol=1e-5, atol=1e-6)
    try:
        embed_fn(state, None, [])
    except ValueError as err:
        assert "devices is empty" in str(err)
    else:
        raise AssertionError("an empty device list was accepted")
    # the training run's evaluation uses them: the same metrics as one device
    m4 = evaluators.evaluate_state(c, state, data)
    c1 = tiny_config(num_devices=1)
    m1 = evaluators.evaluate_state(c1, state, data)
    assert m4.keys() == m1.keys()
    for key in m1:
        np.testing.assert_allclose(m4[key], m1[key], atol=1e-6, err_msg=key)
    print("EMBED-OK", m4)
    """
)


def test_evaluation_embeds_each_batch_over_the_mesh_devices():
    """``config.num_devices`` devices split each evaluation batch (rows padded to a multiple of
    their count); the embeddings and metrics equal one device's."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", EMBED_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "EMBED-OK" in proc.stdout
