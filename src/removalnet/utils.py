"""Small shared helpers: seeding, devices, weight hashes, package versions, atomic writes."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch and numpy are imported where they are used: this module (RemovalNetError) is on the CLI's start path

__all__ = [
    "seed_everything", "resolve_device", "weights_hash", "file_hash", "package_versions",
    "atomic_write_bytes", "atomic_write_json", "atomic_path", "RemovalNetError",
]


class RemovalNetError(Exception):
    """An error caused by the user's input (bad file, bad parameter, missing data).

    The command line prints its message on one line and exits non-zero.
    """


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch.Generator seeded with ``seed``."""
    if not isinstance(seed, int) or seed < 0:
        raise RemovalNetError(f"seed must be a non-negative integer, got {seed!r}")
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto'/None -> cuda when available, else cpu; otherwise the named device (validated)."""
    import torch
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RemovalNetError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def weights_hash(model: nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor in the state dict."""
    import torch
    from torch import nn
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (a given weights file joins its job's id: another file, another job)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of python and the packages that decide results, for every stored result."""
    from importlib import metadata
    out = {"python": platform.python_version()}
    for pkg in ("removalnet", "torch", "torchvision", "timm", "numpy", "scikit-learn", "scikit-image"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask  # mkstemp makes 0600; the result gets a normal file's permissions
    os.chmod(tmp, mode)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # again: a writer may have replaced the file (safetensors writes a new 0600 one)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())
