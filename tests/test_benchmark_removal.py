"""benchmarks/removal.py: every variant is a valid removalnet-plus configuration, and the aims are judged as
the docstring says (a synthetic summary with known answers)."""
from __future__ import annotations

import json

import pytest

from helpers import load_benchmark
from removalnet.attacks import create_attack



def _removal():
    return load_benchmark("removal")


def test_every_variant_is_a_valid_removalnet_plus():
    r = _removal()
    assert set(r.DEFAULT_VARIANTS) <= set(r.VARIANTS) and len(set(r.DEFAULT_VARIANTS)) == len(r.DEFAULT_VARIANTS)
    for name, params in r.VARIANTS.items():
        attack = create_attack("removalnet-plus", **params)
        assert all(attack.params[k] == v for k, v in params.items()), name


def test_aims_judge_seeds_drop_and_cost():
    r = _removal()
    metrics = ["DJ-LAD", "ZEST-L2", "DJS-LAD"]

    def row(drop, copies, evades_all, cost):
        return {"n": 5, "drop": drop, "copies": copies, "evades_all": evades_all, "cost_vs_ft": cost}

    summary = {
        "cheap": row(0.0, {"DJ-LAD": 1, "ZEST-L2": 5, "DJS-LAD": 5}, 0, None),      # DJ-LAD in 4/5: met
        "costly": row(2.0, {"DJ-LAD": 0, "ZEST-L2": 0, "DJS-LAD": 0}, 5, 1.0),      # too many points
        "two-seeds": row(1.0, {"DJ-LAD": 3, "ZEST-L2": 1, "DJS-LAD": 5}, 0, 1.0),   # ZEST in 4/5 only
        "slow": row(1.0, {"DJ-LAD": 0, "ZEST-L2": 0, "DJS-LAD": 1}, 4, 3.5),        # all at once, but 3.5x FT
    }
    lines = r.aims(summary, metrics, 5, ["cheap", "costly", "two-seeds", "slow", "never-ran"])
    # the surviving metrics in SURVIVORS' order, then the scale-invariant countermeasure
    assert lines[0] == "- ZEST-L2: evaded in >= 4/5 seeds at <= 1.5 points by two-seeds, slow"
    assert lines[1] == "- DJ-LAD: evaded in >= 4/5 seeds at <= 1.5 points by cheap, slow"
    assert lines[2] == "- DJS-LAD: evaded in >= 4/5 seeds at <= 1.5 points by slow"
    assert lines[3].endswith("**no variant**") and "3.0x FT" in lines[3]
    # a variant that evades everything cheaply but whose cost was never measured is named, not counted
    summary["untimed"] = row(1.0, {"DJ-LAD": 0, "ZEST-L2": 0, "DJS-LAD": 0}, 5, None)
    summary["fast"] = row(1.5, {"DJ-LAD": 0, "ZEST-L2": 1, "DJS-LAD": 1}, 4, 3.0)
    last = r.aims(summary, metrics, 5, ["slow", "untimed", "fast"])[-1]
    assert last.endswith("per iteration: fast (cost not measured, so not counted: untimed)")


