"""ROADMAP on iNaturalist 2018 (Brown et al.'s class-disjoint split), DeiT-S (reported R@1 73.6).

Reference: E. Ramzi, N. Thome, C. Rambour, N. Audebert, X. Bitot. "Robust and Decomposable
Average Precision for Image Retrieval" (ROADMAP), NeurIPS 2021. Official code:
github.com/elias-ramzi/ROADMAP.

The README gives no command for this run. Loss as the ResNet-50 iNat run
(``loss/roadmap_inat.yaml``: SupAP ``start=0, offset=1`` + calibration). Optimizer: the
repository's ``margin_ap/config/optimizer/inaturalist_deit.yaml`` (Adam, lr 1e-5 for the whole
network, weight decay 4e-4, x0.3 after epochs 30 and 70); batch 384 and 90 epochs are taken
from the ResNet-50 iNat command (not verified for DeiT). Model: DeiT-S/16, the 384-d class
token without projection, L2-normalised.

Set ``--config.dataset.taxonomy_file``, ``--config.dataset.split_dir`` and
``--config.model.pretrained=/path/to/deit_small.pth``.

"""

import ml_collections

from configs import default

TRAIN_IMAGES = 325_846  # iNat 2018, Brown et al.'s training species
BATCH = 384  # 96 classes x 4 images
EPOCHS = 90


def get_config():
    c = default.get_config()
    c.dataset = ml_collections.ConfigDict(
        {
            "name": "inat",
            "hierarchy": "base",
            "taxonomy_file": "~/tensorflow_datasets/downloads/manual/categories.json",
            "split_dir": "~/tensorflow_datasets/downloads/manual/Inat_dataset_splits",
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
            "name": "deit_small",
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
            "start": 0.0,
            "offset": 1.0,
            "variant": "neurips",
            "pos_margin": 0.9,
            "neg_margin": 0.6,
        }
    )
    c.batch.sampler = "pk"
    c.batch.classes_per_batch = BATCH // 4
    c.batch.samples_per_class = 4

    c.optimizer.name = "adam"
    c.optimizer.lr = 1e-5
    c.optimizer.head_lr = ml_collections.FieldReference(None, field_type=float)
    c.optimizer.weight_decay = 4e-4
    c.optimizer.schedule = "step"
    c.optimizer.decay_at = (30 / EPOCHS, 70 / EPOCHS)  # MultiStepLR milestones [30, 70]
    c.optimizer.decay_factor = 0.3

    steps_per_epoch = TRAIN_IMAGES // BATCH  # 848
    c.num_steps = EPOCHS * TRAIN_IMAGES // BATCH  # 90 epochs x 325,846 / 384 = 76,370 steps
    c.log_every = 100
    c.eval_every = 10 * steps_per_epoch
    c.checkpoint_every = 2 * steps_per_epoch
    c.best_metric = "recall@1"
    c.eval_ks = (1, 4, 16, 32)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 73.6})
    return c
