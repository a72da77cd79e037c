"""How many DeepJudge white-box test cases the official generation reaches on the Table 1 victims, per m.

DeepJudge's test case for (seed, neuron) is the first iterate whose neuron output exceeds k = m x the neuron's
maximum over the training images (official m = 3). On resnet_small none of the 256 pairs reaches k at m = 3
(docs/findings.md), so DJ-LOD/LAD/NOD/NAD are degenerate there. This measures, on the same victims, data and
settings as the Table 1 run (only m changes), how many pairs reach k for each m, so a model owner can see what
setting gives DeepJudge evidence on such a model. ``--verdicts M`` also scores, with DeepJudge at m = M, the
Table 1 run's reference, negative and attacked models and the removal benchmark's saved variants (when
``removal-<arch>`` exists), and counts copies per row at tau = the closest of the 10 independent models, as
benchmarks/removal.py judges. Writes benchmarks/results/deepjudge_reach.json and .md.

    python benchmarks/deepjudge_reach.py [--arch resnet_small vgg_small] [--m 3 2 1.5 1] [--verdicts 1.5]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

import torch

from removalnet.checkpoint import load_checkpoint
from removalnet.experiment import load_spec
from removalnet.experiment.artifacts import (VICTIM, attack_job, model_job, model_path, slug, verifier_data,
                                             verifier_train_data)
from removalnet.utils import atomic_write_json, package_versions
from removalnet.verify import all_metrics, calibrate, create_verifier, verdict

HERE = Path(__file__).resolve().parent
from table1 import commit, machine  # noqa: E402

WHITE_BOX = ("DJ-LOD", "DJ-LAD", "DJ-NOD", "DJ-NAD")
KEEP = ("layer", "num_channels", "k_images_used", "tests_tried", "tests_reached", "tested_neurons",
        "channels_reached", "mean_iters_reached", "fallback_unreached", "adv_kept", "degenerate")


def verdicts(arch: str, spec, run_dir: Path, v, fp, victim, runs: Path) -> tuple[dict, dict]:
    """(tau per white-box metric, {row: {metric: copies, "n": models}}) with fingerprint ``fp`` of verifier ``v``."""
    from removal import VARIANTS   # the removal benchmark's variants, saved per seed under removal-<arch>/

    def score(path: Path) -> dict[str, float]:
        model, _ = load_checkpoint(path)
        return v.score(fp, victim, model)
    indep = [score(model_path(run_dir, model_job(role, i))) for role, n in
             (("reference", spec.references.count), ("negative", spec.negatives.count)) for i in range(n)]
    known = all_metrics()
    taus = calibrate({m: [r[m] for r in indep] for m in WHITE_BOX}, [known[m] for m in WHITE_BOX], "minmax",
                     min_references=2)
    groups: dict[str, list[Path]] = {}
    for a in spec.attacks:
        for s in spec.seeds:
            p = model_path(run_dir, attack_job(a.label, s))
            if p.exists():
                groups.setdefault(a.label, []).append(p)
    for name in VARIANTS:
        for s in spec.seeds:
            p = runs / f"removal-{arch}" / slug(name) / f"seed-{s}.safetensors"
            if p.exists():
                groups.setdefault(name, []).append(p)
    out = {"independent (5 references + 5 negatives)": {m: sum(verdict(known[m], r[m], taus[m]) for r in indep)
                                                        for m in WHITE_BOX} | {"n": len(indep)}}
    for label, paths in groups.items():
        vals = [score(p) for p in paths]
        out[label] = {m: sum(verdict(known[m], r[m], taus[m]) for r in vals) for m in WHITE_BOX} | {"n": len(vals)}
        print(f"{arch} {label}: " + ", ".join(f"{m} {out[label][m]}/{len(vals)}" for m in WHITE_BOX), flush=True)
    return taus, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["resnet_small", "vgg_small"])
    ap.add_argument("--m", nargs="+", type=float, default=[3.0, 2.0, 1.5, 1.0])
    ap.add_argument("--runs", default="runs/bench")
    ap.add_argument("--out", default=str(HERE / "results" / "deepjudge_reach"))
    ap.add_argument("--verdicts", type=float, metavar="M", default=None,
                    help="also judge the Table 1 and removal-benchmark models with DeepJudge at m = M")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("REMOVALNET_THREADS", "1")))
    rows, judged, dj_params = [], {}, {}
    for arch in args.arch:
        spec = load_spec(HERE / "specs" / f"table1-{arch}.yaml")
        run_dir = Path(args.runs) / spec.name
        victim, _ = load_checkpoint(model_path(run_dir, VICTIM))
        cfg = {"dataset": spec.dataset, "data_root": spec.data_root, "lsd_holdout": spec.lsd_holdout,
               "verifier_count": spec.verifier_count}
        params = dj_params[arch] = dict(spec.verifiers.get("deepjudge", {}))
        for m in args.m:
            v = create_verifier("deepjudge", **{**params, "m": m})
            t0 = time.process_time()
            fp = v.extract(victim, verifier_data(cfg), seed=0, train_data=verifier_train_data(v, cfg))
            row = {"arch": arch, "m": m, "cpu_s": time.process_time() - t0,
                   **{k: fp.meta.get(k) for k in KEEP}}
            rows.append(row)
            print(f"{arch} m={m:g}: {row['tests_reached']}/{row['tests_tried']} pairs reach k "
                  f"({row['channels_reached']} of {row['num_channels']} neurons), {row['cpu_s']:.0f} CPU s", flush=True)
            if args.verdicts is not None and m == args.verdicts and not fp.meta.get("fallback_unreached"):
                taus, groups = verdicts(arch, spec, run_dir, v, fp, victim, Path(args.runs))
                judged[arch] = {"m": m, "taus": taus, "copies": groups}
    out = Path(args.out)
    report = {"benchmark": "DeepJudge white-box test cases reached per m (official generation, Table 1 victims)",
              "machine": machine(), "commit": commit(), "date": dt.date.today().isoformat(),
              "deepjudge_params": dj_params,
              "versions": package_versions(), "rows": rows, "verdicts": judged}
    atomic_write_json(out.with_suffix(".json"), report)
    lines = ["# DeepJudge test cases reached per m\n", f"- machine: {machine()}\n- commit: {commit()}\n"
             f"- date: {report['date']}\n- victims, data and every other DeepJudge setting as in the Table 1 runs "
             "(k over 20,000 training images, 1000 Adam steps of 0.01, inputs kept in [0, 1]); m = 3 is the "
             "official value\n", "| Model | m | pairs reaching k | neurons reached | mean iterations to reach | "
             "white-box metrics | CPU s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        wb = "degenerate (no test case)" if r["fallback_unreached"] else "judged"
        it = f"{r['mean_iters_reached']:.0f}" if r["mean_iters_reached"] is not None else "-"
        lines.append(f"| {r['arch']} | {r['m']:g} | {r['tests_reached']}/{r['tests_tried']} | "
                     f"{r['channels_reached']}/{r['num_channels']} | {it} | {wb} | {r['cpu_s']:.0f} |")
    for arch, j in judged.items():
        lines += ["", f"## {arch}: DeepJudge's white-box verdicts at m = {j['m']:g}", "",
                  "Copies per row at τ = the closest of the 10 independent models (the removal benchmark's rule; "
                  "the independent row is 0 by construction).", "",
                  "| Model | n | " + " | ".join(WHITE_BOX) + " |", "|---|---|" + "---|" * len(WHITE_BOX)]
        for label, c in j["copies"].items():
            lines.append(f"| {label} | {c['n']} | " + " | ".join(f"{c[m]}/{c['n']} copy" for m in WHITE_BOX) + " |")
        lines.append("| τ | | " + " | ".join(f"{j['taus'][m]:.3f}" for m in WHITE_BOX) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
