"""PyTorch weights -> rankax variables: torchvision ResNet and timm ViT (ImageNet-pretrained
backbones), and networks trained by the official ROADMAP/SupRank/HAPPIER code
(:func:`retrievalnet_to_flax`).

Converting is a key rename plus a layout change:

=======================================  ==========================================
PyTorch (state-dict key, shape)          rankax (collection / path, shape)
=======================================  ==========================================
conv ``*.weight`` ``[O, I, kh, kw]``     ``params/.../kernel`` ``[kh, kw, I, O]``
linear ``*.weight`` ``[O, I]``           ``params/.../kernel`` ``[I, O]``
linear / conv ``*.bias``                 ``params/.../bias``
BatchNorm ``weight`` / ``bias``          ``params/.../scale`` / ``bias``
BatchNorm ``running_mean`` / ``_var``    ``batch_stats/.../mean`` / ``var``
LayerNorm ``weight`` / ``bias``          ``params/.../scale`` / ``bias``
``layer1.0.downsample.0`` / ``.1``       ``layer1_0/downsample_conv`` / ``downsample_bn``
``blocks.3.attn.qkv``                    ``blocks_3/attn/qkv`` (fused q, k, v as in timm)
=======================================  ==========================================

The converted trees sit under the ``"backbone"`` key of each collection, matching
:class:`~rankax.models.ResNetEmbedding` / :class:`~rankax.models.ViTEmbedding`; the
ImageNet classifier (``fc.*``, ``head.*``) and BN's ``num_batches_tracked`` are dropped,
the embedding head keeps its fresh initialisation. Typical use::

    model = rankax.models.build("resnet50")
    variables = model.init(rng, jnp.zeros((1, 224, 224, 3)))
    variables = merge_pretrained(variables, load_pretrained("resnet50-0676ba61.pth"))

Where to get the weights (nothing is downloaded by rankax; URLs as published by the
projects at the time of writing):

* ResNet-50 / 101, torchvision ``IMAGENET1K_V1`` (the weights the retrieval papers used):
  https://download.pytorch.org/models/resnet50-0676ba61.pth,
  https://download.pytorch.org/models/resnet101-63fe2227.pth
  (``IMAGENET1K_V2``: ``resnet50-11ad3fa6.pth``, ``resnet101-cd907fc2.pth``).
* DeiT-S/16, DeiT-B/16 (Touvron et al.; files hold ``{"model": state_dict}``, which
  :func:`load_state_dict` unwraps):
  https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth,
  https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth
  (or ``model.safetensors`` of ``timm/deit_small_patch16_224.fb_in1k`` on the Hugging Face hub).
* Distilled DeiT-S/16 (ROADMAP's DeiT runs): ``deit_small_distilled_patch16_224-649709d9.pth``
  from the same site, or ``timm/deit_small_distilled_patch16_224.fb_in1k``; converted for the
  plain ``"deit_small"`` model with the distillation token dropped (:func:`drop_distillation_token`).
* ViT-B/16: ``model.safetensors`` of ``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k`` (or
  any timm ``vit_base_patch16_224.*`` tag) on the Hugging Face hub. The original Google ``.npz``
  files use big_vision names (``Transformer/encoderblock_0/...``) and are not accepted; load
  them with timm and save its ``state_dict()``.

``.pth``/``.pt``/``.bin`` files need ``torch``; ``.safetensors`` needs the ``safetensors``
package; ``.npz`` (``np.savez(path, **{k: v.numpy() for k, v in sd.items()})``) needs nothing.
rankax never imports torch at module import time.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from rankax._core import optional, validation

Variables = dict[str, Any]

_RESNET_KEY = re.compile(
    r"^(?P<module>conv1|bn1|layer(?P<stage>\d+)\.(?P<block>\d+)\.(?:conv[123]|bn[123]|downsample\.[01]))"
    r"\.(?P<leaf>weight|bias|running_mean|running_var|num_batches_tracked)$"
)
_VIT_KEY = re.compile(
    r"^(?P<module>patch_embed\.proj|norm|blocks\.(?P<block>\d+)\."
    r"(?:norm[12]|attn\.qkv|attn\.proj|mlp\.fc[12]))\.(?P<leaf>weight|bias)$"
)
# Where training checkpoints keep the weights ("net_state": ROADMAP/SupRank/HAPPIER's).
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module", "model_ema", "net_state")


def _unpickled_global(err: BaseException) -> str:
    """Of torch's refusal to unpickle an object, the line that names it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported global" in line]
    return (named[0].split(". Please")[0] if named else (lines[0] if lines else type(err).__name__))[:200]


