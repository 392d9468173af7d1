"""The official recipe of every published-experiment config, value by value, with its source.

``RECIPES[config_name]`` lists :class:`Official` entries: a config key (dotted, as in
``config.to_dict()``), the value the official run uses -- written in the config's own units
(e.g. ``optimizer.decay_at`` as fractions of the run, ``num_steps`` as epochs x the official
sampler's batches per epoch) -- the ``repo:path`` it comes from, and a note. ``experiments/
recipes.py`` sets each entry beside the config's value and writes ``docs/recipes.md``.

Status of an entry (computed by ``experiments/recipes.py``, never written here):

* ``match``: the config holds the official value.
* ``deviation``: the config differs; ``why`` gives the reason.
* ``pending``: the config does not set the key (its mechanism or value is still missing); the
  note says what it needs. No entry is pending today.
* ``undetermined``: the official material does not fix the value (``UNDETERMINED``); the note
  states the choice the config makes.

Which official revisions: ROADMAP ``v1.0.0`` (= ``6d3c76c`` of 2021-12-10, the NeurIPS'21 release,
published without parent commits; the development history of April-June 2021 survives on the
pull-request refs, ``refs/pull/3/head`` = ``e0e57df``, with older key names such as ``temp`` and
``margin``). Later commits change the README, requirements, the evaluation helper, make the
``ray`` imports of ``engine/train.py``, ``engine/chepoint.py``, ``run.py`` and
``single_experiment_runner.py`` lazy (no change to training) and, in 2022, change the piecewise
step function of ``SupAP`` -- the configs keep the release's function, ``variant="neurips"``.
SupRank at its only code commit ``99041e8`` (README updated in ``d3d0e3c``). HAPPIER
``5af91b3``: the SupRank code supersedes it, except where SupRank's DyML loss yamls name an
optimizer for the proxies that their optimizer files lack; the HAPPIER release of those runs
names it, and the configs follow it. PNPloss ``582ffab`` (its 2023 commit
``809a508`` fixes the sign of the PNP-D_q return value); deep-image-retrieval ``610247f``
(models and evaluation only: no training script).

A package, not ``configs/official.py``: ``tests/test_configs.py`` runs every ``configs/*.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

UNDETERMINED = "not determined by the official material"

ROADMAP = "elias-ramzi/ROADMAP@v1.0.0:roadmap/config/"
ROADMAP_README = "elias-ramzi/ROADMAP@v1.0.0:README.md"
SUPRANK_CODE = "elias-ramzi/SupRank@99041e8:suprank/"
SUPRANK = SUPRANK_CODE + "config/"
SUPRANK_README = "elias-ramzi/SupRank@d3d0e3c:README.md"
PNP = "interestingzhuo/PNPloss@582ffab:"
NAVER = "naver/deep-image-retrieval@610247f:"
PAPER_ARCHIVE = "ROADMAP paper (NeurIPS 2021) tables, via a community archive; not in the repository"


@dataclasses.dataclass(frozen=True)
class Official:
    """One official value: ``key`` (dotted config key), ``value``, ``source``, ``note``, and
    ``why``: the reason the config deviates from it (required when it does)."""

    key: str
    value: Any
    source: str
    note: str = ""
    why: str = ""


V = Official  # short alias for the tables below


# ----------------------------------------------------------------------------- recipe keys
PRECISION = "precision"  # "mixed": bf16 compute, float32 params (official: torch fp16 autocast)
FP16_WHY = (
    "bfloat16 compute instead of float16: float16 autocast needs loss scaling (GradScaler) and "
    "overflows where bfloat16, with float32's exponent range, does not; TPUs and recent GPUs "
    "compute bfloat16 natively; params, optimizer state and the loss stay float32"
)
MODEL_SELECTION = "model_selection"  # "last" | "best" (by best_metric)
LAYERNORM = "model.feature_norm"  # "layernorm": LayerNorm without affine on pooled features
DISTILLED = "model.pretrained_distilled"  # DeiT weights from the distilled checkpoint


def _full_decode(source):
    return V("dataset.draft_train", False, source, "PIL decodes the whole image before RandomResizedCrop")


def _images(size, resize, *, train_resize, test_mode, source, crop_scale=(0.16, 1.0)):
    out = [
        V("dataset.image_size", size, source, "RandomResizedCrop size / CenterCrop size"),
        V("dataset.resize_size", resize, source, "test Resize"),
        V("dataset.test_resize_mode", test_mode, source, "Resize(int): shorter side; Resize([s, s]): square"),
        V("dataset.crop_scale", crop_scale, source, "RandomResizedCrop scale"),
        V("dataset.crop_ratio", (0.75, 1.33), source, "RandomResizedCrop ratio"),
    ]
    if train_resize is not None:
        out.append(V("dataset.train_resize_size", train_resize, source, "Resize before the random crop"))
    return [*out, _full_decode(source)]


def _roadmap_loss(start, offset, source):
    return [
        V("loss.name", "roadmap", source, "CalibrationLoss + SupAP"),
        V("loss.hparams.supap_weight", 1.0, source),
        V("loss.hparams.calibration_weight", 1.0, source),
        V("loss.hparams.temperature", 0.01, source, "tau"),
        V("loss.hparams.rho", 100.0, source),
        V("loss.hparams.delta", 0.05, source),
        V("loss.hparams.start", start, source, "SupAP default 0.5 when the yaml omits it"),
        V("loss.hparams.offset", offset, source),
        V(
            "loss.hparams.variant",
            "neurips",
            "elias-ramzi/ROADMAP@v1.0.0:roadmap/losses/smooth_rank_ap.py",
            "step_rank of the release: rho * x + offset above delta",
        ),
        V("loss.hparams.pos_margin", 0.9, source),
        V("loss.hparams.neg_margin", 0.6, source),
        V(
            "loss.include_self",
            True,
            "elias-ramzi/ROADMAP@v1.0.0:roadmap/losses/smooth_rank_ap.py",
            "quick_forward: the label matrix keeps the diagonal; the query is its own positive",
        ),
        V("loss.hierarchical", False, ROADMAP + "experience/default.yaml", "with_super_labels: False"),
    ]


def _resnet(pooling, source, layernorm):
    out = [
        V("model.name", "resnet50", source),
        V("model.pooling", pooling, source),
        V("model.embedding_dim", 512, source),
        V("model.frozen_bn", True, source, "freeze_batch_norm: BN in eval mode"),
        V("optimizer.freeze_bn_params", False, source, "BN scale/bias still train"),
    ]
    if layernorm:
        out.append(V(LAYERNORM, "layernorm", source, "norm_features: True (LayerNorm, no affine)"))
    else:
        out.append(V(LAYERNORM, None, source, "norm_features: False"))
    return out


def _deit(source):
    return [
        V(
            "model.name",
            "deit_small",
            source,
            "vit_deit_distilled: DeiT-S/16 (384-d) built from the distilled model",
        ),
        V("model.pooling", "cls", source, "class token; the distillation token is dropped"),
        V("model.embedding_dim", None, source, "without_fc: True (384-d class token)"),
        V(
            DISTILLED,
            True,
            "elias-ramzi/ROADMAP@v1.0.0:roadmap/models/net.py",
            "from deit_small_distilled_patch16_224 minus its distillation token",
        ),
    ]


def _common_roadmap(reported, source_reported=PAPER_ARCHIVE):
    return [
        V("seed", 333, ROADMAP_README, "experience.seed=333 in every README command"),
        V(
            PRECISION,
            "fp16 autocast",
            ROADMAP + "model/resnet.yaml",
            "with_autocast: True (torch fp16 autocast + GradScaler); here precision='mixed'",
            why=FP16_WHY,
        ),
        V(
            MODEL_SELECTION,
            "last",
            "elias-ramzi/ROADMAP@v1.0.0:roadmap/engine/train.py",
            "the run ends on its last epoch (best_model is only logged)",
        ),
        V(
            "best_metric",
            "map@r",
            ROADMAP + "experience/default.yaml",
            "principal_metric: mean_average_precision_at_r_level0, the metric best_model is logged by "
            "(unused here: model_selection='last')",
        ),
        V("reported.recall_at_1", reported, source_reported),
    ]


def _every(steps_per_epoch, epochs, source, note=""):
    return V(
        "eval_every", steps_per_epoch * epochs, source, f"test_eval_freq: {epochs} epochs {note}".strip()
    )


def _hier_sampler(batch, per_pair, steps, epochs, source):
    return [
        V(
            "batch.sampler",
            "hierarchical_pairs",
            source,
            f"HierarchicalSampler: every super-class pair {per_pair} times an epoch, batches shuffled",
        ),
        V("batch.classes_per_batch", batch // 4, source, f"batch_size {batch} / samples_per_class 4"),
        V("batch.samples_per_class", 4, source),
        V("batch.super_classes_per_batch", 2, source),
        V("batch.batches_per_super_tuple", per_pair, source),
        V(
            "num_steps",
            steps * epochs,
            source,
            f"{epochs} epochs x C(12, 2) = 66 super-class pairs x {per_pair} = {steps} batches",
        ),
    ]


def _m_per_class(batch, epochs, train_images, source):
    per_epoch = train_images // batch
    return [
        V(
            "batch.sampler",
            "m_per_class",
            source,
            "MPerClassSampler: P x K batches, each image at most once an epoch, remainders dropped",
        ),
        V("batch.classes_per_batch", batch // 4, source, f"batch_size {batch} / samples_per_class 4"),
        V("batch.samples_per_class", 4, source),
        V(
            "num_epochs",
            epochs,
            ROADMAP_README,
            f"experience.max_iter={epochs} epochs of the sampler: the batches it fills without reusing "
            f"an image (at most {per_epoch}; the length depends on the class sizes)",
        ),
    ]


def _adam(name, lr, head_lr, wd, source, note=""):
    return [
        V("optimizer.name", name, source, note),
        V(
            "optimizer.lr",
            lr,
            source,
            "backbone group" if head_lr is not None else "one group, all parameters",
        ),
        V(
            "optimizer.head_lr",
            head_lr,
            source,
            "fc group" if head_lr is not None else "no separate head group",
        ),
        V("optimizer.weight_decay", wd, source),
    ]


def _multistep(milestones, epochs, source, gamma=0.3):
    return [
        V("optimizer.schedule", "multistep", source, "MultiStepLR, stepped each epoch"),
        V(
            "optimizer.decay_epochs",
            tuple(milestones),
            source,
            f"milestones {list(milestones)} of {epochs} epochs (the sampler's epochs)",
        ),
        V("optimizer.decay_factor", gamma, source, "gamma"),
        V("optimizer.schedule_unit", "epoch", source, "scheduler.step() once an epoch"),
    ]


SOP_IMAGES = 59_551
CUB_IMAGES = 5_864
CARS_IMAGES = 8_054
INAT_IMAGES = 325_846

R_SOP_RN = (
    _images(256, 288, train_resize=288, test_mode="square", source=ROADMAP + "transform/sop_big.yaml")
    + _resnet("avg", ROADMAP + "model/resnet.yaml", layernorm=False)
    + _roadmap_loss(0.5, 1.44, ROADMAP + "loss/roadmap.yaml")
    + _hier_sampler(128, 10, 660, 100, ROADMAP + "dataset/sop.yaml")
    + _adam("adam", 1e-5, 2e-5, 1e-4, ROADMAP + "optimizer/sop.yaml", "torch Adam: L2 added to the gradient")
    + _multistep((30, 70), 100, ROADMAP + "optimizer/sop.yaml")
    + [_every(660, 5, ROADMAP + "experience/default.yaml")]
    + _common_roadmap(83.1)
)

R_SOP_DEIT = (
    _images(224, 256, train_resize=256, test_mode="square", source=ROADMAP + "transform/sop.yaml")
    + _deit(ROADMAP + "model/deit.yaml")
    + _roadmap_loss(0.5, 1.44, ROADMAP + "loss/roadmap.yaml")
    + _hier_sampler(128, 10, 660, 75, ROADMAP + "dataset/sop.yaml")
    + _adam("adamw", 1e-5, None, 5e-4, ROADMAP + "optimizer/sop_deit.yaml")
    + _multistep((25, 50), 75, ROADMAP + "optimizer/sop_deit.yaml")
    + [_every(660, 5, ROADMAP + "experience/default.yaml")]
    + _common_roadmap(
        86.0,
        PAPER_ARCHIVE + " (the archive lists 86 under both DeiT-B and DeiT-S; the official command builds "
        "DeiT-S distilled)"
    )
)

R_CUB_RN = (
    _images(256, 288, train_resize=None, test_mode="shorter", source=ROADMAP + "transform/cub_big.yaml")
    + _resnet("max", ROADMAP + "model/resnet_max_ln.yaml", layernorm=True)
    + _roadmap_loss(0.5, 1.44, ROADMAP + "loss/roadmap.yaml")
    + _m_per_class(128, 200, CUB_IMAGES, ROADMAP + "dataset/cub.yaml")
    + _adam("adam", 1e-6, None, 4e-4, ROADMAP + "optimizer/cub.yaml")
    + [V("optimizer.schedule", "constant", ROADMAP + "optimizer/cub.yaml", "no scheduler")]
    + [_every(45, 5, ROADMAP + "experience/default.yaml", "(45 batches an epoch at most)")]
    + _common_roadmap(68.5)
)

R_CUB_DEIT = (
    _images(224, 256, train_resize=None, test_mode="shorter", source=ROADMAP + "transform/cub.yaml")
    + _deit(ROADMAP + "model/deit.yaml")
    + _roadmap_loss(0.5, 1.44, ROADMAP + "loss/roadmap.yaml")
    + _m_per_class(128, 150, CUB_IMAGES, ROADMAP + "dataset/cub.yaml")
    + _adam("adamw", 1e-6, None, 5e-4, ROADMAP + "optimizer/cub_deit.yaml")
    + [V("optimizer.schedule", "constant", ROADMAP + "optimizer/cub_deit.yaml", "no scheduler")]
    + [_every(45, 5, ROADMAP + "experience/default.yaml", "(45 batches an epoch at most)")]
    + _common_roadmap(
        77.4, PAPER_ARCHIVE + " (the archive says DeiT-B; the official command builds DeiT-S distilled)"
    )
)

R_INAT_RN = (
    _images(224, 256, train_resize=None, test_mode="shorter", source=ROADMAP + "transform/inaturalist.yaml")
    + _resnet("avg", ROADMAP + "model/resnet.yaml", layernorm=False)
    + _roadmap_loss(0.0, 1.0, ROADMAP + "loss/roadmap_inat.yaml")
    + _m_per_class(384, 90, INAT_IMAGES, ROADMAP + "dataset/inaturalist.yaml + README batch_size=384")
    + _adam("adam", 1e-5, 2e-5, 4e-4, ROADMAP + "optimizer/inaturalist.yaml")
    + _multistep((30, 70), 90, ROADMAP + "optimizer/inaturalist.yaml")
    + [_every(848, 5, ROADMAP + "experience/default.yaml", "(848 batches an epoch at most)")]
    + _common_roadmap(69.1)
)

_NO_COMMAND = "the README has no command for this run"
#: The pre-release DeiT iNat runs: they support the choices below without fixing them.
_DEIT_INAT_DEV = ("elias-ramzi/ROADMAP@e0e57df (refs/pull/3/head):jean-zay/submit_scripts/"
                  "train_inaturalist_transformer_abs.slurm runs it at batch 128, 224 and 384, max_iter=90, "
                  "seed=333 (which gave the paper's number is not recorded)")
R_INAT_DEIT = (
    _images(224, 256, train_resize=None, test_mode="shorter", source=ROADMAP + "transform/inaturalist.yaml")
    + _deit(ROADMAP + "model/deit.yaml")
    + _roadmap_loss(0.0, 1.0, ROADMAP + "loss/roadmap_inat.yaml")
    + [
        V(
            "batch.sampler",
            "m_per_class",
            ROADMAP + "dataset/inaturalist.yaml",
            "MPerClassSampler: each image at most once an epoch",
        ),
        V("batch.samples_per_class", 4, ROADMAP + "dataset/inaturalist.yaml"),
        V(
            "batch.classes_per_batch",
            UNDETERMINED,
            ROADMAP_README,
            f"{_NO_COMMAND}; the yaml says 128, the ResNet-50 command 384: the config takes 384 (96 x 4); "
            + _DEIT_INAT_DEV,
        ),
        V(
            "num_epochs",
            UNDETERMINED,
            ROADMAP_README,
            f"{_NO_COMMAND}; the config takes the 90 epochs of the ResNet-50 command; " + _DEIT_INAT_DEV,
        ),
    ]
    + _adam("adamw", 1e-5, None, 5e-4, ROADMAP + "optimizer/inaturalist_deit.yaml")
    + _multistep((30, 70), 90, ROADMAP + "optimizer/inaturalist_deit.yaml")
    + [_every(848, 5, ROADMAP + "experience/default.yaml", "(848 batches an epoch at most)")]
    + [V("seed", UNDETERMINED, ROADMAP_README,
         f"{_NO_COMMAND}; the config takes 333 as the other runs; " + _DEIT_INAT_DEV)]
    + _common_roadmap(73.6)[1:]
)


_H_RANK = (("with_hrank", False), ("beta", 25.0), ("gamma", 0.5), ("leak", 10.0))


def _h_rank(loss_src):
    """SupHAPLoss's H-rank options as the loss yaml sets them (``with_hrank: False``: the
    others unused)."""
    return [V(f"loss.hparams.{name}", value, loss_src) for name, value in _H_RANK]


def _suprank(hier_levels_note, *, lr, wd, final_lr, final_note, start, offset, sampler, epochs_source):
    loss_src = SUPRANK + ("loss/HAPPIER_SOP.yaml" if start else "loss/HAPPIER_inat.yaml")
    opt_src = SUPRANK + ("optimizer/sop.yaml" if start else "optimizer/inat.yaml")
    return (
        [
            V("seed", 0, SUPRANK_README, "seed=0"),
            V("loss.name", "hap", loss_src, "SupHAPLoss (the 0.9 term)"),
            V("loss.hierarchical", True, loss_src, f"hierarchy_level: MULTI; {hier_levels_note}"),
            V(
                "loss.include_self",
                True,
                SUPRANK_CODE + "losses/tools/differentiable_rank.py",
                "the query is kept as its own positive",
            ),
            V("loss.hparams.temperature", 0.01, loss_src, "tau"),
            V("loss.hparams.rho", 100.0, loss_src),
            V("loss.hparams.delta", 0.05, loss_src),
            V("loss.hparams.start", start, loss_src),
            V("loss.hparams.offset", offset, loss_src),
            V(
                "loss.hparams.variant",
                "fixed",
                SUPRANK_CODE + "losses/tools/differentiable_rank.py",
                "step_rank: rho * (x - delta) + offset above delta",
            ),
            *_h_rank(loss_src),
            V("loss.weight", 0.9, loss_src, "weight: [0.9, 0.1], the SupHAPLoss weight"),
            V(
                "loss.terms.cluster.name",
                "normalized_softmax",
                loss_src,
                "ClusterLoss (one center per class)",
            ),
            V("loss.terms.cluster.weight", 0.1, loss_src),
            V("loss.terms.cluster.label_level", 0, loss_src, "hierarchy_level: 0 (fine classes)"),
            V("loss.terms.cluster.hparams.temperature", 0.05, loss_src),
            V("loss.terms.cluster.optimizer.name", "adam", loss_src, "torch.optim.Adam for the proxies"),
            V("loss.terms.cluster.optimizer.lr", 10.0, loss_src),
            V("loss.terms.cluster.optimizer.weight_decay", 0.0, loss_src),
            V(
                "loss.terms.cluster.optimizer.schedule",
                "cosine",
                loss_src,
                "CosineAnnealingLR(T_max=max_iter)",
            ),
            V("loss.terms.cluster.optimizer.final_lr", 0.1, loss_src, "eta_min: 0.1"),
            V(
                "loss.terms.cluster.optimizer.schedule_unit",
                "epoch",
                SUPRANK_CODE + "losses/cluster_loss.py",
                "on_epoch: the proxies' scheduler steps once an epoch",
            ),
            V("model.name", "resnet50", SUPRANK + "model/resnet_ln.yaml"),
            V("model.pooling", "avg", SUPRANK + "model/resnet_ln.yaml", "pooling: default (average)"),
            V("model.embedding_dim", 512, SUPRANK + "model/resnet_ln.yaml"),
            V("model.frozen_bn", True, SUPRANK + "model/resnet_ln.yaml", "freeze_batch_norm: True"),
            V(LAYERNORM, "layernorm", SUPRANK + "model/resnet_ln.yaml", "norm_features: True"),
            V("optimizer.name", "adam", opt_src),
            V("optimizer.lr", lr, opt_src, "backbone"),
            V("optimizer.head_lr", 2 * lr, opt_src, "head: 2 x backbone"),
            V("optimizer.weight_decay", wd, opt_src),
            V(
                "optimizer.schedule",
                "cosine",
                opt_src,
                "CosineAnnealingLR over max_iter epochs, stepped per epoch",
            ),
            V("optimizer.final_lr", final_lr, opt_src, final_note),
            V(
                "optimizer.schedule_unit",
                "epoch",
                SUPRANK_CODE + "engine/train.py",
                "scheduler.step() once an epoch",
            ),
            V("optimizer.frozen_warmup_epochs", 5, SUPRANK_README, "warmup_step=5 (epochs 1-5)"),
            V("optimizer.frozen_groups", ("backbone",), SUPRANK + "default.yaml", "warmup_keys: [backbone]"),
            V(
                "optimizer.warmup_paused_schedules",
                "all",
                SUPRANK_CODE + "engine/train.py",
                "no scheduler (nor the proxies' on_epoch) steps while warmup_step >= epoch",
            ),
            V(
                PRECISION,
                "fp16 autocast",
                SUPRANK + "model/resnet_ln.yaml",
                "with_autocast: True (torch fp16 autocast); here precision='mixed'",
                why=FP16_WHY,
            ),
            V(
                MODEL_SELECTION,
                "last",
                SUPRANK_CODE + "engine/train.py",
                "the last epoch is saved and reported",
            ),
            V(
                "eval_level_means",
                False,
                SUPRANK + "evaluation/accuracy_calculator.yaml",
                "overall_accuracy: False: each level's metrics (<metric>_level<l>) beside H-AP, NDCG and "
                "ASI of the paths (<metric>_multi), no mean over the levels",
            ),
        ]
        + sampler
        + [
            V(
                "reported.recall_at_1",
                UNDETERMINED,
                epochs_source,
                "the SupRank/HAPPIER tables were not consulted",
            ),
            V("reported.hap", UNDETERMINED, epochs_source, "the SupRank/HAPPIER tables were not consulted"),
        ]
    )


S_SOP = _images(
    224, 256, train_resize=256, test_mode="square", source=SUPRANK + "dataset/sop.yaml"
) + _suprank(
    "labels [product, category], relevance 'pop', alpha 1",
    lr=5e-5,
    wd=1e-4,
    final_lr=0.0,
    final_note="eta_min: 0",
    start=0.5,
    offset=1.44,
    sampler=[
        V(
            "batch.sampler",
            "hierarchical_pairs",
            SUPRANK + "dataset/sop.yaml",
            "HierarchicalSampler (pytorch-metric-learning's): every pair 5 times an epoch, shuffled",
        ),
        V("batch.classes_per_batch", 64, SUPRANK + "dataset/sop.yaml", "batch_size 256 / 4"),
        V("batch.samples_per_class", 4, SUPRANK + "dataset/sop.yaml"),
        V("batch.super_classes_per_batch", 2, SUPRANK + "dataset/sop.yaml"),
        V("batch.batches_per_super_tuple", 5, SUPRANK + "dataset/sop.yaml"),
        V("num_steps", 33_000, SUPRANK_README, "max_iter=100 epochs x 66 pairs x 5 = 330 batches"),
        V("eval_every", 20 * 330, SUPRANK + "default.yaml", "test_eval_freq: 20 epochs"),
        V(
            "eval_levels",
            (0, 1),
            SUPRANK_README,
            "accuracy_calculator.compute_for_hierarchy_levels=[0,1]: AP, P@1, mAP@R, R@k at the product "
            "and category levels (suprank/engine/accuracy_calculator.py batch_metrics)",
        ),
    ],
    epochs_source=SUPRANK_README,
)

S_INAT = (
    _images(224, 256, train_resize=None, test_mode="shorter", source=SUPRANK + "dataset/inat_full.yaml")
    + [V("dataset.hierarchy", "full", SUPRANK + "dataset/inat_full.yaml", "hierarchy_mode: full (7 levels)")]
    + _suprank(
        "7 taxonomy levels, relevance 'pop', alpha 1",
        lr=1e-5,
        wd=4e-4,
        final_lr=1e-6,
        final_note="eta_min: 1e-6, absolute, for both groups",
        start=0.0,
        offset=1.0,
        sampler=[
            V(
                "batch.sampler",
                "m_per_class",
                SUPRANK + "dataset/inat_full.yaml",
                "MPerClassSampler: each image at most once an epoch",
            ),
            V("batch.classes_per_batch", 64, SUPRANK + "dataset/inat_full.yaml", "batch_size 256 / 4"),
            V("batch.samples_per_class", 4, SUPRANK + "dataset/inat_full.yaml"),
            V(
                "num_epochs",
                100,
                SUPRANK + "default.yaml",
                "max_iter: 100 epochs of the sampler (at most 1,272 batches each, set by the class sizes)",
            ),
            V("eval_every", 20 * 1272, SUPRANK + "default.yaml", "test_eval_freq: 20 epochs"),
            V(
                "eval_levels",
                (0, 1, 2, 3, 4, 5, 6),
                SUPRANK_README,
                "accuracy_calculator.compute_for_hierarchy_levels=[0,1,2,3,4,5,6] (iNat-full): AP, P@1, "
                "mAP@R, R@k at each taxonomy level (suprank/engine/accuracy_calculator.py batch_metrics)",
            ),
        ],
        epochs_source=SUPRANK_README,
    )
)


# --------------------------------------------------- SupRank SOP runs with the R@k and NDCG losses
_SOP_NO_COMMAND = (
    "the README has no command for this run: the config takes the SOP command with the loss swapped"
)
_SOP_HAP_ONLY = (
    "loss.name", "loss.hierarchical", "loss.weight", "loss.terms.cluster.weight",
    *(f"loss.hparams.{name}" for name, _ in _H_RANK),
)


#: Keys where a bare ``loss=<file>`` command (``default.yaml``: ``model: resnet_ln_gem``,
#: ``warmup_step: null``) and the SOP command differ; elsewhere the two agree.
_SOP_COMMAND_ONLY = (
    "model.pooling", "optimizer.frozen_warmup_epochs", "optimizer.frozen_groups",
    "optimizer.warmup_paused_schedules", "eval_levels",
)


def _sop_swapped(loss_file, entries):
    """S_SOP with its loss entries replaced by ``entries`` (from ``loss/<loss_file>``); the
    values a bare command would set otherwise become the config's choice."""
    src = SUPRANK + "loss/" + loss_file
    kept = [
        e if e.source != SUPRANK + "loss/HAPPIER_SOP.yaml" else dataclasses.replace(e, source=src)
        for e in S_SOP
        if e.key not in _SOP_HAP_ONLY and not e.key.startswith("reported.")
    ]
    kept = [_from_sop(e) if e.key in _SOP_COMMAND_ONLY else e for e in kept]
    seed = [V("seed", 0, SUPRANK + "default.yaml", f"seed: 0, as the SOP command's ({_SOP_NO_COMMAND})")]
    return seed + [e for e in kept if e.key != "seed"] + [V(k, v, src, n) for k, v, n in entries]


