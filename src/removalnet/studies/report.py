"""A study's report from a run folder: tables as Markdown, CSV and LaTeX, figures as PNG and PDF, and the
sections the HTML report embeds."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ..report.render import _csv, _md, _tex
from ..utils import atomic_write_bytes
from .base import StudyReport, create_study, save_figure

__all__ = ["build_study_report", "write_study_report", "study_markdown", "study_sections"]


def build_study_report(run_dir: str | Path, rule: str | None = None, td=None) -> StudyReport | None:
    """The study's tables and figures for a run folder (None when the run's spec has no study); ``td``: the
    run's Table 1 data when the caller has it already (else built with ``rule``)."""
    from ..report.table import build_table, load_results

    spec, rows = load_results(run_dir)
    if not spec.get("study"):
        return None
    study = create_study(**spec["study"])
    td = td if td is not None else build_table(run_dir, rule=rule)
    return study.report(spec, rows, td, Path(run_dir))


def study_markdown(rep: StudyReport, figure_files: dict[str, str] | None = None) -> str:
    parts = [f"## {rep.title}", ""]
    if rep.findings:
        parts += [f"- {f}" for f in rep.findings] + [""]
    for title, head, rows in rep.tables:
        parts += [f"### {title}", "", _md(head, rows), ""]
    for stem, _ in rep.figures:
        if figure_files and stem in figure_files:
            parts += [f"![{stem}]({figure_files[stem]})", ""]
    return "\n".join(parts)


def write_study_report(rep: StudyReport, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``<stem>.md`` (findings and tables), ``<stem>-<i>.csv/.tex`` per table and each figure as
    PNG and PDF into ``out_dir``; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    files = {}
    for fstem, fig in rep.figures:
        paths += save_figure(fig, out_dir, fstem)
        files[fstem] = f"{fstem}.png"
    for i, (_, head, rows) in enumerate(rep.tables, start=1):
        for ext, text in (("csv", _csv(head, rows)), ("tex", _tex(head, rows))):
            p = out_dir / f"{stem}-table{i}.{ext}"
            atomic_write_bytes(p, text.encode())
            paths.append(p)
    p = out_dir / f"{stem}.md"
    atomic_write_bytes(p, study_markdown(rep, files).encode())
    paths.append(p)
    return paths


def study_sections(rep: StudyReport) -> list[tuple[str, str]]:
    """(title, HTML) sections for the self-contained HTML report, figures embedded as PNG."""
    from ..report.render import _html_table

    body = []
    if rep.findings:
        body.append("<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in rep.findings) + "</ul>")
    for title, head, rows in rep.tables:
        body.append(f"<h3>{html.escape(title)}</h3>" + _html_table(head, rows))
    for stem, fig in rep.figures:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        body.append(f'<img alt="{html.escape(stem)}" src="data:image/png;base64,'
                    f'{base64.b64encode(buf.getvalue()).decode()}">')
    return [(rep.title, "".join(body))]


def close_figures(rep: StudyReport) -> None:
    import matplotlib.pyplot as plt
    for _, fig in rep.figures:
        plt.close(fig)
