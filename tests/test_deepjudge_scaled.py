"""The scale-invariant alignment-aware DeepJudge (``deepjudge_scaled``): golden values from an independent numpy
re-implementation, exact invariance to per-neuron positive scaling and permutation, constant neurons, an
unrelated model, and the CLI."""
import itertools
import json

import numpy as np
import pytest
import torch

from removalnet.attacks.permute import channel_spaces, permute_model, random_permutations
from removalnet.attacks.rescale import channel_scales, rescale_model
from removalnet.checkpoint import save_checkpoint
from removalnet.cli import main
from removalnet.data import load_dataset
from removalnet.verify import create_verifier, verifier_class
from removalnet.verify.deepjudge_aligned import DeepJudgeAligned
from removalnet.verify.deepjudge_scaled import scaled_metrics, standardise

from helpers import digits_vgg


# ------------------------------------------------------------------ the oracle: numpy, brute-force matching
def np_standardise(a):
    a = np.asarray(a, dtype=np.float64)
    out = np.zeros_like(a)
    for c in range(a.shape[1]):
        col = a[:, c]
        sd = np.sqrt(np.mean((col - col.mean()) ** 2))
        if sd > 1e-5 * np.max(np.abs(col)):          # else: constant, stays 0
            out[:, c] = (col - col.mean()) / sd
    return out


def np_corr(u, v):
    u, v = u - u.mean(), v - v.mean()
    den = np.sqrt((u * u).sum() * (v * v).sum())
    return 0.0 if den == 0 else float((u * v).sum() / den)


def np_djs(victim, suspect, n_seeds, threshold=0.5, reduction="sum"):
    zv, zs = np_standardise(victim), np_standardise(suspect)
    c = zv.shape[1]
    best = max(itertools.permutations(range(c)),
               key=lambda p: sum(np_corr(zv[:, i], zs[:, p[i]]) for i in range(c)))
    zv, zs = zv[n_seeds:], zs[n_seeds:][:, list(best)]
    lod = float(np.mean(np.sqrt(((zv - zs) ** 2).sum(1))))

    def active(a):                                     # official DeepJudge normalize, then > threshold
        lo, hi = a.min(1, keepdims=True), a.max(1, keepdims=True)
        return (a - lo) / (hi - lo + 1e-6) > threshold
    diff = (active(zv) != active(zs)).astype(np.float64)
    lad = float(np.mean(diff.sum(1) if reduction == "sum" else diff.mean(1)))
    return {"DJS-LOD": lod, "DJS-LAD": lad}


VICTIM = [[0.0, 1.0, 2.0, 5.0, 3.0],
          [1.0, 0.5, 2.0, 4.0, 0.0],
          [2.0, 3.0, 2.0, 1.0, 1.0],
          [0.5, 2.5, 2.0, 0.0, 4.0],
          [3.0, 0.0, 2.0, 2.5, 2.0],
          [1.5, 1.5, 2.0, 3.0, 0.5]]            # neuron 2 is constant


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_golden_values_against_a_numpy_oracle(reduction):
    v = torch.tensor(VICTIM)
    g = torch.Generator().manual_seed(0)
    for suspect in (torch.rand(6, 5, generator=g) * 3, v + 0.7 * torch.randn(6, 5, generator=g),
                    torch.zeros(6, 5), v[:, [3, 0, 4, 2, 1]]):
        got = scaled_metrics(v, suspect, 2, reduction=reduction)
        want = np_djs(VICTIM, suspect.numpy(), 2, reduction=reduction)
        assert got["DJS-LOD"] == pytest.approx(want["DJS-LOD"], rel=1e-9, abs=1e-12)
        assert got["DJS-LAD"] == pytest.approx(want["DJS-LAD"], rel=1e-12, abs=1e-12)
    # one value by hand: the all-zero suspect standardises to 0, so LOD is the norm of the victim's z rows
    z = np_standardise(VICTIM)[2:]
    assert scaled_metrics(v, torch.zeros(6, 5), 2)["DJS-LOD"] == pytest.approx(
        float(np.mean(np.linalg.norm(z, axis=1))), rel=1e-12)


