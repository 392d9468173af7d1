"""HAPPIER on DyML-Product (the SupRank README's "DyML-Product" run, ``HAPPIER_dyml_product``).

README command: ``seed=0 max_iter=20 warmup_step=5 optimizer=dyml_product
model=dyml_resnet34_product dataset=dyml_product loss=HAPPIER_product`` with
``compute_for_hierarchy_levels=[0,1,2]``, ``overall_accuracy=True``, ``exclude=[NDCG,H-AP]``,
``recall_rate=[10,20]`` and ``with_binary_asi=True``. Which revision of the official code
produced the HAPPIER paper's numbers is not recorded (``configs/happier_dyml_vehicle.py`` says
how the first commit differs, e.g. ``eta_min`` 1e-6 there against 1e-5 here).

Evaluation (``eval_levels=(0, 1, 2)``, :func:`rankax.retrieval.evaluate_levels`): at each of
the fine, middle and coarse levels the binary AP, P@1 (= R@1), mAP@R, R@10, R@20 and binary
ASI (``level<l>/...`` in ``metrics.json``); the plain names are their means over the three
levels, the official "overall accuracy" of one test set
(``suprank/engine/overall_accuracy_hook.py``), whose ASI also averages in the multi-level
ASI (``multi/asi``), as that hook does.

Official files followed: ``suprank/config/loss/HAPPIER_product.yaml`` (0.9 x ``SupHAPLoss`` as
in HAPPIER.yaml + 0.1 x ``ClusterLoss``, temperature 0.05), ``dataset/dyml_product.yaml``
(MPerClassSampler, batch 256, 4 per class; one all-in-one benchmark with the three levels,
queries = gallery), ``optimizer/dyml_product.yaml`` (SGD, momentum 0.9, Nesterov, weight decay
1e-4: backbone lr 0.01, head 0.02, both cosine to 1e-5 over the run, stepped per epoch),
``model/dyml_resnet34_product.yaml`` (ImageNet ResNet-34, BatchNorm statistics frozen, LayerNorm
on the average-pooled features, linear to 512, fp16 autocast); 20 epochs of which the first 5
train with the backbone frozen (``warmup_step=5``, ``default.yaml`` ``warmup_keys: [backbone]``).

The proxies' optimizer: SupRank's ``HAPPIER_product.yaml`` points it at ``${optimizer.opt.net}``,
which its ``optimizer/dyml_product.yaml`` does not define (it has ``backbone`` and ``head``);
the HAPPIER release (``elias-ramzi/HAPPIER@5af91b3:happier/config/loss/HAPPIER_product.yaml``)
points it at ``${optimizer.opt.1}`` of ``happier/config/optimizer/dyml_product.yaml``, the
``fc`` group: SGD lr 0.02 (2 x 0.01), momentum 0.9, Nesterov, weight decay 1e-4, cosine to
1e-5. The config follows HAPPIER there. Evaluation at the end of the run (the epoch length
depends on the data).

Deliberate deviation: bfloat16 mixed precision for fp16 autocast. ImageNet weights:
``--config.model.pretrained=/path/to/resnet34.pth`` (torchvision's ``resnet34`` checkpoint);
data: ``--config.dataset.root``.
Reported numbers: the HAPPIER/SupRank tables were not consulted, ``reported`` holds None.
"""

from configs import common, happier_dyml_vehicle

EPOCHS = 20  # README max_iter=20


def get_config():
    c = happier_dyml_vehicle.get_config(variant="product", weights=(0.9, 0.1))
    c.model.frozen_bn = True  # freeze_batch_norm: True
    c.model.pretrained = None  # ImageNet weights (pretrained: True): set the path, or be warned
    c.optimizer.update(lr=0.01, head_lr=0.02, final_lr=1e-5)
    c.loss.terms.cluster.optimizer.update(lr=0.02, final_lr=1e-5)
    common.frozen_warmup(c, 5)
    c.num_epochs = EPOCHS
    c.num_steps = EPOCHS * 1000  # nominal; replaced by the first step of epoch num_epochs
    c.eval_levels = (0, 1, 2)  # compute_for_hierarchy_levels=[0,1,2], averaged (overall_accuracy)
    c.reported = common.unreported(
        "recall_at_1", "map", "asi", note="the HAPPIER/SupRank tables were not consulted"
    )
    return c
