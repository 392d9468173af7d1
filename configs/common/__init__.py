"""Parts the experiment configs share: datasets, backbones, losses, samplers, run length.

Each function writes the fields of a config from ``configs.default.get_config()`` that its
docstring names, and nothing else. The experiment files (``configs/<paper>_*.py``) keep the
numbers that are their own: image sizes, batch, epochs, learning rates, schedule milestones,
cadence and the reported results.

A package rather than ``configs/common.py``: ``tests/test_configs.py`` runs every
``configs/*.py`` as an experiment.
"""

import ml_collections
from ml_collections import config_dict

INAT_FILES = "~/tensorflow_datasets/downloads/manual"  # taxonomy and split lists (docs/data.md)


def images(
    c,
    name,
    *,
    image_size=224,
    resize_size=256,
    train_resize_size=None,
    test_resize_mode="shorter",
    crop_scale=(0.16, 1.0),
    **source,
):
    """Sets ``c.dataset``: a TFDS retrieval dataset and its image pipeline.

    Train: random-resized crop ``image_size`` (area ``crop_scale``, aspect ratio 0.75-1.33) and
    flip, after resizing to ``train_resize_size`` when it is given (None: no such key); test:
    ``resize_size`` (the shorter side, or ``"square"``), then centre crop ``image_size``.
    ``source``: the dataset's own keys (iNat: ``hierarchy``, ``taxonomy_file``, ``split_dir``).
    """
    dataset = {"name": name, **source, "image_size": image_size, "resize_size": resize_size}
    if train_resize_size is not None:
        dataset["train_resize_size"] = train_resize_size
    dataset.update(
        test_resize_mode=test_resize_mode,
        crop_scale=crop_scale,
        crop_ratio=(0.75, 1.33),
        data_dir=config_dict.placeholder(str),
    )
    c.dataset = ml_collections.ConfigDict(dataset)


def inat(c, hierarchy):
    """Sets ``c.dataset``: iNaturalist 2018 on Brown et al.'s class-disjoint split, 224 px.

    ``hierarchy``: ``"base"`` ([species, supercategory]) or ``"full"`` (the 7 taxonomy levels).
    The taxonomy file and split lists are set on the command line (``--config.dataset.*``).
    """
    images(
        c,
        "inat",
        hierarchy=hierarchy,
        taxonomy_file=f"{INAT_FILES}/categories.json",
        split_dir=f"{INAT_FILES}/Inat_dataset_splits",
    )


def resnet(c, name="resnet50", *, pooling="avg", embedding_dim=512, **pooling_args):
    """Sets ``c.model``: a ResNet trunk, ``pooling``, a linear projection to ``embedding_dim``
    and L2 normalisation.

    BatchNorm layers run in eval mode (running statistics frozen) while their scale and bias
    still train (``c.optimizer.freeze_bn_params`` stays at its default, False): the official
    ``freeze_batch_norm`` of ROADMAP/SupRank, PNP's ``resnet50_frozen_normalize``.
    ``pooling_args``: e.g. ``gem_p`` for ``pooling="gem"``.
    ImageNet weights: ``--config.model.pretrained=/path/to/resnet50.pth``.
    """
    c.model = ml_collections.ConfigDict(
        {
            "name": name,
            "pooling": pooling,
            **pooling_args,
            "embedding_dim": embedding_dim,
            "frozen_bn": True,
            "pretrained": config_dict.placeholder(str),
        }
    )


def deit(c, name):
    """Sets ``c.model``: DeiT (``"deit_small"`` or ``"deit_base"``) at 224 px, the class token
    without projection (384-d / 768-d), L2-normalised."""
    c.model = ml_collections.ConfigDict(
        {
            "name": name,
            "image_size": 224,
            "pooling": "cls",
            "embedding_dim": config_dict.placeholder(int),  # no projection
            "pretrained": config_dict.placeholder(str),
        }
    )


