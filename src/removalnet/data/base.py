"""Common conversion of every source to ``(x float32 CxHxW in [0,1], y int)``: channels and size.

``ImageAdapter`` turns a PIL image, a uint8/float array or a tensor into a float tensor with the requested
number of channels (grayscale repeated to 3, colour to luminance for 1) and size (bilinear, antialiased).
``TensorImageDataset`` keeps a whole split in memory as one uint8 tensor (fast, batched ``__getitems__``);
``ImageDatasetWrapper`` adapts a torchvision dataset that yields PIL images.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..utils import RemovalNetError

__all__ = ["ImageAdapter", "TensorImageDataset", "ImageDatasetWrapper"]


class ImageAdapter:
    """Convert images to float32 ``C x H x W`` in [0, 1] with ``in_chans`` channels and ``input_size`` pixels.

    ``resize="stretch"`` resizes both sides to ``input_size`` (square sources, traffic signs);
    ``resize="crop"`` resizes the shorter side to ``round(input_size / crop_pct)`` and takes the centre
    ``input_size x input_size`` crop (photographs; ImageNet uses ``crop_pct=0.875``).
    """

    def __init__(self, in_chans: int, input_size: int, *, resize: str = "stretch", crop_pct: float = 1.0):
        if in_chans not in (1, 3):
            raise RemovalNetError(f"in_chans must be 1 or 3, got {in_chans!r}")
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise RemovalNetError(f"input_size must be a positive integer, got {input_size!r}")
        if resize not in ("stretch", "crop"):
            raise RemovalNetError(f"resize must be 'stretch' or 'crop', got {resize!r}")
        if not (isinstance(crop_pct, (int, float)) and 0.0 < crop_pct <= 1.0):
            raise RemovalNetError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
        self.in_chans = in_chans
        self.input_size = input_size
        self.resize = resize
        self.crop_pct = float(crop_pct)

    def __repr__(self) -> str:
        return (f"ImageAdapter(in_chans={self.in_chans}, input_size={self.input_size}, resize={self.resize!r}, "
                f"crop_pct={self.crop_pct})")

    def to_tensor(self, img: Any) -> Tensor:
        """PIL image / array / tensor -> float32 ``C x H x W`` in [0, 1] (channels not yet adapted)."""
        if isinstance(img, Image.Image):
            if img.mode not in ("L", "RGB"):
                img = img.convert("L" if img.mode in ("1", "I", "I;16", "F") else "RGB")
            if img.mode == "RGB" and self.in_chans == 1:
                img = img.convert("L")
            x = TF.pil_to_tensor(img)
        elif isinstance(img, np.ndarray):
            arr = img
            if arr.ndim == 2:
                arr = arr[:, :, None]
            if arr.ndim != 3:
                raise RemovalNetError(f"expected an H x W or H x W x C image array, got shape {img.shape}")
            x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        elif isinstance(img, Tensor):
            x = img if img.ndim == 3 else img.unsqueeze(0)
        else:
            raise RemovalNetError(f"cannot convert {type(img).__name__} to an image tensor")
        return to_float(x)

    def adapt(self, x: Tensor) -> Tensor:
        """Adapt channels and size of a float ``C x H x W`` or ``N x C x H x W`` tensor in [0, 1]."""
        c = x.shape[-3]
        if c == 4:
            x, c = x[..., :3, :, :], 3
        if c not in (1, 3):
            raise RemovalNetError(f"cannot convert a {c}-channel image to {self.in_chans} channels")
        if c == 3 and self.in_chans == 1:
            x = TF.rgb_to_grayscale(x, num_output_channels=1)
        size = self.input_size
        h, w = x.shape[-2:]
        if (h, w) != (size, size):  # resize before repeating channels: a third of the work
            if self.resize == "stretch":
                x = _resize(x, (size, size))
            else:
                short = max(size, int(round(size / self.crop_pct)))
                if min(h, w) != short:
                    x = _resize(x, (short, max(short, round(w * short / h))) if h <= w
                                else (max(short, round(h * short / w)), short))
                x = TF.center_crop(x, [size, size])
            x = x.clamp_(0.0, 1.0)
        if c == 1 and self.in_chans == 3:
            x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
        return x.contiguous()

    def __call__(self, img: Any) -> Tensor:
        return self.adapt(self.to_tensor(img))


def _resize(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """Bilinear resize; antialiased when shrinking (upsampling is identical either way, and faster without)."""
    shrink = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    return TF.resize(x, list(hw), interpolation=InterpolationMode.BILINEAR, antialias=shrink)


def to_float(x: Tensor) -> Tensor:
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if x.is_floating_point():
        return x.to(torch.float32, copy=True)
    raise RemovalNetError(f"image tensors must be uint8 or floating point, got {x.dtype}")


class TensorImageDataset(Dataset):
    """A split held in memory: ``images`` (uint8, or float in [0,1]) ``N x C x H x W`` and int ``targets``.

    Conversion to float, channel adaptation and resizing happen per access (batched when a DataLoader
    uses ``__getitems__``), so the stored tensor stays compact.
    """

    def __init__(self, images: Tensor, targets: Tensor | np.ndarray | Sequence[int], adapter: ImageAdapter, *,
                 classes: Sequence[str] = (), data_key: str | None = None):
        if images.ndim != 4:
            raise RemovalNetError(f"images must be N x C x H x W, got shape {tuple(images.shape)}")
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        if targets.shape != (images.shape[0],):
            raise RemovalNetError(f"{images.shape[0]} images but {tuple(targets.shape)} targets")
        self.images = images
        self.targets = targets
        self.adapter = adapter
        self.classes = list(classes)
        self.data_key = data_key

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.adapter.adapt(to_float(self.images[index])), int(self.targets[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, int]]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        x = self.adapter.adapt(to_float(self.images[idx]))
        return list(zip(x.unbind(0), self.targets[idx].tolist()))

    def __repr__(self) -> str:
        return f"TensorImageDataset({self.data_key or ''}, n={len(self)}, {self.adapter})"


class ImageDatasetWrapper(Dataset):
    """Adapt a dataset yielding ``(PIL image, target)`` to ``(float tensor, int)``.

    ``targets`` (all labels, known without reading images) are the labels returned, and give
    :func:`dataset_labels` a fast path; without them ``target_fn`` maps the source's target to an int.
    """

    def __init__(self, base: Dataset, adapter: ImageAdapter, *, targets: Sequence[int] | np.ndarray | None = None,
                 target_fn: Callable[[Any], int] | None = None, classes: Sequence[str] = (),
                 data_key: str | None = None):
        self.base = base
        self.adapter = adapter
        self.target_fn = target_fn
        if targets is not None:
            targets = np.asarray(targets, dtype=np.int64)
            if targets.shape != (len(base),):
                raise RemovalNetError(f"{len(base)} samples but {targets.shape} targets")
            self.targets = targets
        self.classes = list(classes)
        self.data_key = data_key

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img, y = self.base[index]
        if hasattr(self, "targets"):
            y = self.targets[index]
        elif self.target_fn is not None:
            y = self.target_fn(y)
        return self.adapter(img), int(y)

    def __repr__(self) -> str:
        return f"ImageDatasetWrapper({self.data_key or type(self.base).__name__}, n={len(self)}, {self.adapter})"
