"""Model pieces of the official recipes: the feature-LayerNorm head (ROADMAP ``resnet_max_ln``,
SupRank's ``standardize``) and distilled DeiT weights with the distillation token dropped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from rankax import models
from rankax.models import convert

KEY = jax.random.key(0)


def _init(model, x, seed=0):
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, KEY, x)
    return jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(s.dtype), shapes)


# ---------------------------------------------------------------- feature LayerNorm


def _np_layernorm(x, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_layernorm_head_matches_numpy(pooling):
    rng = np.random.default_rng(0)
    feats = rng.normal(2.0, 3.0, (4, 3, 5, 24)).astype(np.float32)
    head = models.EmbeddingHead(pooling, 8, feature_norm="layernorm")
    variables = _init(head, feats)
    w = np.asarray(variables["params"]["proj"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["proj"]["bias"], np.float64)
    pooled = feats.max(axis=(1, 2)) if pooling == "max" else feats.mean(axis=(1, 2))
    ref = _np_layernorm(pooled.astype(np.float64), 1e-5) @ w + b
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    with jax.default_matmul_precision("highest"):
        out = np.asarray(head.apply(variables, feats))
    np.testing.assert_allclose(out, ref, atol=2e-5)
    # without the option: the projection sees the raw pooled features
    plain = np.asarray(models.EmbeddingHead(pooling, 8).apply(variables, feats))
    assert np.abs(plain - out).max() > 1e-2


# The projection in float32: a GPU's default TF32 would round two normalised features equal up to
# 1e-7 to different 10-bit mantissas, a 1e-4 difference that says nothing about LayerNorm.
@pytest.mark.usefixtures("float32_matmuls")
def test_layernorm_head_no_params_and_invariance():
    """LayerNorm without affine parameters: no new variables; invariant to x -> a x + c."""
    feats = np.random.default_rng(1).normal(size=(3, 2, 2, 16)).astype(np.float32)
    ln = models.EmbeddingHead("avg", 8, feature_norm="layernorm")
    variables = _init(ln, feats)
    assert set(variables["params"]) == {"proj"}
    a = ln.apply(variables, feats)
    b = ln.apply(variables, 3.0 * feats + 5.0)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    with pytest.raises(ValueError, match="feature_norm"):
        models.EmbeddingHead("avg", 8, feature_norm="batchnorm").apply(variables, feats)


def test_resnet_max_ln_through_build():
    """``build("resnet50", pooling="max", feature_norm="layernorm")`` = ROADMAP's resnet_max_ln."""
    model = models.build("resnet_tiny", pooling="max", feature_norm="layernorm", embedding_dim=8)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = _init(model, x)
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])  # valid variances
    with jax.default_matmul_precision("highest"):
        fmap = np.asarray(model.apply(variables, x, method=lambda m, x: m.backbone(x)), np.float64)
        out = np.asarray(model.apply(variables, x))
    head = variables["params"]["head"]["proj"]
    ref = _np_layernorm(fmap.max(axis=(1, 2)), 1e-5) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(out, ref, atol=1e-4)


# ---------------------------------------------------------------- distilled DeiT