def _from_sop(entry):
    """An entry where the SOP command and a bare command (``default.yaml``) differ: the
    config's choice, the SOP command's value kept in the note."""
    shown = entry.value if isinstance(entry.value, str) else repr(entry.value)
    note = (f"{_SOP_NO_COMMAND}, {shown} ({entry.note}); a bare command gets default.yaml's "
            "model: resnet_ln_gem (GeM pooling), warmup_step: null and evaluation/accuracy_calculator.yaml's "
            "compute_for_hierarchy_levels: [0]")
    return dataclasses.replace(entry, value=UNDETERMINED, note=note, why="")


S_SOP_RECALL = _sop_swapped(
    "ROADRatk_pp_SOP.yaml",
    [
        ("loss.name", "sup_recall_at_k", "SupRecallLoss"),
        ("loss.hierarchical", False, "hierarchy_level: 0 (positives: same product)"),
        ("loss.hparams.ks", (1, 2, 4, 8, 16), "at_k"),
        ("loss.hparams.k_temperature", 1.0, "temp"),
        ("loss.weight", 0.5, "weight: empty -> 1 / 2 each (suprank/getter.py get_loss)"),
        ("loss.terms.cluster.weight", 0.5, "weight: empty -> 1 / 2 each"),
    ],
) + [V("reported.recall_at_1", UNDETERMINED, SUPRANK_README, "the SupRank tables were not consulted")]

