"""ROADMAP on Stanford Online Products, DeiT-S (reported R@1 86.0).

Reference: E. Ramzi, N. Thome, C. Rambour, N. Audebert, X. Bitot. "Robust and Decomposable
Average Precision for Image Retrieval" (ROADMAP), NeurIPS 2021. Official code:
github.com/elias-ramzi/ROADMAP (README, SOP with the transformer backbone: ``optimizer=sop_deit
model=deit transform=sop dataset=sop batch_size=128 batches_per_super_pair=10 loss=roadmap
max_iter=75``).

Optimizer (``optimizer/sop_deit.yaml``): AdamW, lr 1e-5 for the whole network, weight decay
5e-4, learning rate x0.3 after epochs 25 and 50 of 75. Model: DeiT-S/16 without projection
(the 384-d class token, L2-normalised). Images: ``transform/sop.yaml`` (train: resize 256,
random-resized crop 224; test: 256 x 256 then centre crop 224).

Start from ImageNet weights: ``--config.model.pretrained=/path/to/deit_small.pth``.

"""

import ml_collections

from configs import common, default

TRAIN_IMAGES = 59_551  # SOP train split
BATCH = 128  # 32 classes x 4 images
EPOCHS = 75
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH


def get_config():
    c = default.get_config()
    common.images(c, "sop", train_resize_size=256, test_resize_mode="square")  # transform/sop.yaml
    common.deit(c, "deit_small")
    common.roadmap_loss(c, start=0.5, offset=1.44)
    common.hierarchical_batches(c, BATCH, batches_per_super_tuple=10)
    c.optimizer.update(name="adamw", lr=1e-5, head_lr=None, weight_decay=5e-4)  # one group
    common.step_decay(c, EPOCHS, milestones=(25, 50))

    # 465 steps an epoch; 75 epochs x 59,551 / 128 = 34,893 steps
    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=10, checkpoint_every=5)
    c.log_every = 100
    c.best_metric = "recall@1"
    c.eval_ks = (1, 10, 100, 1000)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 86.0})
    return c
