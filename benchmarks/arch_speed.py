"""Throughput of every paper architecture on this machine, to size a GPU run: training (forward, backward,
SGD step) and inference (forward, no grad) images/s at the architecture's input size in the paper specs,
batch 32, with 1 and 2 torch threads.

    python benchmarks/arch_speed.py [--archs vgg19_bn ...] [--threads 1 2] [--batch 32] [--steps 5]
                                    [--warmup 1] [--device cpu] [--out benchmarks/results/arch-speed.md]

Rows: the architecture of each grid of configs/paper/ with its dataset's classes and input size (the
small-input variants at 32 px, ViT-B/32 at 224 px), plus InceptionV3 at 299 px (torchvision's ImageNet-size
network). Writes a Markdown table with the machine, the date and the commit. Random inputs and labels: the
speed of the network alone, without data loading.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from table1 import commit, machine as cpu_machine  # noqa: E402  (the machine line and commit of every benchmark)
PAPER = HERE.parent / "configs" / "paper"


def paper_rows() -> list[tuple[str, str, int, int]]:
    """(arch, what, classes, input size) of every paper grid, plus InceptionV3 at 299 px."""
    from removalnet.data import get_dataset_info

    rows, seen = [], set()
    for path in sorted(PAPER.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        info = get_dataset_info(raw["dataset"])
        victim = raw["victim"]
        key = (victim.get("arch") or victim.get("model"), info.num_classes, info.input_size)
        if key not in seen:
            seen.add(key)
            rows.append((key[0], path.stem, info.num_classes, info.input_size))
    rows.append(("inception_v3", "ImageNet-size variant", 43, 299))
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(arch: str, classes: int, size: int, batch: int, steps: int, warmup: int,
            device: torch.device) -> tuple[float, float]:
    """(training images/s, inference images/s) of ``arch``."""
    from removalnet import create_model

    torch.manual_seed(0)
    model = create_model(arch, classes, 3, size).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def train_step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        train_step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step()
    _sync(device)
    train = batch * steps / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
        _sync(device)
    infer = batch * steps / (time.perf_counter() - t0)
    return train, infer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=None, help="only these architectures (default: all rows)")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(HERE / "results" / "arch-speed.md"))
    args = ap.parse_args(argv)

    from removalnet.utils import RemovalNetError, resolve_device
    try:
        device = resolve_device(args.device)
    except RemovalNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [r for r in paper_rows() if not args.archs or r[0] in args.archs]
    if not rows:
        print(f"error: no paper architecture among {args.archs}", file=sys.stderr)
        return 2
    head = "| architecture | grid | classes | input | " + " | ".join(
        f"train img/s ({t} thr) | infer img/s ({t} thr)" for t in args.threads) + " |"
    lines = [head, "|" + "---|" * (4 + 2 * len(args.threads))]
    loads = [os.getloadavg()[0]]   # other work on the machine slows every number: say how much there was
    for arch, what, classes, size in rows:
        cells = []
        for t in args.threads:
            torch.set_num_threads(t)
            tr, inf = measure(arch, classes, size, args.batch, args.steps, args.warmup, device)
            cells += [f"{tr:.1f}", f"{inf:.1f}"]
            print(f"{arch} {size}px threads={t}: train {tr:.1f} img/s, inference {inf:.1f} img/s", file=sys.stderr)
        lines.append(f"| {arch} | {what} | {classes} | {size} | " + " | ".join(cells) + " |")
        loads.append(os.getloadavg()[0])
    date = dt.datetime.now(dt.timezone.utc)
    text = "\n".join([
        "# Throughput of the paper's architectures",
        "",
        f"- machine: {cpu_machine()}, torch {torch.__version__}; device {device}",
        f"- date: {date:%Y-%m-%d %H:%M} UTC; commit {commit()}",
        f"- batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up step(s), random inputs "
        "(network only, no data loading); training = forward + backward + SGD step",
        f"- command: `python benchmarks/arch_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- 1-minute load average before and after each row: {', '.join(f'{v:.1f}' for v in loads)} "
        f"(on {os.cpu_count()} cores; a load above the thread count means other processes shared the cores)",
        "",
        *lines,
    ]) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
