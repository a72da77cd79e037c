"""Options shared by ``train``, ``attack`` and ``verify`` for a user's own model and weights.

``--model REF`` (a registered name, ``path/file.py:Factory``, ``package.module:factory``, ``torchvision:NAME``,
``timm:NAME``; see :func:`removalnet.models.resolve_model`), ``--weights FILE`` (the user's state dict
``.pt``/``.pth``, a ``.safetensors`` file or a removalnet checkpoint; ``pretrained`` for timm's weights),
``--split-after A,B,C`` (split points instead of the automatic ones) and ``--normalize none|data`` (the input
normalisation the model applies first: ``data`` = the dataset's mean/std, the default for a model the toolkit
initialises; ``none`` = images in [0, 1] as torchvision's ``ToTensor`` gives them, the default for the
user's own weights). Data references (``folder:PATH``, ``npz:PATH``) work through ``--data`` as dataset names.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils import RemovalNetError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["add_model_options", "split_after", "build_model", "load_model", "victim_file"]

MODEL_HELP = ("the model: a registered name (see `removalnet models`), path/to/file.py:Factory, "
              "package.module:factory, torchvision:NAME or timm:NAME")


def add_model_options(p: argparse.ArgumentParser, *, model_default: str | None = None, weights_help: str = "") -> None:
    """Add ``--model`` (unless the command has it), ``--weights``, ``--split-after`` and ``--normalize``."""
    if not any("--model" in a.option_strings for a in p._actions):
        p.add_argument("--model", default=model_default, metavar="REF",
                       help=MODEL_HELP + "; needed to load a plain state dict (.pt/.pth) given as a model file")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help=weights_help or "the model's weights: a state dict (.pt/.pth, read with weights_only=True; the "
                                        "keys of your own module), .safetensors, or 'pretrained' for timm:NAME")
    p.add_argument("--split-after", default=None, metavar="A,B,C",
                   help="split points of --model (submodule or fx node names, see `removalnet models --inspect`) "
                        "instead of the automatic ones")
    p.add_argument("--normalize", choices=("none", "data"), default=None,
                   help="input normalisation of --model: the dataset's mean/std ('data', default for a model "
                        "trained here) or none (default with --weights: your model sees images in [0, 1])")


def split_after(args: argparse.Namespace) -> list[str] | None:
    raw = getattr(args, "split_after", None)
    if not raw:
        return None
    names = [n.strip() for n in str(raw).split(",")]
    if not all(names):
        raise RemovalNetError(f"--split-after expects comma-separated names, got {raw!r}")
    return names


def build_model(args: argparse.Namespace, info, *, in_chans: int | None = None, input_size: int | None = None,
                weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """``--model`` for dataset ``info`` (classes, channels, size, normalisation), with ``weights`` loaded."""
    from ..checkpoint import load_weights  # lazy: keeps torch off the CLI's start
    from ..models import create_model, is_model_ref, resolve_model  # lazy: keeps torch off the CLI's start
    from ..models.refs import PRETRAINED  # lazy: keeps torch off the CLI's start
    in_chans = in_chans or info.in_chans
    input_size = input_size or info.input_size
    norm = getattr(args, "normalize", None) or ("none" if weights is not None else "data")
    mean, std = (info.mean, info.std) if norm == "data" else (None, None)
    points = split_after(args)
    if points:
        if not is_model_ref(args.model):
            raise RemovalNetError(f"--split-after applies to a model given as file.py:Factory, package.module:factory, "
                                  f"torchvision:NAME or timm:NAME; {args.model} has fixed blocks")
        kwargs["split_after"] = points
    if str(weights) == PRETRAINED:
        if not str(args.model).startswith("timm:"):
            raise RemovalNetError(f"--weights {PRETRAINED} is only available for timm:NAME models")
        return resolve_model(args.model, info.num_classes, in_chans, input_size, weights=PRETRAINED,
                             split_after=points, mean=mean, std=std)
    model = create_model(args.model, info.num_classes, in_chans, input_size, mean=mean, std=std, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_model(path: str | Path, args: argparse.Namespace, *, data: str | None, device) -> tuple[nn.Module, dict]:
    """A victim / suspect / reference file: a removalnet checkpoint (its sidecar names the architecture), else
    the weights of ``--model`` for the classes, channels and size of ``data``."""
    from ..checkpoint import is_checkpoint, load_checkpoint  # lazy: keeps torch off the CLI's start
    from ..data import get_dataset_info  # lazy: keeps torch off the CLI's start
    if is_checkpoint(path) and (not getattr(args, "model", None) or "build_config" in _sidecar(path)):
        return load_checkpoint(path, device=device)
    if not Path(path).exists():
        raise RemovalNetError(f"model file {str(path)!r} does not exist")
    if not getattr(args, "model", None):
        raise RemovalNetError(f"{str(path)!r} is not a removalnet checkpoint: give its architecture with --model REF "
                              "(e.g. mymodel.py:LeNet) and the data with --data")
    if not data:
        raise RemovalNetError(f"loading {str(path)!r} for --model {args.model} needs --data (the number of classes, "
                              "the channels and the input size come from the dataset)")
    info = get_dataset_info(data)
    model = build_model(args, info, weights=path)
    meta = {"format": "foreign", "source": str(path), "dataset": data, "num_classes": info.num_classes,
            "in_chans": model.in_chans, "input_size": info.input_size}
    return model.to(device).eval(), meta


def _sidecar(path: str | Path) -> dict:
    from ..checkpoint import read_sidecar  # lazy: keeps torch off the CLI's start
    return read_sidecar(path)


def victim_file(args: argparse.Namespace) -> str:
    """The victim's file: ``--victim`` or ``--weights`` (the same file; giving two different ones is an error)."""
    victim, weights = getattr(args, "victim", None), getattr(args, "weights", None)
    if victim and weights and Path(victim) != Path(weights):
        raise RemovalNetError("--victim and --weights name different files; give the victim's weights once")
    if not (victim or weights):
        raise RemovalNetError("give the victim: --victim FILE (a checkpoint, or a state dict with --model REF)")
    args.victim = victim or weights
    return args.victim
