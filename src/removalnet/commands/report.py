"""``removalnet report RUN_DIR``: the paper's Table 1 from a run's database (md, csv, tex or html), and for a
study run its tables and figures (Markdown, CSV, LaTeX, PNG, PDF under RUN_DIR/report/, embedded in html)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..params import Option
from ..utils import atomic_write_bytes

if TYPE_CHECKING:
    from ..verify import ThresholdRule

NAME = "report"
HELP = "print or write the paper's Table 1 (and a study's tables and figures) for a run"

#: ``removalnet.report.FORMATS`` and ``removalnet.verify.RULES``, spelled here so that the parser needs no
#: torch (tests/test_cli_imports.py checks that they agree)
FORMATS = ("md", "csv", "tex", "html")
RULES = ("minmax", "normal", "percentile")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder (holds results.db)")
    p.add_argument("--format", choices=FORMATS, default="md")
    p.add_argument("--rule", default=None, choices=RULES,
                   help="threshold rule (default: the spec's; minmax, normal, percentile)")
    add_rule_parameters(p)
    p.add_argument("--out", default=None, help="write to this file instead of printing (html: always a file, "
                                                 "default RUN_DIR/report.html)")
    p.add_argument("--collapse-margin", type=Option(float, low=0, high=100), default=None,
                   help="accuracy points a row may lose before it is marked collapsed (default 10)")
    p.add_argument("--figures", default=None,
                   help="folder for a study's figures and tables (default: RUN_DIR/report)")


def add_rule_parameters(p: argparse.ArgumentParser) -> None:
    """--k, --q, --margin: the threshold rule's parameters (shared by ``report`` and ``verify``)."""
    p.add_argument("--k", type=float, default=None, help="k of the 'normal' rule (default 2)")
    p.add_argument("--q", type=float, default=None, help="percentile of the 'percentile' rule (default 5)")
    p.add_argument("--margin", type=float, default=None,
                   help="margin of the 'percentile' rule, in reference ranges (default 0)")


def rule_from_args(args: argparse.Namespace, default=None) -> ThresholdRule | None:
    """The threshold rule of the command line (None when neither --rule nor a parameter is given and there is
    no ``default``): --rule (else ``default``) with --k/--q/--margin replacing its parameters."""
    from ..verify import ThresholdRule  # lazy: keeps torch off the CLI's start
    if args.rule is None and default is None and all(getattr(args, k) is None for k in ("k", "q", "margin")):
        return None
    return ThresholdRule.parse(args.rule or default, k=args.k, q=args.q, margin=args.margin)


def report_run(run_dir: str | Path, fmts: tuple[str, ...] = ("md",), rule=None,
               figures: str | Path | None = None, echo=print, margin: float | None = None) -> dict[str, str]:
    """The report of a run in each of ``fmts``, built once; a study's files are written to ``figures``
    (default RUN_DIR/report). ``rule``: a threshold rule replacing the spec's."""
    from ..report import build_table, close_figures, render, write_sections  # lazy: keeps torch off the CLI's start
    from ..studies import build_study_report  # lazy: keeps torch off the CLI's start
    td = build_table(run_dir, rule=rule, **({"margin": margin} if margin is not None else {}))
    sec = build_study_report(run_dir, td=td)
    if sec is None:
        return {fmt: render(td, fmt) for fmt in fmts}
    out_dir = Path(figures) if figures else Path(run_dir) / "report"
    paths = write_sections([sec], out_dir, td.name)
    echo(f"wrote {len(paths)} study files to {out_dir}: {', '.join(p.name for p in paths)}")
    texts = {fmt: render(td, fmt, [sec]) for fmt in fmts}
    close_figures([sec])
    return texts


def run(args: argparse.Namespace) -> int:
    import sys
    from ..guards import check_output_dir, check_output_file  # lazy: keeps torch off the CLI's start
    from ..report import load_results  # lazy: keeps torch off the CLI's start
    if args.format == "html" and not args.out:   # a page is a file, never a stream on the terminal
        args.out = str(Path(args.run_dir) / "report.html")
    if args.out:   # where the report goes is checked before it is built
        check_output_file(args.out)
    if args.figures:
        check_output_dir(args.figures, "--figures")
    if args.rule is None and any(getattr(args, k) is not None for k in ("k", "q", "margin")):
        # parameters alone: the spec's rule with them
        rule = rule_from_args(args, default=load_results(args.run_dir)[0].get("threshold_rule"))
    else:
        rule = rule_from_args(args)   # checked before the run folder is read
    text = report_run(args.run_dir, (args.format,), rule, args.figures,
                      echo=lambda m: print(m, file=sys.stderr), margin=args.collapse_margin)[args.format]
    if args.out:
        atomic_write_bytes(Path(args.out), text.encode())
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0
