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
# # 1. Surrogates of the Heaviside step, and what they cost in AP
#
# Every rank loss replaces the step $H(x) = 1[x \ge 0]$ in
# $\mathrm{rank}(k) = 1 + \sum_{j \ne k} H(s_j - s_k)$ by something with a gradient:
#
# * **Smooth-AP**: a sigmoid $\sigma(x/\tau)$ (`rankax.ranking.sigmoid_step`);
# * **SupAP / ROADMAP**: a piecewise upper bound of $H$ (`rankax.ranking.roadmap_step`), in the
#   first NeurIPS'21 form (`variant="neurips"`, a jump up at $\delta$) and the later one
#   (`variant="fixed"`, whose linear branch starts at `offset`: a small drop at $\delta$);
# * **histogram AP / FastAP**: no step at all: each score is spread over the two nearest bins by
#   triangular kernels and ranks are read from soft bin counts.
#
# The second half measures how far each relaxed AP is from the exact AP on random lists as the
# temperature or the number of bins varies.

# %%
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import rankax
from rankax import ranking

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

# %% [markdown]
# ## The step and its surrogates
#
# With the SOP/CUB defaults ($\tau = 0.01$, $\rho = 100$, $\delta = 0.05$, start $= 0.5$,
# offset $= 1.44$), ROADMAP's $h$ lies above $H$ everywhere except at 0: a negative ranked
# before a positive ($x > 0$) counts for more than one, and the linear branch keeps a constant
# slope $\rho$ where a sigmoid's gradient has vanished.

# %%
x = jnp.linspace(-0.1, 0.1, 801)
fig, axes = plt.subplots(1, 3, figsize=(15, 4))

ax = axes[0]
ax.plot(x, ranking.heaviside(x), "k", lw=2, label="Heaviside $H$")
for tau in (0.001, 0.005, 0.01, 0.03):
    ax.plot(x, ranking.sigmoid_step(x, tau), label=rf"$\sigma(x/\tau)$, $\tau$={tau}")
ax.set(title="Smooth-AP: sigmoid", xlabel=r"$x = s_j - s_k$", ylabel="step value")
ax.legend(fontsize=8)

ax = axes[1]
ax.plot(x, ranking.heaviside(x), "k", lw=2, label="$H$")
for variant, style in (("neurips", "--"), ("fixed", "-")):
    ax.plot(x, ranking.roadmap_step(x, variant=variant), style, label=f"ROADMAP h, variant={variant!r}")
ax.plot(x, ranking.roadmap_step(x, start=0.0, offset=1.0), ":", label="fixed, iNat (start=0, offset=1)")
ax.axvline(0.05, color="grey", lw=0.5)
ax.set(title=r"SupAP: piecewise upper bound ($\delta$ = 0.05)", xlabel=r"$x = s_j - s_k$", ylim=(-0.2, 8))
ax.legend(fontsize=8)

# Histogram AP's quantiser (histogram_ap_loss's definition, written out here for display):
# M centres evenly spaced on [lo, hi], triangles of half-width = spacing, flat end bins.
ax = axes[2]
lo, hi, num_bins = 0.0, 1.0, 6
width = (hi - lo) / (num_bins - 1)
centres = hi - width * np.arange(num_bins)
s = np.linspace(-0.1, 1.1, 601)
kernels = np.maximum(0.0, 1.0 - np.abs(s[:, None] - centres) / width)
kernels[s >= hi, 0] = 1.0
kernels[s <= lo, -1] = 1.0
for m in range(num_bins):
    ax.plot(s, kernels[:, m], label=f"bin {m} (centre {centres[m]:.1f})")
ax.plot(s, kernels.sum(1), "k--", lw=1, label="sum (partition of unity)")
ax.set(title=f"Histogram AP: triangular kernels, M={num_bins}", xlabel="score $s$", ylabel="bin weight",
       ylim=(-0.05, 1.5))
ax.legend(fontsize=7, loc="upper center", ncol=3)
fig.tight_layout()
fig.savefig(FIGURES / "01_step_surrogates.png", dpi=110)
plt.show()

# %% [markdown]
# The NeurIPS'21 form jumps at $\delta$ from $\mathrm{start} + \sigma(\delta/\tau) \approx 1.49$
# to $\rho\delta + \mathrm{offset} \approx 6.44$:

# %%
eps = 1e-6
for variant in ("neurips", "fixed"):
    below, above = ranking.roadmap_step(jnp.array([0.05 - eps, 0.05 + eps]), variant=variant)
    print(f"{variant:8s} h(delta-) = {float(below):.3f}   h(delta+) = {float(above):.3f}")

# %% [markdown]
# ## Error of the relaxed AP on random lists
#
# 256 lists of 100 items, 10 positives; scores in $[0, 1]$ (histogram AP's default range) with
# the positives shifted up, so exact AP is spread over $(0, 1)$. Exact AP is
# `rankax.metrics.average_precision`; the relaxed APs are one minus the losses
# (per list, `reduce_fn=None`).

