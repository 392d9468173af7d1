"""``build(name, **overrides)``: the model registry, and the backbone/head parameter split."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankax.models.mlp import MLPEmbedding
from rankax.models.resnet import RESNET_STAGES, ResNetEmbedding
from rankax.models.vit import ViTEmbedding

# name -> (class, default attributes). The "*_tiny" entries exist for smoke tests: same code
# paths, 30k-130k parameters, any small image size (ViT: a multiple of 4).
MODELS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "mlp": (MLPEmbedding, {}),
    "resnet34": (ResNetEmbedding, {"stage_sizes": RESNET_STAGES[34], "block": "basic"}),
    "resnet50": (ResNetEmbedding, {"stage_sizes": RESNET_STAGES[50]}),
    "resnet101": (ResNetEmbedding, {"stage_sizes": RESNET_STAGES[101]}),
    "deit_small": (ViTEmbedding, {"hidden_size": 384, "depth": 12, "num_heads": 6}),
    "deit_base": (ViTEmbedding, {"hidden_size": 768, "depth": 12, "num_heads": 12}),
    "vit_base": (ViTEmbedding, {"hidden_size": 768, "depth": 12, "num_heads": 12}),
    "resnet_tiny": (ResNetEmbedding, {"stage_sizes": (1, 1, 1, 1), "width": 8, "embedding_dim": 16}),
    "vit_tiny": (
        ViTEmbedding,
        {
            "patch_size": 4,
            "hidden_size": 32,
            "depth": 2,
            "num_heads": 2,
            "image_size": 32,
            "embedding_dim": 16,
        },
    ),
}


def build(name: str, **overrides: Any) -> nn.Module:
    """Returns the registered model ``name`` with its default attributes updated by ``overrides``.

    Names: ``"mlp"`` (:class:`MLPEmbedding`), ``"resnet34"``, ``"resnet50"``, ``"resnet101"``
    (:class:`ResNetEmbedding`), ``"deit_small"``, ``"deit_base"``, ``"vit_base"``
    (:class:`ViTEmbedding`), and ``"resnet_tiny"`` / ``"vit_tiny"`` for tests. Any attribute of
    the class can be overridden, e.g. ``build("resnet50", pooling="avg", embedding_dim=None,
    dtype=jnp.bfloat16)`` or ``build("resnet50", stage_sizes=(1, 1, 1, 1), width=8)``. Lists are
    turned into tuples and ``dtype="bfloat16"`` into ``jnp.bfloat16`` (config-file values).

    Raises:
      ValueError: for an unknown name (the message lists the valid ones) or attribute.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    cls, defaults = MODELS[name]
    fields = set(getattr(cls, "__dataclass_fields__", {})) - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"model {name!r} ({cls.__name__}) has no attribute {unknown}; valid: {sorted(fields)}"
        )
    # values from ml_collections / the command line: lists become tuples (module attributes
    # must be hashable), dtype names become dtypes
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    if isinstance(overrides.get("dtype"), str):
        overrides["dtype"] = jnp.dtype(overrides["dtype"])
    return cls(**{**defaults, **overrides})


_BN_MODULE = re.compile(r"^(bn\d*|.*_bn)$")


def param_labels(params: Any, *, freeze_bn: bool = False) -> Any:
    """Labels every parameter ``"head"``, ``"backbone"`` or ``"frozen"`` for ``optax.multi_transform``.

    The top-level ``params["head"]`` subtree (pooling exponent, projection) is ``"head"``,
    everything else ``"backbone"``. With ``freeze_bn=True`` the BatchNorm ``scale``/``bias``
    of the backbone (modules named ``bn*`` or ``*_bn``) are ``"frozen"``: pair that label with
    ``optax.set_to_zero()`` to reproduce papers that set ``requires_grad=False`` on them
    (``ResNetEmbedding(frozen_bn=True)`` alone only freezes the running statistics). Example::

        tx = optax.multi_transform(
            {"backbone": optax.adamw(1e-5, weight_decay=1e-4),
             "head": optax.adamw(2e-5, weight_decay=1e-4),
             "frozen": optax.set_to_zero()},
            param_labels(params, freeze_bn=True))
    """

    def label(path: tuple, _: Any) -> str:
        names = [getattr(k, "key", str(k)) for k in path]
        if names and names[0] == "head":
            return "head"
        if freeze_bn and any(_BN_MODULE.match(str(n)) for n in names[:-1]):
            return "frozen"
        return "backbone"

    return jax.tree_util.tree_map_with_path(label, params)
