"""Bad input over every public loss, metric and ``batch_loss`` (issue 9, docs/behaviour.md).

Static problems (ranks, shapes, dtypes, hyperparameters, unknown arguments) must raise at trace
time -- checked with ``jax.eval_shape``, which traces without running -- with a message that
names the function, the argument and what was expected. Value problems (NaN/inf scores,
negative or non-binary labels) raise eagerly on concrete arrays; inside ``jit`` they give NaN
values *and* NaN gradients by default, and are located by ``rankax.debug.checked``.
"""

from __future__ import annotations

import functools
import inspect
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rankax
from rankax import losses, metrics
from rankax._core import validation as _lists

GRADED_LOSSES = (losses.hap_loss, losses.sup_ndcg_loss)
METRICS = (
    metrics.average_precision,
    metrics.recall_at_k,
    metrics.precision_at_k,
    metrics.r_precision,
    metrics.map_at_r,
    metrics.ndcg,
    metrics.hap,
    metrics.asi,
)
LIST_FUNCTIONS = losses.LIST_LOSSES + METRICS


def _name(fn):
    return fn.__name__


def _lists_data():
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, (3, 7)).astype(np.float32)
    labels = np.zeros((3, 7), np.float32)
    labels[0, [1, 4]] = 1
    labels[1, [0]] = 1
    labels[2, [2, 3, 6]] = 1
    return jnp.asarray(scores), jnp.asarray(labels)


def _trace(fn, *args, **kwargs):
    """Traces ``fn`` on abstract arrays only (nothing runs): errors raised are trace-time."""
    shapes = [jax.ShapeDtypeStruct(jnp.shape(a), jnp.asarray(a).dtype) for a in args]
    return jax.eval_shape(lambda *xs: fn(*xs, **kwargs), *shapes)


def _raises(error, fn, *args, match: tuple[str, ...], **kwargs):
    """``fn`` raises ``error`` at trace time and the message contains every ``match``."""
    with pytest.raises(error) as info:
        _trace(fn, *args, **kwargs)
    message = str(info.value)
    for part in match:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# ----------------------------------------------------------------------------- list functions


@pytest.mark.parametrize("fn", LIST_FUNCTIONS, ids=_name)
def test_shapes_dtypes_and_ranks_raise_at_trace_time(fn):
    s, y = _lists_data()
    name = fn.__name__
    _raises(ValueError, fn, s[0, 0], y[0, 0], match=(name, "scores", "scalar"))
    _raises(ValueError, fn, s[:, :0], y[:, :0], match=(name, "scores", "at least one item"))
    _raises(ValueError, fn, s, y[0], match=(name, "labels", str((3, 7)), str((7,))))
    _raises(ValueError, fn, s, y[:, :5], match=(name, "labels", str((3, 5))))
    _raises(ValueError, fn, s, y, where=jnp.ones((3, 6), bool), match=(name, "where", str((3, 6))))
    _raises(TypeError, fn, s, y, where=jnp.ones((3, 7), jnp.int32), match=(name, "where", "bool"))
    _raises(TypeError, fn, s.astype(jnp.int32), y, match=(name, "scores", "floating", "int32"))
    _raises(TypeError, fn, s, y.astype(jnp.complex64), match=(name, "labels", "complex64"))
    with pytest.raises(TypeError, match=f"{name}: labels must be a boolean, integer or floating"):
        fn(s, np.full(s.shape, "a"))  # no JAX type: refused before jnp.asarray
    _raises(ValueError, fn, s, y, max_positives=0, match=(name, "max_positives"))
    _raises(ValueError, fn, s, y, max_positives=jnp.float32(3), match=(name, "max_positives"))
    _raises(TypeError, fn, s, y, reduce_fn="mean", match=(name, "reduce_fn"))
    _raises(TypeError, fn, s > 0, y, match=(name, "cast integer or boolean scores"))


@pytest.mark.parametrize("fn", LIST_FUNCTIONS, ids=_name)
def test_unknown_argument_is_named_with_a_suggestion(fn):
    s, y = _lists_data()
    params = [p for p in inspect.signature(fn).parameters if p not in ("scores", "labels")]
    typo = params[-1] + "x"  # one character off a real argument
    with pytest.raises(TypeError, match=re.escape(repr(typo))) as info:
        fn(s, y, **{typo: 1})
    assert f"did you mean {params[-1]!r}" in str(info.value)
    assert fn.__name__ in str(info.value)


def _bad_values(kind):
    """Values outside each documented range (``rankax._lists.HPARAM_RANGES``): the range is the
    spec; every value listed here violates it by construction."""
    nonfinite = [math.nan, math.inf, -math.inf]
    return {"positive": [0.0, -1.0, *nonfinite], "nonnegative": [-1e-3, *nonfinite], "finite": nonfinite}[
        kind
    ]


def _hparam_cases():
    for fn in losses.LIST_LOSSES:
        for name in inspect.signature(fn).parameters:
            if name in _lists.HPARAM_RANGES:
                kind = _lists.HPARAM_RANGES[name]
                for value in _bad_values(kind):
                    yield pytest.param(fn, name, value, id=f"{fn.__name__}-{name}={value}")


@pytest.mark.parametrize("fn, name, value", list(_hparam_cases()))
def test_hyperparameter_out_of_range(fn, name, value):
    s, y = _lists_data()
    _raises(ValueError, fn, s, y, match=(fn.__name__, name), **{name: value})


def test_every_loss_has_its_hyperparameters_checked():
    """Every float hyperparameter of every loss is covered by a range (no silent ones)."""
    for fn in losses.LIST_LOSSES:
        for name, param in inspect.signature(fn).parameters.items():
            if isinstance(param.default, float):
                assert name in _lists.HPARAM_RANGES, (fn.__name__, name)


V, T = ValueError, TypeError


@pytest.mark.parametrize(
    "fn, kwargs, error, match",
    [
        (losses.smooth_ap_loss, {"temperature": 0.0}, V, "temperature must be a finite number > 0"),
        (losses.smooth_ap_loss, {"temperature": -0.01}, V, "temperature"),
        (losses.smooth_ap_loss, {"temperature": "0.01"}, T, "temperature"),
        (losses.smooth_ap_loss, {"temperature": True}, T, "temperature"),
        (losses.smooth_ap_loss, {"temperature": np.ones(2)}, T, "temperature"),
        (losses.histogram_ap_loss, {"num_bins": 1}, V, "num_bins must be an int >= 2"),
        (losses.histogram_ap_loss, {"num_bins": 2.5}, V, "num_bins"),
        (losses.fast_ap_loss, {"num_bins": 1}, V, "num_bins must be an int >= 2"),
        (losses.histogram_ap_loss, {"score_range": (1.0, 0.0)}, V, "score_range"),
        (losses.histogram_ap_loss, {"score_range": (-np.inf, 1.0)}, V, "(min, max), finite"),
        (losses.histogram_ap_loss, {"score_range": 1.0}, V, "score_range must be (min, max)"),
        (losses.histogram_ap_loss, {"score_range": (0.0, 0.5, 1.0)}, V, "score_range must be (min, max)"),
        (losses.histogram_ap_loss, {"tie_aware": "no"}, T, "tie_aware must be True or False"),
        (losses.blackbox_ap_loss, {"key": 0}, T, "key must be None or a PRNG key"),
        (losses.sup_recall_at_k_loss, {"ks": 4}, T, "ks must be a sequence of cut-offs"),
        (losses.supap_loss, {"reduce_fn": lambda v: v.mean()}, T, "called as reduce_fn(values, where="),
        # jnp.max takes where= only with initial=: its ValueError gets the same explanation.
        (losses.supap_loss, {"reduce_fn": jnp.max}, V, "called as reduce_fn(values, where="),
        (losses.supap_loss, {"variant": "icml"}, V, "variant must be one of"),
        (losses.roadmap_loss, {"variant": "icml"}, V, "variant"),
        (losses.hap_loss, {"variant": "icml"}, V, "variant"),
        (losses.sup_ndcg_loss, {"variant": "icml"}, V, "variant"),
        (losses.sup_recall_at_k_loss, {"variant": "icml"}, V, "variant"),
        (losses.pnp_loss, {"variant": "Dx"}, V, "variant"),
        (losses.triplet_loss, {"mining": "hardest"}, V, "mining"),
        (losses.sup_recall_at_k_loss, {"ks": ()}, V, "ks"),
        (losses.recall_at_k_surrogate_loss, {"ks": (0, 1)}, V, "ks"),
        (metrics.recall_at_k, {"k": 0}, V, "k must be a positive int"),
        (metrics.precision_at_k, {"k": 1.5}, V, "k must be a positive int"),
        (metrics.ndcg, {"k": -1}, V, "k must be a positive int or None"),
    ],
    ids=lambda v: v.__name__ if inspect.isfunction(v) else None,
)
def test_named_hyperparameter_errors(fn, kwargs, error, match):
    s, y = _lists_data()
    with pytest.raises(error, match=re.escape(match)) as info:
        _trace(fn, s, y, **kwargs)
    assert fn.__name__ in str(info.value)


