"""CIFAR-10 (torchvision's pickled batches) and CINIC-10 (class folders), both 32 x 32 RGB, 10 classes.

CINIC-10 is the paper's surrogate data for CIFAR-10 in the S_LSD scenario; its class folders sort into
the same order as CIFAR-10's labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import ImageAdapter, ImageDatasetWrapper, TensorImageDataset
from .imagefolder import load_image_folder
from .registry import DataMissingError, DatasetInfo, default_root, register_dataset

__all__ = ["CIFAR10_CLASSES"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR10 = DatasetInfo(
    name="cifar10", num_classes=10, in_chans=3, input_size=32,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    description="CIFAR-10: 50,000/10,000 RGB 32x32 images, 10 classes",
    where="<data-root>/cifar-10-batches-py/ (torchvision layout; download=True fetches it)",
    classes=CIFAR10_CLASSES,
)

CINIC10 = DatasetInfo(
    name="cinic10", num_classes=10, in_chans=3, input_size=32,
    mean=(0.4789, 0.4723, 0.4305), std=(0.2421, 0.2383, 0.2587),
    description="CINIC-10: 90,000 RGB 32x32 images per split (CIFAR-10 classes, ImageNet+CIFAR sources)",
    where="<data-root>[/cinic10]/train|valid|test/<class>/*.png (CINIC-10 archive from the University "
          "of Edinburgh DataShare)",
    splits=("train", "val", "test"),
    classes=CIFAR10_CLASSES,
)


@register_dataset(CIFAR10)
def _load_cifar10(info: DatasetInfo, split: str, root: Path | None, *, in_chans: int, input_size: int,
                  download: bool) -> TensorImageDataset:
    import torchvision

    root = root if root is not None else default_root()
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=(split == "train"), download=download)
    except RuntimeError as exc:
        raise DataMissingError(
            f"cifar10: {root / 'cifar-10-batches-py'} is missing or fails torchvision's checksum ({exc}); "
            "pass --data-root DIR holding cifar-10-batches-py/ (torchvision layout), or download=True") from None
    except OSError as exc:  # network failure during download=True
        raise DataMissingError(f"cifar10: download into {root} failed ({exc})") from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return TensorImageDataset(images, np.asarray(ds.targets, dtype=np.int64), ImageAdapter(in_chans, input_size),
                              classes=ds.classes, data_key=f"{info.name}:{split}")


@register_dataset(CINIC10)
def _load_cinic10(info: DatasetInfo, split: str, root: Path | None, *, in_chans: int, input_size: int,
                  download: bool) -> ImageDatasetWrapper:
    if download:
        raise DataMissingError(f"cinic10: no automatic download; expected {info.where}")
    return load_image_folder(info, split, root, in_chans=in_chans, input_size=input_size,
                             dir_names=("cinic10", "CINIC-10", "CINIC10", "cinic-10"), resize="stretch")
