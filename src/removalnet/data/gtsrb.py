"""GTSRB traffic signs (torchvision.datasets.GTSRB): 39,209 train / 12,630 test RGB images, 43 classes.

Images (15..250 pixels, roughly square) are resized to 32 x 32 by default. Training labels are read from
the class folder names (``00000``..``00042``), test labels from ``GT-final_test.csv``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils import RemovalNetError
from .base import ImageAdapter, ImageDatasetWrapper
from .registry import DataMissingError, DatasetInfo, default_root, register_dataset

INFO = DatasetInfo(
    name="gtsrb", num_classes=43, in_chans=3, input_size=32,
    mean=(0.3337, 0.3064, 0.3171), std=(0.2672, 0.2564, 0.2629),
    description="German Traffic Sign Recognition Benchmark: 39,209/12,630 RGB images, 43 classes, resized to 32x32",
    where="<data-root>/gtsrb/GTSRB/Training/<class>/*.ppm and <data-root>/gtsrb/GTSRB/Final_Test/Images + "
          "<data-root>/gtsrb/GT-final_test.csv (torchvision layout; download=True fetches it)",
)


@register_dataset(INFO)
def _load(info: DatasetInfo, split: str, root: Path | None, *, in_chans: int, input_size: int,
          download: bool) -> ImageDatasetWrapper:
    import torchvision

    root = root if root is not None else default_root()
    try:
        base = torchvision.datasets.GTSRB(str(root), split=split, download=download)
    except (RuntimeError, FileNotFoundError) as exc:
        raise DataMissingError(f"gtsrb: {split} data not found under {root / 'gtsrb'} ({exc}); expected "
                               f"{info.where}") from None
    except OSError as exc:
        raise DataMissingError(f"gtsrb: download into {root} failed ({exc})") from None
    samples = base._samples  # (path, label) pairs, listed by torchvision without opening images
    if split == "train":
        try:  # the class id is the folder name (torchvision numbers the folders found, which differs if any is missing)
            targets = np.array([int(Path(p).parent.name) for p, _ in samples], dtype=np.int64)
        except ValueError:
            raise RemovalNetError(f"gtsrb: class folders under {root / 'gtsrb'} must be numbered 00000..00042") \
                from None
    else:
        targets = np.array([t for _, t in samples], dtype=np.int64)
    if targets.size and (targets.min() < 0 or targets.max() >= info.num_classes):
        raise RemovalNetError(f"gtsrb: labels outside 0..{info.num_classes - 1} under {root / 'gtsrb'}")
    return ImageDatasetWrapper(base, ImageAdapter(in_chans, input_size, resize="stretch"), targets=targets,
                               data_key=f"{info.name}:{split}")
