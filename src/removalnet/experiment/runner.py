"""Run an experiment's job graph with an executor, recording every result in the run's SQLite database.

Finished jobs (same id, status done) are skipped, so an interrupted grid resumes where it stopped. A failing
job records its error; jobs that depend on it are recorded as skipped; every other job goes on.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from ..guards import RunLock, check_output_dir, warn
from ..utils import RemovalNetError, atomic_write_json, package_versions
from .estimate import RunEstimate, format_left
from .jobs import execute
from .plan import plan_jobs
from .preflight import check_spec_data
from .spec import ExperimentSpec
from .store import ResultStore

__all__ = ["run_experiment", "RunSummary", "LocalExecutor", "RayExecutor", "make_executor"]


@dataclass
class RunSummary:
    planned: int
    skipped_done: int
    ran: int = 0
    failed: list[str] = field(default_factory=list)
    skipped_deps: list[str] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped_deps and not self.stopped_early


class LocalExecutor:
    """Runs jobs one after another in this process."""

    name = "local"

    def run(self, jobs: list[dict[str, Any]], run_dir: Path, fp_jobs: dict[str, dict],
            is_ready: Callable[[dict], bool]) -> Iterator[tuple[dict, dict]]:
        for job in jobs:
            yield job, execute(job, run_dir, fp_jobs)


class RayExecutor:
    """Runs each job as a Ray task with its declared CPU/GPU needs; results return to the driver, which
    alone writes the database. Artifacts are files under the run folder, so the workers and the driver
    must share that folder (one machine, or a shared file system on a cluster)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError as e:
            raise RemovalNetError("the ray executor needs Ray: pip install 'removalnet[ray]'") from e
        self.ray = ray
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kw["address"] = address
            elif num_cpus:
                kw["num_cpus"] = num_cpus
            ray.init(**kw)

    def run(self, jobs: list[dict[str, Any]], run_dir: Path, fp_jobs: dict[str, dict],
            is_ready: Callable[[dict], bool]) -> Iterator[tuple[dict, dict]]:
        ray = self.ray
        remote = ray.remote(execute)
        pending = list(jobs)
        running: dict[Any, dict] = {}
        while pending or running:
            ready = [j for j in pending if is_ready(j)]
            for j in ready:
                pending.remove(j)
                ref = remote.options(num_cpus=j["resources"]["num_cpus"],
                                     num_gpus=j["resources"]["num_gpus"]).remote(j, str(run_dir), fp_jobs)
                running[ref] = j
            if not running:
                # nothing can start: the remaining jobs wait on failed dependencies
                for j in pending:
                    yield j, None  # type: ignore[misc]
                return
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                yield running.pop(ref), ray.get(ref)


def make_executor(name: str, address: str | None = None):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise RemovalNetError(f"unknown executor {name!r}; known: local, ray")


