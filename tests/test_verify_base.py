"""Verifier base: registry, parameters, fingerprint storage, the fingerprint cache, and `removalnet verify`."""
import json

import pytest
import torch
from torch.utils.data import TensorDataset

from removalnet import create_model
from removalnet.checkpoint import save_checkpoint
from removalnet.cli import main
from removalnet.data import load_dataset
from removalnet.train import TrainConfig, train_model
from removalnet.utils import RemovalNetError, weights_hash
from removalnet.verify import (Fingerprint, FingerprintCache, Metric, all_metrics, create_verifier, list_verifiers,
                               register_verifier)
from removalnet.params import Param
from removalnet.verify.base import Verifier, auto_batch_size, fingerprint_key, prepared_models
from removalnet.verify.deepjudge import DeepJudge

TINY = dict(num_seeds=8, max_tests=8, max_iters=20, step=0.05, pgd_steps=3, batch_size=32)


def _model(seed, width=4):
    torch.manual_seed(seed)
    return create_model("vgg_small", 10, 1, 16, width=width)


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 16, 16)
    return x, TensorDataset(x, _model(0)(x).argmax(1).detach())  # labels = the victim's predictions


# ------------------------------------------------------------------------------------------ registry
def test_registry_and_metrics():
    assert "deepjudge" in list_verifiers()
    metrics = all_metrics()
    for name in ("DJ-LOD", "DJ-LAD", "DJ-NOD", "DJ-NAD", "DJ-RobD", "DJ-JSD"):
        assert metrics[name] == Metric(name, "distance")
    assert isinstance(create_verifier("deepjudge", m=2.0), DeepJudge)
    with pytest.raises(RemovalNetError, match="unknown verifier 'nope'"):
        create_verifier("nope")
    with pytest.raises(RemovalNetError, match="batch_size"):
        create_verifier("deepjudge", batch_size=0)
    with pytest.raises(RemovalNetError, match="verifier 'deepjudge': parameter 'layer' must be an integer"):
        create_verifier("deepjudge", layer=object())

    class Clash(DeepJudge):
        name = "clash"
    with pytest.raises(ValueError, match="DJ-LOD"):
        register_verifier(Clash)
    assert "clash" not in list_verifiers()


# The fingerprint parameters of every verifier's defaults as they were hashed before the verifiers declared
# Params: fingerprint keys and job ids hash their canonical JSON, so an int must stay an int (ZEST's 4, not 4.0).
# Changed on purpose when the verifiers followed their official code (DeepJudge adv_seeds, ZEST order, IPGuard
# target and tol, SAC cutmix): fingerprints made the old way get other keys.
OLD_DEFAULTS = {
    "deepjudge": {"layer": None, "num_seeds": 100, "adv_seeds": 1000, "m": 3.0, "step": 0.01, "max_iters": 1000,
                  "max_tests": 256, "k_images": 20000, "p": 2.0, "threshold": 0.5, "lad_reduction": "sum",
                  "adv_method": "pgd", "pgd_eps": 0.1, "pgd_steps": 10, "pgd_step_size": 0.03,
                  "pgd_random_start": True},
    "zest": {"num_images": 128, "num_masks": 1000, "kernel_size": 4, "ratio": 0.2, "max_dist": 200,
             "image_range": 255, "intercept": False, "output": "logits", "order": "first"},
    "modeldiff": {"num_pairs": 300, "iterations": 1000, "epsilon": 0.2, "ddv": "official", "output": "logits"},
    "modeldiff_pgd": {"num_pairs": 100, "eps": 0.06, "alpha": 0.01, "steps": 50, "random_start": True,
                      "ddv": "cosine", "output": "logits"},
    "ipguard": {"num_points": 100, "k": 0.01, "lr": 0.01, "max_iter": 1000, "tol": 0.0001, "target": "least"},
    "sac": {"num_samples": 100, "source": "wrong", "cut_ratio": 0.2, "output": "logits", "cutmix": "official"},
}
OLD_DEFAULTS["deepjudge_aligned"] = OLD_DEFAULTS["deepjudge"]


@pytest.mark.parametrize("name", sorted(OLD_DEFAULTS))
def test_declared_params_keep_the_hashed_defaults(name):
    v = create_verifier(name)
    canon = lambda d: json.dumps(d, sort_keys=True)  # noqa: E731 (type-sensitive: 4 and 4.0 differ)
    assert canon(v.fingerprint_params()) == canon(OLD_DEFAULTS[name])
    assert v.params["batch_size"] is None      # automatic: from the input shape
    key = fingerprint_key(name, v.fingerprint_params(), "ab" * 32, 0)
    assert key == fingerprint_key(name, OLD_DEFAULTS[name], "ab" * 32, 0)


