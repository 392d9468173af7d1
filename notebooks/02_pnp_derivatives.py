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
# # 2. PNP: the shape of $F(R)$ decides which positives are pushed
#
# PNP (Li et al., AAAI 2022) counts, for each positive $i$, the negatives ranked before it,
# $R_i = \sum_{j \in Neg} \sigma((s_j - s_i)/\tau)$, and minimises the mean of $F(R_i)$. Since
# $\partial \mathcal{L} / \partial s_j \propto F'(R_i)\,\sigma'$, the derivative $F'$ is the weight
# a positive's pairs get. Increasing $F'$ (Iu, Ib) works hardest on positives that are already
# far down the list; decreasing $F'$ (Ds, Dq, the paper's PNP-D) works hardest on positives that
# are *almost* right, which is what AP rewards most, and gives up on hopeless ones (outliers,
# label noise). Below everything is computed from `rankax.pnp_loss` with `jax.grad`/`jax.vmap`.

# %%
import functools
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
VARIANTS = ("O", "Iu", "Ib", "Ds", "Dq")
TAU = 0.01

# %% [markdown]
# ## $F(R)$ and $F'(R)$ through the loss itself
#
# A list with one positive at score 0 and $M$ negatives all at score $x$ has
# $R = M \sigma(x/\tau)$, so choosing $x = \tau\,\mathrm{logit}(R/M)$ makes `pnp_loss` of that
# list equal to $F(R)$ for any $R \in (0, M)$. Differentiating that function of $R$ with
# `jax.grad` gives $F'(R)$ from the library's code, not from a formula copied here.

# %%
M = 64
list_labels = jnp.zeros(M + 1, jnp.int32).at[0].set(1)


def pnp_of_r(r, variant, alpha=4.0):
    x = TAU * jax.scipy.special.logit(r / M)
    scores = jnp.concatenate([jnp.zeros(1), jnp.full(M, x)])
    return rankax.pnp_loss(scores, list_labels, variant=variant, temperature=TAU, alpha=alpha)


r = jnp.linspace(0.01, 30.0, 300)
curves = {}
for variant, alpha in [(v, 4.0) for v in VARIANTS] + [("Dq", 8.0)]:
    name = variant if variant != "Dq" else f"Dq (alpha={alpha:g})"
    f_of_r = functools.partial(pnp_of_r, variant=variant, alpha=alpha)
    curves[name] = jax.jit(jax.vmap(jax.value_and_grad(f_of_r)))(r)  # (F, F')

# The docstring's closed forms, as a check of the construction.
closed = {
    "O": r, "Iu": (1 + r) * jnp.log1p(r), "Ib": (2 * r - jnp.log1p(2 * r)) / 4, "Ds": jnp.log1p(r),
    "Dq (alpha=4)": 1 - (1 + r) ** -4.0,
}
for name, ref in closed.items():
    error = float(jnp.max(jnp.abs(curves[name][0] - ref)))
    print(f"{name:14s} max |F_loss - F_formula| = {error:.1e}")
    assert error < 1e-4, f"{name}: the loss's F is not the closed form"

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for name, (f, df) in curves.items():
    axes[0].plot(r, f, label=name)
    axes[1].plot(r, df, label=name)
axes[0].set(title="F(R)", xlabel="R (smooth number of negatives before the positive)", yscale="log",
            ylim=(1e-4, 200))
axes[1].set(title="dF/dR (jax.grad through pnp_loss)", xlabel="R", yscale="log", ylim=(1e-6, 10))
axes[0].legend()
axes[1].legend()
fig.tight_layout()
fig.savefig(FIGURES / "02_pnp_shapes.png", dpi=110)
plt.show()

# %% [markdown]
# ## The gradient each positive receives
#
# One list of 60 items with scores evenly spaced by $0.02 = 2\tau$ (so every pair of neighbours
# is inside the sigmoid's active zone) and 10 positives placed so that $0, 1, 3, 6, \dots$
# negatives precede them. Each positive's gradient $-\partial\mathcal{L}/\partial s_i$ is how hard
# the loss pulls it up.

# %%
n = 60
scores = jnp.linspace(1.0, 1.0 - 0.02 * (n - 1), n)
positions = np.array([0, 2, 5, 9, 14, 20, 27, 35, 44, 54])
labels = jnp.zeros(n, jnp.int32).at[positions].set(1)
negatives_before = positions - np.arange(len(positions))

pull = {}
for variant in VARIANTS:
    loss = functools.partial(rankax.pnp_loss, labels=labels, variant=variant, temperature=TAU)
    g = jax.jit(jax.grad(loss))(scores)
    pull[variant] = -np.asarray(g)[positions]

fig, ax = plt.subplots(figsize=(7, 4))
for variant in VARIANTS:
    ax.semilogy(negatives_before, np.maximum(pull[variant], 1e-12), "o-", label=f"PNP-{variant}")
ax.set(title="Pull on each positive, -dL/ds_i", xlabel="negatives ranked before the positive",
       ylabel="gradient magnitude")
ax.legend()
fig.tight_layout()
fig.savefig(FIGURES / "02_pnp_gradient_per_positive.png", dpi=110)
plt.show()

# %%
print("negatives before:", negatives_before.tolist())
for variant in VARIANTS:
    ratio = pull[variant][-1] / pull[variant][1]
    print(f"PNP-{variant:2s} pull on the last positive / on the second: {ratio:10.3g}")

# %% [markdown]
# **Reading.** The top positive has no negative before it ($R$ is only the sigmoid tail of the
# negative just below it), so its pull is set by $F'$ near 0: largest for Dq
# ($F'(0) = \alpha = 4$), about 1 for O, Iu and Ds ($F'(0) = 1$), tiny for Ib ($F'(0) = 0$).
# Further down, O pulls every positive with the same force, Iu and Ib pull harder the further
# down a positive is, and Ds and Dq decay: Dq with $\alpha = 4$ pulls the positive
# behind 45 negatives about $10^{-7}$ times as hard as the one behind a single negative (numbers
# above). That is the paper's argument for PNP-D: spend the gradient where a small move changes
# AP the most, and do not let a few hopeless positives dominate the batch.
