"""The paper's studies (Fig. 6-10, Table 4) on their small offline configs, collected into one results page.

    python benchmarks/studies.py [--studies saliency boundary ...] [--runs runs/studies]

Runs (or resumes) each bundled config ``removalnet/configs/studies/<name>.yaml`` and writes
benchmarks/results/studies.md (findings and tables of every study, machine, date, commit, wall times) with
the figures copied to benchmarks/results/studies/.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import time
from pathlib import Path

import torch

from removalnet.commands.study import load_study_spec
from removalnet.experiment import run_experiment
from removalnet.experiment.store import ResultStore
from removalnet.report import close_figures, section_markdown, write_sections
from removalnet.studies import build_study_report, list_studies

HERE = Path(__file__).resolve().parent
from table1 import commit, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", nargs="+", default=["saliency", "boundary", "robustness", "efficiency", "ablation",
                                                     "substitute_size"], choices=list_studies())
    ap.add_argument("--runs", default="runs/studies")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("REMOVALNET_THREADS", "1")))
    figs = HERE / "results" / "studies"
    figs.mkdir(parents=True, exist_ok=True)
    parts = [f"# The paper's studies on the small offline configs\n\n- machine: {machine()}\n"
             f"- date: {dt.date.today().isoformat()}\n- commit: {commit()}\n- torch threads: {torch.get_num_threads()}\n"
             f"- configs: src/removalnet/configs/studies/<name>.yaml (Fashion-MNIST, vgg_small width 8)\n"]
    ran_any = False
    for name in args.studies:
        spec = load_study_spec(name, None, {})
        run_dir = Path(args.runs) / spec.name
        t0 = time.perf_counter()
        s = run_experiment(spec, run_dir, progress=False)
        wall = time.perf_counter() - t0
        ran_any = ran_any or s.ran > 0
        with ResultStore(run_dir / "results.db") as store:
            plan = set(store.get_meta("plan"))
            compute = sum(r["duration_s"] or 0 for r in store.rows() if r["id"] in plan)
        rep = build_study_report(run_dir)
        paths = write_sections([rep], run_dir / "report", spec.name)
        files = {}
        for p in paths:
            if p.suffix == ".png":
                shutil.copy(p, figs / p.name)
                files[p.stem] = f"studies/{p.name}"
        parts.append(f"\n`removalnet study {name}`: {s.planned} jobs ({s.ran} ran in this invocation, {wall / 60:.1f} min, "
                     f"{len(s.failed)} failed; {compute / 60:.1f} min of job time in all)\n\n" + section_markdown(rep, files))
        close_figures([rep])
        print(f"{name}: done", flush=True)
    out = HERE / "results" / "studies.md"
    if not ran_any and out.exists():   # a re-render: keep the date and commit of the invocation that ran the jobs
        kept = re.findall(r"^- (?:date|commit): .*$", out.read_text(), re.M)
        if len(kept) == 2:
            parts[0] = re.sub(r"- date: .*\n- commit: .*\n", "\n".join(kept) + "\n", parts[0])
    out.write_text("\n".join(parts))
    print("wrote benchmarks/results/studies.md")


if __name__ == "__main__":
    main()
