"""The training program's modules on their own: schedules and optimizers against their
formulas, the evaluator registry, and the module-level pure ``train_step`` as one SGD step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rankax
from rankax.train import evaluators, input_pipeline, losses, optim, state, step
from tests.test_train import tiny_config


def _schedule_config(**optimizer):
    c = tiny_config(num_steps=100)
    c.optimizer.lr = 0.1
    for k, v in optimizer.items():
        setattr(c.optimizer, k, v)
    return c


def test_cosine_with_warmup_follows_its_formula():
    c = _schedule_config(schedule="cosine", final_lr_ratio=0.2, warmup_steps=10)
    sched = optim.make_schedule(c, 0.1)
    for t in (0, 3, 10, 40, 99):
        if t < 10:  # linear warm-up from 0
            want = 0.1 * t / 10
        else:  # cosine over num_steps, counted from step 0 (the warm-up shifts nothing), floor 0.2 * lr
            want = 0.1 * (0.2 + 0.8 * (1 + math.cos(math.pi * t / 100)) / 2)
        np.testing.assert_allclose(float(sched(t)), want, rtol=1e-6)


def test_warmup_is_per_step_and_keeps_epoch_milestones():
    """With a schedule that moves once an epoch (100 steps here), the warm-up still ramps step
    by step, and a decay at epoch 3 happens at step 300 (before, the first epoch trained at lr 0
    and the decay came warmup_steps late)."""
    c = _schedule_config(schedule="multistep", decay_epochs=(3,), decay_factor=0.1, warmup_steps=50,
                         schedule_unit="epoch")
    c.num_steps = 1000
    sched = optim.make_schedule(c, 0.1, epoch_start=lambda e: 100 * e)
    for t, want in ((0, 0.0), (25, 0.05), (49, 0.098), (50, 0.1), (99, 0.1), (299, 0.1), (300, 0.01)):
        np.testing.assert_allclose(float(sched(t)), want, rtol=1e-6, atol=1e-9, err_msg=str(t))


def test_step_schedule_decays_at_its_fractions():
    """Fractions 0.5 and 0.75 of 100 steps: steps 0..49 at the base rate, the first decayed
    step is 50 (torch's MultiStepLR stepped per step: after 50 steps), the second 75."""
    c = _schedule_config(schedule="step", decay_at=(0.5, 0.75), decay_factor=0.3)
    sched = optim.make_schedule(c, 0.1)
    for t, want in ((0, 0.1), (49, 0.1), (50, 0.03), (51, 0.03), (74, 0.03), (75, 0.009), (99, 0.009)):
        np.testing.assert_allclose(float(sched(t)), want, rtol=1e-6)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("optimizer", "schedule", "linear"), ("optimizer", "name", "lamb"), (None, "eval_protocol", "knn")],
)
def test_unknown_registry_names_are_errors_naming_the_key(section, key, value):
    c = tiny_config()
    setattr(c if section is None else c[section], key, value)
    with pytest.raises(ValueError, match=rf"config\.{'' if section is None else section + '.'}{key} must be"):
        if section == "optimizer":
            optim.make_optimizer(c)
        else:
            evaluators.evaluation_keys(c, ())


def test_settings_that_never_take_effect_are_named():
    """Keys accepted silently although the run never reaches them (a review ran each for 12
    steps with no word): each is named; a plain config has none."""
    every_5 = lambda epoch: 5 * epoch  # noqa: E731 - the sampler's epoch -> first step
    c = tiny_config(num_steps=12)
    assert optim.inert_settings(c, every_5) == []
    c.optimizer.frozen_warmup_epochs, c.optimizer.frozen_groups = 100, ("backbone",)
    c.optimizer.decay_epochs = (1, 2)  # with the default constant schedule
    c.optimizer.warmup_steps = 12
    c.xbm.size, c.xbm.start_step = 100, 12
    found = "\n".join(optim.inert_settings(c, every_5))
    for key in ("frozen_warmup_epochs=100 ends at step 500", "(backbone) never train",
                "decay_epochs is read by schedule='multistep' only, not 'constant'",
                "warmup_steps=12 is not below num_steps=12", "xbm.start_step=12"):
        assert key in found, (key, found)
    c = tiny_config(num_steps=12)
    c.optimizer.frozen_groups = ("backbone",)
    assert "frozen_groups has no effect" in optim.inert_settings(c, every_5)[0]
    c = tiny_config(num_steps=12)
    c.optimizer.schedule, c.optimizer.decay_epochs = "multistep", (3,)  # epoch 3 starts at step 15
    assert "never decays" in optim.inert_settings(c, every_5)[0]
    c.optimizer.decay_epochs = (2, 3)  # epoch 2 starts at step 10: one decay inside the run
    assert optim.inert_settings(c, every_5) == []
    # Without the sampler's clock the keys in epochs are not placed (no error), the rest checked.
    c.optimizer.frozen_warmup_epochs, c.optimizer.frozen_groups = 100, ("backbone",)
    c.xbm.size, c.xbm.start_step = 100, 12
    assert [f.split("=")[0] for f in optim.inert_settings(c)] == ["config.xbm.start_step"]


