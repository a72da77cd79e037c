"""A user's own image data, named by a reference, usable wherever a registered dataset name is.

* ``folder:PATH``: ``PATH/train/<class>/<image>`` and ``PATH/test/<class>/<image>`` (or ``val/``, ``valid/``).
  Classes are the folder names (sorted, as torchvision's ImageFolder numbers them; train and test must have
  the same folders). Channels: 1 when every training image is grayscale, else 3. Input size: the images'
  (all must have the same square size, unless ``size`` is given: then every image is resized to it).
* ``npz:PATH``: a NumPy ``.npz`` with ``x`` (``N x H x W``, ``N x H x W x C`` or ``N x C x H x W``, C 1 or 3;
  uint8 0..255 or float in [0, 1]) and ``y`` (integer labels 0..K-1), and optionally ``x_test``/``y_test``.
  Without them the test split is a fixed stratified 20% of ``x`` (scikit-learn ``train_test_split``,
  ``random_state=0``) and the training split the rest. An optional ``classes`` array names the classes.

Options follow a ``?``: ``folder:data/mnist?size=32&channels=3&mean=0.13&std=0.31`` (``mean``/``std`` one value
or one per channel, comma-separated). ``mean``/``std`` default to the training split's per-channel
statistics. Every split is read into memory once per process.
"""
from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils import RemovalNetError
from .base import ImageAdapter, TensorImageDataset, to_float
from .info import DatasetInfo

__all__ = ["is_data_ref", "data_ref_entry", "canonical_data_ref", "parse_options", "given_stats", "TEST_FRACTION",
           "SPLIT_SEED"]

PREFIXES = ("folder:", "npz:")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
_OPTIONS = ("size", "channels", "mean", "std")


