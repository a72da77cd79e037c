"""``removalnet run SPEC.yaml``: run an experiment grid (resumable), results in runs/<name>/results.db."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..params import Option
from ..utils import resolve_device

NAME = "run"
HELP = "run an experiment spec (victim, references, negatives, attacks x seeds, fingerprints, scores); resumable"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="experiment spec (YAML)")
    add_run_arguments(p)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options shared by ``run`` and ``study``."""
    p.add_argument("--runs", default="runs", help="parent folder of run folders (default: runs)")
    p.add_argument("--out", default=None, help="run folder (default: RUNS/<spec name>)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--seeds", type=Option(int, low=1), default=None, help="override the spec's seeds with 0..N-1")
    p.add_argument("--device", default=None, help="override the spec's device (cpu, cuda, ...)")
    p.add_argument("--smoke", action="store_true",
                   help="smoke scale: every job of the spec at a tiny size (run folder NAME-smoke; docs/guide/paper.md)")
    p.add_argument("--dry-run", action="store_true", help="list the jobs (done / to run) without running them")
    p.add_argument("--max-jobs", type=Option(int, low=1), default=None, help="stop after this many jobs (resume later)")
    p.add_argument("--wait", action="store_true",
                   help="if another process is running in the run folder, wait for it instead of failing")


def spec_overrides(args: argparse.Namespace) -> dict:
    """The spec keys that --seeds, --device and --smoke replace."""
    return {k: v for k, v in (("seeds", args.seeds), ("device", args.device), ("smoke", args.smoke or None))
            if v is not None}


def run_spec(spec, args: argparse.Namespace, file=None):
    """Run ``spec`` with the shared options; print the summary line. Returns (run folder, summary or None on
    a dry run)."""
    from ..experiment import make_executor, run_experiment  # lazy: keeps torch off the CLI's start
    out = Path(args.out) if args.out else Path(args.runs) / spec.name
    if not args.dry_run:  # a device this machine lacks: one line before any job starts
        resolve_device(spec.device)
    executor = None if args.dry_run else make_executor(args.executor, args.address)
    s = run_experiment(spec, out, executor=executor, max_jobs=args.max_jobs, dry_run=args.dry_run,
                       progress=not args.quiet, wait=args.wait)
    if args.dry_run:
        return out, None
    print(f"{out}: {s.planned} jobs, {s.skipped_done} already done, {s.ran} ran, {len(s.failed)} failed, "
          f"{len(s.skipped_deps)} skipped (failed dependency){', stopped early' if s.stopped_early else ''}",
          file=file)
    return out, s


def run(args: argparse.Namespace) -> int:
    from ..experiment import load_spec  # lazy: keeps torch off the CLI's start
    out, s = run_spec(load_spec(args.spec, spec_overrides(args)), args)
    if s is None:
        return 0
    print(f"results: {out / 'results.db'}; table: removalnet report {out}")
    return 0 if s.ok else 1
