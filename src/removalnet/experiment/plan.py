"""The job graph of an experiment: victim once, reference and negative models once, each attack per seed,
fingerprints once per victim, then the scoring of every model, then a study's analysis jobs (if any).

Every job's id is a hash of its kind, its configuration and the ids of the jobs it depends on, so a rerun
recognises finished work (resume) and a changed configuration gets a new id (and is run again). Its
``name`` is human-readable and is also where its artifacts live under the run folder.

Verifiers that share a test generation (deepjudge, deepjudge_aligned and deepjudge_scaled with the same
generation parameters) generate it once: the first of their fingerprint jobs makes it and stores it in the
run's fingerprint cache, the later ones read it and wait for the first (an ordering dependency, not part of
their ids: what they compute is decided by their own configuration, so their ids are those they always had).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..attacks import create_attack
from ..models.refs import PRETRAINED
from ..utils import file_hash
from ..verify import create_verifier
from .artifacts import VICTIM, attack_job, fingerprint_job, model_job, score_job, slug
from .hooks import spec_section
from .spec import ExperimentSpec

__all__ = ["Job", "plan_jobs", "slug"]


@dataclass(frozen=True)
class Job:
    id: str
    kind: str                     # train | attack | fingerprint | score | study
    name: str                     # e.g. "attack/ft-0.5/seed-3"; artifacts under <run>/<name>/
    config: dict[str, Any]
    deps: tuple[str, ...] = ()
    seed: int | None = None
    resources: dict[str, float] = field(default_factory=lambda: {"num_cpus": 1, "num_gpus": 0})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["deps"] = list(self.deps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Job":
        return cls(**{**d, "deps": tuple(d["deps"])})


def _job(kind: str, name: str, config: dict[str, Any], deps: list["Job"] = (), seed: int | None = None,
         gpu: bool = False) -> Job:
    dep_ids = tuple(sorted(d.id for d in deps))
    blob = json.dumps({"kind": kind, "config": config, "deps": dep_ids}, sort_keys=True, default=str)
    jid = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return Job(jid, kind, name, config, dep_ids, seed, {"num_cpus": 1, "num_gpus": 1 if gpu else 0})


def plan_jobs(spec: ExperimentSpec) -> list[Job]:
    """All jobs of ``spec`` in dependency order."""
    gpu = spec.device.startswith("cuda")
    data = {"dataset": spec.dataset, "data_root": spec.data_root, "lsd_holdout": spec.lsd_holdout}
    if spec.smoke:  # only then, so the ids of real runs stay as they were
        data["smoke"] = True
    if spec.runtime:  # likewise: only the options that differ from the defaults (runtime.py)
        data["runtime"] = spec.runtime
    v = spec.victim
    kwargs = {**v.kwargs, "split_after": v.split_after} if v.split_after else v.kwargs
    arch = {"arch": v.arch, "kwargs": kwargs, "train": v.train}
    user = {}  # keys of a user's model, only when set (the ids of existing specs stay as they were)
    if v.normalize is not None:
        user["normalize"] = v.normalize
    vcfg = dict(user)
    if v.weights is not None:
        vcfg["weights"] = v.weights
        if v.weights != PRETRAINED:
            vcfg["weights_sha256"] = file_hash(v.weights)
    victim = _job("train", VICTIM, {**data, **arch, "role": "victim", "seed": v.seed, **vcfg,
                                              "jitter": 0.0, "device": spec.device}, seed=v.seed, gpu=gpu)
    jobs = [victim]
    models: list[tuple[Job, dict[str, Any]]] = []
    for role, group in (("reference", spec.references), ("negative", spec.negatives)):
        for i in range(group.count):
            seed = group.seed_offset + i
            if group.checkpoints:   # a given model, imported as it is (built as the victim's model)
                cfg = {**data, **arch, **user, "role": role, "seed": seed, "jitter": 0.0, "device": spec.device,
                       "weights": group.checkpoints[i], "weights_sha256": file_hash(group.checkpoints[i])}
            else:
                cfg = {**data, **arch, "role": role, "seed": seed, "jitter": group.jitter, "device": spec.device}
                if group.model is not None:
                    cfg["arch"], cfg["kwargs"] = group.model, {}
                if group.train is not None:
                    cfg["train"] = group.train
                if group.train_fn is not None:
                    cfg["train_fn"] = group.train_fn
                if group.init is not None:
                    cfg["init"] = group.init
                    if not group.init.startswith("timm:"):
                        cfg["init_sha256"] = file_hash(group.init)
            j = _job("train", model_job(role, i), cfg, seed=seed, gpu=gpu)
            jobs.append(j)
            models.append((j, {"role": role, "label": role, "index": i}))
    for a in spec.attacks:
        params = create_attack(a.name, **a.params).identity_params()
        for s in spec.seeds:
            cfg = {**data, "attack": a.name, "label": a.label, "params": params, "scenario": a.scenario,
                   "fraction": a.fraction, "count": a.count, "source": a.source, "labels": a.labels,
                   "seed": s, "device": spec.device, "save_checkpoints": a.score_checkpoints or a.keep_checkpoints}
            if a.eval_count:
                cfg["eval_count"] = a.eval_count
            j = _job("attack", attack_job(a.label, s), cfg, [victim], seed=s, gpu=gpu)
            jobs.append(j)
            models.append((j, {"role": "attack", "label": a.label, "index": s}))
            if a.score_checkpoints:
                every = params.get("checkpoint_every", 100)
                for t in range(0, params.get("iterations", 0) + 1, every):
                    models.append((j, {"role": "checkpoint", "label": a.label, "index": s, "t": t}))
    fps = []
    makers: dict[str, Job] = {}    # a shared test generation -> the fingerprint job that makes it
    for vname, vparams in spec.verifiers.items():
        # every parameter resolved, defaults included (as for attacks): a verifier whose parameters or defaults
        # change gets new fingerprint and score jobs instead of resuming the values of the old definition
        verifier = create_verifier(vname, **vparams)
        vparams = verifier.fingerprint_params()
        j = _job("fingerprint", fingerprint_job(vname), {**data, "verifier": vname, "params": vparams,
                                                          "verifier_count": spec.verifier_count, "seed": 0,
                                                          "device": spec.device}, [victim], seed=0, gpu=gpu)
        if verifier.generation is not None:
            shared = json.dumps([verifier.generation, verifier.generation_params()], sort_keys=True)
            if shared in makers:   # read the generation of an earlier job (ordering only: the id stays)
                j = replace(j, deps=tuple(sorted({*j.deps, makers[shared].id})))
            else:
                makers[shared] = j
        jobs.append(j)
        fps.append(j)
    for mj, info in models:
        cfg = {**data, **info, "model": mj.name, "verifiers": {f.config["verifier"]: f.name for f in fps},
               "verifier_count": spec.verifier_count, "device": spec.device}
        jobs.append(_job("score", score_job(mj.name, info.get("t")), cfg,
                         [victim, mj, *fps], seed=info.get("index"), gpu=gpu))
    if spec.study:  # the jobs of the spec's study section (registered by the layer that provides it)
        by_name = {j.name: j for j in jobs}
        for kind, name, cfg, dep_names in spec_section("study").plan(spec, by_name):
            deps = [by_name[d] for d in dep_names]
            j = _job(kind, name, {**data, **cfg, "device": spec.device}, deps, seed=cfg.get("seed"), gpu=gpu)
            jobs.append(j)
            by_name[j.name] = j
    return jobs
