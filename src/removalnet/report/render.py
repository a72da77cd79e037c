"""The one renderer: a :class:`TableData` (Table 1) and report :class:`Section` s (the studies') as Markdown,
CSV, LaTeX or a self-contained HTML page (with the trade-off plot of the paper's Fig. 4/5: fidelity against
normalised distance over RemovalNet's checkpoints); a section's tables as CSV/LaTeX files and its figures as
PNG/PDF (:func:`write_sections`)."""
from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from ..utils import atomic_path, atomic_write_bytes, package_versions
from ..verify import all_metrics
from .confidence import confidence_section
from .explain import legend, limitations
from .section import Section
from .table import TableData

__all__ = ["table_cells", "copy_count_cells", "to_markdown", "to_csv", "to_latex", "to_html", "render",
           "tradeoff_figure", "md_table", "csv_table", "tex_table", "html_table", "section_markdown",
           "section_html", "save_figure", "write_sections", "close_figures", "METRIC_NOTES", "provenance"]

FORMATS = ("md", "csv", "tex", "html")

#: what each metric compares, in one line (direction: which way means "copy")
METRIC_NOTES = {
    "DJ-LOD": "DeepJudge: L2 distance of output probabilities on adversarial test cases; low = copy",
    "DJ-LAD": "DeepJudge: distance of a layer's activations on adversarial test cases; low = copy",
    "DJ-NOD": "DeepJudge: distance of neuron outputs on the test seeds; low = copy",
    "DJ-NAD": "DeepJudge: distance of neuron activation patterns; low = copy",
    "DJ-RobD": "DeepJudge: accuracy gap on the victim's adversarial examples; low = copy",
    "DJ-JSD": "DeepJudge: Jensen-Shannon distance of outputs on adversarial examples; low = copy",
    "DJA-LOD": "DeepJudge LOD after matching the suspect's channels to the victim's; low = copy",
    "DJA-LAD": "DeepJudge LAD after matching the suspect's channels to the victim's; low = copy",
    "DJS-LOD": "DeepJudge LOD on per-neuron standardised activations, channels matched; low = copy",
    "DJS-LAD": "DeepJudge LAD on per-neuron standardised activations, channels matched; low = copy",
    "IPG-MR": "IPGuard: share of near-boundary points labelled as the victim labels them; high = copy",
    "MD-DDV": "ModelDiff: cosine similarity of decision-distance vectors; high = copy",
    "MD-PGD-DDV": "ModelDiff variant on PGD pairs: similarity of decision-distance vectors; high = copy",
    "SAC": "SAC: distance of the models' output-correlation matrices; low = copy",
    "ZEST-L2": "ZEST: L2 distance of LIME signatures on reference images; low = copy",
    "ZEST-Cos": "ZEST: cosine distance of LIME signatures; low = copy",
}