def _to_numpy(value: Any) -> np.ndarray:
    """A numpy float32 copy of an array or a torch tensor (duck-typed; torch is never imported)."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # numpy has no bfloat16
        value = value.numpy()
    value = np.asarray(value)
    return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _report(kind: str, missing: set[str], unexpected: set[str], hint: str = "") -> None:
    if not (missing or unexpected):
        return

    def show(keys: set[str]) -> str:
        keys = sorted(keys)
        more = f" ... (+{len(keys) - 12} more)" if len(keys) > 12 else ""
        return ", ".join(keys[:12]) + more

    lines = [f"not a {kind} state dict:"]
    if missing:
        lines.append(f"  missing keys: {show(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys: {show(unexpected)}")
    if hint:
        lines.append(f"  {hint}")
    raise ValueError("\n".join(lines))


def torchvision_resnet_to_flax(state_dict: Mapping[str, Any]) -> Variables:
    """Converts a torchvision ResNet state dict for :class:`~rankax.models.ResNetEmbedding`.

    The depth is read from the keys (``layer3.22.*`` -> 23 blocks in stage 3), so any
    ``stage_sizes``/``width`` of the rankax model is accepted, provided the model was built
    with the same ones (:func:`merge_pretrained` checks the shapes).

    Args:
      state_dict: ``torchvision.models.resnet50().state_dict()`` (bottleneck blocks) or
        ``resnet34()`` (basic blocks: build the model with ``block="basic"``, as ``"resnet34"``
        does) or the equivalent mapping of key -> numpy array / torch tensor.

    Returns:
      ``{"params": {"backbone": ...}, "batch_stats": {"backbone": ...}}`` in float32.

    Raises:
      ValueError: naming the missing and unexpected keys when the dict is not a complete
        torchvision ResNet.
    """
    params: dict = {}
    stats: dict = {}
    stages: dict[int, int] = {}
    seen: set[str] = set()
    unexpected: set[str] = set()
    for key, value in state_dict.items():
        if key.startswith("fc."):
            continue  # ImageNet classifier
        m = _RESNET_KEY.match(key)
        if m is None:
            unexpected.add(key)
            continue
        if m["stage"] is not None:
            stage, block = int(m["stage"]), int(m["block"])
            stages[stage] = max(stages.get(stage, 0), block + 1)
        seen.add(key)
        leaf = m["leaf"]
        if leaf == "num_batches_tracked":
            continue
        parts = (
            m["module"]
            .replace(".downsample.0", ".downsample_conv")
            .replace(".downsample.1", ".downsample_bn")
        )
        parts = parts.split(".")
        path = tuple(["_".join(parts[:2]), *parts[2:]] if len(parts) > 1 else parts)
        arr = _to_numpy(value)
        if path[-1].endswith("conv") or re.fullmatch(r"conv\d", path[-1]):
            if leaf != "weight":
                unexpected.add(key)  # torchvision's convolutions have no bias
                continue
            _set(params, (*path, "kernel"), arr.transpose(2, 3, 1, 0))
        elif leaf in ("weight", "bias"):
            _set(params, (*path, "scale" if leaf == "weight" else "bias"), arr)
        else:
            _set(stats, (*path, "mean" if leaf == "running_mean" else "var"), arr)

    # Bottleneck blocks have a conv3; basic blocks (ResNet-18/34) do not, and their first
    # block of stage 1 keeps the width (no downsample).
    bottleneck = any(".conv3." in k or ".bn3." in k for k in seen)
    expected = {"conv1.weight"} | {f"bn1.{s}" for s in ("weight", "bias", "running_mean", "running_var")}
    for stage in range(1, max([4, *stages]) + 1):
        for block in range(stages.get(stage, 1)):
            prefix = f"layer{stage}.{block}."
            modules = ["conv1", "conv2", "bn1", "bn2"] + (["conv3", "bn3"] if bottleneck else [])
            if block == 0 and (bottleneck or stage > 1):
                modules += ["downsample.0", "downsample.1"]
            for mod in modules:
                if "conv" in mod or mod.endswith(".0"):
                    expected.add(prefix + mod + ".weight")
                else:
                    expected |= {
                        prefix + mod + "." + s for s in ("weight", "bias", "running_mean", "running_var")
                    }
    unexpected |= {k for k in seen if not k.endswith("num_batches_tracked") and k not in expected}
    _report(
        "torchvision ResNet",
        expected - seen,
        unexpected,
        "(layout: conv1, bn1, layer1-4 of Bottleneck (ResNet-50/101/152) or BasicBlock (ResNet-18/34) "
        "blocks, fc)",
    )
    return {"params": {"backbone": params}, "batch_stats": {"backbone": stats}}


def timm_vit_to_flax(state_dict: Mapping[str, Any]) -> Variables:
    """Converts a timm ``VisionTransformer`` (ViT / DeiT) state dict for :class:`~rankax.models.ViTEmbedding`.

    The depth is read from the keys; width, heads and patch size follow from the shapes
    (build the rankax model with the matching ``hidden_size``, ``num_heads``, ``patch_size``
    and ``image_size``; :func:`merge_pretrained` checks the shapes).

    Args:
      state_dict: ``timm.create_model("deit_small_patch16_224").state_dict()`` or an equivalent
        mapping of key -> numpy array / torch tensor.

    Returns:
      ``{"params": {"backbone": ...}}`` in float32.

    Distilled DeiT (``deit_*_distilled_patch16_224``: a ``dist_token`` and its position
    after the class token, ``pos_embed [1, 2 + N, D]``, and a ``head_dist`` classifier) is
    converted as ROADMAP initialises its ``vit_deit_distilled`` backbone
    (``elias-ramzi/ROADMAP:roadmap/models/net.py``): the distillation token, its position
    embedding (row 1) and ``head_dist`` are dropped, and the rest is loaded into the plain
    class-token ViT. See :func:`drop_distillation_token`.

    Raises:
      ValueError: naming the missing and unexpected keys.
    """
    state_dict = drop_distillation_token(state_dict)
    params: dict = {}
    depth = 0
    seen: set[str] = set()
    unexpected: set[str] = set()
    for key, value in state_dict.items():
        if key.startswith(("head.", "head_dist.")):
            continue  # ImageNet classifiers
        arr = _to_numpy(value)
        if key in ("cls_token", "pos_embed"):
            seen.add(key)
            params[key] = arr
            continue
        m = _VIT_KEY.match(key)
        if m is None:
            unexpected.add(key)
            continue
        seen.add(key)
        if m["block"] is not None:
            depth = max(depth, int(m["block"]) + 1)
        module, leaf = m["module"], m["leaf"]
        if module == "patch_embed.proj":
            path: tuple[str, ...] = ("patch_embed",)
            if leaf == "weight":
                arr = arr.transpose(2, 3, 1, 0)
        else:
            parts = module.split(".")
            path = tuple(["_".join(parts[:2]), *parts[2:]] if parts[0] == "blocks" else parts)
            if leaf == "weight" and arr.ndim == 2:
                arr = arr.T
        is_norm = path[-1].startswith("norm")
        name = {"weight": "scale" if is_norm else "kernel", "bias": "bias"}[leaf]
        _set(params, (*path, name), arr)

    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    expected |= {"norm.weight", "norm.bias"}
    for i in range(depth):
        for mod in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{mod}.weight", f"blocks.{i}.{mod}.bias"}
    hint = "(timm VisionTransformer with a class token, or distilled DeiT; fc_norm models are not supported)"
    _report("timm ViT", expected - seen, unexpected, hint)
    return {"params": {"backbone": params}}


def _is_square(n: int) -> bool:
    return n > 0 and int(round(n**0.5)) ** 2 == n


def drop_distillation_token(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A distilled-DeiT state dict as a plain class-token ViT's: ``dist_token``, ``head_dist.*``
    and the distillation position (row 1 of ``pos_embed``) removed.

    The dict is taken as distilled when it has ``dist_token`` and its ``pos_embed`` holds
    ``2 + h * w`` positions (a square patch grid after the two tokens); any other dict is
    returned unchanged (a stray ``dist_token`` is then reported as an unexpected key).
    """
    pos = state_dict.get("pos_embed")
    if "dist_token" not in state_dict or pos is None or len(np.shape(pos)) != 3:
        return dict(state_dict)
    rows = np.shape(pos)[1]
    if not _is_square(rows - 2) or _is_square(rows - 1):
        return dict(state_dict)
    pos = _to_numpy(pos)
    out = {k: v for k, v in state_dict.items() if k != "dist_token" and not k.startswith("head_dist.")}
    out["pos_embed"] = np.concatenate([pos[:, :1], pos[:, 2:]], axis=1)
    return out


