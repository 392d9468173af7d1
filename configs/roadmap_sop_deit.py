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

from configs import default

TRAIN_IMAGES = 59_551  # SOP train split
BATCH = 128  # 32 classes x 4 images
EPOCHS = 75


def get_config():
    c = default.get_config()
    c.dataset = ml_collections.ConfigDict(
        {
            "name": "sop",
            "image_size": 224,
            "resize_size": 256,
            "train_resize_size": 256,
            "test_resize_mode": "square",
            "crop_scale": (0.16, 1.0),
            "crop_ratio": (0.75, 1.33),
            "data_dir": ml_collections.FieldReference(None, field_type=str),
        }
    )
    c.model = ml_collections.ConfigDict(
        {
            "name": "deit_small",
            "image_size": 224,
            "pooling": "cls",
            "embedding_dim": ml_collections.FieldReference(None, field_type=int),  # no projection
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
    c.batch.sampler = "hierarchical"
    c.batch.classes_per_batch = BATCH // 4
    c.batch.samples_per_class = 4
    c.batch.super_classes_per_batch = 2
    c.batch.batches_per_super_tuple = 10

    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-5
    c.optimizer.head_lr = ml_collections.FieldReference(None, field_type=float)  # one group
    c.optimizer.weight_decay = 5e-4
    c.optimizer.schedule = "step"
    c.optimizer.decay_at = (25 / EPOCHS, 50 / EPOCHS)  # MultiStepLR milestones [25, 50]
    c.optimizer.decay_factor = 0.3

    steps_per_epoch = TRAIN_IMAGES // BATCH  # 465
    c.num_steps = EPOCHS * TRAIN_IMAGES // BATCH  # 75 epochs x 59,551 / 128 = 34,893 steps
    c.log_every = 100
    c.eval_every = 10 * steps_per_epoch
    c.checkpoint_every = 5 * steps_per_epoch
    c.best_metric = "recall@1"
    c.eval_ks = (1, 10, 100, 1000)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 86.0})
    return c
