"""One DeepJudge test generation for deepjudge, deepjudge_aligned and deepjudge_scaled: same values as three
separate extractions, generated once through the fingerprint cache, in the runner and in `removalnet verify`."""
import json

import pytest
import torch

import removalnet.verify.deepjudge as deepjudge_module
from removalnet import RemovalNetError, create_model
from removalnet.checkpoint import save_checkpoint
from removalnet.cli import main
from removalnet.data import balanced_subset, load_dataset
from removalnet.experiment import plan_jobs, run_experiment, spec_from_dict
from removalnet.experiment.store import ResultStore
from removalnet.train import TrainConfig, train_model
from removalnet.verify import FingerprintCache, create_verifier

FAMILY = ("deepjudge", "deepjudge_aligned", "deepjudge_scaled")
PARAMS = dict(num_seeds=8, adv_seeds=40, max_tests=16, max_iters=20, step=0.05, pgd_steps=3, batch_size=32)


@pytest.fixture
def generations(monkeypatch):
    """Counts the white-box test generations (every DeepJudge extraction makes exactly one per generation)."""
    calls = []
    real = deepjudge_module.generate_tests

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(deepjudge_module, "generate_tests", counting)
    return calls


def _trained(seed, iterations):
    torch.manual_seed(seed)
    m = create_model("vgg_small", 10, 1, 16, width=4)
    train_model(m, load_dataset("digits", "train", input_size=16), None,
                TrainConfig(iterations=iterations, batch_size=64, lr=0.05), seed=seed, progress=False)
    return m.eval()


@pytest.fixture(scope="module")
def models():
    data = balanced_subset(load_dataset("digits", "test", input_size=16), count=100, seed=0)
    return _trained(0, 40), _trained(1, 25), data


def test_shared_generation_gives_the_values_of_separate_extractions(models, generations, tmp_path):
    victim, suspect, data = models
    verifiers = [create_verifier(n, **PARAMS) for n in FAMILY]
    alone = [v.extract(victim, data, seed=0) for v in verifiers]          # each generates on its own
    assert len(generations) == 3
    cache = FingerprintCache(tmp_path)
    shared = [cache.get_or_extract(v, victim, data, seed=0) for v in verifiers]
    assert len(generations) == 4                                            # one more, shared by the three
    gen_key = verifiers[0].generation_key(victim, data, seed=0)
    assert {fp.meta["generation"]["key"] for fp in shared} == {gen_key}
    assert len(list(tmp_path.glob("deepjudge-tests-*.safetensors"))) == 1
    for v, a, s in zip(verifiers, alone, shared):
        assert a.key == s.key and sorted(a.tensors) == sorted(s.tensors)
        for k in a.tensors:
            torch.testing.assert_close(s.tensors[k], a.tensors[k], rtol=1e-6, atol=1e-7, msg=f"{v.name}: {k}")
        assert {k: x for k, x in s.meta.items() if k not in ("extract_seconds", "generation")} == \
               {k: x for k, x in a.meta.items() if k not in ("extract_seconds", "generation")}
        for m in (victim, suspect):
            assert v.score(s, victim, m) == pytest.approx(v.score(a, victim, m), rel=1e-6, abs=1e-7, nan_ok=True)
    # the fingerprint of the plain verifier is the generation itself (no statistic of its own)
    assert sorted(shared[0].tensors) == sorted(cache.generation(verifiers[0], victim, data, seed=0).tensors)
    assert set(shared[1].tensors) - set(shared[0].tensors) == {"victim_align"}
    # score-only parameters do not change the generation; generation parameters do
    assert create_verifier("deepjudge_scaled", **PARAMS, p=1.0, threshold=0.3).generation_key(victim, data) == gen_key
    assert create_verifier("deepjudge", **{**PARAMS, "m": 2.0}).generation_key(victim, data) != gen_key


