"""PNP-Dq on Stanford Online Products, ResNet-50 (the authors' documented best run).

Reference: Z. Li, W. Min, J. Song, Y. Zhu, L. Kang, X. Wei, X. Wei, S. Jiang. "Rethinking the
Optimization of Average Precision: Only Penalizing Negative Instances before Positive Ones is
Enough" (PNP), AAAI 2022. Official code: github.com/interestingzhuo/PNPloss (README command:
``--loss PNP --bs 384 --samples_per_class 4 --arch resnet50_frozen_normalize --n_epochs 400
--lr 1e-5 --embed_dim 512 --dataset online_products --variant PNP-D_q --alpha 4``).

Other values are the repository's ``parameters.py`` defaults: Adam, weight decay 4e-4, one
learning rate for all parameters (``fc_lr=-1``), step schedule x0.3 at epochs 120, 220, 250,
280, sigmoid temperature ("anneal") 0.01, ``b=2`` for PNP-Ib. ``resnet50_frozen_normalize``:
BatchNorm layers in eval mode (running statistics frozen) while their scale/bias are still
trained, average pooling, linear to 512, L2 normalisation. Images ("base" augmentation of the
codebase): random-resized crop 224 with torchvision's default scale (0.08, 1) and flip;
test: shorter side 256, centre crop 224.

Variants: ``--config.loss.hparams.variant=O|Iu|Ib|Ds|Dq`` (``alpha`` for Dq, ``b`` for Ib).
The reported PNP numbers are not in DESIGN.md and the paper's tables were not available here.
Start from ImageNet weights: ``--config.model.pretrained=/path/to/resnet50.pth``.

"""

import ml_collections

from configs import default

TRAIN_IMAGES = 59_551  # SOP train split
BATCH = 384  # 96 classes x 4 images
EPOCHS = 400


def get_config():
    c = default.get_config()
    c.dataset = ml_collections.ConfigDict(
        {
            "name": "sop",
            "image_size": 224,
            "resize_size": 256,
            "train_resize_size": ml_collections.FieldReference(None, field_type=int),
            "test_resize_mode": "shorter",
            "crop_scale": (0.08, 1.0),
            "crop_ratio": (0.75, 1.33),
            "data_dir": ml_collections.FieldReference(None, field_type=str),
        }
    )
    c.model = ml_collections.ConfigDict(
        {
            "name": "resnet50",
            "pooling": "avg",
            "embedding_dim": 512,
            "frozen_bn": True,
            "pretrained": ml_collections.FieldReference(None, field_type=str),
        }
    )
    c.loss.name = "pnp"
    c.loss.hparams = ml_collections.ConfigDict({"variant": "Dq", "tau": 0.01, "alpha": 4.0, "b": 2.0})
    c.batch.sampler = "pk"  # "class_random"
    c.batch.classes_per_batch = BATCH // 4
    c.batch.samples_per_class = 4

    c.optimizer.name = "adam"
    c.optimizer.lr = 1e-5
    c.optimizer.head_lr = ml_collections.FieldReference(None, field_type=float)
    c.optimizer.weight_decay = 4e-4
    c.optimizer.schedule = "step"
    c.optimizer.decay_at = tuple(e / EPOCHS for e in (120, 220, 250, 280))
    c.optimizer.decay_factor = 0.3
    c.optimizer.freeze_bn_params = False

    steps_per_epoch = TRAIN_IMAGES // BATCH  # 155
    c.num_steps = EPOCHS * TRAIN_IMAGES // BATCH  # 400 epochs x 59,551 / 384 = 62,032 steps
    c.log_every = 100
    c.eval_every = 10 * steps_per_epoch
    c.checkpoint_every = 10 * steps_per_epoch
    c.best_metric = "recall@1"
    c.eval_ks = (1, 10, 100, 1000)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict(
        {
            "recall_at_1": ml_collections.FieldReference(None, field_type=float),
            "note": "not in DESIGN.md; the PNP paper's tables were not available to check",
        }
    )
    return c
