"""Datasets as ``(x float32 CxHxW in [0,1], y int)``, class-balanced subsets and disjoint splits.

Importing this package registers every dataset: fashion-mnist, digits, cifar10, cinic10, gtsrb, celeba
(celeba-20, celeba-31), skin-lesion, bcn20000, imagenet.
A user's own data is a dataset name too: ``folder:PATH`` (class folders) or ``npz:PATH`` (see ``refs.py``).
"""
from .base import ImageAdapter, ImageDatasetWrapper, TensorImageDataset
from .registry import (DATA_ROOT_ENV, DataMissingError, DatasetInfo, default_root, get_dataset_info, list_datasets,
                       load_dataset, register_dataset)
from .subsets import assert_disjoint, balanced_subset, dataset_labels, disjoint_split
from . import fashion_mnist, digits, cifar, gtsrb, celeba, imagefolder  # noqa: F401,E402  (register the datasets)

__all__ = [
    "DatasetInfo", "DataMissingError", "register_dataset", "list_datasets", "get_dataset_info", "load_dataset",
    "default_root", "DATA_ROOT_ENV", "ImageAdapter", "TensorImageDataset", "ImageDatasetWrapper",
    "dataset_labels", "balanced_subset", "disjoint_split", "assert_disjoint",
]
