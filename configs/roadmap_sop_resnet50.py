"""ROADMAP on Stanford Online Products, ResNet-50 (reported R@1 83.1).

Reference: E. Ramzi, N. Thome, C. Rambour, N. Audebert, X. Bitot. "Robust and Decomposable
Average Precision for Image Retrieval" (ROADMAP), NeurIPS 2021. Official code:
github.com/elias-ramzi/ROADMAP (README "SOP" command: ``optimizer=sop model=resnet
transform=sop_big dataset=sop batch_size=128 batches_per_super_pair=10 loss=roadmap
max_iter=100``).

Loss: SupAP + calibration ("decomposability") with weights 1/1 (``loss/roadmap.yaml``).
Optimizer: DESIGN.md §6 (Adam, 1e-5 backbone / 2e-5 head, weight decay 1e-4, 100 epochs);
the official ``optimizer/sop.yaml`` of this run was not available to check the schedule, so
the learning rate is constant. Images: ``transform/sop_big.yaml`` (train: resize 288 then
random-resized crop 256; test: 288 x 288 then centre crop 256). Model: ``model/resnet.yaml``
(average pooling, linear to 512, no feature LayerNorm); BatchNorm statistics frozen (the
official ``freeze_batch_norm`` puts BN in eval mode; its scale/bias still train).

Start from ImageNet weights: ``--config.model.pretrained=/path/to/resnet50.pth``.
``--config.loss.include_self=True`` reproduces the official batches (query in its own list).

"""

import ml_collections

from configs import default

TRAIN_IMAGES = 59_551  # SOP train split (11,318 classes)
BATCH = 128  # 32 classes x 4 images


def get_config():
    c = default.get_config()
    c.dataset = ml_collections.ConfigDict(
        {
            "name": "sop",
            "image_size": 256,
            "resize_size": 288,
            "train_resize_size": 288,
            "test_resize_mode": "square",
            "crop_scale": (0.16, 1.0),
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
    c.loss.name = "roadmap"
    c.loss.hparams = ml_collections.ConfigDict(
        {
            "supap_weight": 1.0,
            "calibration_weight": 1.0,
            "tau": 0.01,  # sigmoid temperature ("temp" in the official yaml)
            "rho": 100.0,  # slope after delta ("tau" in the official yaml)
            "delta": 0.05,  # "margin" in the official yaml
            "start": 0.5,
            "offset": 1.44,
            "variant": "neurips",  # the NeurIPS'21 release's piecewise function (docs/losses.md)
            "pos_margin": 0.9,
            "neg_margin": 0.6,
        }
    )
    # The official SOP sampler draws pairs of super-classes, 10 batches per pair.
    c.batch.sampler = "hierarchical"
    c.batch.classes_per_batch = BATCH // 4
    c.batch.samples_per_class = 4
    c.batch.super_classes_per_batch = 2
    c.batch.batches_per_super_tuple = 10

    c.optimizer.name = "adam"  # torch.optim.Adam: L2 penalty added to the gradient
    c.optimizer.lr = 1e-5
    c.optimizer.head_lr = 2e-5
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "constant"
    c.optimizer.freeze_bn_params = False  # lib.freeze_batch_norm: statistics only

    steps_per_epoch = TRAIN_IMAGES // BATCH  # 465
    c.num_steps = 100 * TRAIN_IMAGES // BATCH  # 100 epochs x 59,551 / 128 = 46,524 steps
    c.log_every = 100
    c.eval_every = 10 * steps_per_epoch
    c.checkpoint_every = 5 * steps_per_epoch
    c.best_metric = "recall@1"
    c.eval_ks = (1, 10, 100, 1000)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 83.1})
    return c