def test_every_verifier_declares_documented_params(capsys):
    for name in list_verifiers():
        spec = create_verifier(name).param_spec()
        assert set(spec) == set(create_verifier(name).params)
        assert all(isinstance(p, Param) and p.doc for p in spec.values()), name
    with pytest.raises(SystemExit):
        main(["verify", "--list"])
    text = capsys.readouterr().out
    assert "    kernel_size: float in (0.0, inf], default 4: quickshift kernel size" in text
    assert "    layer: int in [1, inf] or None, default None: " in text
    assert "    target: str in {random, least}, default 'least': " in text


def test_params_validated_at_construction_and_numbers_kept_as_given():
    z = create_verifier("zest", kernel_size=4, ratio=1, max_dist=100.0)
    assert type(z.params["kernel_size"]) is int and type(z.params["ratio"]) is int
    assert type(z.params["max_dist"]) is float
    assert create_verifier("sac", num_samples=8.0).params["num_samples"] == 8    # an integral float is an int
    assert type(create_verifier("sac", num_samples=8.0).params["num_samples"]) is int
    for name, bad, msg in [("sac", {"num_samples": 8.5}, "verifier 'sac': parameter 'num_samples' must be an integer"),
                           ("sac", {"cut_ratio": float("nan")}, "'cut_ratio' must be finite"),
                           ("zest", {"intercept": "no"}, "'intercept' must be true or false"),
                           ("deepjudge", {"pgd_eps": 0}, "'pgd_eps' must be > 0.0, got 0"),
                           ("deepjudge", {"num_seeds": None}, "'num_seeds' must not be None"),
                           ("modeldiff", {"ddv": "l2"}, "'ddv' must be one of official, all_pairs, got 'l2'")]:
        with pytest.raises(RemovalNetError, match=msg):
            create_verifier(name, **bad)


# ------------------------------------------------------------------------------------------ storage
def test_fingerprint_round_trip_is_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"f32": torch.randn(3, 4, generator=g), "f64": torch.randn(5, generator=g, dtype=torch.float64),
               "i64": torch.arange(7), "b": torch.tensor([True, False]), "scalar": torch.tensor([0.25])}
    fp = Fingerprint("deepjudge", {"layer": 2, "eps": [0.1, 0.2]}, "ab" * 32, tensors,
                     {"seed": 3, "note": "x", "counts": [1, 2]})
    fp.save(tmp_path / "fp")
    assert (tmp_path / "fp.safetensors").is_file() and (tmp_path / "fp.json").is_file()
    back = Fingerprint.load(tmp_path / "fp")
    assert (back.verifier, back.params, back.victim_hash, back.meta) == (fp.verifier, fp.params, fp.victim_hash, fp.meta)
    assert set(back.tensors) == set(tensors)
    for k, t in tensors.items():
        assert back.tensors[k].dtype == t.dtype and torch.equal(back.tensors[k], t), k
    assert back.key == fp.key == fingerprint_key("deepjudge", {"layer": 2, "eps": [0.1, 0.2]}, "ab" * 32, 3)
    assert Fingerprint.load(tmp_path / "fp.json").key == fp.key  # either file name works
    # the seed is part of the key
    assert Fingerprint("deepjudge", fp.params, fp.victim_hash, tensors, {"seed": 4}).key != fp.key
    with pytest.raises(RemovalNetError, match="does not exist"):
        Fingerprint.load(tmp_path / "missing")
    # the JSON of one extraction next to the tensors of another is refused
    Fingerprint("deepjudge", {}, "cd" * 32, {"other": torch.zeros(1)}, {}).save(tmp_path / "fp2")
    (tmp_path / "fp2.json").replace(tmp_path / "fp.json")
    with pytest.raises(RemovalNetError, match="different extractions"):
        Fingerprint.load(tmp_path / "fp")


def test_prepared_models_restores_state():
    m = _model(1)
    m.train()
    m.blocks[0].eval()  # a mixed state must come back as it was
    m.classifier[3].weight.requires_grad_(False)
    with prepared_models(m, device=torch.device("cpu")):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    assert m.training and not m.blocks[0].training and m.blocks[1].training
    assert not m.classifier[3].weight.requires_grad and m.classifier[3].bias.requires_grad


