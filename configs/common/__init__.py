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
    crop_ratio=(0.75, 1.33),
    **source,
):
    """Sets ``c.dataset``: a TFDS retrieval dataset and its image pipeline.

    Train: random-resized crop ``image_size`` (area ``crop_scale``, aspect ratio ``crop_ratio``:
    ROADMAP/SupRank's 0.75-1.33 by default) and flip, after resizing to ``train_resize_size``
    when it is given (None: no such key); test: ``resize_size`` (the shorter side, or
    ``"square"``), then centre crop ``image_size``. Images are decoded whole, as the official
    code does (``draft_train=False``; the registry's default draft decoding changes pixels by a
    few grey levels for little speed on images of ~500 px: docs/benchmarks_input.md).
    ``source``: the dataset's own keys (iNat: ``hierarchy``, ``taxonomy_file``, ``split_dir``).
    """
    dataset = {"name": name, **source, "image_size": image_size, "resize_size": resize_size}
    if train_resize_size is not None:
        dataset["train_resize_size"] = train_resize_size
    dataset.update(
        test_resize_mode=test_resize_mode,
        crop_scale=crop_scale,
        crop_ratio=crop_ratio,
        draft_train=False,  # full decode, as the official code (True: faster JPEG draft decoding)
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


def resnet(c, name="resnet50", *, pooling="avg", embedding_dim=512, feature_norm=None, **pooling_args):
    """Sets ``c.model``: a ResNet trunk, ``pooling``, an optional feature LayerNorm
    (``feature_norm="layernorm"``: no affine parameters, ROADMAP's ``resnet_max_ln`` and
    SupRank's ``norm_features``), a linear projection to ``embedding_dim`` and L2
    normalisation.

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
            "feature_norm": config_dict.placeholder(str) if feature_norm is None else feature_norm,
            "pretrained": config_dict.placeholder(str),
        }
    )


def deit(c, name, *, distilled=False):
    """Sets ``c.model``: DeiT (``"deit_small"`` or ``"deit_base"``) at 224 px, the class token
    without projection (384-d / 768-d), L2-normalised. ``distilled``: the run starts from the
    distilled ImageNet weights (``model.pretrained_distilled``: a checkpoint without a
    ``dist_token`` is refused; the token is dropped on conversion)."""
    c.model = ml_collections.ConfigDict(
        {
            "name": name,
            "image_size": 224,
            "pooling": "cls",
            "embedding_dim": config_dict.placeholder(int),  # no projection
            "pretrained": config_dict.placeholder(str),
            "pretrained_distilled": bool(distilled),
        }
    )


def roadmap_loss(c, *, start, offset):
    """Sets ``c.loss``: ROADMAP, smooth-rank AP (SupAP) + calibration with weights 1/1, margins
    0.9/0.6 (``loss/roadmap.yaml``), the NeurIPS'21 release's piecewise function.

    ``start``/``offset``: 0.5/1.44 (``loss/roadmap.yaml`` sets ``offset: 1.44`` and no ``start``,
    so ``SupAP.__init__``'s default ``start=0.5`` applies, ``elias-ramzi/ROADMAP@v1.0.0:``
    ``roadmap/losses/smooth_rank_ap.py``) or 0/1 (``loss/roadmap_inat.yaml`` sets both).
    """
    c.loss.name = "roadmap"
    c.loss.hparams = ml_collections.ConfigDict(
        {
            "supap_weight": 1.0,
            "calibration_weight": 1.0,
            "temperature": 0.01,  # sigmoid temperature ("tau" in v1.0.0's loss/roadmap.yaml)
            "rho": 100.0,  # slope after delta ("rho" there)
            "delta": 0.05,  # "delta" there (the pre-release yamls: temp, tau, margin)
            "start": start,
            "offset": offset,
            "variant": "neurips",  # the NeurIPS'21 release's piecewise function (docs/losses.md)
            "pos_margin": 0.9,
            "neg_margin": 0.6,
        }
    )


#: The H-rank options only :func:`hap_loss` sets (the official yamls' values, see there).
H_RANK = {"with_hrank": False, "beta": 25.0, "gamma": 0.5, "leak": 10.0}


def hap_loss(c, *, start, offset):
    """Sets ``c.loss``: H-AP on the label paths (SupRank/HAPPIER ``SupHAPLoss``: temperature 0.01,
    rho 100, delta 0.05), graded by the hierarchy (``c.loss.hierarchical``). The H-rank options
    are those of ``elias-ramzi/SupRank@d3d0e3c:suprank/config/loss/HAPPIER.yaml`` (and of the
    other HAPPIER loss yamls there but ``HAPPIER_pp_LM.yaml``, which sets none of them):
    ``with_hrank: False``, so ``beta`` 25, ``gamma`` 0.5 and
    ``leak`` 10 are listed only to be overridable (``--config.loss.hparams.with_hrank=True``)."""
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
            **H_RANK,
        }
    )


def without_h_rank(c):
    """Drops H-AP's H-rank options (:data:`H_RANK`) from ``c.loss.hparams``: for the SupRank
    losses that start from an H-AP config and share only its ROADMAP step (SupNDCG, SupR@k)."""
    for name in H_RANK:
        del c.loss.hparams[name]


def pnp_loss(c):
    """Sets ``c.loss``: PNP-Dq as the PNP code runs it (interestingzhuo/PNPloss
    ``criteria/PNP.py``, ``parameters.py``): alpha 4, sigmoid temperature ("anneal") 0.01,
    ``b=2`` for PNP-Ib. Variants: ``--config.loss.hparams.variant=O|Iu|Ib|Ds|Dq``."""
    c.loss.name = "pnp"
    c.loss.hparams = ml_collections.ConfigDict({"variant": "Dq", "temperature": 0.01, "alpha": 4.0, "b": 2.0})


def pk_batches(c, batch_size, samples_per_class=4, *, sampler="pk"):
    """Sets ``c.batch``: P x K batches, ``batch_size // samples_per_class`` classes of
    ``samples_per_class`` images. ``sampler``: ``"m_per_class"`` (the official
    ``MPerClassSampler`` of ROADMAP/SupRank: epochs that use each image at most once),
    ``"pk_replacement"`` (PNP's ``class_random``: classes and images drawn with replacement)
    or ``"pk"`` (rankax's: each step drawn on its own)."""
    c.batch.sampler = sampler
    c.batch.classes_per_batch = batch_size // samples_per_class
    c.batch.samples_per_class = samples_per_class


def hierarchical_batches(c, batch_size, *, batches_per_super_tuple, samples_per_class=4):
    """Sets ``c.batch``: the official hierarchical sampler (``"hierarchical_pairs"``): every
    epoch holds ``batches_per_super_tuple`` P x K batches for each pair of super-classes, in a
    shuffled order."""
    pk_batches(c, batch_size, samples_per_class, sampler="hierarchical_pairs")
    c.batch.super_classes_per_batch = 2
    c.batch.batches_per_super_tuple = batches_per_super_tuple


def step_decay(c, milestones, factor=0.3):
    """Sets ``c.optimizer``'s schedule: the learning rate x``factor`` from the start of each
    epoch in ``milestones`` (torch's ``MultiStepLR`` stepped once an epoch), counted in the
    sampler's epochs."""
    c.optimizer.schedule = "multistep"
    c.optimizer.schedule_unit = "epoch"
    c.optimizer.decay_epochs = tuple(milestones)
    c.optimizer.decay_factor = factor


def frozen_warmup(c, epochs, groups=("backbone",)):
    """Sets ``c.optimizer``: ``groups`` get no update for the first ``epochs`` epochs and every
    schedule starts counting after them (SupRank's ``warmup_step``)."""
    c.optimizer.frozen_warmup_epochs = epochs
    c.optimizer.frozen_groups = tuple(groups)
    c.optimizer.warmup_paused_schedules = "all"


def cluster_term(c, *, weight, temperature, lr, final_lr):
    """Adds ``c.loss.terms.cluster``: SupRank's ``ClusterLoss``, a normalised softmax over one
    proxy per training class (column 0 of the label paths) with its ``weight`` and
    ``temperature``; the proxies are trained by their own Adam (no weight decay) from ``lr``,
    cosine to the absolute ``final_lr``, stepped once an epoch (the loss's ``on_epoch``)."""
    c.loss.terms.cluster = ml_collections.ConfigDict(
        {
            "name": "normalized_softmax",
            "weight": weight,
            "label_level": 0,
            "hparams": {"temperature": temperature},
            "optimizer": {
                "name": "adam",
                "lr": lr,
                "weight_decay": 0.0,
                "schedule": "cosine",
                "final_lr": final_lr,
                "schedule_unit": "epoch",
            },
        }
    )


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


def dyml(c, variant, *, root):
    """Sets ``c.dataset``: DyML-``variant`` (``rankax.data.dyml``) from ``root``, SupRank's
    ``dataset/dyml_*.yaml`` pipeline: random-resized crop 224 (area 0.16-1, ratio 0.75-1.33)
    and flip for training; test resize 256 (shorter side), centre crop 224. Vehicle and
    Animal evaluate the ``benchmark`` granularity ("fine"; set ``--config.dataset.benchmark``
    to "middle" or "coarse" for the other two)."""
    c.dataset = ml_collections.ConfigDict(
        {
            "name": "dyml",
            "variant": variant,
            "root": root,
            "benchmark": "fine",
            "image_size": 224,
            "resize_size": 256,
            "test_resize_mode": "shorter",
            "crop_scale": (0.16, 1.0),
            "crop_ratio": (0.75, 1.33),
            "draft_train": False,  # full decode, as the official code (True: JPEG draft decoding)
        }
    )
