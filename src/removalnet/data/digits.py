"""scikit-learn's bundled 8 x 8 handwritten digits (1,797 images, 10 classes), offline.

Pixel values 0..16 are scaled to [0, 1]; images are upsampled to 28 x 28 by default (``input_size``).
The train/test split is stratified and fixed (seed 0): 1,437 train / 360 test images.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from .base import ImageAdapter, TensorImageDataset
from .registry import DatasetInfo, register_dataset

__all__ = ["digits_split_indices", "TEST_SIZE", "SPLIT_SEED"]

TEST_SIZE = 360
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    images.setflags(write=False)
    targets = d.target.astype(np.int64)
    targets.setflags(write=False)
    return images, targets


@functools.lru_cache(maxsize=1)
def digits_split_indices() -> dict[str, np.ndarray]:
    """Indices into ``sklearn.datasets.load_digits()`` of the fixed stratified train/test split."""
    from sklearn.model_selection import train_test_split

    _, y = _digits()
    train, test = train_test_split(np.arange(len(y)), test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED)
    train.sort()
    test.sort()
    return {"train": train, "test": test}


INFO = DatasetInfo(
    name="digits", num_classes=10, in_chans=1, input_size=28,
    mean=(0.3053,), std=(0.3760,),
    description="scikit-learn 8x8 handwritten digits (1,797 images; 1,437 train / 360 test), upsampled to 28x28",
    where="bundled with scikit-learn (sklearn.datasets.load_digits), no files needed",
    classes=tuple(str(i) for i in range(10)),
)


@register_dataset(INFO)
def _load(info: DatasetInfo, split: str, root: Path | None, *, in_chans: int, input_size: int,
          download: bool) -> TensorImageDataset:
    images, targets = _digits()
    idx = digits_split_indices()[split]
    x = torch.from_numpy(images[idx]).unsqueeze(1)  # fancy indexing copies
    return TensorImageDataset(x, torch.from_numpy(targets[idx].copy()), ImageAdapter(in_chans, input_size),
                              classes=info.classes, data_key=f"{info.name}:{split}")
