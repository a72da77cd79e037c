"""``removalnet models``: list the registered architectures."""
from __future__ import annotations

import argparse

from ..models import create_model, list_models, model_info

NAME = "models"
HELP = "list the registered architectures (with --details: blocks, split layer and parameters)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=("small", "paper"), default=None, help="only this family")
    p.add_argument("--details", action="store_true", help="build each model to show blocks and parameter counts")
    p.add_argument("--input-size", type=int, default=32, help="input size for --details")
    p.add_argument("--num-classes", type=int, default=10, help="classes for --details")


def run(args: argparse.Namespace) -> int:
    names = list_models(args.family)
    if not args.details:
        w = max(len(n) for n in names)
        for n in names:
            e = model_info(n)
            print(f"{n:<{w}}  {e.family:<6} {e.description}")
        return 0
    print(f"{'name':<14} {'family':<6} {'blocks':>6} {'layer':>5} {'params':>10}  (input {args.input_size}px)")
    for n in names:
        m = create_model(n, args.num_classes, 3, args.input_size)
        params = sum(p.numel() for p in m.parameters())
        print(f"{n:<14} {model_info(n).family:<6} {m.num_blocks:>6} {m.default_layer:>5} {params / 1e6:>9.2f}M")
    return 0
