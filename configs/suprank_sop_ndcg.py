"""SupRank's NDCG run on Stanford Online Products: SupNDCG + ClusterLoss (``roadndcg_sop``).

References: E. Ramzi, N. Audebert, C. Rambour, A. Araujo, X. Bitot, N. Thome. "Optimization of
Rank Losses for Image Retrieval" (SupRank), TPAMI 2025, arXiv:2309.08250. Official code:
elias-ramzi/SupRank at ``99041e8`` (README of ``d3d0e3c``).

Official files followed: ``suprank/config/loss/roadndcg_sop.yaml`` (``name: ROAD_NDCG``,
``weight: [0.9, 0.1]``: ``SupNDCGLoss`` with tau 0.01, rho 100, delta 0.05, start 0.5,
offset 1.44 on the label paths (``hierarchy_level: MULTI``), plus ``ClusterLoss``:
temperature 0.05, proxies trained by their own Adam, lr 10, cosine to 0.1).

Everything else: the README has no command for this run, so the rest is the README's SOP
command with the loss swapped (``loss=roadndcg_sop``): dataset ``sop.yaml``,
``optimizer/sop.yaml``, ``model/resnet_ln.yaml``, 100 epochs, 5-epoch frozen warm-up --
exactly ``configs/suprank_sop.py``, which this config starts from (a choice: the official
material does not fix it).

On [fine, coarse] label paths ``rankax.batch_loss(sup_ndcg_loss, ...)`` is checked against a
numpy transcription of the official ``SupNDCGLoss(hierarchy_level="MULTI")`` (gains
``2^t - 1`` of the number ``t`` of shared levels) in ``tests/test_supndcg_official.py``.
Deliberate deviation (as suprank_sop): fp16 autocast runs as ``precision="mixed"``
(bfloat16).

Reported numbers: the SupRank tables were not consulted, ``reported`` holds None.
"""

from configs import common, suprank_sop


def get_config():
    c = suprank_sop.get_config()
    c.loss.name = "sup_ndcg"  # hierarchy_level: MULTI (loss.hierarchical stays True)
    common.without_h_rank(c)
    c.best_metric = "ndcg"
    c.reported = common.unreported("recall_at_1", "ndcg", note="the SupRank tables were not consulted")
    return c
