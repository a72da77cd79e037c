"""The one registry helper behind every registry of the package (attacks, verifiers, studies, models,
datasets), timm style: a name maps to one entry; registering a name twice is an error; asking for an unknown
name raises :class:`RemovalNetError` listing the known ones. :func:`import_modules` imports a package's list of
plugin modules (each registers itself) and lets any import error through, so a broken module fails loudly.
"""
from __future__ import annotations

import importlib
from typing import Generic, Iterator, TypeVar

from .utils import RemovalNetError

__all__ = ["Registry", "import_modules", "first_line"]

T = TypeVar("T")


def first_line(doc: str | None) -> str:
    """The first non-empty line of a docstring ('' without one)."""
    return next((line.strip() for line in (doc or "").strip().splitlines() if line.strip()), "")


class Registry(Generic[T]):
    """Names to entries of one kind (``kind`` names it in messages: "attack", "verifier", ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, *, same=None) -> T:
        """Register ``entry`` under ``name``; a second, different entry raises ValueError. ``same(old, new)``
        tells when a repeated registration is the same entry (default: identity), e.g. a module re-imported."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name")
        if name in self._entries:
            old = self._entries[name]
            if not (old is entry or (same is not None and same(old, entry))):
                raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if not isinstance(name, str) or name not in self._entries:
            raise RemovalNetError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def import_modules(package: str, modules: tuple[str, ...] | list[str]) -> None:
    """Import ``package.<m>`` for every ``m`` of ``modules`` (each registers its entries); errors propagate."""
    for m in modules:
        importlib.import_module(f"{package}.{m}")
