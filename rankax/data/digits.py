"""scikit-learn's digits (1797 8x8 grey images, 10 classes), the embedded default dataset.

It ships inside the scikit-learn wheel, so the demo and the tests need no download.
Two protocols:

* ``"stratified"`` (default): every class in both halves; a stratified 50/50 split of the
  images; train on one half, retrieve within the other (query = gallery, self excluded).
* ``"open_set"``: the class-disjoint protocol of metric-learning benchmarks; train on
  digits 0-4, retrieve among the images of 5-9.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

PROTOCOLS = ("stratified", "open_set")


class DigitsSplit(NamedTuple):
    """Images ``[N, 8, 8, 1]`` float32 in [0, 1] and labels ``[N]`` int32 of both halves."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load_digits_split(protocol: str = "stratified", seed: int = 0) -> DigitsSplit:
    """Loads digits and splits it by ``protocol`` (see the module docstring).

    The stratified split draws, per class, a random half of the images (the larger half goes
    to training for odd counts) with ``np.random.default_rng(seed)``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed (the split's) must be an int >= 0, got {seed!r}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[..., None]
    labels = digits.target.astype(np.int32)
    if protocol == "open_set":
        train = labels < 5
    else:
        rng = np.random.default_rng(seed)
        train = np.zeros(len(labels), dtype=bool)
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            train[members[: (len(members) + 1) // 2]] = True
    return DigitsSplit(images[train], labels[train], images[~train], labels[~train])
