"""SupRank (hierarchical) on iNaturalist 2018, full 7-level taxonomy: H-AP loss.

References: E. Ramzi, N. Audebert, C. Rambour, A. Araujo, X. Bitot, N. Thome. "Optimization of
Rank Losses for Image Retrieval" (SupRank), TPAMI 2025, arXiv:2309.08250; E. Ramzi et al.
"Hierarchical Average Precision Training for Pertinent Image Retrieval" (HAPPIER), ECCV 2022.
Official code: elias-ramzi/SupRank at ``99041e8`` (README of ``d3d0e3c``, "iNat-full"
command: ``seed=0 warmup_step=5 optimizer=inat model=resnet_ln dataset=inat_full
loss=HAPPIER_inat``, ``max_iter`` 100 by default).

Labels: ``hierarchy="full"``, paths [species, genus, family, order, class, phylum, kingdom]
(``--config.dataset.hierarchy=base`` gives iNat-base, [species, supercategory]).
Official files followed: ``suprank/config/loss/HAPPIER_inat.yaml`` (the 0.9 term: H-AP with
tau 0.01, rho 100, delta 0.05, start 0, offset 1), ``dataset/inat_full.yaml``
(``MPerClassSampler``, batch 256, 4 per class; random-resized crop 224; test: shorter side 256,
centre crop 224), ``optimizer/inat.yaml`` (Adam, 1e-5 backbone / 2e-5 head, weight decay 4e-4,
cosine to an absolute 1e-6 for both groups: ``optimizer.final_lr=1e-6``),
``model/resnet_ln.yaml``. The query is its own positive (``loss.include_self=True``).

Recipe keys: the objective 0.9 x H-AP + 0.1 x ``ClusterLoss`` (``loss.weight=0.9``,
``loss.terms.cluster``: normalised softmax over one proxy per species, temperature 0.05, the
proxies trained by their own Adam, lr 10, cosine to 0.1 once an epoch, as SupRank's
``loss/HAPPIER_inat.yaml`` says; HAPPIER's release of the run, ``elias-ramzi/HAPPIER@5af91b3:
happier/config/loss/HAPPIER_inat.yaml``, points them at ``${optimizer.opt.1}`` instead, the
head's Adam of its ``optimizer/inat.yaml``: lr 2e-5, weight decay 4e-4, cosine to 1e-6; the
config follows SupRank, the later release); the 5-epoch warm-up
with the backbone frozen and every schedule paused (``optimizer.frozen_warmup_epochs=5``);
the feature LayerNorm (``model.feature_norm``); per-epoch cosines to an absolute 1e-6
(``optimizer.final_lr``, ``schedule_unit="epoch"``); ``batch.sampler="m_per_class"``;
``model_selection="last"``. Deliberate deviation: fp16 autocast runs as ``precision="mixed"``
(bfloat16 compute, float32 parameters). The run lasts 100 of the sampler's epochs
(``num_epochs``; each at most 1,272 batches, its length set by the class sizes); periodic
evaluation (every 20 epochs, ``default.yaml``) and checkpoints count 1,272-step epochs.

Evaluation: H-AP, NDCG and ASI over the 7 levels, next to R@k of the species; ``eval_levels``
0..6 adds the binary metrics at each taxonomy level (``level<l>/*``), as the iNat-full command's
``accuracy_calculator.compute_for_hierarchy_levels=[0,1,2,3,4,5,6]`` does
(``elias-ramzi/SupRank@d3d0e3c:README.md``), without averaging them (``eval_level_means=False``:
``overall_accuracy: False`` of ``suprank/config/evaluation/accuracy_calculator.yaml``). The
paper's numbers were not consulted. Set ``--config.dataset.taxonomy_file``, ``--config.dataset.split_dir`` and
``--config.model.pretrained=/path/to/resnet50.pth``.
"""

from configs import common, default

TRAIN_IMAGES = 325_846  # iNat 2018, Brown et al.'s training species
BATCH = 256  # 64 classes x 4 images
EPOCHS = 100
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH  # 1,272: an upper bound of the official sampler's epoch


def get_config():
    c = default.get_config()
    c.seed = 0
    common.inat(c, hierarchy="full")
    common.resnet(c, feature_norm="layernorm")  # model/resnet_ln.yaml (norm_features: True)
    common.hap_loss(c, start=0.0, offset=1.0)
    c.loss.include_self = True
    c.loss.weight = 0.9  # HAPPIER_inat.yaml: weight [0.9, 0.1]
    common.cluster_term(c, weight=0.1, temperature=0.05, lr=10.0, final_lr=0.1)
    common.pk_batches(c, BATCH, sampler="m_per_class")  # MPerClassSampler
    c.optimizer.update(
        name="adam", lr=1e-5, head_lr=2e-5, weight_decay=4e-4, schedule="cosine", final_lr=1e-6
    )  # eta_min 1e-6 absolute, for both groups
    c.optimizer.schedule_unit = "epoch"  # scheduler.step() once an epoch
    common.frozen_warmup(c, 5)  # README warmup_step=5, default.yaml warmup_keys: [backbone]

    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)  # nominal; the run counts num_epochs
    c.num_epochs = EPOCHS  # the official sampler's epochs (their length varies with the class sizes)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=20, checkpoint_every=2)
    c.log_every = 100
    c.best_metric = "hap"
    c.precision = "mixed"  # with_autocast: True (fp16 autocast; here bfloat16)
    c.model_selection = "last"  # the last epoch is saved and reported
    c.eval_ks = (1, 4, 16, 32)
    c.eval_levels = tuple(range(7))  # README compute_for_hierarchy_levels=[0,1,2,3,4,5,6]
    c.eval_level_means = False  # accuracy_calculator.yaml overall_accuracy: False
    c.eval_baselines = False

    c.reported = common.unreported(
        "recall_at_1", "hap", "asi", "ndcg", note="the SupRank/HAPPIER tables were not consulted"
    )
    return c
