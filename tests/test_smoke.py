"""The smoke scale (experiment/smoke.py): a pure spec -> smaller spec function, the data subsetting hook, the
--smoke option and spec key, and one clear line for a device this machine lacks."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from removalnet.cli import main
from removalnet.data import dataset_labels
from removalnet.experiment import load_spec
from removalnet.experiment.plan import plan_jobs
from removalnet.experiment.smoke import SMOKE_CLASSES, SMOKE_DATA, smoke_dict, smoke_subset
from removalnet.experiment.spec import spec_from_dict

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO / "configs" / "paper" / "cifar10-vgg19_bn.yaml"


def test_smoke_dict_is_pure_and_shrinks_sizes_only():
    raw = yaml.safe_load(CIFAR.read_text())
    before = copy.deepcopy(raw)
    s = smoke_dict(raw)
    assert raw == before  # the input is not changed
    assert s["name"] == "cifar10-vgg19_bn-smoke" and smoke_dict(s)["name"] == s["name"]  # suffix once
    assert s["smoke"] is True and s["seeds"] == 1
    assert (s["references"]["count"], s["negatives"]["count"]) == (2, 1)
    assert s["victim"]["arch"] == "vgg19_bn" and s["victim"]["train"]["iterations"] == 2
    assert s["victim"]["train"]["lr"] == raw["victim"]["train"]["lr"]  # the recipe is kept
    assert [(a["name"], a["label"], a["scenario"], a.get("source")) for a in s["attacks"]] == \
        [(a["name"], a["label"], a["scenario"], a.get("source")) for a in raw["attacks"]]
    for a, b in zip(s["attacks"], raw["attacks"]):
        assert a["params"]["iterations"] == 2 and a["params"]["checkpoint_every"] == 2
        assert {k: v for k, v in b.get("params", {}).items() if k != "iterations"}.items() <= a["params"].items()
    assert s["attacks"][-1]["params"]["latent_steps"] == 2  # RemovalNet's inner loop
    assert "latent_steps" not in s["attacks"][0]["params"]  # FT has no such parameter
    assert set(s["verifiers"]) == set(raw["verifiers"])
    assert s["verifiers"]["deepjudge"]["num_seeds"] == 4 and s["verifiers"]["zest"]["num_masks"] == 8
    for k in ("dataset", "data_root", "device", "threshold_rule"):
        assert s[k] == raw[k]


def test_smoke_spec_key_and_plan():
    raw = yaml.safe_load(CIFAR.read_text())
    spec = spec_from_dict({**raw, "smoke": True})
    assert spec.name.endswith("-smoke") and spec.smoke and spec.seeds == [0]
    jobs = plan_jobs(spec)
    assert all(j.config.get("smoke") is True for j in jobs)
    kinds = [j.kind for j in jobs]
    # victim + 2 references + 1 negative; 7 attacks x 1 seed; 5 fingerprints; 10 models + 2 x 2 checkpoints
    assert kinds.count("train") == 4 and kinds.count("attack") == 7 and kinds.count("fingerprint") == 5
    assert kinds.count("score") == 3 + 7 + 4
    real = plan_jobs(load_spec(CIFAR))
    assert not any("smoke" in j.config for j in real)  # real runs: job ids as before
    assert not {j.id for j in jobs} & {j.id for j in real}
    with pytest.raises(Exception, match="smoke: must be true or false"):
        spec_from_dict({**raw, "smoke": "yes"})


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "paper" / "studies").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_smoke_studies_minimal(path):
    spec = load_spec(path, {"smoke": True})
    st = spec.study
    assert spec.name.endswith("-smoke") and len(spec.seeds) == 1
    assert all(a.params["iterations"] <= 4 for a in spec.attacks)
    if st["name"] == "ablation":
        assert (st["alphas"], st["betas"]) == ([0.0, 1.0], [0.0, 8.0])
    if st["name"] == "boundary":
        assert st["iterations_shown"] == [0, 2] and st["per_class"] == 2
    if st["name"] == "substitute_size":
        assert st["ratios"] == [0.02, 0.2] and st["counts"] == [8]
    if st["name"] == "efficiency":
        assert st["knockoff"]["iterations"] == 2 and st["eval_count"] == 8


def test_smoke_subset_round_robin_golden():
    labels = torch.tensor([2, 0, 0, 1, 2, 0, 1, 0, 2, 2, 2, 2, 0, 1, 1, 1])
    ds = TensorDataset(torch.zeros(len(labels), 1), labels)
    sub = smoke_subset(ds, "test")  # 2 per class
    assert sub.indices == [0, 1, 2, 3, 4, 6]
    per, most = SMOKE_DATA["train"]
    big = TensorDataset(torch.zeros(3000, 1), torch.arange(3000) % 1000)  # 1000 classes, 3 each
    sub = smoke_subset(big, "train")  # the first 16 classes, all 3 samples of each
    assert sorted(dataset_labels(sub).tolist()) == [c for c in range(SMOKE_CLASSES) for _ in range(3)]
    many = TensorDataset(torch.zeros(2000, 1), torch.arange(2000) % 16)  # 125 per class: capped in all
    assert len(smoke_subset(many, "train")) == min(most, 16 * per)
    few = TensorDataset(torch.zeros(30, 1), torch.arange(30) % 3)
    assert np.bincount(dataset_labels(smoke_subset(few, "train"))).tolist() == [per] * 3


def test_run_smoke_option_dry_run(tmp_path, capsys):
    assert main(["run", str(CIFAR), "--smoke", "--dry-run", "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "attacks/ours-s_lsd/seed-0" in out and "seed-1" not in out and "32 jobs" not in out
    assert "models/negative-0" in out and "models/negative-1" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_one_line(tmp_path, capsys):
    rc = main(["run", str(CIFAR), "--smoke", "--runs", str(tmp_path)])  # the spec's device is cuda
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: device 'cuda' requested but CUDA is not available on this machine"]
    assert not any(tmp_path.iterdir())  # nothing written
