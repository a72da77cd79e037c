"""Experiments: YAML specs, the job graph, executors (local, Ray) and the results database."""
from .plan import Job, plan_jobs
from .runner import LocalExecutor, RayExecutor, RunSummary, make_executor, run_experiment
from .spec import ExperimentSpec, load_spec, spec_from_dict
from .store import ResultStore

__all__ = ["Job", "plan_jobs", "LocalExecutor", "RayExecutor", "RunSummary", "make_executor", "run_experiment",
           "ExperimentSpec", "load_spec", "spec_from_dict", "ResultStore"]