def is_data_ref(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(PREFIXES)


def parse_options(ref: str, query: str) -> dict[str, Any]:
    """The options of ``ref`` after its ``?`` (``size=32&channels=3&mean=0.5&std=0.25``), checked: ``size`` and
    ``channels`` integers (channels 1 or 3), ``mean``/``std`` tuples of floats. Also the options of a
    registered dataset's name (``fashion-mnist?size=32&channels=3``, see ``registry.py``)."""
    opts: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in _OPTIONS:
            raise RemovalNetError(f"dataset reference {ref!r}: unknown option {item!r}; options: {', '.join(_OPTIONS)}")
        try:
            if key in ("size", "channels"):
                opts[key] = int(value)
            else:
                opts[key] = tuple(float(v) for v in value.split(","))
        except ValueError:
            raise RemovalNetError(f"dataset reference {ref!r}: option {key} has a bad value {value!r}") from None
    if opts.get("channels", 1) not in (1, 3):
        raise RemovalNetError(f"dataset reference {ref!r}: channels must be 1 or 3")
    if "size" in opts and opts["size"] < 1:
        raise RemovalNetError(f"dataset reference {ref!r}: size must be a positive integer")
    return opts


def _parse(ref: str) -> tuple[str, Path, dict[str, Any]]:
    kind, _, rest = ref.partition(":")
    path, _, query = rest.partition("?")
    if not path:
        raise RemovalNetError(f"dataset reference {ref!r} needs a path: {kind}:PATH")
    return kind, Path(path).expanduser().resolve(), parse_options(ref, query)


def canonical_data_ref(name: str) -> str:
    """``name`` with a ``folder:``/``npz:`` path made absolute (what checkpoints record); other names unchanged."""
    if not is_data_ref(name):
        return name
    kind, _, rest = name.partition(":")
    path, sep, query = rest.partition("?")
    return f"{kind}:{Path(path).expanduser().resolve()}{sep}{query}"


# ------------------------------------------------------------------------------------------------- folder
def _split_dirs(ref: str, root: Path) -> dict[str, Path]:
    if not root.is_dir():
        raise RemovalNetError(f"{ref}: {str(root)!r} is not a directory")
    if not (root / "train").is_dir():
        raise RemovalNetError(f"{ref}: no train/ folder in {str(root)!r} (expected train/<class>/*.png and "
                              "test/<class>/*.png)")
    test = next((root / d for d in ("test", "val", "valid") if (root / d).is_dir()), None)
    if test is None:
        raise RemovalNetError(f"{ref}: no test/ (or val/) folder in {str(root)!r}")
    return {"train": root / "train", "test": test}


def _list_images(ref: str, directory: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((directory / c).rglob("*"))
             if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS]
    if not files:
        raise RemovalNetError(f"{ref}: no images in {str(directory)!r} (expected {directory.name}/<class>/*.png)")
    return classes, files


def _read_folder(ref: str, directory: Path, size: int | None, channels: int | None):
    from PIL import Image

    classes, files = _list_images(ref, directory)
    images, sizes, gray = [], {}, True
    for f, _ in files:
        try:   # whatever PIL raises on a file (unreadable, truncated, over its decompression-bomb limit) is bad data
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(f)
            with im:
                im.load()
                img = im
                if img.mode not in ("L", "RGB"):
                    img = img.convert("L" if img.mode in ("1", "I", "I;16", "F", "LA") else "RGB")
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:
            raise RemovalNetError(f"{ref}: cannot read image {str(f)!r} ({type(e).__name__}: {e})") from e
        gray &= img.mode == "L"
        sizes.setdefault(img.size, f)
        images.append(img)
    if size is None and len(sizes) > 1:
        (a, fa), (b, fb) = list(sizes.items())[:2]
        raise RemovalNetError(f"{ref}: images of mixed sizes in {str(directory)!r} ({a[0]}x{a[1]} {fa.name}, "
                              f"{b[0]}x{b[1]} {fb.name}); give one size: {ref.split('?')[0]}?size=N")
    w, h = next(iter(sizes)) if size is None else (size, size)
    if size is None and w != h:
        raise RemovalNetError(f"{ref}: images are {w}x{h}, not square; give a size: {ref.split('?')[0]}?size=N")
    c = channels or (1 if gray else 3)
    out = torch.empty(len(images), c, h, w, dtype=torch.uint8)
    for k, img in enumerate(images):
        img = img.convert("L" if c == 1 else "RGB") if img.mode != ("L" if c == 1 else "RGB") else img
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        arr = np.array(img, dtype=np.uint8)
        out[k] = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
    return classes, out, torch.tensor([y for _, y in files], dtype=torch.long)


# ---------------------------------------------------------------------------------------------------- npz
def _as_images(ref: str, x: np.ndarray, key: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise RemovalNetError(f"{ref}: {key} has shape {x.shape}; expected N x H x W, N x H x W x C or "
                              "N x C x H x W with C 1 or 3")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    if not np.issubdtype(x.dtype, np.floating):
        raise RemovalNetError(f"{ref}: {key} must be uint8 (0..255) or float in [0, 1], got {x.dtype}")
    if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1 or np.isnan(x).any()):
        raise RemovalNetError(f"{ref}: float {key} must hold values in [0, 1] (scale 0..255 images by 1/255)")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _labels(ref: str, y: np.ndarray, key: str, n: int) -> torch.Tensor:
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise RemovalNetError(f"{ref}: {key} must be {n} integer labels (a 1-D array), got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise RemovalNetError(f"{ref}: {key} holds negative labels")
    return torch.from_numpy(y.astype(np.int64))


def _read_npz(ref: str, path: Path) -> tuple[list[str], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    if not path.is_file():
        raise RemovalNetError(f"{ref}: {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise RemovalNetError(f"{ref}: {str(path)!r} is not a readable .npz of plain arrays ({e})") from e
    if "x" not in arrays or "y" not in arrays:
        raise RemovalNetError(f"{ref}: the .npz must hold arrays 'x' (images) and 'y' (labels); it holds "
                              f"{', '.join(sorted(arrays)) or 'nothing'}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise RemovalNetError(f"{ref}: give both x_test and y_test, or neither")
    x = _as_images(ref, arrays["x"], "x")
    y = _labels(ref, arrays["y"], "y", len(x))
    if "x_test" in arrays:
        xt = _as_images(ref, arrays["x_test"], "x_test")
        yt = _labels(ref, arrays["y_test"], "y_test", len(xt))
        if xt.shape[1:] != x.shape[1:]:
            raise RemovalNetError(f"{ref}: x_test images are {tuple(xt.shape[1:])}, x images {tuple(x.shape[1:])}")
        splits = {"train": (x, y), "test": (xt, yt)}
    else:
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(y))
        counts = np.bincount(y.numpy())
        single = np.flatnonzero(counts == 1)
        if single.size:
            raise RemovalNetError(f"{ref}: label {_few(single)} has a single sample: the {TEST_FRACTION:.0%} test "
                                  "split is stratified, which needs at least 2 samples of every label (add samples, drop "
                                  "that label, or give x_test and y_test)")
        try:
            tr, te = train_test_split(idx, test_size=TEST_FRACTION, stratify=y.numpy(), random_state=SPLIT_SEED)
        except ValueError as e:
            raise RemovalNetError(f"{ref}: cannot split {len(y)} samples into train/test ({e})") from e
        tr.sort()
        te.sort()
        splits = {"train": (x[tr], y[tr]), "test": (x[te], y[te])}
    k = int(max(int(s[1].max()) for s in splits.values() if len(s[1])) + 1)
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else [str(i) for i in range(k)]
    if len(classes) < k:
        raise RemovalNetError(f"{ref}: labels go up to {k - 1} but 'classes' names {len(classes)} classes")
    return classes, splits


# -------------------------------------------------------------------------------------------------- entry
_MIN_STD = 1e-3   # the smallest std a normalisation divides by


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _few(values, show: int = 5) -> str:
    """``3, 4, 5, 6, 7, ... (999998 in all)``: a few of many values."""
    values = [str(v) for v in values]
    return ", ".join(values[:show]) + (f", ... ({len(values)} in all)" if len(values) > show else "")


def _check_classes(ref: str, kind: str, classes: list[str], splits: dict, test: str) -> None:
    """Every class has training images (else the model gets a class it never sees: refused, which bounds the
    labels of an npz by its samples); a class without test images is warned of (accuracy leaves it out)."""
    for split, (_, y) in splits.items():
        empty = np.flatnonzero(np.bincount(y.numpy(), minlength=len(classes)) == 0)
        if not empty.size:
            continue
        names = [classes[i] for i in empty]
        if kind == "folder":
            where = split if split == "train" else test
            what = f"class folder(s) {_few(f'{where}/{c}/' for c in names)} hold no image"
        else:
            what = (f"{'y' if split == 'train' else 'y_test'} has no sample of label(s) {_few(empty)}"
                    + (f" (labels must be 0..K-1, here K = {len(classes)})" if split == "train" else ""))
        if split == "train":
            raise RemovalNetError(f"{ref}: {what}: the model would get classes it never sees in training")
        _warn(f"{ref}: {what}: test accuracy leaves those classes out")


def _stats(x: torch.Tensor, clamp: float = _MIN_STD) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.to(torch.float64)
    if x.dtype == torch.uint8:
        xf = xf / 255.0
    flat = xf.transpose(0, 1).reshape(x.shape[1], -1)
    return tuple(round(float(v), 4) for v in flat.mean(1)), tuple(round(max(float(v), clamp), 4) for v in flat.std(1))


def given_stats(ref: str, opts: dict[str, Any], in_chans: int, mean: tuple[float, ...], std: tuple[float, ...]
                ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)``: the ``mean``/``std`` options where given (one value, or one per channel), else the
    defaults ``mean``/``std``."""
    out = []
    for key, default in (("mean", mean), ("std", std)):
        given = opts.get(key)
        if given is not None:
            if len(given) == 1:
                given = given * in_chans
            if len(given) != in_chans:
                raise RemovalNetError(f"{ref}: {key} needs 1 or {in_chans} values, got {len(given)}")
            if key == "std" and min(given) <= 0:
                raise RemovalNetError(f"{ref}: std must be positive")
        out.append(tuple(given) if given is not None else tuple(default))
    return out[0], out[1]


@functools.lru_cache(maxsize=8)
def _resolve(ref: str, where: str, mtime: float) -> tuple[DatasetInfo, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    kind, path, opts = _parse(ref)
    if kind == "folder":
        dirs = _split_dirs(ref, path)
        splits, names = {}, {}
        channels = opts.get("channels")
        for split, d in dirs.items():      # test images get the training images' channels
            classes, x, y = _read_folder(ref, d, opts.get("size"), channels)
            channels = int(x.shape[1])
            names[split] = classes
            splits[split] = (x, y)
        if names["train"] != names["test"]:
            only = sorted(set(names["train"]) ^ set(names["test"]))
            raise RemovalNetError(f"{ref}: train/ and {dirs['test'].name}/ must have the same class folders "
                                  f"(they differ in {', '.join(only[:5])})")
        if splits["test"][0].shape[2:] != splits["train"][0].shape[2:]:
            raise RemovalNetError(f"{ref}: train images are {tuple(splits['train'][0].shape[2:])}, test images "
                                  f"{tuple(splits['test'][0].shape[2:])}; give one size: ?size=N")
        classes = names["train"]
    else:
        classes, splits = _read_npz(ref, path)
        if opts.get("size") is None and splits["train"][0].shape[2] != splits["train"][0].shape[3]:
            raise RemovalNetError(f"{ref}: images are not square; give a size: ?size=N")
    if len(classes) < 2:
        raise RemovalNetError(f"{ref}: {len(classes)} class(es) found; a classifier needs at least 2")
    x_train = splits["train"][0]
    if len(x_train) == 0 or len(splits["test"][0]) == 0:
        raise RemovalNetError(f"{ref}: the train and test splits must both hold images")
    _check_classes(ref, kind, classes, splits, dirs["test"].name if kind == "folder" else "test")
    in_chans = opts.get("channels") or int(x_train.shape[1])
    mean, std = _stats(x_train)
    flat = [c for c, v in enumerate(_stats(x_train, clamp=0.0)[1]) if v < _MIN_STD]
    if flat and opts.get("std") is None:
        _warn(f"{ref}: the training images are constant in channel(s) {', '.join(map(str, flat))} (std 0): a "
              f"model learns nothing there, and --normalize data divides by a std clamped to {_MIN_STD}")
    if in_chans != x_train.shape[1]:     # npz with channels=...: statistics of the converted images
        mean, std = _stats(ImageAdapter(in_chans, int(x_train.shape[2])).adapt(to_float(x_train)))
    opts["mean"], opts["std"] = given_stats(ref, opts, in_chans, mean, std)
    info = DatasetInfo(
        name=ref, num_classes=len(classes), in_chans=in_chans, input_size=opts.get("size") or int(x_train.shape[2]),
        mean=opts["mean"], std=opts["std"],
        description=f"{kind} dataset {path} ({len(x_train)} train / {len(splits['test'][0])} test images, "
                    f"{len(classes)} classes)",
        where=str(path), classes=tuple(classes))
    return info, splits


def data_ref_entry(ref: str):
    """``(info, loader)`` of a ``folder:``/``npz:`` reference, in the form of the dataset registry."""
    _, path, _ = _parse(ref)
    mtime = path.stat().st_mtime if path.exists() else 0.0
    for sub in ("train", "test", "val", "valid"):
        if (path / sub).exists():
            mtime = max(mtime, (path / sub).stat().st_mtime)
    info, splits = _resolve(ref, str(path), mtime)   # the resolved path: a relative ref moves with the cwd

    def load(info: DatasetInfo, split: str, root: Path | None, *, in_chans: int, input_size: int,
             download: bool) -> TensorImageDataset:
        x, y = splits[split]
        return TensorImageDataset(x, y, ImageAdapter(in_chans, input_size), classes=info.classes,
                                  data_key=f"{info.name}:{split}")

    return info, load
