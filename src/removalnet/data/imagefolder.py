"""Datasets stored as class folders (torchvision ImageFolder): ``<root>/<split>/<class>/<image>``.

Registered here: "skin-lesion" (HAM10000, the paper's Skin Lesion Diagnosis task), "bcn20000" (its
surrogate data set in the paper's S_LSD scenario) and "imagenet". CINIC-10 uses the same loader (see
``cifar.py``). The split folder is looked for in ``<root>/`` and in ``<root>/<dataset folder>/``;
"test" falls back to ``val``/``valid`` where no ``test`` folder exists. Images are resized (shorter side)
and centre-cropped to ``input_size``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..utils import RemovalNetError
from .base import ImageAdapter, ImageDatasetWrapper
from .registry import DataMissingError, DatasetInfo, default_root, register_dataset

__all__ = ["load_image_folder", "find_split_dir", "SPLIT_DIRS", "IMAGENET_MEAN", "IMAGENET_STD"]

SPLIT_DIRS = {"train": ("train",), "test": ("test", "val", "valid"), "val": ("val", "valid")}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_split_dir(info: DatasetInfo, root: Path | None, split: str, dir_names: Sequence[str]) -> Path:
    """The first existing ``<base>/<split dir>`` with base in ``root, root/<dir_names...>``."""
    root = root if root is not None else default_root()
    tried = []
    for base in [root, *(root / n for n in dir_names)]:
        for s in SPLIT_DIRS[split]:
            tried.append(base / s)
            if (base / s).is_dir():
                return base / s
    raise DataMissingError(
        f"{info.name}: no {split!r} folder found (looked for {', '.join(map(str, tried))}); expected "
        f"{info.where}; pass --data-root DIR (root=DIR) pointing there")


def load_image_folder(info: DatasetInfo, split: str, root: Path | None, *, in_chans: int, input_size: int,
                      dir_names: Sequence[str], resize: str = "crop", crop_pct: float = 1.0,
                      check_names: bool = True) -> ImageDatasetWrapper:
    """Load ``<root>/<split>/<class>/*`` with torchvision's ImageFolder; check the class folders.

    The number of class folders must equal ``info.num_classes`` and, with ``check_names``, their names
    (case-insensitive, in sorted order) must equal ``info.classes``, so label ids agree with the models.
    """
    from torchvision.datasets import ImageFolder

    directory = find_split_dir(info, root, split, dir_names)
    try:
        base = ImageFolder(str(directory))
    except (FileNotFoundError, ValueError) as exc:
        raise DataMissingError(f"{info.name}: cannot read images in {directory}: {exc}") from None
    if len(base.classes) != info.num_classes:
        raise RemovalNetError(f"{info.name}: {directory} has {len(base.classes)} class folders, expected "
                              f"{info.num_classes}")
    if check_names and info.classes and [c.lower() for c in base.classes] != [c.lower() for c in info.classes]:
        raise RemovalNetError(f"{info.name}: class folders in {directory} are {', '.join(base.classes)}; "
                              f"expected {', '.join(info.classes)}")
    adapter = ImageAdapter(in_chans, input_size, resize=resize, crop_pct=crop_pct)
    return ImageDatasetWrapper(base, adapter, targets=base.targets, classes=base.classes,
                               data_key=f"{info.name}:{split}")


SKIN_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
BCN_CLASSES = ("ak", "bcc", "bkl", "df", "mel", "nv", "scc", "vasc")


def _folder_loader(dir_names: Sequence[str], crop_pct: float = 1.0):
    def load(info: DatasetInfo, split: str, root: Path | None, *, in_chans: int, input_size: int,
             download: bool, crop_pct: float = crop_pct, resize: str = "crop") -> ImageDatasetWrapper:
        if download:
            raise DataMissingError(f"{info.name}: no automatic download; expected {info.where}")
        return load_image_folder(info, split, root, in_chans=in_chans, input_size=input_size,
                                 dir_names=dir_names, resize=resize, crop_pct=crop_pct)
    return load


register_dataset(DatasetInfo(
    name="skin-lesion", num_classes=7, in_chans=3, input_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    description="Skin Lesion Diagnosis (ISIC 2018 task 3 / HAM10000), 7 classes; ImageNet statistics",
    where="<data-root>[/skin-lesion]/train|test/<akiec|bcc|bkl|df|mel|nv|vasc>/*.jpg (HAM10000 sorted by "
          "diagnosis from the ISIC 2018 challenge)",
    classes=SKIN_CLASSES,
))(_folder_loader(("skin-lesion", "HAM10000", "ham10000")))

register_dataset(DatasetInfo(
    name="bcn20000", num_classes=8, in_chans=3, input_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    description="BCN20000 dermoscopic images (ISIC 2019 classes), surrogate data for skin-lesion in S_LSD",
    where="<data-root>[/bcn20000]/train|test/<ak|bcc|bkl|df|mel|nv|scc|vasc>/*.jpg (ISIC 2019 training "
          "images sorted by ground-truth class)",
    classes=BCN_CLASSES,
))(_folder_loader(("bcn20000", "BCN20000")))

register_dataset(DatasetInfo(
    name="imagenet", num_classes=1000, in_chans=3, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    description="ImageNet ILSVRC-2012, 1000 classes; resize 256 + centre crop 224 (crop_pct 0.875)",
    where="<data-root>[/imagenet]/train|val/<wnid>/*.JPEG (ILSVRC-2012 from image-net.org, val sorted into "
          "class folders)",
    splits=("train", "val", "test"),
))(_folder_loader(("imagenet", "ImageNet", "ILSVRC2012"), crop_pct=0.875))
