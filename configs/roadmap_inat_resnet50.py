"""ROADMAP on iNaturalist 2018 (Brown et al.'s class-disjoint split), ResNet-50 (reported R@1 69.1).

Reference: E. Ramzi, N. Thome, C. Rambour, N. Audebert, X. Bitot. "Robust and Decomposable
Average Precision for Image Retrieval" (ROADMAP), NeurIPS 2021. Official code:
elias-ramzi/ROADMAP, release v1.0.0 (README "INaturalist" command: ``experience.seed=333
experience.max_iter=90 optimizer=inaturalist model=resnet transform=inaturalist
dataset=inaturalist batch_size=384 loss=roadmap_inat``).

Official files followed: ``roadmap/config/loss/roadmap_inat.yaml`` (SupAP with ``start=0,
offset=1`` + calibration, weights 1/1), ``optimizer/inaturalist.yaml`` (Adam, 1e-5 backbone /
2e-5 head, weight decay 4e-4, x0.3 at epochs 30 and 70), ``transform/inaturalist.yaml``
(random-resized crop 224, scale 0.16-1; test: shorter side 256, centre crop 224),
``model/resnet.yaml`` (average pooling, linear to 512, BatchNorm statistics frozen while
scale/bias train), ``dataset/inaturalist.yaml`` (``MPerClassSampler``, 4 per class; trained on
the species labels only). The query is its own positive (``loss.include_self=True``).

Recipe keys: ``batch.sampler="m_per_class"`` (each image at most once an epoch), the x0.3
milestones in the sampler's epochs (``optimizer.schedule="multistep"``), ``model_selection=
"last"``. Deliberate deviation: fp16 autocast runs as ``precision="mixed"`` (bfloat16 compute,
float32 parameters; bfloat16 needs no loss scaling). The run lasts 90 of the sampler's
epochs (``num_epochs``; each at most 848 batches, its length set by the class sizes).

Data: TFDS ``i_naturalist2018`` plus the taxonomy file and the split lists (see
``rankax.data.tfds_data.load_inat``); set ``--config.dataset.taxonomy_file`` and
``--config.dataset.split_dir``. Start from ImageNet weights with
``--config.model.pretrained=/path/to/resnet50.pth``.

The reported R@1 is the paper's; the v1.0.0 README itself warns that the release does not give
exactly the paper's numbers ("my code changed a bit (for instance the random seed are not the
same)", ``elias-ramzi/ROADMAP@v1.0.0:README.md``), so it is the target, not a guarantee.
"""

import ml_collections

from configs import common, default

TRAIN_IMAGES = 325_846  # iNat 2018, Brown et al.'s 5,690 training species
BATCH = 384  # 96 classes x 4 images
EPOCHS = 90
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH  # 848: an upper bound of the official sampler's epoch


def get_config():
    c = default.get_config()
    c.seed = 333
    common.inat(c, hierarchy="base")  # [species, supercategory]; ROADMAP trains on species
    common.resnet(c)
    common.roadmap_loss(c, start=0.0, offset=1.0)  # loss/roadmap_inat.yaml
    c.loss.include_self = True
    common.pk_batches(c, BATCH, sampler="m_per_class")  # MPerClassSampler
    c.optimizer.update(name="adam", lr=1e-5, head_lr=2e-5, weight_decay=4e-4)
    common.step_decay(c, milestones=(30, 70))

    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)  # nominal; the run counts num_epochs
    c.num_epochs = EPOCHS  # the official sampler's epochs (their length varies with the class sizes)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=5, checkpoint_every=2)
    c.log_every = 100
    c.best_metric = "map@r"  # experience/default.yaml principal_metric (unused: model_selection="last")
    c.precision = "mixed"  # with_autocast: True (fp16 autocast; here bfloat16)
    c.model_selection = "last"  # the run ends on its last epoch
    c.eval_ks = (1, 4, 16, 32)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 69.1})
    return c
