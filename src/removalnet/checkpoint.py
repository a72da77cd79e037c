"""Safe checkpoints: weights as safetensors plus a JSON sidecar that says how to rebuild the model.

``save_checkpoint("victim.safetensors", model, meta)`` writes ``victim.safetensors`` and ``victim.json``
(architecture, classes, channels, input size, normalisation, split layout, weights hash, package versions
and whatever the caller adds: dataset, seed, accuracy, attack parameters...). Both files are written to
temporary names and moved into place only when both are complete.

``load_checkpoint`` rebuilds the architecture from the sidecar, checks every tensor name and shape and the
weights hash, and fails with one clear message on any mismatch. A ``.pt``/``.pth`` file from another tool
is read only with ``torch.load(weights_only=True)``: a pickle that tries to run code is refused.

``load_weights(model, path)`` loads a user's weights into a model built from a reference
(:func:`removalnet.models.resolve_model`): a ``.pt``/``.pth`` state dict, a plain ``.safetensors`` file or a
removalnet checkpoint; the tensors may be named as the user's own module (the split model maps them).
"""
from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .models import SplitModel, create_model, resolve_model
from .models.refs import PRETRAINED
from .models.split import key_mismatch
from .utils import RemovalNetError, atomic_path, package_versions, weights_hash

__all__ = ["save_checkpoint", "load_checkpoint", "load_weights", "build_model", "is_checkpoint", "sidecar_path", "read_sidecar",
           "FORMAT"]