S_SOP_NDCG = _sop_swapped(
    "roadndcg_sop.yaml",
    [
        ("loss.name", "sup_ndcg", "SupNDCGLoss"),
        ("loss.hierarchical", True, "hierarchy_level: MULTI (gains from the shared levels)"),
        ("loss.weight", 0.9, "weight: [0.9, 0.1]"),
        ("loss.terms.cluster.weight", 0.1, "weight: [0.9, 0.1]"),
    ],
) + [
    V("reported.recall_at_1", UNDETERMINED, SUPRANK_README, "the SupRank tables were not consulted"),
    V("reported.ndcg", UNDETERMINED, SUPRANK_README, "the SupRank tables were not consulted"),
]


# ------------------------------------------------------------------------------ HAPPIER on DyML


def _dyml(
    variant, *, loss_file, weights, model_file, opt_file, lr, head_lr, final_lr, epochs, warmup, proxies
):
    data_src = SUPRANK + f"dataset/dyml_{variant}.yaml"
    loss_src, model_src, opt_src = SUPRANK + loss_file, SUPRANK + model_file, SUPRANK + opt_file
    product = variant == "product"
    # The proxies' optimizer is HAPPIER's (see _PROXIES_VA): its optimizer file of the same name.
    proxy_opt_src = HAPPIER + opt_file
    proxy_group = "opt.1 (fc), as opt.0" if head_lr else "opt.0"
    entries = [
        V("seed", 0, SUPRANK_README, "seed=0"),
        V("dataset.variant", variant, data_src, f"DyMLDataset on dyml_{variant}"),
        *_images(224, 256, train_resize=None, test_mode="shorter", source=data_src),
        *(
            []
            if product  # one all-in-one benchmark (mini-bmk_all_in_one: 3 levels, queries = gallery)
            else [
                V(
                    "dataset.benchmark",
                    ("fine", "middle", "coarse"),
                    data_src,
                    "three benchmarks, averaged (README accuracy_calculator.overall_accuracy=True)",
                    why="rankax evaluates one benchmark a run: set dataset.benchmark and average the three",
                )
            ]
        ),
        V("loss.name", "hap", loss_src, "SupHAPLoss"),
        V("loss.hierarchical", True, loss_src, "hierarchy_level: MULTI, labels [fine, middle, coarse]"),
        V("loss.include_self", True, SUPRANK_CODE + "losses/tools/differentiable_rank.py"),
        V("loss.hparams.temperature", 0.01, loss_src, "tau"),
        V("loss.hparams.rho", 100.0, loss_src),
        V("loss.hparams.delta", 0.05, loss_src),
        V("loss.hparams.start", 0.5, loss_src),
        V("loss.hparams.offset", 1.44, loss_src),
        V(
            "loss.hparams.variant",
            "fixed",
            SUPRANK_CODE + "losses/tools/differentiable_rank.py",
            "step_rank: rho * (x - delta) + offset above delta (HAPPIER@5af91b3's losses/hap_loss.py: the "
            "same; its first commit dcd0c82 had rho * x + offset, but its loss configs name classes it "
            "lacks, SupHAP and NormalizedSoftmaxLoss: 4d7c054 made them run and changed the step)",
        ),
        *_h_rank(loss_src),
        V("loss.weight", weights[0], loss_src, f"weight: {list(weights)}"),
        V("loss.terms.cluster.name", "normalized_softmax", loss_src, "ClusterLoss"),
        V("loss.terms.cluster.weight", weights[1], loss_src),
        V("loss.terms.cluster.label_level", 0, loss_src, "hierarchy_level: 0"),
        V(
            "loss.terms.cluster.hparams.temperature",
            0.05,
            SUPRANK_CODE + "losses/cluster_loss.py",
            "temperature (the yaml's or the class default)",
        ),
        V("loss.terms.cluster.optimizer.name", "sgd", proxies[0], proxies[2]),
        V("loss.terms.cluster.optimizer.lr", proxies[1], proxies[0], proxies[2]),
        *(
            V(f"loss.terms.cluster.optimizer.{key}", value, proxy_opt_src, f"{proxy_group}: {note}")
            for key, value, note in (
                ("weight_decay", 1e-4, "weight_decay: 0.0001"),
                ("momentum", 0.9, "momentum: 0.9"),
                ("nesterov", True, "nesterov: True"),
                ("schedule", "cosine", "scheduler_on_epoch: CosineAnnealingLR(T_max=max_iter)"),
                ("final_lr", final_lr, f"eta_min: {final_lr:g}"),
            )
        ),
        V(
            "loss.terms.cluster.optimizer.schedule_unit",
            "epoch",
            "elias-ramzi/HAPPIER@5af91b3:happier/engine/train.py",
            "scheduler_on_epoch: ClusterLoss.on_epoch() steps it once an epoch",
        ),
        V("model.name", "resnet34", model_src, "backbone_name: resnet34 (basic blocks)"),
        V("model.pooling", "avg", model_src, "pooling: default"),
        V("model.embedding_dim", 512, model_src),
        V("model.frozen_bn", product, model_src, f"freeze_batch_norm: {product}"),
        V(LAYERNORM, "layernorm", model_src, "norm_features: True"),
        V("optimizer.name", "sgd", opt_src, "torch.optim.SGD"),
        V("optimizer.lr", lr, opt_src, "backbone" if head_lr else "net: one group"),
        V(
            "optimizer.head_lr",
            head_lr,
            opt_src,
            "head: 2 x backbone" if head_lr else "no separate head group",
        ),
        V("optimizer.weight_decay", 1e-4, opt_src),
        V("optimizer.momentum", 0.9, opt_src),
        V("optimizer.nesterov", True, opt_src, "nesterov: True"),
        V("optimizer.schedule", "cosine", opt_src, "CosineAnnealingLR(T_max=max_iter)"),
        V("optimizer.final_lr", final_lr, opt_src, f"eta_min: {final_lr:g}"),
        V("optimizer.schedule_unit", "epoch", SUPRANK_CODE + "engine/train.py", "once an epoch"),
        V(
            "optimizer.frozen_warmup_epochs",
            warmup,
            SUPRANK_README if warmup else SUPRANK + "default.yaml",
            "warmup_step=5 (backbone frozen)" if warmup else "warmup_step: null (the command sets none)",
        ),
        *(
            [V("optimizer.frozen_groups", ("backbone",), SUPRANK + "default.yaml", "warmup_keys: [backbone]")]
            if warmup
            else []
        ),
        V("batch.sampler", "m_per_class", data_src, "MPerClassSampler"),
        V("batch.classes_per_batch", 64, data_src, "batch_size 256 / samples_per_class 4"),
        V("batch.samples_per_class", 4, data_src),
        V(
            "num_epochs",
            epochs,
            SUPRANK_README if product else SUPRANK + "default.yaml",
            f"max_iter: {epochs} epochs of the sampler",
        ),
        V(
            "eval_every",
            "every 20 epochs",
            SUPRANK + "default.yaml",
            "test_eval_freq: 20",
            why="the epoch length in batches depends on the data; the config evaluates at the end",
        ),
        V(
            "eval_ks",
            (1, 10, 20),
            SUPRANK_README,
            "P@1 (= R@1, always computed by suprank/engine/metrics.py) + recall_rate=[10,20]",
        ),
        V(
            "eval_levels",
            (0, 1, 2) if product else (0,),
            SUPRANK_README,
            f"compute_for_hierarchy_levels=[{'0,1,2' if product else '0'}], overall_accuracy=True, "
            "with_binary_asi=True, exclude=[NDCG,H-AP]: AP, P@1, mAP@R, R@10/20 and binary ASI per level, "
            + ("averaged over the levels (intra_set_overall_accuracy_hook; its ASI also averages ASI_multi)"
               if product else "averaged over the three benchmarks (inter_set_overall_accuracy_hook)")
            + " -- suprank/engine/accuracy_calculator.py, overall_accuracy_hook.py",
        ),
        V(
            "best_metric",
            "recall@1",
            SUPRANK_CODE + "engine/train.py",
            "unused: the last epoch is reported (model_selection='last'); P@1 is one of the official metrics",
        ),
        V(PRECISION, "mixed", model_src, "with_autocast: True; here bfloat16 compute, float32 params"),
        V(
            MODEL_SELECTION,
            "last",
            SUPRANK_CODE + "engine/train.py",
            "the last epoch is reported",
        ),
        V(
            "reported.recall_at_1",
            UNDETERMINED,
            SUPRANK_README,
            "the HAPPIER/SupRank tables were not consulted",
        ),
    ]
    return entries


