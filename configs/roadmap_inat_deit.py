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

from configs import common, default

TRAIN_IMAGES = 325_846  # iNat 2018, Brown et al.'s training species
BATCH = 384  # 96 classes x 4 images
EPOCHS = 90
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH


def get_config():
    c = default.get_config()
    common.inat(c, hierarchy="base")
    common.deit(c, "deit_small")
    common.roadmap_loss(c, start=0.0, offset=1.0)  # loss/roadmap_inat.yaml
    common.pk_batches(c, BATCH)
    c.optimizer.update(name="adam", lr=1e-5, head_lr=None, weight_decay=4e-4)
    common.step_decay(c, EPOCHS, milestones=(30, 70))

    # 848 steps an epoch; 90 epochs x 325,846 / 384 = 76,370 steps
    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=10, checkpoint_every=2)
    c.log_every = 100
    c.best_metric = "recall@1"
    c.eval_ks = (1, 4, 16, 32)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 73.6})
    return c
