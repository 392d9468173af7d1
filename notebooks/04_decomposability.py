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
# # 4. The decomposability gap, and what global-batch ranking buys
#
# A rank loss is trained on batches, but the metric is AP over the whole gallery. AP is not
# decomposable: the mean of the APs of the lists of random batches is not the AP of the lists
# over the whole set, because a batch only sees a few of the items that could be ranked before
# a positive. ROADMAP (Ramzi et al., NeurIPS 2021) calls the difference the *decomposability
# gap* and adds a calibration term (`rankax.calibration_loss`: positives above $m^+ = 0.9$,
# negatives below $m^- = 0.6$, absolute thresholds that mean the same in every batch) to shrink
# it. The gap also shrinks as batches grow, which is why rankax ranks every query against the
# *global* batch when the batch is sharded over devices (`rankax.sharding`).
#
# Embeddings of the held-out half of scikit-learn's digits (896 images, 10 classes) from three
# models: a random projection of the pixels, and the same small MLP trained briefly on small
# batches with SupAP alone or with ROADMAP (SupAP + calibration).

# %%
import functools
import os

# Four CPU devices, only for the sharded demonstration at the end (set before JAX starts).
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

import rankax
from rankax.data import PKSampler, load_digits_split
from rankax.models import MLPEmbedding

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
print(jax.devices())

# %% [markdown]
# ## Three embeddings of the held-out digits
#
# The MLPs are trained on the other half with P x K batches of 5 classes x 4 images (batch 20,
# where the gap is large) for a few hundred Adam steps.

# %%
split = load_digits_split()
x_train, y_train = split.train_images, split.train_labels
x_test, y_test = jnp.asarray(split.test_images), jnp.asarray(split.test_labels)
P, K = 5, 4
STEPS = 100 if FAST else 300


def train(loss_fn, steps=STEPS, seed=0, **hparams):
    model = MLPEmbedding(hidden=(128,), embedding_dim=32)
    params = model.init(jax.random.key(seed), x_train[:1])
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    sampler = PKSampler(y_train, classes_per_batch=P, samples_per_class=K, seed=seed)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_of(p):
            return rankax.batch_loss(
                loss_fn, model.apply(p, x), y, max_positives=K - 1, capacity_limit=K - 1, **hparams
            )

        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for t in range(steps):
        idx = sampler.indices(t)
        params, opt_state, _ = step(params, opt_state, x_train[idx], y_train[idx])
    return model.apply(params, x_test)


projection = jax.random.normal(jax.random.key(1), (64, 32))
raw = x_test.reshape(len(x_test), -1) @ projection
embeddings = {
    "random projection": raw / jnp.linalg.norm(raw, axis=1, keepdims=True),
    "SupAP": train(rankax.supap_loss),
    "ROADMAP (SupAP + calibration)": train(rankax.roadmap_loss),
}

# %% [markdown]
# ## Batch-averaged AP vs AP over the whole set
#
# For a batch size $B$ the held-out set is shuffled and cut into batches of $B$; in each batch
# every item ranks the other $B - 1$ (self excluded), and the batch-averaged AP is the mean AP
# over all those lists that have a positive. The AP over the whole set is the same with
# $B = 896$ (`rankax.metrics.average_precision` on the full score matrix; it equals
# `rankax.retrieval.evaluate(...)["map"]`).

# %%
@functools.partial(jax.jit, static_argnames="max_positives")
def mean_batch_ap(emb, labels, max_positives):
    """Mean AP over the lists of ``[nb, B]`` batches (queries with a positive)."""
    scores = jnp.einsum("nid,njd->nij", emb, emb)
    relevant = (labels[:, :, None] == labels[:, None, :]).astype(jnp.int32)
    not_self = jnp.broadcast_to(~jnp.eye(labels.shape[1], dtype=bool), scores.shape)
    # max_positives: only the [C, B] comparisons of each list's C positives are computed.
    return rankax.metrics.average_precision(scores, relevant, where=not_self, max_positives=max_positives)


def batch_averaged_ap(emb, labels, batch_size, repeats, seed=0):
    rng = np.random.default_rng(seed)
    nb = len(labels) // batch_size
    idx = np.stack([rng.permutation(len(labels))[: nb * batch_size] for _ in range(repeats)])
    idx = idx.reshape(repeats * nb, batch_size)
    batch_labels = np.asarray(labels)[idx]
    # Exact capacity: the largest number of positives of any list (its class count - 1, self excluded).
    most = max(np.bincount(row).max() for row in batch_labels) - 1
    return float(mean_batch_ap(emb[idx], jnp.asarray(batch_labels), max(int(most), 1)))


n_test = len(y_test)
# Each batch size compiles its own program: fewer sizes in the fast (test) run.
batch_sizes = ([8, 32, 128] if FAST else [8, 16, 32, 64, 128, 256]) + [n_test]
repeats = 2 if FAST else 4
results = {}
for name, emb in embeddings.items():
    results[name] = [batch_averaged_ap(emb, y_test, b, repeats if b < n_test else 1) for b in batch_sizes]
    check = rankax.retrieval.evaluate(emb, y_test)["map"]
    print(f"{name:30s} whole-set AP {results[name][-1]:.3f} (evaluate: {check:.3f})")
    assert abs(results[name][-1] - check) < 1e-5, "the whole-set AP is evaluate's full-gallery mAP"

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for name, values in results.items():
    values = np.asarray(values)
    axes[0].semilogx(batch_sizes, values, "o-", label=name)
    axes[1].semilogx(batch_sizes[:-1], values[:-1] - values[-1], "o-", label=name)
