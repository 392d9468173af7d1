"""ROADMAP on iNaturalist 2018 (Brown et al.'s class-disjoint split), DeiT-S distilled (reported R@1 73.6).

Reference: E. Ramzi, N. Thome, C. Rambour, N. Audebert, X. Bitot. "Robust and Decomposable
Average Precision for Image Retrieval" (ROADMAP), NeurIPS 2021. Official code:
elias-ramzi/ROADMAP, release v1.0.0.

The README gives no command for this run, so the release does not determine the batch size,
the number of epochs or the seed. Choices: batch 384 and 90 epochs of the ResNet-50 iNat
command, seed 333 as every README command. The development history supports them without
fixing them: ``jean-zay/submit_scripts/train_inaturalist_transformer_abs.slurm`` of
``elias-ramzi/ROADMAP@e0e57df`` (``refs/pull/3/head``, June 2021) trains DeiT on iNat with
``experience.seed=333`` and ``experience.max_iter=90`` at batch sizes 128, 224 and 384, with the
loss under its pre-release name ``marginap_sigmo_abs_inat``; which of them gave the paper's
number is not recorded. Official files followed:
``roadmap/config/optimizer/inaturalist_deit.yaml`` (AdamW, lr 1e-5 for the whole network,
weight decay 5e-4, x0.3 at epochs 30 and 70), ``model/deit.yaml`` (DeiT-S/16 from the
distilled model, the 384-d class token without projection, L2-normalised),
``loss/roadmap_inat.yaml``, ``transform/inaturalist.yaml``, ``dataset/inaturalist.yaml``
(``MPerClassSampler``, 4 per class). The query is its own positive (``loss.include_self=True``).

Recipe keys: ``model.pretrained_distilled=True``, ``batch.sampler="m_per_class"``, the x0.3
milestones in the sampler's epochs (``optimizer.schedule="multistep"``), ``model_selection=
"last"``. Deliberate deviation: fp16 autocast runs as ``precision="mixed"`` (bfloat16 compute,
float32 parameters; bfloat16 needs no loss scaling).

Set ``--config.dataset.taxonomy_file``, ``--config.dataset.split_dir`` and
``--config.model.pretrained=/path/to/deit_small.pth``.

The reported R@1 is the paper's; the v1.0.0 README itself warns that the release does not give
exactly the paper's numbers ("my code changed a bit (for instance the random seed are not the
same)", ``elias-ramzi/ROADMAP@v1.0.0:README.md``), so it is the target, not a guarantee.
"""

import ml_collections

from configs import common, default

TRAIN_IMAGES = 325_846  # iNat 2018, Brown et al.'s training species
BATCH = 384  # 96 classes x 4 images (not determined officially: the ResNet-50 command's)
EPOCHS = 90  # not determined officially: the ResNet-50 command's
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH  # 848


def get_config():
    c = default.get_config()
    c.seed = 333
    common.inat(c, hierarchy="base")
    common.deit(c, "deit_small", distilled=True)
    common.roadmap_loss(c, start=0.0, offset=1.0)  # loss/roadmap_inat.yaml
    c.loss.include_self = True
    common.pk_batches(c, BATCH, sampler="m_per_class")  # MPerClassSampler
    c.optimizer.update(name="adamw", lr=1e-5, head_lr=None, weight_decay=5e-4)
    common.step_decay(c, milestones=(30, 70))

    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)  # nominal; the run counts num_epochs
    c.num_epochs = EPOCHS  # the official sampler's epochs (their length varies with the class sizes)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=5, checkpoint_every=2)  # test_eval_freq: 5
    c.log_every = 100
    c.best_metric = "map@r"  # experience/default.yaml principal_metric (unused: model_selection="last")
    c.precision = "mixed"  # with_autocast: True (fp16 autocast; here bfloat16)
    c.model_selection = "last"  # the run ends on its last epoch
    c.eval_ks = (1, 4, 16, 32)
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict({"recall_at_1": 73.6})
    return c
