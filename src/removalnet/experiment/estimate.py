"""The time left of a run, estimated from its jobs' kinds (what the runner's progress bar shows).

A run's first jobs are its most expensive ones (training, then attacks); the mean time of the jobs finished so
far, which is what a progress bar extrapolates by default, then overestimates the cheap score jobs that come
last. Here every job has a cost class and a size (:func:`job_work`): train and attack jobs are measured in their
iterations, every other job counts as one unit of its kind. The seconds per unit of a class are learned from
the jobs of that class finished in this run (total seconds / total units); a class not yet seen takes its prior
(:data:`PRIOR_SECONDS`) times the machine's speed factor, the geometric mean of learned / prior over the classes
seen so far (so a machine twice as slow as the priors' is twice as slow for every kind).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

__all__ = ["PRIOR_SECONDS", "job_work", "RunEstimate", "format_left"]

#: seconds per unit of work of each cost class before a job of that class has finished in the run: rough
#: figures of a small CNN on two CPU cores (train / attack: per iteration of batch 64-128; the others per job).
#: Only their ratios matter once any job has finished (the speed factor rescales them).
PRIOR_SECONDS: dict[str, float] = {
    "train": 0.05,          # per training iteration
    "train-epochs": 20.0,   # per training epoch (a train config given in epochs)
    "import": 2.0,          # a given model imported as it is (weights file, no training)
    "attack": 0.15,         # per attack iteration (distillation: two forward passes, one backward)
    "fingerprint": 30.0,    # one verifier's fingerprint (DeepJudge's test generation dominates)
    "score": 10.0,          # one model scored by every verifier
    "study": 30.0,          # a study's analysis job
}
#: the prior of a job kind not listed above
DEFAULT_PRIOR = 30.0


def job_work(job: dict[str, Any]) -> tuple[str, float]:
    """``(cost class, units)`` of a job dict: a train job's iterations (``train-epochs``: its epochs; ``import``:
    given weights, one unit), an attack's iterations (at least 1: an attack without iterations still runs),
    one unit for every other kind (the kind is the class)."""
    kind, cfg = job["kind"], job.get("config") or {}
    if kind == "train":
        if cfg.get("weights"):
            return "import", 1.0
        train = cfg.get("train") or {}
        if train.get("iterations"):
            return "train", float(train["iterations"])
        if train.get("epochs"):
            return "train-epochs", float(train["epochs"])
        return "train", 1.0
    if kind == "attack":
        return "attack", float(max(1, int((cfg.get("params") or {}).get("iterations") or 0)))
    return kind, 1.0


class RunEstimate:
    """Seconds left of the jobs not finished yet (module docstring): ``finish(job, seconds)`` as each job ends,
    ``skip(job)`` for a job that will not run, ``seconds_left()`` for the estimate."""

    def __init__(self, jobs: Iterable[dict[str, Any]], prior: dict[str, float] | None = None):
        self.prior = {**PRIOR_SECONDS, **(prior or {})}
        self.pending: dict[str, tuple[str, float]] = {j["id"]: job_work(j) for j in jobs}
        self.seconds: dict[str, float] = {}     # per class: seconds of its finished jobs
        self.units: dict[str, float] = {}       # per class: units of its finished jobs

    def finish(self, job: dict[str, Any], seconds: float) -> None:
        """Job ``job`` finished (done or failed) after ``seconds``: learn its class's rate."""
        cls, units = self.pending.pop(job["id"], job_work(job))
        self.seconds[cls] = self.seconds.get(cls, 0.0) + max(0.0, float(seconds))
        self.units[cls] = self.units.get(cls, 0.0) + units

    def skip(self, job: dict[str, Any]) -> None:
        """Job ``job`` will not run (a dependency failed, or the run stops)."""
        self.pending.pop(job["id"], None)

    def rate(self, cls: str) -> float:
        """Seconds per unit of class ``cls``: learned if a job of it finished, else its prior x the speed factor."""
        if self.units.get(cls):
            return self.seconds[cls] / self.units[cls]
        return self.prior.get(cls, DEFAULT_PRIOR) * self.speed_factor()

    def speed_factor(self) -> float:
        """Geometric mean of learned / prior seconds per unit over the classes seen (1 before any job)."""
        logs = [math.log(self.seconds[c] / self.units[c] / self.prior.get(c, DEFAULT_PRIOR))
                for c in self.units if self.units[c] and self.seconds[c] > 0]
        return math.exp(sum(logs) / len(logs)) if logs else 1.0

    def seconds_left(self) -> float:
        """The estimated seconds of every job still pending (one after another, as the local executor runs them)."""
        return sum(units * self.rate(cls) for cls, units in self.pending.values())


def format_left(seconds: float) -> str:
    """``~40 s left``, ``~12 min left``, ``~1.5 h left``."""
    if seconds < 90:
        return f"~{max(1, round(seconds))} s left"
    if seconds < 90 * 60:
        return f"~{round(seconds / 60)} min left"
    return f"~{seconds / 3600:.1f} h left"
