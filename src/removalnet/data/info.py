""":class:`DatasetInfo`: what a model needs to know about a dataset. Its own module so that the registry
(``registry.py``) and a user's data references (``refs.py``) both build on it without importing each other."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DatasetInfo"]


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
