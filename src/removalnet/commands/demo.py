"""``removalnet demo``: the main job on the embedded default (Fashion-MNIST, small CNN, offline, CPU).

Runs the bundled spec ``configs/demo.yaml`` (victim, reference and negative models, FT/WP/Distill,
RemovalNet on S_LTD and S_LSD, every verifier at reduced fingerprint sizes), prints Table 1 and writes the
HTML report. A rerun reuses finished jobs.
"""
from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

from ..params import Option
from ..utils import atomic_write_bytes
from .run import spec_overrides

NAME = "demo"
HELP = "run the small offline Fashion-MNIST experiment, print Table 1 and write an HTML report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="run folder (default: runs/demo, runs/demo-smoke with --smoke)")
    p.add_argument("--seeds", type=Option(int, low=1), default=None, help="attack seeds (default: the demo spec's)")
    p.add_argument("--device", default=None, help="cpu (default), cuda or auto")
    p.add_argument("--smoke", action="store_true",
                   help="the whole demo at the smoke scale (seconds; writes to OUT-smoke): proves the code path, "
                        "its numbers mean nothing")


def run(args: argparse.Namespace) -> int:
    from ..experiment import load_spec, run_experiment  # lazy: keeps torch off the CLI's start
    from ..report import build_table, to_html, to_markdown  # lazy: keeps torch off the CLI's start
    from ..report.terminal import to_terminal  # lazy: keeps torch off the CLI's start
    with resources.as_file(resources.files("removalnet") / "configs" / "demo.yaml") as path:
        spec = load_spec(path, spec_overrides(args))
    out = Path(args.out) if args.out else Path("runs") / spec.name
    t0 = time.perf_counter()
    s = run_experiment(spec, out, progress=not args.quiet)
    td = build_table(out)
    print(to_terminal(td))
    atomic_write_bytes(out / "report.html", to_html(td).encode())
    atomic_write_bytes(out / "report.md", to_markdown(td).encode())
    print(f"demo: {s.ran} jobs ran ({s.skipped_done} reused) in {time.perf_counter() - t0:.0f}s\n"
          f"full tables: {out / 'report.md'} and {out / 'report.html'}")
    return 0 if s.ok else 1