def test_traced_hyperparameters_are_accepted():
    """An annealed temperature inside jit is a tracer: its value cannot be checked, it is used."""
    s, y = _lists_data()
    value = jax.jit(lambda t: losses.smooth_ap_loss(s, y, temperature=t))(0.05)
    assert np.isfinite(value)


@pytest.mark.parametrize("fn", LIST_FUNCTIONS, ids=_name)
def test_label_values(fn):
    """Negative or NaN relevance is an error everywhere; binary losses also reject labels other
    than 0/1 (graded losses and metrics read them as graded relevance)."""
    s, y = _lists_data()
    for bad in (y.at[1, 3].set(-1.0), y.at[1, 3].set(jnp.nan)):
        with pytest.raises(ValueError, match=r"labels\[1, 3\]") as info:
            fn(s, bad)
        assert fn.__name__ in str(info.value)
    graded = y.at[2, 3].set(2.0).at[0, 0].set(0.5)
    if fn in GRADED_LOSSES or fn in METRICS:
        assert np.isfinite(fn(s, graded))
    else:
        with pytest.raises(ValueError, match=r"binary labels \(0 or 1\).*labels\[0, 0\] = 0.5"):
            fn(s, graded)
    # Invalid (padded) positions may hold anything.
    where = jnp.ones((3, 7), bool).at[1, 3].set(False)
    assert np.isfinite(fn(s.at[1, 3].set(jnp.nan), y.at[1, 3].set(-5.0), where=where))
    # Under jit (unchecked) a negative, NaN or infinite label is "not relevant": the value of a
    # label 0 there, graded sums included (behaviour.md).
    traced = jax.jit(lambda s, y: fn(s, y, reduce_fn=None))
    base = graded if fn in GRADED_LOSSES or fn in METRICS else y
    want = np.asarray(traced(s, base.at[1, 3].set(0.0)))
    for bad_value in (-1.0, -5.0, jnp.nan, jnp.inf):
        np.testing.assert_allclose(np.asarray(traced(s, base.at[1, 3].set(bad_value))), want, rtol=1e-6)


@pytest.mark.parametrize("fn", LIST_FUNCTIONS, ids=_name)
def test_nonfinite_scores(fn):
    """Eager: ValueError at the first bad position. jit: NaN value and NaN gradient on the
    bad list -- never a finite number -- while the other lists keep their values."""
    s, y = _lists_data()
    with pytest.raises(ValueError, match=r"scores\[1, 2\] = nan") as info:
        fn(s.at[1, 2].set(jnp.nan), y)
    assert fn.__name__ in str(info.value)

    is_loss = fn in losses.LIST_LOSSES

    @jax.jit  # one compilation, called on the clean and on three poisoned inputs
    def outputs(s):
        out = {"per_list": fn(s, y, reduce_fn=None), "mean": fn(s, y), "sum": fn(s, y, reduce_fn=jnp.sum)}
        if is_loss:
            out["grad"] = jax.grad(lambda s: fn(s, y))(s)
            out["grad_list1"] = jax.grad(lambda s: fn(s, y, reduce_fn=None)[1])(s)
        return out

    clean = outputs(s)
    for bad_value in (jnp.nan, jnp.inf, -jnp.inf):
        out = outputs(s.at[1, 2].set(bad_value))
        assert np.isnan(out["per_list"][1])
        kept = np.asarray(out["per_list"])[[0, 2]]
        np.testing.assert_array_equal(kept, np.asarray(clean["per_list"])[[0, 2]])
        assert np.isnan(out["mean"]) and np.isnan(out["sum"])
        if is_loss:
            assert np.isnan(np.asarray(out["grad"])[1]).all()
            assert np.isnan(np.asarray(out["grad_list1"])[1]).all()


@pytest.mark.parametrize("fn", losses.LIST_LOSSES, ids=_name)
def test_checked_mode_locates_the_first_nonfinite_score(fn):
    s, y = _lists_data()
    checked = rankax.debug.checked(lambda s: fn(s, y))
    assert np.isfinite(checked(s))  # clean input passes
    bad = s.at[2, 5].set(jnp.inf).at[2, 6].set(jnp.nan)
    with pytest.raises(rankax.debug.CheckError) as info:
        checked(bad)
    message = str(info.value)
    assert fn.__name__ in message and "scores" in message and "inf" in message, message
    assert re.search(r"\[2,? 5\]", message), message
    assert "first of 2" in message, message


def test_checked_mode_reports_labels_under_jit():
    s, y = _lists_data()
    checked = rankax.debug.checked(lambda s, y: losses.supap_loss(s, y))
    with pytest.raises(rankax.debug.CheckError, match="supap_loss: labels must be binary"):
        checked(s, y.at[0, 3].set(3.0))
    checked = rankax.debug.checked(lambda s, y: losses.hap_loss(s, y))
    assert np.isfinite(checked(s, y.at[0, 3].set(3.0)))
    for bad in (-1.0, np.inf):
        with pytest.raises(rankax.debug.CheckError, match="hap_loss: labels must be finite graded relevance"):
            checked(s, y.at[0, 3].set(bad))


def test_checks_are_off_by_default():
    s, y = _lists_data()
    assert not rankax.debug.enabled()
    with rankax.debug.checks():
        assert rankax.debug.enabled()
    assert not rankax.debug.enabled()
    # No checkify: the plain function compiles under jit and returns NaN instead.
    assert np.isnan(jax.jit(lambda s: losses.supap_loss(s, y))(s.at[0, 0].set(jnp.nan)))


# ----------------------------------------------------------------------------- batch_loss


def _batch():
    emb = jax.random.normal(jax.random.key(0), (12, 8))
    emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
    return emb, jnp.arange(12) % 4


def _batch_loss(loss_fn):
    return functools.partial(rankax.batch_loss, loss_fn)


