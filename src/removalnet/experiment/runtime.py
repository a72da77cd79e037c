"""Runtime options of a spec for fast GPU runs (``runtime:`` in a spec), all off by default so CPU results
and the job ids of existing runs stay as they are (the job configs carry ``runtime`` only when it is set).

* ``precision``: ``float32`` (default) or ``bf16``: training and attack jobs run their forward passes under
  ``torch.autocast`` in bfloat16 (weights, optimizer and gradients stay float32). Fingerprint and score jobs
  always run in float32, so the verifiers' metrics stay comparable between runs. ``fp16`` is refused: it
  needs loss scaling, which the attacks' inner loops do not do; bf16 needs no scaling (A100, H100, H200).
* ``channels_last``: models of training and attack jobs in channels-last memory format (faster convolutions
  on tensor cores); checkpoints are stored contiguous as always.
* ``num_workers``: DataLoader worker processes of the training jobs (decoding JPEG/PNG files of the
  folder datasets in parallel); pinned memory is used with them on CUDA.
* ``cudnn_benchmark``: let cuDNN pick the fastest convolution algorithms (``torch.backends.cudnn.benchmark``).
  Off by default: with it a GPU run is faster but not bit-reproducible; without it a seeded GPU run repeats
  up to cuDNN's non-deterministic kernels (bit-identical results are only promised on the CPU).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from ..utils import RemovalNetError

__all__ = ["RUNTIME_DEFAULTS", "check_runtime", "job_runtime", "loader_options"]

RUNTIME_DEFAULTS: dict[str, Any] = {"precision": "float32", "channels_last": False, "num_workers": 0,
                                    "cudnn_benchmark": False}
_PRECISIONS = {"float32": None, "bf16": torch.bfloat16}


def check_runtime(runtime: Any) -> dict[str, Any]:
    """Validate a spec's ``runtime`` mapping; return only the keys that differ from the defaults."""
    if runtime is None:
        return {}
    if not isinstance(runtime, dict):
        raise RemovalNetError("runtime: must be a mapping (precision, channels_last, num_workers, cudnn_benchmark)")
    for k in runtime:
        if k not in RUNTIME_DEFAULTS:
            raise RemovalNetError(f"runtime.{k}: unknown key (known: {', '.join(RUNTIME_DEFAULTS)})")
    p = runtime.get("precision", "float32")
    if p == "fp16":
        raise RemovalNetError("runtime.precision: fp16 needs loss scaling, which the attacks do not do; use bf16")
    if p not in _PRECISIONS:
        raise RemovalNetError(f"runtime.precision: must be one of {', '.join(_PRECISIONS)}, got {p!r}")
    for k in ("channels_last", "cudnn_benchmark"):
        if not isinstance(runtime.get(k, False), bool):
            raise RemovalNetError(f"runtime.{k}: must be true or false")
    w = runtime.get("num_workers", 0)
    if isinstance(w, bool) or not isinstance(w, int) or w < 0:
        raise RemovalNetError(f"runtime.num_workers: must be an integer >= 0, got {w!r}")
    return {k: v for k, v in runtime.items() if v != RUNTIME_DEFAULTS[k]}


def loader_options(runtime: dict[str, Any] | None, device: str) -> dict[str, Any]:
    """DataLoader keywords for ``runtime``: worker processes and, on CUDA with workers, pinned memory."""
    w = int((runtime or {}).get("num_workers", 0))
    return {"num_workers": w, "pin_memory": bool(w) and str(device).startswith("cuda"),
            "persistent_workers": False}


@contextlib.contextmanager
def job_runtime(cfg: dict[str, Any], model: nn.Module | None = None, *, kind: str = "train") -> Iterator[None]:
    """The runtime options of job config ``cfg`` around a training or attack (``kind``): cuDNN benchmark
    mode, channels-last ``model``, bf16 autocast. Does nothing for a config without ``runtime``."""
    rt = cfg.get("runtime") or {}
    if not rt:
        yield
        return
    dev = torch.device(cfg.get("device", "cpu"))
    old_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(rt.get("cudnn_benchmark", False))
    if model is not None and rt.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    dtype = _PRECISIONS[rt.get("precision", "float32")]
    amp = torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    try:
        with amp:
            yield
    finally:
        torch.backends.cudnn.benchmark = old_bench
