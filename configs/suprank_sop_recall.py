"""SupRank's Recall@k run on Stanford Online Products: SupR@k + ClusterLoss (``ROADRatk_pp_SOP``).

References: E. Ramzi, N. Audebert, C. Rambour, A. Araujo, X. Bitot, N. Thome. "Optimization of
Rank Losses for Image Retrieval" (SupRank), TPAMI 2025, arXiv:2309.08250. Official code:
elias-ramzi/SupRank at ``99041e8`` (README of ``d3d0e3c``).

Official files followed: ``suprank/config/loss/ROADRatk_pp_SOP.yaml`` (``SupRecallLoss`` with
tau 0.01, rho 100, delta 0.05, start 0.5, offset 1.44, ``at_k: [1, 2, 4, 8, 16]``, ``temp:
1.0``, ``hierarchy_level: 0``, plus ``ClusterLoss``: temperature 0.05, proxies trained by
their own Adam, lr 10, cosine to 0.1). Its ``weight:`` is empty, which
``suprank/getter.py`` (``get_loss``) turns into equal weights 1/2 and 1/2.

Everything else: the README has no command for this run (it documents only the H-AP runs), so
the rest is the README's SOP command with the loss swapped (``loss=ROADRatk_pp_SOP``): dataset
``sop.yaml`` (hierarchical sampler, 330 batches an epoch), ``optimizer/sop.yaml``,
``model/resnet_ln.yaml``, 100 epochs, the 5-epoch frozen warm-up -- exactly
``configs/suprank_sop.py``, which this config starts from. That choice is the config's; the
official material does not fix it.

The loss sees the finest level only (``hierarchy_level: 0``: ``loss.hierarchical=False``):
positives are the images of the query's product. Deliberate deviation (as suprank_sop): fp16
autocast runs as ``precision="mixed"`` (bfloat16).

Reported numbers: the SupRank tables were not consulted, ``reported`` holds None.
"""

from configs import common, suprank_sop


def get_config():
    c = suprank_sop.get_config()
    c.loss.name = "sup_recall_at_k"
    common.without_h_rank(c)
    c.loss.hierarchical = False  # hierarchy_level: 0
    c.loss.hparams.update(ks=(1, 2, 4, 8, 16), k_temperature=1.0)  # at_k, temp
    c.loss.weight = 0.5  # weight: (empty) -> 1 / number of terms
    c.loss.terms.cluster.weight = 0.5
    c.best_metric = "recall@1"
    c.reported = common.unreported("recall_at_1", note="the SupRank tables were not consulted")
    return c
