"""The train state, the model that fills it and the device mesh it is replicated over."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from rankax import models, xbm
from rankax.data.base import RetrievalDataset
from rankax.train import errors, input_pipeline, losses, optim

Array = jax.Array


class TrainState(struct.PyTreeNode):
    """Everything a step changes (and a checkpoint saves).

    ``loss_params``: the parameters the loss terms own (``{term: {name: array}}``, e.g. the
    class proxies of a ``normalized_softmax`` term; ``{}`` without such a term), trained by
    ``loss_tx`` (their own optimizers; ``None`` without such a term) from ``loss_opt_state``.
    """

    step: Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: Array
    memory: Any  # rankax.xbm.XBM cross-batch memory, or {} when disabled
    apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    loss_params: Any = struct.field(default_factory=dict)
    loss_opt_state: Any = struct.field(default_factory=dict)
    loss_tx: optax.GradientTransformation | None = struct.field(pytree_node=False, default=None)

    def variables(self, params: Any | None = None) -> dict[str, Any]:
        """The model's variables: ``params`` (default: the state's) and batch statistics."""
        out = {"params": self.params if params is None else params}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PRECISIONS = ("float32", "mixed")


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    """The model's compute dtype: bfloat16 with ``config.precision="mixed"``, else
    ``config.dtype``.

    ``precision="mixed"`` is rankax's form of the official runs' fp16 autocast (ROADMAP,
    SupRank: ``with_autocast: True``): activations and matmuls in bfloat16 -- the fast type of
    TPUs and recent GPUs, with float32's exponent range, so no loss scaling is needed --
    while parameters, optimizer state, BatchNorm statistics, embeddings and the loss stay
    float32 (the "master" copy). On a CPU it runs too (XLA emulates bfloat16; no faster).
    ``"float32"`` (default) computes in ``config.dtype`` (``"float32"`` or ``"bfloat16"``).
    """
    precision = config.get("precision", "float32")
    if precision not in PRECISIONS:
        raise ValueError(f"config.precision must be one of {PRECISIONS}, got {precision!r}")
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
    return jnp.bfloat16 if precision == "mixed" else DTYPES[config.dtype]


def build_model(config: ml_collections.ConfigDict) -> Any:
    """``rankax.models.build(config.model.name, dtype=compute_dtype(config), **config.model)``."""
    dtype = compute_dtype(config)
    kwargs = dict(config.model.to_dict())
    name = kwargs.pop("name")
    kwargs.pop("pretrained", None)
    kwargs.pop("pretrained_distilled", None)
    return models.build(name, dtype=dtype, **kwargs)


# The device-side streams of a run: keys folded into ``PRNGKey(config.seed)`` with distinct
# numbers, so the model's initialisation, the loss terms' parameters and the per-step
# augmentation (``fold_in(state.rng, step)``, ``state.rng = fold_in(root, AUGMENT_KEY)``) never
# share a key. (The host-side streams are :mod:`rankax.data.streams`.)
INIT_KEY, LOSS_PARAMS_KEY, AUGMENT_KEY = 1, 2, 3


def _init_variables(config: ml_collections.ConfigDict, model: Any, sample: Array, rng: Array) -> dict:
    """The model's variables at ``sample``, merged with ``config.model.pretrained`` weights."""
    variables = model.init(jax.random.fold_in(rng, INIT_KEY), sample, train=False)
    pretrained = config.model.get("pretrained", None)
    if pretrained:
        pretrained = os.path.expanduser(pretrained)  # `--config.model.pretrained=~/w.pth`
        from rankax.models import convert

        try:
            if config.model.get("pretrained_distilled", False):
                check_distilled(pretrained)
            weights = convert.load_pretrained(pretrained)
        except errors.ConfigError:
            raise
        # Missing, unreadable, not weights of a known model, or pickled objects besides tensors
        # (convert.load_state_dict names the object and how to save the weights alone).
        except (OSError, ValueError) as err:
            raise errors.ConfigError(
                f"config.model.pretrained={pretrained!r} cannot be loaded: {err}. Pass a torchvision "
                "ResNet, timm ViT/DeiT or official RetrievalNet checkpoint of tensors (.pth, .npz, "
                ".safetensors; docs/models.md)"
            ) from err
        try:
            variables = convert.merge_pretrained(variables, weights)
        except ValueError as err:  # weights of another architecture or size
            raise errors.ConfigError(
                f"config.model.pretrained={pretrained!r} does not fit config.model.name="
                f"{config.model.name!r}: {err}. Pass the weights of that model, or set "
                "--config.model.name to the model they belong to (docs/models.md)"
            ) from err
    return variables


def check_distilled(path: str) -> None:
    """Raises :class:`~rankax.train.ConfigError` unless ``path`` is a distilled DeiT checkpoint
    (it holds a ``dist_token``): ``config.model.pretrained_distilled=True`` says the recipe
    starts from the distilled ImageNet weights (ROADMAP's ``vit_deit_distilled``), whose
    distillation token the conversion drops (:func:`rankax.models.convert.drop_distillation_token`)."""
    from rankax.models import convert

    if "dist_token" not in convert.load_state_dict(path):
        raise errors.ConfigError(
            f"config.model.pretrained_distilled=True but {path} is not a distilled DeiT checkpoint "
            "(no dist_token): use deit_small_distilled_patch16_224 (docs/models.md), or set "
            "--config.model.pretrained_distilled=False to start from other weights"
        )


