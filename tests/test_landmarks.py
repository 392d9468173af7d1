"""The landmark evaluation protocol (naver/deep-image-retrieval): learned PCA whitening,
query bounding-box crops, multi-scale pooling, and Oxford5k / Paris6k / ROxford5k / RParis6k
reported in one run, on generated images."""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from rankax.retrieval import landmarks

MEAN = np.array(landmarks.IMAGENET_MEAN)
STD = np.array(landmarks.IMAGENET_STD)


# ---------------------------------------------------------------- whitening


def test_whitening_matches_eigendecomposition_formula():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)
    x = rng.normal(size=(5, 6))
    w = landmarks.learn_whitening(train)
    for power, k in [(0.25, None), (0.5, 4), (0.25, 2)]:
        out = landmarks.whiten(x, w, power=power, num_components=k)
        # reference: eigenvectors of the sample covariance (N - 1), largest first
        lam, vec = np.linalg.eigh(np.cov(train, rowvar=False))
        lam, vec = lam[::-1], vec[:, ::-1]
        kk = 6 if k is None else k
        ref = (x - train.mean(0)) @ vec[:, :kk] / lam[:kk] ** power
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        signs = np.sign(np.sum(w.components[:kk] * vec[:, :kk].T, axis=1))  # eigenvector signs
        np.testing.assert_allclose(out, ref * signs, atol=1e-5)


def test_whitening_matches_sklearn_pca_with_naver_transform():
    decomposition = pytest.importorskip("sklearn.decomposition")
    rng = np.random.default_rng(1)
    train = rng.normal(size=(80, 5)) * np.array([3.0, 2.0, 1.0, 0.5, 0.1])
    x = rng.normal(size=(7, 5))
    pca = decomposition.PCA(whiten=True).fit(train)
    # naver dirtorch/utils/common.py transform + whiten_features, written out
    ref = (x - pca.mean_) @ pca.components_.T / np.power(pca.explained_variance_, 0.25)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    out = landmarks.whiten(x, landmarks.learn_whitening(train), power=0.25)
    signs = np.sign(np.sum(pca.components_ * landmarks.learn_whitening(train).components, axis=1))
    np.testing.assert_allclose(out * signs, ref, atol=1e-5)


def test_whitening_drops_null_directions_and_validates():
    train = np.random.default_rng(2).normal(size=(3, 8))  # rank 2 after centring
    w = landmarks.learn_whitening(train)
    assert w.components.shape == (2, 8)
    assert np.all(np.isfinite(landmarks.whiten(np.ones((1, 8)), w)))
    with pytest.raises(ValueError, match="num_components"):
        landmarks.whiten(np.ones((1, 8)), w, num_components=3)
    with pytest.raises(ValueError, match="no variance"):
        landmarks.learn_whitening(np.ones((4, 3)))


def test_whitening_save_load_round_trip(tmp_path):
    w = landmarks.learn_whitening(np.random.default_rng(5).normal(size=(20, 4)))
    w.save(str(tmp_path / "w.npz"))
    back = landmarks.Whitening.load(str(tmp_path / "w.npz"))
    x = np.random.default_rng(6).normal(size=(3, 4))
    np.testing.assert_array_equal(landmarks.whiten(x, back), landmarks.whiten(x, w))


def test_pool_scales_gem_formula():
    rng = np.random.default_rng(3)
    d = [rng.normal(size=(4, 6)) for _ in range(3)]
    p = 3.0
    ref = np.cbrt(np.mean([np.sign(x) * np.abs(x) ** p for x in d], axis=0))  # signed cube root
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(landmarks.pool_scales(d, "gem", p), ref, atol=1e-9)
    mean = np.mean(d, axis=0)
    np.testing.assert_allclose(
        landmarks.pool_scales(d, "mean"), mean / np.linalg.norm(mean, axis=1, keepdims=True)
    )


# ---------------------------------------------------------------- images


