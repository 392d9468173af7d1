"""PNP-Dq on Stanford Online Products, ResNet-50 (the authors' documented run).

Reference: Z. Li, W. Min, J. Song, Y. Zhu, L. Kang, X. Wei, X. Wei, S. Jiang. "Rethinking the
Optimization of Average Precision: Only Penalizing Negative Instances before Positive Ones is
Enough" (PNP), AAAI 2022. Official code: interestingzhuo/PNPloss at ``582ffab`` (README
command: ``--loss PNP --seed 0 --bs 384 --data_sampler class_random --samples_per_class 4
--arch resnet50_frozen_normalize --n_epochs 400 --lr 1e-5 --embed_dim 512
--dataset online_products --variant PNP-D_q --alpha 4``). ``809a508`` (2023) made PNP-D_q
return ``1 - loss``; the AAAI-era first commit ``9ce1751`` tested a variant name no run uses,
so PNP-D_q returned ``loss``, whose gradient has the wrong sign. The config follows the fix.

Other values are the repository's ``parameters.py`` defaults: Adam, weight decay 4e-4, one
learning rate for all parameters (``fc_lr=-1``), x0.3 at epochs 120, 220, 250, 280, sigmoid
temperature ("anneal") 0.01, ``b=2`` for PNP-Ib. ``resnet50_frozen_normalize``: BatchNorm
layers in eval mode while their scale/bias train, average pooling, linear to 512, L2
normalisation. Images ("base" augmentation): random-resized crop 224 with torchvision's default
scale (0.08, 1) and ratio (3/4, 4/3) and flip; test: shorter side 256, centre crop 224. An epoch of the
``class_random`` sampler is ``len(images) // bs`` = 155 batches (62,000 steps), evaluated after
every epoch. The query is its own positive in ``criteria/PNP.py`` (``loss.include_self=True``).

The sampler draws classes and images with replacement (``batch.sampler="pk_replacement"``,
``datasampler/class_random_sampler.py``) and the run reports its best checkpoint by R@1
(``model_selection="best"``, ``storage_metrics``). Deliberate deviations: none
(``docs/recipes.md``).
Variants: ``--config.loss.hparams.variant=O|Iu|Ib|Ds|Dq``. The README gives no number and the
paper's table was not consulted. Start from ImageNet weights:
``--config.model.pretrained=/path/to/resnet50.pth``.
"""

from ml_collections import config_dict

from configs import common, default

TRAIN_IMAGES = 59_551  # SOP train split
BATCH = 384  # 96 classes x 4 images
EPOCHS = 400
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH  # 155: the class_random sampler's length


def get_config():
    c = default.get_config()
    c.seed = 0
    # No resize before the random crop ("base" augmentation); test: shorter side 256.
    common.images(
        c, "sop", train_resize_size=config_dict.placeholder(int), crop_scale=(0.08, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
    )
    common.pnp_loss(c)
    c.loss.include_self = True
    common.resnet(c)  # resnet50_frozen_normalize
    # Adam, one learning rate for all parameters (fc_lr=-1)
    c.optimizer.update(name="adam", lr=1e-5, head_lr=None, weight_decay=4e-4)
    common.pk_batches(c, BATCH, sampler="pk_replacement")  # "class_random"
    common.step_decay(c, milestones=(120, 220, 250, 280))

    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)  # 62,000 steps
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=1, checkpoint_every=10)
    c.log_every = 100
    c.best_metric = "recall@1"
    c.model_selection = "best"  # storage_metrics e_recall@1: the best checkpoint is kept
    c.eval_ks = (1, 10, 100, 1000)
    c.eval_baselines = False

    c.reported = common.unreported(
        "recall_at_1", note="the PNPloss README gives no number; the paper's table was not consulted"
    )
    return c
