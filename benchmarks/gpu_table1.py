"""GPU benchmark: the paper's CIFAR10/VGG19 Table 1 (configs/paper/cifar10-vgg19_bn.yaml) at 3 seeds, with
every job's wall time and peak GPU memory; or the same grid on Fashion-MNIST read as 3-channel 32 px images.

    python benchmarks/gpu_table1.py [--dataset cifar10|fashion-mnist] [--data-root DIR] [--device cuda]
                                    [--seeds 3] [--epochs N] [--bf16] [--channels-last] [--workers N]
                                    [--cudnn-benchmark] [--runs runs/gpu] [--out FILE] [--smoke]

``--dataset cifar10`` (default) needs the real CIFAR-10 (``DATA_ROOT/cifar-10-batches-py/``, DATA_ROOT
default ``data``) and CINIC-10 (``DATA_ROOT/cinic10/``, the S_LSD row); without them it says what is missing
and stops (exit status 2).

``--dataset fashion-mnist`` runs the paper's architecture and settings (vgg19_bn at 32 px, 3 channels, the
spec's attacks and verifiers) on ``fashion-mnist?size=32&channels=3``, with S_LSD drawn from a disjoint 10%
partition of the training set the victim never sees (``lsd_holdout: 0.1``, source ``partition``) instead of
CINIC-10. Its four IDX files (about 30 MB gzipped) are read from ``--data-root`` when given (that folder or
its ``FashionMNIST/raw/``), else from ``$REMOVALNET_FASHION_MNIST_DIR``, else from the Debian package's
``/usr/share/datasets/fashion-mnist/``. On a machine that has only the repository (a lent GPU), copy the
files into it first; ``data/`` is not ignored by git, so they travel with the working tree (64 MiB limit):

    mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*-ubyte.gz data/fashion-mnist/
    REMOVALNET_FASHION_MNIST_DIR=data/fashion-mnist python benchmarks/gpu_table1.py --dataset fashion-mnist

``--epochs N`` trains the victim, reference and negative models N epochs instead of the spec's 200 (a run
that fits a short GPU lease, e.g. ``--seeds 1 --epochs 2``; the result file says so).

Runs (or resumes) the grid in RUNS/<dataset>-vgg19_bn-gpu-s<seeds>[-e<epochs>][-smoke]/ and writes
benchmarks/results/gpu-table1-vgg19_bn-<dataset>-<device>[-smoke]-<date>.md: the machine (GPU, CUDA, torch),
the commit, the options, the wall time, a table of every job (kind, name, seconds, peak GPU memory recorded
by the job itself) with totals per kind, and Table 1. ``--smoke`` runs the same grid at the smoke scale (a
check of this script, e.g. ``--smoke --device cpu`` on a CPU machine).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from table1 import commit, machine as cpu_machine  # noqa: E402  (the machine line and commit of every benchmark)
SPEC = HERE.parent / "configs" / "paper" / "cifar10-vgg19_bn.yaml"
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
#: Fashion-MNIST as the paper's VGG19 reads CIFAR-10: 3-channel 32 x 32 images (the dataset registry's options)
FASHION = "fashion-mnist?size=32&channels=3"
#: the part of the Fashion-MNIST training set only the attacker holds: its S_LSD source (10%, as S_LTD)
FASHION_HOLDOUT = 0.1


def machine(device: str) -> str:
    """The CPU machine (as table1.py writes it), torch, and the GPU, CUDA and cuDNN when on CUDA."""
    text = f"{cpu_machine()}; torch {torch.__version__}"
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        text += f"; GPU {p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, " \
                f"cuDNN {torch.backends.cudnn.version()}"
    return text


def missing_data(root: Path) -> list[str]:
    """What of CIFAR-10 and CINIC-10 is missing under ``root``."""
    out = [str(root / "cifar-10-batches-py" / f) for f in CIFAR_FILES
           if not (root / "cifar-10-batches-py" / f).is_file()]
    if not any((root / d / "train").is_dir() for d in ("cinic10", "CINIC-10", "CINIC10", "cinic-10")) \
            and not (root / "train").is_dir():
        out.append(str(root / "cinic10" / "train"))
    return out


def fashion_missing(root: Path | None) -> str | None:
    """None when Fashion-MNIST's four IDX files are found as the loader looks for them (``root`` given: only
    there), else the places looked at."""
    from removalnet.data.fashion_mnist import FILES, candidate_dirs

    dirs = candidate_dirs(root)
    stems = [s for pair in FILES.values() for s in pair]
    if any(all((d / s).is_file() or (d / f"{s}.gz").is_file() for s in stems) for d in dirs):
        return None
    return ", ".join(str(d) for d in dirs)


def fashion_overrides(raw: dict, epochs_note: str) -> dict:
    """The keys of the spec ``raw`` that turn the CIFAR10/VGG19 grid into the Fashion-MNIST one: the dataset,
    the S_LSD partition, and every S_LSD row drawn from it instead of CINIC-10."""
    attacks = [{**a, "source": "partition"} if a.get("scenario") == "lsd" else a for a in raw["attacks"]]
    return {"dataset": FASHION, "lsd_holdout": FASHION_HOLDOUT, "attacks": attacks,
            "notes": [f"Fashion-MNIST read as 3-channel 32x32 images ({FASHION}) in place of CIFAR-10; S_LSD is "
                      f"a disjoint {FASHION_HOLDOUT:.0%} partition of the training set the victim never sees "
                      "(lsd_holdout), not CINIC-10." + epochs_note]}


def job_rows(run_dir: Path) -> list[dict]:
    con = sqlite3.connect(run_dir / "results.db")
    try:
        rows = con.execute("SELECT kind, name, status, duration_s, metrics FROM jobs ORDER BY started").fetchall()
    finally:
        con.close()
    out = []
    for kind, name, status, dur, metrics in rows:
        m = json.loads(metrics) if metrics else {}
        out.append({"kind": kind, "name": name, "status": status, "seconds": dur or 0.0,
                    "gpu_mb": m.get("gpu_max_memory_mb") if isinstance(m, dict) else None})
    return out


def timing_markdown(rows: list[dict]) -> str:
    def mb(v):
        return "-" if v is None else f"{v:,.0f}"
    lines = ["| kind | jobs | seconds | max GPU MiB |", "|---|---|---|---|"]
    for kind in ("train", "attack", "fingerprint", "score", "study"):
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            mem = [r["gpu_mb"] for r in sel if r["gpu_mb"] is not None]
            lines.append(f"| {kind} | {len(sel)} | {sum(r['seconds'] for r in sel):.1f} | "
                         f"{mb(max(mem) if mem else None)} |")
    lines += ["", "| job | kind | status | seconds | peak GPU MiB |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['kind']} | {r['status']} | {r['seconds']:.1f} | {mb(r['gpu_mb'])} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("cifar10", "fashion-mnist"), default="cifar10",
                    help="cifar10 (needs CIFAR-10 and CINIC-10) or fashion-mnist (3-channel 32 px, S_LSD a partition)")
    ap.add_argument("--data-root", default=None, help="data root (default: data for cifar10; for fashion-mnist "
                    "$REMOVALNET_FASHION_MNIST_DIR, else /usr/share/datasets/fashion-mnist)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs of the victim, reference and negative models (default: the spec's)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast in training and attacks")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the training jobs")
    ap.add_argument("--cudnn-benchmark", action="store_true")
    ap.add_argument("--runs", default="runs/gpu")
    ap.add_argument("--out", default=None, help="result file (default benchmarks/results/gpu-table1-*.md)")
    ap.add_argument("--smoke", action="store_true", help="the same grid at the smoke scale (a check)")
    args = ap.parse_args(argv)

    from removalnet.experiment import load_spec, run_experiment
    from removalnet.report import build_table, to_markdown
    from removalnet.utils import RemovalNetError, resolve_device

    if args.epochs is not None and args.epochs < 1:
        print(f"error: --epochs must be at least 1, got {args.epochs}", file=sys.stderr)
        return 2
    fashion = args.dataset == "fashion-mnist"
    root = Path(args.data_root) if args.data_root else (None if fashion else Path("data"))
    if fashion:
        looked = fashion_missing(root)
        if looked:
            print(f"error: Fashion-MNIST's IDX files (train-images-idx3-ubyte.gz, ...) are not in {looked}; set "
                  "REMOVALNET_FASHION_MNIST_DIR to a folder holding them (e.g. a copy of "
                  "/usr/share/datasets/fashion-mnist/ in data/fashion-mnist/) or give --data-root", file=sys.stderr)
            return 2
    else:
        missing = missing_data(root)
        if missing:
            print(f"error: the real CIFAR-10 (and CINIC-10 for the S_LSD row) is not under {root}: missing "
                  f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; place them as the README says "
                  "(data/cifar-10-batches-py/, data/cinic10/{train,valid,test}/<class>/) and run again, or run "
                  "the same grid on Fashion-MNIST: --dataset fashion-mnist", file=sys.stderr)
            return 2
    try:
        resolve_device(args.device)
    except RemovalNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ.get("REMOVALNET_THREADS", "1")))
    runtime = {k: v for k, v in (("precision", "bf16" if args.bf16 else None),
                                 ("channels_last", args.channels_last or None),
                                 ("num_workers", args.workers or None),
                                 ("cudnn_benchmark", args.cudnn_benchmark or None)) if v is not None}
    epochs = f"-e{args.epochs}" if args.epochs else ""
    over = {"seeds": args.seeds, "device": args.device, "data_root": None if root is None else str(root),
            "name": f"{args.dataset}-vgg19_bn-gpu-s{args.seeds}{epochs}"}
    raw = yaml.safe_load(SPEC.read_text())
    spec_epochs = raw["victim"]["train"]["epochs"]
    if args.epochs:
        over["victim"] = {**raw["victim"], "train": {**raw["victim"]["train"], "epochs": args.epochs}}
    if fashion:
        over.update(fashion_overrides(raw, f" Models trained {args.epochs} epoch(s), not the spec's {spec_epochs}."
                                      if args.epochs else ""))
    if runtime:
        over["runtime"] = runtime
    if args.smoke:
        over["smoke"] = True
    try:
        spec = load_spec(SPEC, over)
    except RemovalNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = Path(args.runs) / spec.name
    t0 = time.perf_counter()
    summary = run_experiment(spec, run_dir, progress=True)
    wall = time.perf_counter() - t0
    rows = job_rows(run_dir)
    td = build_table(run_dir)
    date = dt.datetime.now(dt.timezone.utc)
    dev = args.device.replace(":", "")
    out = Path(args.out) if args.out else HERE / "results" / \
        f"gpu-table1-vgg19_bn-{args.dataset}-{dev}{'-smoke' if args.smoke else ''}-{date:%Y%m%d}.md"
    title = "Fashion-MNIST (3-channel 32 px)/VGG19" if fashion else "CIFAR10/VGG19"
    text = "\n".join([
        f"# GPU benchmark: {title} Table 1, {len(spec.seeds)} seed(s){' (smoke scale)' if args.smoke else ''}",
        "",
        f"- machine: {machine(args.device)}",
        f"- date: {date:%Y-%m-%d %H:%M} UTC; commit {commit()}",
        f"- command: `python benchmarks/gpu_table1.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- spec: configs/paper/cifar10-vgg19_bn.yaml, device {args.device}, runtime {runtime or 'defaults'}"
        + (f"; dataset {FASHION}, S_LSD a {FASHION_HOLDOUT:.0%} partition of the training set (lsd_holdout)"
           if fashion else "")
        + (f"; models trained {args.epochs} epoch(s) instead of the spec's {spec_epochs}" if args.epochs else ""),
        f"- run folder: {run_dir}; {summary.planned} jobs, {summary.skipped_done} already done, {summary.ran} ran, "
        f"{len(summary.failed)} failed; wall time of this invocation {wall / 60:.1f} min "
        f"(sum of the job times below {sum(r['seconds'] for r in rows) / 60:.1f} min)",
        "",
        "## Jobs (wall time and peak GPU memory recorded by each job)",
        "",
        timing_markdown(rows),
        "",
        to_markdown(td),
    ]) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
