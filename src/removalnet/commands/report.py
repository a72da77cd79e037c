"""``removalnet report RUN_DIR``: the paper's Table 1 from a run's database (md, csv, tex or html), and for a
study run its tables and figures (Markdown, CSV, LaTeX, PNG, PDF under RUN_DIR/report/, embedded in html)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..report import FORMATS, build_table, render
from ..utils import atomic_write_bytes

NAME = "report"
HELP = "print or write the paper's Table 1 (and a study's tables and figures) for a run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder (holds results.db)")
    p.add_argument("--format", choices=FORMATS, default="md")
    p.add_argument("--rule", default=None, help="threshold rule (default: the spec's; minmax, normal, percentile)")
    p.add_argument("--out", default=None, help="write to this file instead of printing")
    p.add_argument("--figures", default=None,
                   help="folder for a study's figures and tables (default: RUN_DIR/report)")


def report_run(run_dir: str | Path, fmts: tuple[str, ...] = ("md",), rule: str | None = None,
               figures: str | Path | None = None, echo=print) -> dict[str, str]:
    """The report of a run in each of ``fmts``, built once; a study's files are written to ``figures``
    (default RUN_DIR/report)."""
    from ..studies import build_study_report, study_sections, write_study_report
    from ..studies.report import close_figures, study_markdown

    td = build_table(run_dir, rule=rule)
    rep = build_study_report(run_dir, td=td)
    if rep is None:
        return {fmt: render(td, fmt) for fmt in fmts}
    out_dir = Path(figures) if figures else Path(run_dir) / "report"
    paths = write_study_report(rep, out_dir, td.name)
    echo(f"wrote {len(paths)} study files to {out_dir}: {', '.join(p.name for p in paths)}")
    texts = {}
    for fmt in fmts:
        if fmt == "md":  # a study without verifiers has no Table 1 to show
            texts[fmt] = (render(td, "md") + "\n" if td.metrics else "") + study_markdown(rep)
        else:
            texts[fmt] = render(td, fmt, study_sections(rep) if fmt == "html" else ())
    close_figures(rep)
    return texts


def run(args: argparse.Namespace) -> int:
    import sys
    text = report_run(args.run_dir, (args.format,), args.rule, args.figures,
                      echo=lambda m: print(m, file=sys.stderr))[args.format]
    if args.out:
        atomic_write_bytes(Path(args.out), text.encode())
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0
