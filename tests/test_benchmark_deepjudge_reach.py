"""benchmarks/deepjudge_reach.py: the verdicts of DeepJudge at another m on a run folder's models (a tiny run
written here: victim, 2 references, 2 negatives, one attacked model = the victim itself, one saved variant)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import TensorDataset

from helpers import calibrated_vgg
from removalnet.attacks.permute import channel_spaces, farthest_permutations, permute_model
from removalnet.checkpoint import save_checkpoint
from removalnet.experiment.artifacts import attack_job, model_job, model_path
from removalnet.verify import create_verifier

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_verdicts_count_copies_per_row_at_the_independent_models_tau(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    spec_ = importlib.util.spec_from_file_location("deepjudge_reach_bench", BENCH / "deepjudge_reach.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    x = torch.rand(48, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    victim = calibrated_vgg(0, x)
    with torch.no_grad():
        data = TensorDataset(x, victim(x).argmax(1))
    run_dir, runs = tmp_path / "table1-vgg_small", tmp_path
    for role, seeds in (("reference", (1, 2)), ("negative", (3, 4))):
        for i, s in enumerate(seeds):
            save_checkpoint(model_path(run_dir, model_job(role, i)), calibrated_vgg(s, x))
    save_checkpoint(model_path(run_dir, attack_job("FT(0.5)", 0)), victim)        # an exact copy
    spaces = channel_spaces(victim, x[:2])
    permuted = permute_model(victim, spaces, farthest_permutations(victim, x, spaces)[0])
    save_checkpoint(runs / "removal-vgg_small" / "permute-only" / "seed-0.safetensors", permuted)
    spec = SimpleNamespace(references=SimpleNamespace(count=2), negatives=SimpleNamespace(count=2),
                           attacks=[SimpleNamespace(label="FT(0.5)"), SimpleNamespace(label="WP(0.5)")], seeds=[0])
    v = create_verifier("deepjudge", m=0.5, num_seeds=8, max_iters=20, max_tests=16)
    fp = v.extract(victim, data, seed=0)
    assert fp.meta["tests_reached"] > 0 and not fp.meta["fallback_unreached"]
    taus, rows = mod.verdicts("vgg_small", spec, run_dir, v, fp, victim, runs)
    assert set(taus) == set(mod.WHITE_BOX) and all(t > 0 for t in taus.values())
    indep = rows.pop("independent (5 references + 5 negatives)")
    assert indep == {"n": 4, **{m: 0 for m in mod.WHITE_BOX}}     # tau at the closest of them: none is a copy
    assert rows["FT(0.5)"] == {"n": 1, **{m: 1 for m in mod.WHITE_BOX}}   # distance 0: a copy by every metric
    assert "WP(0.5)" not in rows                                  # no saved model: no row
    assert rows["permute-only"]["n"] == 1 and set(rows) == {"FT(0.5)", "permute-only"}
    # the permuted copy is the same function, but DJ-LOD compares neurons one by one: no longer a copy
    assert rows["permute-only"]["DJ-LOD"] == 0
