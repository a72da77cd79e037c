"""A study's report from a run folder, as data (:class:`~removalnet.report.Section`: tables, figures,
findings); :mod:`removalnet.report` renders it in every format."""
from __future__ import annotations

from pathlib import Path

from ..report import Section, TableData, build_table, load_results
from .base import create_study

__all__ = ["build_study_report"]


def build_study_report(run_dir: str | Path, rule=None, td: TableData | None = None) -> Section | None:
    """The study's tables and figures for a run folder (None when the run's spec has no study); ``td``: the
    run's Table 1 data when the caller has it already (else built with ``rule``)."""
    spec, rows = load_results(run_dir)
    if not spec.get("study"):
        return None
    study = create_study(**spec["study"])
    td = td if td is not None else build_table(run_dir, rule=rule)
    rep = study.report(spec, rows, td, Path(run_dir))
    if td.degenerate:   # a metric without evidence is left out of the study's tables: say so, and why
        by_why: dict[str, list[str]] = {}
        for m in td.degenerate:
            by_why.setdefault(td.degenerate_why.get(m, "degenerate"), []).append(m)
        rep.findings.insert(0, "Degenerate (no evidence, not shown): "
                            + "; ".join(f"{', '.join(ms)} ({why})" for why, ms in by_why.items()))
    return rep
