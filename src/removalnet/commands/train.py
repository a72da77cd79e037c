"""``removalnet train``: train a model (a victim, or an independent reference/negative model) on a dataset."""
from __future__ import annotations

import argparse
import time

from ..params import Option
from ._modelref import add_model_options, build_model
from ..utils import resolve_device, seed_everything

NAME = "train"
HELP = "train a classifier on a registered dataset and save it as a safetensors checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fashion-mnist", help="dataset name (see `removalnet datasets`)")
    p.add_argument("--data-root", default=None, help="where the dataset's files are, if not the default place")
    p.add_argument("--model", default="vgg_small", metavar="REF",
                   help="architecture: a registered name (see `removalnet models`), path/file.py:Factory, "
                        "package.module:factory, torchvision:NAME or timm:NAME")
    p.add_argument("--width", type=int, default=None, help="base width of the small models")
    p.add_argument("--input-size", type=Option(int, low=1), default=None,
                   help="resize inputs to this size (default: the dataset's)")
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=None,
                   help="input channels (default: the dataset's; 3 repeats grayscale)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--iterations", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine")
    p.add_argument("--augment", choices=("none", "crop", "crop_flip"), default="none")
    p.add_argument("--seed", type=Option(int, low=0), default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--out", required=True, help="output directory; the checkpoint is OUT/model.safetensors")
    add_model_options(p, weights_help="initial weights (fine-tune from them): a state dict (.pt/.pth), "
                                      ".safetensors, or 'pretrained' for timm:NAME")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import save_checkpoint  # lazy: keeps torch off the CLI's start
    from ..data import get_dataset_info, load_dataset  # lazy: keeps torch off the CLI's start
    from ..data.refs import canonical_data_ref  # lazy: keeps torch off the CLI's start
    from ..guards import check_output_dir  # lazy: keeps torch off the CLI's start
    from ..models import check_model_kwargs  # lazy: keeps torch off the CLI's start
    from ..train import TrainConfig, train_model  # lazy: keeps torch off the CLI's start
    info = get_dataset_info(args.data)
    in_chans = args.in_chans or info.in_chans
    size = args.input_size or info.input_size
    device = resolve_device(args.device)
    out = check_output_dir(args.out)  # before any training: a run must not fail only at its save
    config = TrainConfig(epochs=args.epochs, iterations=args.iterations, batch_size=args.batch_size,
                         optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                         weight_decay=args.weight_decay, schedule=args.schedule, augment=args.augment)
    kw = {"width": args.width} if args.width is not None else {}
    check_model_kwargs(args.model, kw)
    train = load_dataset(args.data, "train", args.data_root, in_chans=in_chans, input_size=size)
    test = load_dataset(args.data, "test", args.data_root, in_chans=in_chans, input_size=size)
    seed_everything(args.seed)  # the initial weights depend on the seed too
    model = build_model(args, info, in_chans=in_chans, input_size=size, weights=args.weights, **kw)
    t0 = time.perf_counter()
    hist = train_model(model, train, test, config, seed=args.seed, device=device, progress=not args.quiet)
    wall = time.perf_counter() - t0
    acc = hist["final_test_accuracy"]
    ckpt = save_checkpoint(out / "model.safetensors", model, {
        "role": "trained", "dataset": canonical_data_ref(args.data), "seed": args.seed, "train_config": config.to_dict(),
        "test_accuracy": acc, "train_time_s": round(wall, 2), "history": {
            "train_loss": hist["train_loss"], "test_accuracy": hist["test_accuracy"]},
        "iterations": hist["iterations"]})
    print(f"{args.model} on {args.data}: test accuracy {acc * 100:.2f}% after {hist['iterations']} iterations "
          f"({hist['epochs']} epochs) in {wall:.1f}s on {device}")
    print(f"saved {ckpt}")
    return 0
