"""Fashion-MNIST (60,000 / 10,000 grayscale 28 x 28 images, 10 classes), read from IDX files into memory.

Where the files are looked for, in order:
1. ``root`` when given: ``root/FashionMNIST/raw/`` (torchvision layout), then ``root/`` itself, and nowhere
   else (a given root is the only place looked at);
2. without a root: ``$REMOVALNET_FASHION_MNIST_DIR`` when set, else ``/usr/share/datasets/fashion-mnist/``
   (Debian package ``dataset-fashion-mnist``), then ``<default root>/FashionMNIST/raw/``;
3. with ``download=True`` only: torchvision's download into the root.
Each location may hold the gzipped (``*.gz``) or the uncompressed IDX files.
"""
from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..utils import RemovalNetError
from .base import ImageAdapter, TensorImageDataset
from .registry import DataMissingError, DatasetInfo, default_root, register_dataset

__all__ = ["read_idx", "load_fashion_mnist_arrays", "SYSTEM_DIR", "DIR_ENV"]

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DIR_ENV = "REMOVALNET_FASHION_MNIST_DIR"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
HINT = (f"install the Debian package (apt-get install dataset-fashion-mnist), set {DIR_ENV} to a directory "
        "holding the IDX files, or pass --data-root DIR with the torchvision layout DIR/FashionMNIST/raw/ "
        "(download=True lets torchvision fetch it there)")


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (optionally gzipped) with ``ndim`` dimensions into a uint8 array.

    The header is checked: magic ``0x00 0x00 0x08 ndim``, then ``ndim`` big-endian uint32 sizes whose
    product must equal the number of data bytes. A bad file raises RemovalNetError naming it.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise RemovalNetError(f"corrupt IDX file {path}: cannot decompress ({exc})") from None
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise RemovalNetError(f"corrupt IDX file {path}: {len(raw)} bytes, shorter than its header")
    magic = raw[:4]
    if magic != bytes((0, 0, 0x08, ndim)):
        raise RemovalNetError(f"corrupt IDX file {path}: magic number 0x{magic.hex()}, expected "
                              f"0x000008{ndim:02x} (unsigned bytes, {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    expected = int(np.prod(dims))
    if len(raw) - head != expected:
        raise RemovalNetError(f"corrupt IDX file {path}: header says {'x'.join(map(str, dims))} = {expected} "
                              f"bytes of data, file has {len(raw) - head}")
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=head).reshape(dims).copy()


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = directory / name
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=4)
def _read_pair(images: str, labels: str, _stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, 3)
    y = read_idx(labels, 1)
    if x.shape[0] != y.shape[0]:
        raise RemovalNetError(f"corrupt Fashion-MNIST files: {images} holds {x.shape[0]} images but {labels} "
                              f"holds {y.shape[0]} labels")
    if y.size and int(y.max()) >= len(CLASSES):
        raise RemovalNetError(f"corrupt IDX file {labels}: label {int(y.max())} outside 0..{len(CLASSES) - 1}")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def candidate_dirs(root: Path | None) -> list[Path]:
    if root is not None:  # a given root is the only place looked at
        return [root / "FashionMNIST" / "raw", root]
    env = os.environ.get(DIR_ENV)
    return [Path(env).expanduser() if env else SYSTEM_DIR, default_root() / "FashionMNIST" / "raw"]


def load_fashion_mnist_arrays(split: str, root: Path | None = None, download: bool = False
                              ) -> tuple[np.ndarray, np.ndarray, str]:
    """Return ``(images uint8 N x 28 x 28, labels uint8 N, source)`` of one split (read-only arrays)."""
    img_stem, lbl_stem = FILES[split]
    dirs = candidate_dirs(root)
    for d in dirs:
        img, lbl = _find(d, img_stem), _find(d, lbl_stem)
        if img is not None and lbl is not None:
            stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in (img, lbl))
            x, y = _read_pair(str(img), str(lbl), stamp)
            return x, y, str(d)
    if download:
        import torchvision

        dl_root = root if root is not None else default_root()
        try:
            ds = torchvision.datasets.FashionMNIST(str(dl_root), train=(split == "train"), download=True)
        except Exception as exc:  # network or checksum failures from torchvision
            raise DataMissingError(f"fashion-mnist: download into {dl_root} failed ({exc}); {HINT}") from None
        return ds.data.numpy(), ds.targets.numpy().astype(np.uint8), str(dl_root / "FashionMNIST" / "raw")
    looked = ", ".join(str(d) for d in dirs)
    raise DataMissingError(f"fashion-mnist: {img_stem}(.gz) and {lbl_stem}(.gz) not found in {looked}; {HINT}")


INFO = DatasetInfo(
    name="fashion-mnist", num_classes=10, in_chans=1, input_size=28,
    mean=(0.2860,), std=(0.3530,),
    description="Fashion-MNIST: 60,000/10,000 grayscale 28x28 clothing images, 10 classes",
    where=f"{SYSTEM_DIR}/*-ubyte.gz (apt-get install dataset-fashion-mnist), ${DIR_ENV}, "
          "or <data-root>/FashionMNIST/raw (torchvision layout)",
    classes=CLASSES,
)


@register_dataset(INFO)
def _load(info: DatasetInfo, split: str, root: Path | None, *, in_chans: int, input_size: int,
          download: bool) -> TensorImageDataset:
    x, y, _ = load_fashion_mnist_arrays(split, root, download)
    images = torch.from_numpy(x.copy()).unsqueeze(1)  # the cached arrays are read-only: each dataset owns a copy
    return TensorImageDataset(images, torch.from_numpy(y.astype(np.int64)), ImageAdapter(in_chans, input_size),
                              classes=info.classes, data_key=f"{info.name}:{split}")
