"""SupRank (hierarchical) on Stanford Online Products: H-AP loss on the [class, super-class] paths.

References: E. Ramzi, N. Audebert, C. Rambour, A. Araujo, X. Bitot, N. Thome. "Optimization of
Rank Losses for Image Retrieval" (SupRank), arXiv:2309.08250, 2023; E. Ramzi, N. Audebert,
N. Thome, C. Rambour, X. Bitot. "Hierarchical Average Precision Training for Pertinent Image
Retrieval" (HAPPIER), ECCV 2022. Official code: github.com/elias-ramzi/SupRank (README "SOP"
command: ``max_iter=100 warmup_step=5 optimizer=sop model=resnet_ln dataset=sop
loss=HAPPIER_SOP``).

Loss (``loss/HAPPIER_SOP.yaml``): 0.9 x H-AP (``SupHAPLoss``: tau 0.01, rho 100, delta 0.05,
start 0.5, offset 1.44, "pop" relevance, alpha 1) + 0.1 x a clustering term (``ClusterLoss``:
normalized softmax on the fine classes, temperature 0.05, proxies trained with Adam lr 10).
rankax's training step takes one list loss, and ``normalized_softmax_loss`` needs class
proxies that the train state does not hold, so this config trains H-AP alone (``hap``); the
0.1 term is not reproduced (see the report of the configs work).
Sampler (``dataset/sop.yaml``): SupRank's hierarchical sampler, batch 256, 4 images per class,
2 super-classes per batch, 5 batches per super-class pair.
Optimizer (``optimizer/sop.yaml``): Adam, 5e-5 backbone / 1e-4 head, weight decay 1e-4,
cosine decay to 0 over the run; ``warmup_step=5`` (5 epochs during which only the head is
updated) has no equivalent here. Model (``model/resnet_ln.yaml``): ResNet-50, average pooling,
LayerNorm on the pooled features (not available here), linear to 512, BatchNorm
statistics frozen (scale/bias trained, as the official ``freeze_batch_norm``).
Images (``dataset/sop.yaml``): resize 256, random-resized crop 224 (scale 0.16-1), flip;
test 256 x 256 then centre crop 224 (rankax's SOP defaults).

Evaluation: with [N, 2] label paths ``rankax.retrieval.evaluate`` reports H-AP, NDCG and ASI
next to R@k and mAP@R. The paper's SOP numbers are not in DESIGN.md and were not checked
here; ``reported`` holds None until they are filled in.
"""

from configs import common, default

TRAIN_IMAGES = 59_551  # SOP train split
BATCH = 256  # 64 classes x 4 images, 2 super-classes per batch
EPOCHS = 100
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH


def get_config():
    c = default.get_config()
    common.images(c, "sop", train_resize_size=256, test_resize_mode="square")
    common.resnet(c)  # model/resnet_ln.yaml, without its LayerNorm
    common.hap_loss(c, start=0.5, offset=1.44)  # graded "pop" relevance (batch_loss default)
    common.hierarchical_batches(c, BATCH, batches_per_super_tuple=5)
    c.optimizer.update(name="adam", lr=5e-5, head_lr=1e-4, weight_decay=1e-4, schedule="cosine")

    # 232 steps an epoch; 100 epochs x 59,551 / 256 = 23,262 steps
    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=20, checkpoint_every=5)
    c.log_every = 100
    c.best_metric = "hap"
    c.eval_ks = (1, 10, 100, 1000)
    c.eval_baselines = False

    c.reported = common.unreported(
        "recall_at_1",
        "hap",
        "asi",
        "ndcg",
        note="not in DESIGN.md; the SupRank/HAPPIER tables were not available to check",
    )
    return c