# torchvision's ResNet children, of which the official nets keep the first eight as
# ``backbone = nn.Sequential(*children[:-2])``: conv1, bn1, relu, maxpool, layer1-4.
_SEQUENTIAL_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_RETRIEVALNET_HINT = (
    "(ROADMAP/SupRank/HAPPIER RetrievalNet: backbone.* (a torchvision ResNet as nn.Sequential, or a "
    "timm ViT), pooling.p for GeM, fc.weight / fc.bias for one linear projection)"
)


def _repeats(value: Any, others: Mapping[str, Any]) -> bool:
    """Whether ``value`` equals one of ``others`` (the same array saved under a second name)."""
    value = _to_numpy(value)
    return any(np.shape(o) == value.shape and np.array_equal(_to_numpy(o), value) for o in others.values())


def retrievalnet_to_flax(state_dict: Mapping[str, Any]) -> Variables:
    """Converts a trained official ``RetrievalNet`` (ROADMAP, SupRank, HAPPIER) for the rankax model.

    The official nets (``elias-ramzi/ROADMAP:roadmap/models/net.py``,
    ``elias-ramzi/SupRank:suprank/models/retrieval_net.py``,
    ``elias-ramzi/HAPPIER:happier/models/retrieval_net.py``) save

    ==============================================  ==========================================
    official key                                    rankax
    ==============================================  ==========================================
    ``backbone.0`` / ``backbone.1``                 ``backbone/conv1`` / ``bn1`` (ResNet)
    ``backbone.4`` ... ``backbone.7``               ``backbone/layer1_*`` ... ``layer4_*``
    ``backbone.<timm key>``                         ``backbone/...`` (ViT / DeiT, as timm)
    ``pooling.p`` ``[1]`` (GeM)                     ``params/head/pool/p`` ``[]``
    ``fc.weight`` ``[E, F]``, ``fc.bias``           ``params/head/proj/kernel`` ``[F, E]``, ``bias``
    ``head.<i>.*`` (SupRank)                        dropped: the same arrays as ``pooling``/``fc``
    ==============================================  ==========================================

    Pooling type, the feature LayerNorm (``norm_features``) and the final normalisation have
    no weights, so nothing here can check them: build the rankax model with the run's settings
    (``pooling``, ``feature_norm="layernorm"``, ``embedding_dim=None`` for ``without_fc``; the
    paper configs in ``configs/`` have them; docs/models.md maps each official model file).
    Settings rankax has no counterpart for convert without error and give other embeddings:
    SupRank's ``whiten`` (a normalisation before ``fc``), ``meanmax`` and ``none`` pooling, and
    HAPPIER's pooling by ``torch.nn`` class name. The returned ``params`` always hold a ``head``
    subtree (empty without GeM and projection), so :func:`merge_pretrained` refuses a model
    whose head has weights the checkpoint lacks instead of keeping them random; a GeM exponent
    (learnable or ``gem_froze``) needs ``gem_learnable=True`` (for a frozen one, also keep it
    out of the optimizer, or build ``gem_learnable=False, gem_p=<its value>`` and drop ``p``).

    Args:
      state_dict: the ``net_state`` of an official checkpoint (see :func:`load_state_dict`),
        keys to numpy arrays / torch tensors.

    Returns:
      ``{"params": {"backbone": ..., "head": ...}, "batch_stats": {"backbone": ...}}`` (no
      ``batch_stats`` for ViTs) in float32.

    Raises:
      ValueError: naming the keys that do not fit (a multi-layer projection head, a missing
        ``fc.bias``, an unknown module), or the backbone's own missing or unexpected keys.
    """
    head_keys = {k: v for k, v in state_dict.items() if k.startswith(("pooling.", "fc."))}
    backbone = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    unexpected = {
        k for k, v in state_dict.items()
        if not k.startswith(("backbone.", "pooling.", "fc."))
        and not (k.startswith("head.") and _repeats(v, head_keys))
    }
    if "patch_embed.proj.weight" in backbone:
        convert, kind = timm_vit_to_flax, "timm ViT"
    else:
        convert, kind = torchvision_resnet_to_flax, "torchvision ResNet"
        backbone = {_sequential_to_resnet(k): v for k, v in backbone.items()}
    try:
        variables = convert(backbone)
    except ValueError as err:
        raise ValueError(
            f"the backbone of a RetrievalNet (keys after 'backbone.', as a {kind}): {err}"
        ) from None
    head: dict[str, Any] = {}
    if "pooling.p" in head_keys and _to_numpy(head_keys["pooling.p"]).size == 1:  # GeM's exponent
        head["pool"] = {"p": _to_numpy(head_keys.pop("pooling.p")).reshape(())}
    linear = {"fc.weight", "fc.bias"}
    missing = linear - set(head_keys) if linear & set(head_keys) else set()
    if not missing and "fc.weight" in head_keys and np.ndim(head_keys["fc.weight"]) == 2:
        kernel, bias = _to_numpy(head_keys.pop("fc.weight")), _to_numpy(head_keys.pop("fc.bias"))
        head["proj"] = {"kernel": kernel.T, "bias": bias}
    unexpected |= set(head_keys)
    _report("RetrievalNet", missing, unexpected, _RETRIEVALNET_HINT)
    variables["params"]["head"] = head
    return variables


