"""Job names and artifact paths of a run, and the datasets its jobs read: the one place that spells them.

A job's ``name`` is human-readable and is also the folder of its artifacts under the run folder:
``models/victim``, ``models/<role>-<i>`` (reference / negative models), ``attacks/<slug(label)>/seed-<s>``,
``fingerprints/<verifier>``, ``scores/<model job without its first part>[/tNNNN]`` and
``study/<study>/<name>``. Everything that needs a job's name or an artifact's path (the planner, the jobs,
the studies, the benchmarks) asks this module.
"""
from __future__ import annotations

import contextvars
import functools
import re
from pathlib import Path
from typing import Any

from ..data import balanced_subset, disjoint_split, load_dataset
from .smoke import smoke_subset

__all__ = ["VICTIM", "slug", "model_job", "attack_job", "fingerprint_job", "score_job", "study_job", "model_path",
           "checkpoint_path", "fingerprint_dir", "dataset", "training_split", "substitute_source", "substitute_count",
           "verifier_data", "verifier_train_data"]

#: the victim's train job
VICTIM = "models/victim"


def slug(text: str) -> str:
    """'Ours(S_LTD)' -> 'ours-s_ltd'; 'FT(0.5)' -> 'ft-0.5'."""
    s = re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-").lower()
    return s or "x"


def model_job(role: str, index: int) -> str:
    """The train job of reference / negative model ``index``: ``models/reference-0``."""
    return f"models/{role}-{index}"


def attack_job(label: str, seed: int) -> str:
    """The attack job of the spec row ``label`` at ``seed``: ``attacks/ft-0.5/seed-3``."""
    return f"attacks/{slug(label)}/seed-{seed}"


def fingerprint_job(verifier: str) -> str:
    return f"fingerprints/{verifier}"


def score_job(model_job_name: str, t: int | None = None) -> str:
    """The score job of a model (``scores/victim``, ``scores/ft-0.5/seed-3``), or of its checkpoint ``t``."""
    suffix = f"/t{t:04d}" if t is not None else ""
    return f"scores/{model_job_name.split('/', 1)[1]}{suffix}"


def study_job(study: str, name: str) -> str:
    """An analysis job of a study: ``study/boundary/tsne``."""
    return f"study/{study}/{name}"


def model_path(run_dir: str | Path, model_job_name: str) -> Path:
    """Where the model of a train/attack job is stored."""
    stem = "model" if model_job_name.startswith("models/") else "surrogate"
    return Path(run_dir) / model_job_name / f"{stem}.safetensors"


def checkpoint_path(run_dir: str | Path, attack_job_name: str, t: int) -> Path:
    """Where an attack job saves its surrogate at iteration ``t``."""
    return Path(run_dir) / attack_job_name / "checkpoints" / f"t{int(t):04d}.safetensors"


def fingerprint_dir(run_dir: str | Path) -> Path:
    """The run's fingerprint cache."""
    return Path(run_dir) / "fingerprints"


#: set by :func:`removalnet.experiment.jobs.execute` while a smoke-scale job runs (see smoke.py)
SMOKE: contextvars.ContextVar[bool] = contextvars.ContextVar("removalnet_smoke", default=False)


def dataset(name: str, split: str, root: str | None = None):
    """A dataset split as the running job sees it (the smoke-scale subset inside a smoke job), loaded once per
    process (the jobs of a run share it)."""
    return _load(name, split, root, SMOKE.get())


@functools.lru_cache(maxsize=8)
def _load(name: str, split: str, root: str | None, smoke: bool):
    ds = load_dataset(name, split, root)
    return smoke_subset(ds, split) if smoke else ds


def training_split(cfg: dict[str, Any]):
    """``(train, holdout)``: the training set minus the S_LSD holdout partition, and that partition (a
    class-stratified ``lsd_holdout`` fraction, fixed by seed 0; None without one)."""
    full = dataset(cfg["dataset"], "train", cfg.get("data_root"))
    frac = cfg.get("lsd_holdout") or 0.0
    if not frac:
        return full, None
    holdout, rest = disjoint_split(full, [frac, 1.0 - frac], seed=0)
    return rest, holdout


def substitute_source(cfg: dict[str, Any], holdout=None):
    """The dataset an attack job's S_LSD substitute set is drawn from (None for S_LTD: the training split)."""
    source = cfg.get("source")
    if cfg["scenario"] == "lsd" and source == "partition":
        return holdout
    return dataset(source, "train", cfg.get("data_root")) if source else None


def substitute_count(cfg: dict[str, Any], n_train: int, holdout=None) -> int:
    """An attack job's substitute-set size in samples: ``count``, or ``fraction`` of the victim's whole
    training set (``n_train`` samples) whatever the source (fraction 0.1 of Fashion-MNIST = 6000 samples,
    also when drawn from another dataset or the S_LSD partition; the stratified partition can be a few
    samples short of fraction x N, so it is capped at its size)."""
    if cfg.get("count") is not None:
        return int(cfg["count"])
    count = max(1, int(round(cfg["fraction"] * n_train)))
    if cfg["scenario"] == "lsd" and cfg.get("source") == "partition" and holdout is not None:
        count = min(count, len(holdout))
    return count


def verifier_data(cfg: dict[str, Any]):
    """The verifier's own data: the test split (never the attacker's substitute set, which comes from the
    training split), optionally a class-balanced subset of ``verifier_count`` samples."""
    test = dataset(cfg["dataset"], "test", cfg.get("data_root"))
    if cfg.get("verifier_count"):
        return balanced_subset(test, count=min(cfg["verifier_count"], len(test)), seed=0)
    return test


def verifier_train_data(verifier, cfg: dict[str, Any]):
    """The victim's training data for a verifier that reads it (DeepJudge's k, as its official script), else None."""
    return training_split(cfg)[0] if getattr(verifier, "uses_train_data", False) else None