def test_load_image_crops_box_like_pil_and_normalises(tmp_path):
    h, w = 30, 40
    yy, xx = np.mgrid[:h, :w]
    pixels = np.stack([xx, yy, np.full_like(xx, 200)], -1).astype(np.uint8)
    path = str(tmp_path / "a.png")
    Image.fromarray(pixels).save(path)
    raw = landmarks.load_image(path, (3.4, 5.6, 20.2, 17.4), mean=(0, 0, 0), std=(1, 1, 1))
    # PIL rounds the box: columns 3..19, rows 6..16
    assert raw.shape == (11, 17, 3)
    np.testing.assert_allclose(raw[..., 0] * 255, np.tile(np.arange(3, 20), (11, 1)), atol=1e-3)
    np.testing.assert_allclose(raw[..., 1] * 255, np.tile(np.arange(6, 17)[:, None], (1, 17)), atol=1e-3)
    full = landmarks.load_image(path)
    assert full.shape == (h, w, 3)  # original resolution
    np.testing.assert_allclose(full[0, 0], (pixels[0, 0] / 255 - MEAN) / STD, atol=1e-6)
    assert landmarks.load_image(path, scale=0.5).shape == (15, 20, 3)
    assert landmarks.load_image(path, max_size=20).shape == (15, 20, 3)
    # The cap applies before the scale: scales of a capped image stay distinct (40 -> 20 -> 14).
    assert landmarks.load_image(path, scale=0.7, max_size=20).shape == (11, 14, 3)  # 10.5 up
    assert landmarks.load_image(path, scale=2.0, max_size=20).shape == (30, 40, 3)
    # A crop takes the whole image's cap (40 -> 20: 0.5), as its database image does.
    assert landmarks.load_image(path, (0, 0, 20, 10), max_size=20).shape == (5, 10, 3)
    assert landmarks.load_image(path, (0, 0, 20, 10), max_size=40).shape == (10, 20, 3)
    # Sides round half up, as dirtorch's Scale (int(0.5 + s * w)): 201 x 131 at 0.5 -> 101 x 66.
    odd = str(tmp_path / "odd.png")
    Image.fromarray(np.zeros((131, 201, 3), np.uint8)).save(odd)
    assert landmarks.load_image(odd, scale=0.5).shape == (66, 101, 3)
    assert landmarks.load_image(odd, scale=2.5).shape == (328, 503, 3)


# ---------------------------------------------------------------- four sets in one run


def _write(path, color, box=None, outside=(0, 0, 0), size=(24, 32)):
    img = np.zeros((*size, 3), np.uint8) + np.array(outside, np.uint8)
    if box is None:
        img[:] = color
    else:
        left, top, right, bottom = box
        img[top:bottom, left:right] = color
    Image.fromarray(img).save(path)


def _ref_ap(scores, ok, junk):
    order = [i for i in np.argsort(-scores, kind="stable") if i not in set(junk)]
    ranks = [r for r, i in enumerate(order) if i in set(ok)]
    total = 0.0
    for j, r in enumerate(ranks):
        prec0 = 1.0 if r == 0 else j / r
        total += (prec0 + (j + 1) / (r + 1)) / 2
    return total / len(ok)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """oxford5k/ and paris6k/ folders: 12 constant-colour database images, 3 queries whose box
    holds a colour and whose outside is another, classic and revisited ground truths."""
    root = tmp_path_factory.mktemp("landmarks")
    rng = np.random.default_rng(4)
    spec = {}
    for folder, revisited in (("oxford5k", "roxford5k"), ("paris6k", "rparis6k")):
        os.makedirs(root / folder / "jpg")
        db_colors = rng.integers(0, 256, (12, 3))
        imlist = [f"db{i}.png" for i in range(12)]
        for name, color in zip(imlist, db_colors, strict=True):
            _write(root / folder / "jpg" / name, color)
        q_colors = rng.integers(0, 256, (3, 3))
        boxes = [(4, 3, 20, 15), (10, 6, 30, 22), (0, 0, 16, 12)]
        qimlist = [f"q{i}.png" for i in range(3)]
        for name, color, box in zip(qimlist, q_colors, boxes, strict=True):
            _write(root / folder / "jpg" / name, color, box, outside=rng.integers(0, 256, 3))
        classic, revisit = [], []
        for q in range(3):
            perm = rng.permutation(12)
            classic.append({"bbx": list(boxes[q]), "ok": list(perm[:4]), "junk": list(perm[4:6])})
            revisit.append(
                {
                    "bbx": list(boxes[q]),
                    "easy": list(perm[:2]),
                    "hard": list(perm[2:5]),
                    "junk": [int(perm[5])],
                }
            )
        revisit[2]["hard"] = []  # a query without hard positives: left out of the Hard mean
        for name, gnd in ((folder, classic), (revisited, revisit)):
            with open(root / folder / f"gnd_{name}.pkl", "wb") as f:
                pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
        spec[folder] = (db_colors, q_colors, classic)
        spec[revisited] = (db_colors, q_colors, revisit)
    train = root / "train"
    os.makedirs(train)
    for i, color in enumerate(rng.integers(0, 256, (10, 3))):
        _write(train / f"t{i}.png", color)
    with open(train / "list.txt", "w") as f:
        f.write("\n".join(f"t{i}.png" for i in range(10)))
    return root, spec