def _sequential_to_resnet(key: str) -> str:
    """``4.0.conv1.weight`` (a child of ``nn.Sequential(*resnet.children()[:-2])``) as
    torchvision's ``layer1.0.conv1.weight``; other keys unchanged (reported by the converter)."""
    index, _, rest = key.partition(".")
    return f"{_SEQUENTIAL_RESNET[index]}.{rest}" if index in _SEQUENTIAL_RESNET else key


def merge_pretrained(variables: Variables, pretrained: Variables) -> Variables:
    """Returns ``variables`` with every array that ``pretrained`` provides replaced by it.

    Every top-level subtree of ``pretrained`` (e.g. ``params["backbone"]``) must match the
    model's exactly: same paths, same shapes. Arrays are cast to the model's dtypes; other
    subtrees (the head) keep their values.

    Raises:
      ValueError: listing paths that are missing on either side or whose shapes differ.
    """
    problems: list[str] = []
    out = dict(variables)
    for col, subtrees in pretrained.items():
        if col not in variables:
            problems.append(f"collection {col!r} is not in the model")
            continue
        out[col] = dict(variables[col])
        for top, tree in subtrees.items():
            target = variables[col].get(top)
            if target is None and not jax.tree.leaves(tree):  # e.g. a head without weights on both sides
                continue
            if target is None:
                problems.append(f"{col}/{top} is not in the model")
                continue
            flat_t = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(target)}
            flat_s = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}
            for k in sorted(flat_t.keys() - flat_s.keys()):
                problems.append(f"{col}/{top}{k}: missing from the pretrained weights")
            for k in sorted(flat_s.keys() - flat_t.keys()):
                problems.append(f"{col}/{top}{k}: not in the model")
            for k in sorted(flat_t.keys() & flat_s.keys()):
                if np.shape(flat_t[k]) != np.shape(flat_s[k]):
                    problems.append(
                        f"{col}/{top}{k}: model {np.shape(flat_t[k])} vs pretrained {np.shape(flat_s[k])}"
                    )
            if flat_t.keys() == flat_s.keys():
                out[col][top] = jax.tree.map(lambda t, s: np.asarray(s, dtype=t.dtype), target, tree)
    if problems:
        more = f"\n  ... (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        raise ValueError(
            "pretrained weights do not fit the model (was it built with the same depth, width, "
            "patch and image size?):\n  " + "\n  ".join(problems[:20]) + more
        )
    return out