def roadmap_loss(c, *, start, offset):
    """Sets ``c.loss``: ROADMAP, smooth-rank AP (SupAP) + calibration with weights 1/1, margins
    0.9/0.6 (``loss/roadmap.yaml``), the NeurIPS'21 release's piecewise function.

    ``start``/``offset``: 0.5/1.44 (``loss/roadmap.yaml``) or 0/1 (``loss/roadmap_inat.yaml``).
    """
    c.loss.name = "roadmap"
    c.loss.hparams = ml_collections.ConfigDict(
        {
            "supap_weight": 1.0,
            "calibration_weight": 1.0,
            "temperature": 0.01,  # sigmoid temperature ("temp" in the official yaml)
            "rho": 100.0,  # slope after delta ("tau" in the official yaml)
            "delta": 0.05,  # "margin" in the official yaml
            "start": start,
            "offset": offset,
            "variant": "neurips",  # the NeurIPS'21 release's piecewise function (docs/losses.md)
            "pos_margin": 0.9,
            "neg_margin": 0.6,
        }
    )


def hap_loss(c, *, start, offset):
    """Sets ``c.loss``: H-AP on the label paths (SupRank/HAPPIER ``SupHAPLoss``: temperature 0.01,
    rho 100, delta 0.05), graded by the hierarchy (``c.loss.hierarchical``)."""
    c.loss.name = "hap"
    c.loss.hierarchical = True  # the loss sees the label paths (graded relevance)
    c.loss.hparams = ml_collections.ConfigDict(
        {
            "temperature": 0.01,
            "rho": 100.0,
            "delta": 0.05,
            "start": start,
            "offset": offset,
            "variant": "fixed",
        }
    )


def pnp_loss(c):
    """Sets ``c.loss``: PNP-Dq as the PNP code runs it (interestingzhuo/PNPloss
    ``criteria/PNP.py``, ``parameters.py``): alpha 4, sigmoid temperature ("anneal") 0.01,
    ``b=2`` for PNP-Ib. Variants: ``--config.loss.hparams.variant=O|Iu|Ib|Ds|Dq``."""
    c.loss.name = "pnp"
    c.loss.hparams = ml_collections.ConfigDict({"variant": "Dq", "temperature": 0.01, "alpha": 4.0, "b": 2.0})


def pk_batches(c, batch_size, samples_per_class=4):
    """Sets ``c.batch``: P x K batches, ``batch_size // samples_per_class`` classes of
    ``samples_per_class`` images (``MPerClassSampler``)."""
    c.batch.sampler = "pk"
    c.batch.classes_per_batch = batch_size // samples_per_class
    c.batch.samples_per_class = samples_per_class


def hierarchical_batches(c, batch_size, *, batches_per_super_tuple, samples_per_class=4):
    """Sets ``c.batch``: SupRank's hierarchical sampler, P x K batches drawn from pairs of
    super-classes, ``batches_per_super_tuple`` batches per pair."""
    pk_batches(c, batch_size, samples_per_class)
    c.batch.sampler = "hierarchical"
    c.batch.super_classes_per_batch = 2
    c.batch.batches_per_super_tuple = batches_per_super_tuple


def step_decay(c, epochs, milestones, factor=0.3):
    """Sets ``c.optimizer``'s schedule: the learning rate x``factor`` after each epoch in
    ``milestones`` (torch's ``MultiStepLR``) of an ``epochs``-epoch run."""
    c.optimizer.schedule = "step"
    c.optimizer.decay_at = tuple(m / epochs for m in milestones)
    c.optimizer.decay_factor = factor


def train_epochs(c, epochs, steps_per_epoch):
    """Sets ``c.num_steps``: ``epochs`` epochs of ``steps_per_epoch`` batches."""
    c.num_steps = epochs * steps_per_epoch


def every_epochs(c, steps_per_epoch, *, eval_every, checkpoint_every):
    """Sets ``c.eval_every`` and ``c.checkpoint_every`` from a number of epochs."""
    c.eval_every = eval_every * steps_per_epoch
    c.checkpoint_every = checkpoint_every * steps_per_epoch


def unreported(*metrics, note):
    """A ``reported`` section for results not checked yet: each metric None (a float once
    filled in) and ``note``, saying why."""
    return ml_collections.ConfigDict({**{m: config_dict.placeholder(float) for m in metrics}, "note": note})
