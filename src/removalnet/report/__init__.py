"""Reports: the paper's Table 1 (Markdown, CSV, LaTeX, HTML) and the trade-off plot, from a run's database."""
from .render import FORMATS, render, to_csv, to_html, to_latex, to_markdown, tradeoff_figure
from .table import POOL_METRICS, TableData, build_table, load_results

__all__ = ["FORMATS", "render", "to_csv", "to_html", "to_latex", "to_markdown", "tradeoff_figure",
           "POOL_METRICS", "TableData", "build_table", "load_results"]
