"""PNG plots written at the end of a run (matplotlib, Agg backend)."""

from __future__ import annotations

from typing import Any

import numpy as np

from rankax._core.normalize import l2_normalize_host


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_BASELINE_STYLE = {"raw pixels": ":", "untrained": "--"}


def training_curves(
    history: list[dict[str, Any]], path: str, baselines: dict[str, dict[str, float]] | None = None
) -> None:
    """Loss per logged step (left) and every ``eval/*`` rate against the step (right), one
    colour per metric; each baseline of ``baselines`` (``{"raw pixels": {metric: value}}``,
    the trained model excluded) is a horizontal line of the metric's colour, so a reader sees
    what training added. The legend sits outside the axes."""
    plt = _pyplot()
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    # rates in [0, 1] only (counts such as eval/num_queries would flatten the axis)
    evals = sorted({k for h in history for k in h if k.startswith("eval/") and not k.startswith("eval/num_")})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1.3]})
    if losses:
        s, v = zip(*losses, strict=True)
        axes[0].plot(s, v)
        if min(v) > 0:
            axes[0].set_yscale("log")
    axes[0].set(xlabel="step", ylabel="training loss", title="loss")
    shown = {name: vals for name, vals in (baselines or {}).items() if name in _BASELINE_STYLE}
    for i, key in enumerate(evals):
        color = f"C{i % 10}"
        pts = [(h["step"], h[key]) for h in history if key in h]
        s, v = zip(*pts, strict=True)
        axes[1].plot(s, v, marker="o", color=color, label=f"trained: {key[len('eval/'):]}")
        for name, vals in shown.items():
            if key[5:] in vals:
                axes[1].axhline(vals[key[5:]], color=color, ls=_BASELINE_STYLE[name], lw=1, alpha=0.8)
    for name in shown:  # legend entries for the line styles of the baselines
        axes[1].plot([], [], color="gray", ls=_BASELINE_STYLE[name], label=name)
    axes[1].set(xlabel="step", title="held-out retrieval (lines: baselines)")
    if evals:
        axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pca(embeddings: np.ndarray) -> np.ndarray:
    x = l2_normalize_host(embeddings)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def embedding_projection(
    embeddings: np.ndarray,
    labels: np.ndarray,
    path: str,
    before: np.ndarray | None = None,
    report: dict[str, dict[str, float]] | None = None,
) -> None:
    """2-D PCA of the L2-normalised test embeddings, coloured by class; with ``before`` (the
    untrained network's embeddings of the same items) the two side by side. Each panel's title
    carries its MAP@R from ``report`` (``"untrained"``/``"trained"``), because a 2-D projection
    of a 64-d embedding overlaps classes that the full space separates. The legend is outside."""
    plt = _pyplot()
    panels = ([("untrained network", before, "untrained")] if before is not None else []) + [
        ("trained network", embeddings, "trained")
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.2, 4.6), squeeze=False)
    sc = None
    for ax, (title, emb, key) in zip(axes[0], panels, strict=True):
        xy = _pca(emb)
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=5, alpha=0.8)
        score = (report or {}).get(key, {}).get("map@r")
        suffix = f"\nMAP@R {score:.3f} in the full {emb.shape[1]}-d space" if score is not None else ""
        ax.set(title=f"{title}: test embeddings, 2-D PCA{suffix}", xticks=[], yticks=[])
        ax.title.set_fontsize(9)
    handles, names = sc.legend_elements()
    fig.legend(handles, names, fontsize=7, title="class", loc="center right")
    fig.tight_layout(rect=(0, 0, 1 - 1.0 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