def test_batch_loss_bad_input_at_trace_time():
    emb, lab = _batch()
    loss = losses.supap_loss
    _raises(ValueError, _batch_loss(loss), emb[0], lab, match=("batch_loss(supap_loss)", "[B, D]"))
    _raises(ValueError, _batch_loss(loss), emb[None], lab, match=("embeddings", "[B, D]"))
    _raises(ValueError, _batch_loss(loss), emb[:0], lab[:0], match=("embeddings", "B, D >= 1", "(0, 8)"))
    _raises(ValueError, _batch_loss(loss), emb[:, :0], lab, match=("embeddings", "B, D >= 1", "(12, 0)"))
    _raises(TypeError, _batch_loss(loss), emb.astype(jnp.int32), lab, match=("floating", "int32"))
    _raises(ValueError, _batch_loss(loss), emb, lab[:5], match=("labels", "B=12", "(5,)"))
    _raises(ValueError, _batch_loss(loss), emb, lab[:, None, None], match=("labels", "[B, L]"))
    _raises(TypeError, _batch_loss(loss), emb, lab.astype(jnp.float32), match=("integer class ids",))
    _raises(ValueError, _batch_loss(loss), emb, lab, max_positives=0, match=("max_positives",))
    _raises(
        ValueError, _batch_loss(losses.smooth_ap_loss), emb, lab, temperature=0.0,
        match=("batch_loss(smooth_ap_loss)", "temperature must be a finite number > 0"),
    )
    _raises(
        ValueError, _batch_loss(losses.roadmap_loss), emb, lab, calibration_weight=-1.0,
        match=("roadmap_loss", "calibration_weight"),
    )
    _raises(
        TypeError, _batch_loss(losses.pnp_loss), emb, lab, temprature=0.1,  # misspelt: pnp takes temperature
        match=("'temprature'", "did you mean 'temperature'"),
    )
    _raises(
        ValueError, _batch_loss(loss), emb, lab, references=emb[:, :4], reference_labels=lab,
        match=("references", "(12, 4)", "do not match"),
    )
    with pytest.raises(TypeError, match="loss_fn must be a list loss"):
        rankax.batch_loss("supap", emb, lab)
    # the embeddings first, by mistake (make_batch_loss's returned function takes them first):
    # the message names the array by its type and shape (it printed every value) and the order
    for call in (lambda: rankax.batch_loss(emb, lab, losses.supap_loss),
                 lambda: rankax.make_batch_loss(emb)):
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert f"got ArrayImpl of shape {tuple(emb.shape)}; the call is " in message, message
        assert len(message) < 220 and str(float(emb[0, 0]))[:6] not in message, message


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        # A concrete jnp hyperparameter is checked before the program traces it.
        ({"temperature": jnp.float32(-0.05)}, V, "temperature must be a finite number > 0"),
        ({"reduce_fn": None}, T, "reduce_fn= is set by batch_loss"),
        ({"where": np.ones(12, bool)}, T, "where= is set by batch_loss"),
        ({"reference_labels": np.arange(4)}, V, "reference_labels/reference_mask need references="),
        ({"capacity_limt": 1}, T, "unknown argument 'capacity_limt'; did you mean 'capacity_limit'?"),
        ({"capacity_limit": 0}, V, "capacity_limit must be None"),
        ({"capacity_limit": 1.5}, V, "capacity_limit must be None"),
        ({"relevance_fn": lambda q, i: q}, V, "relevance_fn must return a real [Q, N] = (12, 12) array"),
        ({"references": np.zeros((4, 8), np.float32)}, V, "references= needs reference_labels="),
        ({"references": np.zeros((4, 8), np.float32), "reference_labels": np.arange(4),
          "reference_mask": np.ones(3, bool)}, V, "reference_mask must be [M] = [4]"),
    ],
    ids=lambda v: None,
)
def test_batch_loss_options_are_checked_before_tracing(kwargs, error, match):
    emb, lab = _batch()
    with pytest.raises(error, match=re.escape(match)) as info:
        rankax.batch_loss(losses.supap_loss, emb, lab, **kwargs)
    assert str(info.value).startswith("batch_loss(supap_loss)")


def test_batch_loss_names_what_a_loss_fn_must_take():
    emb, lab = _batch()
    for fn in (lambda s, y: jnp.mean(s), losses.normalized_softmax_loss):
        with pytest.raises(TypeError, match=re.escape("must be a list loss fn(scores, labels, *, where")):
            rankax.batch_loss(fn, emb, lab)
    # A user's own list loss with that signature is accepted (it ignores the capacity hint)...
    own = lambda s, y, *, where, reduce_fn, max_positives: losses.supap_loss(  # noqa: E731
        s, y, where=where, reduce_fn=reduce_fn)
    reference = rankax.batch_loss(losses.supap_loss, emb, lab)
    assert np.isclose(rankax.batch_loss(own, emb, lab), reference, atol=1e-6)
    # ... when it returns one value per list for reduce_fn=None: a scalar (reduce_fn ignored)
    # would be weighted by blocks, not lists.
    scalar = lambda s, y, *, where, reduce_fn, max_positives: losses.supap_loss(s, y, where=where)  # noqa: E731
    with pytest.raises(TypeError, match=r"must return one value per list, shape \(\d+,\) here, got \(\)"):
        rankax.batch_loss(scalar, emb, lab)


def test_batch_loss_cutoffs_as_arrays_are_static():
    """``ks`` as a numpy array is the tuple of its values (cut-offs set shapes, never traced)."""
    emb, lab = _batch()
    as_tuple = rankax.batch_loss(losses.sup_recall_at_k_loss, emb, lab, ks=(1, 2))
    as_array = rankax.batch_loss(losses.sup_recall_at_k_loss, emb, lab, ks=np.array([1, 2]))
    assert float(as_array) == float(as_tuple)
    s, y = _lists_data()
    with pytest.raises(TypeError, match=re.escape("ks must be a sequence of cut-offs such as (1, 4)")):
        losses.sup_recall_at_k_loss(s, y, ks=4)
    with pytest.raises(TypeError, match="ks must be static cut-offs"):
        jax.jit(lambda k: losses.sup_recall_at_k_loss(s, y, ks=k))(jnp.array([1, 2]))
    with pytest.raises(TypeError, match="k must be a static Python int"):
        jax.jit(lambda k: metrics.recall_at_k(s, y, k=k))(2)


def test_batch_loss_nonfinite_embeddings():
    emb, lab = _batch()
    bad = emb.at[5, 3].set(jnp.nan)
    with pytest.raises(ValueError, match=r"embeddings\[5, 3\] = nan"):
        rankax.batch_loss(losses.supap_loss, bad, lab)

    def loss(e):
        return rankax.batch_loss(losses.supap_loss, e, lab, max_positives=2)

    assert np.isfinite(jax.jit(loss)(emb))
    for value in (jnp.nan, jnp.inf):
        bad = emb.at[5, 3].set(value)
        val, grad = jax.jit(jax.value_and_grad(loss))(bad)
        assert np.isnan(val)
        assert np.isnan(np.asarray(grad)).all()
    with pytest.raises(rankax.debug.CheckError, match=r"batch_loss\(supap_loss\): embeddings") as info:
        rankax.debug.checked(loss)(emb.at[5, 3].set(jnp.inf))
    assert re.search(r"\[5,? 3\]", str(info.value))
    # NaN in the cross-batch memory poisons the loss too (only filled slots count).
    memory = rankax.xbm.update(rankax.xbm.init(8, 8), emb[:4].at[0, 0].set(jnp.nan), lab[:4])
    value = jax.jit(lambda e, m: rankax.batch_loss(losses.supap_loss, e, lab, memory=m))(emb, memory)
    assert np.isnan(value)


