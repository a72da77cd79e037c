"""benchmarks/table1.py: the job-time section is computed from the run's finished jobs."""
from __future__ import annotations

from helpers import load_benchmark
from removalnet.experiment.store import ResultStore


def test_job_times_per_kind_from_the_finished_jobs(tmp_path):
    t1 = load_benchmark("table1")
    assert t1.job_time_lines(tmp_path) == "" and not list(tmp_path.iterdir())   # no run: no section, no file
    with ResultStore(tmp_path / "results.db") as store:
        for i, (kind, seconds, status) in enumerate([("train", 100.0, "done"), ("train", 300.0, "done"),
                                                     ("score", 6.0, "done"), ("attack", 50.0, "failed"),
                                                     ("custom", 2.5, "done")]):
            store.record({"id": str(i), "kind": kind, "name": f"{kind}/{i}", "config": {}}, status,
                         started=1000.0, finished=1000.0 + seconds)
    text = t1.job_time_lines(tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Kind")]
    # the paper's kinds first, then the others; a failed job is no cost of the recipe
    assert rows == ["| train | 2 | 200.0 | 6.7 |", "| score | 1 | 6.0 | 0.1 |", "| custom | 1 | 2.5 | 0.0 |"]
    assert "## Job times" in text
