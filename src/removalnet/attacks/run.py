"""One attack run with its artifacts: the one path that both ``removalnet attack`` and the experiment
runner's attack jobs take.

:func:`run_attack` calls the attack and writes, under ``out_dir``, the surrogate's checkpoints
``checkpoints/tNNNN.safetensors`` (when ``save_checkpoints``; at t = 0, every ``checkpoint_every`` iterations
and at the end) and the per-iteration ``trace.csv`` (columns in order of first appearance: ``t``, the loss
terms, ``lr``; empty cells where a row lacks a column; a ``status`` column on the last row when the attack
returned its starting point). The caller saves the surrogate itself, with the
sidecar it needs.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from torch.utils.data import Dataset

from ..checkpoint import save_checkpoint
from ..models.split import SplitModel
from ..utils import atomic_path
from .base import Attack

__all__ = ["AttackRun", "run_attack", "write_trace"]


@dataclass
class AttackRun:
    surrogate: SplitModel
    time_s: float             # wall time of the attack call (checkpoint saving included)
    status: str = "ok"        # or RETURNED_START: the surrogate is its starting point (Attack.status)
    reduced_to: str | None = None   # what such a surrogate amounts to (e.g. "the permutation alone")


def write_trace(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` (an attack's trace) as CSV, atomically; columns in order of first appearance."""
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys or ["t"])
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})


def run_attack(attack: Attack, victim: SplitModel, substitute: Dataset, *, seed: int, out_dir: str | Path,
               device: Any = None, eval_set: Dataset | None = None, save_checkpoints: bool = True,
               checkpoint_meta: dict[str, Any] | None = None,
               callbacks: Sequence[Callable[..., None]] = ()) -> AttackRun:
    """Run ``attack`` on ``victim`` and ``substitute``; checkpoints (sidecar: ``checkpoint_meta``, ``t`` and the
    ``test_accuracy`` on ``eval_set`` when there is one) and ``trace.csv`` go under ``out_dir``."""
    out = Path(out_dir)
    meta = dict(checkpoint_meta or {})

    def on_event(event: str, **info: Any) -> None:
        if event == "checkpoint" and save_checkpoints:
            extra = {"test_accuracy": info["accuracy"]} if info.get("accuracy") is not None else {}
            save_checkpoint(out / "checkpoints" / f"t{int(info['t']):04d}.safetensors", info["model"],
                            {**meta, "t": int(info["t"]), **extra})

    t0 = time.perf_counter()
    surrogate = attack(victim, substitute, seed=seed, callbacks=(*callbacks, on_event), device=device,
                       eval_set=eval_set)
    wall = time.perf_counter() - t0
    rows = attack.trace
    if attack.status != "ok" and rows:   # said in the trace too: its last row carries the status
        rows = rows[:-1] + [{**rows[-1], "status": f"{attack.status}: {attack.reduced_to}"}]
    write_trace(out / "trace.csv", rows)
    return AttackRun(surrogate, wall, attack.status, attack.reduced_to)
