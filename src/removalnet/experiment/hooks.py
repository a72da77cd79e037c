"""What a layer above the experiment runner plugs into it: a spec section and a job kind.

The runner knows the jobs of Table 1 (train, attack, fingerprint, score). A higher layer (the studies)
adds a kind of spec by registering

* a :class:`SpecSection` under its spec key (``study``): ``expand(section, raw_spec)`` validates the section
  and returns it normalised together with the attack rows it adds to the spec; ``plan(spec, jobs)`` returns
  its extra jobs as ``(kind, name, config, names of the jobs they depend on)``;
* a job kind (``register_job_kind("study", run)``): ``run(job, run_dir)`` does one such job and returns its
  metrics (the same contract as the built-in kinds, so it runs on any executor).

Nothing in ``experiment`` imports the layers that register here. The packages that do are named in
:data:`PLUGINS` and imported by the first lookup (so a study spec loads, and a study job runs in a Ray worker,
wherever the runner is used, while ``import removalnet`` stays light).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..registry import Registry

__all__ = ["SpecSection", "register_spec_section", "spec_section", "register_job_kind", "job_kind", "job_kinds", "spec_sections"]


@dataclass(frozen=True)
class SpecSection:
    key: str
    expand: Callable[[Any, dict[str, Any]], tuple[dict[str, Any], list[dict[str, Any]]]]
    plan: Callable[[Any, dict[str, Any]], list[tuple[str, str, dict[str, Any], list[str]]]]
    #: the section at the smoke scale (``--smoke``: same code path, every size shrunk), or None
    smoke: Callable[[dict[str, Any]], dict[str, Any]] | None = None


_SECTIONS: Registry[SpecSection] = Registry("spec section")
_KINDS: Registry[Callable[..., dict[str, Any]]] = Registry("job kind")

#: the packages that register a spec section or a job kind here, imported on the first lookup
PLUGINS = ("removalnet.studies",)


def _load_plugins() -> None:
    for name in PLUGINS:
        importlib.import_module(name)


def register_spec_section(section: SpecSection) -> SpecSection:
    return _SECTIONS.add(section.key, section)


def spec_section(key: str) -> SpecSection:
    _load_plugins()
    return _SECTIONS.get(key)


def spec_sections() -> list[str]:
    _load_plugins()
    return _SECTIONS.names()


def register_job_kind(kind: str, run: Callable[[dict[str, Any], Path], dict[str, Any]]) -> Callable:
    """``run(job, run_dir, **context) -> metrics`` does one job of ``kind``."""
    return _KINDS.add(kind, run)


def job_kind(kind: str) -> Callable[..., dict[str, Any]]:
    _load_plugins()
    return _KINDS.get(kind)


def job_kinds() -> list[str]:
    _load_plugins()
    return _KINDS.names()
