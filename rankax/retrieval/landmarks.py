"""The landmark-retrieval evaluation of the listwise-AP paper (Revaud et al., ICCV 2019).

The protocol of ``naver/deep-image-retrieval:dirtorch/test_dir.py`` (``eval_model``), run on
Oxford5k, Paris6k, ROxford5k and RParis6k in one evaluation:

1. **Images at their original resolution** (one image per network call; ``max_size``
   optionally caps the longer side). The **queries are cropped to their bounding box**
   (``bbx`` of the ground truth, ``(left, top, right, bottom)`` in pixels, rounded as PIL's
   ``Image.crop`` rounds them; ``dirtorch/datasets/generic.py``, ``ImageListROIs``).
2. **Multi-scale** (optional): the descriptors ``d_s`` of the image resized by each factor
   ``s`` of ``scales`` are combined as ``dirtorch/utils/common.py:pool``: ``"gem"``:
   ``sympow(mean_s sympow(d_s, p), 1 / p)`` with ``sympow(x, p) = sign(x) max(|x|, 1e-6)^p``
   (``p = 3``), or ``"mean"``; then L2-normalised.
3. **Learned PCA whitening** (``dirtorch/utils/common.py:transform``, ``whiten_features``):
   from descriptors ``X [N, D]`` of a training set (Landmarks-clean in the paper), mean
   ``mu``, principal directions ``V_k`` and variances ``lambda_k = s_k^2 / (N - 1)`` (scikit-
   learn's ``PCA(whiten=True)``: ``s_k`` the singular values of ``X - mu``); a descriptor
   becomes ``y_k = (x - mu) . V_k / (m * lambda_k^p)`` for the first ``num_components``
   components, then ``y / ||y||``. The official power is ``p = 0.25`` (``--whitenp``; 0.5 is
   plain whitening), multiplier ``m = 1``.
4. **Scores** ``q . x`` between whitened descriptors, and the trapezoidal AP of the
   Oxford/Paris protocol (:mod:`rankax.retrieval.revisited`) with junk images removed:
   Oxford5k/Paris6k count ``ok`` images (good + ok) as positives, ROxford5k/RParis6k report
   the Easy/Medium/Hard setups. Queries without positives are left out of a mean. Scores are
   float64 and ranked by a stable sort (dirtorch: float32, ``argsort`` reversed; only tied
   or nearly tied scores can order differently). This is the AP of dirtorch since commit
   50cbe41 (2019-08-27, ``compute_average_precision`` in ``dirtorch/utils/evaluation.py``);
   its first commit (1e7de62) used scikit-learn's step-wise ``average_precision_score``,
   which is never lower. The README's numbers were remeasured
   with the trapezoid (commit 3da005b, 2019-09-05, "update mAP numbers": Resnet101-AP-GeM
   Oxford5k 89.3 -> 89.1), so those are the numbers this protocol reproduces.

Reference: J. Revaud, J. Almazán, R. S. Rezende, C. R. de Souza, "Learning with Average
Precision: Training Image Retrieval with a Listwise Loss", ICCV 2019.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rankax._core.normalize import l2_normalize_host
from rankax.retrieval import revisited

BENCHMARKS = ("oxford5k", "paris6k", "roxford5k", "rparis6k")
# where each benchmark's files live, relative to the data root (naver keeps the revisited
# ground truth next to the classic one; revisitop gives each its own folder)
_FOLDERS = {
    "oxford5k": ("oxford5k",),
    "paris6k": ("paris6k",),
    "roxford5k": ("roxford5k", "oxford5k"),
    "rparis6k": ("rparis6k", "paris6k"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- whitening


@dataclasses.dataclass(frozen=True)
class Whitening:
    """A PCA learned on training descriptors: ``mean [D]``, ``components [K, D]`` (rows = unit
    principal directions, by decreasing variance), ``explained_variance [K]``."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray

    def save(self, path: str) -> None:
        """Writes the three arrays to an ``.npz`` file (learn once, evaluate many times)."""
        np.savez(path, mean=self.mean, components=self.components, explained_variance=self.explained_variance)

    @classmethod
    def load(cls, path: str) -> Whitening:
        """Reads a file written by :meth:`save`."""
        with np.load(os.path.expanduser(path)) as f:
            return cls(f["mean"], f["components"], f["explained_variance"])


