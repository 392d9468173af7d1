"""Listwise AP (histogram-binned AP loss) on landmarks, ResNet-101 + GeM.

Reference: J. Revaud, J. Almazán, R. S. Rezende, C. R. de Souza. "Learning with Average
Precision: Training Image Retrieval with a Listwise Loss", ICCV 2019. Official code:
naver/deep-image-retrieval, which releases the models, the loss and the evaluation but no
training script ("Resnet101-AP-GeM": trained on Landmarks-clean fine-tuning from ImageNet,
single resolution, learned whitening; Oxford5K 89.1, Paris6K 93.0, ROxford5K M/H 67.1/42.3,
RParis6K M/H 80.3/60.9 mAP, README table as of commit 3da005b, "update mAP numbers", measured
with the trapezoidal AP that ``rankax.retrieval.landmarks`` computes; the table before it, 89.3
and 67.4/42.8, came from scikit-learn's step-wise AP).

Official values followed: ResNet-101 (the README's model name), GeM pooling with a learned p
starting at 3 (``dirtorch/nets/layers/pooling.py`` ``GeneralizedMeanPoolingP``), a linear
projection to 2048-d and L2 normalisation (``dirtorch/nets/rmac_resnet.py``), the AP loss
``APLoss`` with ``min=0, max=1`` (``dirtorch/loss.py``). These are the defaults of the
constructors: the released model's own options are stored in its checkpoint
(``checkpoint['model_options']``, read by ``load_model`` in ``dirtorch/test_dir.py``), not in
the repository. The number of bins is not determined either (no training script): the config
takes ``APLoss``'s default ``nq=25`` (25 triangular bins on [0, 1]).
Not determined by the official material (no training script): the optimizer, learning rate and
weight decay, the batch composition (the paper ranks batches of thousands of images by
multi-staged back-propagation), the number of steps, the training resolution and augmentation
(the config takes ROADMAP's random-resized crop, scale 0.16-1, ratio 0.75-1.33), and whether
BatchNorm statistics train (``dirtorch/nets/backbones/resnet.py`` builds plain
``nn.BatchNorm2d`` layers; how the released model was trained is not in the repository: the
config keeps ``common.resnet``'s frozen statistics, the usual choice for fine-tuning with
batches of few images per landmark), whether the query counts as its own positive
(``loss.include_self``: no, default.py's), the seed and the model selection (the last step).
The values below are placeholders, marked as such.

Data: a folder/CSV dataset (``rankax.data.folder``, layout in ``docs/data.md``), e.g.
``path,landmark_id,split`` with ``train`` rows for Landmarks-clean. The folder loader also
wants ``test`` (or ``query``/``gallery``) rows, which this protocol does not evaluate: it reads
Oxford/Paris from ``landmarks.root`` (a few held-out Landmarks-clean images will do). Set
``--config.dataset.root`` and ``--config.dataset.csv_file``.

Evaluation: the official protocol (``eval_protocol="landmarks"``, ``config.landmarks``,
``rankax.retrieval.landmarks``; ``dirtorch/test_dir.py``): images at their original
resolution, queries cropped to their bounding box, a PCA whitening learned on the training
images of ``landmarks.whitening_list`` (power 0.25), single scale, and Oxford5k, Paris6k,
ROxford5k and RParis6k in one evaluation. Set ``--config.landmarks.root`` (the folder holding
``oxford5k/`` and ``paris6k/`` with their ``gnd_*.pkl`` and ``jpg/``) and
``--config.landmarks.whitening_list`` (a text file of Landmarks-clean image paths; the official
whitening set is not determined by a file in the repository).
"""

import ml_collections
from ml_collections import config_dict

from configs import common, default

TRAIN_IMAGES = 42_410  # Landmarks-clean (Gordo et al.), approximate (placeholder run length)
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
            "image_size": 800,  # placeholder: not determined by the official material
            "resize_size": 800,
            "test_resize_mode": "shorter",
            "crop_scale": (0.16, 1.0),  # placeholder: ROADMAP's augmentation
            "crop_ratio": (0.75, 1.33),  # placeholder: ROADMAP's augmentation
        }
    )
    common.resnet(c, "resnet101", pooling="gem", gem_p=3.0, gem_learnable=True, embedding_dim=2048)
    # model.frozen_bn=True (common.resnet's): placeholder, not determined by the official material
    c.loss.name = "histogram_ap"
    c.loss.hparams = ml_collections.ConfigDict(
        {"num_bins": 25, "score_range": (0.0, 1.0), "tie_aware": False}  # APLoss defaults
    )
    common.pk_batches(c, BATCH, samples_per_class=16)  # placeholder (see above)
    # Placeholders: no official training script.
    c.optimizer.update(name="adam", lr=1e-5, head_lr=None, weight_decay=1e-6, schedule="constant")

    # 10 steps an epoch, 1,000 steps (placeholder)
    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=10, checkpoint_every=10)
    c.log_every = 10
    c.eval_protocol = "landmarks"
    c.landmarks = ml_collections.ConfigDict(
        {
            "root": "~/data/landmarks",
            "benchmarks": ("oxford5k", "paris6k", "roxford5k", "rparis6k"),
            "whitening_list": "~/data/landmarks/whitening_list.txt",  # Landmarks-clean images
            "whiten_power": 0.25,
            "crop_queries": True,
            "scales": (1.0,),
            "max_size": config_dict.placeholder(int),  # None: original resolution
        }
    )
    c.best_metric = "roxford5k/medium/map"
    # eval_ks, eval_batch_size and eval_backend do not apply here: the protocol reports mAP and
    # mP@1/5/10 of its own (config.landmarks) and embeds one image per network call.
    c.eval_baselines = False

    c.reported = ml_collections.ConfigDict(
        {
            "oxford5k_map": 89.1,
            "paris6k_map": 93.0,
            "roxford5k_medium_map": 67.1,
            "roxford5k_hard_map": 42.3,
            "rparis6k_medium_map": 80.3,
            "rparis6k_hard_map": 60.9,
            "note": "single scale, learned whitening (naver/deep-image-retrieval README.md)",
        }
    )
    return c
