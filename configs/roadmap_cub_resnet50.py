"""ROADMAP on CUB-200-2011, ResNet-50 (reported R@1 68.5).

Reference: E. Ramzi, N. Thome, C. Rambour, N. Audebert, X. Bitot. "Robust and Decomposable
Average Precision for Image Retrieval" (ROADMAP), NeurIPS 2021. Official code:
github.com/elias-ramzi/ROADMAP (README "CUB-200-2011" command: ``optimizer=cub
model=resnet_max_ln transform=cub_big dataset=cub batch_size=128 loss=roadmap max_iter=200``).

Model (``model/resnet_max_ln.yaml``): ResNet-50, global *max* pooling, a LayerNorm without
affine parameters on the pooled features, linear to 512, BatchNorm statistics frozen (the
official ``freeze_batch_norm`` puts BN in eval mode; its scale/bias still train). rankax's
``ResNetEmbedding`` has no feature-LayerNorm attribute, so this config has max pooling and the
projection but not the LayerNorm (listed in the report of the configs work).
Optimizer: ``roadmap/config/optimizer/cub.yaml`` was not available; the values are those of
the repository's ``margin_ap/config/optimizer/cub.yaml`` (its earlier training package):
Adam, lr 5e-6 for backbone and head, weight decay 4e-4, x0.3 after epoch 30.
Images (``transform/cub_big.yaml``): random-resized crop 256 (scale 0.16-1); test: shorter
side 288, centre crop 256.

Start from ImageNet weights: ``--config.model.pretrained=/path/to/resnet50.pth``.
"""

import ml_collections

from configs import common, default

TRAIN_IMAGES = 5_864  # CUB classes 1-100
BATCH = 128  # 32 classes x 4 images
EPOCHS = 200
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH


def get_config():
    c = default.get_config()
    common.images(c, "cub", image_size=256, resize_size=288)  # transform/cub_big.yaml
    common.resnet(c, pooling="max")  # model/resnet_max_ln.yaml, without its LayerNorm
    common.roadmap_loss(c, start=0.5, offset=1.44)
    common.pk_batches(c, BATCH)  # MPerClassSampler
    c.optimizer.update(name="adam", lr=5e-6, head_lr=5e-6, weight_decay=4e-4)
    common.step_decay(c, EPOCHS, milestones=(30,))

    # 45 steps an epoch; 200 epochs x 5,864 / 128 = 9,162 steps
    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=5, checkpoint_every=10)
    c.log_every = 50
    c.best_metric = "recall@1"
    c.eval_ks = (1, 2, 4, 8)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 68.5})
    return c
