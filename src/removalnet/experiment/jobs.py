"""What each job of an experiment does. ``execute(job, run_dir)`` is a plain function of a job dict and the
run folder: it reads its inputs from the artifacts of the jobs it depends on, writes its own artifacts under
``run_dir/<job name>/`` and returns the job's metrics. It never touches the results database, so any executor
(in-process, Ray workers) can run it and hand the result back to the driver.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import torch

from ..attacks import build_substitute, create_attack
from ..attacks.independent import build_from_config, train_independent
from ..attacks.run import run_attack
from ..checkpoint import build_model, is_checkpoint, load_checkpoint, save_checkpoint
from ..data import get_dataset_info
from ..guards import require_finite
from ..models import create_model
from ..models.refs import PRETRAINED, load_factory, user_code
from ..train import TrainConfig, evaluate, train_model
from ..utils import RemovalNetError, package_versions, seed_everything
from ..verify import FingerprintCache, create_verifier, score_model
from .artifacts import (SMOKE, VICTIM, checkpoint_path, dataset, fingerprint_dir, model_path, substitute_count,
                        substitute_source, training_split, verifier_data, verifier_train_data)
from .hooks import job_kind, register_job_kind
from .runtime import job_runtime, loader_options

__all__ = ["execute", "model_path", "verifier_data", "training_split", "verifier_train_data"]


def _normalization(cfg: dict[str, Any], info) -> tuple[Any, Any]:
    """The input normalisation of a user's model (spec ``normalize``; default ``none`` with given weights)."""
    norm = cfg.get("normalize") or ("none" if cfg.get("weights") else "data")
    if norm == "data":
        return list(info.mean), list(info.std)
    if norm == "none":
        return None, None
    return list(norm["mean"]), list(norm["std"])


def user_model(cfg: dict[str, Any], info, weights: str | None = None) -> Any:
    """The model of a train job's ``arch`` with ``weights`` (a weights file, ``pretrained``; a removalnet
    checkpoint with its sidecar keeps its own architecture)."""
    if weights and is_checkpoint(weights):
        return load_checkpoint(weights)[0]
    mean, std = _normalization(cfg, info)
    return build_model(cfg["arch"], info.num_classes, info.in_chans, info.input_size, weights=weights,
                       split_after=(cfg.get("kwargs") or {}).get("split_after"), mean=mean, std=std)


def _train(job: dict[str, Any], run_dir: Path, **_: Any) -> dict[str, Any]:
    cfg = job["config"]
    info = get_dataset_info(cfg["dataset"])
    train, _ = training_split(cfg)
    test = dataset(cfg["dataset"], "test", cfg.get("data_root"))
    base = TrainConfig.from_dict(cfg["train"])
    arch_config = dict(arch=cfg["arch"], num_classes=info.num_classes, in_chans=info.in_chans,
                       input_size=info.input_size, mean=list(info.mean), std=list(info.std), kwargs=cfg["kwargs"])
    if cfg.get("weights"):   # a trained model used as it is: imported into the run folder
        model = user_model(cfg, info, cfg["weights"])
        require_finite(model, test, f"the {cfg['role']} model {cfg['weights']}")
        acc = evaluate(model, test)
        extra = {"imported": cfg["weights"]}
    elif cfg["role"] == "victim":
        seed_everything(cfg["seed"])
        mean, std = _normalization(cfg, info)
        model = create_model(cfg["arch"], info.num_classes, info.in_chans, info.input_size,
                             mean=mean, std=std, **cfg["kwargs"])
        with job_runtime(cfg, model):
            hist = train_model(model, train, test, base, seed=cfg["seed"], device=cfg["device"], progress=False,
                               loader=loader_options(cfg.get("runtime"), cfg["device"]))
        extra = {"iterations": hist["iterations"], "lr": base.lr}
        acc = hist["final_test_accuracy"]
    else:
        start = None
        if cfg.get("init"):   # fine-tuned from a pretrained start (timm:NAME, or a weights file of arch)
            seed_everything(cfg["seed"])
            init = cfg["init"]
            start = (user_model({**cfg, "arch": init, "kwargs": {}, "normalize": "data"}, info, PRETRAINED)
                     if init.startswith("timm:") else user_model({**cfg, "normalize": "data"}, info, init))
        if cfg.get("train_fn"):   # the user's own training function trains the fresh (or init) model in place
            seed_everything(cfg["seed"])
            model = start if start is not None else build_from_config(arch_config)
            with user_code(f"training function {cfg['train_fn']!r}"):
                returned = load_factory(cfg["train_fn"])(model, train, test, seed=cfg["seed"])
            if returned is not None and returned is not model:
                raise RemovalNetError(f"{cfg['train_fn']} must train the model it is given in place and return "
                                      f"None (or that model), not a {type(returned).__name__}")
            model.eval()
            require_finite(model, test, f"the {cfg['role']} model trained by {cfg['train_fn']}")
            acc = evaluate(model, test)
            extra = {"train_fn": cfg["train_fn"]}
        else:
            with job_runtime(cfg):
                model, ti = train_independent(arch_config, train, test, seed=cfg["seed"], base_config=base,
                                              jitter=cfg["jitter"], device=cfg["device"], start=start)
            extra = {"iterations": ti["iterations"], "lr": ti["lr"]}
            acc = ti["test_accuracy"]
    save_checkpoint(model_path(run_dir, job["name"]), model, {
        "role": cfg["role"], "dataset": cfg["dataset"], "seed": cfg["seed"], "test_accuracy": acc, **extra})
    return {"accuracy": acc, **extra}