# %%
num_lists, n, num_pos = (64, 100, 10) if FAST else (256, 100, 10)
key_scores, key_shift = jax.random.split(jax.random.key(0))
labels = jnp.zeros((num_lists, n), jnp.int32).at[:, :num_pos].set(1)
shift = jax.random.uniform(key_shift, (num_lists, 1), maxval=0.3)
scores = jnp.clip(0.4 + 0.15 * jax.random.normal(key_scores, (num_lists, n)) + shift * labels, 0.0, 1.0)

exact = rankax.metrics.average_precision(scores, labels, reduce_fn=None)
print(f"exact AP over the lists: mean {float(exact.mean()):.3f}, min {float(exact.min()):.3f}, "
      f"max {float(exact.max()):.3f}")

# %%
def mean_abs_error(loss_values):
    """Mean over the lists of |relaxed AP - exact AP|, relaxed AP = 1 - per-list loss."""
    return float(jnp.mean(jnp.abs(1.0 - loss_values - exact)))


temperatures = np.geomspace(1e-4, 0.3, 8 if FAST else 14)
smooth_err = [
    mean_abs_error(rankax.smooth_ap_loss(scores, labels, temperature=t, reduce_fn=None)) for t in temperatures
]
# Every M compiles its own program (the number of bins is static): few values, one jit each.
histogram_ap = jax.jit(rankax.histogram_ap_loss, static_argnames=("num_bins", "tie_aware", "reduce_fn"))
bins = np.array([3, 12, 50, 200] if FAST else [3, 6, 12, 25, 50, 100, 200])
hist_err = [mean_abs_error(histogram_ap(scores, labels, num_bins=int(m), reduce_fn=None)) for m in bins]
hist_err_tie = [
    mean_abs_error(histogram_ap(scores, labels, num_bins=int(m), tie_aware=True, reduce_fn=None))
    for m in bins
]
supap_gap = {
    v: 1.0 - rankax.supap_loss(scores, labels, variant=v, reduce_fn=None) - exact
    for v in ("fixed", "neurips")
}

fig, axes = plt.subplots(1, 3, figsize=(15, 4))
ax = axes[0]
ax.loglog(temperatures, smooth_err, "o-")
ax.axvline(0.01, color="grey", lw=0.5)
ax.set(title="Smooth-AP: mean |AP_smooth - AP|", xlabel=r"temperature $\tau$", ylabel="mean absolute error")
ax = axes[1]
ax.loglog(bins, hist_err, "o-", label="histogram AP")
ax.loglog(bins, hist_err_tie, "s-", label="tie-aware histogram AP")
ax.axvline(25, color="grey", lw=0.5)
ax.set(title="Histogram AP: mean |AP_hist - AP|", xlabel="number of bins M")
ax.legend()
ax = axes[2]
for v, gap in supap_gap.items():
    ax.scatter(exact, gap, s=8, label=f"SupAP variant={v!r}")
ax.axhline(0.0, color="k", lw=0.5)
ax.set(title="SupAP is a lower bound of AP (1 - SupAP loss <= AP)", xlabel="exact AP",
       ylabel="(1 - SupAP loss) - AP")
ax.legend()
fig.tight_layout()
fig.savefig(FIGURES / "01_relaxation_error.png", dpi=110)
plt.show()

# %%
default = rankax.smooth_ap_loss(scores, labels, temperature=0.01, reduce_fn=None)
print(f"Smooth-AP, tau=0.01:   mean |error| = {mean_abs_error(default):.4f}")
print(f"Smooth-AP, tau={temperatures[0]:.0e}: mean |error| = {smooth_err[0]:.4f}")
print(f"Smooth-AP, tau={temperatures[-1]:.1f}:    mean |error| = {smooth_err[-1]:.4f}")
m25 = histogram_ap(scores, labels, num_bins=25, reduce_fn=None)
print(f"histogram AP, M=25:    mean |error| = {mean_abs_error(m25):.4f}")
print(f"histogram AP, M={bins[-1]}:   mean |error| = {hist_err[-1]:.4f}")
for v, gap in supap_gap.items():
    print(f"SupAP {v:8s}: max of (1 - SupAP) - AP = {float(gap.max()):.4f} (<= 0: a bound), "
          f"mean {float(gap.mean()):.3f}")
    assert float(gap.max()) <= 0, f"1 - SupAP ({v}) overestimated AP"

# %% [markdown]
# **Reading.** The sigmoid's error falls roughly linearly with $\tau$; at the default
# $\tau = 0.01$, comparable to the gaps between neighbouring scores of these lists, Smooth-AP is
# off by about 0.01 AP on average, and by 0.22 at the largest $\tau$ here, 0.3. The histogram error falls
# with $M$ (at the paper's $M = 25$ it is several times Smooth-AP's at $\tau = 0.01$); the
# tie-aware variant is closer for coarse bins but levels off, since it treats the items of a bin
# as tied even when the bins are fine (an item between two centres is also split between them;
# see `docs/losses.md`). SupAP never overestimates AP: its loss is an upper bound of
# $1 - \mathrm{AP}$, loose by 0.05-0.45 here (0.16 on average), and the NeurIPS'21 jump makes it
# looser (0.18).
