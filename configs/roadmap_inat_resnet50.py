"""ROADMAP on iNaturalist 2018 (Brown et al.'s class-disjoint split), ResNet-50 (reported R@1 69.1).

Reference: E. Ramzi, N. Thome, C. Rambour, N. Audebert, X. Bitot. "Robust and Decomposable
Average Precision for Image Retrieval" (ROADMAP), NeurIPS 2021. Official code:
github.com/elias-ramzi/ROADMAP (README "INaturalist" command: ``optimizer=inaturalist
model=resnet transform=inaturalist dataset=inaturalist batch_size=384 loss=roadmap_inat
max_iter=90``).

Loss (``loss/roadmap_inat.yaml``): SupAP with ``start=0, offset=1`` + calibration, weights 1/1.
Optimizer: ``roadmap/config/optimizer/inaturalist.yaml`` was not available; the values are
those of the same authors' iNaturalist optimizer in the SupRank code (``optimizer/inat.yaml``):
Adam, 1e-5 backbone / 2e-5 head, weight decay 4e-4, cosine decay over the run (there to
1e-6; optax's cosine here decays to 0). Images (SupRank's iNat transform): random-resized
crop 224 (scale 0.16-1); test: shorter side 256, centre crop 224. Model: average pooling,
linear to 512, BatchNorm statistics frozen (the official ``freeze_batch_norm`` puts BN in
eval mode; its scale/bias still train).

Data: TFDS ``i_naturalist2018`` plus the taxonomy file and the split lists (see
``rankax.data.tfds_data.load_inat``); set ``--config.dataset.taxonomy_file`` and
``--config.dataset.split_dir``. Start from ImageNet weights with
``--config.model.pretrained=/path/to/resnet50.pth``.

"""

import ml_collections

from configs import common, default

TRAIN_IMAGES = 325_846  # iNat 2018, Brown et al.'s 5,690 training species
BATCH = 384  # 96 classes x 4 images
EPOCHS = 90
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH


def get_config():
    c = default.get_config()
    common.inat(c, hierarchy="base")  # [species, supercategory]; ROADMAP trains on species
    common.resnet(c)
    common.roadmap_loss(c, start=0.0, offset=1.0)  # iNaturalist setting (loss/roadmap_inat.yaml)
    common.pk_batches(c, BATCH)  # MPerClassSampler
    c.optimizer.update(name="adam", lr=1e-5, head_lr=2e-5, weight_decay=4e-4, schedule="cosine")

    # 848 steps an epoch; 90 epochs x 325,846 / 384 = 76,370 steps
    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=10, checkpoint_every=2)
    c.log_every = 100
    c.best_metric = "recall@1"
    c.eval_ks = (1, 4, 16, 32)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 69.1})
    return c
