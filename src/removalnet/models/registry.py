"""Model registry in the style of timm: ``@register_model`` and ``create_model(name, ...)``."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from ..registry import Registry, first_line
from ..utils import RemovalNetError
from .split import SplitModel

__all__ = ["register_model", "create_model", "list_models", "model_info", "check_model_kwargs", "ModelEntry"]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., SplitModel]
    family: str          # "small" (fast CPU models) or "paper" (torchvision/timm architectures)
    description: str


_REGISTRY: Registry[ModelEntry] = Registry("model")


def register_model(name: str, *, family: str, description: str = "") -> Callable:
    """Register a builder ``fn(num_classes, in_chans, input_size, **kwargs) -> SplitModel``."""
    def deco(fn: Callable[..., SplitModel]) -> Callable[..., SplitModel]:
        _REGISTRY.add(name, ModelEntry(name, fn, family, description or first_line(fn.__doc__)))
        return fn
    return deco


def list_models(family: str | None = None) -> list[str]:
    return [n for n, e in _REGISTRY.items() if family is None or e.family == family]


def model_info(name: str) -> ModelEntry:
    return _REGISTRY.get(name)


_BUILD_ARGS = ("num_classes", "in_chans", "input_size", "mean", "std")


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Validate an architecture's options against its builder's signature: known names only, and an
    option whose default is an integer (``width``, ``depth``) takes an integer >= 1. A model reference
    (``file.py:Factory``, ...) takes no options but ``split_after``."""
    if isinstance(name, str) and ":" in name and name not in _REGISTRY:
        unknown = sorted(set(kwargs or {}) - {"split_after"})
        if unknown:
            raise RemovalNetError(f"{name} takes no option(s) {', '.join(unknown)}")
        return
    entry = model_info(name)
    if not isinstance(kwargs, dict):
        raise RemovalNetError(f"the options of model {name!r} must be a mapping, got {kwargs!r}")
    params = inspect.signature(entry.fn).parameters
    options = {k: p for k, p in params.items() if k not in _BUILD_ARGS and p.kind != p.VAR_KEYWORD}
    for k, v in kwargs.items():
        if k in _BUILD_ARGS:
            raise RemovalNetError(f"model option {k!r} is set from the dataset, not from the model's options")
        p = options.get(k)
        if p is None:
            raise RemovalNetError(f"model {name!r} has no option {k!r}"
                                  + (f"; options: {', '.join(options)}" if options else " (it takes none)"))
        if isinstance(p.default, int) and not isinstance(p.default, bool):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RemovalNetError(f"model option {k}={v!r} of {name!r}: must be an integer >= 1")


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, input_size: int = 32, *,
                 mean=None, std=None, **kwargs) -> SplitModel:
    """Build a registered architecture as a :class:`SplitModel`.

    ``input_size`` picks the variant: inputs up to 64 pixels get the small-input variant of the paper's
    architectures (first convolution shrunk, no early downsampling), larger inputs the ImageNet-size one.
    ``mean``/``std`` set the model's input normalisation (the dataset's). ``removalnet.models.create_model``
    (:func:`~removalnet.models.refs.create_model`) also takes model references.
    """
    entry = model_info(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise RemovalNetError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if in_chans not in (1, 3):
        raise RemovalNetError(f"in_chans must be 1 or 3, got {in_chans!r}")
    if not isinstance(input_size, int) or input_size < 8:
        raise RemovalNetError(f"input_size must be an integer >= 8, got {input_size!r}")
    check_model_kwargs(name, kwargs)
    model = entry.fn(num_classes=num_classes, in_chans=in_chans, input_size=input_size,
                     mean=mean, std=std, **kwargs)
    model.arch = name
    model.build_config = dict(arch=name, num_classes=num_classes, in_chans=in_chans,
                              input_size=input_size, kwargs=dict(kwargs))
    return model