HAPPIER = "elias-ramzi/HAPPIER@5af91b3:happier/config/"
# The proxies' optimizer, as (source, lr, note): SupRank's loss yamls point it at an optimizer
# their optimizer files lack; the HAPPIER release of the same runs names it.
_PROXIES_VA = (
    HAPPIER + "loss/HAPPIER.yaml",
    0.1,
    "SupRank's loss/HAPPIER*.yaml names ${optimizer.opt.head}, which its optimizer/dyml.yaml lacks; "
    "HAPPIER's names ${optimizer.opt.0}: optimizer/dyml.yaml's SGD (lr 0.1, wd 1e-4, cosine to 1e-6)",
)


H_DYML_VEHICLE = _dyml(
    "vehicle",
    loss_file="loss/HAPPIER.yaml",
    weights=(0.9, 0.1),
    model_file="model/dyml_resnet34.yaml",
    opt_file="optimizer/dyml.yaml",
    lr=0.1,
    head_lr=None,
    final_lr=1e-6,
    epochs=100,
    warmup=0,
    proxies=_PROXIES_VA,
)
H_DYML_ANIMAL = _dyml(
    "animal",
    loss_file="loss/HAPPIER_5.yaml",
    weights=(0.5, 0.5),
    model_file="model/dyml_resnet34.yaml",
    opt_file="optimizer/dyml.yaml",
    lr=0.1,
    head_lr=None,
    final_lr=1e-6,
    epochs=100,
    warmup=0,
    proxies=_PROXIES_VA,
)
H_DYML_PRODUCT = _dyml(
    "product",
    loss_file="loss/HAPPIER_product.yaml",
    weights=(0.9, 0.1),
    model_file="model/dyml_resnet34_product.yaml",
    opt_file="optimizer/dyml_product.yaml",
    lr=0.01,
    head_lr=0.02,
    final_lr=1e-5,
    epochs=20,
    warmup=5,
    proxies=(
        HAPPIER + "loss/HAPPIER_product.yaml",
        0.02,
        "SupRank's loss/HAPPIER_product.yaml names ${optimizer.opt.net}, which its "
        "optimizer/dyml_product.yaml lacks; HAPPIER's names ${optimizer.opt.1}: the fc group's SGD "
        "(lr 2 x 0.01, cosine to 1e-5)",
    ),
)

