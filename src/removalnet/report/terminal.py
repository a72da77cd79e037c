"""Table 1 for a terminal: plain aligned columns that fit its width (wide tables are split into groups of
columns, each repeating the row labels), the intro and the legend wrapped, then the ownership verdicts with
their confidence (report/confidence.py). The full tables are in the
Markdown / HTML files; this is what ``removalnet demo`` prints."""
from __future__ import annotations

import shutil
import textwrap

from .confidence import confidence_section
from .explain import legend, limitations
from .render import _intro, copy_count_cells, table_cells
from .table import TableData

__all__ = ["text_table", "to_terminal"]


def text_table(head: list[str], rows: list[list[str]], width: int = 100) -> str:
    """``head`` and ``rows`` as aligned plain-text columns no wider than ``width``: columns that do not fit
    go to a further block that repeats the first column."""
    cols = list(zip(head, *rows)) if rows else [(h,) for h in head]
    widths = [max(len(c) for c in col) for col in cols]
    blocks, cur, used = [], [], widths[0]
    for i in range(1, len(cols)):
        if cur and used + 2 + widths[i] > width:
            blocks.append(cur)
            cur, used = [], widths[0]
        cur.append(i)
        used += 2 + widths[i]
    blocks.append(cur)
    out = []
    for block in blocks:
        idx = [0] + block
        lines = []
        for r, row in enumerate([head] + rows):
            cells = [row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i]) for i in idx]
            lines.append("  ".join(cells).rstrip())
            if r == 0:
                lines.append("  ".join("-" * widths[i] for i in idx))
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _live(head: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """The columns without the degenerate metrics' (the intro names them and says why)."""
    keep = [i for i, h in enumerate(head) if "(degenerate" not in h]
    return [head[i] for i in keep], [[r[i] for i in keep] for r in rows]


def to_terminal(td: TableData, width: int | None = None) -> str:
    """Table 1, the seeds judged a copy per metric, and the legend, fitted to ``width`` (default: the
    terminal's, at most 120 columns)."""
    width = width or min(shutil.get_terminal_size((100, 24)).columns, 120)
    wrap = lambda text, indent="": textwrap.fill(text, width, subsequent_indent=indent)  # noqa: E731
    parts = [f"Table 1: {td.name}", "", wrap(_intro(td).replace("`", "")), "",
             text_table(*_live(*table_cells(td)), width=width), "", "Seeds judged a copy, per metric", "",
             text_table(*_live(*copy_count_cells(td)), width=width), "", "How to read it:"]
    parts += [wrap(f"- {line.replace('`', '')}", "  ") for line in legend(td)]
    notes = limitations(td)
    if notes:
        parts += ["", "What this run cannot show:"] + [wrap(f"- {t}", "  ") for t in notes.values()]
    conf = confidence_section(td)
    if conf is not None:   # the paper's vote beside Holm's, with intervals, and the p-value floor
        title, head, rows = conf.tables[0]
        parts += ["", title, "", text_table(head, rows, width=width), ""]
        parts += [wrap(f"- {f}", "  ") for f in conf.findings]
    return "\n".join(parts) + "\n"
