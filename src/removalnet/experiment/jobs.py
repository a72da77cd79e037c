"""What each job of an experiment does. ``execute(job, run_dir)`` is a plain function of a job dict and the
run folder: it reads its inputs from the artifacts of the jobs it depends on, writes its own artifacts under
``run_dir/<job name>/`` and returns the job's metrics. It never touches the results database, so any executor
(in-process, Ray workers) can run it and hand the result back to the driver.
"""
from __future__ import annotations

import contextvars
import csv
import functools
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data import balanced_subset, get_dataset_info, load_dataset
from ..train import TrainConfig, evaluate, train_model
from ..utils import RemovalNetError, atomic_path, package_versions, seed_everything
from .runtime import job_runtime, loader_options
from .smoke import smoke_subset

__all__ = ["execute", "model_path", "verifier_data"]


def model_path(run_dir: Path, model_job_name: str) -> Path:
    """Where the model of a train/attack job is stored."""
    stem = "model" if model_job_name.startswith("models/") else "surrogate"
    return Path(run_dir) / model_job_name / f"{stem}.safetensors"


_SMOKE: contextvars.ContextVar[bool] = contextvars.ContextVar("removalnet_smoke", default=False)


def _dataset(name: str, split: str, root: str | None):
    """A split as the running job sees it: the smoke-scale subset inside a smoke job (see smoke.py)."""
    return _load(name, split, root, _SMOKE.get())


@functools.lru_cache(maxsize=8)
def _load(name: str, split: str, root: str | None, smoke: bool):
    ds = load_dataset(name, split, root)
    return smoke_subset(ds, split) if smoke else ds


def training_split(cfg: dict[str, Any]):
    """``(train, holdout)``: the training set minus the S_LSD holdout partition, and that partition (a
    class-stratified ``lsd_holdout`` fraction, fixed by seed 0; None without one)."""
    full = _dataset(cfg["dataset"], "train", cfg.get("data_root"))
    frac = cfg.get("lsd_holdout") or 0.0
    if not frac:
        return full, None
    from ..data import disjoint_split
    holdout, rest = disjoint_split(full, [frac, 1.0 - frac], seed=0)
    return rest, holdout


def verifier_data(cfg: dict[str, Any]):
    """The verifier's own data: the test split (never the attacker's substitute set, which comes from the
    training split), optionally a class-balanced subset of ``verifier_count`` samples."""
    test = _dataset(cfg["dataset"], "test", cfg.get("data_root"))
    if cfg.get("verifier_count"):
        return balanced_subset(test, count=min(cfg["verifier_count"], len(test)), seed=0)
    return test