PNP_SOURCE = PNP + "README.md"
PNP_PARAMS = PNP + "parameters.py"


def _pnp_common():
    return [
        V("loss.name", "pnp", PNP + "criteria/PNP.py"),
        V("loss.hparams.variant", "Dq", PNP_SOURCE, "--variant PNP-D_q"),
        V("loss.hparams.alpha", 4.0, PNP_SOURCE, "--alpha 4"),
        V("loss.hparams.temperature", 0.01, PNP_PARAMS, "--anneal 0.01 (sigmoid temperature)"),
        V("loss.hparams.b", 2.0, PNP_PARAMS, "--b default 2 (used by PNP-I_b only)"),
        V(
            "loss.include_self",
            True,
            PNP + "criteria/PNP.py",
            "the diagonal stays in the positive block: the query is its own positive",
        ),
        V("model.name", "resnet50", PNP + "architectures/resnet50.py", "resnet50_frozen_normalize"),
        V("model.pooling", "avg", PNP + "architectures/resnet50.py"),
        V("model.frozen_bn", True, PNP + "architectures/resnet50.py", "BatchNorm2d modules in eval mode"),
        V(
            LAYERNORM,
            None,
            PNP + "architectures/resnet50.py",
            "avgpool -> last_linear: no normalisation of the pooled features",
        ),
        V("optimizer.name", "adam", PNP + "main.py", "torch.optim.Adam (L2 in the gradient)"),
        V(
            "dataset.crop_scale",
            (0.08, 1.0),
            PNP + "datasets/basic_dataset_scaffold.py",
            "'base': RandomResizedCrop(224), torchvision's default scale",
        ),
        V(
            "dataset.crop_ratio",
            (3 / 4, 4 / 3),
            PNP + "datasets/basic_dataset_scaffold.py",
            "'base': RandomResizedCrop(224), torchvision's default ratio",
        ),
        V("dataset.image_size", 224, PNP + "datasets/basic_dataset_scaffold.py"),
        _full_decode(PNP + "datasets/basic_dataset_scaffold.py"),
        V(
            "dataset.resize_size",
            256,
            PNP + "datasets/basic_dataset_scaffold.py",
            "test Resize(256), CenterCrop",
        ),
        V(
            "dataset.test_resize_mode",
            "shorter",
            PNP + "datasets/basic_dataset_scaffold.py",
            "Resize(256) with an int: the shorter side",
        ),
        V("dtype", "float32", PNP + "main.py", "no autocast"),
    ]


