"""benchmarks/capacity.py: a width whose spec is the paper-protocol Table 1's (but for seeds and attacks) is read
from that run, any other difference runs its own; a width's rows keep their first seeds."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

from helpers import load_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _capacity():
    return load_benchmark("capacity")


def test_only_the_width_of_the_table1_run_shares_it():
    c = _capacity()
    table = c.load_spec(BENCH / "specs" / f"{c.TABLE1}.yaml")
    specs = {w: c.load_spec(BENCH / "specs" / f"capacity-vgg_small-w{w}.yaml") for w in (8, 16, 32, 64)}
    assert [w for w, s in specs.items() if c.shared_run(s, table)] == [16]
    w16 = specs[16]
    # every difference that changes a job breaks the sharing
    assert not c.shared_run(dataclasses.replace(w16, lsd_holdout=0.0), table)          # other training data
    assert not c.shared_run(dataclasses.replace(w16, verifiers={**w16.verifiers, "zest": {"num_masks": 10}}), table)
    assert not c.shared_run(dataclasses.replace(w16, seeds=[1, 2]), table)               # not the table's first seeds
    ft = dataclasses.replace(w16.attacks[0], params={"ratio": 0.8})
    assert not c.shared_run(dataclasses.replace(w16, attacks=[ft]), table)
    # checkpoint scoring only adds jobs: the table's RemovalNet(S_LTD) scores its checkpoints, the sweep's not
    assert any(a.score_checkpoints for a in table.attacks) and not any(a.score_checkpoints for a in w16.attacks)
    assert c.shared_run(dataclasses.replace(w16, attacks=w16.attacks[1:]), table)


def test_width_rows_keep_the_first_seeds_of_the_attacks_and_every_negative():
    c = _capacity()
    rows = [
        {"label": "FT(0.5)", "n": 5, "accuracy": [0.9, 0.8, 0.7, 0.6, 0.5], "owned": [True, False, True, True, True],
         "copies": {"DJ-LOD": [True, False, False, True, True]}},
        {"label": "WP(0.5)", "n": 5, "accuracy": [0.9] * 5, "owned": [True] * 5, "copies": {"DJ-LOD": [True] * 5}},
        {"label": "Negative", "n": 3, "accuracy": [0.85, 0.86, 0.87], "owned": [False, False, True],
         "copies": {"DJ-LOD": [False, True, False]}}]
    out = c.width_rows(SimpleNamespace(rows=rows), ["FT(0.5)"], 2)
    assert list(out) == ["FT(0.5)", "Negative"]
    assert out["FT(0.5)"] == {"n": 2, "accuracy": [0.9, 0.8], "copies": {"DJ-LOD": "1/2"}, "owned": "1/2"}
    assert out["Negative"] == {"n": 3, "accuracy": [0.85, 0.86, 0.87], "copies": {"DJ-LOD": "1/3"}, "owned": "1/3"}


def test_job_times_line_per_kind_of_the_finished_jobs(tmp_path):
    from removalnet.experiment.store import ResultStore
    c = _capacity()
    with ResultStore(tmp_path / "results.db") as store:
        for i, (kind, seconds, status) in enumerate([("score", 6.0, "done"), ("train", 100.0, "done"),
                                                     ("train", 300.0, "done"), ("attack", 50.0, "failed")]):
            store.record({"id": str(i), "kind": kind, "name": f"{kind}/{i}", "config": {}}, status,
                         started=1000.0, finished=1000.0 + seconds)
    # train before score, mean and range per kind; a failed job is no cost
    assert c.job_times(tmp_path) == ("Job wall times (results.db): train 2 (mean 200 s, 100-300); "
                                     "score 1 (mean 6 s, 6-6).")
