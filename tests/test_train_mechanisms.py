"""The training mechanisms official recipes need, each on its own, on digits or generated data:
loss terms that own parameters (class proxies) with their own optimizer, parameter groups,
the frozen warm-up and its exact switch step, schedules in epochs, mixed precision and the
model selection. Every expected number is written out from its formula here."""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

import rankax
from rankax.train import checkpointing, errors, input_pipeline, losses, optim, state, step, train_lib
from tests.test_train import tiny_config

# ----------------------------------------------------------------------------- helpers


def _sgd_config(**optimizer):
    c = tiny_config(num_steps=40)
    c.optimizer.update(name="sgd", momentum=0.0, weight_decay=0.0, lr=0.1, head_lr=0.2)
    c.optimizer.update(optimizer)
    return c


def _updates(tx, params, grads, steps):
    """The update of each of ``steps`` successive calls of ``tx`` with constant ``grads``."""
    opt_state, out = tx.init(params), []
    for _ in range(steps):
        upd, opt_state = tx.update(grads, opt_state, params)
        out.append(upd)
    return out


PARAMS = {"Dense_0": {"kernel": jnp.ones((2, 3))}, "head": {"kernel": jnp.ones((3, 2))}}
GRADS = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)


def _cosine(lr, t, total, floor=0.0):
    return floor + (lr - floor) * (1 + math.cos(math.pi * min(t, total) / total)) / 2


def _cluster_term(weight=0.1, lr=10.0, **section):
    return ml_collections.ConfigDict(
        {
            "name": "normalized_softmax",
            "weight": weight,
            "hparams": {"temperature": 0.05},
            "optimizer": {"name": "sgd", "momentum": 0.0, "lr": lr, **section},
        }
    )


