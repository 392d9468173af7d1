"""Datasets, augmentations and batch samplers. The embedded default is scikit-learn's digits.

``load_dataset(config.dataset)`` builds any dataset of the experiments (digits, SOP, CUB,
Cars196, iNaturalist 2018, folder/CSV, DyML, H-GLDv2); see ``docs/data.md``.
"""

from rankax.data.base import ArraySource, RetrievalDataset, Source
from rankax.data.digits import DigitsSplit, load_digits_split
from rankax.data.dyml import load_dyml
from rankax.data.folder import load_folder
from rankax.data.gldv2 import load_hgldv2
from rankax.data.image_source import ImageReadError, ImageSource
from rankax.data.registry import DATASET_KEYS, DATASETS, load_dataset
from rankax.data.samplers import (
    SAMPLERS,
    HierarchicalPairsSampler,
    HierarchicalSampler,
    MPerClassEpochSampler,
    PKSampler,
    ReplacementPKSampler,
)
from rankax.data.tfds_data import DatasetNotPreparedError, load_cars, load_cub, load_inat, load_sop
from rankax.data.transforms import ImageTransform

__all__ = [
    "DATASETS",
    "DATASET_KEYS",
    "SAMPLERS",
    "ArraySource",
    "DatasetNotPreparedError",
    "DigitsSplit",
    "HierarchicalPairsSampler",
    "HierarchicalSampler",
    "ImageReadError",
    "ImageSource",
    "ImageTransform",
    "MPerClassEpochSampler",
    "PKSampler",
    "ReplacementPKSampler",
    "RetrievalDataset",
    "Source",
    "load_cars",
    "load_cub",
    "load_dataset",
    "load_digits_split",
    "load_dyml",
    "load_folder",
    "load_hgldv2",
    "load_inat",
    "load_sop",
]