# ------------------------------------------------------------------------------------------ cache
def test_cache_extracts_once_and_score_checks_the_victim(tmp_path, data, monkeypatch):
    calls = []
    original = DeepJudge._extract

    def counting(self, *a, **kw):
        calls.append(1)
        return original(self, *a, **kw)

    monkeypatch.setattr(DeepJudge, "_extract", counting)
    victim, other = _model(0), _model(1)
    dj = DeepJudge(**TINY)
    fp1 = FingerprintCache(tmp_path).get_or_extract(dj, victim, data[1], seed=0)
    # the fingerprint and the test generation it was made from (shared with the other DeepJudge verifiers)
    stored = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.glob("*.safetensors"))
    assert len(calls) == 1 and stored == ["deepjudge", "deepjudge-tests"]
    # a new cache object on the same directory loads from disk; batch_size does not change the key
    fp2 = FingerprintCache(tmp_path).get_or_extract(DeepJudge(**{**TINY, "batch_size": 7}), victim, data[1], seed=0)
    assert len(calls) == 1
    assert fp2.key == fp1.key and all(torch.equal(fp1.tensors[k], fp2.tensors[k]) for k in fp1.tensors)
    # (this untrained victim has 1 seed and no fooling adversarial example: DJ-RobD / DJ-JSD are NaN in both)
    assert dj.score(fp2, victim, other) == pytest.approx(dj.score(fp1, victim, other), rel=0, abs=0, nan_ok=True)
    # another seed, another victim, other data or other parameters: a new extraction
    FingerprintCache(tmp_path).get_or_extract(dj, victim, data[1], seed=1)
    FingerprintCache(tmp_path).get_or_extract(dj, other, data[1], seed=0)
    FingerprintCache(tmp_path).get_or_extract(dj, victim, TensorDataset(data[0][:40], data[1].tensors[1][:40]))
    FingerprintCache(tmp_path).get_or_extract(DeepJudge(**{**TINY, "m": 2.0}), victim, data[1])
    assert len(calls) == 5 and len(list(tmp_path.glob("deepjudge-[0-9a-f]*.json"))) == 5
    assert len(list(tmp_path.glob("deepjudge-tests-*.json"))) == 5
    # a fingerprint of another victim is refused
    with pytest.raises(RemovalNetError, match="another victim"):
        dj.score(fp1, other, victim)
    # ... and one made with other parameters or by another verifier
    with pytest.raises(RemovalNetError, match="m=3.0"):
        DeepJudge(**{**TINY, "m": 2.0}).score(fp1, victim, other)
    fp_bad = Fingerprint("zest", fp1.params, fp1.victim_hash, fp1.tensors, fp1.meta)
    with pytest.raises(RemovalNetError, match="verifier 'zest'"):
        dj.score(fp_bad, victim, other)


@pytest.mark.parametrize("name,params", [("sac", {"num_samples": 8, "source": "cutmix"}),
                                         ("ipguard", {"num_points": 6, "max_iter": 5}),
                                         ("modeldiff_pgd", {"num_pairs": 6, "steps": 2})])
def test_victim_outputs_computed_once_for_all_suspects(data, name, params):
    victim, suspects = _model(0), [_model(1), _model(2), _model(0)]
    fp = create_verifier(name, **params).extract(victim, data[1], seed=0)
    calls = []
    hook = victim.register_forward_hook(lambda *_: calls.append(1))
    try:
        create_verifier(name, **params).score(fp, victim, suspects[0])
        one = len(calls)
        v = create_verifier(name, **params)
        shared = [v.score(fp, victim, s) for s in suspects]
    finally:
        hook.remove()
    assert one >= 1 and len(calls) == 2 * one        # three suspects: the victim's passes of one
    fresh = [create_verifier(name, **params).score(fp, victim, s) for s in suspects]
    assert shared == fresh                           # the same values, the victim's from memory
    assert shared[2] == pytest.approx(dict.fromkeys(shared[2], 1.0 if name != "sac" else 0.0))