def _np_normalized_softmax(emb, labels, proxies, temperature):
    """-log softmax(cos(e_i, p_c) / T)[y_i], averaged: the formula, in float64 numpy."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    p = proxies / np.linalg.norm(proxies, axis=1, keepdims=True)
    logits = e @ p.T / temperature
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(labels)), labels]))


# ----------------------------------------------------------------------------- groups and schedules


def test_head_group_has_its_own_lr_and_weight_decay():
    """SGD update = -lr * (g + wd * p): backbone lr 0.1 / wd 0.01, head lr 0.2 / wd 0.5."""
    c = _sgd_config(weight_decay=0.01, head_weight_decay=0.5)
    (upd,) = _updates(optim.make_optimizer(c), PARAMS, GRADS, 1)
    np.testing.assert_allclose(upd["Dense_0"]["kernel"], -0.1 * (0.5 + 0.01 * 1.0), rtol=1e-6)
    np.testing.assert_allclose(upd["head"]["kernel"], -0.2 * (0.5 + 0.5 * 1.0), rtol=1e-6)


def test_multistep_in_epochs_follows_the_sampler_epochs():
    """Epochs of varying length (starts 0, 4, 9, 15, 22, ...): x0.3 from the starts of epochs 1
    and 3, i.e. at steps 4 and 15."""
    starts = [0, 4, 9, 15, 22, 30, 39]
    c = _sgd_config(schedule="multistep", decay_epochs=(1, 3), decay_factor=0.3)
    sched = optim.make_schedule(c, 1.0, epoch_start=lambda e: starts[e])
    for t, want in ((0, 1.0), (3, 1.0), (4, 0.3), (14, 0.3), (15, 0.09), (39, 0.09)):
        np.testing.assert_allclose(float(sched(t)), want, rtol=1e-6, err_msg=f"step {t}")


def test_step_every_k_epochs():
    c = _sgd_config(schedule="step_epochs", decay_every_epochs=2, decay_factor=0.5)
    sched = optim.make_schedule(c, 1.0, epoch_start=lambda e: 7 * e)  # 40 steps: 14, 28 inside
    for t, want in ((13, 1.0), (14, 0.5), (27, 0.5), (28, 0.25), (39, 0.25)):
        np.testing.assert_allclose(float(sched(t)), want, rtol=1e-6, err_msg=f"step {t}")


def test_cosine_to_an_absolute_floor():
    c = _sgd_config(schedule="cosine", final_lr=1e-6, final_lr_ratio=0.5)  # final_lr wins
    sched = optim.make_schedule(c, 2e-5)
    for t in (0, 10, 39, 40):
        np.testing.assert_allclose(float(sched(t)), _cosine(2e-5, t, 40, 1e-6), rtol=1e-5)


def test_epoch_keys_without_a_sampler_are_an_error():
    c = _sgd_config(schedule="multistep", decay_epochs=(1,))
    with pytest.raises(errors.ConfigError, match="optimizer.decay_epochs"):
        optim.make_schedule(c, 1.0)


def test_epoch_clock_of_a_sampler_without_epochs_is_images_over_batch():
    c = tiny_config()
    data = input_pipeline.load(c)
    clock = optim.epoch_clock(input_pipeline.make_sampler(c, data), len(data.train.labels))
    assert clock(3) == 3 * (len(data.train.labels) // 20)


# ----------------------------------------------------------------------------- frozen warm-up


@pytest.mark.parametrize("paused", ["all", "frozen"])
def test_frozen_warmup_switches_at_the_epoch_start_and_pauses_schedules(paused):
    """Epoch length 3, warm-up 2 epochs: the backbone gets nothing for updates 0-5 and at
    update t >= 6 the cosine value of its own count t - 6; the head trains throughout, its
    cosine counting from update 6 ("all") or from update 0 ("frozen")."""
    c = _sgd_config(
        schedule="cosine",
        frozen_warmup_epochs=2,
        frozen_groups=("backbone",),
        warmup_paused_schedules=paused,
    )
    updates = _updates(optim.make_optimizer(c, epoch_start=lambda e: 3 * e), PARAMS, GRADS, 12)
    for t, upd in enumerate(updates):
        backbone = 0.0 if t < 6 else -_cosine(0.1, t - 6, 40) * 0.5
        head_count = max(t - 6, 0) if paused == "all" else t
        np.testing.assert_allclose(upd["Dense_0"]["kernel"], backbone, rtol=1e-6, atol=0, err_msg=f"t={t}")
        np.testing.assert_allclose(upd["head"]["kernel"], -_cosine(0.2, head_count, 40) * 0.5, rtol=1e-6)


@pytest.mark.parametrize("tail", [5, 3])
def test_frozen_group_counts_the_epochs_from_the_switch_when_they_differ_in_length(tail):
    """Epochs of 2, 7, 3, 5, 4, 6, 3, 8 steps (an M-per-class sampler's), a per-epoch cosine
    and a 2-epoch warm-up that freezes the backbone and pauses every schedule: from the switch
    (step 9) both groups hold, over run epoch e, torch's CosineAnnealingLR(T_max=8) stepped
    once an epoch from the switch, cos(pi (e - 2) / 8), so they change only at epoch starts and
    agree with each other (the backbone used to count its epochs from step 0 and changed inside
    epoch 2; the cosine was read at epoch_start(e) - 9 of 38 steps, off where lengths differ).
    T_max is the run's 8 epochs also where the epochs after its end (``tail`` steps each) are
    shorter than the warm-up's: 38 - 9 steps from the switch then hold 9 epochs' starts."""
    starts = np.cumsum([0, 2, 7, 3, 5, 4, 6, 3, 8] + [tail] * 10)  # the run ends at starts[8]
    c = _sgd_config(
        schedule="cosine", schedule_unit="epoch", head_lr=0.1,
        frozen_warmup_epochs=2, frozen_groups=("backbone",), warmup_paused_schedules="all",
    )
    c.num_steps = int(starts[8])
    tx = optim.make_optimizer(c, epoch_start=lambda e: int(starts[int(e)]))
    for t, upd in enumerate(_updates(tx, PARAMS, GRADS, c.num_steps)):
        epoch = int(np.searchsorted(starts, t, side="right") - 1)
        lr = _cosine(0.1, max(epoch - 2, 0), 8)
        np.testing.assert_allclose(upd["head"]["kernel"], -lr * 0.5, rtol=1e-6, err_msg=f"t={t}")
        backbone = 0.0 if t < 9 else -lr * 0.5
        np.testing.assert_allclose(upd["Dense_0"]["kernel"], backbone, rtol=1e-6, atol=0, err_msg=f"t={t}")


def test_a_linear_warmup_counts_each_groups_own_updates_under_a_frozen_warmup():
    """warmup_steps=4 with a 2-epoch frozen warm-up (epochs of 10 steps, every schedule
    paused): the head, which trains during the frozen epochs, ramps up over its first 4 steps
    and holds the cosine's initial value until the switch (it had learning rate 0 until the
    switch: the ramp ran on the paused count); the backbone ramps over its first 4 steps from
    the switch; both follow the cosine from the switch on."""
    c = _sgd_config(schedule="cosine", head_lr=0.2, warmup_steps=4, frozen_warmup_epochs=2,
                    frozen_groups=("backbone",), warmup_paused_schedules="all")
    tx = optim.make_optimizer(c, epoch_start=lambda e: 10 * int(e))
    for t, upd in enumerate(_updates(tx, PARAMS, GRADS, c.num_steps)):
        head = 0.2 * t / 4 if t < 4 else _cosine(0.2, max(t - 20, 0), c.num_steps)
        np.testing.assert_allclose(upd["head"]["kernel"], -head * 0.5, rtol=1e-6, err_msg=f"t={t}")
        own = t - 20  # the backbone's updates, from the switch
        backbone = 0.0 if own < 0 else 0.1 * own / 4 if own < 4 else _cosine(0.1, own, c.num_steps)
        np.testing.assert_allclose(upd["Dense_0"]["kernel"], -backbone * 0.5, rtol=1e-6, atol=0,
                                   err_msg=f"t={t}")


def test_frozen_adam_starts_fresh_at_the_switch():
    """Adam's first update is -lr * g / (|g| + eps) (bias-corrected moments of one gradient):
    the frozen group's first real update (at the switch) is exactly that, its moments having
    seen none of the warm-up's gradients."""
    c = _sgd_config(name="adam", frozen_warmup_epochs=1, frozen_groups=("backbone",))
    grads = [jax.tree.map(lambda p, s=s: jnp.full_like(p, s), PARAMS) for s in (5.0, -3.0, 0.25)]
    tx = optim.make_optimizer(c, epoch_start=lambda e: 2 * e)
    opt_state, ups = tx.init(PARAMS), []
    for g in grads:
        upd, opt_state = tx.update(g, opt_state, PARAMS)
        ups.append(upd["Dense_0"]["kernel"])
    np.testing.assert_array_equal(ups[0], 0.0)
    np.testing.assert_array_equal(ups[1], 0.0)
    np.testing.assert_allclose(ups[2], -0.1 * 0.25 / (0.25 + 1e-8), rtol=2e-5)  # float32 bias correction


