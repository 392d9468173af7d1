"""PNG plots written at the end of a run (matplotlib, Agg backend)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: list[dict[str, Any]], path: str) -> None:
    """Loss per logged step and every ``eval/*`` metric against the step."""
    plt = _pyplot()
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    # rates in [0, 1] only (counts such as eval/num_queries would flatten the axis)
    evals = sorted({k for h in history for k in h if k.startswith("eval/") and not k.startswith("eval/num_")})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if losses:
        s, v = zip(*losses, strict=True)
        axes[0].plot(s, v)
        if min(v) > 0:
            axes[0].set_yscale("log")
    axes[0].set(xlabel="step", ylabel="training loss", title="loss")
    for key in evals:
        pts = [(h["step"], h[key]) for h in history if key in h]
        s, v = zip(*pts, strict=True)
        axes[1].plot(s, v, marker="o", label=key[len("eval/") :])
    axes[1].set(xlabel="step", title="held-out retrieval")
    if evals:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def embedding_projection(embeddings: np.ndarray, labels: np.ndarray, path: str) -> None:
    """2-D PCA projection of L2-normalised embeddings, coloured by class."""
    plt = _pyplot()
    x = embeddings - embeddings.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    fig, ax = plt.subplots(figsize=(5, 5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=6)
    ax.legend(*sc.legend_elements(), fontsize=7, loc="best", title="class")
    ax.set(title="test embeddings (PCA)", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
