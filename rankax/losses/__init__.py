"""Rank losses for image retrieval, one module per family.

Every list-level loss has the signature
``fn(scores, labels, *, where=None, reduce_fn=jnp.mean, max_positives=None, **hparams)`` with
lists on the last axis (see ``docs/losses.md`` for the catalogue, formulas and defaults).
``LIST_LOSSES`` holds all of them (the proxy loss, which takes embeddings and proxies, is not
a list loss and is not in it).
"""

from rankax.losses.ap import roadmap_loss, smooth_ap_loss, supap_loss
from rankax.losses.blackbox import blackbox_ap_loss
from rankax.losses.histogram import fast_ap_loss, histogram_ap_loss
from rankax.losses.pairs import calibration_loss, contrastive_loss, multi_similarity_loss, triplet_loss
from rankax.losses.pnp import pnp_loss
from rankax.losses.proxy import normalized_softmax_loss
from rankax.losses.recall import recall_at_k_surrogate_loss, sup_recall_at_k_loss
from rankax.losses.suprank import hap_loss, sup_ndcg_loss

LIST_LOSSES = (
    smooth_ap_loss,
    supap_loss,
    calibration_loss,
    roadmap_loss,
    sup_recall_at_k_loss,
    sup_ndcg_loss,
    hap_loss,
    pnp_loss,
    histogram_ap_loss,
    fast_ap_loss,
    blackbox_ap_loss,
    recall_at_k_surrogate_loss,
    contrastive_loss,
    triplet_loss,
    multi_similarity_loss,
)

# Losses whose batch value pools the pairs of the whole batch (statistics protocol).
PAIR_POOLED_LOSSES = (calibration_loss, contrastive_loss, roadmap_loss)

__all__ = [
    "LIST_LOSSES",
    "PAIR_POOLED_LOSSES",
    "blackbox_ap_loss",
    "calibration_loss",
    "contrastive_loss",
    "fast_ap_loss",
    "hap_loss",
    "histogram_ap_loss",
    "multi_similarity_loss",
    "normalized_softmax_loss",
    "pnp_loss",
    "recall_at_k_surrogate_loss",
    "roadmap_loss",
    "smooth_ap_loss",
    "sup_ndcg_loss",
    "sup_recall_at_k_loss",
    "supap_loss",
    "triplet_loss",
]
