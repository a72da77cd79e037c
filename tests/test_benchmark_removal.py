"""benchmarks/removal.py: every variant is a valid removalnet-plus configuration, and the aims are judged as
the docstring says (a synthetic summary with known answers)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from removalnet.attacks import create_attack

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _removal():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("removal_bench", BENCH / "removal.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


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


def _bench_without_runs(r, tmp_path, fp_keys, legacy_keys, scores):
    """A Bench with its state set by hand (no Table 1 run): results file, fingerprint keys, a fake scorer."""
    b = object.__new__(r.Bench)
    b.out = tmp_path
    b.results_path = tmp_path / "results.json"
    b.results = {}
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
    # the other process's row (read back by the saves) is one this call had not seen; the next call takes it,
    # and then nothing is left
    assert b.refresh() == 1 and b.scored[-1][0] == "model:other/seed-0"
    assert b.refresh() == 0
