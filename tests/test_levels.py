"""Per-level evaluation (``rankax.retrieval.evaluate_levels``, ``config.eval_levels``) against a
numpy transcription of the DyML evaluation of SupRank and HAPPIER.

The reference follows ``elias-ramzi/SupRank@99041e8``:

* ``suprank/engine/accuracy_calculator.py`` ``batch_metrics``: every query ranks the whole
  gallery (itself left out when queries are the gallery); at each level ``l`` of
  ``compute_for_hierarchy_levels`` the binary target is ``labels[:, l] == gallery[:, l]``
  (``suprank/lib/create_label_matrix.py``), and the multi-level target counts the equal
  columns;
* ``suprank/engine/metrics.py``: ``ap`` (AP over the whole ranking), ``map_at_R``,
  ``precision_at_1``, ``recall_rate_at_k`` (a positive in the top k), ``asi`` (with ``at_R``);
  ``with_binary_asi=True`` adds ``asi`` of the binary target to the binary metrics;
* ``suprank/engine/overall_accuracy_hook.py`` ``intra_set_overall_accuracy_hook``: the mean of
  every metric whose name before ``_`` is a binary metric's, so ``ASI`` averages
  ``ASI_multi`` with ``ASI_level<l>``.

Scores in float64; ties do not occur (continuous random embeddings).
"""

import numpy as np
import pytest

from rankax import retrieval
from rankax.train import config_checks, evaluators, input_pipeline, state
from tests.test_train import tiny_config


def _official_asi(target: np.ndarray) -> float:
    """``asi(sorted_target, at_R=True)`` of one ranked list of integer targets."""
    ideal = np.sort(target)[::-1]
    values = np.arange(target.max() + 1)
    got = np.cumsum(target[:, None] == values[None, :], axis=0)  # [n, values]
    best = np.cumsum(ideal[:, None] == values[None, :], axis=0)
    per_depth = np.minimum(got, best).sum(1) / np.arange(1, len(target) + 1)
    relevant = ideal > 0
    return float((per_depth * relevant).sum() / relevant.sum())


def _official_binary(target: np.ndarray, ks) -> dict[str, float]:
    """The binary metrics of one ranked 0/1 list."""
    ranks = np.arange(1, len(target) + 1)
    hits = np.cumsum(target) * target
    num = target.sum()
    out = {"AP": float((hits / ranks).sum() / num)}
    out["mAP@R"] = float((hits / ranks)[: int(num)].sum() / num)
    out["P@1"] = float(target[0])
    out.update({f"R@{k}": float(target[:k].any()) for k in ks})
    out["ASI"] = _official_asi(target.astype(int))
    return out


def _official(queries, labels, gallery, gallery_labels, levels, ks):
    """``{name: value}``: ``<metric>_level<l>``, ``ASI_multi`` and the overall means."""
    same = gallery is None
    gallery, gallery_labels = (queries, labels) if same else (gallery, gallery_labels)
    s = queries.astype(np.float64) @ gallery.astype(np.float64).T
    rows: dict[str, list[float]] = {}
    for i in range(len(queries)):
        keep = np.arange(len(gallery)) != i if same else np.ones(len(gallery), bool)
        order = np.argsort(-s[i, keep])
        ranked = gallery_labels[keep][order]
        logs = {}
        if labels.shape[1] > 1:
            logs["ASI_multi"] = _official_asi((ranked == labels[i]).sum(1))
        for level in levels:
            binary = (ranked[:, level] == labels[i, level]).astype(float)
            logs.update({f"{k}_level{level}": v for k, v in _official_binary(binary, ks).items()})
        for key, value in logs.items():
            rows.setdefault(key, []).append(value)
    result = {key: float(np.mean(v)) for key, v in rows.items()}
    binary_names = {"AP", "mAP@R", "P@1", "ASI", *(f"R@{k}" for k in ks)}
    overall: dict[str, list[float]] = {}
    for key, value in result.items():
        if key.split("_")[0] in binary_names:
            overall.setdefault(key.split("_")[0], []).append(value)
    result.update({key: float(np.mean(v)) for key, v in overall.items()})
    return result


