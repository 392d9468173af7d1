"""Embedding models: shapes, unit norms, bfloat16, frozen BatchNorm, factory, parameter split.

Only tiny variants run forward passes; the real ResNet/ViT sizes are checked abstractly
(``jax.eval_shape``) against the parameter counts of torchvision/timm. ``model.init`` is also
only traced: on a CPU, compiling one random-number kernel per parameter shape costs more than
the whole test, so :func:`fake_init` fills the traced shapes with numpy values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankax import models
from rankax.models import build, gem_pool, param_labels
from tests import jaxprs

TINY_VIT = dict(patch_size=4, hidden_size=32, depth=2, num_heads=2, image_size=16)
KEY = jax.random.key(0)


def fake_init(model, x, seed=0):
    """``model.init``'s variables (shapes traced with ``eval_shape``), filled with numpy values."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, KEY, x)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("kernel", "cls_token", "pos_embed"):
            fan_in = int(np.prod(leaf.shape[:-1])) if name == "kernel" else 50
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(leaf.dtype)
        if name in ("scale", "var"):
            return rng.uniform(0.8, 1.2, leaf.shape).astype(leaf.dtype)
        if name in ("bias", "mean"):
            return rng.normal(0.0, 0.1, leaf.shape).astype(leaf.dtype)
        if name == "p":
            return np.full(leaf.shape, 3.0, leaf.dtype)
        raise AssertionError(f"unexpected variable {jax.tree_util.keystr(path)}")

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _images(n=3, size=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, 3)), jnp.float32)


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "pooling, embedding_dim, gem_learnable, features",
    [
        ("gem", 16, True, (3, 4, 5, 8)),
        ("gem", None, False, (3, 4, 5, 8)),
        ("avg", 16, True, (3, 4, 5, 8)),
        ("max", 16, True, (3, 4, 5, 8)),
        ("cls", 16, True, (3, 5, 8)),
        ("avg", None, True, (3, 5, 8)),
    ],
)
def test_heads(pooling, embedding_dim, gem_learnable, features):
    head = models.EmbeddingHead(pooling, embedding_dim, gem_learnable=gem_learnable)
    x = jnp.asarray(np.random.default_rng(0).uniform(0.0, 2.0, features), jnp.float32)
    variables = fake_init(head, x)
    assert ("pool" in variables.get("params", {})) == (pooling == "gem" and gem_learnable)
    emb = head.apply(variables, x)
    assert emb.shape == (3, embedding_dim or 8) and emb.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    if embedding_dim is None and pooling == "avg":
        np.testing.assert_allclose(emb, models.l2_normalize(x[:, 1:].mean(axis=1)), rtol=1e-6)
    if embedding_dim is None and pooling == "gem":  # GeM p = 3 (Radenovic et al.), then L2
        pooled = np.mean(np.maximum(np.asarray(x, np.float64), 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)
        np.testing.assert_allclose(emb, pooled / np.linalg.norm(pooled, axis=-1, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize(
    "name, kwargs, size, dim",
    [
        ("resnet_tiny", {}, 32, 16),
        ("resnet101", dict(stage_sizes=(1, 1, 1, 1), width=8, pooling="avg", embedding_dim=None), 32, 32 * 8),
        ("vit_tiny", {}, 32, 16),
        ("vit_tiny", {}, 16, 16),  # 4x4 patches: pos_embed resampled from 8x8
        ("deit_small", dict(TINY_VIT, pooling="avg", embedding_dim=None), 16, 32),
    ],
)
def test_embeddings_are_unit_vectors(name, kwargs, size, dim):
    model = build(name, **kwargs)
    x = _images(size=size)
    variables = fake_init(model, x)
    assert "backbone" in variables["params"]
    emb = model.apply(variables, x)
    assert emb.shape == (3, dim) and emb.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    assert not np.allclose(emb[0], emb[1], atol=1e-3)


def test_mlp_unchanged():
    model = build("mlp")
    x = _images(size=8)[..., 0]
    emb = model.apply(fake_init(model, x), x)
    assert emb.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    assert models.MLPEmbedding is type(model)
    np.testing.assert_allclose(models.l2_normalize(jnp.array([[3.0, 4.0]])), [[0.6, 0.8]])


def test_l2_normalize_gradient_of_a_zero_row_is_zero():
    """A head whose pooled features are all zero gets a zero row and a zero gradient (not the
    NaN of sqrt at 0); other rows get the projection (I - u u^T) / ||x|| (a closed form)."""
    x = jnp.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    w = jnp.array([[1.0, -1.0, 0.5], [0.5, 1.0, -2.0]])
    out, grad = jax.value_and_grad(lambda x: jnp.sum(models.l2_normalize(x) * w))(x)
    np.testing.assert_array_equal(np.asarray(grad[0]), 0.0)
    u = np.array([1.0, 2.0, 2.0]) / 3.0
    want = (np.eye(3) - np.outer(u, u)) @ np.asarray(w[1]) / 3.0
    np.testing.assert_allclose(np.asarray(grad[1]), want, rtol=1e-6)
    assert float(out) == pytest.approx(float(np.dot(u, w[1])), rel=1e-6)
    half = models.l2_normalize(jnp.array([[3.0, 4.0]], jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    # Non-finite rows stay non-finite (never a silent zero embedding).
    bad = models.l2_normalize(jnp.array([[jnp.nan, 1.0], [jnp.inf, 1.0], [1.0, 0.0]]))
    assert np.isnan(np.asarray(bad[0])).all() and np.isnan(np.asarray(bad[1, 0]))
    np.testing.assert_array_equal(np.asarray(bad[2]), [1.0, 0.0])


def test_l2_normalize_of_rows_whose_square_overflows_or_underflows():
    """||x||^2 of a float32 row overflows past ~1.8e19 and underflows below ~1e-19: the row is
    still x / max(||x||, eps) (not a silent zero row), with the projection gradient
    (I - u u^T) w / ||x||; the host version agrees, float16 rows too."""
    from rankax._core.normalize import l2_normalize_host

    x = np.array([[3e19, 1e19, 0.0], [3e-25, 4e-25, 0.0], [300.0, 400.0, 0.0]])
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # float64: no overflow
    want = x / np.maximum(norms, 1e-12)
    np.testing.assert_allclose(models.l2_normalize(jnp.asarray(x, jnp.float32)), want, rtol=1e-6)
    np.testing.assert_allclose(l2_normalize_host(x.astype(np.float32)), want, rtol=1e-6)
    half = l2_normalize_host(np.array([[300.0, 400.0, 0.0], [0.0, 0.0, 0.0]], np.float16))
    np.testing.assert_allclose(half, [[0.6, 0.8, 0.0], [0.0, 0.0, 0.0]], atol=1e-3)
    inf_row = models.l2_normalize(jnp.array([[np.inf, 1.0, 0.0]]))
    assert np.isnan(np.asarray(inf_row)).all()  # a NaN row, never a finite one
    assert models.l2_normalize(jnp.zeros((2, 0))).shape == (2, 0)
    w = np.array([1.0, 2.0, 3.0])
    grad = jax.grad(lambda r: jnp.sum(models.l2_normalize(r) * w))(jnp.asarray(x[:1], jnp.float32))
    u = x[0] / norms[0]
    np.testing.assert_allclose(np.asarray(grad[0]), (w - u * (u @ w)) / norms[0], rtol=1e-5)


@pytest.mark.parametrize("name", ["resnet_tiny", "vit_tiny"])
def test_bfloat16_compute_float32_params(name):
    x = _images(size=32)
    kwargs = {}
    model32 = build(name, **kwargs)
    model16 = build(name, **kwargs, dtype=jnp.bfloat16)
    variables = fake_init(model16, x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    emb16 = model16.apply(variables, x)
    assert emb16.dtype == jnp.float32 and np.isfinite(emb16).all()
    cos = np.sum(np.asarray(emb16) * np.asarray(model32.apply(variables, x)), axis=-1)
    assert (cos > 0.95).all(), cos
    # The trunk's convolutions / matmuls really run in bfloat16 (not a float32 model whose
    # output is merely close), and the float32 model runs none.
    assert _heavy_ops_by_dtype(model16, variables, x).get(np.dtype(jnp.bfloat16), 0) > 0
    assert np.dtype(jnp.bfloat16) not in _heavy_ops_by_dtype(model32, variables, x)


def test_vit_low_precision_keeps_the_residual_stream_and_layernorms_float32():
    """As torch's autocast runs the papers' DeiT: only attention and MLP compute in the low
    dtype; LayerNorm and the residual adds stay float32 (all-bfloat16 blocks put DeiT-S 16x
    further from float32 than autocast, a review measured)."""
    x = _images(size=32)
    model = build("vit_tiny", dtype=jnp.bfloat16)
    variables = fake_init(model, x)
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    flat = {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf.dtype
            for path, leaf in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]}
    module = lambda key: key.removesuffix("/__call__/0").rsplit("/", 1)[-1]  # noqa: E731
    blocks = {k: d for k, d in flat.items() if module(k).startswith("blocks_")}
    norms = {k: d for k, d in flat.items() if module(k).startswith("norm")}
    dense = {k: d for k, d in flat.items() if module(k) in ("qkv", "fc1")}
    assert blocks and set(blocks.values()) == {np.dtype(jnp.float32)}, blocks
    assert norms and set(norms.values()) == {np.dtype(jnp.float32)}, norms
    assert dense and set(dense.values()) == {np.dtype(jnp.bfloat16)}, dense


def _heavy_ops_by_dtype(model, variables, x) -> dict:
    """How many conv_general_dilated / dot_general of model.apply take operands of each
    dtype, searched through nested programs (remat, scan, custom_vjp, ...)."""
    counts: dict = {}

    for eqn in jaxprs.equations(jax.make_jaxpr(model.apply)(variables, x).jaxpr):
        if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
            dtype = np.dtype(eqn.invars[0].aval.dtype)
            counts[dtype] = counts.get(dtype, 0) + 1
    return counts


def test_frozen_bn_keeps_running_statistics():
    x = _images() * 3.0 + 1.0  # far from the running statistics
    model = build("resnet_tiny", frozen_bn=True)
    variables = fake_init(model, x)
    emb_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])
    np.testing.assert_array_equal(emb_train, model.apply(variables, x, train=False))
    # training mode needs no mutable collection
    np.testing.assert_array_equal(emb_train, model.apply(variables, x, train=True))

    trainable = build("resnet_tiny", frozen_bn=False)
    emb_bn, updates = trainable.apply(variables, x, train=True, mutable=["batch_stats"])
    changed = jax.tree.map(
        lambda a, b: not np.allclose(a, b), updates["batch_stats"], variables["batch_stats"]
    )
    assert all(jax.tree.leaves(changed))
    assert not np.allclose(emb_bn, emb_train)
    np.testing.assert_array_equal(trainable.apply(variables, x), model.apply(variables, x))


def test_gem_pooling():
    x = jax.random.uniform(KEY, (2, 5, 4, 3), minval=0.1, maxval=2.0)
    np.testing.assert_allclose(gem_pool(x, 1.0), x.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(gem_pool(x, 60.0), x.max(axis=(1, 2)), rtol=0.05)
    expected = np.mean(np.asarray(x, np.float64) ** 3, axis=(1, 2)) ** (1 / 3)
    np.testing.assert_allclose(gem_pool(x), expected, rtol=1e-5)
    assert np.isfinite(jax.grad(lambda p: gem_pool(x, p).sum())(3.0))
    assert np.isfinite(jax.grad(lambda z: gem_pool(z).sum())(jnp.zeros((1, 2, 2, 3)))).all()

    x = _images()
    learned = jax.eval_shape(build("resnet_tiny").init, KEY, x)
    assert learned["params"]["head"]["pool"]["p"].shape == ()
    fixed = jax.eval_shape(build("resnet_tiny", gem_learnable=False).init, KEY, x)
    assert "pool" not in fixed["params"]["head"]


def test_param_labels_split_backbone_head_and_bn():
    x = _images()
    params = jax.eval_shape(build("resnet_tiny").init, KEY, x)["params"]
    labels = jax.tree.leaves(param_labels(params))
    assert set(labels) == {"backbone", "head"}
    assert labels.count("head") == 3  # GeM p, projection kernel and bias
    frozen = param_labels(params, freeze_bn=True)
    n_bn = 1 + 4 * 4  # stem + (3 + downsample) in each of the 4 bottlenecks
    assert jax.tree.leaves(frozen).count("frozen") == 2 * n_bn
    assert frozen["backbone"]["layer1_0"]["downsample_bn"]["scale"] == "frozen"
    assert frozen["backbone"]["layer1_0"]["downsample_conv"]["kernel"] == "backbone"
    assert frozen["head"]["pool"]["p"] == "head"

    vit = jax.eval_shape(build("vit_tiny").init, KEY, x)["params"]
    assert "frozen" not in jax.tree.leaves(param_labels(vit, freeze_bn=True))
    mlp = jax.eval_shape(build("mlp").init, KEY, x[..., 0])["params"]
    assert param_labels(mlp)["head"]["kernel"] == "head"
    assert param_labels(mlp)["Dense_0"]["kernel"] == "backbone"


def test_frozen_bn_parameters_with_optax():
    optax = pytest.importorskip("optax")
    params = fake_init(build("resnet_tiny", stage_sizes=(1, 1)), _images())["params"]
    tx = optax.multi_transform(
        {
            "backbone": optax.adamw(1e-2, weight_decay=0.1),
            "head": optax.sgd(1.0),
            "frozen": optax.set_to_zero(),
        },
        param_labels(params, freeze_bn=True),
    )
    grads = jax.tree.map(jnp.ones_like, params)
    new = jax.jit(lambda p, g: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))(params, grads)
    bn, old_bn = new["backbone"]["layer2_0"]["bn1"], params["backbone"]["layer2_0"]["bn1"]
    jax.tree.map(np.testing.assert_array_equal, bn, old_bn)
    assert not np.allclose(new["backbone"]["conv1"]["kernel"], params["backbone"]["conv1"]["kernel"])
    np.testing.assert_allclose(new["head"]["pool"]["p"], 2.0)


def test_factory_errors_name_the_options():
    with pytest.raises(ValueError, match="valid names: .*deit_small.*resnet101.*vit_base"):
        build("resnet51")
    model = build("resnet50", stage_sizes=[1, 1], dtype="bfloat16")
    assert model.stage_sizes == (1, 1) and model.dtype == jnp.bfloat16
    hash(model)
    with pytest.raises(ValueError, match=r"no attribute \['widht'\]"):
        build("resnet50", widht=8)
    with pytest.raises(ValueError, match="pooling='cls'"):
        jax.eval_shape(build("resnet_tiny", pooling="cls").init, KEY, _images())
    with pytest.raises(ValueError, match="expected one of"):
        jax.eval_shape(build("vit_tiny", pooling="mean").init, KEY, _images())
    with pytest.raises(ValueError, match="for feature maps"):
        jax.eval_shape(build("vit_tiny", pooling="gem").init, KEY, _images())
    vit = build("vit_tiny")
    with pytest.raises(ValueError, match=r"ViT input 33 x 35 is not a multiple of patch_size="):
        jax.eval_shape(vit.init, KEY, jnp.ones((1, 33, 35, 3)))


# Backbone parameter counts of torchvision / timm without their ImageNet classifier
# (resnet50: 25,557,032 - 2,049,000; vit_base_patch16_224: 86,567,656 - 769,000; ...).
@pytest.mark.parametrize(
    "name, backbone_params, width",
    [
        ("resnet50", 23_508_032, 2048),
        ("resnet101", 42_500_160, 2048),
        ("deit_small", 21_665_664, 384),
        ("vit_base", 85_798_656, 768),
    ],
)
def test_full_size_parameter_counts(name, backbone_params, width):
    model = build(name)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, KEY, x)
    assert _count(shapes["params"]["backbone"]) == backbone_params
    assert _count(shapes["params"]["head"]["proj"]) == (width + 1) * 512
    features = jax.eval_shape(lambda v, x: model.apply(v, x, method=lambda m, x: m.backbone(x)), shapes, x)
    assert features.shape == ((1, 7, 7, 2048) if "resnet" in name else (1, 197, width))


def test_projection_starts_as_torch_linear():
    """The official nets' projection is a plain torch.nn.Linear: kernel and bias uniform in
    +-1/sqrt(fan_in), so std 1/sqrt(3 fan_in) (flax's default kernel had std 1/sqrt(fan_in) and a
    zero bias: a sqrt(3) larger start that takes relatively smaller steps once normalised)."""
    fan_in, dim = 2048, 512
    head = models.EmbeddingHead("avg", dim)
    params = head.init(jax.random.key(0), jnp.ones((2, 3, 3, fan_in)))["params"]["proj"]
    bound = 1 / np.sqrt(fan_in)
    kernel, bias = np.asarray(params["kernel"]), np.asarray(params["bias"])
    assert kernel.shape == (fan_in, dim) and bias.shape == (dim,)
    for w in (kernel, bias):
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
    np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.01)
    np.testing.assert_allclose(bias.std(), bound / np.sqrt(3), rtol=0.1)
    assert abs(kernel.mean()) < 0.01 * bound