def test_frozen_warmup_in_the_train_step_switches_at_the_right_step():
    """Digits (901 images, batch 20: epochs of 45 steps), 1 warm-up epoch with the MLP trunk
    frozen: its params equal the initial ones after steps 0-44 and move at step 45; the head
    moves from step 0."""
    c = tiny_config(num_steps=47, loss_sharding="jit")
    c.optimizer.update(frozen_warmup_epochs=1, frozen_groups=("backbone",))
    data = input_pipeline.load(c)
    sampler = input_pipeline.make_sampler(c, data)
    assert optim.warmup(c, optim.epoch_clock(sampler, len(data.train.labels))).switch_step == 45
    s = state.initial_state(c, data)
    first = jax.tree.map(np.asarray, s.params)
    train = step.make_train_step(c, input_pipeline.augment_fn(c), state.make_mesh(c))
    moved = []
    for t in range(47):
        idx = sampler.indices(t)
        s, _ = train(s, data.train.get_batch(idx, train=True, seed=t), data.train.labels[idx])
        now = jax.tree.map(np.asarray, s.params)
        moved.append(
            (not np.array_equal(now["Dense_0"]["kernel"], first["Dense_0"]["kernel"]),
             not np.array_equal(now["head"]["kernel"], first["head"]["kernel"]))
        )  # fmt: skip
    assert [m[0] for m in moved] == [False] * 45 + [True, True]
    assert all(m[1] for m in moved)