def test_a_generation_of_other_parameters_or_verifiers_is_refused(models):
    victim, _, data = models
    gen = create_verifier("deepjudge", **PARAMS).generate(victim, data, seed=0)
    assert gen.verifier == "deepjudge-tests"
    with pytest.raises(RemovalNetError, match="another victim, data, seed or parameters"):
        create_verifier("deepjudge_aligned", **{**PARAMS, "max_iters": 21}).extract(victim, data, generation=gen)
    with pytest.raises(RemovalNetError, match="another victim, data, seed or parameters"):
        create_verifier("deepjudge_aligned", **PARAMS).extract(victim, data, seed=1, generation=gen)
    with pytest.raises(RemovalNetError, match="shares no generation"):
        create_verifier("sac", num_samples=4).extract(victim, data, generation=gen)


SPEC = {
    "name": "dj-family", "dataset": "digits", "seeds": [0], "verifier_count": 60,
    "victim": {"arch": "vgg_small", "kwargs": {"width": 4}, "train": {"iterations": 30, "batch_size": 64, "lr": 0.05}},
    "references": {"count": 1, "seed_offset": 1000},
    "attacks": [{"name": "ft", "label": "FT(0.5)", "params": {"ratio": 0.5, "iterations": 2, "batch_size": 16},
                 "scenario": "ltd", "count": 20}],
    "verifiers": {n: {k: v for k, v in PARAMS.items() if k != "batch_size"} for n in FAMILY},
}


def test_runner_generates_once_for_the_three(generations, tmp_path):
    spec = spec_from_dict(json.loads(json.dumps(SPEC)))
    jobs = {j.name: j for j in plan_jobs(spec)}
    first = jobs["fingerprints/deepjudge"]
    for name in ("fingerprints/deepjudge_aligned", "fingerprints/deepjudge_scaled"):
        assert first.id in jobs[name].deps          # they read the generation the first one makes
    # an ordering dependency only: the job's id is the one it has without the shared generation
    alone = spec_from_dict({**json.loads(json.dumps(SPEC)),
                            "verifiers": {"deepjudge_scaled": SPEC["verifiers"]["deepjudge_scaled"]}})
    assert {j.name: j.id for j in plan_jobs(alone)}["fingerprints/deepjudge_scaled"] == \
        jobs["fingerprints/deepjudge_scaled"].id
    s = run_experiment(spec, tmp_path, progress=False)
    assert s.ok, (s.failed, s.skipped_deps)
    assert len(generations) == 1
    with ResultStore(tmp_path / "results.db") as st:
        fps = [r for r in st.rows(kind="fingerprint")]
    assert len(fps) == 3 and len({r["metrics"]["generation"] for r in fps}) == 1


def test_verify_generates_once_for_the_three(models, generations, tmp_path, capsys):
    victim, suspect, _ = models
    v = save_checkpoint(tmp_path / "victim.safetensors", victim, {"dataset": "digits"})
    s = save_checkpoint(tmp_path / "suspect.safetensors", suspect, {"dataset": "digits"})
    args = ["verify", "--victim", str(v), "--suspect", str(s), "--suspect", str(v), "--verifier", *FAMILY,
            "--json", "-q", *[f"--param={n}.{k}={x}" for n in FAMILY for k, x in PARAMS.items()]]
    assert main(args) == 0
    assert len(generations) == 1                    # in memory, without --fp-cache
    res = json.loads(capsys.readouterr().out)
    keys = {f["meta"]["generation"]["key"] for f in res["fingerprints"].values()}
    assert len(keys) == 1 and set(res["fingerprints"]) == set(FAMILY)
    assert main(args + ["--fp-cache", str(tmp_path / "fp")]) == 0
    assert len(generations) == 2 and json.loads(capsys.readouterr().out)["suspects"] == res["suspects"]
    assert main(args + ["--fp-cache", str(tmp_path / "fp")]) == 0    # all three read from the cache
    assert len(generations) == 2