def test_constant_neurons_standardise_to_zero_never_nan():
    a = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 4.0], [1.0, 0.0, 6.0]])
    z = standardise(a)
    assert torch.isfinite(z).all()
    assert float(z[:, :2].abs().max()) == 0.0
    torch.testing.assert_close(z[:, 2], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) * 1.5 ** 0.5)
    m = scaled_metrics(torch.zeros(4, 3), torch.ones(4, 3), 1)      # every neuron constant: all z are 0
    assert m == {"DJS-LOD": 0.0, "DJS-LAD": 0.0}


def test_invariant_to_per_neuron_affine_maps_and_permutation():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(40, 12, generator=g)
    perm = torch.randperm(12, generator=g)
    s = torch.exp(torch.randn(12, generator=g) * 2)          # scales from ~0.02 to ~50
    suspect = torch.empty_like(v)
    suspect[:, perm] = v * s + torch.randn(12, generator=g)  # suspect neuron perm[c] carries victim neuron c
    m = scaled_metrics(v, suspect, 10)
    assert m["DJS-LOD"] < 1e-6 and m["DJS-LAD"] == 0.0
    other = scaled_metrics(v, torch.randn(40, 12, generator=g), 10)
    assert other["DJS-LOD"] > 1.0 and other["DJS-LAD"] > 1.0


def test_is_a_small_subclass_with_its_own_metrics():
    cls = verifier_class("deepjudge_scaled")
    assert issubclass(cls, DeepJudgeAligned)
    assert [m.name for m in cls.metrics] == ["DJS-LOD", "DJS-LAD"]
    assert all(m.direction == "distance" for m in cls.metrics)
    assert create_verifier("deepjudge_scaled").fingerprint_params() == \
        create_verifier("deepjudge_aligned").fingerprint_params()


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory):
    train = load_dataset("digits", "train")
    victim, other = digits_vgg(0), digits_vgg(1)
    x = torch.stack([train[i][0] for i in range(64)]).float()
    spaces = channel_spaces(victim, x[:2])
    copy = rescale_model(victim, spaces, channel_scales(victim, x, spaces, mode="random",
                                                        generator=torch.Generator().manual_seed(0)))
    copy = permute_model(copy, spaces, random_permutations(spaces, torch.Generator().manual_seed(0)))
    d = tmp_path_factory.mktemp("djs")
    paths = {}
    for name, m in (("victim", victim), ("copy", copy), ("other", other)):
        paths[name] = d / f"{name}.safetensors"
        save_checkpoint(paths[name], m, {"role": name, "dataset": "digits"})
    return victim, copy, other, paths


PARAMS = dict(num_seeds=16, max_iters=20, max_tests=32, m=0.5)


def test_a_permuted_rescaled_copy_scores_as_the_victim(digits_models):
    victim, copy, other, _ = digits_models
    data = load_dataset("digits", "test")
    v = create_verifier("deepjudge_scaled", **PARAMS)
    fp = v.extract(victim, data, seed=0)
    same, moved, unrelated = v.score(fp, victim, victim), v.score(fp, victim, copy), v.score(fp, victim, other)
    assert same == {"DJS-LOD": 0.0, "DJS-LAD": 0.0}
    assert moved["DJS-LOD"] < 1e-3 and moved["DJS-LAD"] < 1e-9
    assert unrelated["DJS-LOD"] > 1.0 and unrelated["DJS-LAD"] > 0.5
    dja = create_verifier("deepjudge_aligned", **PARAMS)
    assert dja.score(dja.extract(victim, data, seed=0), victim, copy)["DJA-LOD"] > 0.1   # scales fool DJA


def test_from_the_cli(digits_models, capsys):
    _, _, _, paths = digits_models
    with pytest.raises(SystemExit) as e:
        main(["verify", "--list"])
    assert e.value.code == 0
    assert "\ndeepjudge_scaled: " in capsys.readouterr().out
    args = [f"--param=deepjudge_scaled.{k}={v}" for k, v in PARAMS.items()]
    assert main(["verify", "--victim", str(paths["victim"]), "--suspect", str(paths["copy"]), str(paths["other"]),
                 "--verifier", "deepjudge_scaled", *args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    copy, other = ({k: m["value"] for k, m in s["metrics"].items()} for s in out["suspects"])
    assert set(copy) == {"DJS-LOD", "DJS-LAD"}
    assert copy["DJS-LOD"] < 1e-3 and copy["DJS-LAD"] < 1e-9 and other["DJS-LOD"] > 1.0