def test_warmup_config_errors_name_the_key():
    c = _sgd_config(frozen_warmup_epochs=1, frozen_groups=("trunk",))
    with pytest.raises(errors.ConfigError, match="frozen_groups.*trunk"):
        optim.make_optimizer(c, epoch_start=lambda e: e)
    c = _sgd_config(frozen_warmup_epochs=1)
    with pytest.raises(errors.ConfigError, match="frozen_groups"):
        optim.make_optimizer(c, epoch_start=lambda e: e)
    c = _sgd_config(frozen_warmup_epochs=1, frozen_groups=("backbone",), warmup_paused_schedules="some")
    with pytest.raises(errors.ConfigError, match="warmup_paused_schedules"):
        optim.make_optimizer(c, epoch_start=lambda e: e)


# ----------------------------------------------------------------------------- loss terms


def _proxy_config(**term):
    c = tiny_config(num_steps=6, checkpoint_every=3, eval_every=0, loss_sharding="jit")
    c.loss.weight = 0.9
    c.loss.terms.cluster = _cluster_term(**term)
    return c


def test_objective_is_the_weighted_sum_with_proxies_rows_by_class():
    """0.9 x the batch loss + 0.1 x normalized softmax whose row of class y is its rank among
    the training classes (sparse class ids 3, 10, 42 -> rows 0, 1, 2)."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.repeat([42, 3, 10], 4)
    proxies = rng.normal(size=(3, 8)).astype(np.float32)
    c = _proxy_config()
    terms = losses.make_terms(c, np.array([3, 10, 42, 3, 42]))
    objective = losses.make_objective(c, state.make_mesh(c), 1, {}, terms)
    got = objective(
        jnp.asarray(emb), jnp.asarray(labels), jnp.int32(0), {}, {"cluster": {"proxies": proxies}}
    )
    main = rankax.batch_loss(rankax.losses.supap_loss, emb, labels, include_self=False, max_positives=3)
    rows = np.searchsorted([3, 10, 42], labels)
    want = 0.9 * float(main) + 0.1 * _np_normalized_softmax(emb, rows, proxies, 0.05)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_term_reads_its_level_of_label_paths():
    """``label_level=1`` of ``[N, 2]`` paths: the super-classes 7 and 9 are the proxies' rows."""
    c = _proxy_config()
    c.loss.terms.cluster.label_level = 1
    paths = np.array([[0, 7], [1, 7], [2, 9], [3, 9]])
    (term,) = losses.make_terms(c, paths)
    np.testing.assert_array_equal(term.classes, [7, 9])
    emb = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    proxies = np.array([[1.0, 0.2], [-0.3, 1.0]], np.float32)
    got = term(jnp.asarray(emb), jnp.asarray(paths), {"proxies": jnp.asarray(proxies)})
    want = _np_normalized_softmax(emb, np.array([0, 0, 1, 1]), proxies, 0.05)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    c.loss.terms.cluster.label_level = 2
    with pytest.raises(errors.ConfigError, match="label_level"):
        losses.make_terms(c, paths)