def run_experiment(spec: ExperimentSpec, run_dir: str | Path, *, executor: Any = None,
                   max_jobs: int | None = None, dry_run: bool = False, progress: bool = True,
                   echo: Callable[[str], None] = print, wait: bool = False) -> RunSummary:
    """Plan and run ``spec`` under ``run_dir``; return a summary. ``max_jobs`` stops after that many jobs
    have run (what an interruption does; a rerun resumes). One runner per run folder: a second one fails
    naming the holder's pid, or with ``wait`` waits for it (:class:`~removalnet.guards.RunLock`)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RemovalNetError(f"run folder {str(run_dir)!r} exists and is not a directory")
    notes = check_spec_data(spec, dry_run=dry_run)   # missing data, sizes it cannot serve: here, before any job
    jobs = plan_jobs(spec)
    by_id = {j.id: j for j in jobs}
    if dry_run:
        for n in notes:
            warn(n)
        store_status: dict[str, str] = {}
        db = run_dir / "results.db"
        if db.exists():
            with ResultStore(db, readonly=True, empty_ok=True) as s:
                store_status = s.statuses()
        for j in jobs:
            mark = "done" if store_status.get(j.id) == "done" else "todo"
            echo(f"{mark:<5} {j.kind:<12} {j.name:<48} {j.id}")
        todo = sum(store_status.get(j.id) != "done" for j in jobs)
        echo(f"{len(jobs)} jobs, {todo} to run")
        return RunSummary(planned=len(jobs), skipped_done=len(jobs) - todo)
    if (run_dir / "results.db").exists():   # a file that is not our database: refused before anything is written
        ResultStore(run_dir / "results.db", readonly=True, empty_ok=True).close()
    check_output_dir(run_dir, "run folder").mkdir(parents=True, exist_ok=True)
    executor = executor or LocalExecutor()
    with RunLock(run_dir, wait=wait), ResultStore(run_dir / "results.db") as store:
        atomic_write_json(run_dir / "spec.json", spec.to_dict())
        store.set_meta("spec", spec.to_dict())
        store.set_meta("plan", [j.id for j in jobs])
        store.set_meta("versions", package_versions())
        status = store.statuses()
        todo = [j for j in jobs if status.get(j.id) != "done"]
        summary = RunSummary(planned=len(jobs), skipped_done=len(jobs) - len(todo))
        state = {j.id: ("done" if status.get(j.id) == "done" else None) for j in jobs}
        fp_jobs = {j.name: j.to_dict() for j in jobs if j.kind == "fingerprint"}

        def is_ready(jd: dict) -> bool:
            return all(state.get(d) == "done" for d in jd["deps"])

        def blocked(jd: dict) -> str | None:
            for d in jd["deps"]:
                if state.get(d) in ("failed", "skipped"):
                    return by_id[d].name
            return None

        if progress and not todo:   # one line, not an empty bar drawn twice
            print(f"{spec.name}: all {len(jobs)} jobs already done", file=sys.stderr)
        # the time left is estimated from the kinds of the jobs left (estimate.py), not tqdm's mean per job
        bar = tqdm(total=len(todo), desc=f"{spec.name}", unit="job", disable=not progress or not todo,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} jobs [{elapsed}{postfix}]")
        queue = [j.to_dict() for j in todo]
        estimate = RunEstimate(queue)

        def show(name: str | None = None) -> None:
            left = format_left(estimate.seconds_left())
            bar.set_postfix_str(f"{name}, {left}" if name else left)

        ran = 0
        if isinstance(executor, LocalExecutor):
            for jd in queue:
                if max_jobs is not None and ran >= max_jobs:
                    summary.stopped_early = True
                    break
                dep = blocked(jd)
                if dep is not None:  # recorded as skipped without running
                    state[jd["id"]] = "skipped"
                    store.record(jd, "skipped", error=f"dependency {dep} did not finish")
                    summary.skipped_deps.append(jd["name"])
                    estimate.skip(jd)
                    bar.update(1)
                    continue
                show(jd["name"])
                result = execute(jd, run_dir, fp_jobs)
                ran += 1
                _record(store, jd, result, state, summary)
                estimate.finish(jd, result["finished"] - result["started"])
                bar.update(1)
        else:
            show()
            for jd, result in executor.run(queue, run_dir, fp_jobs, is_ready):
                if result is None:
                    dep = blocked(jd) or "a dependency"
                    state[jd["id"]] = "skipped"
                    store.record(jd, "skipped", error=f"dependency {dep} did not finish")
                    summary.skipped_deps.append(jd["name"])
                    estimate.skip(jd)
                else:
                    ran += 1
                    _record(store, jd, result, state, summary)
                    estimate.finish(jd, result["finished"] - result["started"])
                show()
                bar.update(1)
        bar.close()
        summary.ran = ran
    return summary


def _record(store: ResultStore, jd: dict, result: dict, state: dict, summary: RunSummary) -> None:
    state[jd["id"]] = result["status"]
    store.record(jd, result["status"], metrics=result["metrics"], error=result["error"],
                 versions=result["versions"], started=result["started"], finished=result["finished"])
    if result["status"] == "failed":
        summary.failed.append(jd["name"])
        tqdm.write(f"job {jd['name']} failed: {result['error']}", file=sys.stderr)  # errors go to stderr