def _embed(images):
    """A stand-in network: the mean normalised colour plus a constant, as [1, 4]."""
    m = images.reshape(images.shape[0], -1, 3).mean(axis=1)
    return np.concatenate([m, np.ones((len(m), 1))], axis=1)


def _desc(colors):
    x = np.concatenate([(np.asarray(colors) / 255 - MEAN) / STD, np.ones((len(colors), 1))], axis=1)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_four_benchmarks_in_one_evaluation(synthetic_root):
    root, spec = synthetic_root
    config = {"root": str(root), "whitening_list": str(root / "train" / "list.txt")}
    ev = landmarks.evaluator_from_config(config)
    result = ev.run(_embed)
    # independent reference: descriptors from the colours, sklearn-free PCA, naver's formula
    train_colors = [np.asarray(Image.open(root / "train" / f"t{i}.png"))[0, 0] for i in range(10)]
    train = _desc(train_colors)
    lam, vec = np.linalg.eigh(np.cov(train, rowvar=False))
    keep = lam > 1e-10 * lam.max()
    lam, vec = lam[keep], vec[:, keep]

    def white(x):
        y = (x - train.mean(0)) @ vec / lam**0.25
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    for name in landmarks.BENCHMARKS:
        db_colors, q_colors, gnd = spec[name]
        scores = white(_desc(q_colors)) @ white(_desc(db_colors)).T
        if name in ("oxford5k", "paris6k"):
            expect = np.mean([_ref_ap(scores[q], g["ok"], g["junk"]) for q, g in enumerate(gnd)])
            assert result[f"{name}/map"] == pytest.approx(expect, abs=1e-6)
            continue
        setups = {
            "easy": (lambda g: g["easy"], lambda g: g["junk"] + g["hard"]),
            "medium": (lambda g: g["easy"] + g["hard"], lambda g: g["junk"]),
            "hard": (lambda g: g["hard"], lambda g: g["junk"] + g["easy"]),
        }
        for setup, (pos, junk) in setups.items():
            aps = [_ref_ap(scores[q], pos(g), junk(g)) for q, g in enumerate(gnd) if pos(g)]
            assert result[f"{name}/{setup}/map"] == pytest.approx(np.mean(aps), abs=1e-6)
        assert result[f"{name}/hard/num_empty"] == 1
    assert {"oxford5k/map", "paris6k/map", "roxford5k/medium/map", "rparis6k/hard/map"} <= set(result)


def test_query_crop_and_multiscale_options(synthetic_root):
    root, spec = synthetic_root
    bench = landmarks.load_benchmark(str(root), "oxford5k")
    assert not bench.revisited and bench.query_boxes.shape == (3, 4)
    assert landmarks.load_benchmark(str(root), "roxford5k").revisited
    ev = landmarks.LandmarkEvaluator([bench])
    cropped = ev.describe(_embed, bench.queries[0], bench.query_boxes[0])
    np.testing.assert_allclose(cropped, _desc(spec["oxford5k"][1][:1])[0], atol=1e-5)  # box colour only
    full = ev.describe(_embed, bench.queries[0])
    assert np.abs(full - cropped).max() > 1e-2
    # constant images: every scale gives the same descriptor, so any pooling returns it
    multi = landmarks.LandmarkEvaluator([bench], scales=(0.5, 1.0, 1.5))
    np.testing.assert_allclose(
        multi.describe(_embed, bench.images[0]), ev.describe(_embed, bench.images[0]), atol=1e-5
    )
    seen = []
    multi.describe(lambda x: seen.append(x.shape) or _embed(x), bench.images[0])
    assert seen == [(1, 12, 16, 3), (1, 24, 32, 3), (1, 36, 48, 3)]
    with pytest.raises(FileNotFoundError, match="gnd_rparis6k"):
        landmarks.load_benchmark(str(root / "nowhere"), "rparis6k")
    with pytest.raises(ValueError, match="root"):
        landmarks.evaluator_from_config({})
    with pytest.raises(ValueError, match="not both"):
        landmarks.evaluator_from_config(
            {"root": str(root), "whitening_list": str(root / "train" / "list.txt"), "whitening_file": "w.npz"}
        )


