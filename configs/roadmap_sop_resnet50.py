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

from configs import common, default

TRAIN_IMAGES = 59_551  # SOP train split (11,318 classes)
BATCH = 128  # 32 classes x 4 images
EPOCHS = 100
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH


def get_config():
    c = default.get_config()
    # transform/sop_big.yaml
    common.images(c, "sop", image_size=256, resize_size=288, train_resize_size=288, test_resize_mode="square")
    common.resnet(c)  # model/resnet.yaml: no feature LayerNorm
    common.roadmap_loss(c, start=0.5, offset=1.44)
    # The official SOP sampler draws pairs of super-classes, 10 batches per pair.
    common.hierarchical_batches(c, BATCH, batches_per_super_tuple=10)
    # torch.optim.Adam: L2 penalty added to the gradient.
    c.optimizer.update(name="adam", lr=1e-5, head_lr=2e-5, weight_decay=1e-4, schedule="constant")

    # 465 steps an epoch; 100 epochs x 59,551 / 128 = 46,524 steps
    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=10, checkpoint_every=5)
    c.log_every = 100
    c.best_metric = "recall@1"
    c.eval_ks = (1, 10, 100, 1000)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 83.1})
    return c