def test_batch_of_one_has_no_positive():
    """B = 1: the query's list is empty of positives -> 0.0 with a zero gradient."""
    emb = jnp.full((1, 4), 0.5)
    value, grad = jax.value_and_grad(lambda e: rankax.batch_loss(losses.supap_loss, e, jnp.array([3])))(emb)
    assert float(value) == 0.0 and not np.asarray(grad).any()


def test_proxy_loss_bad_input():
    emb, lab = _batch()
    proxies = jnp.ones((4, 8))
    fn = losses.normalized_softmax_loss
    _raises(TypeError, fn, emb.astype(jnp.int32), lab, proxies, match=("embeddings",))
    _raises(ValueError, fn, emb, lab, proxies[:, :3], match=("proxies",))
    _raises(ValueError, fn, emb, lab[:3], proxies, match=("labels",))
    _raises(TypeError, fn, emb, lab.astype(jnp.float32), proxies, match=("labels", "integer"))
    _raises(ValueError, fn, emb, lab, proxies, temperature=0.0, match=("temperature",))
    # Class ids must index a proxy row (eager: concrete labels); a masked row may hold anything.
    for bad in (-1, 4):
        with pytest.raises(ValueError, match=re.escape("labels must be class ids in [0, C) = [0, 4)")):
            fn(emb, lab.at[2].set(bad), proxies)
    where = jnp.ones(12, bool).at[2].set(False)
    assert fn(emb, lab.at[2].set(-1), proxies, where=where) == fn(emb, lab, proxies, where=where)
    # Traced class ids are not checked: one outside [0, C) makes its row NaN (optax alone would
    # read -1 as the last class, a silent wrong value), the other rows keep their values.
    rows = jax.jit(lambda lab: fn(emb, lab, proxies, reduce_fn=None))
    clean = np.asarray(rows(lab))
    for bad in (-1, 4):
        out = np.asarray(rows(lab.at[2].set(bad)))
        assert np.isnan(out[2]) and np.array_equal(np.delete(out, 2), np.delete(clean, 2)), (bad, out)


def test_proxy_loss_nonfinite():
    emb, lab = _batch()
    proxies = jax.random.normal(jax.random.key(1), (4, 8))
    fn = losses.normalized_softmax_loss
    first = r"normalized_softmax_loss: embeddings has a non-finite value: embeddings\[2, 1\] = nan"
    with pytest.raises(ValueError, match=first):
        fn(emb.at[2, 1].set(jnp.nan), lab, proxies)

    @jax.jit
    def outputs(e, p, where):
        return {
            "per_row": fn(e, lab, p, where=where, reduce_fn=None),
            "grad": jax.grad(lambda e, p: fn(e, lab, p, where=where), argnums=(0, 1))(e, p),
        }

    everywhere = jnp.ones(12, bool)
    clean = outputs(emb, proxies, everywhere)
    out = outputs(emb.at[2, 1].set(jnp.inf), proxies, everywhere)
    assert np.isnan(out["per_row"][2])
    others = lambda o: np.delete(np.asarray(o["per_row"]), 2)
    np.testing.assert_array_equal(others(out), others(clean))
    assert all(np.isnan(np.asarray(g)).all() for g in out["grad"])  # the mean is NaN: so is every gradient
    assert np.isnan(outputs(emb, proxies.at[1, 0].set(jnp.nan), everywhere)["per_row"]).all()
    # A masked row may hold NaN: ignored, the others' values and gradients unchanged.
    masked = outputs(emb.at[2, 1].set(jnp.nan), proxies, everywhere.at[2].set(False))
    want = outputs(emb, proxies, everywhere.at[2].set(False))
    proxy_grad = lambda o: np.asarray(o["grad"][1])
    np.testing.assert_allclose(proxy_grad(masked), proxy_grad(want), rtol=1e-6)
    message = "normalized_softmax_loss: embeddings has a non-finite"
    with pytest.raises(rankax.debug.CheckError, match=message):
        rankax.debug.checked(lambda e: fn(e, lab, proxies))(emb.at[4, 0].set(jnp.nan))


def test_hierarchy_bad_input():
    paths = jnp.array([[0, 0], [1, 0], [2, 1]])
    rel = rankax.hierarchy.path_relevance
    _raises(TypeError, rel, paths.astype(jnp.float32), paths, match=("query_paths", "integer"))
    _raises(ValueError, rel, paths[:, :1], paths, match=("same number of levels",))
    _raises(ValueError, rel, paths, paths, rule="x", match=("rule must be one of",))
    for alpha in (0.0, -1.0, math.nan):
        _raises(ValueError, rel, paths, paths, alpha=alpha, match=("alpha must be a finite number > 0",))
    wrong = jnp.ones((3, 2), bool)
    _raises(ValueError, rel, paths, paths, where=wrong, match=("where must have shape", "(3, 2)"))
    with pytest.raises(ValueError, match="level_weights: alpha must be a finite number > 0"):
        rankax.hierarchy.level_weights(3, -1.0)
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="num_levels must be an int >= 1"):
            rankax.hierarchy.level_weights(bad)
        with pytest.raises(ValueError, match="num_levels must be an int >= 1"):
            rankax.hierarchy.relevance_from_levels(jnp.zeros(3, jnp.int32), bad, rule="levels")


def test_lists_from_embeddings_bad_input():
    emb, lab = _batch()
    make = rankax.lists_from_embeddings
    with pytest.raises(TypeError, match="embeddings must be floating point"):
        make(emb.astype(jnp.int32), lab)
    with pytest.raises(TypeError, match="labels must be integer class ids"):
        make(emb, lab.astype(jnp.float32))
    with pytest.raises(ValueError, match="D >= 1"):
        make(emb[:, :0], lab)
    with pytest.raises(TypeError, match="reference_labels must be integer class ids"):
        make(emb, lab, emb[:3], np.array([0.5, 1.0, 2.0]))  # 0.5 would match no class
    with pytest.raises(TypeError, match="references must be floating point"):
        make(emb, lab, np.ones((3, emb.shape[1]), np.int32), lab[:3])
    # int64 ids past int32: refused as batch_loss refuses them (JAX would wrap 2**32 onto 0).
    wide = np.array([0, 2**32, 5], np.int64)
    with pytest.raises(ValueError, match=r"lists_from_embeddings: labels: ids 0\.\.4294967296 do not fit"):
        make(np.eye(3, dtype=np.float32), wide)
    with pytest.raises(ValueError, match="lists_from_embeddings: reference_labels: ids"):
        make(np.eye(3, dtype=np.float32), np.arange(3), np.eye(3, dtype=np.float32), wide)
    np.testing.assert_array_equal(make(np.eye(3, dtype=np.float32), np.array([0, 2**31 - 1, 5]))[1],
                                  np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]]))  # in range: kept


# ----------------------------------------------------------------------------- retrieval

R = rankax.retrieval