def test_base_checks_what_subclasses_return(data):
    class Bad(Verifier):
        name = "bad-test"
        metrics = (Metric("BAD-D", "distance"),)

        def _extract(self, victim, data, *, seed, generator, device):
            return {"x": torch.rand(2, generator=generator)}, {"n": 1}

        def _score(self, fp, victim, suspect, *, device):
            return {"WRONG": 0.0}

    v, victim = Bad(), _model(0)
    fp = v.extract(victim, data[1], seed=5)
    assert fp.meta["seed"] == 5 and fp.meta["data_size"] == 64 and fp.meta["n"] == 1
    assert torch.equal(fp.tensors["x"], v.extract(victim, data[1], seed=5).tensors["x"])  # seeded generator
    assert fp.victim_hash == weights_hash(victim)
    with pytest.raises(AssertionError, match="WRONG"):
        v.score(fp, victim, victim)
    with pytest.raises(RemovalNetError, match="unknown parameter 'x'"):
        Bad(x=1)
    with pytest.raises(RemovalNetError, match="empty"):
        v.extract(victim, TensorDataset(torch.zeros(0, 1, 16, 16), torch.zeros(0, dtype=torch.long)))


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    train = load_dataset("digits", "train", input_size=16)
    paths = {}
    for name, seed in (("victim", 0), ("indep", 1), ("ref1", 2), ("ref2", 3)):
        m = _model(seed, width=4)
        train_model(m, train, None, TrainConfig(iterations=15, batch_size=64, lr=0.05), seed=seed, progress=False)
        paths[name] = save_checkpoint(root / f"{name}.safetensors", m, {"dataset": "digits", "seed": seed})
        if name == "victim":
            paths["copy"] = save_checkpoint(root / "copy.safetensors", m, {"dataset": "digits", "note": "copy"})
    return paths


def _verify_args(ck, *extra):
    return ["verify", "--victim", str(ck["victim"]), "--suspect", str(ck["copy"]), "--suspect", str(ck["indep"]),
            "--verifier", "deepjudge", "--references", str(ck["ref1"]), str(ck["ref2"]),
            *[f"--param=deepjudge.{k}={v}" for k, v in TINY.items()], *extra]