axes[0].set(title=f"batch-averaged AP (B = {n_test}: the whole set)", xlabel="batch size B", ylabel="mean AP")
axes[1].axhline(0.0, color="k", lw=0.5)
axes[1].set(title="decomposability gap: batch AP - whole-set AP", xlabel="batch size B",
            ylabel="AP difference")
axes[0].legend()
fig.tight_layout()
fig.savefig(FIGURES / "04_decomposability_gap.png", dpi=110)
plt.show()

print(f"{'embedding':30s} " + " ".join(f"B={b:<5d}" for b in batch_sizes[:-1]))
for name, values in results.items():
    print(f"{name:30s} " + " ".join(f"{v - values[-1]:+.3f} " for v in values[:-1]))

# %% [markdown]
# ## What global-batch ranking buys
#
# Data parallelism over $d$ devices gives each device $B/d$ embeddings. If each device ranked
# only its own shard, the loss would be the batch loss at batch size $B/d$, with the larger gap
# above. `rankax.sharding.sharded_batch_loss` all-gathers the embeddings so that every query
# ranks the global batch: the loss (and gradient) of batch size $B$. Here: 4 CPU devices (also
# where JAX's default device is a GPU), a global batch of 256 held-out embeddings of the SupAP
# model.

# %%
mesh = jax.make_mesh((4,), ("data",), devices=jax.devices("cpu")[:4])
sample = np.random.default_rng(0).choice(n_test, 256, replace=False)
emb, lab = embeddings["SupAP"][sample], y_test[sample]
shard = NamedSharding(mesh, PartitionSpec("data"))
# Static positive capacity = the largest class count - 1: one compiled rung, no capacity ladder.
cap = dict(max_positives=int(np.bincount(np.asarray(lab)).max()) - 1)
cap["capacity_limit"] = cap["max_positives"]
sharded_loss = jax.jit(jax.value_and_grad(rankax.sharding.sharded_batch_loss(rankax.supap_loss, mesh, **cap)))
global_value, global_grad = sharded_loss(jax.device_put(emb, shard), jax.device_put(lab, shard))
global_value, global_grad = float(global_value), np.asarray(global_grad)  # to the host
single_value, single_grad = jax.jit(
    jax.value_and_grad(lambda e: rankax.batch_loss(rankax.supap_loss, e, lab, **cap))
)(emb)
grad_difference = float(np.max(np.abs(np.asarray(single_grad) - global_grad)))
assert abs(float(single_value) - global_value) < 1e-5 and grad_difference < 1e-6, "one loss, two layouts"


def local_only(e):
    """What ranking inside each device's shard would optimise: the mean of 4 batch losses."""
    return jnp.mean(jnp.stack([rankax.batch_loss(rankax.supap_loss, c, y, **cap) for c, y in
                               zip(jnp.split(e, 4), jnp.split(lab, 4), strict=True)]))


local_value, local_grad = jax.jit(jax.value_and_grad(local_only))(emb)
local_grad = np.asarray(local_grad)
cosine = float(np.vdot(local_grad, global_grad) / np.linalg.norm(local_grad) / np.linalg.norm(global_grad))
print(f"SupAP loss, global batch of 256 on 4 devices:     {global_value:.4f}")
print(f"SupAP loss, one device, batch_loss on all 256:    {float(single_value):.4f} "
      f"(max |grad difference| {grad_difference:.1e})")
print(f"SupAP loss, each device ranks only its 64:        {float(local_value):.4f}")
print(f"cosine(local-only gradient, global gradient):     {cosine:.3f}")

# %% [markdown]
# **Reading.** Small batches overestimate AP: a positive in a batch of 8 has far fewer
# negatives that can precede it than in the whole set, so the batch-averaged AP sits above the
# whole-set AP and converges to it only as $B$ grows. Measured on the 2-core CPU with the default
# settings: the gap at $B = 8$ is +0.19 AP for the random projection, +0.055 for SupAP and +0.045
# for ROADMAP; at $B = 256$ it is below 0.01 for all three. The loss the model is trained on has
# the same bias, so a small-batch loss is a biased estimate of the quantity we care about. The
# calibration term shrinks the gap a little at small $B$ here, but the ROADMAP model also has a
# higher AP (0.922 vs 0.907), and better embeddings have smaller gaps anyway: on digits the two
# effects are not separated (one seed, one short run; rounding-level changes to the library
# move the trained models' figures by up to ~0.01). Global-batch ranking removes the factor
# $d$ on the list length for free: the sharded loss equals the single-device loss on the whole
# batch of 256 (gradient difference ~1e-9), while ranking only each device's 64 optimises a
# different loss (0.122 instead of 0.127) whose gradient has cosine 0.77 with the right one.