def _distilled_state_dict(dim=32, depth=2, heads=4, patch=4, size=16, classes=7, seed=0):
    """A random timm ``VisionTransformerDistilled`` state dict (torch tensors, timm's keys)."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=gen) * s
    n = (size // patch) ** 2
    sd = {
        "cls_token": r(1, 1, dim),
        "dist_token": r(1, 1, dim),
        "pos_embed": r(1, 2 + n, dim),
        "patch_embed.proj.weight": r(dim, 3, patch, patch),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": 1 + r(dim),
        "norm.bias": r(dim),
        "head.weight": r(classes, dim),
        "head.bias": r(classes),
        "head_dist.weight": r(classes, dim),
        "head_dist.bias": r(classes),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd |= {
            p + "norm1.weight": 1 + r(dim),
            p + "norm1.bias": r(dim),
            p + "attn.qkv.weight": r(3 * dim, dim),
            p + "attn.qkv.bias": r(3 * dim),
            p + "attn.proj.weight": r(dim, dim),
            p + "attn.proj.bias": r(dim),
            p + "norm2.weight": 1 + r(dim),
            p + "norm2.bias": r(dim),
            p + "mlp.fc1.weight": r(4 * dim, dim),
            p + "mlp.fc1.bias": r(4 * dim),
            p + "mlp.fc2.weight": r(dim, 4 * dim),
            p + "mlp.fc2.bias": r(dim),
        }
    return sd


def _np_deit_without_dist_token(sd, images, heads, patch):
    """ROADMAP's backbone from distilled weights (``pos_embed`` rows 0 and 2..), written
    from the ViT equations in float64: NHWC images -> L2-normalised class token."""
    g = {k: v.double().numpy() for k, v in sd.items()}
    ln = lambda x, name: _np_layernorm(x, 1e-6) * g[name + ".weight"] + g[name + ".bias"]
    lin = lambda x, name: x @ g[name + ".weight"].T + g[name + ".bias"]
    b, h, w, c = images.shape
    x = images.astype(np.float64).reshape(b, h // patch, patch, w // patch, patch, c)
    x = x.transpose(0, 1, 3, 5, 2, 4).reshape(b, (h // patch) * (w // patch), c * patch * patch)
    x = x @ g["patch_embed.proj.weight"].reshape(len(g["patch_embed.proj.bias"]), -1).T
    x = x + g["patch_embed.proj.bias"]
    pos = np.concatenate([g["pos_embed"][:, :1], g["pos_embed"][:, 2:]], axis=1)
    x = np.concatenate([np.repeat(g["cls_token"], b, 0), x], axis=1) + pos
    d = x.shape[-1]
    depth = len({k.split(".")[1] for k in g if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        y = lin(ln(x, p + "norm1"), p + "attn.qkv").reshape(b, -1, 3, heads, d // heads)
        q, k, v = (y[:, :, j].transpose(0, 2, 1, 3) for j in range(3))  # [B, H, N, d/H]
        logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads)
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        y = (attn @ v).transpose(0, 2, 1, 3).reshape(b, -1, d)
        x = x + lin(y, p + "attn.proj")
        y = lin(ln(x, p + "norm2"), p + "mlp.fc1")
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
        x = x + lin(y, p + "mlp.fc2")
    cls = ln(x, "norm")[:, 0]
    return cls / np.linalg.norm(cls, axis=1, keepdims=True)


def test_distilled_deit_checkpoint_converts_and_matches_reference(tmp_path):
    torch = pytest.importorskip("torch")
    sd = _distilled_state_dict()
    path = tmp_path / "deit_small_distilled.pth"
    torch.save({"model": sd}, path)  # DeiT's release wraps the state dict
    pretrained = convert.load_pretrained(path)
    assert "dist_token" not in pretrained["params"]["backbone"]
    assert pretrained["params"]["backbone"]["pos_embed"].shape == (1, 17, 32)
    model = models.build(
        "deit_small", patch_size=4, hidden_size=32, depth=2, num_heads=4, image_size=16, embedding_dim=None
    )
    images = np.random.default_rng(3).normal(size=(2, 16, 16, 3)).astype(np.float32)
    variables = convert.merge_pretrained(jax.eval_shape(model.init, KEY, images), pretrained)
    with jax.default_matmul_precision("highest"):
        out = np.asarray(model.apply(variables, images))
    ref = _np_deit_without_dist_token(sd, images, heads=4, patch=4)
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_drop_distillation_token_only_for_distilled_layouts():
    sd = {k: v.numpy() for k, v in _distilled_state_dict().items()}
    plain = convert.drop_distillation_token(sd)
    assert "dist_token" not in plain and not any(k.startswith("head_dist") for k in plain)
    np.testing.assert_array_equal(plain["pos_embed"][:, 0], sd["pos_embed"][:, 0])
    np.testing.assert_array_equal(plain["pos_embed"][:, 1:], sd["pos_embed"][:, 2:])
    # a non-distilled pos_embed (1 + 16 rows) with a stray dist_token is not touched
    stray = {**plain, "dist_token": sd["dist_token"]}
    assert convert.drop_distillation_token(stray).keys() == stray.keys()
    with pytest.raises(ValueError, match="unexpected keys: dist_token"):
        convert.timm_vit_to_flax(stray)


@pytest.mark.parametrize("side, grid", [(8, (4, 4)), (4, (8, 8)), (14, (16, 16)), (14, (7, 10)), (6, (6, 9))])
def test_resample_pos_embed_matches_torch_bicubic_antialiased(side, grid):
    """ViT position embeddings resized for another grid (evaluation at the images' own size)
    equal torch's F.interpolate(bicubic, antialias=True) of the patch positions (what timm's
    resample_abs_pos_embed does); the class position is kept as is."""
    torch = pytest.importorskip("torch")
    from rankax.models.vit import resample_pos_embed

    d = 5
    pe = np.random.default_rng(side).normal(size=(1, 1 + side * side, d)).astype(np.float32)
    got = np.asarray(resample_pos_embed(jnp.asarray(pe), grid))
    patch = torch.tensor(pe[:, 1:]).reshape(1, side, side, d).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(patch, size=grid, mode="bicubic", antialias=True)
    np.testing.assert_allclose(got[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, d).numpy(), atol=1e-5)
    np.testing.assert_array_equal(got[:, 0], pe[:, 0])
