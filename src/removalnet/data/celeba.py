"""CelebA (torchvision.datasets.CelebA) as a binary task on one attribute.

The paper's "CelebA+20" (Male) and "CelebA+31" (Smiling) are registered as ``celeba-20`` and ``celeba-31``;
``celeba`` takes the attribute index as keyword ``attribute`` (default 20). Label 1 means the attribute is
present (torchvision maps the file's -1/1 to 0/1). The aligned 178 x 218 images are resized (shorter side)
and centre-cropped to ``input_size`` (32 by default, as in the paper's small-input models).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..utils import RemovalNetError
from .base import ImageAdapter, ImageDatasetWrapper
from .imagefolder import IMAGENET_MEAN, IMAGENET_STD
from .registry import DataMissingError, DatasetInfo, default_root, register_dataset

__all__ = ["ATTRIBUTES", "attribute_labels"]

ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
_SPLITS = {"train": "train", "val": "valid", "test": "test"}
_WHERE = ("<data-root>/celeba/img_align_celeba/*.jpg plus list_attr_celeba.txt, list_eval_partition.txt, "
          "identity_CelebA.txt, list_bbox_celeba.txt, list_landmarks_align_celeba.txt (torchvision layout, "
          "checked against torchvision's checksums; download=True fetches it)")


def attribute_labels(attr: torch.Tensor | np.ndarray, attribute: int) -> np.ndarray:
    """Binary labels (0/1) of column ``attribute`` of an N x 40 attribute matrix in {0,1} or {-1,1}."""
    a = np.asarray(attr)
    if a.ndim != 2 or a.shape[1] != len(ATTRIBUTES):
        raise RemovalNetError(f"CelebA attributes must be N x {len(ATTRIBUTES)}, got shape {a.shape}")
    col = a[:, _check_attribute(attribute)].astype(np.int64)
    if not np.isin(col, (-1, 0, 1)).all():
        raise RemovalNetError("CelebA attribute values must be -1/1 or 0/1")
    return (col > 0).astype(np.int64)


def _check_attribute(attribute: int) -> int:
    if isinstance(attribute, bool) or not isinstance(attribute, int) or not 0 <= attribute < len(ATTRIBUTES):
        raise RemovalNetError(f"attribute must be an integer in 0..{len(ATTRIBUTES) - 1} (20 Male, 31 Smiling), "
                              f"got {attribute!r}")
    return attribute


def _info(name: str, attribute: int | None) -> DatasetInfo:
    what = f"attribute {attribute} ({ATTRIBUTES[attribute]})" if attribute is not None else \
        "keyword attribute (default 20, Male)"
    classes = (f"not {ATTRIBUTES[attribute]}", ATTRIBUTES[attribute]) if attribute is not None else ()
    return DatasetInfo(
        name=name, num_classes=2, in_chans=3, input_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        description=f"CelebA aligned faces (162,770/19,867/19,962), binary label from {what}; ImageNet statistics",
        where=_WHERE, splits=("train", "val", "test"), classes=classes)


@register_dataset(_info("celeba-31", 31), attribute=31)
@register_dataset(_info("celeba-20", 20), attribute=20)
@register_dataset(_info("celeba", None), attribute=20)
def _load(info: DatasetInfo, split: str, root: Path | None, *, in_chans: int, input_size: int, download: bool,
          attribute: int = 20) -> ImageDatasetWrapper:
    import torchvision

    attribute = _check_attribute(attribute)
    if info.classes and info.classes[1] != ATTRIBUTES[attribute]:
        raise RemovalNetError(f"{info.name} is fixed to attribute {ATTRIBUTES.index(info.classes[1])}; "
                              f"use 'celeba' with attribute={attribute}")
    root = root if root is not None else default_root()
    try:
        base = torchvision.datasets.CelebA(str(root), split=_SPLITS[split], target_type="attr", download=download)
    except RuntimeError as exc:
        raise DataMissingError(f"{info.name}: {root / 'celeba'} is missing or fails torchvision's checksums "
                               f"({exc}); expected {_WHERE}") from None
    except OSError as exc:
        raise DataMissingError(f"{info.name}: download into {root} failed ({exc})") from None
    targets = attribute_labels(base.attr, attribute)
    return ImageDatasetWrapper(base, ImageAdapter(in_chans, input_size, resize="crop"), targets=targets,
                               classes=(f"not {ATTRIBUTES[attribute]}", ATTRIBUTES[attribute]),
                               data_key=f"celeba:{split}")