def _gnd_file(folder, name, gnd, imlist=12, qimlist=None):
    os.makedirs(folder, exist_ok=True)
    data = {"imlist": [f"db{i}" for i in range(imlist)],
            "qimlist": [f"q{i}" for i in range(len(gnd) if qimlist is None else qimlist)], "gnd": gnd}
    with open(os.path.join(folder, f"gnd_{name}.pkl"), "wb") as f:
        pickle.dump(data, f)
    return os.path.join(folder, f"gnd_{name}.pkl")


@pytest.mark.parametrize("gnd, qimlist, match", [
    ([{"bbx": [0, 0, 4, 4], "ok": [1]}] * 2, 3, r"3 query images \(qimlist\) but 2 ground-truth entries"),
    ([], 0, r"non-empty list of per-query dicts, got an empty list"),
    ([{"bbx": [0, 0, 4, 4, 1, 2], "ok": [1]}], None, r"\[0\]\['bbx'\] must be \(left, top, right, bottom\)"),
    ([{"bbx": [5, 0, 4, 4], "ok": [1]}], None, r"left < right"),
    ([{"ok": [1]}], None, r"\[0\]\['bbx'\] must be"),
    ([{"bbx": [0, 0, 4, 4], "ok": [1], "junk": [-2]}], None, r"\[0\]\['junk'\] has database id -2"),
    ([{"bbx": [0, 0, 4, 4], "ok": [12]}], None, r"\[0\]\['ok'\] has database id 12: .* < 12"),
    ([{"bbx": [0, 0, 4, 4], "ok": [1.7]}], None, r"\[0\]\['ok'\] must hold integer database ids"),
    ([{"bbx": [0, 0, 4, 4], "ok": [True, False]}], None, r"\[0\]\['ok'\] must hold integer database ids"),
    ([{"bbx": [0, 0, 4, 4], "good": [1], "junk": [2]}], None, r"\[0\] has no positives list .*\['good'\]"),
    ([{"bbx": [0, 0, 4, 4], "ok": [1]}, {"bbx": [0, 0, 4, 4], "easy": [1], "hard": []}], None,
     r"\[1\] is a revisited entry but the ground truth is classic"),
    ([{"bbx": [0, 0, 4, 4], "Easy": [1], "hard": [2]}], None, r"has key 'Easy'"),
])
def test_a_malformed_ground_truth_is_refused_before_any_image(tmp_path, gnd, qimlist, match):
    """Each of these was accepted and failed only after every image was embedded (a zip error,
    an IndexError, PIL's error on a regrouped box), or scored silently: ids beyond ``imlist``
    never retrieved, negative or fractional ids dropped or truncated, the first entries of a
    longer ground truth scored, a mixed file's other entries empty."""
    path = _gnd_file(str(tmp_path / "oxford5k"), "oxford5k", gnd, qimlist=qimlist)
    with pytest.raises(ValueError, match=match) as err:
        landmarks.load_benchmark(str(tmp_path), "oxford5k")
    assert path in str(err.value)


def test_a_ground_truth_file_without_its_lists_names_them(tmp_path):
    os.makedirs(tmp_path / "paris6k")
    with open(tmp_path / "paris6k" / "gnd_paris6k.pkl", "wb") as f:
        pickle.dump({"gnd": [{"bbx": [0, 0, 1, 1], "ok": [0]}]}, f)
    with pytest.raises(ValueError, match=r"gnd_paris6k\.pkl: .*\['imlist', 'qimlist'\] missing"):
        landmarks.load_benchmark(str(tmp_path), "paris6k")


def test_revisited_ground_truth_files_are_checked_as_they_load(tmp_path):
    """``load_gnd`` (eval_protocol="revisited"): the same checks; boxes for all queries or none
    (some boxes made the evaluator skip cropping every query without a word)."""
    from rankax.retrieval import load_gnd

    box = [0, 0, 4, 4]
    path = _gnd_file(str(tmp_path), "a", [{"bbx": box, "easy": [1], "hard": [12], "junk": []}])
    with pytest.raises(ValueError, match=r"\[0\]\['hard'\] has database id 12"):
        load_gnd(path)
    path = _gnd_file(str(tmp_path), "b", [{"bbx": box, "easy": [1]}, {"easy": [2]}])
    with pytest.raises(ValueError, match=r"\[1\]\['bbx'\] must be"):
        load_gnd(path)
    path = _gnd_file(str(tmp_path), "c", [{"bbx": box, "ok": [1]}])
    with pytest.raises(ValueError, match=r"\[0\] is a classic entry but the ground truth is revisited"):
        load_gnd(path)
    path = _gnd_file(str(tmp_path), "g", [{"bbx": box, "easy": [1]}], qimlist=3)
    with pytest.raises(ValueError, match=r"3 query images \(qimlist\) but 1 ground-truth entries"):
        load_gnd(path)
    with pytest.raises(ValueError, match=r"no 'gnd' key"):
        with open(tmp_path / "d.pkl", "wb") as f:
            pickle.dump({"imlist": []}, f)
        load_gnd(str(tmp_path / "d.pkl"))
    good = [{"easy": [1], "hard": [2, 3], "junk": [0]}, {"easy": [], "hard": [4]}]
    assert load_gnd(_gnd_file(str(tmp_path), "e", good)) == good  # no boxes at all: accepted
    with pytest.raises(ValueError, match=r"\[1\] has no positives list .*\['eazy'\]"):
        load_gnd(_gnd_file(str(tmp_path), "f", [{"easy": [1]}, {"eazy": [2]}]))


