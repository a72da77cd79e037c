"""Model registry in the style of timm: ``@register_model`` and ``create_model(name, ...)``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..registry import Registry, first_line
from ..utils import RemovalNetError
from .split import SplitModel

__all__ = ["register_model", "create_model", "list_models", "model_info", "ModelEntry"]


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


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, input_size: int = 32, *,
                 mean=None, std=None, **kwargs) -> SplitModel:
    """Build a registered architecture as a :class:`SplitModel`.

    ``input_size`` picks the variant: inputs up to 64 pixels get the small-input variant of the paper's
    architectures (first convolution shrunk, no early downsampling), larger inputs the ImageNet-size one.
    ``mean``/``std`` set the model's input normalisation (the dataset's).
    """
    entry = model_info(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise RemovalNetError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if in_chans not in (1, 3):
        raise RemovalNetError(f"in_chans must be 1 or 3, got {in_chans!r}")
    if not isinstance(input_size, int) or input_size < 8:
        raise RemovalNetError(f"input_size must be an integer >= 8, got {input_size!r}")
    model = entry.fn(num_classes=num_classes, in_chans=in_chans, input_size=input_size,
                     mean=mean, std=std, **kwargs)
    model.arch = name
    model.build_config = dict(arch=name, num_classes=num_classes, in_chans=in_chans,
                              input_size=input_size, kwargs=dict(kwargs))
    return model
