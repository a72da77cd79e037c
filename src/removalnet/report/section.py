"""A report section as data: what a study (or any analysis) shows, rendered by :mod:`.render` in every format."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Section"]


@dataclass
class Section:
    """Tables (title, header, rows of strings), figures (file stem, matplotlib figure), one-line findings
    and the key numbers behind them (JSON-serialisable, for benchmarks)."""
    title: str
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    figures: list[tuple[str, Any]] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