def _unwrap(obj: Any) -> dict[str, Any]:
    """Finds the state dict inside a training checkpoint; strips DataParallel's ``module.``.

    A container key wins over arrays beside it: the official training checkpoints keep torch's
    RNG state (a tensor) next to ``net_state``."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict (a mapping of names to arrays), got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if hasattr(v, "shape")}


def _npz_arrays(path: str) -> dict[str, np.ndarray]:
    data = _readable(path, lambda: np.load(path, allow_pickle=False))
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not an .npz archive of named arrays")
    with data:
        return _readable(path, lambda: {k: data[k] for k in data.files})


def _readable(path: str, read: Callable[[], Any]) -> Any:
    """``read()``, with a truncated or corrupt file (torch's ``RuntimeError``, ``EOFError``, a
    bad zip, safetensors' header error, a text file under a weights name) as one ``ValueError``
    naming the file. Unpickling refusals and a missing file or package pass through."""
    try:
        return read()
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):  # a pickled object torch would not load: refused
            raise
        return _unreadable(path, err)  # a bad opcode: not a pickle (a text file, a corrupt one)
    except (ImportError, FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # noqa: BLE001 - every reader's own way of saying "not readable"
        return _unreadable(path, err)


def _unreadable(path: str, err: BaseException) -> Any:
    """The ``ValueError`` of a weights file that is not one (truncated, corrupt, another kind)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")[:160]
    raise ValueError(
        f"{path} cannot be read as weights ({type(err).__name__}: {said}); is it truncated or "
        "corrupt, or not a weights file? (a partial download: fetch it again)"
    ) from err


def load_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Reads a PyTorch-layout state dict from ``.pth``/``.pt``/``.bin``/``.ckpt`` (also
    ``.pth.tar``), ``.npz`` or ``.safetensors``.

    Checkpoints wrapping the weights (``{"model": ...}`` as DeiT's, ``{"state_dict": ...}``,
    ``{"net_state": ...}`` as ROADMAP/SupRank/HAPPIER's) are unwrapped and a ``module.``
    prefix is removed.

    Args:
      path: the file; the format is chosen by its extension.
      allow_pickle: torch files are read as tensors only (``torch.load(weights_only=True)``)
        unless this is True, as numpy's ``np.load(allow_pickle=...)``. Training checkpoints that
        pickle other objects (the official ROADMAP/SupRank/HAPPIER ones: numpy's RNG state and
        an OmegaConf config, which needs ``omegaconf`` installed) need it. Unpickling can run
        code from the file: pass True only for files you trust.

    Raises:
      ImportError: when the format needs ``torch`` or ``safetensors`` and it is not installed.
      ValueError: for an unknown extension, a big_vision ``.npz``, or objects besides tensors
        without ``allow_pickle``.
      TypeError: ``allow_pickle`` is not a bool (a string such as "no" would read as True).
    """
    validation.check_flag("allow_pickle", allow_pickle, caller="load_state_dict")
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if path.lower().endswith((".pth.tar", ".pt.tar")):  # torch.save's common checkpoint names
        ext = ".pth"
    if ext in (".pth", ".pt", ".bin", ".ckpt"):
        how = "np.savez(out, **{k: v.numpy() for k, v in state_dict.items()})"
        torch = optional.require("torch", f"reading {path} (or save it as .npz where torch is: {how})")
        try:
            obj = _readable(path, lambda: torch.load(path, map_location="cpu", weights_only=not allow_pickle))
        except pickle.UnpicklingError as err:
            # Training checkpoints also pickle other objects (the official ones: numpy's RNG
            # state, an OmegaConf config; others argparse namespaces), which only an
            # unrestricted unpickler reads.
            raise ValueError(
                f"{path} holds objects besides tensors ({_unpickled_global(err)}), which rankax does not "
                "unpickle unless told to (a file can run code when unpickled): for a file you trust, read it "
                "with rankax.models.convert.load_state_dict(path, allow_pickle=True) in Python, or save the "
                "weights alone, e.g. torch.save(torch.load(path, "
                "weights_only=False)['net_state'], 'weights.pth') ('net_state' for the official "
                "ROADMAP/SupRank/HAPPIER checkpoints)"
            ) from None
        except ModuleNotFoundError as err:  # allow_pickle: the pickled objects' package is missing
            raise ImportError(
                f"{path} pickles objects of the package {err.name!r}, which is not installed: install it "
                "(the official checkpoints' configs need omegaconf), or save the weights alone where it is"
            ) from err
    elif ext == ".npz":
        obj = _npz_arrays(path)
        if any("/" in k for k in obj):
            raise ValueError(
                f"{path} uses big_vision/flax names ({next(k for k in obj if '/' in k)!r}); rankax reads "
                "PyTorch (timm/torchvision) key names: load it with timm and save its state_dict()"
            )
    elif ext == ".safetensors":
        reader = optional.require("safetensors.numpy", f"reading {path}")
        obj = _readable(path, lambda: reader.load_file(path))
    else:
        raise ValueError(
            f"{path}: unknown weight format {ext!r}; expected .pth (.pth.tar), .pt, .bin, .ckpt, .npz "
            "or .safetensors"
        )
    return {k: _to_numpy(v) for k, v in _unwrap(obj).items()}


def load_pretrained(path: str | os.PathLike, *, allow_pickle: bool = False) -> Variables:
    """Reads a torchvision ResNet, timm ViT/DeiT or official ``RetrievalNet`` weight file and
    converts it (see the module doc and :func:`retrievalnet_to_flax`).

    The architecture is recognised from the keys (``patch_embed.proj.weight``: ViT;
    ``layer1.0.conv1.weight``: ResNet; ``backbone.*``: a trained ROADMAP/SupRank/HAPPIER
    net, backbone and head). Combine with the model's own initial variables with
    :func:`merge_pretrained`. ``allow_pickle``: as :func:`load_state_dict`.
    """
    state_dict = load_state_dict(path, allow_pickle=allow_pickle)
    if "patch_embed.proj.weight" in state_dict:
        return timm_vit_to_flax(state_dict)
    if "layer1.0.conv1.weight" in state_dict:
        return torchvision_resnet_to_flax(state_dict)
    if any(k.startswith("backbone.") for k in state_dict):
        return retrievalnet_to_flax(state_dict)
    sample = ", ".join(sorted(state_dict)[:8])
    raise ValueError(
        f"{path}: neither a torchvision ResNet, a timm ViT nor a RetrievalNet state dict "
        f"(keys: {sample}, ...)"
    )