def _attack(job: dict[str, Any], run_dir: Path, **_: Any) -> dict[str, Any]:
    cfg = job["config"]
    victim, _ = load_checkpoint(model_path(run_dir, VICTIM), device=cfg["device"])
    full = dataset(cfg["dataset"], "train", cfg.get("data_root"))
    train, holdout = training_split(cfg)
    source, count = substitute_source(cfg, holdout), substitute_count(cfg, len(full), holdout)
    sub = build_substitute(victim, train, scenario=cfg["scenario"], count=count,
                           source=source, labels=cfg.get("labels", "victim"), seed=cfg["seed"],
                           device=cfg["device"])
    attack = create_attack(cfg["attack"], **cfg["params"])
    eval_set = None
    if cfg.get("eval_count"):  # a learning curve during the attack, on the verifier-side test split
        eval_set = verifier_data({**cfg, "verifier_count": cfg["eval_count"]})
    # no evaluation here: the score jobs measure every saved model's accuracy once
    with job_runtime(cfg, victim):
        res = run_attack(attack, victim, sub, seed=cfg["seed"], out_dir=Path(run_dir) / job["name"],
                         device=cfg["device"], eval_set=eval_set, save_checkpoints=bool(cfg.get("save_checkpoints")),
                         checkpoint_meta={"role": "checkpoint", "attack": cfg["attack"], "seed": cfg["seed"],
                                          "dataset": cfg["dataset"]})
    save_checkpoint(model_path(run_dir, job["name"]), res.surrogate, {
        "role": "attack", "attack": cfg["attack"], "label": cfg["label"], "params": attack.params,
        "scenario": cfg["scenario"], "substitute_size": len(sub), "seed": cfg["seed"], "dataset": cfg["dataset"],
        "time_s": round(res.time_s, 2)})  # its accuracy is measured once, by the model's score job
    return {"time_s": res.time_s, "substitute_size": len(sub), "iterations": attack.params.get("iterations"),
            "history": attack.history, "status": res.status, "reduced_to": res.reduced_to}


