"""``removalnet report RUN_DIR``: the paper's Table 1 from a run's database (md, csv, tex or html)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..report import FORMATS, build_table, render
from ..utils import atomic_write_bytes

NAME = "report"
HELP = "print or write the paper's Table 1 for a run (Markdown, CSV, LaTeX, or a self-contained HTML page)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder (holds results.db)")
    p.add_argument("--format", choices=FORMATS, default="md")
    p.add_argument("--rule", default=None, help="threshold rule (default: the spec's; minmax, normal, percentile)")
    p.add_argument("--out", default=None, help="write to this file instead of printing")


def run(args: argparse.Namespace) -> int:
    td = build_table(args.run_dir, rule=args.rule)
    text = render(td, args.format)
    if args.out:
        atomic_write_bytes(Path(args.out), text.encode())
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0