def _fmt(v: float, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _ms(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    if not values:
        return "-"
    arr = np.asarray(values, dtype=float) * scale
    std = arr.std(ddof=1) if arr.size > 1 else 0.0
    return f"{arr.mean():.{digits}f}±{std:.{digits}f}"


def table_cells(td: TableData) -> tuple[list[str], list[list[str]]]:
    """Header and rows of Table 1 as strings."""
    known = all_metrics()
    head = ["Attack", "Fidelity (%)", "Drop"]
    head += [f"{m} ({'↑' if known[m].direction == 'distance' else '↓'})" for m in td.metrics]
    head += [f"{m} (degenerate: excluded)" for m in td.degenerate]
    head += ["Ownership?"]
    out = []
    for row in td.rows:
        acc = row["accuracy"]
        drop = (td.victim_accuracy - float(np.mean(acc))) * 100 if acc and td.victim_accuracy is not None else None
        cells = [row["label"], _ms(acc, 100, 2), _fmt(drop, 2)]
        cells += [_ms(row["values"][m]) for m in td.metrics]
        cells += ["degenerate" for _ in td.degenerate]
        k, n = sum(row["owned"]), len(row["owned"])
        own = f"{'Yes' if n and k > n / 2 else 'No'} ({k}/{n})" if td.taus and n else "-"
        if row.get("collapsed"):   # a useless surrogate is no successful evasion
            own += f", collapsed (> {td.margin:g} points lost)"
        if row.get("status"):      # nor is a surrogate that is its starting point
            own += f", {row['status']} ({row['reduced_to']})"
        cells.append(own)
        out.append(cells)
    out.append(["τ", "-", "-"] + [_fmt(td.taus.get(m)) for m in td.metrics] + ["degenerate" for _ in td.degenerate]
               + ["-"])
    return head, out


def copy_count_cells(td: TableData) -> tuple[list[str], list[list[str]]]:
    """How many seeds each metric calls a copy, per row."""
    head = ["Attack"] + td.metrics + [f"{m} (degenerate: excluded)" for m in td.degenerate]
    rows = []
    for row in td.rows:
        rows.append([row["label"] + (" (collapsed)" if row.get("collapsed") else "")
                     + (f" ({row['status']})" if row.get("status") else "")]
                    + [f"{sum(row['copies'].get(m, []))}/{len(row['copies'].get(m, []))}" for m in td.metrics]
                    + ["degenerate" for _ in td.degenerate])
    return head, rows


def rule_cells(td: TableData) -> tuple[list[str], list[list[str]]]:
    head = ["Rule", "Quantity"] + td.metrics + [f"{m} (degenerate: excluded)" for m in td.degenerate]
    rows = []
    flags = ["degenerate" for _ in td.degenerate]
    for rule, d in td.rules.items():
        rows.append([rule, "τ"] + [_fmt(d["taus"][m]) for m in td.metrics] + flags)
        rows.append([rule, "false-positive rate (negatives)"] + [_fmt(d["false_positive_rate"][m], 2) for m in td.metrics]
                    + flags)
        rows.append([rule, "detection rate (FT/WP/Distill)"] + [_fmt(d["baseline_detection_rate"][m], 2)
                                                                 for m in td.metrics] + flags)
    return head, rows


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _intro(td: TableData) -> str:
    acc = f"{td.victim_accuracy * 100:.2f}%" if td.victim_accuracy is not None else "n/a"
    text = (f"Experiment `{td.name}`; victim accuracy {acc}; thresholds: rule `{td.rule.describe()}` over "
            f"{min((len(v) for v in td.references.values()), default=0)} reference models. "
            f"Ownership: a seed counts when the majority of {', '.join(td.pool)} say copy.")
    if td.degenerate:
        text += (" Degenerate metrics, flagged and excluded from the votes: "
                 + "; ".join(f"{m} ({w})" for m, w in td.degenerate_why.items()) + ".")
    if any(r.get("collapsed") for r in td.rows):
        text += (f" A row marked collapsed lost more than {td.margin:g} accuracy points: it never counts as an "
                 "evasion.")
    return text


def _legend_markdown(td: TableData) -> list[str]:
    """The table explained (report/explain.py), and what the run cannot show, as Markdown lines."""
    parts = ["", "### How to read this table", ""] + [f"- {line}" for line in legend(td)]
    notes = limitations(td)
    if notes:
        parts += ["", "### What this run cannot show", ""] + [f"- {t}" for t in notes.values()]
    return parts


def _inline_html(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def to_markdown(td: TableData) -> str:
    parts = [f"## Table 1: {td.name}", "", _intro(td), "", md_table(*table_cells(td)), "",
             "### Seeds judged a copy, per metric", "", md_table(*copy_count_cells(td))]
    parts += _legend_markdown(td)
    if td.rules:
        parts += ["", "### Threshold rules", "", md_table(*rule_cells(td))]
    conf = confidence_section(td)
    if conf is not None:
        parts += ["", section_markdown(conf).rstrip()]
    if td.failed:
        parts += ["", "### Jobs not done", ""] + [f"- `{f['name']}`: {f['status']} {f['error'] or ''}" for f in td.failed]
    return "\n".join(parts) + "\n"


def csv_table(head: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    w.writerows(rows)
    return buf.getvalue()


def to_csv(td: TableData) -> str:
    """Table 1, then each table of its confidence section after a blank line and a title row."""
    conf = confidence_section(td)
    extra = "".join("\n" + csv_table([title], []) + csv_table(head, rows)
                    for title, head, rows in (conf.tables if conf else []))
    return csv_table(*table_cells(td)) + extra


def _tex_escape(s: str) -> str:
    return (s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
            .replace("#", r"\#").replace("±", r"$\pm$").replace("τ", r"$\tau$").replace("↑", r"$\uparrow$")
            .replace("↓", r"$\downarrow$"))


def tex_table(head: list[str], rows: list[list[str]], rule_before_last: bool = False) -> str:
    """A booktabs tabular of string cells (a midrule before the last row when ``rule_before_last``)."""
    lines = [r"\begin{tabular}{" + "l" + "c" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(_tex_escape(h) for h in head) + r" \\", r"\midrule"]
    for i, r in enumerate(rows):
        if rule_before_last and i == len(rows) - 1:
            lines.append(r"\midrule")
        lines.append(" & ".join(_tex_escape(c) for c in r) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_latex(td: TableData) -> str:
    """Table 1 (the tau row below a rule), then each table of its confidence section after a comment line."""
    conf = confidence_section(td)
    extra = "".join(f"\n% {title}\n" + tex_table(head, rows) for title, head, rows in (conf.tables if conf else []))
    return tex_table(*table_cells(td), rule_before_last=True) + extra


def tradeoff_figure(td: TableData):
    """Fidelity against distance normalised by tau (x = value / tau; > 1 for a distance, < 1 for a
    similarity means 'not a copy'), one panel per pool metric: RemovalNet's checkpoints as lines over
    t = 0..T (mean over seeds), every other row as a point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in td.pool if m in td.taus] or [m for m in td.metrics if m in td.taus]
    if not metrics:
        return None
    cols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 3.0 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        tau = td.taus[m] or 1e-12
        for label, by_t in td.checkpoints.items():
            ts = sorted(by_t)
            xs = [np.mean(by_t[t][m]) / tau for t in ts if m in by_t[t]]
            ys = [np.mean(by_t[t]["accuracy"]) * 100 for t in ts if m in by_t[t]]
            line, = ax.plot(xs, ys, "-o", ms=3, label=f"{label} (t=0..{ts[-1]})")
            tt = [t for t in ts if m in by_t[t]]
            for t, x, y in zip(tt, xs, ys):   # each checkpoint labelled by its iteration (first, last, every 2nd)
                if t in (tt[0], tt[-1]) or tt.index(t) % 2 == 0:
                    ax.annotate(f"t={t}", (x, y), fontsize=5, color=line.get_color(), xytext=(2, 2),
                                textcoords="offset points")
        for row in td.rows:
            if row["label"] in td.checkpoints or not row["values"].get(m):
                continue
            ax.scatter(np.mean(row["values"][m]) / tau, np.mean(row["accuracy"]) * 100, s=18, label=row["label"])
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("value / τ", fontsize=8)
        ax.set_ylabel("fidelity (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _cell_class(c: str) -> str:
    """'copy' for a cell that says copy (Ownership Yes, k/n with k > n/2), 'degenerate' for a flagged one."""
    if c.startswith("Yes ("):
        return ' class="copy"'
    k, sep, n = c.partition("/")
    if sep and k.isdigit() and n.isdigit() and int(n) and int(k) > int(n) / 2:
        return ' class="copy"'
    return ' class="degenerate"' if c == "degenerate" else ""


def html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td{_cell_class(c)}>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def provenance() -> dict[str, str]:
    """Package versions, machine and date, as a report records them."""
    return {"versions": ", ".join(f"{k} {v}" for k, v in package_versions().items()),
            "machine": f"{platform.node()} ({platform.machine()}, {platform.system()} {platform.release()}, "
                       f"{os.cpu_count()} CPUs)",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _settings_html(td: TableData) -> str:
    """The metrics explained, and the run's settings, data sizes, reference accuracies, versions, machine, date."""
    spec = td.spec or {}
    notes = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(METRIC_NOTES.get(m, 'see docs/verifiers.md'))}</li>"
                    for m in td.metrics + td.degenerate)
    sizes = ", ".join(f"{a.get('label')}: " + (f"{a['count']} samples" if a.get("count") is not None
                                               else f"{a.get('fraction')} of the training set")
                      for a in spec.get("attacks", []))
    items = {"dataset": spec.get("dataset"), "victim": (spec.get("victim") or {}).get("arch"),
             "seeds": spec.get("seeds"), "verifier test samples": spec.get("verifier_count") or "the whole test split",
             "substitute sets": sizes, "threshold rule": td.rule.describe(),
             "reference accuracies": ", ".join(f"{100 * a:.2f}%" for a in td.references_accuracy),
             "collapse margin": f"{td.margin:g} accuracy points",
             "verifiers": ", ".join(f"{k} {v}" for k, v in (spec.get("verifiers") or {}).items()),
             **provenance()}
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items.items())
    return (f"<h2>Metrics</h2><p>Red cells say copy.</p><ul>{notes}</ul>"
            f"<h2>Settings</h2><table class='settings'>{rows}</table>")


def to_html(td: TableData, extra_sections: list[tuple[str, str]] = ()) -> str:
    """A self-contained page: tables, the trade-off plot as an embedded PNG, and any extra sections."""
    fig = tradeoff_figure(td)
    img = ""
    if fig is not None:
        import matplotlib.pyplot as plt
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        img = (f'<h2>Trade-off (paper Fig. 4/5)</h2><img alt="fidelity against normalised distance" '
               f'src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">')
    body = [f"<h1>removalnet: {html.escape(td.name)}</h1>", f"<p>{_inline_html(_intro(td))}</p>",
            "<h2>Table 1</h2>", html_table(*table_cells(td)),
            "<h2>Seeds judged a copy, per metric</h2>", html_table(*copy_count_cells(td))]
    body += ["<h2>How to read this table</h2><ul>"
             + "".join(f"<li>{_inline_html(line)}</li>" for line in legend(td)) + "</ul>"]
    notes = limitations(td)
    if notes:
        body += ["<h2>What this run cannot show</h2><ul>"
                 + "".join(f"<li>{html.escape(t)}</li>" for t in notes.values()) + "</ul>"]
    if td.rules:
        body += ["<h2>Threshold rules</h2>", html_table(*rule_cells(td))]
    conf = confidence_section(td)
    if conf is not None:
        body += [f"<h2>{html.escape(conf.title)}</h2>", section_html(conf)[1]]
    body.append(img)
    for title, content in extra_sections:
        body += [f"<h2>{html.escape(title)}</h2>", content]
    body.append(_settings_html(td))
    if td.failed:
        body += ["<h2>Jobs not done</h2><ul>"] + [
            f"<li><code>{html.escape(f['name'])}</code>: {html.escape(f['status'])} {html.escape(f['error'] or '')}</li>"
            for f in td.failed] + ["</ul>"]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}td.copy{background:#f8c9c4}"
             "td.degenerate{color:#888;font-style:italic}table.settings td{text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(td.name)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def section_markdown(sec: Section, figure_files: dict[str, str] | None = None) -> str:
    """A section as Markdown: findings, tables and (with ``figure_files``: stem -> file) its figures."""
    parts = [f"## {sec.title}", ""]
    if sec.findings:
        parts += [f"- {f}" for f in sec.findings] + [""]
    for title, head, rows in sec.tables:
        parts += [f"### {title}", "", md_table(head, rows), ""]
    for stem, _ in sec.figures:
        if figure_files and stem in figure_files:
            parts += [f"![{stem}]({figure_files[stem]})", ""]
    return "\n".join(parts)


def section_html(sec: Section) -> tuple[str, str]:
    """(title, HTML) of a section for the self-contained page, figures embedded as PNG."""
    body = []
    if sec.findings:
        body.append("<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in sec.findings) + "</ul>")
    for title, head, rows in sec.tables:
        body.append(f"<h3>{html.escape(title)}</h3>" + html_table(head, rows))
    for stem, fig in sec.figures:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        body.append(f'<img alt="{html.escape(stem)}" src="data:image/png;base64,'
                    f'{base64.b64encode(buf.getvalue()).decode()}">')
    return sec.title, "".join(body)


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.pdf`` (atomically); return the paths."""
    paths = []
    for ext in ("png", "pdf"):
        path = Path(out_dir) / f"{stem}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=130, bbox_inches="tight")
        paths.append(path)
    return paths


def write_sections(sections: Sequence[Section], out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``<stem>.md`` (findings and tables of every section), ``<stem>-table<i>.csv/.tex`` per table and each
    figure as PNG and PDF into ``out_dir``; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    files = {}
    for sec in sections:
        for fstem, fig in sec.figures:
            paths += save_figure(fig, out_dir, fstem)
            files[fstem] = f"{fstem}.png"
    tables = [t for sec in sections for t in sec.tables]
    for i, (_, head, rows) in enumerate(tables, start=1):
        for ext, text in (("csv", csv_table(head, rows)), ("tex", tex_table(head, rows))):
            p = out_dir / f"{stem}-table{i}.{ext}"
            atomic_write_bytes(p, text.encode())
            paths.append(p)
    p = out_dir / f"{stem}.md"
    atomic_write_bytes(p, "\n".join(section_markdown(sec, files) for sec in sections).encode())
    paths.append(p)
    return paths


def close_figures(sections: Sequence[Section]) -> None:
    """Release the sections' matplotlib figures."""
    import matplotlib.pyplot as plt  # matplotlib is optional (the 'report' extra)
    for sec in sections:
        for _, fig in sec.figures:
            plt.close(fig)


def render(td: TableData, fmt: str, sections: Sequence[Section] = ()) -> str:
    """Table 1 and ``sections`` (e.g. a study's) in ``fmt``: md (Table 1 when anything was measured, then each
    section), html (one page, figures embedded), csv and tex (Table 1; a section's tables are files, see
    :func:`write_sections`)."""
    if fmt == "md":
        if not sections:
            return to_markdown(td)
        return (to_markdown(td) + "\n" if td.metrics else "") + "\n".join(section_markdown(s) for s in sections)
    if fmt == "csv":
        return to_csv(td)
    if fmt == "tex":
        return to_latex(td)
    if fmt == "html":
        return to_html(td, [section_html(s) for s in sections])
    raise ValueError(fmt)