def _retrieval_data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((12, 4)).astype(np.float32), rng.standard_normal((10, 4)).astype(np.float32),
            np.arange(12) % 4)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda q, g, y: R.knn(q, g, k=2, block_size=0), V, "block_size must be an int >= 1"),
        (lambda q, g, y: R.knn(q, g, k=2, gallery_block_size=-3), V, "gallery_block_size must"),
        (lambda q, g, y: R.knn(q, g, k=3.0), V, "k must be an int >= 1, got 3.0"),
        (lambda q, g, y: R.knn(q, g, k=11), V, "k must be at most 10"),
        (lambda q, g, y: R.knn(q[:1], k=1), V, "no item besides each query"),
        (lambda q, g, y: R.evaluate(q, y, gallery_block_size=0), V, "gallery_block_size must be"),
        (lambda q, g, y: R.evaluate(q, y, ks=4), T, "ks must be a sequence of cut-offs"),
        (lambda q, g, y: R.evaluate(q, y, relevance_rule="popp"), V, "relevance_rule must be"),
        (lambda q, g, y: R.evaluate(q, y, relevance_alpha=-1), V, "relevance_alpha must be"),
        (lambda q, g, y: R.evaluate(q, y, scann_config="tree"), V, "scann_config must be"),
        (lambda q, g, y: R.evaluate(q.astype(np.complex64), y), V, "queries must hold real"),
        (lambda q, g, y: R.RetrievalEvaluator(q, y, bacth_size=4), T, "did you mean 'batch_size'"),
        (lambda q, g, y: R.RetrievalEvaluator(q, y, backend="Exact"), V, "backend must be"),
        (lambda q, g, y: R.RevisitedEvaluator(q, g, [{}] * 12, kappas=5), T, "kappas must be"),
        (lambda q, g, y: R.RevisitedEvaluator(q, g, [{}] * 12, batch_size=0), V, "batch_size must be an int"),
        (lambda q, g, y: R.RetrievalEvaluator(q, y, batch_size=2.0), V, "batch_size must be an int >= 1"),
    ],
    ids=lambda v: None,
)
def test_retrieval_options_are_checked_up_front(call, error, match):
    q, g, y = _retrieval_data()
    with pytest.raises(error, match=re.escape(match)):
        call(q, g, y)


def test_scores_that_could_overflow_float32_are_refused():
    """Embeddings of norm 3e20: every q . g overflows float32, and R@1 was 1.0 (ranks of inf
    scores). The bound is Cauchy-Schwarz's: norms whose product passes half of float32's
    largest value; normalize=True (scale-safe) and norms up to 1e19 pass."""
    q, g, y = _retrieval_data()
    big = q / np.linalg.norm(q, axis=1, keepdims=True) * np.float32(3e20)
    for call in (lambda: R.evaluate(big, y), lambda: R.knn(big, k=2), lambda: R.knn(q * 1e19, big, k=2)):
        with pytest.raises(ValueError, match=r"scores could overflow float32: the largest query and gallery "
                                             r"norms are .*; rescale the embeddings or pass normalize=True"):
            call()
    assert R.evaluate(big, y, normalize=True) == R.evaluate(q, y, normalize=True)
    fine = q / np.linalg.norm(q, axis=1, keepdims=True) * np.float32(1e19)  # 1e38 < 1.7e38
    unit = q / np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_array_equal(R.knn(fine, k=2)[1], R.knn(unit, k=2)[1])
    np.testing.assert_array_equal(R.knn(q, big, k=2)[1], R.knn(q, unit, k=2)[1])  # 6e20: fine


def test_knn_bad_k_leaves_nothing_behind():
    """A rejected ``k`` must not reach the compiled-program cache (it once poisoned it)."""
    q, g, _ = _retrieval_data()
    with pytest.raises(ValueError):
        rankax.retrieval.knn(q, g, k=3.0)
    _, index = rankax.retrieval.knn(q, g, k=3)
    np.testing.assert_array_equal(index, np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :3])


def test_bfloat16_embeddings_are_evaluated_in_float32():
    q, _, y = _retrieval_data()
    low = jnp.asarray(q, jnp.bfloat16)
    want = rankax.retrieval.evaluate(np.asarray(low.astype(jnp.float32)), y)
    assert rankax.retrieval.evaluate(low, y) == want


def test_revisited_bad_input():
    q, g, _ = _retrieval_data()
    gnd = [{"easy": [0, 1], "hard": [2], "junk": [3]} for _ in range(12)]
    ranks = np.argsort(-(g @ q.T), axis=0)
    run = rankax.retrieval.revisited_map
    with pytest.raises(ValueError, match="not scores"):
        run(g @ q.T, gnd)
    with pytest.raises(ValueError, match="distinct database ids"):
        run(np.zeros_like(ranks), gnd)
    with pytest.raises(ValueError, match=re.escape("gnd[0] has key 'Easy'")):
        run(ranks, [{"Easy": [0]}] * 12)
    with pytest.raises(ValueError, match=re.escape("gnd[0]['easy'] has database id -1: ids count from 0")):
        run(ranks, [{"easy": [-1]}] * 12)
    with pytest.raises(ValueError, match=re.escape("queries contains 48 NaN")):
        rankax.retrieval.revisited_from_embeddings(np.full_like(q, np.nan), g, gnd)


# ----------------------------------------------------------------------------- memory and samplers


def test_memory_bad_input():
    from rankax import xbm

    emb, lab = _batch()
    filled = xbm.update(xbm.init(6, 8), emb[:2], lab[:2])
    with pytest.raises(ValueError, match=re.escape("batch_loss(supap_loss): memory has a non-finite value")):
        rankax.batch_loss(losses.supap_loss, emb, lab, memory=filled._replace(
            embeddings=filled.embeddings.at[1, 0].set(jnp.nan)))
    # NaN in an empty slot is no entry: ignored.
    empty_nan = filled._replace(embeddings=filled.embeddings.at[4, 0].set(jnp.nan))
    assert rankax.batch_loss(losses.supap_loss, emb, lab, memory=empty_nan) == rankax.batch_loss(
        losses.supap_loss, emb, lab, memory=filled)
    with pytest.raises(ValueError, match=re.escape("memory (6, 5) / labels (6,) do not match the batch")):
        rankax.batch_loss(losses.supap_loss, emb, lab, memory=xbm.init(6, 5))
    with pytest.raises(TypeError, match="memory must be a rankax.xbm.XBM"):
        rankax.batch_loss(losses.supap_loss, emb, lab, memory=(emb, lab))
    with pytest.raises(ValueError, match="xbm.init: size must be an int >= 1, got 4.0"):
        xbm.init(4.0, 8)
    with pytest.raises(TypeError, match="label_dtype must be a signed integer dtype"):
        xbm.init(4, 8, label_dtype=jnp.float32)
    # Refused at init, not later (an int memory truncated 0.7 to 0; a [M, 2, 3] label tensor).
    with pytest.raises(TypeError, match="xbm.init: dtype must be a floating dtype .* got int32"):
        xbm.init(4, 8, dtype=jnp.int32)
    for shape in ((2, 3), (0,)):
        with pytest.raises(ValueError, match=r"xbm.init: label_shape must be \(\) for class ids or \(L,\)"):
            xbm.init(4, 8, label_shape=shape)
    with pytest.raises(TypeError, match="xbm.update: labels must be integer class ids"):
        xbm.update(filled, emb[:2], jnp.array([0.5, 1.7]))


