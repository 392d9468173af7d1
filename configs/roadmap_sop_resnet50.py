"""ROADMAP on Stanford Online Products, ResNet-50 (reported R@1 83.1).

Reference: E. Ramzi, N. Thome, C. Rambour, N. Audebert, X. Bitot. "Robust and Decomposable
Average Precision for Image Retrieval" (ROADMAP), NeurIPS 2021. Official code:
elias-ramzi/ROADMAP, release v1.0.0 (README "SOP" command: ``experience.seed=333
experience.max_iter=100 optimizer=sop model=resnet transform=sop_big dataset=sop
batch_size=128 batches_per_super_pair=10 loss=roadmap``).

Official files followed: ``roadmap/config/loss/roadmap.yaml`` (SupAP + calibration, weights
1/1, margins 0.9/0.6), ``optimizer/sop.yaml`` (Adam, 1e-5 backbone / 2e-5 head, weight decay
1e-4, x0.3 at epochs 30 and 70), ``transform/sop_big.yaml`` (train: resize 288, random-resized
crop 256; test: 288 x 288, centre crop 256), ``model/resnet.yaml`` (average pooling, linear to
512, BatchNorm statistics frozen while scale/bias train), ``dataset/sop.yaml`` (hierarchical
sampler: every one of the C(12, 2) = 66 super-class pairs 10 times an epoch = 660 batches, so
100 epochs are 66,000 steps). The query is its own positive, as in the official
``quick_forward`` (``loss.include_self=True``).

Recipe keys: ``batch.sampler="hierarchical_pairs"`` (every pair of super-classes 10 times an
epoch, shuffled: 660 batches), x0.3 at epochs 30 and 70 (``optimizer.schedule="multistep"``,
``optimizer/sop.yaml``), ``model_selection="last"``. Deliberate deviation (``docs/recipes.md``
lists every value): fp16 autocast runs as ``precision="mixed"`` (bfloat16 compute, float32
parameters; bfloat16 needs no loss scaling).

Start from ImageNet weights: ``--config.model.pretrained=/path/to/resnet50.pth``.

The reported R@1 is the paper's; the v1.0.0 README itself warns that the release does not give
exactly the paper's numbers ("my code changed a bit (for instance the random seed are not the
same)", ``elias-ramzi/ROADMAP@v1.0.0:README.md``), so it is the target, not a guarantee.
"""

import ml_collections

from configs import common, default

BATCH = 128  # 32 classes x 4 images
EPOCHS = 100
STEPS_PER_EPOCH = 66 * 10  # super-class pairs x batches_per_super_pair


def get_config():
    c = default.get_config()
    c.seed = 333
    # transform/sop_big.yaml
    common.images(c, "sop", image_size=256, resize_size=288, train_resize_size=288, test_resize_mode="square")
    common.resnet(c)  # model/resnet.yaml: no feature LayerNorm
    common.roadmap_loss(c, start=0.5, offset=1.44)
    c.loss.include_self = True
    common.hierarchical_batches(c, BATCH, batches_per_super_tuple=10)
    # torch.optim.Adam: L2 penalty added to the gradient.
    c.optimizer.update(name="adam", lr=1e-5, head_lr=2e-5, weight_decay=1e-4)
    common.step_decay(c, milestones=(30, 70))

    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)  # 66,000 steps
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=5, checkpoint_every=5)
    c.log_every = 100
    c.best_metric = "map@r"  # experience/default.yaml principal_metric (unused: model_selection="last")
    c.precision = "mixed"  # with_autocast: True (fp16 autocast; here bfloat16)
    c.model_selection = "last"  # the run ends on its last epoch
    c.eval_ks = (1, 10, 100, 1000)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 83.1})
    return c