def _paths(rng, n):
    """``[n, 3]`` fine / middle / coarse labels, every query with a positive at every level."""
    fine = np.repeat(np.arange(n // 3), 3)[:n]
    rng.shuffle(fine)
    return np.stack([fine, fine // 2, fine // 6], 1)


NAMES = {"map": "AP", "map@r": "mAP@R", "recall@1": "P@1", "recall@10": "R@10", "asi": "ASI"}


@pytest.mark.parametrize("separate_gallery", [False, True])
def test_levels_equal_the_official_dyml_evaluation(separate_gallery):
    rng = np.random.default_rng(0)
    labels = _paths(rng, 72)
    x = rng.normal(size=(72, 6)).astype(np.float32)
    if separate_gallery:
        queries, q_labels, gallery, g_labels = x[:30], labels[:30], x, labels  # queries in the gallery too
    else:
        queries, q_labels, gallery, g_labels = x, labels, None, None
    got = retrieval.evaluate_levels(queries, q_labels, gallery, g_labels, levels=(0, 1, 2), ks=(1, 10))
    want = _official(queries, q_labels, gallery, g_labels, (0, 1, 2), (10,))
    for ours, theirs in NAMES.items():
        for level in (0, 1, 2):
            assert got[f"level{level}/{ours}"] == pytest.approx(want[f"{theirs}_level{level}"], abs=2e-6), (
                ours, level)
        assert got[ours] == pytest.approx(want[theirs], abs=2e-6), ours  # the overall mean
    assert got["multi/asi"] == pytest.approx(want["ASI_multi"], abs=2e-6)
    # the overall ASI is not the mean of the three levels alone: the official hook adds ASI_multi
    levels_only = np.mean([want[f"ASI_level{level}"] for level in (0, 1, 2)])
    assert abs(got["asi"] - levels_only) > 1e-4
    # the path metrics are evaluate's on the full labels
    full = retrieval.evaluate(queries, q_labels, gallery, g_labels, ks=(1, 10))
    for key in ("hap", "ndcg", "asi"):
        assert got[f"multi/{key}"] == pytest.approx(full[key], abs=1e-7), key
    assert got["num_queries"] == len(queries)


@pytest.mark.parametrize("separate_gallery", [False, True])
def test_levels_beside_the_labels_as_given_without_means(separate_gallery):
    """``means=False``: SupRank's SOP/iNat evaluation (``overall_accuracy: False``): each level's
    binary metrics as ``level<l>/*`` (the official ``<metric>_level<l>``), and the plain names
    those of the labels as given: the whole path's binary metrics (here the fine level: fine
    classes determine their paths) and the path's ASI (``ASI_multi``); no mean, no ``multi/*``."""
    rng = np.random.default_rng(5)
    labels = _paths(rng, 60)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    sets = (x[:25], labels[:25], x, labels) if separate_gallery else (x, labels, None, None)
    got = retrieval.evaluate_levels(*sets, levels=(0, 1, 2), ks=(1, 10), means=False)
    want = _official(*sets, (0, 1, 2), (10,))
    for ours, theirs in NAMES.items():
        for level in (0, 1, 2):
            assert got[f"level{level}/{ours}"] == pytest.approx(want[f"{theirs}_level{level}"], abs=2e-6)
        if ours != "asi":
            assert got[ours] == pytest.approx(want[f"{theirs}_level0"], abs=2e-6), ours
    assert got["asi"] == pytest.approx(want["ASI_multi"], abs=2e-6)
    assert abs(got["map"] - want["AP"]) > 1e-4  # not the mean over the levels
    assert {"hap", "ndcg"} <= got.keys() and not any(k.startswith("multi/") for k in got)
    assert got["num_queries"] == len(sets[0])
    with pytest.raises(TypeError, match="means must be True or False"):
        retrieval.evaluate_levels(*sets, levels=(0,), means="no")


def test_one_level_and_class_ids():
    """``[N]`` class ids are level 0: the plain names equal the level's values, and the binary
    ASI is ``(1/R) sum_{k<=R} P@k``."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(8), 4)
    x = rng.normal(size=(32, 5)).astype(np.float32)
    got = retrieval.evaluate_levels(x, y, levels=(0,), ks=(1, 2))
    want = _official(x, y[:, None], None, None, (0,), (2,))
    names = {"map": "AP", "map@r": "mAP@R", "recall@1": "P@1", "recall@2": "R@2", "asi": "ASI"}
    for ours, theirs in names.items():
        assert got[ours] == pytest.approx(want[theirs], abs=2e-6), ours
        assert got[f"level0/{ours}"] == got[ours]
    assert not any(key.startswith("multi/") for key in got)


@pytest.mark.parametrize("levels", [(3,), (), (0, 0), (-1,), (0.5,), "a"])
def test_bad_levels_name_the_argument(levels):
    labels = _paths(np.random.default_rng(0), 12)
    with pytest.raises(ValueError, match=r"levels must be distinct label columns 0\.\.2"):
        retrieval.evaluate_levels(np.eye(12, 4, dtype=np.float32), labels, levels=levels)
    if levels != ():  # the evaluator's default: no levels
        with pytest.raises(ValueError, match="levels must be"):
            retrieval.RetrievalEvaluator(np.eye(12, 4), labels, levels=levels)


def test_per_query_values_are_refused():
    with pytest.raises(TypeError, match="per level"):
        retrieval.evaluate_levels(np.eye(6, 3), np.arange(6) % 2, levels=(0,), return_per_query=True)


def test_evaluator_with_levels_reports_evaluate_levels():
    rng = np.random.default_rng(2)
    labels = _paths(rng, 24)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    got = retrieval.RetrievalEvaluator(x, labels, batch_size=7, levels=(1, 2), ks=(1,)).run(np.asarray)
    want = retrieval.evaluate_levels(x, labels, levels=(1, 2), ks=(1,))
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(want[k], abs=1e-7) for k in want)


def test_config_eval_levels_in_the_training_evaluation():
    """``config.eval_levels`` reaches the run's evaluator, and ``evaluation_keys`` names what it
    returns (so ``best_metric`` can be a per-level value)."""
    c = tiny_config(eval_levels=(0,))
    data = input_pipeline.load(c)
    s = state.create_train_state(c, state.build_model(c), data.train.images[:2])
    metrics = evaluators.evaluate_state(c, s, data)
    shown = {k for k in metrics if "num_" not in k}
    assert shown == evaluators.evaluation_keys(c, ())
    assert "level0/asi" in shown and metrics["map"] == metrics["level0/map"]
    c.eval_levels = (1,)
    with pytest.raises(ValueError, match=r"config\.eval_levels must be distinct label columns 0\.\.0"):
        evaluators.make_evaluator(c, data)


def test_evaluation_keys_with_levels_on_label_paths():
    c = tiny_config(eval_levels=(0, 2), eval_ks=(1,))
    binary = {"recall@1", "map@r", "r_precision", "map", "asi"}
    per_level = {f"level{lv}/{k}" for lv in (0, 2) for k in binary}
    multi = {"multi/hap", "multi/ndcg", "multi/asi"}
    assert evaluators.evaluation_keys(c, (3,)) == binary | per_level | multi
    c.eval_backend = "auto"  # resolves to exact for one-level paths: the same keys
    assert evaluators.evaluation_keys(c, (3,)) == binary | per_level | multi
    c.eval_levels = ()
    assert {"map", "hap", "ndcg", "asi"} <= evaluators.evaluation_keys(c, (3,))  # label paths: exact too
    assert "map" not in evaluators.evaluation_keys(c, ())  # class ids: auto may pick ScaNN
    c.eval_levels, c.eval_backend = (0,), "exact"
    rng = np.random.default_rng(0)
    one_column = retrieval.evaluate_levels(
        rng.normal(size=(12, 4)), rng.integers(0, 3, (12, 1)), levels=(0,), ks=(1,))
    keys = {k for k in one_column if "num_" not in k}
    assert evaluators.evaluation_keys(c, (1,)) == keys  # one-level paths: no multi/*
    assert not any(k.startswith("multi/") for k in keys)
    c.eval_levels, c.eval_level_means = (0, 2), False  # plain names of the paths as given, no multi/*
    assert evaluators.evaluation_keys(c, (3,)) == binary | {"hap", "ndcg"} | per_level
    c.eval_backend = "auto"  # class ids as given: auto may pick ScaNN there (no map), not for levels
    assert evaluators.evaluation_keys(c, ()) == {"recall@1", "map@r", "r_precision"} | per_level
    c.eval_backend, c.eval_level_means = "exact", True
    c.eval_backend = "scann"  # no full-gallery AP, no ASI
    assert evaluators.evaluation_keys(c, (3,)) == {"recall@1", "map@r", "r_precision"} | {
        f"level{lv}/{k}" for lv in (0, 2) for k in ("recall@1", "map@r", "r_precision")}


@pytest.mark.parametrize(
    ("levels", "protocol", "match"),
    [((0, 0), "retrieval", "distinct label columns"), ((-1,), "retrieval", "distinct label columns"),
     ((0,), "revisited", "applies to eval_protocol='retrieval'")],
)
def test_bad_eval_levels_config(levels, protocol, match):
    c = tiny_config(eval_levels=levels, eval_protocol=protocol)
    with pytest.raises(config_checks.ConfigError, match=match):
        config_checks.check_config(c)


def test_eval_level_means_without_levels_is_refused():
    """``eval_level_means=False`` without levels would be ignored."""
    c = tiny_config()
    c.eval_level_means = False
    with pytest.raises(config_checks.ConfigError, match=r"means=False .*eval_levels, which is empty"):
        config_checks.check_config(c)


def test_config_eval_level_means_reaches_the_evaluation():
    """``eval_level_means=False``: the run's evaluation returns ``evaluation_keys``' names, its
    plain values those of the labels as given (here class ids: level 0 itself)."""
    c = tiny_config(eval_levels=(0,))
    c.eval_level_means = False
    data = input_pipeline.load(c)
    s = state.create_train_state(c, state.build_model(c), data.train.images[:2])
    metrics = evaluators.evaluate_state(c, s, data)
    assert {k for k in metrics if "num_" not in k} == evaluators.evaluation_keys(c, ())
    assert "asi" not in metrics and metrics["map"] == metrics["level0/map"]


def test_a_record_without_eval_levels_resumes():
    """Runs recorded before ``eval_levels`` and ``eval_level_means`` existed read as
    ``eval_levels=()`` and ``eval_level_means=True``."""
    from rankax.train import workdir

    c = tiny_config()
    recorded = workdir.flat(c)
    del recorded["eval_levels"], recorded["eval_level_means"]
    assert workdir.differences(recorded, c) == {}
    c.eval_levels, c.eval_level_means = (0,), False
    assert workdir.differences(recorded, c) == {"eval_levels": ([], [0]), "eval_level_means": (True, False)}


@pytest.mark.parametrize("gallery_shape", [(40,), (40, 2), (40, 4)])
def test_gallery_labels_of_another_kind_are_refused(gallery_shape):
    """Each level compares a query's column with the gallery's: [N] or other-width gallery
    labels were compared with the wrong column (ScaNN: silently) or raised an IndexError."""
    rng = np.random.default_rng(4)
    q_labels = _paths(rng, 30)
    g_labels = rng.integers(0, 3, size=gallery_shape)
    x, g = rng.normal(size=(30, 4)).astype(np.float32), rng.normal(size=(40, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"gallery_labels must be of the kind of query_labels"):
        retrieval.evaluate_levels(x, q_labels, g, g_labels, levels=(0, 1))
    with pytest.raises(ValueError, match=r"gallery_labels must be of the kind of query_labels"):
        retrieval.RetrievalEvaluator(x, q_labels, gallery_inputs=g, gallery_labels=g_labels, levels=(0,))