def test_cli_verify_end_to_end(checkpoints, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "fp"
    assert main(_verify_args(checkpoints, "--json", "--fp-cache", str(cache))) == 0
    out = capsys.readouterr()
    assert "at least 5" in out.err
    res = json.loads(out.out)
    assert res["data"] == "digits:test" and res["data_size"] == 360 and res["rule"] == "minmax"
    fp_meta = res["fingerprints"]["deepjudge"]["meta"]
    assert fp_meta["tests_tried"] == 8 and 0 <= fp_meta["tests_reached"] <= 8 and fp_meta["layer"] == 2
    # this tiny victim resists DeepJudge's adversarial examples: RobD and JSD are degenerate, not judged
    assert fp_meta["adv_kept"] == 0 and fp_meta["degenerate"] == ["DJ-RobD", "DJ-JSD"]
    assert "DJ-RobD is degenerate" in out.err
    assert set(res["taus"]) == {"DJ-LOD", "DJ-LAD", "DJ-NOD", "DJ-NAD"}
    for metric, tau in res["taus"].items():
        assert tau == pytest.approx(min(res["reference_values"][metric]), rel=1e-12)
    copy, indep = res["suspects"]
    assert copy["path"].endswith("copy.safetensors")
    for metric in ("DJ-RobD", "DJ-JSD"):
        assert copy["metrics"][metric]["copy"] is None and "degenerate" in copy["metrics"][metric]["error"]
    for metric, row in copy["metrics"].items():
        if metric in ("DJ-RobD", "DJ-JSD"):
            continue
        assert row["value"] == pytest.approx(0.0, abs=1e-9) and row["direction"] == "distance"
        assert row["copy"] is (res["taus"][metric] > 0), metric
    assert indep["metrics"]["DJ-LOD"]["value"] > 0
    # each verdict carries its p-values against the two references: empirical (floor 1/3) and Student-t (flagged n < 3)
    for s in (copy, indep):
        for metric in res["taus"]:
            row, refs = s["metrics"][metric], res["reference_values"][metric]
            smaller = sum(r <= row["value"] for r in refs)
            assert row["p_empirical"] == pytest.approx((1 + smaller) / 3) and row["p_floor"] == pytest.approx(1 / 3)
            assert row["p_parametric_note"]   # never trusted silently with two references (n < 3, or no variance)
    lod = copy["metrics"]["DJ-LOD"]
    assert lod["p_empirical"] == pytest.approx(1 / 3) and lod["p_parametric"] == pytest.approx(0.0, abs=1e-12)
    assert "n < 3" in lod["p_parametric_note"]
    # Holm over the judged metrics: 4 x 1/3 can never reach 5% (the paper's vote may still say copy)
    assert copy["combined"]["method"] == "holm" and copy["combined"]["empirical"]["copy"] is False
    assert copy["combined"]["empirical"]["min_adjusted_p"] == pytest.approx(1.0)
    assert len(list(cache.glob("deepjudge-[0-9a-f]*.safetensors"))) == 1     # and its test generation:
    assert len(list(cache.glob("deepjudge-tests-*.safetensors"))) == 1

    # a second run reuses the cached fingerprint and prints a table
    def no_extract(*a, **kw):
        raise AssertionError("fingerprint extracted again")

    monkeypatch.setattr(DeepJudge, "_extract", no_extract)
    assert main(_verify_args(checkpoints, "--fp-cache", str(cache))) == 0
    table = capsys.readouterr().out
    assert "suspect" in table and "DJ-LOD" in table and "verdict" in table and "copy" in table
    assert "judged a copy by" in table and "p (emp.)" in table and "Holm-combined on empirical p-values" in table
    assert "no empirical p-value goes below 1/3" in table and "needs >= 19 independent models" in table


def test_cli_verify_errors(checkpoints, capsys):
    args = ["verify", "--victim", str(checkpoints["victim"]), "--suspect", str(checkpoints["indep"]),
            "--verifier", "deepjudge"]
    assert main([*args, "--param", "max_iters=3"]) == 2
    assert "VERIFIER.KEY=VALUE" in capsys.readouterr().err
    assert main([*args, "--param", "deepjudge.num_seeds=0"]) == 2
    assert "num_seeds" in capsys.readouterr().err
    assert main([*args, "--data", "no-such-dataset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert main(["verify", "--victim", str(checkpoints["victim"]), "--suspect", str(checkpoints["indep"]),
                 "--verifier", "nope"]) == 2


def test_cli_verify_pairs_modeldiff_per_suspect(checkpoints, tmp_path, capsys, monkeypatch):
    from removalnet.verify.modeldiff import ModelDiff
    cache = tmp_path / "fp"
    ck = checkpoints
    args = ["verify", "--victim", str(ck["victim"]), "--suspect", str(ck["copy"]), "--suspect", str(ck["indep"]),
            "--verifier", "modeldiff", "--references", str(ck["ref1"]), str(ck["ref2"]),
            "--param", "modeldiff.num_pairs=4", "--param", "modeldiff.iterations=20", "--json", "--fp-cache", str(cache)]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    copy, indep = res["suspects"]
    assert copy["metrics"]["MD-DDV"]["value"] == pytest.approx(1.0, abs=1e-12)
    assert indep["metrics"]["MD-DDV"]["value"] < 0.999
    # the seeds once, then one pairing per distinct suspect (references included; the copy has the victim's hash)
    assert len(list(cache.glob("modeldiff-*.json"))) == 1 + 4
    stored = [Fingerprint.load(p) for p in cache.glob("modeldiff-*.json")]
    assert sorted(fp.suspect_hash is None for fp in stored) == [False] * 4 + [True]

    def no_search(*a, **kw):
        raise AssertionError("profiling inputs searched again")

    monkeypatch.setattr(ModelDiff, "_pair", no_search)
    assert main(args) == 0                                          # a second run reads every pair from the cache
    again = json.loads(capsys.readouterr().out)
    assert again["suspects"][1]["metrics"]["MD-DDV"]["value"] == pytest.approx(indep["metrics"]["MD-DDV"]["value"],
                                                                               rel=1e-12)


def test_auto_batch_size_golden():
    """About 128 images of 3 x 32 x 32 per pass, a power of two in [8, 256]."""
    assert auto_batch_size([1, 28, 28]) == 256      # 501 fit
    assert auto_batch_size([3, 32, 32]) == 128
    assert auto_batch_size([3, 64, 64]) == 32
    assert auto_batch_size([3, 96, 96]) == 8        # 14 fit -> 8
    assert auto_batch_size([3, 224, 224]) == 8      # 2 fit, raised to the floor
    assert auto_batch_size(None) == 256 and auto_batch_size([]) == 256


@pytest.mark.parametrize("given,expected", [(None, 32), (5, 5)])
def test_verifiers_pass_batches_of_the_automatic_or_given_size(given, expected):
    """batch_size None: the automatic size of the data's input shape, in extraction and scoring; a given one wins;
    the parameter reads None again afterwards (it is a runtime parameter, not part of the fingerprint)."""
    torch.manual_seed(0)
    x = torch.rand(100, 3, 64, 64)
    data = TensorDataset(x, torch.randint(0, 10, (100,)))
    victim, suspect = (create_model("vgg_small", 10, 3, 64, width=4).eval() for _ in range(2))
    sizes = []
    for m in (victim, suspect):
        m.register_forward_hook(lambda mod, args, out: sizes.append(len(args[0])))
    v = create_verifier("sac", num_samples=60, source="cutmix", batch_size=given)
    fp = v.extract(victim, data, seed=0)
    assert fp.meta["input_shape"] == [3, 64, 64]
    v.score(fp, victim, suspect)
    assert max(sizes) == expected
    assert v.params["batch_size"] == given