def test_costs_from_retimed_runs_or_the_runs_own_times():
    r = _removal()
    ms = [{"time_s": 30.0, "iterations": 300, "trained_iterations": 150}, {"time_s": 20.0, "iterations": 100},
          {"accuracy": 0.9}]   # a row without a time (a table model whose attack was not timed)
    assert r.run_costs(ms, None) == ([30.0, 20.0], [0.2, 0.2])
    retimed = [{"cpu_s": 12.0, "iterations": 300}, {"cpu_s": 5.0, "iterations": 0}]   # no iteration: no rate
    assert r.run_costs(ms, retimed) == ([12.0, 5.0], [0.04])
    assert r.run_costs(ms, []) == ([], [])   # retiming in use, this label not retimed: no cost, not a loaded one

    def run(cpu, its, setup, steady, load=0.1, finish=0.0):
        return {"cpu_s": cpu, "iterations": its, "setup_cpu_s": setup, "steady_cpu_s_per_it": steady,
                "finish_cpu_s": finish, "loadavg_before": [load, 0, 0], "commit": "abc1234"}
    retimed = {"FT(0.5)": [run(10.0, 1000, 0.5, 0.009), run(12.0, 1000, 0.7, 0.011)],
               "plus": [run(9.0, 300, 3.0, 0.02, finish=1.5)],
               "rescale-only": [run(4.0, 0, 4.0, None)], "Negative": []}
    lines, d = r.cost_section(retimed, "FT(0.5)")
    # FT: 0.011 s per iteration on average, 0.010 steady; plus: 0.03 amortised, 0.02 steady
    assert abs(d["plus"]["x_ft"] - 0.03 / 0.011) < 1e-9 and abs(d["plus"]["x_ft_steady"] - 2.0) < 1e-9
    assert abs(d["FT(0.5)"]["x_ft"] - 1.0) < 1e-9 and d["rescale-only"]["x_ft"] is None
    assert d["rescale-only"]["setup_cpu_s"] == 4.0 and "Negative" not in d
    assert lines[-1] == "| rescale-only | 1 | 0 | 4.0 | - | 0.0 | 4.0 | - | - | 0.10 |"
    assert lines[-2] == "| plus | 1 | 300 | 3.0 | 0.0200 | 1.5 | 9.0 | 2.73 | 2.00 | 0.10 |"


def _bench_without_runs(r, tmp_path, fp_keys, legacy_keys, scores):
    """A Bench with its state set by hand (no Table 1 run): results file, fingerprint keys, a fake scorer."""
    b = object.__new__(r.Bench)
    b.out = tmp_path
    b.results_path = tmp_path / "results.json"
    b.results = {}
    b.fraction = 0.01   # the proxy protocol's S_LTD fraction
    b.fp_keys, b.legacy_keys = dict(fp_keys), dict(legacy_keys)
    b.verifiers = {"deepjudge": {}, "deepjudge_aligned": {}, "deepjudge_scaled": {}, "zest": {}}
    b.victim = "victim-model"
    b.scored = []

    def score(model, names=None):
        b.scored.append((model, tuple(names)))
        return {m: scores[m] for n in names for m in scores if m.startswith(r_prefix[n])}

    r_prefix = {"deepjudge": "DJ-", "deepjudge_aligned": "DJA-", "deepjudge_scaled": "DJS-", "zest": "ZEST-"}
    b.score = score
    return b