P_SOP = _pnp_common() + [
    V("seed", 0, PNP_SOURCE, "--seed 0"),
    V("model.embedding_dim", 512, PNP_SOURCE, "--embed_dim 512"),
    V(
        "batch.sampler",
        "pk_replacement",
        PNP + "datasampler/class_random_sampler.py",
        "--data_sampler class_random: classes and images drawn with replacement",
    ),
    V("batch.classes_per_batch", 96, PNP_SOURCE, "--bs 384 / --samples_per_class 4"),
    V("batch.samples_per_class", 4, PNP_SOURCE),
    V(
        "num_steps",
        62_000,
        PNP + "datasampler/class_random_sampler.py",
        "400 epochs x len(images) // bs = 155 batches",
    ),
    V("optimizer.lr", 1e-5, PNP_SOURCE, "--lr 1e-5"),
    V("optimizer.head_lr", None, PNP_PARAMS, "fc_lr -1: one learning rate"),
    V("optimizer.weight_decay", 4e-4, PNP_PARAMS, "--decay"),
    *_multistep((120, 220, 250, 280), 400, PNP_PARAMS),
    V("eval_every", 155, PNP + "main.py", "evaluated after every epoch"),
    V(
        MODEL_SELECTION,
        "best",
        PNP_PARAMS,
        "storage_metrics e_recall@1: the best checkpoint is kept and reported",
    ),
    V("best_metric", "recall@1", PNP_PARAMS, "storage_metrics: e_recall@1"),
    V(
        "reported.recall_at_1",
        UNDETERMINED,
        PNP_SOURCE,
        "the README gives no number; the paper's table was not consulted",
    ),
]


