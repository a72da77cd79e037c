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
