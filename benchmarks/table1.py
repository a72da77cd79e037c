"""Table 1 benchmark: the paper's protocol offline on Fashion-MNIST for the small VGG- and ResNet-style models.

    python benchmarks/table1.py [--arch vgg_small resnet_small] [--seeds N] [--runs runs/bench] [--protocol proxy|paper]

Runs (or resumes) benchmarks/specs/table1-<arch>.yaml (``--protocol proxy``: width 8, 1% substitute sets) or
table1-<arch>-paper.yaml (``--protocol paper``: width 16 trained to convergence, 10% substitute sets, every
attack and verifier at its defaults) and writes benchmarks/results/table1-<arch>[-paper].md with the
table, the threshold-rule comparison, the machine, the date, the commit and the wall time. The aims it is read
against (never asserted): RemovalNet judged "not a copy" by every verifier in >= 9/10 seeds with <= 1.5 points
accuracy drop; FT/WP/Distill judged copies in every seed; negative models in none.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from removalnet.experiment import load_spec, make_executor, run_experiment
from removalnet.report import build_table, to_html, to_markdown

HERE = Path(__file__).resolve().parent
NOTES = "## Read against the aims"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def checkpoint_lines(run_dir: Path) -> str:
    """A section with the mean test accuracy and paper metrics over seeds at each scored checkpoint of every
    attack with ``score_checkpoints`` (the data of the paper's Fig. 4), or "" when there is none."""
    from removalnet.experiment.store import ResultStore
    with ResultStore(run_dir / "results.db") as store:
        rows = [r for r in store.rows("score") if r["status"] == "done" and re.search(r"/seed-\d+/t\d+$", r["name"])]
    by: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        slug, t = re.match(r"scores/(.+)/seed-\d+/t(\d+)$", r["name"]).groups()   # type: ignore[union-attr]
        by.setdefault(slug, {}).setdefault(int(t), []).append(r["metrics"])
    if not by:
        return ""
    lines = ["", "## RemovalNet's checkpoints (paper Fig. 4)", "",
             "Mean over seeds of the test accuracy (%) and of the paper's metrics at each scored checkpoint "
             "(iteration t).", ""]
    for slug, points in sorted(by.items()):
        ts = sorted(points)
        n = min(len(points[t]) for t in ts)
        lines.append(f"- **{slug}, mean of {n} seeds:** accuracy "
                     + ", ".join(f"{100 * np.mean([m['accuracy'] for m in points[t]]):.2f} (t={t})" for t in ts) + ".")
        for metric in ("DJ-LOD", "ZEST-L2", "MD-DDV", "IPG-MR"):
            vals = [(t, [m[metric] for m in points[t] if m.get(metric) is not None]) for t in ts]
            lines.append(f"  {metric}: " + ", ".join(f"{np.mean(v):.3f} (t={t})" for t, v in vals if v) + ".")
    return "\n".join(lines) + "\n"


def job_durations(run_dir: Path) -> dict[str, list[float]]:
    """The wall seconds of the run's finished jobs per kind, from its results.db (empty without one), the
    experiment's kinds first in their order (train, attack, fingerprint, score), then others by name."""
    from removalnet.experiment.store import ResultStore
    if not (run_dir / "results.db").is_file():
        return {}
    with ResultStore(run_dir / "results.db", readonly=True) as store:
        rows = [r for r in store.rows() if r["status"] == "done" and r.get("duration_s") is not None]
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r["kind"], []).append(float(r["duration_s"]))
    first = ("train", "attack", "fingerprint", "score")
    return dict(sorted(by.items(), key=lambda kv: (first.index(kv[0]) if kv[0] in first else len(first), kv[0])))


def job_time_lines(run_dir: Path) -> str:
    """A section with the wall seconds of the run's finished jobs per kind (count, mean, total), from its
    results.db: what a model of this recipe costs to train, attack, fingerprint and score on this machine (the
    basis of the audit budgets' estimates in docs/confidence.md)."""
    by = job_durations(run_dir)
    if not by:
        return ""
    lines = ["", "## Job times", "",
             "Wall seconds of the finished jobs of the run, per kind (each job one process thread; the machine's "
             "other core may have run other work meanwhile).", "",
             "| Kind | Jobs | Mean (s) | Total (min) |", "|---|---|---|---|"]
    for kind, d in by.items():
        lines.append(f"| {kind} | {len(d)} | {np.mean(d):.1f} | {sum(d) / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["vgg_small", "resnet_small"])
    ap.add_argument("--seeds", type=int, default=None, help="override the spec's seed count")
    ap.add_argument("--runs", default="runs/bench")
    ap.add_argument("--protocol", choices=("proxy", "paper"), default="proxy",
                    help="proxy: the width-8 / 1%% specs; paper: width 16, 10%% substitute sets (Section 4.1)")
    ap.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="ray runs independent jobs in parallel, one per core")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("REMOVALNET_THREADS", "1")))
    (HERE / "results").mkdir(exist_ok=True)
    for arch in args.arch:
        over = {"seeds": args.seeds} if args.seeds else {}
        stem = f"table1-{arch}" + ("-paper" if args.protocol == "paper" else "")
        spec = load_spec(HERE / "specs" / f"{stem}.yaml", over)
        start_commit = commit()      # the code the jobs of this invocation run (HEAD may move during a long run)
        t0 = time.perf_counter()
        summary = run_experiment(spec, Path(args.runs) / spec.name, executor=make_executor(args.executor))
        wall = time.perf_counter() - t0
        td = build_table(Path(args.runs) / spec.name)
        out = HERE / "results" / f"{stem}.md"
        run_lines = (f"- date: {dt.date.today().isoformat()}\n- commit: {start_commit}\n"
                     f"- models: {arch} {spec.victim.kwargs}; executor: {args.executor}; torch threads: "
                     f"{torch.get_num_threads()}\n"
                     f"- seeds: {len(spec.seeds)}; jobs: {summary.planned} ({summary.ran} ran in this invocation, "
                     f"{wall / 60:.1f} min; {len(summary.failed)} failed)\n")
        if summary.ran == 0 and out.exists():   # a re-render: keep the lines of the invocation that ran the jobs
            kept = re.findall(r"^- (?:date|commit|models|seeds): .*$", out.read_text(), re.M)
            if len(kept) == 4:
                run_lines = "\n".join(kept) + "\n"
        header = f"# Table 1 benchmark: {arch} on Fashion-MNIST\n\n- machine: {machine()}\n{run_lines}\n"
        checkpoints = checkpoint_lines(Path(args.runs) / spec.name)
        notes = ""  # the hand-written reading of the results survives a rerun
        if out.exists() and NOTES in out.read_text():
            notes = "\n" + NOTES + out.read_text().split(NOTES, 1)[1]
        times = job_time_lines(Path(args.runs) / spec.name)
        out.write_text(header + to_markdown(td) + checkpoints + times + notes)
        (HERE / "results" / f"{stem}.html").write_text(to_html(td))
        print(f"wrote benchmarks/results/{stem}.md")


if __name__ == "__main__":
    main()