def test_save_writes_only_its_rows_and_refresh_rescores_what_changed(tmp_path, monkeypatch):
    import json

    r = _removal()
    new = {"deepjudge": "dj-train", "deepjudge_aligned": "dja-train", "deepjudge_scaled": "djs-train", "zest": "z"}
    old = {"deepjudge": "dj-seeds", "deepjudge_aligned": "dja-seeds", "deepjudge_scaled": "djs-seeds", "zest": "z"}
    scores = {"DJ-LAD": 7.0, "DJA-LAD": 8.0, "DJS-LAD": 0.0, "ZEST-L2": 99.0}
    b = _bench_without_runs(r, tmp_path, new, old, scores)
    # another process's rows on disk survive this process's save, and this process never writes back rows it
    # did not change
    b.results_path.write_text(json.dumps({
        "variant/x/seed-0": {"DJ-LAD": 1.0, "DJA-LAD": 1.0, "DJS-LAD": 1.0, "ZEST-L2": 5.0},   # legacy keys
        "variant/y/seed-0": {"DJ-LAD": 2.0, "DJA-LAD": 2.0, "DJS-LAD": 2.0, "ZEST-L2": 6.0, "fingerprints": new},
        "reference-0": {"DJ-LAD": 3.0, "DJA-LAD": 3.0, "DJS-LAD": 3.0, "ZEST-L2": 7.0},
        "knockoff/seed-0": [{"t": 0}],
        "variant/z/seed-0": {"failed": "NaN"},
        "retime/plus/seed-0": {"cpu_s": 9.0, "iterations": 300},   # a timing: nothing to re-score
    }))
    b.results = json.loads(b.results_path.read_text())
    b.results["variant/y/seed-0"] = {**b.results["variant/y/seed-0"], "ZEST-L2": -1.0}   # changed, not saved
    on_disk = json.loads(b.results_path.read_text())
    on_disk["variant/other/seed-0"] = {"DJ-LAD": 4.0}                                     # another process
    b.results_path.write_text(json.dumps(on_disk))
    monkeypatch.setattr(r, "load_checkpoint", lambda path: (f"model:{path.parent.name}/{path.stem}", {}))
    assert b.refresh() == 2
    disk = json.loads(b.results_path.read_text())
    # the legacy variant row: re-scored from its saved surrogate with the three changed verifiers only
    assert b.scored == [("model:x/seed-0", ("deepjudge", "deepjudge_aligned", "deepjudge_scaled"))]
    assert disk["variant/x/seed-0"] == {"DJ-LAD": 7.0, "DJA-LAD": 8.0, "DJS-LAD": 0.0, "ZEST-L2": 5.0,
                                        "fingerprints": new}
    # a table model keeps its own verifiers' metrics (from the table run) and loses the extra ones, which
    # existing() re-scores
    assert disk["reference-0"] == {"DJ-LAD": 3.0, "ZEST-L2": 7.0, "fingerprints": new}
    assert disk["variant/y/seed-0"]["ZEST-L2"] == 6.0          # up to date: neither re-scored nor written back
    assert disk["variant/other/seed-0"] == {"DJ-LAD": 4.0}     # another process's row survives
    assert disk["knockoff/seed-0"] == [{"t": 0}] and disk["variant/z/seed-0"] == {"failed": "NaN"}
    assert disk["retime/plus/seed-0"] == {"cpu_s": 9.0, "iterations": 300}
    # the other process's row (read back by the saves) is one this call had not seen; the next call takes it,
    # and then nothing is left
    assert b.refresh() == 1 and b.scored[-1][0] == "model:other/seed-0"
    assert b.refresh() == 0


def test_retime_times_one_run_records_it_and_resumes(tmp_path, monkeypatch):
    import torch
    from torch.utils.data import TensorDataset

    from removalnet.models import create_model
    from removalnet.utils import RemovalNetError

    r = _removal()
    b = _bench_without_runs(r, tmp_path, {}, {}, {})
    torch.manual_seed(0)
    b.victim = create_model("vgg_small", 10, 1, 28, width=4).eval()
    b.cfg, b.spec = {}, type("Spec", (), {"dataset": "x", "data_root": None, "name": "t", "attacks": [
        type("A", (), {"label": "FT(0.5)", "name": "ft", "scenario": "ltd", "params": {"iterations": 6}})()]})()
    g = torch.Generator().manual_seed(0)
    sub = TensorDataset(torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g))
    monkeypatch.setattr(r, "training_split", lambda cfg: (None, None))
    monkeypatch.setattr(r, "dataset", lambda *a: range(3200))
    built = []
    monkeypatch.setattr(r, "build_substitute", lambda victim, train, **kw: built.append(kw) or sub)
    monkeypatch.setitem(r.VARIANTS, "tiny", {"iterations": 5, "batch_size": 8, "boundary_mix": 0.0,
                                             "holdout": 0.0})
    row = b.retime("tiny", seed=3, warmup=1)
    assert built == [{"scenario": "ltd", "count": 32, "seed": 3}]   # 1% of the training set, the seed's own
    assert row["iterations"] == 5 and row["steady_cpu_s_per_it"] > 0
    assert 0 < row["setup_cpu_s"] and 0 <= row["finish_cpu_s"] and row["setup_cpu_s"] + row["finish_cpu_s"] < row["cpu_s"]
    assert row["torch_threads"] == torch.get_num_threads() and len(row["loadavg_before"]) == 3
    ft = b.retime("FT(0.5)", seed=3, warmup=1)   # a table attack, with the spec's own parameters
    assert ft["iterations"] == 6
    saved = json.loads(b.results_path.read_text())
    assert saved["retime/tiny/seed-3"] == row and saved["retime/FT(0.5)/seed-3"] == ft
    assert b.retime("tiny", seed=3) is b.results["retime/tiny/seed-3"] and len(built) == 2   # resumed, not re-run
    with pytest.raises(RemovalNetError, match="neither a variant nor an S_LTD attack"):
        b.retime("WP(0.5)", seed=0)
    b.fraction = 0.1   # the paper protocol's: 10% of the whole training set, the seed's own samples
    b.substitute(seed=7)
    assert built[-1] == {"scenario": "ltd", "count": 320, "seed": 7}

    class Diverges:   # a run that fails the way a diverging one does: recorded as failed, not raised
        trace: list = []

        def __call__(self, *a, **k):
            raise RemovalNetError("ce became non-finite (nan) at iteration 3")
    monkeypatch.setattr(r, "create_attack", lambda name, **params: Diverges())
    failed = b.retime("tiny", seed=4)
    assert failed["failed"] == "ce became non-finite (nan) at iteration 3" and failed["iterations"] == 0
    assert json.loads(b.results_path.read_text())["retime/tiny/seed-4"]["failed"] == failed["failed"]


