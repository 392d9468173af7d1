"""torchvision / timm weights -> rankax: same outputs as PyTorch on the same random weights.

torchvision and timm are usually not installable next to the CPU torch wheel, so this file
carries minimal PyTorch re-implementations whose ``state_dict()`` keys and forward passes are
those of ``torchvision.models.resnet.ResNet`` (Bottleneck) and
``timm.models.vision_transformer.VisionTransformer``, at tiny widths. When the real packages
are importable, ``test_against_real_torchvision_and_timm`` compares with them too.
"""

import argparse
import copy
import importlib
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from rankax.models import build  # noqa: E402
from rankax.models.convert import (  # noqa: E402
    load_pretrained,
    load_state_dict,
    merge_pretrained,
    retrievalnet_to_flax,
    timm_vit_to_flax,
    torchvision_resnet_to_flax,
)

ATOL = 1e-4


# ---------------------------------------------------------------- PyTorch references


class TorchBottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck (v1.5: stride on conv2), same attribute names."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class TorchResNet(nn.Module):
    """torchvision.models.resnet.ResNet with Bottleneck blocks and a configurable base width."""

    def __init__(self, layers, width=64, num_classes=10):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0], 1)
        self.layer2 = self._make_layer(width * 2, layers[1], 2)
        self.layer3 = self._make_layer(width * 4, layers[2], 2)
        self.layer4 = self._make_layer(width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 32, num_classes)

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        layers = [TorchBottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [TorchBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TorchAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(c // self.num_heads)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TorchMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TorchBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TorchAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = TorchMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TorchPatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TorchViT(nn.Module):
    """timm.models.vision_transformer.VisionTransformer (class token, no distillation), same keys."""

    def __init__(self, img_size=224, patch=16, dim=768, depth=12, num_heads=12, num_classes=10):
        super().__init__()
        self.patch_embed = TorchPatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (img_size // patch) ** 2, dim))
        self.blocks = nn.Sequential(*[TorchBlock(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def features(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))


def _randomize(module, seed=0):
    """Random values for every parameter and BN buffer, so no default (0 / 1) hides a bug."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith(("running_var", ".weight")) and t.ndim == 1:  # BN/LN scales, variances
                t.copy_(torch.rand(t.shape, generator=gen) * 0.8 + 0.6)
            elif t.ndim == 1 or name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            else:  # kernels, class token, position embedding
                fan_in = t[0].numel() if t.ndim > 1 else 1
                t.copy_(torch.randn(t.shape, generator=gen) * math.sqrt(2.0 / fan_in))
    return module.eval()


def _nchw(x):
    return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def _images(n=2, size=32, seed=1):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


# ---------------------------------------------------------------- ResNet


@pytest.fixture(scope="module")
def torch_resnet():
    torch.manual_seed(0)
    return _randomize(TorchResNet([1, 2, 1, 1], width=8))


def test_resnet_outputs_match_torch(torch_resnet):
    x = _images()
    variables = torchvision_resnet_to_flax(torch_resnet.state_dict())
    model = build("resnet50", stage_sizes=(1, 2, 1, 1), width=8, pooling="avg", embedding_dim=None)
    with torch.no_grad():
        ref_maps = torch_resnet.features(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    ref_emb = ref_maps.mean(axis=(1, 2))
    ref_emb /= np.linalg.norm(ref_emb, axis=-1, keepdims=True)
    with jax.default_matmul_precision("highest"):
        maps = model.apply(variables, x, method=lambda m, x: m.backbone(x))
        emb = model.apply(variables, x)
    scale = np.abs(ref_maps).max()
    err_maps = np.abs(np.asarray(maps) - ref_maps).max() / scale
    err_emb = np.abs(np.asarray(emb) - ref_emb).max()
    print(
        f"ResNet: max |diff| feature map {err_maps:.2e} (relative to max {scale:.2f}), "
        f"embedding {err_emb:.2e}"
    )
    assert maps.shape == (2, 1, 1, 256)
    assert err_maps < ATOL and err_emb < ATOL

    # training-mode (batch statistics) BatchNorm agrees with torch's train() as well; 4 images
    # so that no layer normalises over a near-degenerate batch of two values
    x = _images(n=4)
    with torch.no_grad():  # on a copy: train() updates the running statistics
        ref_train = copy.deepcopy(torch_resnet).train().features(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    trainable = model.clone(frozen_bn=False)
    with jax.default_matmul_precision("highest"):
        maps_train, _ = trainable.apply(
            variables, x, train=True, mutable=["batch_stats"], method=lambda m, x, train: m.backbone(x, train)
        )
    err_train = np.abs(np.asarray(maps_train) - ref_train).max() / np.abs(ref_train).max()
    print(f"ResNet, BN in training mode: max |diff| feature map {err_train:.2e} (relative)")
    assert err_train < ATOL


def test_resnet_head_kept_and_merged(torch_resnet):
    x = _images()
    model = build("resnet50", stage_sizes=(1, 2, 1, 1), width=8, embedding_dim=8)
    init = jax.eval_shape(model.init, jax.random.key(0), x)
    init = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), init)
    merged = merge_pretrained(init, torchvision_resnet_to_flax(torch_resnet.state_dict()))
    jax.tree.map(np.testing.assert_array_equal, merged["params"]["head"], init["params"]["head"])
    np.testing.assert_array_equal(
        merged["params"]["backbone"]["layer2_1"]["conv2"]["kernel"],
        torch_resnet.layer2[1].conv2.weight.detach().numpy().transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        merged["batch_stats"]["backbone"]["layer1_0"]["downsample_bn"]["var"],
        torch_resnet.layer1[0].downsample[1].running_var.numpy(),
    )

    wider = build("resnet50", stage_sizes=(1, 2, 1, 1), width=16, embedding_dim=8)
    wider_init = jax.tree.map(
        lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(wider.init, jax.random.key(0), x)
    )
    with pytest.raises(ValueError, match=r"params/backbone\['conv1'\]\['kernel'\]: model \(7, 7, 3, 16\)"):
        merge_pretrained(wider_init, torchvision_resnet_to_flax(torch_resnet.state_dict()))
    deeper = build("resnet50", stage_sizes=(1, 3, 1, 1), width=8, embedding_dim=8)
    deeper_init = jax.tree.map(
        lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(deeper.init, jax.random.key(0), x)
    )
    with pytest.raises(ValueError, match=r"layer2_2.*missing from the pretrained weights"):
        merge_pretrained(deeper_init, torchvision_resnet_to_flax(torch_resnet.state_dict()))


def test_resnet_bad_keys_are_named(torch_resnet):
    sd = {k: v.numpy() for k, v in torch_resnet.state_dict().items()}
    broken = {k: v for k, v in sd.items() if k != "layer2.1.bn2.running_var"}
    with pytest.raises(ValueError, match=r"missing keys: layer2\.1\.bn2\.running_var"):
        torchvision_resnet_to_flax(broken)
    with pytest.raises(ValueError, match=r"unexpected keys: layer1\.0\.se\.weight"):
        torchvision_resnet_to_flax({**sd, "layer1.0.se.weight": sd["fc.bias"]})
    with pytest.raises(ValueError, match=r"unexpected keys: conv1\.bias"):
        torchvision_resnet_to_flax({**sd, "conv1.bias": sd["bn1.bias"]})
    # The block type is read from any conv3/bn3 key, so a missing first conv3 is named too.
    no_conv3 = {k: v for k, v in sd.items() if k != "layer1.0.conv3.weight"}
    with pytest.raises(ValueError, match=r"missing keys: layer1\.0\.conv3\.weight\n"):
        torchvision_resnet_to_flax(no_conv3)
    no_stage4 = {k: v for k, v in sd.items() if not k.startswith("layer4")}
    with pytest.raises(ValueError, match=r"missing keys: layer4\.0\.bn1\.bias"):
        torchvision_resnet_to_flax(no_stage4)


# ---------------------------------------------------------------- ViT


@pytest.fixture(scope="module")
def torch_vit():
    torch.manual_seed(0)
    return _randomize(TorchViT(img_size=16, patch=4, dim=32, depth=2, num_heads=4), seed=1)


def test_vit_outputs_match_torch(torch_vit):
    x = _images(size=16)
    variables = timm_vit_to_flax(torch_vit.state_dict())
    model = build(
        "vit_base", patch_size=4, hidden_size=32, depth=2, num_heads=4, image_size=16, embedding_dim=None
    )
    with torch.no_grad():
        ref_tokens = torch_vit.features(_nchw(x)).numpy()
    ref_emb = ref_tokens[:, 0] / np.linalg.norm(ref_tokens[:, 0], axis=-1, keepdims=True)
    with jax.default_matmul_precision("highest"):
        tokens = model.apply(variables, x, method=lambda m, x: m.backbone(x))
        emb = model.apply(variables, x)
    err_tokens = np.abs(np.asarray(tokens) - ref_tokens).max()
    err_emb = np.abs(np.asarray(emb) - ref_emb).max()
    print(
        f"ViT: max |diff| tokens {err_tokens:.2e} (max |token| {np.abs(ref_tokens).max():.2f}), "
        f"embedding {err_emb:.2e}"
    )
    assert tokens.shape == (2, 17, 32)
    assert err_tokens < ATOL and err_emb < ATOL


def test_vit_bad_keys_are_named(torch_vit):
    sd = dict(torch_vit.state_dict())
    with pytest.raises(ValueError, match=r"unexpected keys: dist_token"):
        timm_vit_to_flax({**sd, "dist_token": sd["cls_token"]})
    with pytest.raises(ValueError, match=r"missing keys: blocks\.0\.attn\.qkv\.bias"):
        timm_vit_to_flax({k: v for k, v in sd.items() if k != "blocks.0.attn.qkv.bias"})
    with pytest.raises(ValueError, match=r"missing keys: cls_token, pos_embed"):
        timm_vit_to_flax({k: v for k, v in sd.items() if not k.endswith("_token") and k != "pos_embed"})


# ---------------------------------------------------------------- official RetrievalNet


class TorchGeM(nn.Module):
    """GeM with its exponent saved as a ``[1]`` parameter ``p``, as the official nets' GeM."""

    def __init__(self, p=3.0):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)

    def forward(self, x):
        return x.clamp(min=1e-6).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class TorchRetrievalNet(nn.Module):
    """The layout of the official trained nets (ROADMAP/SupRank/HAPPIER ``RetrievalNet``): a
    torchvision ResNet without avgpool/fc as ``nn.Sequential`` (or a timm ViT without its
    classifier) under ``backbone``, ``pooling``, a LayerNorm without weights, ``fc``; SupRank
    also registers the pooling -> fc chain a second time as ``head``."""

    def __init__(self, backbone, pooling, features, embed_dim=None, norm_features=False,
                 repeat_as_head=False):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        no_weights = nn.LayerNorm(features, elementwise_affine=False)
        self.standardize = no_weights if norm_features else nn.Identity()
        self.fc = nn.Identity() if embed_dim is None else nn.Linear(features, embed_dim)
        if repeat_as_head:
            self.head = nn.Sequential(self.pooling, nn.Flatten(), self.standardize, self.fc)

    def forward(self, x):
        x = self.fc(self.standardize(self.pooling(self.backbone(x)).flatten(1)))
        return nn.functional.normalize(x, dim=-1)


class TorchClassToken(nn.Module):
    """The ViT backbone's class token, as timm's ``forward`` without a classifier returns it."""

    def __init__(self, vit):
        super().__init__()
        for name in ("patch_embed", "blocks", "norm"):
            setattr(self, name, getattr(vit, name))
        self.cls_token, self.pos_embed = vit.cls_token, vit.pos_embed

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]


@pytest.fixture(scope="module")
def official_resnet_net(torch_resnet):
    torch.manual_seed(2)
    backbone = nn.Sequential(*list(copy.deepcopy(torch_resnet).children())[:-2])
    net = TorchRetrievalNet(backbone, TorchGeM(), 256, embed_dim=16, norm_features=True, repeat_as_head=True)
    with torch.no_grad():
        net.pooling.p.fill_(2.5)  # a trained exponent, not GeM's initial 3
    return net.eval()


def _embed(model, variables, x):
    with jax.default_matmul_precision("highest"):
        return np.asarray(model.apply(variables, x))


def test_retrievalnet_resnet_gem_layernorm_fc_matches_torch(official_resnet_net):
    x = _images()
    sd = official_resnet_net.state_dict()
    assert {"head.0.p", "head.3.weight", "backbone.4.0.conv1.weight"} <= set(sd)  # the official layout
    model = build("resnet50", stage_sizes=(1, 2, 1, 1), width=8, pooling="gem", feature_norm="layernorm",
                  embedding_dim=16)
    init = model.init(jax.random.key(0), x)
    variables = merge_pretrained(init, retrievalnet_to_flax(sd))
    with torch.no_grad():
        ref = official_resnet_net(_nchw(x)).numpy()
    err = np.abs(_embed(model, variables, x) - ref).max()
    print(f"RetrievalNet ResNet + GeM + LayerNorm + fc: max |diff| embedding {err:.2e}")
    assert err < ATOL
    assert float(variables["params"]["head"]["pool"]["p"]) == 2.5

    # a model whose head differs from the checkpoint's is refused, not left random
    no_gem = build("resnet50", stage_sizes=(1, 2, 1, 1), width=8, pooling="avg", embedding_dim=16)
    with pytest.raises(ValueError, match=r"params/head\['pool'\]\['p'\]: not in the model"):
        merge_pretrained(no_gem.init(jax.random.key(0), x), retrievalnet_to_flax(sd))


def test_retrievalnet_vit_without_fc_matches_torch(torch_vit):
    x = _images(size=16)
    net = TorchRetrievalNet(TorchClassToken(copy.deepcopy(torch_vit)), nn.Identity(), 32).eval()
    sd = net.state_dict()
    model = build("vit_base", patch_size=4, hidden_size=32, depth=2, num_heads=4, image_size=16,
                  embedding_dim=None)
    variables = merge_pretrained(model.init(jax.random.key(0), x), retrievalnet_to_flax(sd))
    with torch.no_grad():
        ref = net(_nchw(x)).numpy()
    err = np.abs(_embed(model, variables, x) - ref).max()
    print(f"RetrievalNet DeiT without fc: max |diff| embedding {err:.2e}")
    assert err < ATOL
    # a projection the checkpoint does not have would stay random: refused
    projected = build("vit_base", patch_size=4, hidden_size=32, depth=2, num_heads=4, image_size=16,
                      embedding_dim=8)
    with pytest.raises(ValueError, match=r"params/head\['proj'\]\['kernel'\]: missing from the pretrained"):
        merge_pretrained(projected.init(jax.random.key(0), x), retrievalnet_to_flax(sd))


def test_retrievalnet_bad_keys_are_named(official_resnet_net):
    sd = {k: v.numpy() for k, v in official_resnet_net.state_dict().items()}
    # ROADMAP's create_projection_head with a list of widths: an MLP rankax's head does not have
    mlp = {k: v for k, v in sd.items() if not k.startswith(("fc.", "head."))}
    mlp |= {"fc.0.weight": np.ones((8, 256)), "fc.0.bias": np.ones(8), "fc.2.weight": np.ones((4, 8))}
    with pytest.raises(ValueError, match=r"not a RetrievalNet state dict:\n  unexpected keys: fc\.0\.bias, "
                                         r"fc\.0\.weight, fc\.2\.weight"):
        retrievalnet_to_flax(mlp)
    with pytest.raises(ValueError, match=r"missing keys: fc\.bias"):
        retrievalnet_to_flax({k: v for k, v in sd.items() if k != "fc.bias"})
    with pytest.raises(ValueError, match=r"unexpected keys: .*pooling\.p"):  # not one GeM exponent
        retrievalnet_to_flax({**sd, "pooling.p": np.ones(256)})
    # a head.* entry that is not a second name of pooling/fc
    with pytest.raises(ValueError, match=r"unexpected keys: head\.3\.bias"):
        retrievalnet_to_flax({**sd, "head.3.bias": sd["fc.bias"] + 1})
    with pytest.raises(ValueError, match=r"(?s)backbone of a RetrievalNet .*torchvision ResNet.*missing "
                                         r"keys: layer2\.1\.bn2\.running_var"):
        retrievalnet_to_flax({k: v for k, v in sd.items() if k != "backbone.5.1.bn2.running_var"})


def test_official_checkpoint_needs_allow_pickle(official_resnet_net, tmp_path, monkeypatch):
    """The official checkpoints (``engine/checkpoint.py`` of the three repositories) hold the
    net under ``net_state`` beside pickled objects and torch's RNG state, itself a tensor."""
    checkpoint = {
        "net_state": official_resnet_net.state_dict(), "epoch": 3, "config": argparse.Namespace(lr=1e-5),
        "NP_STATE": np.random.get_state(),  # noqa: NPY002 - what the official code saves
        "TORCH_STATE": torch.random.get_rng_state(),
    }
    torch.save(checkpoint, tmp_path / "epoch_3.ckpt")
    unpickle = r"holds objects besides tensors .*load_state_dict\(path, allow_pickle=True\)"
    with pytest.raises(ValueError, match=unpickle):
        load_pretrained(tmp_path / "epoch_3.ckpt")
    expected = retrievalnet_to_flax(official_resnet_net.state_dict())
    _same(load_pretrained(tmp_path / "epoch_3.ckpt", allow_pickle=True), expected)
    with pytest.raises(TypeError, match=r"load_state_dict: allow_pickle must be True or False, got 'no'"):
        load_pretrained(tmp_path / "epoch_3.ckpt", allow_pickle="no")  # a truthy string would unpickle
    # the pickled objects' package missing where the file is read: named, as an ImportError
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "trainer_only_pkg.py").write_text("class Config:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    torch.save({"net_state": official_resnet_net.state_dict(),
                "config": importlib.import_module("trainer_only_pkg").Config()}, tmp_path / "b.ckpt")
    monkeypatch.delitem(sys.modules, "trainer_only_pkg")
    sys.path.remove(str(tmp_path / "pkg"))
    importlib.invalidate_caches()
    with pytest.raises(ImportError, match=r"package 'trainer_only_pkg', which is not installed"):
        load_state_dict(tmp_path / "b.ckpt", allow_pickle=True)


# ---------------------------------------------------------------- files


def _same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_load_pretrained_files(torch_resnet, torch_vit, tmp_path):
    expected_resnet = torchvision_resnet_to_flax(torch_resnet.state_dict())
    expected_vit = timm_vit_to_flax(torch_vit.state_dict())

    torch.save(torch_resnet.state_dict(), tmp_path / "resnet.pth")
    _same(load_pretrained(tmp_path / "resnet.pth"), expected_resnet)
    # DeiT's release wraps the weights: {"model": state_dict}; DataParallel adds "module."
    wrapped = {"model": {"module." + k: v for k, v in torch_vit.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "deit.pth")
    _same(load_pretrained(tmp_path / "deit.pth"), expected_vit)
    # Checkpoints wrapping the weights as {"net_state": ...}, named .pth.tar or .ckpt
    torch.save({"net_state": torch_resnet.state_dict(), "epoch": 1}, tmp_path / "net.pth.tar")
    _same(load_pretrained(tmp_path / "net.pth.tar"), expected_resnet)
    # The official ROADMAP/SupRank ones (engine/checkpoint.py) also pickle numpy's RNG state,
    # which a tensors-only load refuses: the error says how to take the weights out.
    rng_state = np.random.get_state()  # noqa: NPY002 - what the official code saves
    official = {"net_state": torch_resnet.state_dict(), "epoch": 3, "NP_STATE": rng_state}
    torch.save(official, tmp_path / "epoch_3.ckpt")
    with pytest.raises(ValueError, match=r"epoch_3.ckpt holds objects besides tensors \(.*numpy.*\), which "
                                         r"rankax does not unpickle.*\['net_state'\]"):
        load_pretrained(tmp_path / "epoch_3.ckpt")
    torch.save({"net_state": torch_resnet.state_dict(), "epoch": 3}, tmp_path / "rolling.ckpt")
    _same(load_pretrained(tmp_path / "rolling.ckpt"), expected_resnet)
    np.savez(tmp_path / "vit.npz", **{k: v.numpy() for k, v in torch_vit.state_dict().items()})
    _same(load_pretrained(tmp_path / "vit.npz"), expected_vit)
    # half-precision checkpoints come back as float32
    torch.save({k: v.to(torch.bfloat16) for k, v in torch_vit.state_dict().items()}, tmp_path / "bf16.pt")
    assert load_state_dict(tmp_path / "bf16.pt")["pos_embed"].dtype == np.float32

    np.savez(tmp_path / "bigvision.npz", **{"Transformer/encoder_norm/scale": np.ones(3)})
    with pytest.raises(ValueError, match="big_vision"):
        load_pretrained(tmp_path / "bigvision.npz")
    np.savez(tmp_path / "other.npz", w=np.ones(3))
    with pytest.raises(ValueError, match="neither a torchvision ResNet, a timm ViT nor a RetrievalNet"):
        load_pretrained(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="unknown weight format '.h5'"):
        load_pretrained(tmp_path / "weights.h5")


def test_truncated_or_corrupt_files_are_one_value_error(torch_resnet, tmp_path):
    """A partial download or a text file under a weights name: a ValueError naming the file
    (they were torch's RuntimeError, EOFError, zipfile.BadZipFile, numpy's pickle advice)."""
    torch.save(torch_resnet.state_dict(), tmp_path / "full.pth")
    np.savez(tmp_path / "full.npz", **{k: v.numpy() for k, v in torch_resnet.state_dict().items()})
    for name in ("full.pth", "full.npz"):
        data = (tmp_path / name).read_bytes()
        ext = name.split(".")[1]
        (tmp_path / f"half.{ext}").write_bytes(data[: len(data) // 2])
        (tmp_path / f"empty.{ext}").write_bytes(b"")
    (tmp_path / "text.npz").write_text('{"not": "weights"}')
    (tmp_path / "text.pth").write_text("not a model file\n")  # a bad pickle opcode, not an object
    for name in ("half.pth", "empty.pth", "half.npz", "empty.npz", "text.npz", "text.pth"):
        with pytest.raises(ValueError, match=rf"{name} cannot be read as weights \(.*\); is it truncated"):
            load_state_dict(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "missing.pth")


def test_load_safetensors(torch_vit, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    sd = {k: v.contiguous() for k, v in torch_vit.state_dict().items()}
    safetensors_torch.save_file(sd, tmp_path / "model.safetensors")
    _same(load_pretrained(tmp_path / "model.safetensors"), timm_vit_to_flax(sd))


# ---------------------------------------------------------------- real sizes (no forward pass)


@pytest.mark.parametrize("name", ["resnet50", "deit_small"])
def test_full_size_conversion_fits(name):
    torch_model = TorchResNet([3, 4, 6, 3]) if name == "resnet50" else TorchViT(dim=384, num_heads=6)
    converted = (torchvision_resnet_to_flax if name == "resnet50" else timm_vit_to_flax)(
        torch_model.state_dict()
    )
    model = build(name)
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    )
    for col, tree in converted.items():
        expected = jax.tree.map(lambda s: s.shape, shapes[col]["backbone"])
        assert jax.tree.map(np.shape, tree["backbone"]) == expected


def test_against_real_torchvision_and_timm():
    """Only where torchvision / timm import next to torch (not on the CPU-only CI image)."""
    torchvision = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    x = _images(size=32)

    resnet = _randomize(torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1]))
    trunk = nn.Sequential(*[getattr(resnet, n) for n in ("conv1", "bn1", "relu", "maxpool", "layer1")])
    trunk.extend([resnet.layer2, resnet.layer3, resnet.layer4, resnet.avgpool])
    with torch.no_grad():
        ref = trunk(_nchw(x)).flatten(1).numpy()
    model = build("resnet50", stage_sizes=(1, 1, 1, 1), pooling="avg", embedding_dim=None)
    with jax.default_matmul_precision("highest"):
        emb = model.apply(torchvision_resnet_to_flax(resnet.state_dict()), x)
    np.testing.assert_allclose(emb, ref / np.linalg.norm(ref, axis=-1, keepdims=True), atol=ATOL)

    vit = _randomize(
        timm.models.vision_transformer.VisionTransformer(
            img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=10
        )
    )
    with torch.no_grad():
        ref = vit.forward_features(_nchw(x))[:, 0].numpy()
    model = build(
        "vit_base", patch_size=4, hidden_size=32, depth=2, num_heads=4, image_size=32, embedding_dim=None
    )
    with jax.default_matmul_precision("highest"):
        emb = model.apply(timm_vit_to_flax(vit.state_dict()), x)
    np.testing.assert_allclose(emb, ref / np.linalg.norm(ref, axis=-1, keepdims=True), atol=ATOL)
