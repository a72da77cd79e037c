"""Capacity sweep: RemovalNet's accuracy drop and every verifier's verdicts against the victim's width.

    python benchmarks/capacity.py [--widths 8 16 32 64] [--runs runs/bench]

Runs (or resumes) benchmarks/specs/capacity-vgg_small-w<W>.yaml for each width (the paper's protocol of
table1-vgg_small-paper.yaml otherwise: the same training recipe and S_LSD holdout, 10% substitute sets, defaults
everywhere, 2 seeds) and writes benchmarks/results/capacity.md and .json: per width the victim's accuracy and
parameter count, and per attack its drop and the seeds each metric calls a copy (minmax thresholds from 5
reference models; negatives as the false-positive check). A width whose spec is the paper-protocol Table 1's
but for its name, seeds and the table's extra attacks (width 16) is read from that finished run instead of
training the same models again (its first seeds; ``shared_run``). A width whose run is not finished is reported
with what is done.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from removalnet.experiment import load_spec, make_executor, run_experiment
from removalnet.models import create_model
from removalnet.report import build_table

from table1 import commit, job_durations, machine

HERE = Path(__file__).resolve().parent

#: the finished run a width may be read from: the Table 1 benchmark at the paper's protocol
TABLE1 = "table1-vgg_small-paper"


def shared_run(spec, table):
    """Whether the capacity ``spec`` is ``table`` (an ExperimentSpec) restricted to fewer seeds and a subset of its
    attacks: same data, victim, reference and negative models, verifiers, thresholds and S_LSD holdout, and every
    attack of ``spec`` one of ``table``'s with the same settings. Its jobs are then jobs of the table's run."""
    same = ("dataset", "data_root", "victim", "references", "negatives", "verifiers", "verifier_count",
            "lsd_holdout", "threshold_rule", "device", "runtime")
    if any(getattr(spec, k) != getattr(table, k) for k in same):
        return False

    def job_settings(a) -> dict:   # checkpoint scoring adds jobs, never changes the attack's own
        return {k: v for k, v in dataclasses.asdict(a).items() if k not in ("score_checkpoints", "keep_checkpoints")}
    table_attacks = [job_settings(a) for a in table.attacks]
    return (all(job_settings(a) in table_attacks for a in spec.attacks)
            and list(spec.seeds) == list(table.seeds)[:len(spec.seeds)])


def width_rows(td, labels: list[str], n_seeds: int) -> dict:
    """Per row of ``labels`` (and Negative) of a Table 1 ``td``: its first ``n_seeds`` seeds' accuracies, copy
    verdicts per metric and ownership votes (the rows are sorted by seed)."""
    out = {}
    for r in td.rows:
        if r["label"] not in labels and r["label"] != "Negative":
            continue
        k = n_seeds if r["label"] != "Negative" else len(r["accuracy"])
        owned = r["owned"][:k]
        out[r["label"]] = {"n": min(r["n"], k), "accuracy": r["accuracy"][:k],
                           "copies": {m: f"{sum(v[:k])}/{len(v[:k])}" for m, v in r["copies"].items()},
                           "owned": f"{sum(owned)}/{len(owned)}"}
    return out


def job_times(run_dir: Path) -> str:
    """One line with the wall seconds of the run's finished jobs per kind (count, mean, min-max), from its
    results.db; "" without finished jobs."""
    parts = [f"{k} {len(d)} (mean {sum(d) / len(d):.0f} s, {min(d):.0f}-{max(d):.0f})"
             for k, d in job_durations(run_dir).items()]
    return "Job wall times (results.db): " + "; ".join(parts) + "." if parts else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", nargs="+", type=int, default=[8, 16, 32, 64])
    ap.add_argument("--runs", default="runs/bench")
    ap.add_argument("--executor", choices=("local", "ray"), default="local")
    ap.add_argument("--report-only", action="store_true", help="write the results of what is done, run nothing")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("REMOVALNET_THREADS", "1")))
    results = []
    table_spec = load_spec(HERE / "specs" / f"{TABLE1}.yaml")
    for w in args.widths:
        spec = load_spec(HERE / "specs" / f"capacity-vgg_small-w{w}.yaml")
        run_dir, source = Path(args.runs) / spec.name, spec.name
        if shared_run(spec, table_spec) and (Path(args.runs) / TABLE1 / "results.db").exists():
            run_dir, source = Path(args.runs) / TABLE1, TABLE1   # the same jobs, already done
        if not args.report_only and source == spec.name:
            run_experiment(spec, run_dir, executor=make_executor(args.executor))
        if not (run_dir / "results.db").exists():
            continue
        td = build_table(run_dir)
        params = sum(p.numel() for p in create_model("vgg_small", 10, 1, 28, width=w).parameters())
        rows = width_rows(td, [a.label for a in spec.attacks], len(spec.seeds))
        results.append({"width": w, "parameters": params, "victim_accuracy": td.victim_accuracy,
                        "references_accuracy": td.references_accuracy, "metrics": td.metrics,
                        "degenerate": td.degenerate, "rows": rows, "run": source,
                        "job_times": job_times(run_dir) if source == spec.name else ""})
    meta = {"machine": machine(), "commit": commit(), "date": time.strftime("%Y-%m-%d"),
            "threads": torch.get_num_threads(), "executor": args.executor}
    (HERE / "results" / "capacity.json").write_text(json.dumps({"meta": meta, "widths": results}, indent=2) + "\n")
    lines = ["# Capacity sweep: vgg_small width against RemovalNet's drop and the verdicts", "",
             f"- machine: {meta['machine']}", f"- commit: {meta['commit']}; date: {meta['date']}; "
             + ("written from finished runs (--report-only)" if args.report_only
                else f"torch threads of this invocation: {meta['threads']}")
             + "; jobs done by earlier invocations keep the commit and thread count they ran with",
             "- specs: benchmarks/specs/capacity-vgg_small-w*.yaml (10% substitute sets, defaults everywhere, "
             "2 seeds, minmax over 5 references)", ""]
    for r in results:
        va = f"{100 * r['victim_accuracy']:.2f}%" if r["victim_accuracy"] is not None else "n/a"
        lines += [f"## width {r['width']} ({r['parameters']:,} parameters, victim {va})", "",
                  f"Run: `{r['run']}`" + (" (the Table 1 run at the paper's protocol, its first seeds: the same "
                                          "models and settings)" if r["run"] == TABLE1 else "") + ".", "",
                  *([r["job_times"], ""] if r.get("job_times") else []),
                  "| Row | n | drop (points) | " + " | ".join(r["metrics"]) + " | Ownership? |",
                  "|---|---|---|" + "---|" * (len(r["metrics"]) + 1)]
        for label, row in r["rows"].items():
            acc = row["accuracy"]
            drop = (f"{100 * (r['victim_accuracy'] - sum(acc) / len(acc)):.2f}"
                    if acc and r["victim_accuracy"] is not None else "-")
            lines.append(f"| {label} | {row['n']} | {drop} | "
                         + " | ".join(row["copies"].get(m, "-") for m in r["metrics"]) + f" | {row['owned']} |")
        if r["degenerate"]:
            lines.append(f"\nDegenerate (not judged): {', '.join(r['degenerate'])}.")
        lines.append("")
    (HERE / "results" / "capacity.md").write_text("\n".join(lines))
    print("wrote benchmarks/results/capacity.md")


if __name__ == "__main__":
    main()
