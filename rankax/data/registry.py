"""``load_dataset(config.dataset)``: one entry point for every dataset of the experiments.

``config`` is an ``ml_collections.ConfigDict`` or a mapping with a ``name`` and the keys of
that dataset (below, with their defaults). An unknown name raises ``ValueError`` listing the
known ones; a key the dataset does not take raises ``ValueError`` naming the key, and so does
a missing required key.

Image keys shared by sop, cub, cars, inat, folder, dyml and hgldv2 (see :class:`ImageTransform`):
``image_size`` (224), ``resize_size`` (256), ``test_resize_mode`` ("shorter"; "square" for
sop), ``train_resize_size`` (None; 256 for sop), ``crop_scale`` ((0.16, 1.0)), ``crop_ratio``
((0.75, 1.33)), ``flip`` (True), ``draft_train`` (True: JPEG draft decoding of training
crops) and ``draft_test`` (False), ``num_threads`` (4, decoding threads per process).

* ``digits``: ``protocol`` ("stratified" | "open_set"), ``split_seed`` (0), ``max_shift``
  (0; used by the on-device augmentation of the input pipeline, not here).
* ``sop``, ``cub``, ``cars``: ``data_dir`` (None: ``~/tensorflow_datasets``), ``pil_decode`` (True).
* ``inat``: ``taxonomy_file`` and ``split_dir`` (required), ``hierarchy`` ("full" | "base"),
  ``data_dir``, ``pil_decode``.
* ``folder``: ``root`` (None), ``csv_file`` (None), ``train_csv``/``test_csv``/``query_csv``/
  ``gallery_csv`` (None), ``label_columns`` (None: all but path/split; one name or a list
  of names), ``path_column``
  ("path"), ``split_column`` ("split"), ``dataset_name`` ("folder").
* ``dyml``: ``root`` (required: the unpacked DyML-Vehicle/Animal/Product folder), ``variant``
  ("vehicle" | "animal" | "product"), ``benchmark`` ("fine" | "middle" | "coarse": the test
  set of Vehicle/Animal); layout in :mod:`rankax.data.dyml`.
* ``hgldv2``: ``root`` (required: GLDv2 with SupRank's hierarchy files); layout in
  :mod:`rankax.data.gldv2`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from rankax._core import validation
from rankax.data.base import ArraySource, RetrievalDataset
from rankax.data.digits import PROTOCOLS, load_digits_split
from rankax.data.dyml import load_dyml
from rankax.data.folder import load_folder
from rankax.data.gldv2 import load_hgldv2
from rankax.data.tfds_data import load_cars, load_cub, load_inat, load_sop
from rankax.data.transforms import ImageTransform


class _Kind(NamedTuple):
    """What a key without a default value accepts: optional (None when not given) or required."""

    what: str
    accepts: Callable[[Any], bool]
    required: bool = False

    def __repr__(self) -> str:
        return f"<{'required' if self.required else 'optional'} {self.what}>"


def _is_path(value: Any) -> bool:
    return isinstance(value, str | os.PathLike) and os.fspath(value) != ""


def _is_columns(value: Any) -> bool:
    names = [value] if isinstance(value, str) else value
    return isinstance(names, list | tuple) and len(names) > 0 and all(isinstance(c, str) and c for c in names)


_PATH = _Kind("path (a non-empty str)", _is_path)
_REQUIRED = _Kind("path (a non-empty str)", _is_path, required=True)
_COLUMNS = _Kind("column name or list of column names", _is_columns)
_SIZE = _Kind("size in pixels (an int > 0)", validation.is_int_at_least)

_IMAGE_KEYS: dict[str, Any] = {
    "image_size": 224,
    "resize_size": 256,
    "test_resize_mode": "shorter",
    "train_resize_size": _SIZE,
    "crop_scale": (0.16, 1.0),
    "crop_ratio": (0.75, 1.33),
    "flip": True,
    "draft_train": True,
    "draft_test": False,
    "num_threads": 4,
}
_TFDS_KEYS: dict[str, Any] = {**_IMAGE_KEYS, "data_dir": _PATH, "pil_decode": True}

DATASET_KEYS: dict[str, dict[str, Any]] = {
    "digits": {"protocol": "stratified", "split_seed": 0, "max_shift": 0},
    "sop": {**_TFDS_KEYS, "test_resize_mode": "square", "train_resize_size": 256},
    "cub": dict(_TFDS_KEYS),
    "cars": dict(_TFDS_KEYS),
    "inat": {**_TFDS_KEYS, "taxonomy_file": _REQUIRED, "split_dir": _REQUIRED, "hierarchy": "full"},
    "folder": {
        **_IMAGE_KEYS,
        "root": _PATH,
        "csv_file": _PATH,
        "train_csv": _PATH,
        "test_csv": _PATH,
        "query_csv": _PATH,
        "gallery_csv": _PATH,
        "label_columns": _COLUMNS,
        "path_column": "path",
        "split_column": "split",
        "dataset_name": "folder",
    },
    "dyml": {**_IMAGE_KEYS, "root": _REQUIRED, "variant": "vehicle", "benchmark": "fine"},
    "hgldv2": {**_IMAGE_KEYS, "root": _REQUIRED},
}
"""Per dataset name, the keys ``load_dataset`` accepts and their defaults."""


def _as_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        return dict(config.to_dict())
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"dataset config must be a ConfigDict or a mapping, got {type(config).__name__}")


def _resolve(name: str, given: dict[str, Any]) -> dict[str, Any]:
    allowed = DATASET_KEYS[name]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"config.dataset.{unknown[0]} is not a key of dataset {name!r} (unknown: {unknown}); "
            f"known keys: {sorted(allowed)}"
        )
    for key, value in given.items():
        _check_type(name, key, allowed[key], value)
    values = {**allowed, **given}
    missing = sorted(k for k, v in values.items() if isinstance(v, _Kind) and v.required)
    if missing:
        raise ValueError(f"config.dataset.{missing[0]} is required for dataset {name!r} (missing: {missing})")
    return {k: None if isinstance(v, _Kind) else v for k, v in values.items()}


def _like(default: Any, value: Any) -> bool:
    """Whether ``value`` has the kind of ``default`` (numpy scalars count as numbers)."""
    if isinstance(default, bool):
        return isinstance(value, bool | np.bool_)
    if isinstance(default, int):
        return isinstance(value, int | np.integer) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if isinstance(default, tuple):
        return isinstance(value, tuple | list) and len(value) == len(default) and all(
            _like(d, v) for d, v in zip(default, value, strict=True))
    return isinstance(value, type(default))


#: Keys with a default value that also take None: ``train_resize_size`` (256 for ``sop``; None:
#: the random crop reads the decoded image).
NONE_ALLOWED = frozenset({"train_resize_size"})


def _check_type(name: str, key: str, default: Any, value: Any) -> None:
    """``value`` of ``config.dataset.<key>`` has its default's kind, and is None only for the
    keys of :data:`NONE_ALLOWED` (elsewhere ``int(None)`` failed unnamed, and a bool key read it
    as off); a key without a default value (:class:`_Kind`) takes what its kind accepts, and
    None only when optional."""
    if isinstance(default, _Kind):
        if value is None and default.required:
            raise ValueError(f"config.dataset.{key} is required for dataset {name!r}, got None")
        if value is not None and not default.accepts(value):
            raise ValueError(
                f"config.dataset.{key} of dataset {name!r} must be a {default.what}, got {value!r}"
            )
        return
    if value is None and key in NONE_ALLOWED:
        return
    if not _like(default, value):
        raise ValueError(
            f"config.dataset.{key} of dataset {name!r} must be like {default!r} "
            f"({type(default).__name__}), got {value!r}"
        )


def _transform(v: dict[str, Any]) -> ImageTransform:
    return ImageTransform(
        image_size=int(v["image_size"]),
        resize_size=int(v["resize_size"]),
        test_resize_mode=v["test_resize_mode"],
        train_resize_size=None if v["train_resize_size"] is None else int(v["train_resize_size"]),
        crop_scale=tuple(float(x) for x in v["crop_scale"]),
        crop_ratio=tuple(float(x) for x in v["crop_ratio"]),
        flip=bool(v["flip"]),
        draft_train=bool(v["draft_train"]),
        draft_test=bool(v["draft_test"]),
    )


def _digits(v: dict[str, Any]) -> RetrievalDataset:
    if v["protocol"] not in PROTOCOLS:
        raise ValueError(f"config.dataset.protocol must be one of {PROTOCOLS}, got {v['protocol']!r}")
    split = load_digits_split(v["protocol"], seed=int(v["split_seed"]))
    name = "digits" if v["protocol"] == "stratified" else "digits_open_set"
    return RetrievalDataset(
        name,
        ArraySource(split.train_images, split.train_labels),
        ArraySource(split.test_images, split.test_labels),
    )


def _tfds(
    loader: Callable[..., RetrievalDataset], *extra: str
) -> Callable[[dict[str, Any]], RetrievalDataset]:
    def load(v: dict[str, Any]) -> RetrievalDataset:
        kwargs = {k: v[k] for k in extra}
        return loader(
            data_dir=v["data_dir"],
            transform=_transform(v),
            num_threads=int(v["num_threads"]),
            pil_decode=bool(v["pil_decode"]),
            **kwargs,
        )

    return load


def _folder(v: dict[str, Any]) -> RetrievalDataset:
    label_columns = v["label_columns"]
    if isinstance(label_columns, str):  # one column, not its characters
        label_columns = [label_columns]
    return load_folder(
        v["root"],
        v["csv_file"],
        train_csv=v["train_csv"],
        test_csv=v["test_csv"],
        query_csv=v["query_csv"],
        gallery_csv=v["gallery_csv"],
        label_columns=None if label_columns is None else list(label_columns),
        path_column=v["path_column"],
        split_column=v["split_column"],
        name=v["dataset_name"],
        transform=_transform(v),
        num_threads=int(v["num_threads"]),
    )


def _dyml(v: dict[str, Any]) -> RetrievalDataset:
    return load_dyml(
        v["root"],
        v["variant"],
        benchmark=v["benchmark"],
        transform=_transform(v),
        num_threads=int(v["num_threads"]),
    )


def _hgldv2(v: dict[str, Any]) -> RetrievalDataset:
    return load_hgldv2(v["root"], transform=_transform(v), num_threads=int(v["num_threads"]))


_LOADERS: dict[str, Callable[[dict[str, Any]], RetrievalDataset]] = {
    "digits": _digits,
    "sop": _tfds(load_sop),
    "cub": _tfds(load_cub),
    "cars": _tfds(load_cars),
    "inat": _tfds(load_inat, "taxonomy_file", "split_dir", "hierarchy"),
    "folder": _folder,
    "dyml": _dyml,
    "hgldv2": _hgldv2,
}

DATASETS = tuple(_LOADERS)
"""The names ``load_dataset`` knows."""


def load_dataset(config: Any) -> RetrievalDataset:
    """The :class:`RetrievalDataset` that ``config`` (``config.dataset``) describes.

    Args:
      config: a ``ConfigDict`` or mapping with ``name`` (one of :data:`DATASETS`) and that
        dataset's keys (module docstring; defaults in :data:`DATASET_KEYS`).

    Raises:
      ValueError: unknown name, unknown key, missing required key or bad value.
      DatasetNotPreparedError: the data is not on disk; the message gives the preparation steps.
    """
    given = _as_dict(config)
    name = given.pop("name", None)
    if name not in _LOADERS:
        raise ValueError(f"config.dataset.name must be one of {list(DATASETS)}, got {name!r}")
    return _LOADERS[name](_resolve(name, given))
