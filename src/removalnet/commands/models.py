"""``removalnet models``: list the registered architectures; ``--inspect REF``: a model's split points."""
from __future__ import annotations

import argparse

from ..params import Option
from ..utils import RemovalNetError
from ._modelref import split_after

NAME = "models"
HELP = ("list the registered architectures (with --details: blocks, split layer and parameters); "
        "--inspect MODEL: the split points of any model reference")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=("small", "paper"), default=None, help="only this family")
    p.add_argument("--details", action="store_true", help="build each model to show blocks and parameter counts")
    p.add_argument("--input-size", type=Option(int, low=1), default=32, help="input size for --details")
    p.add_argument("--num-classes", type=Option(int, low=2), default=10, help="classes for --details / --inspect")
    p.add_argument("--inspect", default=None, metavar="MODEL",
                   help="show the blocks (split points, output shapes) and parameter count of MODEL: a registered "
                        "name, path/file.py:Factory, package.module:factory, torchvision:NAME or timm:NAME")
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=3, help="input channels for --inspect")
    p.add_argument("--data", default=None, metavar="DATASET",
                   help="for --inspect: take classes, channels and input size from this dataset (or folder:/npz:)")
    p.add_argument("--split-after", default=None, metavar="A,B,C", help="for --inspect: these split points instead")


def inspect_model(args: argparse.Namespace) -> int:
    from ..data import get_dataset_info  # lazy: keeps torch off the CLI's start
    from ..models import create_model, describe_split  # lazy: keeps torch off the CLI's start
    classes, chans, size = args.num_classes, args.in_chans, args.input_size
    if args.data:
        info = get_dataset_info(args.data)
        classes, chans, size = info.num_classes, info.in_chans, info.input_size
    points = split_after(args)
    if points and ":" not in args.inspect:
        raise RemovalNetError(f"--split-after applies to a model reference, not the registered {args.inspect}")
    model = create_model(args.inspect, classes, chans, size, **({"split_after": points} if points else {}))
    params = sum(p.numel() for p in model.parameters())
    print(f"{model.arch}: {params:,} parameters, {classes} classes, {chans}x{size}x{size} input")
    if model.unsplit_reason:
        print(f"no split layers: {model.unsplit_reason}")
        print("black-box verifiers and attacks work; white-box ones (DeepJudge, RemovalNet, distill) need "
              "split points (--split-after)")
        return 0
    print(f"{model.num_blocks} blocks, default split layer {model.default_layer}")
    print(f"{'layer':>5}  {'split after':<28} output")
    for l, (name, shape) in enumerate(describe_split(model, size), 1):
        mark = "  (default)" if l == model.default_layer else ""
        print(f"{l:>5}  {name:<28} {'x'.join(map(str, shape))}{mark}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..models import create_model, list_models, model_info  # lazy: keeps torch off the CLI's start
    if args.inspect:
        return inspect_model(args)
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
