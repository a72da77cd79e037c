"""Dataset registry in the style of the model registry: ``@register_dataset`` and ``load_dataset(name, ...)``.

Every registered dataset yields ``(x, y)`` with ``x`` a float32 ``C x H x W`` tensor in [0, 1] and ``y`` an int.
Normalisation is not applied here: models normalise their input internally, with the dataset's
``info.mean``/``info.std``.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from ..registry import Registry
from ..utils import RemovalNetError

__all__ = ["DatasetInfo", "DataMissingError", "register_dataset", "list_datasets", "get_dataset_info",
           "load_dataset", "default_root", "DATA_ROOT_ENV"]

DATA_ROOT_ENV = "REMOVALNET_DATA_ROOT"


class DataMissingError(RemovalNetError):
    """The files of a dataset are not where they are expected; the message says where and how to get them."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, and where its files are expected.

    ``input_size``/``in_chans`` are the defaults that :func:`load_dataset` produces (the paper's settings);
    ``mean``/``std`` are per-channel statistics of the images in [0, 1], for the model's normalisation.
    ``where`` is a one-line hint of where the files are expected and how to get them.
    """
    name: str
    num_classes: int
    in_chans: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str
    where: str
    splits: tuple[str, ...] = ("train", "test")
    classes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"dataset {self.name!r}: mean/std need {self.in_chans} values")
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"dataset {self.name!r}: {len(self.classes)} class names for {self.num_classes} classes")


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    loader: Callable[..., Dataset]
    defaults: dict[str, Any]


_REGISTRY: Registry[_Entry] = Registry("dataset")
_COMMON = ("in_chans", "input_size", "download")


def register_dataset(info: DatasetInfo, **defaults: Any) -> Callable:
    """Register ``loader(info, split, root, *, in_chans, input_size, download, **kw) -> Dataset`` under ``info.name``.

    ``defaults`` are keyword arguments passed to the loader unless the caller overrides them
    (for aliases such as ``celeba-31`` = ``celeba`` with ``attribute=31``). Decorators can be stacked.
    """
    def deco(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
        _REGISTRY.add(info.name, _Entry(info, fn, dict(defaults)))
        return fn
    return deco


def list_datasets() -> list[str]:
    return _REGISTRY.names()


def _entry(name: str) -> _Entry:
    if isinstance(name, str) and name.startswith(("folder:", "npz:")):   # a user's data (data/refs.py)
        from .refs import data_ref_entry  # lazy: refs builds on this registry's DatasetInfo
        info, loader = data_ref_entry(name)
        return _Entry(info, loader, {})
    return _REGISTRY.get(name)


def get_dataset_info(name: str) -> DatasetInfo:
    """The info of a registered dataset, or of a user's ``folder:PATH`` / ``npz:PATH`` (see ``data/refs.py``)."""
    return _entry(name).info


def default_root() -> Path:
    """The data root used when none is given: ``$REMOVALNET_DATA_ROOT``, else ``~/.cache/removalnet/data``."""
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "removalnet" / "data"


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None, *,
                 in_chans: int | None = None, input_size: int | None = None, download: bool = False,
                 **kw: Any) -> Dataset:
    """Load a registered dataset split as ``(x float32 CxHxW in [0,1], y int)`` samples; ``name`` may also be
    a user's ``folder:PATH`` or ``npz:PATH`` (see ``removalnet.data.refs``).

    ``in_chans`` (default ``info.in_chans``): 3 on a grayscale set repeats the channel, 1 on a colour set
    converts to luminance. ``input_size`` (default ``info.input_size``): images are resized (bilinear,
    antialiased) to ``input_size x input_size``. ``root``: the data root (torchvision layouts; default
    :func:`default_root`). ``download=True`` lets torchvision fetch the files where it can; nothing is
    downloaded otherwise. Extra keywords go to the dataset's loader (e.g. ``attribute`` for CelebA).
    """
    entry = _entry(name)
    info = entry.info
    if split not in info.splits:
        raise RemovalNetError(f"split must be one of {', '.join(info.splits)} for dataset {name!r}, got {split!r}")
    in_chans = info.in_chans if in_chans is None else in_chans
    if in_chans not in (1, 3):
        raise RemovalNetError(f"in_chans must be 1 or 3, got {in_chans!r}")
    input_size = info.input_size if input_size is None else input_size
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise RemovalNetError(f"input_size must be a positive integer, got {input_size!r}")
    if not isinstance(download, bool):
        raise RemovalNetError(f"download must be True or False, got {download!r}")
    kwargs = {**entry.defaults, **kw}
    params = inspect.signature(entry.loader).parameters
    options = [p for p, v in params.items() if v.kind == v.KEYWORD_ONLY and p not in _COMMON]
    for k in kw:
        if k not in options:
            raise RemovalNetError(f"dataset {name!r} has no option {k!r}"
                                  + (f"; options: {', '.join(options)}" if options else ""))
    return entry.loader(info, split, None if root is None else Path(root).expanduser(),
                        in_chans=in_chans, input_size=input_size, download=download, **kwargs)