def _pnp_other(name, steps_per_epoch):
    note = f"PNPloss implements only SOP (datasets/): no official {name} run"
    kept = "(the SOP command keeps it)"
    return _pnp_common() + [
        V("optimizer.lr", 1e-5, PNP_PARAMS, f"--lr default 1e-5 {kept}"),
        V("optimizer.head_lr", None, PNP_PARAMS, "fc_lr -1: one learning rate"),
        V("optimizer.weight_decay", 4e-4, PNP_PARAMS, f"--decay default 4e-4 {kept}"),
        V("optimizer.schedule", "multistep", PNP + "main.py", "MultiStepLR(milestones=--tau, gamma=--gamma)"),
        V("optimizer.decay_factor", 0.3, PNP_PARAMS, f"--gamma default 0.3 {kept}"),
        V("optimizer.schedule_unit", "epoch", PNP + "main.py", "scheduler.step() once an epoch"),
        V(
            "batch.sampler",
            "pk_replacement",
            PNP + "datasampler/class_random_sampler.py",
            f"--data_sampler default class_random {kept}: classes and images drawn with replacement",
        ),
        V(
            "batch.samples_per_class",
            UNDETERMINED,
            PNP_PARAMS,
            f"{note}; --samples_per_class defaults to 2, the SOP command sets 4: the config takes 4",
        ),
        V(
            "model.embedding_dim",
            UNDETERMINED,
            PNP_PARAMS,
            f"{note}; --embed_dim defaults to 128, the SOP command sets 512: the config takes 512",
        ),
        V(
            MODEL_SELECTION,
            "best",
            PNP + "evaluation/__init__.py",
            "storage_metrics (default e_recall@1): a checkpoint each time the test R@1 improves",
        ),
        V(
            "eval_every",
            steps_per_epoch,
            PNP + "main.py",
            "evaluated after every epoch (of the config's batches), as for SOP",
        ),
        V(
            "batch.classes_per_batch",
            UNDETERMINED,
            PNP_PARAMS,
            f"{note}; the config takes the --bs 112 default (28 x 4)",
        ),
        V("num_steps", UNDETERMINED, PNP_PARAMS, f"{note}; the config takes the --n_epochs 150 default"),
        V(
            "optimizer.decay_epochs",
            UNDETERMINED,
            PNP_PARAMS,
            f"{note}; the config keeps the --tau defaults inside 150 epochs (120)",
        ),
        V("seed", UNDETERMINED, PNP_SOURCE, f"{note}; the config takes 0 as the SOP command"),
        V("reported.recall_at_1", UNDETERMINED, PNP_SOURCE, "the paper's table was not consulted"),
    ]