def _init_memory(
    config: ml_collections.ConfigDict, model: Any, variables: dict, sample: Array, label_shape: tuple
) -> Any:
    """An empty cross-batch memory of ``config.xbm.size`` embeddings, or ``{}`` without XBM."""
    if not config.xbm.size:
        return {}
    dim = jax.eval_shape(lambda: model.apply(variables, sample, train=False)).shape[-1]
    # int64 ids under jax_enable_x64 (numpy's default integers) fit only an int64 memory.
    label_dtype = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
    return xbm.init(int(config.xbm.size), dim, label_shape=label_shape, label_dtype=label_dtype)


def _init_loss_params(
    config: ml_collections.ConfigDict, model: Any, variables: dict, sample: Array, train_labels: Any
) -> dict:
    """``{term: {name: array}}``: the initial parameters of the loss terms that own some."""
    terms = [t for t in losses.make_terms(config, train_labels) if t.owned]
    if not terms:
        return {}
    dim = jax.eval_shape(lambda: model.apply(variables, sample, train=False)).shape[-1]
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), LOSS_PARAMS_KEY)
    return {t.name: t.init(jax.random.fold_in(key, i), dim) for i, t in enumerate(terms)}


def create_train_state(
    config: ml_collections.ConfigDict,
    model: Any,
    sample: np.ndarray,
    labels_ndim: int = 1,
    labels_width: int = 1,
    *,
    train_labels: np.ndarray | None = None,
    epoch_start: optim.EpochStart | None = None,
) -> TrainState:
    """Initial state: model variables (optionally pretrained), optimizer state, RNG, XBM, and
    the parameters of the loss terms with their optimizers.

    ``sample``: a few input images (their shape and dtype); ``labels_ndim``/``labels_width``:
    the training labels' rank and last dimension (label paths ``[N, L]`` give XBM an ``[L]``
    label per slot); ``train_labels``: the training labels the loss sees (needed by
    ``config.loss.terms``, to size their proxies); ``epoch_start``: the sampler's epochs
    (:func:`rankax.train.optim.epoch_clock`; needed by optimizer keys in epochs).
    """
    rng = jax.random.PRNGKey(config.seed)
    sample = jnp.asarray(sample)
    variables = _init_variables(config, model, sample, rng)
    label_shape = () if labels_ndim == 1 else (labels_width,)
    tx = optim.make_optimizer(config, epoch_start)
    loss_params = _init_loss_params(config, model, variables, sample, train_labels)
    loss_tx = optim.make_loss_optimizer(config, tuple(loss_params), epoch_start) if loss_params else None
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(variables["params"]),
        rng=jax.random.fold_in(rng, AUGMENT_KEY),
        memory=_init_memory(config, model, variables, sample, label_shape),
        apply_fn=model.apply,
        tx=tx,
        loss_params=loss_params,
        loss_opt_state=loss_tx.init(loss_params) if loss_tx is not None else {},
        loss_tx=loss_tx,
    )


def initial_state(
    config: ml_collections.ConfigDict,
    data: RetrievalDataset,
    model: Any = None,
    *,
    pretrained: bool = True,
    epoch_start: optim.EpochStart | None = None,
) -> TrainState:
    """The untrained state of ``config`` for ``data`` (``model``: default :func:`build_model`).
    ``pretrained=False``: without reading ``config.model.pretrained`` (a template that a
    checkpoint will overwrite: a resumed run needs no weights file). ``epoch_start``: the
    optimizer's epoch clock (default: that of the training sampler of ``config``, which is
    built and checked against the training split for it)."""
    model = build_model(config) if model is None else model
    if not pretrained and config.model.get("pretrained", None):
        config = ml_collections.ConfigDict(config.to_dict())
        config.model.pretrained = None
    labels = losses.training_labels(config, data)
    sample = data.train.get_batch(np.arange(2), train=False)
    if epoch_start is None:
        epoch_start = optim.epoch_clock(input_pipeline.make_sampler(config, data), len(labels))
    return create_train_state(
        config, model, sample, labels.ndim, labels.shape[-1], train_labels=labels, epoch_start=epoch_start
    )


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
    """A 1-D data-parallel mesh over ``config.num_devices`` (0 = all) local devices."""
    devices = jax.devices()
    n = int(config.get("num_devices", 0)) or len(devices)
    if n > len(devices):
        raise ValueError(f"config.num_devices={n} but only {len(devices)} devices are visible")
    if jax.process_count() > 1 and n != len(devices):  # [multihost] every process's devices
        raise ValueError(
            f"config.num_devices={n}: a run of {jax.process_count()} processes uses all "
            f"{len(devices)} devices of all processes; set config.num_devices=0"
        )
    return Mesh(np.asarray(devices[:n]), ("data",))


def local_devices(config: ml_collections.ConfigDict) -> list[jax.Device]:
    """This process's devices of :func:`make_mesh` (``config.num_devices``; with several
    processes, all of its devices): those evaluation splits each batch of images over."""
    return [d for d in make_mesh(config).devices.flat if d.process_index == jax.process_index()]
