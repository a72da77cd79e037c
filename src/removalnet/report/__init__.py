"""Reports: the one renderer of the paper's Table 1 and of report sections (the studies'), in Markdown, CSV,
LaTeX and HTML, with the trade-off plot; Table 1's data from a run's database."""
from .render import (FORMATS, close_figures, render, save_figure, section_html, section_markdown, to_csv, to_html,
                     to_latex, to_markdown, tradeoff_figure, write_sections)
from .section import Section
from .table import POOL_METRICS, TableData, build_table, load_results

__all__ = ["FORMATS", "render", "to_csv", "to_html", "to_latex", "to_markdown", "tradeoff_figure", "Section",
           "section_markdown", "section_html", "save_figure", "write_sections", "close_figures",
           "POOL_METRICS", "TableData", "build_table", "load_results"]