@pytest.mark.usefixtures("float32_matmuls")  # two programs compared to 1e-4: no TF32 on a GPU
def test_proxies_are_trained_by_their_own_optimizer():
    """One step: the model's params move by -lr_model * grad, the proxies by -10 * grad (SGD),
    both gradients of 0.9 * batch loss + 0.1 * normalized softmax written out here."""
    c = _proxy_config()
    c.optimizer.update(name="sgd", momentum=0.0, weight_decay=0.0, lr=0.05)
    data = input_pipeline.load(c)
    idx = input_pipeline.make_sampler(c, data).indices(0)
    images = jnp.asarray(data.train.get_batch(idx, train=False))
    labels = np.asarray(data.train.labels[idx])
    s0 = state.initial_state(c, data)
    classes = np.unique(data.train.labels)
    assert s0.loss_params["cluster"]["proxies"].shape == (len(classes), c.model.embedding_dim)
    bound = 1 / math.sqrt(c.model.embedding_dim)
    assert float(jnp.max(jnp.abs(s0.loss_params["cluster"]["proxies"]))) <= bound

    def objective(params, proxies):
        emb = s0.apply_fn({"params": params}, images, train=True)
        main = rankax.batch_loss(rankax.losses.supap_loss, emb, labels, include_self=False, max_positives=3)
        e = emb / jnp.linalg.norm(emb, axis=1, keepdims=True)
        p = proxies / jnp.linalg.norm(proxies, axis=1, keepdims=True)
        ce = -jax.nn.log_softmax(e @ p.T / 0.05)[jnp.arange(len(labels)), np.searchsorted(classes, labels)]
        return 0.9 * main + 0.1 * jnp.mean(ce)

    want_loss, (g_params, g_proxies) = jax.value_and_grad(objective, argnums=(0, 1))(
        s0.params, s0.loss_params["cluster"]["proxies"]
    )
    terms = losses.make_terms(c, data.train.labels)
    obj = losses.make_objective(c, state.make_mesh(c), 1, {}, terms)
    s1, metrics = step.train_step(
        s0,
        images,
        jnp.asarray(labels),
        jnp.bool_(False),
        augment_fn=lambda x, r: x,
        objective=obj,
        skip_mode=False,
    )
    np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=1e-5)
    np.testing.assert_allclose(
        s1.loss_params["cluster"]["proxies"],
        s0.loss_params["cluster"]["proxies"] - 10.0 * g_proxies,
        rtol=1e-4,
        atol=1e-6,
    )
    for got, p, g in zip(
        jax.tree.leaves(s1.params), jax.tree.leaves(s0.params), jax.tree.leaves(g_params), strict=True
    ):
        np.testing.assert_allclose(got, p - 0.05 * g, rtol=1e-4, atol=1e-6)


def test_proxy_term_schedule_and_warmup_pause():
    """The term's cosine (lr 10 to 0.1) pauses during the warm-up like the model's schedules."""
    c = _proxy_config(schedule="cosine", final_lr=0.1)
    c.num_steps = 20
    c.optimizer.update(frozen_warmup_epochs=1, frozen_groups=("backbone",))
    tx = optim.make_loss_optimizer(c, ("cluster",), epoch_start=lambda e: 4 * e)
    params = {"cluster": {"proxies": jnp.ones((2, 3))}}
    grads = {"cluster": {"proxies": jnp.full((2, 3), 0.5)}}
    for t, upd in enumerate(_updates(tx, params, grads, 8)):
        want = -_cosine(10.0, max(t - 4, 0), 20, 0.1) * 0.5
        np.testing.assert_allclose(upd["cluster"]["proxies"], want, rtol=1e-5, err_msg=f"t={t}")


@pytest.mark.parametrize("section, message", [
    ({"schedule": "cosin"}, r"config\.loss\.terms\.cluster\.optimizer\.schedule must be"),
    ({"schedule_unit": "epochs"}, r"config\.loss\.terms\.cluster\.optimizer\.schedule_unit must be"),
    ({"schedule": "multistep"}, r"config\.loss\.terms\.cluster\.optimizer\.schedule='multistep' needs "
                                r"config\.loss\.terms\.cluster\.optimizer\.decay_epochs"),
    ({"schedule": "step_epochs"}, r"config\.loss\.terms\.cluster\.optimizer\.decay_every_epochs > 0"),
])
def test_a_loss_terms_optimizer_errors_name_its_own_keys(section, message):
    # They named config.optimizer, the model's section, which the user had not touched.
    c = _proxy_config(**section)
    with pytest.raises((ValueError, errors.ConfigError), match=message):
        optim.make_loss_optimizer(c, ("cluster",), epoch_start=lambda e: 4 * e)


