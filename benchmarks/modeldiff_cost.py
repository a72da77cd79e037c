"""What ModelDiff costs per suspect, now that its profiling inputs are searched for every (victim, suspect) pair.

On vgg_small width 8 at Fashion-MNIST size (1 x 28 x 28, 10 classes), one torch thread, the verifier's
data the Fashion-MNIST test split: the victim and ``--suspects`` independently initialised suspects (random
weights: the cost does not depend on them). For each setting, the seconds of
``extract`` (the seeds, once per victim), of ``pair`` (the hill-climbing search, once per suspect) and of
``score`` on the paired fingerprint (the suspect's DDV), as wall and process CPU time; and for comparison
the suspect-independent ``modeldiff_pgd`` variant (extraction once, then scoring only).

Settings: the official defaults (300 seeds per model, 600 inputs, 1000 steps) and the demo's reduced
setting (50 seeds per model, 300 steps). Writes ``benchmarks/results/modeldiff_cost.json`` and ``.md``.

    PYTHONPATH=src python benchmarks/modeldiff_cost.py
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import nn

from removalnet.data import balanced_subset, load_dataset
from removalnet.models import create_model
from removalnet.utils import package_versions, seed_everything
from removalnet.verify import create_verifier
from zest_speed import commit, machine, timed, write_results

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"official defaults": {}, "demo setting": {"num_pairs": 50, "iterations": 300}}


def model(seed: int) -> nn.Module:
    seed_everything(seed)
    return create_model("vgg_small", 10, 1, 28, width=8, mean=[0.286], std=[0.353]).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suspects", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "modeldiff_cost.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = balanced_subset(load_dataset("fashion-mnist", "test"), count=1000, seed=0)
    victim = model(0)
    suspects = [model(100 + i) for i in range(args.suspects)]
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    for label, params in SETTINGS.items():
        md = create_verifier("modeldiff", **params)
        fp, ext_wall, ext_cpu = timed(lambda: md.extract(victim, data, seed=0))
        rows = []
        for s in suspects:
            paired, pair_wall, pair_cpu = timed(lambda: md.pair(fp, victim, s))
            score, score_wall, score_cpu = timed(lambda: md.score(paired, victim, s))
            rows.append({"pair_wall_s": pair_wall, "pair_cpu_s": pair_cpu, "score_wall_s": score_wall,
                         "score_cpu_s": score_cpu, "MD-DDV": score["MD-DDV"],
                         "mutations_accepted": paired.meta["mutations_accepted"]})
        per_suspect = {k: statistics.median(r[k] for r in rows)
                       for k in ("pair_wall_s", "pair_cpu_s", "score_wall_s", "score_cpu_s")}
        results[label] = {"params": md.params, "extract_wall_s": ext_wall, "extract_cpu_s": ext_cpu,
                          "per_suspect_median": per_suspect, "suspects": rows}
        print(f"modeldiff {label}: extract {ext_wall:.2f} s, per suspect pair {per_suspect['pair_wall_s']:.2f} s "
              f"wall / {per_suspect['pair_cpu_s']:.2f} s CPU + score {per_suspect['score_wall_s']:.2f} s")
    pgd = create_verifier("modeldiff_pgd")
    fp, ext_wall, ext_cpu = timed(lambda: pgd.extract(victim, data, seed=0))
    scores = [timed(lambda: pgd.score(fp, victim, s)) for s in suspects]
    results["modeldiff_pgd defaults"] = {
        "params": pgd.params, "extract_wall_s": ext_wall, "extract_cpu_s": ext_cpu,
        "per_suspect_median": {"score_wall_s": statistics.median(w for _, w, _ in scores),
                               "score_cpu_s": statistics.median(c for _, _, c in scores)}}
    report = {
        "benchmark": "ModelDiff cost per suspect (profiling inputs searched per pair)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit(),
        "model": "vgg_small width 8, 1x28x28, 10 classes (random weights; the cost does not depend on them)",
        "data": "fashion-mnist test split, balanced subset of 1000", "suspects": args.suspects, "results": results,
        "machine": machine(load_before), "versions": package_versions(),
    }
    md_lines = [
        "# ModelDiff cost per suspect",
        "",
        f"{report['date']}, commit `{report['commit']}`, {report['machine']['cpu']} "
        f"({report['machine']['cpu_count']} cores), torch {report['versions'].get('torch', '?')}, 1 thread. "
        f"Model: {report['model']}; median over {args.suspects} suspects.",
        "",
        "| verifier, setting | extract once (wall / CPU s) | pair per suspect (wall / CPU s) | score per suspect (wall / CPU s) |",
        "|---|---:|---:|---:|",
    ]
    for label, r in results.items():
        ps = r["per_suspect_median"]
        pair = f"{ps['pair_wall_s']:.2f} / {ps['pair_cpu_s']:.2f}" if "pair_wall_s" in ps else "-"
        name = label if label.startswith("modeldiff_pgd") else f"modeldiff, {label}"
        md_lines.append(f"| {name} | {r['extract_wall_s']:.2f} / {r['extract_cpu_s']:.2f} | {pair} | "
                        f"{ps['score_wall_s']:.2f} / {ps['score_cpu_s']:.2f} |")
    write_results(Path(args.out), report, [*md_lines, ""])


if __name__ == "__main__":
    main()
