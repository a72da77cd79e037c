"""Experiments: YAML specs, the job graph, executors (local, Ray) and the results database.

Job names and artifact paths: :mod:`.artifacts`; what a higher layer (the studies) plugs in: :mod:`.hooks`.
"""
from . import artifacts, hooks
from .plan import Job, plan_jobs
from .runner import LocalExecutor, RayExecutor, RunSummary, make_executor, run_experiment
from .spec import ExperimentSpec, load_spec, spec_from_dict
from .store import ResultStore

__all__ = ["artifacts", "hooks", "Job", "plan_jobs", "LocalExecutor", "RayExecutor", "RunSummary", "make_executor", "run_experiment",
           "ExperimentSpec", "load_spec", "spec_from_dict", "ResultStore"]
