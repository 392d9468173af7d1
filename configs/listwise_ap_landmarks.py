"""Listwise AP (histogram-binned AP loss) on landmarks, ResNet-101 + GeM.

Reference: J. Revaud, J. Almazán, R. S. Rezende, C. R. de Souza. "Learning with Average
Precision: Training Image Retrieval with a Listwise Loss", ICCV 2019. Official code (models
and evaluation only): github.com/naver/deep-image-retrieval ("Resnet101-AP-GeM": trained on
Landmarks-clean fine-tuning from ImageNet, single resolution, learned whitening; ROxford5K
M/H 67.1/42.3 and RParis6K M/H 80.3/60.9 mAP).

What is set from DESIGN.md §6 and the official code: ResNet-101, GeM pooling (p=3, learned),
a linear projection (2048-d) and L2 normalisation, the AP loss with M=20 triangular bins on
[-1, 1] (``dirtorch/loss.py``'s ``APLoss(nq=20, min=-1, max=1)``).
Not verified here (the paper's training section was not available; placeholders, marked
below): the optimizer and its learning rate / weight decay, the batch composition (the paper
ranks a batch of thousands of images, 4096 in its main setting, by multi-staged
back-propagation), the number of steps and the 800 px training resolution.

Data: a folder/CSV dataset (``rankax.data.folder``, layout in ``docs/data.md``), e.g.
``path,landmark_id,split`` with ``train`` rows for Landmarks-clean and ``query``/``gallery``
rows for ROxford5k/RParis6k. Set ``--config.dataset.root`` and ``--config.dataset.csv_file``.

Evaluation: the Revisited Oxford/Paris protocol (``eval_protocol="revisited"``: Easy/Medium/
Hard mAP and mP@k from the official ground truth, ``--config.revisited_gnd=.../gnd_roxford5k.pkl``,
with the ``query`` rows in ``qimlist`` order and the ``gallery`` rows in ``imlist`` order).
The reported numbers also use a learned whitening, which rankax does not implement: expect
them only after adding it.
"""

import ml_collections

from configs import common, default

TRAIN_IMAGES = 42_410  # Landmarks-clean (Gordo et al.), approximate: not checked here
BATCH = 4096  # 256 landmarks x 16 images: placeholder composition of a 4096-image batch
EPOCHS = 100  # placeholder
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH


def get_config():
    c = default.get_config()
    c.dataset = ml_collections.ConfigDict(
        {
            "name": "folder",
            "dataset_name": "landmarks",
            "root": "~/data/landmarks",
            "csv_file": "~/data/landmarks/data.csv",
            "label_columns": ("landmark_id",),
            "image_size": 800,  # placeholder: the paper's training resolution, not checked
            "resize_size": 800,
            "test_resize_mode": "shorter",
            "crop_scale": (0.16, 1.0),
            "crop_ratio": (0.75, 1.33),
        }
    )
    common.resnet(c, "resnet101", pooling="gem", gem_p=3.0, gem_learnable=True, embedding_dim=2048)
    c.loss.name = "histogram_ap"
    c.loss.hparams = ml_collections.ConfigDict(
        {"num_bins": 20, "score_range": (-1.0, 1.0), "tie_aware": False}
    )
    common.pk_batches(c, BATCH, samples_per_class=16)  # placeholder (see above)
    # Placeholder values: not checked against the paper.
    c.optimizer.update(name="adam", lr=1e-5, head_lr=None, weight_decay=1e-6, schedule="constant")

    # 10 steps an epoch; 100 epochs x 42,410 / 4096 = 1,035 steps
    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=10, checkpoint_every=10)
    c.log_every = 10
    c.eval_protocol = "revisited"
    c.revisited_gnd = "~/data/landmarks/gnd_roxford5k.pkl"
    c.best_metric = "medium/map"
    c.eval_ks = (1, 5, 10)
    c.eval_batch_size = 64
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict(
        {
            "roxford5k_medium_map": 67.1,
            "roxford5k_hard_map": 42.3,
            "rparis6k_medium_map": 80.3,
            "rparis6k_hard_map": 60.9,
            "note": "revisited protocol, single scale, with learned whitening (official README)",
        }
    )
    return c