def test_a_run_that_returned_its_start_and_the_confidence_lines():
    r = _removal()
    assert r.returned_start({"status": "returned the start", "iterations": 150})
    assert r.returned_start({"iterations": 150, "selected_t": 0})            # stored before the status
    assert not r.returned_start({"iterations": 0, "selected_t": 0})          # permute-only: nothing trained
    assert not r.returned_start({"status": "ok", "iterations": 150, "selected_t": 25})
    # a surrogate that lost more than the report's collapse margin (10 points) against the victim is collapsed
    assert r.collapsed({"accuracy": 0.79}, 0.90) and not r.collapsed({"accuracy": 0.81}, 0.90)
    # SAC is a distance: 10 independent models at 1.0..1.9, two trained seeds far below, one that returned its
    # start, and one collapsed seed far above every independent model (it would evade SAC)
    independent = [{"SAC": 1.0 + 0.1 * i, "accuracy": 0.9} for i in range(10)]
    groups = {"Negative": independent[5:],
              "plus": [{"SAC": 0.1, "status": "ok", "accuracy": 0.88}, {"SAC": 0.2, "status": "ok", "accuracy": 0.87},
                       {"SAC": 0.0, "status": "returned the start", "accuracy": 0.9},
                       {"SAC": 5.0, "status": "ok", "accuracy": 0.34}]}
    lines = r.confidence_lines(groups, independent, ["SAC"], 0.9)
    row = next(line for line in lines if line.startswith("| plus |"))
    # the two trained seeds beat every independent model; neither the returned start nor the collapsed seed counts
    assert row.startswith("| plus | 1.00 (")
    assert any("n too small (10 independent models; >= 19 needed" in line for line in lines)
    # 1 - 0.05^(1/10) = 25.9%: no metric is bounded below 5%, which needs 59
    assert any("below 26% at 95% confidence" in line and "needs 59 independent" in line for line in lines)


def test_the_protocol_picks_its_table1_run_and_a_missing_run_is_refused(tmp_path):
    from removalnet.utils import RemovalNetError
    r = _removal()
    assert r.PROTOCOLS == {"paper": "-paper", "proxy": ""}
    for protocol, folder in (("paper", "table1-vgg_small-paper"), ("proxy", "table1-vgg_small")):
        with pytest.raises(RemovalNetError, match=f"{folder}: no Table 1 run here; run .*--protocol {protocol}"):
            r.Bench("vgg_small", tmp_path, protocol)
    assert list(tmp_path.iterdir()) == []   # nothing written for a run that is not there


def test_the_run_time_line_sums_the_stored_variant_runs():
    r = _removal()
    results = {"variant/plus/seed-0": {"time_s": 60.0, "torch_threads": 2}, "variant/plus/seed-1": {"time_s": 120.0},
               "variant/plus/seed-2": {"failed": "nan"}, "knockoff/seed-0": [{"t": 0}], "victim": {"time_s": 999.0}}
    assert r.run_time_line(results) == ("variant runs: 2, 3.0 min of attack wall time in all "
                                        "(torch threads: 2 in 1, not recorded in 1)")
