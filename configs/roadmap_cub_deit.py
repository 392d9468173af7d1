"""ROADMAP on CUB-200-2011, DeiT-B (reported R@1 77.4).

Reference: E. Ramzi, N. Thome, C. Rambour, N. Audebert, X. Bitot. "Robust and Decomposable
Average Precision for Image Retrieval" (ROADMAP), NeurIPS 2021. Official code:
github.com/elias-ramzi/ROADMAP (README, CUB with the transformer backbone: ``optimizer=cub_deit
model=deit transform=cub dataset=cub batch_size=128 loss=roadmap max_iter=150``).

DESIGN.md §6 attributes 77.4 to DeiT-B; the README command's ``model=deit`` file was not
available to check which DeiT it builds (the repository's earlier ``margin_ap`` package uses
DeiT-S), so ``--config.model.name=deit_small`` is the other reading.
Optimizer (``optimizer/cub_deit.yaml``): AdamW, lr 1e-6, weight decay 5e-4, no schedule.
Model: the class token without projection (768-d for DeiT-B), L2-normalised. Images
(``transform/cub.yaml`` of the earlier package): random-resized crop 224 (scale 0.16-1);
test: shorter side 256, centre crop 224.

Start from ImageNet weights: ``--config.model.pretrained=/path/to/deit_base.pth``.
"""

import ml_collections

from configs import common, default

TRAIN_IMAGES = 5_864  # CUB classes 1-100
BATCH = 128  # 32 classes x 4 images
EPOCHS = 150
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH


def get_config():
    c = default.get_config()
    common.images(c, "cub")
    common.deit(c, "deit_base")
    common.roadmap_loss(c, start=0.5, offset=1.44)
    common.pk_batches(c, BATCH)
    c.optimizer.update(name="adamw", lr=1e-6, head_lr=None, weight_decay=5e-4, schedule="constant")

    # 45 steps an epoch; 150 epochs x 5,864 / 128 = 6,871 steps
    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=5, checkpoint_every=10)
    c.log_every = 50
    c.best_metric = "recall@1"
    c.eval_ks = (1, 2, 4, 8)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 77.4})
    return c
