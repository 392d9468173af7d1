"""PNP-Dq on Cars196, ResNet-50.

Reference: Z. Li, W. Min, J. Song, Y. Zhu, L. Kang, X. Wei, X. Wei, S. Jiang. "Rethinking the
Optimization of Average Precision: Only Penalizing Negative Instances before Positive Ones is
Enough" (PNP), AAAI 2022. Official code: interestingzhuo/PNPloss at ``582ffab``
(``809a508``, 2023, made PNP-D_q return ``1 - loss``; the AAAI-era first commit ``9ce1751``
tested a variant name no run uses, so PNP-D_q returned ``loss``, whose gradient has the wrong
sign: the config follows the fix).

The PNP code implements only Stanford Online Products (its ``datasets/`` has no Cars196
loader), so no official recipe exists for this dataset: the batch size, the number of epochs,
the schedule and the seed are not determined by the official material. Choices: the SOP
command's loss and model (PNP-Dq with alpha 4, sigmoid temperature 0.01, 4 images per class,
``resnet50_frozen_normalize``, Adam, lr 1e-5, weight decay 4e-4, 512-d, seed 0) with the
``parameters.py`` defaults for the rest: batch 112, 150 epochs, x0.3 at epoch 120 (the only
default milestone inside 150 epochs), and the code's own sampler and selection: classes and
images drawn with replacement (``batch.sampler="pk_replacement"``), the best checkpoint by R@1
reported (``model_selection="best"``). The query is its own positive, as in ``criteria/PNP.py``
(``loss.include_self=True``).
Images: random-resized crop 224 (torchvision's default scale (0.08, 1) and ratio (3/4, 4/3))
and flip; test: shorter side 256, centre crop 224. Evaluated after every epoch, as ``main.py``
does, so that the best checkpoint is chosen among the same epochs.

Variants: ``--config.loss.hparams.variant=O|Iu|Ib|Ds|Dq``. The paper's table was not
consulted. Start from ImageNet weights: ``--config.model.pretrained=/path/to/resnet50.pth``.
"""

from configs import common, default

TRAIN_IMAGES = 8_054  # Cars196 classes 1-98
BATCH = 112  # 28 classes x 4 images
EPOCHS = 150
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH


def get_config():
    c = default.get_config()
    common.images(c, "cars", crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3))
    common.pnp_loss(c)
    c.loss.include_self = True
    common.resnet(c)  # resnet50_frozen_normalize
    # Adam, one learning rate for all parameters (fc_lr=-1)
    c.optimizer.update(name="adam", lr=1e-5, head_lr=None, weight_decay=4e-4)
    common.pk_batches(c, BATCH, sampler="pk_replacement")  # the code's class_random sampler
    common.step_decay(c, milestones=(120,))

    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=1, checkpoint_every=10)  # main.py: every epoch
    c.log_every = 50
    c.best_metric = "recall@1"
    c.model_selection = "best"  # the code keeps the best-R@1 checkpoint
    c.eval_ks = (1, 2, 4, 8)
    c.eval_baselines = False

    c.reported = common.unreported(
        "recall_at_1", note="no official run on this dataset; the paper's table was not consulted"
    )
    return c
