"""Seconds per iteration of RemovalNet against plain fine-tuning (the same loop, CE loss only).

Both run through the attack loop of ``removalnet.attacks.base`` on the same model, batch and data:
Fashion-MNIST (a class-balanced 2,048-sample subset of the training set; random tensors of the same shape
when the dataset is not available), batch 128. Per-iteration times are taken between consecutive
iteration events after ``--warmup`` iterations; the two attacks alternate for ``--rounds`` rounds and the
median over all measured iterations is reported, as wall time and as process CPU time (less sensitive to
other processes on a shared machine). Writes ``benchmarks/results/attack_speed.json``.

    python benchmarks/attack_speed.py --iterations 20 --warmup 3 --rounds 2 --threads 1 2

Timings on a shared machine: the process CPU-time ratio with one thread is the steadiest number; with
several threads and other processes busy, OpenMP threads wait for each other and wall times swing.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from removalnet.attacks import Attack, create_attack
from removalnet.models import create_model
from removalnet.utils import atomic_write_json, package_versions, seed_everything

RESULT = Path(__file__).resolve().parent / "results" / "attack_speed.json"
# RemovalNet configurations measured: the defaults (the paper's); without the victim-output cache (the
# victim then runs once per batch; with the cache its outputs on the substitute set are computed once before
# the loop, a one-off pass outside the per-iteration times); and the bfloat16 inner loop
VARIANTS: dict[str, dict[str, Any]] = {"removalnet": {}, "removalnet_nocache": {"cache_victim_mb": 0.0},
                                       "removalnet_bf16": {"inner_precision": "bfloat16"}}


class PlainFinetune(Attack):
    """Fine-tune every layer with CE on the substitute labels: the reference point of the ratio."""

    name = "plain-ft"

    def run(self, ctx):
        def step(x, y, t):
            loss = F.cross_entropy(ctx.surrogate(x), y)
            return loss, {"loss": loss.detach(), "ce": loss.detach()}
        self.fit(ctx, step)


def substitute_set(n: int, seed: int) -> tuple[Any, str]:
    try:
        from removalnet.data import balanced_subset, load_dataset
        ds = load_dataset("fashion-mnist", "train")
        return balanced_subset(ds, count=n, seed=seed), "fashion-mnist (balanced subset of the training set)"
    except Exception as e:  # noqa: BLE001  (any missing file: fall back to tensors of the same shape)
        g = seed_everything(seed)
        return (TensorDataset(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)),
                f"random tensors 1x28x28 ({type(e).__name__})")


def time_attack(attack: Attack, victim, data, warmup: int) -> tuple[list[float], list[float]]:
    stamps: list[tuple[float, float]] = []

    def cb(event: str, **info: Any) -> None:
        if event == "iteration":
            stamps.append((time.perf_counter(), time.process_time()))

    attack(victim, data, seed=0, callbacks=[cb])
    wall = [b[0] - a[0] for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    cpu = [b[1] - a[1] for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    return wall, cpu


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", nargs="+", default=["vgg_small", "resnet_small"])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=20, help="measured iterations per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()],
                    help="torch intra-op thread counts to measure (default: 1 and torch's default)")
    ap.add_argument("--out", default=str(RESULT))
    args = ap.parse_args()
    data, data_desc = substitute_set(2048, 0)
    n_iter = args.warmup + args.iterations + 1
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    for threads, arch in [(t, a) for t in dict.fromkeys(args.threads) for a in args.archs]:
        torch.set_num_threads(threads)
        seed_everything(0)
        victim = create_model(arch, 10, 1, 28, width=args.width).eval()
        variants = {"plain_ft": lambda: PlainFinetune(iterations=n_iter, batch_size=args.batch_size)}
        for name, extra in VARIANTS.items():
            variants[name] = (lambda extra=extra: create_attack("removalnet", iterations=n_iter,
                                                                batch_size=args.batch_size, **extra))
        times = {k: {"wall": [], "cpu": []} for k in variants}
        for _ in range(args.rounds):
            for key, make in variants.items():
                wall, cpu = time_attack(make(), victim, data, args.warmup)
                times[key]["wall"] += wall
                times[key]["cpu"] += cpu
        med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in times.items()}
        res: dict[str, Any] = {"plain_ft_s_per_it": med["plain_ft"], "split_layer": victim.default_layer,
                               "width": args.width, "measured_iterations": len(times["plain_ft"]["wall"])}
        line = f"{arch}: plain FT {med['plain_ft']['wall']:.3f} s/it"
        for name, extra in VARIANTS.items():
            res[name] = {"params": extra, "s_per_it": med[name],
                         "ratio_wall": med[name]["wall"] / med["plain_ft"]["wall"],
                         "ratio_cpu": med[name]["cpu"] / med["plain_ft"]["cpu"]}
            line += (f"; {name} {med[name]['wall']:.3f} s/it (ratio wall {res[name]['ratio_wall']:.2f}, "
                     f"cpu {res[name]['ratio_cpu']:.2f})")
        results.setdefault(f"threads={threads}", {})[arch] = res
        print(f"[{threads} thread(s)] {line}")
    report = {
        "benchmark": "RemovalNet vs plain fine-tuning, seconds per iteration",
        "data": data_desc, "batch_size": args.batch_size, "input": [1, 28, 28], "warmup": args.warmup,
        "iterations_per_round": args.iterations, "rounds": args.rounds,
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                    "torch_threads_measured": list(dict.fromkeys(args.threads)), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg(), "device": "cpu"},
        "removalnet_defaults": create_attack("removalnet").params,
        "versions": package_versions(), "results": results,
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
