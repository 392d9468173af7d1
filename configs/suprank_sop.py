"""SupRank (hierarchical) on Stanford Online Products: H-AP loss on the [class, super-class] paths.

References: E. Ramzi, N. Audebert, C. Rambour, A. Araujo, X. Bitot, N. Thome. "Optimization of
Rank Losses for Image Retrieval" (SupRank), TPAMI 2025, arXiv:2309.08250; E. Ramzi,
N. Audebert, N. Thome, C. Rambour, X. Bitot. "Hierarchical Average Precision Training for
Pertinent Image Retrieval" (HAPPIER), ECCV 2022. Official code: elias-ramzi/SupRank at
``99041e8``, its only code commit (README of ``d3d0e3c``, "SOP" command: ``seed=0
max_iter=100 warmup_step=5 optimizer=sop model=resnet_ln dataset=sop loss=HAPPIER_SOP``);
elias-ramzi/HAPPIER (``5af91b3``) holds the ECCV release of the same recipe.

Official files followed: ``suprank/config/loss/HAPPIER_SOP.yaml`` (the 0.9 term: ``SupHAPLoss``
with tau 0.01, rho 100, delta 0.05, start 0.5, offset 1.44 on the label paths, "pop"
relevance), ``dataset/sop.yaml`` (hierarchical sampler, batch 256, 4 per class, 2
super-classes, 5 batches per pair: 66 x 5 = 330 batches an epoch, 33,000 steps; resize 256,
random-resized crop 224; test 256 x 256, centre crop 224), ``optimizer/sop.yaml`` (Adam,
5e-5 backbone / 1e-4 head, weight decay 1e-4, cosine to 0 with ``T_max=max_iter=100``, stepped
once an epoch after the 5 warm-up epochs: 95 steps, so the run ends at about 0.6 % of the base
rate, not 0), ``model/resnet_ln.yaml``
(average pooling, linear to 512, BatchNorm statistics frozen). The query is its own positive
(``loss.include_self=True``).

Recipe keys: the objective 0.9 x H-AP + 0.1 x ``ClusterLoss`` (``loss.weight=0.9``,
``loss.terms.cluster``: normalised softmax over one proxy per product, temperature 0.05, the
proxies trained by their own Adam, lr 10, cosine to 0.1 once an epoch); the 5-epoch warm-up
with the backbone frozen and every schedule paused (``optimizer.frozen_warmup_epochs=5``,
``suprank/engine/train.py``); the LayerNorm on the pooled features (``model.feature_norm``);
the per-epoch cosine (``optimizer.schedule_unit="epoch"``); ``batch.sampler=
"hierarchical_pairs"``; ``model_selection="last"``. Deliberate deviation: fp16 autocast runs as
``precision="mixed"`` (bfloat16 compute, float32 parameters; bfloat16 needs no loss scaling).

Evaluation: with [N, 2] label paths ``rankax.retrieval.evaluate`` reports H-AP, NDCG and ASI
next to R@k and mAP@R of the products; ``eval_levels=(0, 1)`` adds AP, R@k, MAP@R and
R-precision at the product and the category level (``level0/*``, ``level1/*``), as the SOP
command's ``accuracy_calculator.compute_for_hierarchy_levels=[0,1]`` does
(``elias-ramzi/SupRank@d3d0e3c:README.md``), without averaging them (``eval_level_means=False``:
``overall_accuracy: False`` of ``suprank/config/evaluation/accuracy_calculator.yaml``). The
paper's numbers were not consulted: ``reported`` holds None.
"""

from configs import common, default

BATCH = 256  # 64 classes x 4 images, 2 super-classes per batch
EPOCHS = 100
STEPS_PER_EPOCH = 66 * 5  # super-class pairs x batches_per_super_tuple


def get_config():
    c = default.get_config()
    c.seed = 0
    common.images(c, "sop", train_resize_size=256, test_resize_mode="square")
    common.resnet(c, feature_norm="layernorm")  # model/resnet_ln.yaml (norm_features: True)
    common.hap_loss(c, start=0.5, offset=1.44)  # graded "pop" relevance (batch_loss default)
    c.loss.include_self = True
    c.loss.weight = 0.9  # HAPPIER_SOP.yaml: weight [0.9, 0.1]
    common.cluster_term(c, weight=0.1, temperature=0.05, lr=10.0, final_lr=0.1)
    common.hierarchical_batches(c, BATCH, batches_per_super_tuple=5)
    c.optimizer.update(name="adam", lr=5e-5, head_lr=1e-4, weight_decay=1e-4, schedule="cosine", final_lr=0.0)
    c.optimizer.schedule_unit = "epoch"  # scheduler.step() once an epoch
    common.frozen_warmup(c, 5)  # README warmup_step=5, default.yaml warmup_keys: [backbone]

    common.train_epochs(c, EPOCHS, STEPS_PER_EPOCH)  # 33,000 steps
    common.every_epochs(c, STEPS_PER_EPOCH, eval_every=20, checkpoint_every=5)
    c.log_every = 100
    c.best_metric = "hap"
    c.precision = "mixed"  # with_autocast: True (fp16 autocast; here bfloat16)
    c.model_selection = "last"  # the last epoch is saved and reported
    c.eval_ks = (1, 10, 100, 1000)
    c.eval_levels = (0, 1)  # README compute_for_hierarchy_levels=[0,1]
    c.eval_level_means = False  # accuracy_calculator.yaml overall_accuracy: False
    c.eval_baselines = False

    c.reported = common.unreported(
        "recall_at_1", "hap", "asi", "ndcg", note="the SupRank/HAPPIER tables were not consulted"
    )
    return c
