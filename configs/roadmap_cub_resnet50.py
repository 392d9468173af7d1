"""ROADMAP on CUB-200-2011, ResNet-50 (reported R@1 68.5).

Reference: E. Ramzi, N. Thome, C. Rambour, N. Audebert, X. Bitot. "Robust and Decomposable
Average Precision for Image Retrieval" (ROADMAP), NeurIPS 2021. Official code:
elias-ramzi/ROADMAP, release v1.0.0 (README "CUB-200-2011" command: ``experience.seed=333
experience.max_iter=200 optimizer=cub model=resnet_max_ln transform=cub_big dataset=cub
batch_size=128 loss=roadmap``).

Official files followed: ``roadmap/config/optimizer/cub.yaml`` (Adam, lr 1e-6, one group over
all parameters, weight decay 4e-4, no schedule), ``transform/cub_big.yaml`` (random-resized crop
256, scale 0.16-1; test: shorter side 288, centre crop 256), ``loss/roadmap.yaml``,
``dataset/cub.yaml`` (``MPerClassSampler``, 4 images per class), ``model/resnet_max_ln.yaml``
(global max pooling, a LayerNorm without affine parameters on the pooled 2048-d features,
linear to 512; BatchNorm statistics frozen while scale/bias train). The query is its own
positive (``loss.include_self=True``).

Recipe keys: ``model.feature_norm="layernorm"`` (max pooling -> LayerNorm without affine ->
linear 512), ``batch.sampler="m_per_class"`` (each image at most once an epoch),
``model_selection="last"``. Deliberate deviation: the official fp16 autocast runs as
``precision="mixed"`` (bfloat16 compute, float32 parameters; bfloat16 needs no loss scaling).
The run lasts 200 of the sampler's epochs (``num_epochs``; each at most 45 batches, its length
set by the class sizes); periodic evaluation and checkpoints count 45-step epochs.

Start from ImageNet weights: ``--config.model.pretrained=/path/to/resnet50.pth``.

The reported R@1 is the paper's; the v1.0.0 README itself warns that the release does not give
exactly the paper's numbers ("my code changed a bit (for instance the random seed are not the
same)", ``elias-ramzi/ROADMAP@v1.0.0:README.md``), so it is the target, not a guarantee. The
model file in particular is not known to have produced it: the development history of
April-June 2021 (``refs/pull/3/head`` = ``e0e57df``) has only ``model/resnet.yaml`` and
``model/deit.yaml``, and ``model/resnet_max_ln.yaml`` first appears in the parentless release.
"""

import ml_collections

from configs import common, default

TRAIN_IMAGES = 5_864  # CUB classes 1-100
BATCH = 128  # 32 classes x 4 images
EPOCHS = 200
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH  # 45: an upper bound of the official sampler's epoch


def get_config():
    c = default.get_config()
    c.seed = 333
    common.images(c, "cub", image_size=256, resize_size=288)  # transform/cub_big.yaml
    common.resnet(c, pooling="max", feature_norm="layernorm")  # model/resnet_max_ln.yaml
    common.roadmap_loss(c, start=0.5, offset=1.44)
    c.loss.include_self = True
    common.pk_batches(c, BATCH, sampler="m_per_class")  # MPerClassSampler
    c.optimizer.update(name="adam", lr=1e-6, head_lr=None, weight_decay=4e-4, schedule="constant")

    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)  # nominal; the run counts num_epochs
    c.num_epochs = EPOCHS  # the official sampler's epochs (their length varies with the class sizes)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=5, checkpoint_every=10)
    c.log_every = 50
    c.best_metric = "map@r"  # experience/default.yaml principal_metric (unused: model_selection="last")
    c.precision = "mixed"  # with_autocast: True (fp16 autocast; here bfloat16)
    c.model_selection = "last"  # the run ends on its last epoch
    c.eval_ks = (1, 2, 4, 8)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 68.5})
    return c
