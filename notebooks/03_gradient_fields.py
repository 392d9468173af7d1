# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Gradient fields: which items each AP loss pushes, and how hard
#
# One small retrieval list, five AP surrogates, their gradients with respect to the scores
# (`jax.grad`). A negative gradient on a positive means "raise this score"; a positive one on a
# negative means "lower it". We plot $-\partial\mathcal{L}/\partial s$, so bars point in the
# direction the item is moved, and then sweep the score of one positive to see the whole field
# that positive feels.

# %%
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import rankax

FAST = os.environ.get("RANKAX_NOTEBOOK_FAST") == "1"


def figure_dir() -> Path:
    """``$RANKAX_NOTEBOOK_FIGURES``, else ``docs/notebooks`` of the repository we run in."""
    if "RANKAX_NOTEBOOK_FIGURES" in os.environ:
        out = Path(os.environ["RANKAX_NOTEBOOK_FIGURES"])
    else:
        here = Path.cwd().resolve()
        root = next((p for p in (here, *here.parents) if (p / "rankax").is_dir()), here)
        out = root / "docs" / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    return out


FIGURES = figure_dir()

# Each loss with its published defaults. Histogram AP quantises [0, 1] (its default range);
# the list's scores lie inside it.
LOSSES = {
    "SupAP": rankax.supap_loss,
    "Smooth-AP (tau=0.01)": rankax.smooth_ap_loss,
    "FastAP (10 bins)": rankax.fast_ap_loss,
    "histogram AP (25 bins)": rankax.histogram_ap_loss,
    "BlackBox AP (lambda=4)": rankax.blackbox_ap_loss,
}

# %% [markdown]
# ## One list of 24 items, 6 positives

# %%
n, num_pos = 24, 6
rng = np.random.default_rng(3)
scores = np.sort(rng.uniform(0.2, 0.9, n))[::-1].copy()  # item 0 is ranked first
labels = np.zeros(n, np.int32)
labels[rng.choice(n, num_pos, replace=False)] = 1
scores, labels = jnp.asarray(scores, jnp.float32), jnp.asarray(labels)
ap = float(rankax.metrics.average_precision(scores, labels))
print("positives at ranks", (np.flatnonzero(np.asarray(labels)) + 1).tolist(), f"AP = {ap:.3f}")

# jax.jit: one compilation per loss (op-by-op execution of a first grad call costs more).
values_and_grads = {name: jax.jit(jax.value_and_grad(fn))(scores, labels) for name, fn in LOSSES.items()}
values = {name: float(v) for name, (v, _) in values_and_grads.items()}
grads = {name: np.asarray(g) for name, (_, g) in values_and_grads.items()}
# BlackBox AP's value: 1 - AP once positives move down and negatives up by half the margin.
shifted = scores - 0.02 * (labels - 0.5)
shifted_ap = float(rankax.metrics.average_precision(shifted, labels))
print(f"BlackBox AP loss {values['BlackBox AP (lambda=4)']:.3f} = 1 - AP of the shifted scores "
      f"({1 - shifted_ap:.3f}); 1 - AP = {1 - ap:.3f}")
assert abs(values["BlackBox AP (lambda=4)"] - (1 - shifted_ap)) < 1e-6

fig, axes = plt.subplots(len(LOSSES), 1, figsize=(10, 2.0 * len(LOSSES)), sharex=True)
colours = np.where(np.asarray(labels) > 0, "tab:green", "tab:red")
for ax, (name, g) in zip(axes, grads.items(), strict=True):
    ax.bar(np.arange(1, n + 1), -g, color=colours)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("-dL/ds")
    ax.set_title(f"{name}: loss {values[name]:.3f}", fontsize=10, loc="left")
axes[-1].set_xlabel("rank of the item in the list (green: positive, red: negative)")
fig.tight_layout()
fig.savefig(FIGURES / "03_gradients_on_a_list.png", dpi=110)
plt.show()

# %%
print(f"{'loss':24s} {'items moved':>12s} {'largest |grad|':>15s} {'sum over items':>15s}")
for name, g in grads.items():
    moved = int(np.sum(np.abs(g) > 1e-3 * np.abs(g).max()))
    print(f"{name:24s} {moved:8d}/{n:<3d} {np.abs(g).max():15.3g} {g.sum():15.2e}")

# %% [markdown]
# ## The field one positive feels
#
# Keep every other item fixed and move the best-ranked positive's score over $[0, 1]$: its
# gradient as a function of its own score (`jax.vmap` over the sweep). Vertical lines: the
# scores of the negatives.

# %%
moving = int(np.flatnonzero(np.asarray(labels))[0])
sweep = jnp.linspace(0.0, 1.0, 101 if FAST else 401)


def pull_on_moving(fn, value):
    return -jax.grad(fn)(scores.at[moving].set(value), labels)[moving]


fig, axes = plt.subplots(len(LOSSES), 1, figsize=(10, 2.0 * len(LOSSES)), sharex=True)
for ax, (name, fn) in zip(axes, LOSSES.items(), strict=True):
    field = jax.jit(jax.vmap(lambda v, f=fn: pull_on_moving(f, v)))(sweep)
    ax.plot(sweep, field, color="tab:green")
    for s_neg in np.asarray(scores)[np.asarray(labels) == 0]:
        ax.axvline(s_neg, color="tab:red", lw=0.4, alpha=0.6)
    ax.set_title(name, fontsize=10, loc="left")
    ax.set_ylabel("-dL/ds")
axes[-1].set_xlabel(f"score of the moving positive (item ranked {moving + 1} in the list above)")
fig.tight_layout()
fig.savefig(FIGURES / "03_field_of_one_positive.png", dpi=110)
plt.show()

# %% [markdown]
# **Reading.**
#
# * **Smooth-AP** moves only items within a few $\tau$ of an item of the other class: the field is
#   a sum of sigmoid bumps centred on the negatives, and a positive far below all of them (scores
#   0-0.2 above) gets nothing.
# * **SupAP** pulls a positive up with the linear branch's constant slope $\rho$ for every negative
#   more than $\delta$ above it, so no positive is ever left without gradient below a negative;
#   the pull on AP still decays (as $\mathrm{rank}^+/\mathrm{rank}^2$), and it stops past the top
#   negative.
# * **FastAP** and **histogram AP** act through bin counts: every item of the list moves
#   (FastAP: 24/24), the field is a sawtooth with the bin period (0.2 in cosine for FastAP's
#   10 distance bins, 1/24 for 25 bins on [0, 1]) and changes sign inside bins -- some positives
#   are pushed *down* (histogram AP, ranks 12-13). Their gradients do not sum to zero over the
#   list, unlike the rank-based losses, because the bins quantise absolute scores, not
#   differences.
# * **BlackBox AP** has the exact AP of the margin-shifted scores as its value (positives moved
#   down and negatives up by half the margin of 0.02: the loss is 0.653 here where 1 - AP is
#   0.570, since the top positive falls below the negative 0.012 under it) and a gradient
#   that is piecewise constant in the score, small (about 0.1 here) and spread over a wide
#   range of scores set by $\lambda$, not by the neighbours.