def test_ids_stored_as_whole_floats_or_other_shapes_read_as_before():
    """Whole-number float ids and ``[1, n]`` arrays were read as integers before the checks;
    they still are (the same mAP as plain lists), while fractional ids and booleans are refused."""
    from rankax.retrieval import revisited

    rng = np.random.default_rng(3)
    ranks = np.stack([rng.permutation(10) for _ in range(2)], axis=1)
    plain = [{"easy": [1, 2], "hard": [3], "junk": [4]}, {"easy": [5], "hard": [6, 7], "junk": []}]
    stored = [{"easy": np.array([[1.0, 2.0]]), "hard": np.array([3.0]), "junk": np.array([[4]])},
              {"easy": np.array([5.0]), "hard": np.array([[6], [7]]), "junk": np.zeros(0)}]
    assert revisited.revisited_map(ranks, stored) == revisited.revisited_map(ranks, plain)


def _official_compute_map(ranks, gnd, kappas):
    """revisitop's ``compute_map`` (python/compute.py), written out from its published formula:
    per query, positions of the positives among the ranks after removing junk, trapezoidal AP
    over ``len(ok)``, and ``P@k`` with ``k`` clipped to the last positive's 1-based position;
    queries without positives are NaN and left out of both means."""
    aps, prs = [], []
    for i, g in enumerate(gnd):
        ok, junk = np.asarray(g["ok"]), np.asarray(g["junk"])
        if len(ok) == 0:
            continue
        kept = [x for x in ranks[:, i] if x not in set(junk.tolist())]
        pos = np.array([r for r, x in enumerate(kept) if x in set(ok.tolist())])
        ap = 0.0
        for j, r in enumerate(pos):
            prec0 = 1.0 if r == 0 else j / r
            ap += (prec0 + (j + 1) / (r + 1)) / 2 / len(ok)
        aps.append(ap)
        pos1 = pos + 1
        prs.append([np.sum(pos1 <= min(pos1.max(), k)) / min(pos1.max(), k) for k in kappas])
    return np.mean(aps), np.mean(prs, axis=0)


def test_mp_at_k_and_map_match_the_official_formula_on_random_ground_truths():
    """mP@k was checked only on hand-worked cases: here against the official formula, with junk
    before and among positives, k beyond the number of positives, and queries without one."""
    from rankax.retrieval import revisited

    rng = np.random.default_rng(11)
    kappas = (1, 5, 10)
    for trial in range(40):
        n, q = int(rng.integers(8, 40)), int(rng.integers(1, 6))
        gnd = []
        for _ in range(q):
            perm = rng.permutation(n)
            a, b, c = sorted(rng.integers(0, min(n, 12), 3))
            gnd.append({"easy": perm[:a].tolist(), "hard": perm[a:b].tolist(), "junk": perm[b:c].tolist()})
        ranks = np.stack([rng.permutation(n) for _ in range(q)], axis=1)
        got = revisited.revisited_map(ranks, gnd, kappas)
        for setup, (ok_keys, junk_keys) in revisited.SETUPS.items():
            official = [{"ok": sum((g[k] for k in ok_keys), []), "junk": sum((g[k] for k in junk_keys), [])}
                        for g in gnd]
            if not any(len(g["ok"]) for g in official):
                assert np.isnan(got[f"{setup}/map"]) and got[f"{setup}/num_empty"] == q
                continue
            want_map, want_mp = _official_compute_map(ranks, official, kappas)
            assert got[f"{setup}/map"] == pytest.approx(want_map, abs=1e-12), trial
            for k, v in zip(kappas, want_mp, strict=True):
                assert got[f"{setup}/mp@{k}"] == pytest.approx(v, abs=1e-12), (trial, k)
