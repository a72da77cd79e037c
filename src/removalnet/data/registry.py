"""Dataset registry in the style of the model registry: ``@register_dataset`` and ``load_dataset(name, ...)``.

Every registered dataset yields ``(x, y)`` with ``x`` a float32 ``C x H x W`` tensor in [0, 1] and ``y`` an int.
Normalisation is not applied here: models normalise their input internally, with the dataset's
``info.mean``/``info.std``.

A registered name takes the options of a user's data reference (``data/refs.py``) after a ``?``:
``fashion-mnist?size=32&channels=3`` is Fashion-MNIST as 3-channel 32 x 32 images, usable wherever a dataset
name is (a spec's ``dataset``, ``--data``), so every job of a run sees that size and those channels. Its
``mean``/``std`` are the dataset's, repeated for 1 -> 3 channels and luminance-weighted for 3 -> 1 (the std
then an approximation; give ``mean=...&std=...`` to set them). It is the same data as the plain name
(``data_key``), so disjointness checks hold across both.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from ..registry import Registry
from ..utils import RemovalNetError
from .info import DatasetInfo
from .refs import data_ref_entry, given_stats, is_data_ref, parse_options

__all__ = ["DatasetInfo", "DataMissingError", "register_dataset", "list_datasets", "get_dataset_info",
           "load_dataset", "default_root", "DATA_ROOT_ENV"]

DATA_ROOT_ENV = "REMOVALNET_DATA_ROOT"


class DataMissingError(RemovalNetError):
    """The files of a dataset are not where they are expected; the message says where and how to get them."""


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    loader: Callable[..., Dataset]
    defaults: dict[str, Any]
    loader_info: DatasetInfo | None = None   # the registered dataset's info, for a name with options


#: luminance weights of a colour image read as grayscale (torchvision's rgb_to_grayscale)
_LUMA = (0.2989, 0.587, 0.114)


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
    if is_data_ref(name):   # a user's data (data/refs.py)
        info, loader = data_ref_entry(name)
        return _Entry(info, loader, {})
    if isinstance(name, str) and "?" in name:   # a registered dataset with options: NAME?size=N&channels=C
        base, _, query = name.partition("?")
        entry = _REGISTRY.get(base)
        return _Entry(_with_options(name, entry.info, parse_options(name, query)), entry.loader, entry.defaults,
                      entry.info)
    return _REGISTRY.get(name)


def _with_options(name: str, info: DatasetInfo, opts: dict[str, Any]) -> DatasetInfo:
    """The info of ``info``'s dataset read with the options ``opts`` (size, channels, mean, std)."""
    chans = opts.get("channels", info.in_chans)
    mean, std = info.mean, info.std
    if chans == 3 and info.in_chans == 1:
        mean, std = mean * 3, std * 3
    elif chans == 1 and info.in_chans == 3:
        mean, std = ((round(sum(w * v for w, v in zip(_LUMA, vals)), 4),) for vals in (mean, std))
    mean, std = given_stats(name, opts, chans, mean, std)
    return replace(info, name=name, in_chans=chans, input_size=opts.get("size", info.input_size), mean=mean,
                   std=std, description=f"{info.description}; read as {chans}-channel "
                                        f"{opts.get('size', info.input_size)} px images")


def get_dataset_info(name: str) -> DatasetInfo:
    """The info of a registered dataset (optionally with options, ``fashion-mnist?size=32&channels=3``), or of a
    user's ``folder:PATH`` / ``npz:PATH`` (see ``data/refs.py``)."""
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
    return entry.loader(entry.loader_info or info, split, None if root is None else Path(root).expanduser(),
                        in_chans=in_chans, input_size=input_size, download=download, **kwargs)
