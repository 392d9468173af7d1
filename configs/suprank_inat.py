"""SupRank (hierarchical) on iNaturalist 2018, full 7-level taxonomy: H-AP loss.

References: E. Ramzi, N. Audebert, C. Rambour, A. Araujo, X. Bitot, N. Thome. "Optimization of
Rank Losses for Image Retrieval" (SupRank), arXiv:2309.08250, 2023; E. Ramzi et al.
"Hierarchical Average Precision Training for Pertinent Image Retrieval" (HAPPIER), ECCV 2022.
Official code: github.com/elias-ramzi/SupRank (README "iNat-full" command: ``warmup_step=5
optimizer=inat model=resnet_ln dataset=inat_full loss=HAPPIER_inat``, ``max_iter`` 100 by
default).

Labels: ``hierarchy="full"``, paths [species, genus, family, order, class, phylum, kingdom]
(``--config.dataset.hierarchy=base`` gives iNat-base, [species, supercategory]).
Loss (``loss/HAPPIER_inat.yaml``): 0.9 x H-AP (tau 0.01, rho 100, delta 0.05, start 0,
offset 1) + 0.1 x ``ClusterLoss`` (normalized softmax with proxies): as for SOP, only the H-AP
term is expressible here (see ``configs/suprank_sop.py``).
Sampler (``dataset/inat_full.yaml``): the official iNat runs use the P x K
``MPerClassSampler`` (batch 256, 4 per class), not the hierarchical sampler; so does this
config (``--config.batch.sampler=hierarchical`` for the other choice).
Optimizer (``optimizer/inat.yaml``): Adam, 1e-5 backbone / 2e-5 head, weight decay 4e-4,
cosine decay (there to 1e-6; here to 0); the 5 head-only warm-up epochs have no equivalent.
Model: ResNet-50, average pooling, (LayerNorm not available), linear to 512, BN statistics
frozen (scale/bias trained, as the official ``freeze_batch_norm``).

Evaluation: H-AP, NDCG and ASI over the 7 levels, next to R@k. The paper's numbers are not in
DESIGN.md and were not checked here.

Set ``--config.dataset.taxonomy_file``, ``--config.dataset.split_dir`` and
``--config.model.pretrained=/path/to/resnet50.pth``.
"""

from configs import common, default

TRAIN_IMAGES = 325_846  # iNat 2018, Brown et al.'s training species
BATCH = 256  # 64 classes x 4 images
EPOCHS = 100
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH


def get_config():
    c = default.get_config()
    common.inat(c, hierarchy="full")
    common.resnet(c)  # model/resnet_ln.yaml, without its LayerNorm
    common.hap_loss(c, start=0.0, offset=1.0)
    common.pk_batches(c, BATCH)  # MPerClassSampler in the official iNat configs
    c.optimizer.update(name="adam", lr=1e-5, head_lr=2e-5, weight_decay=4e-4, schedule="cosine")

    # 1,272 steps an epoch; 100 epochs x 325,846 / 256 = 127,283 steps
    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=20, checkpoint_every=2)
    c.log_every = 100
    c.best_metric = "hap"
    c.eval_ks = (1, 4, 16, 32)
    c.eval_baselines = False

    c.reported = common.unreported(
        "recall_at_1",
        "hap",
        "asi",
        "ndcg",
        note="not in DESIGN.md; the SupRank/HAPPIER tables were not available to check",
    )
    return c
