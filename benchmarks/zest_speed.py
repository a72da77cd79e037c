"""ZEST extraction time against the time of its forward passes alone (the speed aim: within 1.5x).

At ZEST's reference sizes (128 images x 1000 masks = 128,000 forward passes) on vgg_small width 8 at
Fashion-MNIST size (1 x 28 x 28, 10 classes), one torch thread:

* the bound: 128,000 forwards at the model's measured inference throughput (batches of ZEST's
  ``batch_size``, 500, of Fashion-MNIST test images; measured before and after the extraction, the
  mean of the two throughputs is used);
* ZEST: ``create_verifier("zest").extract(model, fashion-mnist test split, seed=0)`` with every default
  (quickshift segmentation, masked inputs, forwards, batched least squares), and the segmentation alone.

Wall time and process CPU time are both recorded; with one thread on a machine whose cores other
processes share, the CPU time is the steadier number. Writes ``benchmarks/results/zest_speed.json`` and
``.md``.

    PYTHONPATH=src python benchmarks/zest_speed.py
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from attack_speed import cpu_model
from removalnet.data import load_dataset
from removalnet.models import create_model
from removalnet.utils import atomic_path, atomic_write_json, package_versions, seed_everything
from removalnet.verify import create_verifier
from removalnet.verify.base import dataset_tensors
from removalnet.verify.zest import segment_images

RESULTS = Path(__file__).resolve().parent / "results"
AIM = 1.5


def commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        # results written by earlier benchmark runs do not make the code that runs now dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(load_before: tuple[float, ...]) -> dict[str, Any]:
    """The machine a one-thread CPU benchmark ran on, with the load average before and after."""
    return {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": 1,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "device": "cpu",
            "note": "the cores are shared with other processes (see loadavg): wall times include waiting for "
                    "them; the process CPU times do not"}


def write_results(out: Path, report: dict[str, Any], lines: list[str]) -> None:
    """``out`` (JSON) and its ``.md`` twin: ``lines`` plus the load average and the shared-machine note."""
    m = report["machine"]
    lines = [*lines, f"Load average before / after: {', '.join(f'{v:.1f}' for v in m['loadavg_before'])} / "
                     f"{', '.join(f'{v:.1f}' for v in m['loadavg_after'])}. Note: {m['note']}.", ""]
    atomic_write_json(out, report)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def timed(fn) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def throughput(model: torch.nn.Module, x: torch.Tensor, batches: int) -> dict[str, float]:
    """Images per second of ``model`` on batches of ``x`` (one warm-up batch, not counted)."""
    with torch.no_grad():
        model(x)
        _, wall, cpu = timed(lambda: [model(x) for _ in range(batches)])
    n = batches * len(x)
    return {"images": n, "wall_s": wall, "cpu_s": cpu, "per_s_wall": n / wall, "per_s_cpu": n / cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=20, help="batches per throughput measurement")
    ap.add_argument("--out", default=str(RESULTS / "zest_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    seed_everything(0)
    model = create_model("vgg_small", 10, 1, 28, width=8, mean=[0.286], std=[0.353]).eval()
    data = load_dataset("fashion-mnist", "test")
    zest = create_verifier("zest")
    p = zest.params
    n_forwards = p["num_images"] * p["num_masks"]
    probe, _ = dataset_tensors(data, list(range(p["batch_size"])))
    load_before = os.getloadavg()

    before = throughput(model, probe, args.batches)
    fp, zest_wall, zest_cpu = timed(lambda: zest.extract(model, data, seed=0))
    after = throughput(model, probe, args.batches)
    images = fp.tensors["images"]
    _, seg_wall, seg_cpu = timed(lambda: segment_images(images, seed=0))

    rate_wall = (before["per_s_wall"] + after["per_s_wall"]) / 2
    rate_cpu = (before["per_s_cpu"] + after["per_s_cpu"]) / 2
    bound_wall, bound_cpu = n_forwards / rate_wall, n_forwards / rate_cpu
    report = {
        "benchmark": "ZEST extraction vs its forward passes alone",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(),
        "model": "vgg_small width 8, 1x28x28, 10 classes (untrained; timings do not depend on weights)",
        "data": "fashion-mnist test split", "zest_params": p, "forwards": n_forwards,
        "throughput_before": before, "throughput_after": after,
        "forward_bound_s": {"wall": bound_wall, "cpu": bound_cpu},
        "zest_extract_s": {"wall": zest_wall, "cpu": zest_cpu},
        "segmentation_s": {"wall": seg_wall, "cpu": seg_cpu},
        "ratio": {"wall": zest_wall / bound_wall, "cpu": zest_cpu / bound_cpu},
        "aim": AIM, "aim_met_cpu": zest_cpu / bound_cpu <= AIM, "aim_met_wall": zest_wall / bound_wall <= AIM,
        "segments_mean": fp.meta["segments_mean"],
        "machine": machine(load_before), "versions": package_versions(),
    }
    r = report["ratio"]
    md = [
        "# ZEST extraction vs its forward passes alone",
        "",
        f"{report['date']}, commit `{report['commit']}`, {report['machine']['cpu']} "
        f"({report['machine']['cpu_count']} cores), torch {report['versions'].get('torch', '?')}, 1 thread.",
        f"Model: {report['model']}; ZEST defaults: {p['num_images']} images x {p['num_masks']} masks "
        f"= {n_forwards:,} forwards, batch {p['batch_size']}.",
        "",
        "| | wall s | CPU s |",
        "|---|---:|---:|",
        f"| forward bound ({n_forwards:,} forwards at the measured throughput) | {bound_wall:.1f} | {bound_cpu:.1f} |",
        f"| ZEST extraction (all of it) | {zest_wall:.1f} | {zest_cpu:.1f} |",
        f"| of which quickshift segmentation (measured apart) | {seg_wall:.1f} | {seg_cpu:.1f} |",
        f"| ratio ZEST / bound (aim <= {AIM}) | {r['wall']:.2f} | {r['cpu']:.2f} |",
        "",
        f"Throughput: {before['per_s_cpu']:.0f} / {after['per_s_cpu']:.0f} images per CPU second before / after "
        f"({before['per_s_wall']:.0f} / {after['per_s_wall']:.0f} per wall second).",
    ]
    write_results(Path(args.out), report, md)


if __name__ == "__main__":
    main()