FORMAT = "removalnet-checkpoint/1"
_OWN_BUFFERS = ("normalize.",)   # SplitModel's input normalisation: the toolkit's, not the user's module's


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights to ``path`` (.safetensors) and its sidecar next to it; return ``path``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise RemovalNetError(f"checkpoint path must end in .safetensors, got {str(path)!r}")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    side: dict[str, Any] = {"format": FORMAT, "versions": package_versions()}
    if isinstance(model, SplitModel):
        side.update(arch=model.arch, num_blocks=model.num_blocks, default_layer=model.default_layer,
                    in_chans=model.in_chans,
                    mean=model.normalize.mean.flatten().tolist(), std=model.normalize.std.flatten().tolist())
        if hasattr(model, "build_config"):
            side["build_config"] = model.build_config
            side.update(num_classes=model.build_config["num_classes"], input_size=model.build_config["input_size"])
    side.update(meta or {})
    side["weights_sha256"] = weights_hash(state)
    side["tensors"] = len(state)
    with atomic_path(path) as tmp_w, atomic_path(sidecar_path(path)) as tmp_j:
        save_file(state, str(tmp_w), metadata={"format": FORMAT})
        tmp_j.write_text(json.dumps(side, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.exists():
        raise RemovalNetError(f"checkpoint sidecar {str(side)!r} is missing (expected next to {str(path)!r})")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise RemovalNetError(f"checkpoint sidecar {str(side)!r} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RemovalNetError(f"{str(side)!r} is not a removalnet checkpoint sidecar (format {FORMAT!r} expected)")
    return meta


def _load_foreign(path: Path) -> dict[str, torch.Tensor]:
    """Read a .pt/.pth state dict without ever executing pickled code."""
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of a file it then refuses anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as e:
        text = str(e).strip()
        pickled = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if pickled:   # a whole pickled model (or any object): what to save instead, not torch's allowlist advice
            raise RemovalNetError(
                f"refusing to load {str(path)!r}: it is not a plain tensor state dict (it holds a pickled "
                f"{pickled[1]} object, and unpickling runs code); save the weights alone with "
                "`torch.save(model.state_dict(), PATH)`") from e
        if "WeightsUnpickler error:" in text:  # the reason, not torch's advice to load it with weights_only=False
            text = text.split("WeightsUnpickler error:", 1)[1].strip()
        first = text.splitlines()[0] if text else type(e).__name__
        raise RemovalNetError(
            f"refusing to load {str(path)!r}: it is not a plain tensor state dict "
            f"(torch.load with weights_only=True rejected it: {first})") from e
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RemovalNetError(f"{str(path)!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _check_and_load(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    if isinstance(model, SplitModel) and model.source_keys and \
            len(set(state) & set(expected)) <= len(set(state) & set(model.source_names)):
        # a model of the user's own module: their tensor names, also in what a mismatch reports
        try:
            state = model.from_source_state(state)
        except RemovalNetError:
            need, have = set(model.source_keys.values()), set(state)
            raise RemovalNetError(f"{str(path)!r} does not match the architecture: "
                                  f"{key_mismatch(need - have, have - set(model.source_names))}") from None
    # the toolkit's own input normalisation is not part of a user's weights: kept as built where absent
    state = {**{k: v for k, v in expected.items() if k.startswith(_OWN_BUFFERS) and k not in state}, **state}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise RemovalNetError(f"{str(path)!r} does not match the architecture: {key_mismatch(missing, unexpected)}")
    names = getattr(model, "source_keys", None) or {}
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise RemovalNetError(f"{str(path)!r} does not match the architecture: tensor {names.get(k, k)!r} has shape "
                                  f"{tuple(state[k].shape)}, the model expects {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a removalnet checkpoint (``.safetensors`` with its sidecar)."""
    path = Path(path)
    return path.suffix == ".safetensors" and sidecar_path(path).exists()


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place; returned): a ``.pt``/``.pth``/``.bin`` state dict
    (``torch.load(weights_only=True)``), a plain ``.safetensors`` file or a removalnet checkpoint."""
    path = Path(path)
    if not path.exists():
        raise RemovalNetError(f"weights file {str(path)!r} does not exist")
    if path.suffix in (".pt", ".pth", ".bin"):
        _check_and_load(model, _load_foreign(path), path)
    elif is_checkpoint(path):
        load_checkpoint(path, model=model)
    elif path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise RemovalNetError(f"{str(path)!r} is not a readable safetensors file ({e})") from e
        _check_and_load(model, state, path)
    else:
        raise RemovalNetError(f"unsupported weights file {str(path)!r}: use a .pt/.pth state dict or .safetensors")
    return model


def load_checkpoint(path: str | Path, *, model: nn.Module | None = None,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint; return ``(model, meta)`` with the model in eval mode on ``device``.

    For a ``.safetensors`` checkpoint the architecture comes from the sidecar unless ``model`` is given
    (a user-defined module: its state dict must match). For a ``.pt``/``.pth`` file ``model`` is required.
    """
    path = Path(path)
    if not path.exists():
        raise RemovalNetError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix in (".pt", ".pth", ".bin"):
        if model is None:
            raise RemovalNetError(f"loading {str(path)!r} needs the architecture: pass model= (or --model REF on the CLI)")
        _check_and_load(model, _load_foreign(path), path)
        return model.to(device).eval(), {"format": "foreign", "source": str(path)}
    if path.suffix != ".safetensors":
        raise RemovalNetError(f"unsupported checkpoint type {path.suffix!r}: use .safetensors (or .pt/.pth state dicts)")
    meta = read_sidecar(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RemovalNetError(f"{str(path)!r} is not a readable safetensors file ({e})") from e
    if weights_hash(state) != meta.get("weights_sha256"):
        raise RemovalNetError(f"{str(path)!r} does not match its sidecar: the weights hash differs "
                              "(the two files come from different checkpoints)")
    if model is None:
        bc = meta.get("build_config")
        if not bc:
            raise RemovalNetError(f"{str(sidecar_path(path))!r} has no build_config: pass model= to load it")
        if not isinstance(bc, dict):
            raise RemovalNetError(f"{str(sidecar_path(path))!r}: build_config must be a mapping")
        lacking = [k for k in ("arch", "num_classes", "in_chans", "input_size") if k not in bc]
        if lacking:
            raise RemovalNetError(f"{str(sidecar_path(path))!r}: build_config lacks {', '.join(map(repr, lacking))}")
        kwargs = bc.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise RemovalNetError(f"{str(sidecar_path(path))!r}: build_config.kwargs must be a mapping")
        try:
            model = create_model(bc["arch"], bc["num_classes"], bc["in_chans"], bc["input_size"],
                                 mean=meta.get("mean"), std=meta.get("std"), **kwargs)
        except RemovalNetError as e:
            raise RemovalNetError(f"{str(sidecar_path(path))!r}: cannot rebuild the model: {e}") from e
    _check_and_load(model, state, path)
    return model.to(device).eval(), meta


def build_model(ref: str, num_classes: int = 10, in_chans: int = 3, input_size: int = 32, *,
                weights: str | Path | None = None, split_after=None, mean=None, std=None) -> SplitModel:
    """The model ``ref`` names (a registered name, ``file.py:Factory``, ``package.module:factory``,
    ``torchvision:NAME``, ``timm:NAME``) with ``weights`` loaded: a ``.pt``/``.pth`` state dict (read with
    ``weights_only=True``; also a dict holding it under ``state_dict``/``model``), a ``.safetensors`` file (plain,
    or a removalnet checkpoint), or ``"pretrained"`` for timm's pretrained weights. The state dict may use the
    user's module's own names."""
    pretrained = weights == PRETRAINED
    model = resolve_model(ref, num_classes, in_chans, input_size, weights=PRETRAINED if pretrained else None,
                          split_after=split_after, mean=mean, std=std)
    if weights is not None and not pretrained:
        load_weights(model, weights)
    return model
