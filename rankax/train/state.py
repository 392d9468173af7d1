"""The train state, the model that fills it and the device mesh it is replicated over."""

from __future__ import annotations

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
from rankax.train import losses, optim

Array = jax.Array


class TrainState(struct.PyTreeNode):
    """Everything a step changes (and a checkpoint saves)."""

    step: Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: Array
    memory: Any  # rankax.xbm.XBM cross-batch memory, or {} when disabled
    apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def variables(self, params: Any | None = None) -> dict[str, Any]:
        """The model's variables: ``params`` (default: the state's) and batch statistics."""
        out = {"params": self.params if params is None else params}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config: ml_collections.ConfigDict) -> Any:
    """``rankax.models.build(config.model.name, dtype=config.dtype, **config.model)``."""
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
    kwargs = dict(config.model.to_dict())
    name = kwargs.pop("name")
    kwargs.pop("pretrained", None)
    return models.build(name, dtype=DTYPES[config.dtype], **kwargs)


def _init_variables(config: ml_collections.ConfigDict, model: Any, sample: Array, rng: Array) -> dict:
    """The model's variables at ``sample``, merged with ``config.model.pretrained`` weights."""
    variables = model.init(jax.random.fold_in(rng, 1), sample, train=False)
    pretrained = config.model.get("pretrained", None)
    if pretrained:
        from rankax.models import convert

        variables = convert.merge_pretrained(variables, convert.load_pretrained(pretrained))
    return variables


def _init_memory(
    config: ml_collections.ConfigDict, model: Any, variables: dict, sample: Array, label_shape: tuple
) -> Any:
    """An empty cross-batch memory of ``config.xbm.size`` embeddings, or ``{}`` without XBM."""
    if not config.xbm.size:
        return {}
    dim = jax.eval_shape(lambda: model.apply(variables, sample, train=False)).shape[-1]
    return xbm.init(int(config.xbm.size), dim, label_shape=label_shape)


def create_train_state(
    config: ml_collections.ConfigDict,
    model: Any,
    sample: np.ndarray,
    labels_ndim: int = 1,
    labels_width: int = 1,
) -> TrainState:
    """Initial state: model variables (optionally pretrained), optimizer state, RNG, XBM.

    ``sample``: a few input images (their shape and dtype); ``labels_ndim``/``labels_width``:
    the training labels' rank and last dimension (label paths ``[N, L]`` give XBM an ``[L]``
    label per slot).
    """
    rng = jax.random.PRNGKey(config.seed)
    sample = jnp.asarray(sample)
    variables = _init_variables(config, model, sample, rng)
    label_shape = () if labels_ndim == 1 else (labels_width,)
    tx = optim.make_optimizer(config)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(variables["params"]),
        rng=rng,
        memory=_init_memory(config, model, variables, sample, label_shape),
        apply_fn=model.apply,
        tx=tx,
    )


def initial_state(config: ml_collections.ConfigDict, data: RetrievalDataset, model: Any = None) -> TrainState:
    """The untrained state of ``config`` for ``data`` (``model``: default :func:`build_model`)."""
    model = build_model(config) if model is None else model
    labels = losses.training_labels(config, data)
    sample = data.train.get_batch(np.arange(2), train=False)
    return create_train_state(config, model, sample, labels.ndim, labels.shape[-1])


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
