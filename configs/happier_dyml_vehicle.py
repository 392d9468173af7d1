"""HAPPIER on DyML-Vehicle (the SupRank README's "DyML-Vehicle" run, ``HAPPIER_dyml_vehicle``).

References: E. Ramzi, N. Audebert, N. Thome, C. Rambour, X. Bitot. "Hierarchical Average
Precision Training for Pertinent Image Retrieval" (HAPPIER), ECCV 2022; SupRank, TPAMI 2025,
arXiv:2309.08250; DyML: Y. Sun et al., "Dynamic Metric Learning", CVPR 2021. Official code:
elias-ramzi/SupRank at ``99041e8`` (its only code commit; README of ``d3d0e3c``), command
``seed=0 optimizer=dyml model=dyml_resnet34 dataset=dyml_vehicle loss=HAPPIER`` with
``accuracy_calculator.recall_rate=[10,20]``, ``overall_accuracy=True``,
``compute_for_hierarchy_levels=[0]``, ``exclude=[NDCG,H-AP]`` and ``with_binary_asi=True``.
HAPPIER's own release (``5af91b3``; its README gives the same command since ``4d7c054``, the
first commit whose loss configs name classes that exist: those of ``dcd0c82`` name
``SupHAP`` and ``NormalizedSoftmaxLoss``, which it does not define) agrees except where noted.
Which code produced the HAPPIER paper's DyML numbers is not recorded: every runnable revision
postdates ECCV'22 (HAPPIER ``4d7c054`` of 2022-11-15 and ``5af91b3`` of 2023; SupRank
``99041e8`` of 2024), and the one before it, ``dcd0c82`` (2022-03-28), differs besides the
class names: ``happier/config/experience/default.yaml`` ``max_iter: 50`` and
``test_eval_freq: 5``, the H-AP step of ``happier/losses/hap_loss.py`` (``rho * x + offset``
past ``delta``: ROADMAP's NeurIPS'21 ``variant="neurips"``, not ``"fixed"``), ``eta_min`` 1e-6
in ``optimizer/dyml_product.yaml`` (1e-5 later) and which optimizer the proxies share. The
configs follow SupRank's code, the code of the SupRank paper's tables.

Evaluation (``eval_levels=(0,)``, :func:`rankax.retrieval.evaluate_levels`): the benchmark's
AP (``map``), P@1 (= ``recall@1``), mAP@R, R@10, R@20 and the binary ASI
(``asi`` = (1/R) sum_{k<=R} P@k), the official ``binary`` metrics with ``with_binary_asi``;
H-AP and NDCG are excluded there.

Official files followed: ``suprank/config/loss/HAPPIER.yaml`` (0.9 x ``SupHAPLoss`` -- tau
0.01, rho 100, delta 0.05, start 0.5, offset 1.44, label paths -- + 0.1 x ``ClusterLoss``,
temperature 0.05 by default in ``suprank/losses/cluster_loss.py``), ``dataset/dyml_vehicle.yaml``
(MPerClassSampler, batch 256, 4 per class; the crops of ``common.dyml``; three test
benchmarks fine / middle / coarse), ``optimizer/dyml.yaml`` (one SGD group for the whole
network: lr 0.1, momentum 0.9, Nesterov, weight decay 1e-4, cosine to 1e-6 over the run,
stepped per epoch), ``model/dyml_resnet34.yaml`` (ResNet-34, basic blocks, from scratch:
``pretrained: False``; BatchNorm training, average pooling, LayerNorm on the features, linear
to 512, fp16 autocast), ``default.yaml``
(``max_iter: 100`` epochs, no warm-up, evaluation every 20 epochs).

The proxies' optimizer: SupRank's ``HAPPIER.yaml`` points it at ``${optimizer.opt.head}``, which
its ``optimizer/dyml.yaml`` does not define; the HAPPIER release of the same run
(``elias-ramzi/HAPPIER@5af91b3:happier/config/loss/HAPPIER.yaml``) points it at
``${optimizer.opt.0}``, the one optimizer of ``happier/config/optimizer/dyml.yaml`` (SGD lr
0.1, momentum 0.9, Nesterov, weight decay 1e-4, cosine to 1e-6), which ``happier/getter.py``
copies for the loss's parameters. The config follows HAPPIER there. The epoch length of the
sampler depends on the data, so the config evaluates at the end of the run (``eval_every=0``)
and reads the length from the sampler (``num_epochs``).

Deliberate deviations: one benchmark per evaluation (``dataset.benchmark``, "fine" here; the
official number averages the three: evaluate the run again with ``python -m
experiments.evaluate --workdir <run> --config.dataset.benchmark=middle``, then ``coarse``,
and average); bfloat16 mixed precision for fp16 autocast.

Data: ``--config.dataset.root=/path/to/dyml_vehicle`` (layout: ``docs/data.md``). Reported
numbers: the HAPPIER/SupRank tables were not consulted, ``reported`` holds None.
"""

from configs import common, default

BATCH = 256  # 64 classes x 4 images
EPOCHS = 100  # default.yaml max_iter


def get_config(variant="vehicle", weights=(0.9, 0.1)):
    """``weights``: the SupHAP and ClusterLoss weights (``loss.weight`` of the official yaml)."""
    c = default.get_config()
    c.seed = 0
    common.dyml(c, variant, root=f"~/datasets/dyml_{variant}")
    common.resnet(c, "resnet34", feature_norm="layernorm")  # backbone_name: resnet34
    c.model.pretrained = ""  # pretrained: False -- from scratch, on purpose (no warning)
    c.model.frozen_bn = False  # freeze_batch_norm: False
    common.hap_loss(c, start=0.5, offset=1.44)
    c.loss.include_self = True
    c.loss.weight = weights[0]
    common.cluster_term(c, weight=weights[1], temperature=0.05, lr=0.1, final_lr=1e-6)
    c.loss.terms.cluster.optimizer.update(name="sgd", weight_decay=1e-4, momentum=0.9, nesterov=True)
    common.pk_batches(c, BATCH, sampler="m_per_class")
    c.optimizer.update(
        name="sgd", lr=0.1, weight_decay=1e-4, momentum=0.9, nesterov=True, schedule="cosine", final_lr=1e-6
    )
    c.optimizer.schedule_unit = "epoch"

    c.num_epochs = EPOCHS  # the sampler's epochs decide the run's length
    c.num_steps = EPOCHS * 1000  # nominal; replaced by the first step of epoch num_epochs
    c.eval_every = 0  # at the end (the official 20-epoch cadence needs the epoch length)
    c.checkpoint_every = 5000
    c.log_every = 100
    c.best_metric = "recall@1"
    c.precision = "mixed"  # with_autocast: True
    c.model_selection = "last"
    c.eval_ks = (1, 10, 20)  # P@1 (= R@1, always reported) + recall_rate=[10,20]
    c.eval_levels = (0,)  # compute_for_hierarchy_levels=[0] with with_binary_asi=True: + binary ASI
    c.eval_baselines = False

    c.reported = common.unreported(
        "recall_at_1", "map", "asi", note="the HAPPIER/SupRank tables were not consulted"
    )
    return c
