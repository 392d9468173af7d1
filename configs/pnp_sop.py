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

from ml_collections import config_dict

from configs import common, default

TRAIN_IMAGES = 59_551  # SOP train split
BATCH = 384  # 96 classes x 4 images
EPOCHS = 400
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH


def get_config():
    c = default.get_config()
    # No resize before the random crop ("base" augmentation); test: shorter side 256.
    common.images(c, "sop", train_resize_size=config_dict.placeholder(int), crop_scale=(0.08, 1.0))
    common.pnp_loss(c)
    common.resnet(c)  # resnet50_frozen_normalize
    # Adam, one learning rate for all parameters (fc_lr=-1)
    c.optimizer.update(name="adam", lr=1e-5, head_lr=None, weight_decay=4e-4)
    common.pk_batches(c, BATCH)  # "class_random"
    common.step_decay(c, EPOCHS, milestones=(120, 220, 250, 280))

    # 155 steps an epoch; 400 epochs x 59,551 / 384 = 62,032 steps
    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=10, checkpoint_every=10)
    c.log_every = 100
    c.best_metric = "recall@1"
    c.eval_ks = (1, 10, 100, 1000)
    c.eval_baselines = False

    c.reported = common.unreported(
        "recall_at_1", note="not in DESIGN.md; the PNP paper's tables were not available to check"
    )
    return c