def _train(job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    cfg = job["config"]
    info = get_dataset_info(cfg["dataset"])
    train, _ = training_split(cfg)
    test = _dataset(cfg["dataset"], "test", cfg.get("data_root"))
    base = TrainConfig.from_dict(cfg["train"])
    arch_config = dict(arch=cfg["arch"], num_classes=info.num_classes, in_chans=info.in_chans,
                       input_size=info.input_size, mean=list(info.mean), std=list(info.std), kwargs=cfg["kwargs"])
    if cfg["role"] == "victim":
        from ..models import create_model
        seed_everything(cfg["seed"])
        model = create_model(cfg["arch"], info.num_classes, info.in_chans, info.input_size,
                             mean=info.mean, std=info.std, **cfg["kwargs"])
        with job_runtime(cfg, model):
            hist = train_model(model, train, test, base, seed=cfg["seed"], device=cfg["device"], progress=False,
                               loader=loader_options(cfg.get("runtime"), cfg["device"]))
        extra = {"iterations": hist["iterations"], "lr": base.lr}
        acc = hist["final_test_accuracy"]
    else:
        from ..attacks.independent import train_independent
        with job_runtime(cfg):
            model, ti = train_independent(arch_config, train, test, seed=cfg["seed"], base_config=base,
                                          jitter=cfg["jitter"], device=cfg["device"])
        extra = {"iterations": ti["iterations"], "lr": ti["lr"]}
        acc = ti["test_accuracy"]
    save_checkpoint(model_path(run_dir, job["name"]), model, {
        "role": cfg["role"], "dataset": cfg["dataset"], "seed": cfg["seed"], "test_accuracy": acc, **extra})
    return {"accuracy": acc, **extra}


def _attack(job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from ..attacks import build_substitute, create_attack

    cfg = job["config"]
    victim, _ = load_checkpoint(model_path(run_dir, "models/victim"), device=cfg["device"])
    full = _dataset(cfg["dataset"], "train", cfg.get("data_root"))
    train, holdout = training_split(cfg)
    source, fraction, count = cfg.get("source"), cfg.get("fraction"), cfg.get("count")
    if cfg["scenario"] == "lsd" and source == "partition":
        # the attacker's own natural data: drawn from the holdout the victim never saw, sized against the
        # whole training set (fraction 0.01 of Fashion-MNIST = 600 samples)
        source = holdout
        if fraction is not None:  # the stratified holdout can be a few samples short of fraction x N
            count, fraction = min(int(round(fraction * len(full))), len(holdout)), None
    elif source:
        source = _dataset(source, "train", cfg.get("data_root"))
    elif fraction is not None:
        count, fraction = int(round(fraction * len(full))), None
    sub = build_substitute(victim, train, scenario=cfg["scenario"], fraction=fraction, count=count,
                           source=source, labels=cfg.get("labels", "victim"), seed=cfg["seed"],
                           device=cfg["device"])
    attack = create_attack(cfg["attack"], **cfg["params"])
    out = Path(run_dir) / job["name"]
    eval_set = None
    if cfg.get("eval_count"):  # a learning curve during the attack, on the verifier-side test split
        eval_set = verifier_data({**cfg, "verifier_count": cfg["eval_count"]})

    def on_event(event: str, **info: Any) -> None:
        if event == "checkpoint" and cfg.get("save_checkpoints"):
            save_checkpoint(out / "checkpoints" / f"t{int(info['t']):04d}.safetensors", info["model"],
                            {"role": "checkpoint", "attack": cfg["attack"], "t": int(info["t"]),
                             "seed": cfg["seed"], "dataset": cfg["dataset"]})

    t0 = time.perf_counter()
    # no evaluation here: the score jobs measure every saved model's accuracy once
    with job_runtime(cfg, victim):
        surrogate = attack(victim, sub, seed=cfg["seed"], callbacks=(on_event,), device=cfg["device"],
                           eval_set=eval_set)
    wall = time.perf_counter() - t0
    save_checkpoint(model_path(run_dir, job["name"]), surrogate, {
        "role": "attack", "attack": cfg["attack"], "label": cfg["label"], "params": attack.params,
        "scenario": cfg["scenario"], "substitute_size": len(sub), "seed": cfg["seed"], "dataset": cfg["dataset"],
        "time_s": round(wall, 2)})  # its accuracy is measured once, by the model's score job
    if attack.trace:
        keys = sorted({k for row in attack.trace for k in row}, key=lambda k: (k != "t", k))
        with atomic_path(out / "trace.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(attack.trace)
    return {"time_s": wall, "substitute_size": len(sub), "iterations": attack.params.get("iterations"),
            "history": attack.history}


def _fingerprint(job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from ..verify import FingerprintCache, create_verifier

    cfg = job["config"]
    victim, _ = load_checkpoint(model_path(run_dir, "models/victim"), device=cfg["device"])
    verifier = create_verifier(cfg["verifier"], **cfg["params"])
    t0 = time.perf_counter()
    fp = FingerprintCache(Path(run_dir) / "fingerprints").get_or_extract(
        verifier, victim, verifier_data(cfg), seed=cfg["seed"], device=cfg["device"])
    return {"time_s": time.perf_counter() - t0, "key": fp.key}


def _score(job: dict[str, Any], run_dir: Path, fp_jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from ..verify import FingerprintCache, create_verifier

    cfg = job["config"]
    dev = cfg["device"]
    victim, _ = load_checkpoint(model_path(run_dir, "models/victim"), device=dev)
    if cfg["role"] == "checkpoint":
        path = Path(run_dir) / cfg["model"] / "checkpoints" / f"t{cfg['t']:04d}.safetensors"
    else:
        path = model_path(run_dir, cfg["model"])
    suspect, meta = load_checkpoint(path, device=dev)
    test = _dataset(cfg["dataset"], "test", cfg.get("data_root"))
    metrics: dict[str, Any] = {"accuracy": evaluate(suspect, test)}
    times = {}
    cache = FingerprintCache(Path(run_dir) / "fingerprints")
    for vname, fp_job_name in cfg["verifiers"].items():
        fcfg = fp_jobs[fp_job_name]["config"]
        verifier = create_verifier(vname, **fcfg["params"])
        t0 = time.perf_counter()
        fp = cache.get_or_extract(verifier, victim, verifier_data(fcfg), seed=fcfg["seed"], device=dev)
        metrics.update(verifier.score(fp, victim, suspect, device=dev))
        times[vname] = time.perf_counter() - t0
    metrics["score_time_s"] = times
    return metrics


def execute(job: dict[str, Any], run_dir: str | Path, fp_jobs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run one job; return ``{"status", "metrics", "error", "versions", "started", "finished"}``.

    ``fp_jobs`` maps fingerprint job names to their job dicts (score jobs read the verifier parameters
    from them). Exceptions are caught and returned as a failed status with a one-line error.
    """
    run_dir = Path(run_dir)
    started = time.time()
    smoke = _SMOKE.set(bool(job["config"].get("smoke")))
    cuda = str(job["config"].get("device", "")).startswith("cuda") and torch.cuda.is_available()
    if cuda:  # each job records its own peak GPU memory
        torch.cuda.reset_peak_memory_stats()
    try:
        kind = job["kind"]
        if kind == "train":
            metrics = _train(job, run_dir)
        elif kind == "attack":
            metrics = _attack(job, run_dir)
        elif kind == "fingerprint":
            metrics = _fingerprint(job, run_dir)
        elif kind == "score":
            metrics = _score(job, run_dir, fp_jobs or {})
        elif kind == "study":
            from ..studies import create_study
            metrics = create_study(**job["config"]["study"]).run_job(job, run_dir)
        else:
            raise RemovalNetError(f"unknown job kind {kind!r}")
        if cuda and isinstance(metrics, dict):
            metrics["gpu_max_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        status, error = "done", None
    except Exception as e:  # a failing job is recorded and the others go on
        metrics = None
        status = "failed"
        last = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
        error = f"{type(e).__name__}: {e}{where}"
    finally:
        _SMOKE.reset(smoke)
    return {"status": status, "metrics": metrics, "error": error, "versions": package_versions(),
            "started": started, "finished": time.time()}