def learn_whitening(features: np.ndarray, rel_tol: float = 1e-10) -> Whitening:
    """The PCA of ``features [N, D]`` (``N >= 2``), as scikit-learn's ``PCA(whiten=True).fit``.

    Components whose variance is below ``rel_tol`` times the largest (at most ``N - 1``
    components carry variance) are dropped, so that whitening never divides by zero.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {x.shape}")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / (len(x) - 1)
    keep = var > rel_tol * var.max() if var.max() > 0 else np.zeros(len(var), bool)
    if not keep.any():
        raise ValueError("features have no variance: every training descriptor is the same")
    return Whitening(mean, vt[keep], var[keep])


def whiten(
    x: np.ndarray,
    whitening: Whitening,
    power: float = 0.25,
    num_components: int | None = None,
    multiplier: float = 1.0,
) -> np.ndarray:
    """``y_k = (x - mu) . V_k / (multiplier * lambda_k ** power)`` for ``k < num_components``
    (all when ``None``), then L2-normalised: ``[N, D] -> [N, K]`` float32."""
    k = len(whitening.explained_variance) if num_components is None else int(num_components)
    if not 1 <= k <= len(whitening.explained_variance):
        raise ValueError(
            f"num_components must be in [1, {len(whitening.explained_variance)}] (the learned "
            f"components), got {num_components}"
        )
    x = np.asarray(x, np.float64)
    y = (x - whitening.mean) @ whitening.components[:k].T
    y /= multiplier * whitening.explained_variance[:k] ** power
    return l2_normalize_host(y).astype(np.float32)


# ---------------------------------------------------------------- multi-scale pooling


def pool_scales(descriptors: Sequence[np.ndarray], pooling: str = "gem", p: float = 3.0) -> np.ndarray:
    """Combines per-scale descriptors ``[S] x [N, D]`` into L2-normalised ``[N, D]``.

    ``"gem"``: ``sympow(mean_s sympow(d_s, p), 1 / p)``, ``sympow(x, p) = sign(x) max(|x|, 1e-6)^p``;
    ``"mean"``: the arithmetic mean. One scale is returned normalised as it is.
    """
    if pooling not in ("gem", "mean"):
        raise ValueError(f"pooling must be 'gem' or 'mean', got {pooling!r}")
    d = np.stack([np.asarray(x, np.float64) for x in descriptors])
    if len(d) == 1:
        return l2_normalize_host(d[0])
    if pooling == "mean":
        return l2_normalize_host(d.mean(axis=0))

    def sympow(x: np.ndarray, q: float) -> np.ndarray:
        return np.sign(x) * np.maximum(np.abs(x), 1e-6) ** q

    return l2_normalize_host(sympow(sympow(d, p).mean(axis=0), 1.0 / p))


# ---------------------------------------------------------------- data


@dataclasses.dataclass
class LandmarkBenchmark:
    """One Oxford/Paris benchmark.

    Attributes:
      name: one of ``BENCHMARKS`` (or any name for a custom set).
      images: database image paths, in the ground truth's ``imlist`` order.
      queries: query image paths (``qimlist``).
      query_boxes: ``[Q, 4]`` float ``(left, top, right, bottom)`` boxes in pixels.
      gnd: per query, ``{"ok", "junk"}`` (classic) or ``{"easy", "hard", "junk"}`` (revisited)
        database ids.
    """

    name: str
    images: list[str]
    queries: list[str]
    query_boxes: np.ndarray
    gnd: list[dict]

    @property
    def revisited(self) -> bool:
        return "ok" not in self.gnd[0]


def _image_path(folder: str, name: str) -> str:
    # names in the ground truth have no extension; naver then appends ".jpg"
    return os.path.join(folder, "jpg", name if os.path.splitext(name)[1] else name + ".jpg")


def load_benchmark(root: str, name: str) -> LandmarkBenchmark:
    """Reads ``gnd_<name>.pkl`` (``{"imlist", "qimlist", "gnd": [{"bbx", ...}]}``) under
    ``root/<folder>/`` (folder ``name``, or ``oxford5k``/``paris6k`` for the revisited sets,
    naver's layout); images are ``root/<folder>/jpg/<name>.jpg``.

    Raises:
      FileNotFoundError: naming the paths tried.
      ValueError: a malformed file, before any image is read
        (:func:`rankax.retrieval.revisited.check_ground_truth`: every entry classic or every
        one revisited, integer ids of ``imlist`` images, a box per query; one entry per
        ``qimlist`` image).
    """
    folders = _FOLDERS.get(name, (name,))
    tried = [os.path.join(os.path.expanduser(root), f, f"gnd_{name}.pkl") for f in folders]
    path = next((p for p in tried if os.path.exists(p)), None)
    if path is None:
        raise FileNotFoundError(
            f"no ground truth for {name!r}: tried {', '.join(tried)}; the gnd_*.pkl files and images "
            "come with the Oxford/Paris and Revisited Oxford/Paris releases"
        )
    with open(path, "rb") as f:
        data = pickle.load(f)  # noqa: S301 - the benchmark's own ground-truth format
    missing = [k for k in ("gnd", "imlist", "qimlist") if not isinstance(data, dict) or k not in data]
    if missing:
        raise revisited.GroundTruthError(f"{path}: a ground-truth file holds 'gnd', 'imlist' and "
                                         f"'qimlist'; {missing} missing")
    folder = os.path.dirname(path)
    gnd = [dict(g) if isinstance(g, Mapping) else g for g in data["gnd"]]
    revisited.check_ground_truth(gnd, kind=None, num_database=len(data["imlist"]),
                                 num_queries=len(data["qimlist"]), boxes=True, source=path)
    return LandmarkBenchmark(
        name=name,
        images=[_image_path(folder, n) for n in data["imlist"]],
        queries=[_image_path(folder, n) for n in data["qimlist"]],
        query_boxes=np.array([g["bbx"] for g in gnd], np.float64).reshape(-1, 4),
        gnd=gnd,
    )


def load_image(
    path: str,
    box: Sequence[float] | None = None,
    *,
    scale: float = 1.0,
    max_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """``[H, W, 3]`` float32 image, normalised by ``mean``/``std``, at its own resolution.

    ``box`` ``(left, top, right, bottom)`` crops first (rounded to whole pixels as PIL does);
    then the image is resized by ``cap * scale`` (bilinear; sides rounded half up as
    ``dirtorch/utils/transforms.py`` ``Scale`` rounds them, at least 1 pixel),
    where ``cap = min(1, max_size / longer side of the whole image)`` (1 without ``max_size``):
    the cap is that of the whole image, so a query crop keeps the scale of its database image
    (cirtorch's and SupRank's ``imresize(crop, imsize * max(crop) / max(image))``).
    """
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
    full = max(img.size)
    if box is not None:
        img = img.crop(tuple(float(v) for v in box))
    w, h = img.size
    cap = 1.0 if max_size is None or full <= max_size else max_size / full
    factor = cap * float(scale)  # each scale of the capped image, so scales stay distinct
    if factor != 1.0:
        img = img.resize((max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))), Image.BILINEAR)
    pixels = np.asarray(img, np.float32) / 255.0
    return (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


# ---------------------------------------------------------------- evaluation


EmbedFn = Callable[[np.ndarray], Any]


def classic_map(scores: np.ndarray, gnd: Sequence[Mapping]) -> float:
    """Oxford5k/Paris6k mAP of ``scores [Q, N]``: positives ``ok``, ``junk`` removed,
    trapezoidal AP; queries without ``ok`` images are left out (as revisitop's ``compute_map``;
    dirtorch's classic evaluation would score them 0 and keep them, naver/deep-image-retrieval
    ``dirtorch/datasets/generic.py`` ``eval_query_AP``; every Oxford5k/Paris6k query has ``ok``
    images)."""
    ranks = np.argsort(-np.asarray(scores), axis=1, kind="stable").T
    ok = [np.asarray(g.get("ok", ()), np.int64) for g in gnd]
    junk = [np.asarray(g.get("junk", ()), np.int64) for g in gnd]
    return revisited.protocol_map(ranks, ok, junk)[0]


def score_benchmark(queries: np.ndarray, database: np.ndarray, bench: LandmarkBenchmark) -> dict[str, float]:
    """Metrics of one benchmark from descriptors: ``{"<name>/map"}`` (classic) or
    ``{"<name>/<easy|medium|hard>/map", ".../mp@k", ...}`` (revisited)."""
    scores = np.asarray(queries, np.float64) @ np.asarray(database, np.float64).T
    if not bench.revisited:
        return {f"{bench.name}/map": classic_map(scores, bench.gnd)}
    ranks = np.argsort(-scores, axis=1, kind="stable").T
    return {f"{bench.name}/{k}": float(v) for k, v in revisited.revisited_map(ranks, bench.gnd).items()}


class LandmarkEvaluator:
    """Oxford5k, Paris6k, ROxford5k and RParis6k (any subset) in one evaluation (module doc).

    Args:
      benchmarks: :class:`LandmarkBenchmark` s (:func:`load_benchmark`).
      whitening_images: image paths of the training set the whitening is learned on (``None``:
        no whitening, or pass a learned ``whitening``).
      whitening: a :class:`Whitening` to use as it is (instead of learning one).
      scales: resize factors of the multi-scale descriptor (``(1.0,)``: single scale).
      scale_pooling: ``"gem"`` (``p = scale_gem_p``) or ``"mean"``.
      whiten_power, whiten_components, whiten_multiplier: of :func:`whiten`.
      crop_queries: crop the queries to their box (the protocol; ``False`` for full images).
      max_size: cap on the longer image side, ``None`` for the original resolution.
      prefix: key prefix of the results.

    ``run(embed_fn)``: ``embed_fn`` maps one image ``[1, H, W, 3]`` (sizes vary) to ``[1, D]``;
    images shared by benchmarks (Oxford5k and ROxford5k) are embedded once.
    """

    def __init__(
        self,
        benchmarks: Sequence[LandmarkBenchmark],
        *,
        whitening_images: Sequence[str] | None = None,
        whitening: Whitening | None = None,
        scales: Sequence[float] = (1.0,),
        scale_pooling: str = "gem",
        scale_gem_p: float = 3.0,
        whiten_power: float = 0.25,
        whiten_components: int | None = None,
        whiten_multiplier: float = 1.0,
        crop_queries: bool = True,
        max_size: int | None = None,
        prefix: str = "",
    ):
        if not benchmarks:
            raise ValueError("benchmarks is empty: load them with load_benchmark(root, name)")
        if whitening is not None and whitening_images is not None:
            raise ValueError("give whitening_images (learn a whitening) or whitening, not both")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive resize factors, got {tuple(scales)}")
        if scale_pooling not in ("gem", "mean"):
            raise ValueError(f"scale_pooling must be 'gem' or 'mean', got {scale_pooling!r}")
        self.benchmarks = list(benchmarks)
        self.whitening_images = None if whitening_images is None else list(whitening_images)
        self.whitening = whitening
        self.scales = tuple(float(s) for s in scales)
        self.scale_pooling, self.scale_gem_p = scale_pooling, float(scale_gem_p)
        self.whiten_power, self.whiten_components = float(whiten_power), whiten_components
        self.whiten_multiplier = float(whiten_multiplier)
        self.crop_queries, self.max_size, self.prefix = bool(crop_queries), max_size, prefix

    def describe(self, embed_fn: EmbedFn, path: str, box: Sequence[float] | None = None) -> np.ndarray:
        """``[D]`` multi-scale descriptor of one image (before whitening)."""
        per_scale = []
        for s in self.scales:
            image = load_image(path, box, scale=s, max_size=self.max_size)
            per_scale.append(np.asarray(embed_fn(image[None]), np.float64).reshape(1, -1))
        return pool_scales(per_scale, self.scale_pooling, self.scale_gem_p)[0]

    def run(self, embed_fn: EmbedFn) -> dict[str, float]:
        """Every benchmark's metrics (see :func:`score_benchmark`), keys prefixed by ``prefix``."""
        cache: dict[tuple, np.ndarray] = {}

        def describe(path: str, box: Sequence[float] | None = None) -> np.ndarray:
            key = (path, None if box is None else tuple(float(v) for v in box))
            if key not in cache:
                cache[key] = self.describe(embed_fn, path, box)
            return cache[key]

        whitening = self.whitening
        if self.whitening_images is not None:
            whitening = learn_whitening(np.stack([describe(p) for p in self.whitening_images]))
        out: dict[str, float] = {}
        for bench in self.benchmarks:
            database = np.stack([describe(p) for p in bench.images])
            boxes = bench.query_boxes if self.crop_queries else [None] * len(bench.queries)
            queries = np.stack([describe(p, b) for p, b in zip(bench.queries, boxes, strict=True)])
            if whitening is not None:
                kw = dict(
                    power=self.whiten_power,
                    num_components=self.whiten_components,
                    multiplier=self.whiten_multiplier,
                )
                database, queries = whiten(database, whitening, **kw), whiten(queries, whitening, **kw)
            out.update(score_benchmark(queries, database, bench))
        return {f"{self.prefix}{k}": v for k, v in out.items()}


def evaluator_from_config(config: Mapping[str, Any]) -> LandmarkEvaluator:
    """A :class:`LandmarkEvaluator` from a config mapping (e.g. ``config.landmarks``).

    Keys: ``root`` (required: the data root), ``benchmarks`` (default all of ``BENCHMARKS``),
    ``whitening_list`` (a text file of training image paths, one per line, relative to its
    own folder, to learn the whitening on) or ``whitening_file`` (a :meth:`Whitening.save`
    file; neither: no whitening), ``scales`` (``(1.0,)``), ``scale_pooling``
    (``"gem"``), ``scale_gem_p`` (3), ``whiten_power`` (0.25), ``whiten_components``
    (``None``), ``whiten_multiplier`` (1), ``crop_queries`` (True), ``max_size`` (``None``).
    """
    get = config.get
    if not get("root"):
        raise ValueError("landmarks config needs 'root': the folder holding oxford5k/ and paris6k/")
    if get("whitening_list") and get("whitening_file"):
        raise ValueError(
            "landmarks config: give whitening_list (learn a whitening) or whitening_file, not both"
        )
    names = tuple(get("benchmarks") or BENCHMARKS)
    images = None
    if get("whitening_list"):
        list_path = os.path.expanduser(get("whitening_list"))
        with open(list_path) as f:
            lines = [line.strip() for line in f if line.strip()]
        images = [os.path.join(os.path.dirname(list_path), line) for line in lines]
    whitening = Whitening.load(get("whitening_file")) if get("whitening_file") else None
    return LandmarkEvaluator(
        [load_benchmark(get("root"), n) for n in names],
        whitening_images=images,
        whitening=whitening,
        scales=tuple(get("scales") or (1.0,)),
        scale_pooling=get("scale_pooling") or "gem",
        scale_gem_p=get("scale_gem_p") or 3.0,
        whiten_power=0.25 if get("whiten_power") is None else get("whiten_power"),
        whiten_components=get("whiten_components"),
        whiten_multiplier=get("whiten_multiplier") or 1.0,
        crop_queries=True if get("crop_queries") is None else bool(get("crop_queries")),
        max_size=get("max_size"),
    )
