"""Basic-block ResNet (ResNet-18/34, ``block="basic"``) against a PyTorch re-implementation of
``torchvision.models.resnet.BasicBlock`` / ``ResNet`` on the same random weights.

The reference classes below carry torchvision's attribute names, so their ``state_dict()``
keys are those of ``torchvision.models.resnet34()``; the weights go through
``torchvision_resnet_to_flax`` as real checkpoints would.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from rankax.models import build  # noqa: E402
from rankax.models.convert import merge_pretrained, torchvision_resnet_to_flax  # noqa: E402
from tests.test_convert import _images, _nchw, _randomize  # noqa: E402


class TorchBasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock: 3x3 (stride) -> 3x3, identity or downsample."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TorchBasicResNet(nn.Module):
    """torchvision.models.resnet.ResNet(BasicBlock, layers) with a configurable base width."""

    def __init__(self, layers, width=64, num_classes=1000):
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
        self.fc = nn.Linear(width * 8, num_classes)

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [TorchBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [TorchBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@pytest.fixture(scope="module")
def torch_basic():
    torch.manual_seed(0)
    return _randomize(TorchBasicResNet([1, 2, 1, 1], width=8, num_classes=10))


def test_basic_resnet_matches_torch(torch_basic):
    x = _images()
    variables = torchvision_resnet_to_flax(torch_basic.state_dict())
    model = build("resnet34", stage_sizes=(1, 2, 1, 1), width=8, pooling="avg", embedding_dim=None)
    with torch.no_grad():
        ref = torch_basic.features(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    with jax.default_matmul_precision("highest"):
        maps = model.apply(variables, x, method=lambda m, x: m.backbone(x))
    assert maps.shape == (2, 1, 1, 64)  # 8 x width channels
    assert np.abs(np.asarray(maps) - ref).max() / np.abs(ref).max() < 1e-4
    # Training-mode BatchNorm (batch statistics), as torch's train().
    x = _images(n=4)
    import copy

    with torch.no_grad():
        ref_train = copy.deepcopy(torch_basic).train().features(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    with jax.default_matmul_precision("highest"):
        maps_train, _ = model.clone(frozen_bn=False).apply(
            variables, x, train=True, mutable=["batch_stats"], method=lambda m, x, train: m.backbone(x, train)
        )
    assert np.abs(np.asarray(maps_train) - ref_train).max() / np.abs(ref_train).max() < 1e-4


def test_resnet34_has_torchvisions_parameter_count():
    """The full-size trunk has as many parameters as the reference ResNet-34 without its fc."""
    reference = TorchBasicResNet([3, 4, 6, 3])
    want = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    model = build("resnet34", embedding_dim=None, pooling="avg")
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    got = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]["backbone"]))
    assert got == want == 21_284_672  # torchvision's resnet34: 21,797,672 with its 513,000-weight fc


def test_basic_checkpoint_errors_name_the_keys(torch_basic):
    state = dict(torch_basic.state_dict())
    del state["layer2.0.downsample.0.weight"]
    with pytest.raises(ValueError, match=r"layer2\.0\.downsample\.0\.weight"):
        torchvision_resnet_to_flax(state)
    # A basic checkpoint does not fit a bottleneck model: merge_pretrained reports the shapes.
    model = build("resnet50", stage_sizes=(1, 2, 1, 1), width=8, embedding_dim=8)
    init = jax.eval_shape(model.init, jax.random.key(0), _images())
    init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), init)
    with pytest.raises(ValueError):
        merge_pretrained(init, torchvision_resnet_to_flax(torch_basic.state_dict()))