def test_proxies_are_checkpointed_and_resume_exactly(tmp_path, monkeypatch):
    from rankax.data import samplers

    full, broken = str(tmp_path / "full"), str(tmp_path / "broken")
    train_lib.train_and_evaluate(_proxy_config(), full)
    original = samplers.PKSampler.indices

    def crash_at_4(self, t):
        if t == 4:
            raise KeyboardInterrupt("simulated kill")
        return original(self, t)

    monkeypatch.setattr(samplers.PKSampler, "indices", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train_and_evaluate(_proxy_config(), broken)
    monkeypatch.setattr(samplers.PKSampler, "indices", original)
    train_lib.train_and_evaluate(_proxy_config(), broken)
    c = _proxy_config()
    data = input_pipeline.load(c)
    template = state.initial_state(c, data)
    restored = []
    for workdir in (full, broken):
        ckpt = checkpointing.Checkpointer(f"{workdir}/checkpoints", c, read_only=True)
        restored.append(ckpt.restore(template, 6)[0])
        ckpt.close()
    a, b = restored
    assert not np.array_equal(a.loss_params["cluster"]["proxies"], template.loss_params["cluster"]["proxies"])
    for x, y in zip(jax.tree.leaves((a.loss_params, a.loss_opt_state, a.params)),
                    jax.tree.leaves((b.loss_params, b.loss_opt_state, b.params)), strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_evaluation_under_a_dataset_override_reads_the_model_not_the_proxies(tmp_path):
    """Evaluating a run with proxies on another split (the open-set digits: 5 training classes
    instead of 10) was refused: the checkpoint's proxies are [10, D] and the config's [5, D].
    Evaluation reads the step and the model's variables only; a model change is still refused."""
    from experiments import evaluate
    from rankax.retrieval import evaluate as reference_evaluate

    workdir = str(tmp_path / "run")
    train_lib.train_and_evaluate(_proxy_config(), workdir)
    stored = ocp.CheckpointManager(f"{workdir}/checkpoints").restore(
        6, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    assert np.shape(stored["loss_params"]["cluster"]["proxies"])[0] == 10
    open_set = _proxy_config()
    open_set.dataset.protocol = "open_set"
    restored, data = train_lib.restore_for_evaluation(open_set, workdir)
    assert int(restored.step) == 6
    for x, y in zip(jax.tree.leaves((restored.params, restored.batch_stats)),
                    jax.tree.leaves((stored["params"], stored["batch_stats"])), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.shape(restored.loss_params["cluster"]["proxies"])[0] == 5  # the config's, unused
    saved = tmp_path / "open_set.npz"
    got = evaluate.main(["--workdir", workdir, "--config.dataset.protocol=open_set",
                         "--save_embeddings", str(saved)])
    with np.load(saved) as f:
        np.testing.assert_array_equal(f["labels"], data.test.labels)
        want = reference_evaluate(f["embeddings"], f["labels"], ks=(1,))
    assert got["step"] == 6 and got["recall@1"] == pytest.approx(want["recall@1"], abs=1e-6)
    with pytest.raises(SystemExit, match=r"model/config \(params/.* on disk"):
        evaluate.main(["--workdir", workdir, "--config.model.embedding_dim=8"])
    # Unreadable metadata of the newest step: the error says why (orbax returns no metadata tree
    # then; the first version of this read failed on it with an AttributeError), and the
    # default evaluation falls back to step 3.
    meta = tmp_path / "run" / "checkpoints" / "6" / "state" / "_METADATA"
    meta.write_bytes(meta.read_bytes()[: len(meta.read_bytes()) // 2])
    with pytest.raises(errors.CheckpointReadError, match="JSONDecodeError"):
        train_lib.restore_for_evaluation(open_set, workdir, step=6)
    assert int(train_lib.restore_for_evaluation(open_set, workdir)[0].step) == 3


def test_term_config_errors_name_the_key():
    c = _proxy_config()
    c.loss.terms.cluster.name = "supap"
    with pytest.raises(errors.ConfigError, match="config.loss.terms.cluster.name"):
        losses.make_terms(c, np.arange(4))
    c = _proxy_config()
    c.loss.terms.cluster.hparams.temprature = 0.1
    with pytest.raises(errors.ConfigError, match="temprature"):
        losses.make_terms(c, np.arange(4))
    c = _proxy_config(momentun=0.9)
    with pytest.raises(errors.ConfigError, match="momentun"):
        optim.term_section(c, "cluster")


# ----------------------------------------------------------------------------- precision, selection


def test_mixed_precision_computes_in_bfloat16_with_float32_params(tmp_path):
    c = tiny_config(num_steps=4, precision="mixed")
    assert state.build_model(c).dtype == jnp.bfloat16
    final = train_lib.train_and_evaluate(c, str(tmp_path / "mixed"))
    ref = train_lib.train_and_evaluate(tiny_config(num_steps=4), str(tmp_path / "full"))
    history = json.loads((tmp_path / "mixed" / "history.json").read_text())
    assert all(np.isfinite(h["loss"]) for h in history if "loss" in h)
    data = input_pipeline.load(c)
    s = state.initial_state(c, data)
    assert all(
        x.dtype == jnp.float32
        for x in jax.tree.leaves((s.params, s.opt_state))
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
    )
    # bfloat16 rounding moves the retrieval metrics only a little after 4 steps
    assert abs(final["map@r"] - ref["map@r"]) < 0.05
    with pytest.raises(ValueError, match="config.precision"):
        state.build_model(tiny_config(precision="fp16"))


def test_best_model_selection_reports_the_best_checkpoint(tmp_path, capsys):
    """A negative loss weight makes training worsen retrieval, so the best evaluation is an
    early one; the reported metrics are those recorded at that step (its checkpoint restored
    and evaluated again) and the best of all evaluations."""
    c = tiny_config(num_steps=12, eval_every=3, checkpoint_every=12, model_selection="best")
    c.loss.weight = -1.0
    c.optimizer.lr = 3e-3
    final = train_lib.train_and_evaluate(c, str(tmp_path))
    history = json.loads((tmp_path / "history.json").read_text())
    evals = {h["step"]: h for h in history if "eval/map@r" in h and h["step"] > 0}
    best = max(evals, key=lambda s: (evals[s]["eval/map@r"], -s))
    assert best < 12, "the test needs the best evaluation before the last step"
    assert final["map@r"] == max(h["eval/map@r"] for h in evals.values())
    for k, v in final.items():
        assert evals[best][f"eval/{k}"] == pytest.approx(v, abs=1e-6), k
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(final)
    assert final["map@r"] > evals[12]["eval/map@r"]
    # experiments.evaluate --workdir reports that model too (it restored the newest, step 12).
    from experiments import evaluate as evaluate_cli

    capsys.readouterr()
    again = evaluate_cli.main(["--workdir", str(tmp_path)])
    for k in ("recall@1", "map@r"):
        assert again[k] == pytest.approx(final[k], abs=1e-6), k
    # It says which step it evaluated (it had printed only "Reading checkpoint step 12").
    assert again["step"] == best
    assert f"Model selection 'best': evaluating step {best}" in capsys.readouterr().out


def test_eval_every_is_compared_on_resume_only_under_best_selection():
    """eval_every never changes the trained parameters, but under model_selection="best" it
    decides which steps are candidates, so which model the run reports: compared then."""
    from rankax.train import workdir

    for selection, compared in (("last", False), ("best", True)):
        c = tiny_config(eval_every=3, model_selection=selection)
        recorded = workdir.flat(c)
        c.eval_every = 5
        assert workdir.differences(recorded, c) == ({"eval_every": (3, 5)} if compared else {}), selection
        c.log_every = 7  # a runtime key that chooses nothing: never compared
        assert "log_every" not in workdir.differences(recorded, c)


def test_last_model_selection_reports_the_final_state(tmp_path):
    c = tiny_config(num_steps=6, eval_every=3, checkpoint_every=6)
    final = train_lib.train_and_evaluate(c, str(tmp_path))
    history = json.loads((tmp_path / "history.json").read_text())
    last = [h for h in history if "eval/map@r" in h][-1]
    assert last["step"] == 6 and final["map@r"] == last["eval/map@r"]
    with pytest.raises(errors.ConfigError, match="model_selection"):
        train_lib.train_and_evaluate(tiny_config(model_selection="first"), str(tmp_path / "bad"))
    # Label paths asked of flat class ids (digits): refused (it was silently ignored).
    flat = tiny_config()
    flat.loss.hierarchical = True
    with pytest.raises(errors.ConfigError, match=r"config.loss.hierarchical=True ranks by label paths, but "
                                                 r"the training labels are flat class ids"):
        train_lib.train_and_evaluate(flat, str(tmp_path / "flat"))
    assert not (tmp_path / "flat").exists()


def test_pretrained_distilled_requires_a_distilled_checkpoint(tmp_path):
    plain = {"cls_token": np.zeros((1, 1, 4)), "pos_embed": np.zeros((1, 5, 4))}
    np.savez(tmp_path / "plain.npz", **plain)
    np.savez(tmp_path / "distilled.npz", **plain, dist_token=np.zeros((1, 1, 4)))
    state.check_distilled(str(tmp_path / "distilled.npz"))
    with pytest.raises(errors.ConfigError, match="pretrained_distilled"):
        state.check_distilled(str(tmp_path / "plain.npz"))


def test_per_epoch_cosine_holds_each_epoch_at_its_first_value():
    """40 steps, epochs of 8: during epoch k the lr is the cosine at k / 5 of the way (torch's
    CosineAnnealingLR(T_max=5 epochs) stepped once an epoch); with a 1-epoch paused warm-up
    ("all") the count starts at step 8."""
    c = _sgd_config(schedule="cosine", schedule_unit="epoch")
    sched = optim.make_schedule(c, 1.0, epoch_start=lambda e: 8 * e)
    for t in (0, 7, 8, 15, 16, 39):
        np.testing.assert_allclose(
            float(sched(t)), _cosine(1.0, 8 * (t // 8), 40), rtol=1e-6, err_msg=f"t={t}"
        )
    paused = optim.make_schedule(c, 1.0, epoch_start=lambda e: 8 * e, offset_epochs=1)
    for t in (0, 7, 8, 15, 16, 39):
        want = _cosine(1.0, 8 * (max(t - 8, 0) // 8), 40)
        np.testing.assert_allclose(float(paused(t)), want, rtol=1e-6, err_msg=f"t={t}")


def test_loop_with_the_m_per_class_sampler_and_epoch_schedules(tmp_path):
    """Digits through the whole loop with the official M-per-class sampler (epochs of varying
    length) and a multistep schedule in its epochs, stepped per epoch: the run trains, and the
    schedule's drop sits at the sampler's epoch start."""
    c = tiny_config(num_steps=60, eval_every=0, checkpoint_every=60)
    c.batch.sampler = "m_per_class"
    c.optimizer.update(name="sgd", schedule="multistep", decay_epochs=(1,), schedule_unit="epoch")
    final = train_lib.train_and_evaluate(c, str(tmp_path))
    assert np.isfinite(final["map@r"])
    data = input_pipeline.load(c)
    sampler = input_pipeline.make_sampler(c, data)
    start = sampler.epoch_start(1)
    assert 0 < start < 60
    sched = optim.make_schedule(c, 1.0, epoch_start=sampler.epoch_start)
    assert float(sched(start - 1)) == 1.0 and float(sched(start)) == pytest.approx(0.3)


def test_num_epochs_runs_the_samplers_epochs(tmp_path):
    """``num_epochs=2`` with the M-per-class sampler: the run ends at ``epoch_start(2)``
    whatever ``num_steps`` says; the workdir records the config as given."""
    c = tiny_config(num_steps=5, eval_every=0, checkpoint_every=5, num_epochs=2)
    c.batch.sampler = "m_per_class"
    data = input_pipeline.load(c)
    end = input_pipeline.make_sampler(c, data).epoch_start(2)
    assert end > 5
    train_lib.train_and_evaluate(c, str(tmp_path))
    history = json.loads((tmp_path / "history.json").read_text())
    assert max(h["step"] for h in history) == end
    recorded = json.loads((tmp_path / "config.json").read_text())["config"]
    assert recorded["num_steps"] == 5 and recorded["num_epochs"] == 2


def test_a_batch_that_does_not_divide_over_the_devices_names_the_keys():
    """It was a bare ValueError (a traceback naming no key); the mesh and sampler only need
    their sizes for this check, which runs first."""
    import types

    from rankax.train import loop

    message = r"config\.batch: the batch of 160 images .* the 3 devices .*config\.num_devices to a divisor"
    with pytest.raises(errors.ConfigError, match=message):
        loop.check_run_config(tiny_config(), None, types.SimpleNamespace(size=3),
                              types.SimpleNamespace(batch_size=160))