def test_evaluation_keys_of_each_protocol():
    c = tiny_config()
    with pytest.raises(TypeError, match=r"label_shape is the shape of one test label.*got 2"):
        evaluators.evaluation_keys(c, 2)  # the old labels_ndim argument
    c.eval_ks, c.eval_backend = (1, 5), "exact"
    assert evaluators.evaluation_keys(c, (3,)) == {
        "recall@1", "recall@5", "map@r", "r_precision", "map", "hap", "ndcg", "asi"
    }  # fmt: skip
    c.eval_protocol = "revisited"
    assert evaluators.evaluation_keys(c, ()) == {
        f"{s}/{m}" for s in ("easy", "medium", "hard") for m in ("map", "mp@1", "mp@5")
    }
    assert set(evaluators.EVALUATORS) == {"retrieval", "revisited", "landmarks"}


def test_pure_train_step_is_one_sgd_step_on_the_batch_loss():
    """Unjitted, on one device: the new params are ``params - lr * grad`` of the batch loss
    written out here (SGD's first step, momentum trace starting at 0)."""
    c = tiny_config()
    c.optimizer.name, c.optimizer.weight_decay, c.optimizer.lr = "sgd", 0.0, 0.05
    c.loss_sharding = "jit"
    data = input_pipeline.load(c)
    idx = input_pipeline.make_sampler(c, data).indices(0)
    images, labels = jnp.asarray(data.train.get_batch(idx, train=False)), jnp.asarray(data.train.labels[idx])
    model = state.build_model(c)
    s0 = state.create_train_state(c, model, images[:2])
    objective = losses.make_objective(c, state.make_mesh(c), 1, {})

    def batch_loss(params):
        emb = model.apply({"params": params}, images, train=True)
        k = c.batch.samples_per_class - 1
        return rankax.batch_loss(rankax.losses.supap_loss, emb, labels, include_self=False, max_positives=k)

    want_loss, grads = jax.value_and_grad(batch_loss)(s0.params)
    s1, metrics = step.train_step(
        s0,
        images,
        labels,
        jnp.bool_(False),
        augment_fn=lambda x, rng: x,
        objective=objective,
        skip_mode=False,
    )
    assert int(s1.step) == 1 and bool(metrics["applied"]) and bool(metrics["finite"])
    np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=1e-6)
    want = jax.tree.map(lambda p, g: p - 0.05 * g, s0.params, grads)
    for got, exp in zip(jax.tree.leaves(s1.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(exp), rtol=1e-5, atol=1e-7)


def test_augmentation_keys_are_not_the_initialisation_keys():
    """The per-step augmentation key ``fold_in(state.rng, step)`` is never the key that
    initialised the model or the loss terms' parameters (step 1's once equalled the model's)."""
    c = tiny_config()
    data = input_pipeline.load(c)
    sample = jnp.asarray(data.train.get_batch([0, 1], train=False))
    s0 = state.create_train_state(c, state.build_model(c), sample)
    root = jax.random.PRNGKey(c.seed)
    keys = (state.INIT_KEY, state.LOSS_PARAMS_KEY)
    init_keys = {tuple(np.asarray(jax.random.fold_in(root, k))) for k in keys}
    assert len(init_keys) == 2
    for step_ in range(8):
        assert tuple(np.asarray(jax.random.fold_in(s0.rng, step_))) not in init_keys
    # the model's initialisation is the one the INIT_KEY stream gives
    want = state.build_model(c).init(jax.random.fold_in(root, state.INIT_KEY), sample, train=False)
    for got, exp in zip(jax.tree.leaves(s0.params), jax.tree.leaves(want["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(exp))


def test_gradient_clipping_leaves_frozen_batchnorm_out_of_the_norm():
    """``grad_clip`` with ``freeze_bn_params``: the norm is that of the trained parameters
    only (torch's ``clip_grad_norm_`` skips parameters without a gradient), so the conv and
    head gradients (norm 1.0 here) are not scaled down by the frozen scale's large gradient."""
    from configs import default

    c = default.get_config()
    c.num_steps = 10
    c.optimizer.update(name="sgd", lr=1.0, weight_decay=0.0, momentum=0.0, grad_clip=0.5)
    c.optimizer.freeze_bn_params = True
    params = {"backbone": {"conv1": {"kernel": jnp.zeros(2)}, "bn1": {"scale": jnp.ones(2)}},
              "head": {"w": jnp.zeros(1)}}
    grads = {"backbone": {"conv1": {"kernel": jnp.array([0.6, 0.0])},
                          "bn1": {"scale": jnp.array([10.0, 0.0])}},
             "head": {"w": jnp.array([0.8])}}
    tx = optim.make_optimizer(c)
    updates, _ = tx.update(grads, tx.init(params), params)
    # SGD, lr 1: update = -g * 0.5 / ||(0.6, 0, 0.8)|| = -g / 2; the frozen scale does not move.
    np.testing.assert_allclose(updates["backbone"]["conv1"]["kernel"], [-0.3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(updates["head"]["w"], [-0.4], rtol=1e-6)
    np.testing.assert_array_equal(updates["backbone"]["bn1"]["scale"], [0.0, 0.0])


def test_an_empty_training_split_names_the_dataset_not_the_batch():
    """A CSV with only evaluation rows: the sampler's error blamed config.batch."""
    import types

    c = tiny_config()
    c.dataset.name = "folder"
    empty = types.SimpleNamespace(train=types.SimpleNamespace(labels=np.zeros(0, np.int64)))
    with pytest.raises(ValueError, match=r"^config\.dataset: the training split of 'folder' has no items"):
        input_pipeline.make_sampler(c, empty)
