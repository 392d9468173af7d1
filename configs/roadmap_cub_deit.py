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

from configs import default

TRAIN_IMAGES = 5_864  # CUB classes 1-100
BATCH = 128  # 32 classes x 4 images
EPOCHS = 150


def get_config():
    c = default.get_config()
    c.dataset = ml_collections.ConfigDict(
        {
            "name": "cub",
            "image_size": 224,
            "resize_size": 256,
            "test_resize_mode": "shorter",
            "crop_scale": (0.16, 1.0),
            "crop_ratio": (0.75, 1.33),
            "data_dir": ml_collections.FieldReference(None, field_type=str),
        }
    )
    c.model = ml_collections.ConfigDict(
        {
            "name": "deit_base",
            "image_size": 224,
            "pooling": "cls",
            "embedding_dim": ml_collections.FieldReference(None, field_type=int),
            "pretrained": ml_collections.FieldReference(None, field_type=str),
        }
    )
    c.loss.name = "roadmap"
    c.loss.hparams = ml_collections.ConfigDict(
        {
            "supap_weight": 1.0,
            "calibration_weight": 1.0,
            "tau": 0.01,
            "rho": 100.0,
            "delta": 0.05,
            "start": 0.5,
            "offset": 1.44,
            "variant": "neurips",
            "pos_margin": 0.9,
            "neg_margin": 0.6,
        }
    )
    c.batch.sampler = "pk"
    c.batch.classes_per_batch = BATCH // 4
    c.batch.samples_per_class = 4

    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-6
    c.optimizer.head_lr = ml_collections.FieldReference(None, field_type=float)
    c.optimizer.weight_decay = 5e-4
    c.optimizer.schedule = "constant"

    steps_per_epoch = TRAIN_IMAGES // BATCH  # 45
    c.num_steps = EPOCHS * TRAIN_IMAGES // BATCH  # 150 epochs x 5,864 / 128 = 6,871 steps
    c.log_every = 50
    c.eval_every = 5 * steps_per_epoch
    c.checkpoint_every = 10 * steps_per_epoch
    c.best_metric = "recall@1"
    c.eval_ks = (1, 2, 4, 8)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 77.4})
    return c