def test_sampler_steps_and_epochs_are_nonnegative_ints():
    from rankax.data import samplers

    labels = np.repeat(np.arange(4), 4)
    for sampler in (samplers.PKSampler(labels, 2, 2), samplers.MPerClassEpochSampler(labels, 4, 2),
                    samplers.ReplacementPKSampler(labels, 2, 2)):
        for bad in (-1, 1.7):
            with pytest.raises(ValueError, match=f"step must be an int >= 0, got {bad}"):
                sampler.indices(bad)
        with pytest.raises(ValueError, match="epoch must be an int >= 0, got -1"):
            sampler.epoch_start(-1)
        np.testing.assert_array_equal(sampler.indices(np.int64(3)), sampler.indices(3))
    for kwargs, match in (({"samples_per_class": 2.0}, "samples_per_class must be an int >= 1, got 2.0"),
                          ({"seed": -1}, "seed must be an int >= 0, got -1"),
                          ({"level": 5}, "level must be in [0, 2)")):
        paths = np.stack([labels, labels // 2], 1)
        args = {"labels": paths, "batch_size": 4, "samples_per_class": 2, **kwargs}
        for cls in (samplers.MPerClassEpochSampler, samplers.ReplacementPKSampler):
            with pytest.raises(ValueError, match=re.escape(match)):
                cls(**args)
    with pytest.raises(ValueError, match=re.escape("classes_per_batch must be an int >= 1, got 2.5")):
        samplers.PKSampler(labels, 2.5, 2)


def test_dataset_keys_are_checked_by_kind():
    from rankax.data import load_dataset

    with pytest.raises(ValueError, match="config.dataset.root is required for dataset 'dyml', got None"):
        load_dataset({"name": "dyml", "root": None})
    with pytest.raises(ValueError, match=re.escape("crop_scale of dataset 'folder' must be like")):
        load_dataset({"name": "folder", "root": "/tmp", "crop_scale": ("a", "b")})
    # None where the key has a default value: a bare TypeError from int(None), or a bool key
    # (flip, draft_train) silently off; now the key is named.
    for key, name in (("image_size", "cub"), ("flip", "cub"), ("draft_train", "folder"),
                      ("split_seed", "digits"), ("crop_scale", "sop")):
        given = {"name": name, key: None, **({"root": "/tmp"} if name == "folder" else {})}
        words = f"config.dataset.{key} of dataset {name!r} must be like"
        with pytest.raises(ValueError, match=re.escape(words)):
            load_dataset(given)
    # numpy integers are ints; the split they give is the one of the same Python int.
    a = load_dataset({"name": "digits", "split_seed": np.int64(3)})
    b = load_dataset({"name": "digits", "split_seed": 3})
    np.testing.assert_array_equal(a.train.labels, b.train.labels)


@pytest.mark.parametrize("fn, name, value", [
    (losses.fast_ap_loss, "num_bins", 10),
    (losses.histogram_ap_loss, "tie_aware", True),
    (losses.supap_loss, "max_positives", 3),
    (metrics.recall_at_k, "k", 2),
])
def test_a_traced_static_option_is_named_as_static(fn, name, value):
    """Options that set shapes or the program, passed as jit arguments, get the message that
    says so (not a range error showing a JitTracer)."""
    s, y = _lists_data()
    with pytest.raises(TypeError, match=f"{name} must be a static Python"):
        jax.jit(lambda v: fn(s, y, **{name: v}))(value)


def test_batch_loss_reads_numpy_and_concrete_integer_options_as_static():
    """batch_loss compiles numpy scalars and concrete integer JAX arrays as the list loss reads
    them: the values equal those of the Python numbers."""
    rng = np.random.default_rng(0)
    e = rng.normal(size=(16, 8)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    y = np.repeat(np.arange(4), 4)
    want = rankax.batch_loss(losses.fast_ap_loss, e, y, num_bins=10)
    assert rankax.batch_loss(losses.fast_ap_loss, e, y, num_bins=np.int64(10)) == want
    want = rankax.batch_loss(losses.recall_at_k_surrogate_loss, e, y, ks=(1, 2))
    assert rankax.batch_loss(losses.recall_at_k_surrogate_loss, e, y, ks=jnp.array([1, 2])) == want


def test_class_ids_that_jax_would_wrap_are_refused():
    """Without x64 JAX turns int64 ids into int32 modulo 2**32: 2**32 and 0 became one class
    and batch_loss returned another batch's loss. Such ids now raise, naming the argument;
    with x64 on they are kept, and the loss is that of the same classes numbered 0..3."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(8, 4)).astype(np.float32)
    huge = np.array([0, 0, 2**32, 2**32, 1, 1, 2**32 + 1, 2**32 + 1])
    small = np.array([0, 0, 2, 2, 1, 1, 3, 3])
    wrap = r"ids 0\.\.4294967297 do not fit int32, and JAX would wrap them"
    with pytest.raises(ValueError, match=r"batch_loss\(supap_loss\): labels: " + wrap):
        rankax.batch_loss(rankax.supap_loss, emb, huge)
    with pytest.raises(ValueError, match=r"batch_loss\(supap_loss\): labels: " + wrap):
        jax.jit(lambda e: rankax.batch_loss(rankax.supap_loss, e, huge))(emb)
    with pytest.raises(ValueError, match=r"shared_levels: item_paths: ids 7\.\.4294967296 do not fit"):
        rankax.hierarchy.shared_levels([[0, 7]], [[2**32, 7]])
    memory = rankax.xbm.init(4, 4)
    with pytest.raises(ValueError, match=r"xbm.update: labels: " + wrap):
        rankax.xbm.update(memory, emb, huge)
    with jax.enable_x64(True):
        got = rankax.batch_loss(rankax.supap_loss, emb, huge)
        want = rankax.batch_loss(rankax.supap_loss, emb, small)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_reference_and_memory_labels_of_another_kind_name_the_argument_eagerly():
    """Memory or references with label paths against a batch of class ids: the same one-line
    error eagerly as under jit (eagerly, numpy's concatenate error came first)."""
    emb, lab = _batch()
    memory = rankax.xbm.init(4, emb.shape[1], label_shape=(2,))
    refs = dict(references=emb[:4], reference_labels=jnp.zeros((4, 2), jnp.int32))
    for kw, name in ((dict(memory=memory), "memory"), (refs, "references")):
        def loss(e, kw=kw):
            return rankax.batch_loss(losses.supap_loss, e, lab, **kw)

        for call in (loss, jax.jit(loss)):
            with pytest.raises(ValueError, match=rf"batch_loss\(supap_loss\): {name} .* do not match"):
                call(emb)


def test_batch_loss_takes_python_lists_of_references():
    emb, lab = _batch()
    as_lists = rankax.batch_loss(losses.supap_loss, emb, lab, references=np.asarray(emb[:4]).tolist(),
                                 reference_labels=np.asarray(lab[:4]).tolist(), reference_mask=[True] * 4)
    as_arrays = rankax.batch_loss(losses.supap_loss, emb, lab, references=emb[:4], reference_labels=lab[:4])
    assert float(as_lists) == pytest.approx(float(as_arrays), rel=1e-6)


def test_a_users_loss_of_the_wrong_shape_and_rankax_renames():
    """A user's list loss must return one value per list (it gave a non-scalar batch_loss), and
    rankax's deprecated spellings are rankax's: batch_loss passes a user's keywords as given,
    so tau= is refused as the function itself refuses it (it was renamed to temperature)."""
    emb, lab = _batch()

    def per_item(scores, labels, *, where=None, reduce_fn=jnp.mean, max_positives=None):
        return jnp.where(where, scores * (1 - labels), 0.0)

    with pytest.raises(TypeError, match=r"must return one value per list, shape \(\d+,\) here"):
        rankax.batch_loss(per_item, emb, lab)

    def mine(scores, labels, *, where=None, reduce_fn=jnp.mean, max_positives=None, temperature=0.1):
        return losses.smooth_ap_loss(scores, labels, where=where, reduce_fn=reduce_fn,
                                     temperature=temperature)

    with pytest.raises(TypeError, match="unexpected keyword argument 'tau'"):
        rankax.batch_loss(mine, emb, lab, tau=0.5)
    with pytest.warns(DeprecationWarning, match="'tau' is deprecated"):
        rankax.batch_loss(losses.smooth_ap_loss, emb, lab, tau=0.5)


def test_small_input_checks():
    emb, lab = _batch()
    proxies = jnp.eye(4, emb.shape[1])
    e2, l2 = emb[:2], np.array([0, 2**33])
    with pytest.raises(ValueError, match=r"labels: ids 0..8589934592 do not fit"):
        losses.normalized_softmax_loss(e2, l2, proxies)
    with pytest.raises(TypeError, match="where must be a boolean mask"):
        losses.normalized_softmax_loss(e2, np.array([0, 1]), proxies, where=jnp.array([0.5, 0.0]))
    memory = rankax.xbm.init(4, emb.shape[1])
    with pytest.raises(TypeError, match="xbm.update: embeddings must be floating point, got dtype complex64"):
        rankax.xbm.update(memory, emb[:1].astype(jnp.complex64), lab[:1])
    with pytest.raises(TypeError, match="xbm.update: memory must be a rankax.xbm.XBM"):
        rankax.xbm.update(None, emb[:1], lab[:1])
    with pytest.raises(TypeError, match="include_self must be True or False, got 'no'"):
        rankax.batch_loss(losses.supap_loss, emb, lab, include_self="no")
    with pytest.raises(TypeError, match="lists_from_embeddings: include_self must be True or False"):
        rankax.lists_from_embeddings(emb, lab, include_self=1)
    with pytest.raises(ValueError, match="lists_from_embeddings: precision must be"):
        rankax.lists_from_embeddings(emb, lab, precision="bogus")
    s, y = jnp.zeros((2, 6)), jnp.ones((2, 6))
    with pytest.raises(TypeError, match="ks must be a sequence of cut-offs"):
        losses.recall_at_k_surrogate_loss(s, y, ks=np.array(2))
    with pytest.raises(TypeError, match="temperature must be a finite number > 0"):
        losses.recall_at_k_surrogate_loss(s, y, temperature=np.complex64(0.05 + 1j))
    with pytest.raises(ValueError, match="roadmap_step: temperature must be a finite number > 0, got -1"):
        rankax.ranking.roadmap_step(jnp.array([0.1]), temperature=-1)
    with pytest.raises(TypeError, match="aligned_zeros: shape must be an int or a tuple of ints"):
        rankax.host.aligned_zeros(2.0)
    with pytest.raises(TypeError, match="aligned_zeros: dtype must hold plain numbers"):
        rankax.host.aligned_zeros(3, "U4")


def test_per_cutoff_temperatures_as_jax_arrays():
    """k_temperature as a JAX array, concrete or traced (a jit argument, a gradient), is one
    temperature per cut-off like a tuple (a concrete one was refused as not a number, a traced
    one through batch_loss as not a scalar)."""
    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    y = jnp.asarray(rng.random((3, 8)) < 0.4, jnp.float32)
    temps = (1.0, 2.0, 3.0, 4.0, 5.0)
    want = float(losses.recall_at_k_surrogate_loss(s, y, k_temperature=temps))
    got = losses.recall_at_k_surrogate_loss(s, y, k_temperature=jnp.asarray(temps))
    assert float(got) == pytest.approx(want, rel=1e-6)
    traced = jax.jit(lambda t: losses.recall_at_k_surrogate_loss(s, y, k_temperature=t))(jnp.asarray(temps))
    assert float(traced) == pytest.approx(want, rel=1e-6)
    emb, lab = _batch()
    by_tuple = rankax.batch_loss(losses.recall_at_k_surrogate_loss, emb, lab, k_temperature=temps)
    by_array = rankax.batch_loss(losses.recall_at_k_surrogate_loss, emb, lab,
                                 k_temperature=jnp.asarray(temps))
    assert float(by_array) == pytest.approx(float(by_tuple), rel=1e-6)


@pytest.mark.parametrize("fn", [losses.smooth_ap_loss, losses.supap_loss, losses.roadmap_loss])
def test_temperature_past_float32_reciprocal_is_refused(fn):
    """A temperature above 1e37 has a float32 reciprocal flushed to zero: the -inf of a left-out
    negative divided by it was NaN (1e38 gave a NaN loss). Just below the bound the loss is finite."""
    s, y = jnp.array([0.3, 0.1, 0.5, -0.2]), jnp.array([1, 0, 1, 0])
    assert np.isfinite(float(fn(s, y, temperature=1e37)))
    with pytest.raises(ValueError, match=f"{fn.__name__}: temperature must be at most 1e\\+37"):
        fn(s, y, temperature=1e38)


def test_torch_tensors_are_refused_naming_the_argument():
    """rankax computes in JAX: a torch tensor is named with the conversion (batch_loss failed
    in JAX's argument handling, a tensor requiring grad in numpy, and list losses converted
    the others silently, as if a gradient could flow back to torch)."""
    torch = pytest.importorskip("torch")
    emb, labels = torch.randn(16, 8), torch.arange(4).repeat_interleave(4)
    with pytest.raises(TypeError, match=r"^batch_loss\(supap_loss\): embeddings is a torch\.Tensor: .*"
                                        r"jnp\.asarray\(embeddings\.detach\(\)\.cpu\(\)\.numpy\(\)\)"):
        rankax.batch_loss(losses.supap_loss, emb, labels)
    with pytest.raises(TypeError, match=r"batch_loss\(supap_loss\): labels is a torch\.Tensor"):
        rankax.batch_loss(losses.supap_loss, jnp.asarray(emb.numpy()), labels)
    scores = torch.randn(8, requires_grad=True)
    with pytest.raises(TypeError, match=r"^smooth_ap_loss: scores is a torch\.Tensor"):
        losses.smooth_ap_loss(scores, jnp.array([1, 0, 1, 0, 0, 0, 1, 0]))


def test_a_trailing_label_axis_of_one_gets_the_fix():
    """``(B, 1)`` labels where ``(B,)`` are meant: the messages say which index to pass."""
    with pytest.raises(ValueError, match=r"got \(8, 1\) \(a trailing axis of 1: pass labels\[\.\.\., 0\]\)"):
        losses.smooth_ap_loss(jnp.zeros(8), jnp.zeros((8, 1)))
    emb = jnp.eye(6, 3)
    with pytest.raises(ValueError, match=r"one column: pass labels\[:, 0\]"):
        rankax.lists_from_embeddings(emb, jnp.zeros((6, 1), jnp.int32))
    with pytest.raises(TypeError, match=r"cast with \.astype\(jnp\.int32\)"):
        rankax.lists_from_embeddings(emb, jnp.zeros(6))


def _unit_batch(seed=0, b=8, d=4):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(b, d)).astype(np.float32)
    return jnp.asarray(e / np.linalg.norm(e, axis=1, keepdims=True)), np.arange(b) // 2


def test_a_relevance_fn_returning_nan_or_negative_values_is_refused_eagerly():
    """A ``relevance_fn`` returning NaN gave H-AP 0.0 (the loss is 0.664 on this batch), and a
    negative or NaN entry changed SupAP silently, even outside ``jit``. Eager calls now raise;
    inside ``jit`` the values read as "not relevant", as list labels do (docs/behaviour.md), and
    checked mode reports them."""
    e, lab = _unit_batch()
    same = lambda q, i: (q[:, None] == i[None, :]).astype(jnp.float32)  # noqa: E731
    want = rankax.batch_loss(losses.supap_loss, e, lab)
    got = rankax.batch_loss(losses.supap_loss, e, lab, relevance_fn=same)
    assert float(got) == pytest.approx(float(want))
    for bad, shown in ((lambda q, i: same(q, i) * jnp.nan, "nan"), (lambda q, i: same(q, i) - 0.5, "-0.5"),
                       (lambda q, i: same(q, i) * jnp.inf, "inf")):
        for loss in (losses.hap_loss, losses.supap_loss):
            with pytest.raises(ValueError, match=rf"relevance_fn must return finite relevance >= 0: "
                                                 rf"relevance\[0, \d+\] = {shown}"):
                rankax.batch_loss(loss, e, lab, relevance_fn=bad)
    nan_rel = lambda q, i: same(q, i) * jnp.nan  # noqa: E731
    loss = lambda x, y: rankax.batch_loss(losses.supap_loss, x, y, relevance_fn=nan_rel)  # noqa: E731
    assert float(jax.jit(loss)(e, lab)) == 0.0  # no item relevant: no query has a positive
    with pytest.raises(rankax.debug.CheckError, match="relevance_fn must return finite relevance"):
        rankax.debug.checked(loss)(e, lab)
    with pytest.raises(TypeError, match=r"relevance_fn must be a function \(query_labels"):
        rankax.batch_loss(losses.supap_loss, e, lab, relevance_fn=3)


def test_degenerate_inputs_get_a_defined_answer_or_a_named_error():
    """Each of these failed inside JAX or numpy (an IndexError, a reduction over an empty
    array, "None is not a valid value"), or was accepted with a meaningless value."""
    e, lab = _unit_batch()
    s = jnp.array([[0.9, 0.5, 0.3]])
    # an empty reference set is no reference set: the batch's own value and gradient
    empty = dict(references=np.zeros((0, 4), np.float32), reference_labels=np.zeros(0, int))
    want = rankax.batch_loss(losses.supap_loss, e, lab)
    assert float(rankax.batch_loss(losses.supap_loss, e, lab, **empty)) == float(want)
    traced = jax.jit(lambda x: rankax.batch_loss(losses.supap_loss, x, lab, **empty))
    assert float(traced(e)) == float(want)
    grad = jax.grad(lambda x, kw: rankax.batch_loss(losses.supap_loss, x, lab, **kw))
    np.testing.assert_array_equal(grad(e, empty), grad(e, {}))
    cases = [
        (lambda: rankax.batch_loss(losses.supap_loss, jnp.eye(4), np.zeros((4, 0), int)), ValueError,
         r"labels as \[B, L\] label paths need L >= 1 levels"),
        (lambda: losses.supap_loss(s, None), TypeError,
         r"supap_loss: labels must be a boolean, integer or floating array, got NoneType"),
        (lambda: metrics.average_precision(s, None), TypeError,
         r"average_precision: labels must be a boolean, integer or floating"),
        (lambda: rankax.batch_loss(losses.supap_loss, jnp.eye(3), None), TypeError,
         r"batch_loss\(supap_loss\): labels must be a numeric array, got NoneType"),
        (lambda: losses.supap_loss(np.array([["a", "b", "c"]]), jnp.ones((1, 3))), TypeError,
         r"supap_loss: scores must be a numeric array, got dtype <U1"),
        (lambda: rankax.ranking.smooth_rank(s, step_fn=0.1), TypeError,
         r"smooth_rank: step_fn must be a function"),
        (lambda: losses.normalized_softmax_loss(jnp.zeros((5, 0)), jnp.arange(5) % 4, jnp.zeros((4, 0))),
         ValueError, r"embeddings must be \[\.\.\., D\] with D >= 1"),
        (lambda: rankax.make_batch_loss(losses.supap_loss, block_size=0), ValueError,
         r"make_batch_loss\(supap_loss\): block_size must be"),
        (lambda: rankax.retrieval.evaluate(np.eye(4, dtype=np.float32), np.arange(4) // 2,
                                           return_per_query="y"),
         TypeError, r"return_per_query must be True or False"),
        (lambda: rankax.retrieval.RetrievalEvaluator(np.zeros((0, 3), np.float32), np.zeros(0, int)),
         ValueError, r"inputs is empty"),
        (lambda: rankax.retrieval.RetrievalEvaluator(
            np.zeros((3, 3), np.float32), np.zeros(3, int), gallery_inputs=np.zeros((0, 3), np.float32),
            gallery_labels=np.zeros(0, int)), ValueError, r"gallery_inputs is empty"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


@pytest.mark.parametrize("step, kwargs, match", [
    ("sigmoid_step", {"temperature": 0.0}, r"sigmoid_step: temperature must be a finite number > 0"),
    ("sigmoid_step", {"temperature": -1.0}, r"temperature must be a finite number > 0"),
    ("roadmap_step", {"temperature": np.float32(0)}, r"roadmap_step: temperature must be"),
    ("roadmap_step", {"rho": -1.0}, r"roadmap_step: rho must be a finite number >= 0"),
    ("roadmap_step", {"delta": -1.0}, r"roadmap_step: delta must be a finite number >= 0"),
    ("roadmap_step", {"rho": float("nan")}, r"rho must be"),
])
def test_the_public_steps_check_their_hyperparameters_as_the_losses_do(step, kwargs, match):
    """sigmoid_step(x, temperature=0) was NaN, a negative temperature flipped the step, and
    roadmap_step checked only Python-float temperatures."""
    with pytest.raises(ValueError, match=match):
        getattr(rankax.ranking, step)(jnp.array([0.0, 0.1]), **kwargs)
    x = jnp.array([-0.2, 0.0, 0.03, 0.2])  # traced hyperparameters pass, as in the losses
    tau = jnp.float32(0.05)
    got = jax.jit(lambda t: rankax.ranking.sigmoid_step(x, temperature=t))(tau)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-np.asarray(x) / 0.05)), rtol=1e-6)


def test_references_closed_over_in_the_users_jit():
    """Concrete labels and references inside the caller's ``jit`` (the fast path for numpy
    labels) raised TracerArrayConversionError when no ``reference_mask`` was given: the mask of
    all references was built as a traced array. Checked against the list loss on the dense
    ``E [E; R]^T`` lists, the query left out of its own."""
    e, lab = _unit_batch(1)
    refs, ref_lab = _unit_batch(2, b=6)
    ref_lab = ref_lab + 1  # classes 1..3: shared with some of the batch
    mask = np.array([True, True, False, True, True, True])
    for given in (None, mask):
        got = jax.jit(lambda x, m=given: rankax.batch_loss(
            losses.supap_loss, x, lab, references=np.asarray(refs), reference_labels=ref_lab,
            reference_mask=m))(e)
        keep = np.ones(6, bool) if given is None else given
        items = np.concatenate([np.asarray(e), np.asarray(refs)[keep]])
        item_lab = np.concatenate([lab, ref_lab[keep]])
        scores = np.asarray(e) @ items.T
        where = np.ones(scores.shape, bool)
        where[np.arange(8), np.arange(8)] = False
        rel = (lab[:, None] == item_lab[None, :]) & where
        per_query = losses.supap_loss(jnp.asarray(scores), jnp.asarray(rel), where=jnp.asarray(where),
                                      reduce_fn=None)
        has = rel.any(axis=1)
        assert float(got) == pytest.approx(float(np.mean(np.asarray(per_query)[has])), abs=1e-6)
