"""Datasets and batch samplers. The embedded default is scikit-learn's digits."""

from rankax.data.base import ArraySource, RetrievalDataset, Source
from rankax.data.digits import DigitsSplit, load_digits_split
from rankax.data.samplers import PKSampler

__all__ = ["ArraySource", "DigitsSplit", "PKSampler", "RetrievalDataset", "Source", "load_digits_split"]