LISTWISE = [
    V("model.name", "resnet101", NAVER + "README.md", "Resnet101-AP-GeM"),
    V("model.pooling", "gem", NAVER + "dirtorch/nets/rmac_resnet.py", "GeneralizedMeanPoolingP"),
    V("model.gem_p", 3.0, NAVER + "dirtorch/nets/rmac_resnet.py", "gemp=3"),
    V(
        "model.gem_learnable",
        True,
        NAVER + "dirtorch/nets/layers/pooling.py",
        "GeneralizedMeanPoolingP: p is a parameter",
    ),
    V("model.embedding_dim", 2048, NAVER + "dirtorch/nets/rmac_resnet.py", "out_dim=2048"),
    V("loss.name", "histogram_ap", NAVER + "dirtorch/loss.py", "APLoss"),
    V(
        "loss.hparams.num_bins",
        UNDETERMINED,
        NAVER + "dirtorch/loss.py",
        "no training script: the config takes APLoss's default nq=25 (the paper was not consulted)",
    ),
    V("loss.hparams.score_range", (0.0, 1.0), NAVER + "dirtorch/loss.py", "APLoss(min=0, max=1) default"),
    V("loss.hparams.tie_aware", False, NAVER + "dirtorch/loss.py", "APLoss, not TAPLoss"),
    V(
        "optimizer.lr",
        UNDETERMINED,
        NAVER + "README.md",
        "no training script is released: optimizer, batch, steps and resolution are placeholders",
    ),
    V(
        "batch.classes_per_batch",
        UNDETERMINED,
        NAVER + "README.md",
        "no training script (placeholder 256 x 16)",
    ),
    V("num_steps", UNDETERMINED, NAVER + "README.md", "no training script (placeholder)"),
    *(
        V(key, UNDETERMINED, NAVER + "README.md", f"no training script (placeholder: {note})")
        for key, note in (
            ("optimizer.name", "Adam"),
            ("optimizer.weight_decay", "1e-6"),
            ("batch.samples_per_class", "16 images per landmark"),
            ("loss.include_self", "the query is not its own positive, default.py's"),
            ("model_selection", "the last step, default.py's"),
            ("eval_every", "every 10 epochs of 10 steps"),
            ("seed", "default.py's 0"),
        )
    ),
    V("dataset.image_size", UNDETERMINED, NAVER + "README.md", "no training script (placeholder 800)"),
    V(
        "dataset.crop_scale",
        UNDETERMINED,
        NAVER + "README.md",
        "no training script (placeholder: ROADMAP's random-resized crop, scale 0.16-1, ratio 0.75-1.33)",
    ),
    V(
        "model.frozen_bn",
        UNDETERMINED,
        NAVER + "dirtorch/nets/backbones/resnet.py",
        "plain nn.BatchNorm2d layers; how the model was trained is not released (placeholder: frozen "
        "statistics, common.resnet's)",
    ),
    V("eval_protocol", "landmarks", NAVER + "dirtorch/test_dir.py", "eval_model on each test set"),
    V(
        "landmarks.benchmarks",
        ("oxford5k", "paris6k", "roxford5k", "rparis6k"),
        NAVER + "README.md",
        "the four test sets of the README table, in one evaluation",
    ),
    V(
        "landmarks.crop_queries",
        True,
        NAVER + "dirtorch/datasets/generic.py",
        "ImageListROIs: queries cropped to their bounding box",
    ),
    V("landmarks.max_size", None, NAVER + "dirtorch/test_dir.py", "images at their original resolution"),
    V("landmarks.scales", (1.0,), NAVER + "README.md", "the README's numbers are single scale"),
    V("landmarks.whiten_power", 0.25, NAVER + "dirtorch/test_dir.py", "--whitenp 0.25"),
    V(
        "landmarks.whitening_list",
        UNDETERMINED,
        NAVER + "dirtorch/test_dir.py",
        "--whiten Landmarks_clean: learned on the Landmarks-clean training images, whose list is not "
        "in the repository; the config reads a list file the user provides",
    ),
    V("reported.oxford5k_map", 89.1, NAVER + "README.md"),
    V("reported.paris6k_map", 93.0, NAVER + "README.md"),
    V("reported.roxford5k_medium_map", 67.1, NAVER + "README.md"),
    V("reported.roxford5k_hard_map", 42.3, NAVER + "README.md"),
    V("reported.rparis6k_medium_map", 80.3, NAVER + "README.md"),
    V("reported.rparis6k_hard_map", 60.9, NAVER + "README.md"),
]


RECIPES: dict[str, list[Official]] = {
    "roadmap_sop_resnet50": R_SOP_RN,
    "roadmap_sop_deit": R_SOP_DEIT,
    "roadmap_cub_resnet50": R_CUB_RN,
    "roadmap_cub_deit": R_CUB_DEIT,
    "roadmap_inat_resnet50": R_INAT_RN,
    "roadmap_inat_deit": R_INAT_DEIT,
    "suprank_sop": S_SOP,
    "suprank_inat": S_INAT,
    "suprank_sop_recall": S_SOP_RECALL,
    "suprank_sop_ndcg": S_SOP_NDCG,
    "happier_dyml_vehicle": H_DYML_VEHICLE,
    "happier_dyml_animal": H_DYML_ANIMAL,
    "happier_dyml_product": H_DYML_PRODUCT,
    "pnp_sop": P_SOP,
    "pnp_cub": _pnp_other("CUB-200-2011", 5_864 // 112),
    "pnp_cars": _pnp_other("Cars196", 8_054 // 112),
    "listwise_ap_landmarks": LISTWISE,
}

# Configs that are demos, not published experiments: no official recipe.
NOT_PUBLISHED = ("digits", "digits_open_set")