def _fingerprint(job: dict[str, Any], run_dir: Path, **_: Any) -> dict[str, Any]:
    cfg = job["config"]
    victim, _ = load_checkpoint(model_path(run_dir, VICTIM), device=cfg["device"])
    verifier = create_verifier(cfg["verifier"], **cfg["params"])
    require_finite(victim, verifier_data(cfg), "the victim", device=cfg["device"])
    t0 = time.perf_counter()
    fp = FingerprintCache(fingerprint_dir(run_dir)).get_or_extract(
        verifier, victim, verifier_data(cfg), seed=cfg["seed"], device=cfg["device"],
        train_data=verifier_train_data(verifier, cfg))
    # metrics the fingerprint declares degenerate (e.g. DeepJudge's RobD/JSD without an adversarial example)
    out = {"time_s": time.perf_counter() - t0, "key": fp.key, "degenerate": list(fp.meta.get("degenerate", []))}
    if "generation" in fp.meta:   # the test generation it shares with other verifiers (made by the first of them)
        out["generation"] = fp.meta["generation"]["key"]
    return out


def _score(job: dict[str, Any], run_dir: Path, fp_jobs: dict[str, dict[str, Any]] | None = None,
           **_: Any) -> dict[str, Any]:
    cfg = job["config"]
    dev = cfg["device"]
    victim, _ = load_checkpoint(model_path(run_dir, VICTIM), device=dev)
    if cfg["role"] == "checkpoint":
        path = checkpoint_path(run_dir, cfg["model"], cfg["t"])
    else:
        path = model_path(run_dir, cfg["model"])
    suspect, meta = load_checkpoint(path, device=dev)
    test = dataset(cfg["dataset"], "test", cfg.get("data_root"))
    require_finite(victim, test, "the victim", device=dev)  # refused by name before any metric
    require_finite(suspect, test, f"model {cfg['model']}" + (f" t={cfg['t']}" if cfg["role"] == "checkpoint" else ""),
                   device=dev)
    metrics: dict[str, Any] = {"accuracy": evaluate(suspect, test)}
    times = {}
    cache = FingerprintCache(fingerprint_dir(run_dir))
    for vname, fp_job_name in cfg["verifiers"].items():
        fcfg = (fp_jobs or {})[fp_job_name]["config"]
        verifier = create_verifier(vname, **fcfg["params"])
        t0 = time.perf_counter()
        # per-suspect verifiers (ModelDiff) pair the victim's fingerprint with this suspect here, once
        fp = cache.get_or_extract(verifier, victim, verifier_data(fcfg), seed=fcfg["seed"], device=dev,
                                  train_data=verifier_train_data(verifier, fcfg), suspect=suspect)
        metrics.update(score_model([verifier], {vname: fp}, victim, suspect, device=dev))
        times[vname] = time.perf_counter() - t0
    metrics["score_time_s"] = times
    return metrics


for _kind, _run in (("train", _train), ("attack", _attack), ("fingerprint", _fingerprint), ("score", _score)):
    register_job_kind(_kind, _run)


def execute(job: dict[str, Any], run_dir: str | Path, fp_jobs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run one job; return ``{"status", "metrics", "error", "versions", "started", "finished"}``.

    The job's kind picks what runs (train, attack, fingerprint, score, and the kinds registered through
    :mod:`.hooks`, e.g. a study's analysis jobs). ``fp_jobs`` maps fingerprint job names to their job dicts (score jobs read the verifier parameters
    from them). Exceptions are caught and returned as a failed status with a one-line error.
    """
    run_dir = Path(run_dir)
    started = time.time()
    config = job.get("config") or {}
    smoke = SMOKE.set(bool(config.get("smoke")))
    cuda = str(config.get("device", "")).startswith("cuda") and torch.cuda.is_available()
    if cuda:  # each job records its own peak GPU memory
        torch.cuda.reset_peak_memory_stats()
    try:
        metrics = job_kind(job["kind"])(job, run_dir, fp_jobs=fp_jobs or {})
        status, error = "done", None
        if cuda and isinstance(metrics, dict):
            metrics["gpu_max_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except (Exception, SystemExit) as e:  # a failing job is recorded and the others go on (sys.exit too)
        metrics = None
        status = "failed"
        last = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
        error = f"{type(e).__name__}: {e}{where}"
    finally:
        SMOKE.reset(smoke)
    return {"status": status, "metrics": metrics, "error": error, "versions": package_versions(),
            "started": started, "finished": time.time()}
