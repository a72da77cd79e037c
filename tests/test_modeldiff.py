"""ModelDiff as the official code computes it (profiling inputs searched per (victim, suspect) pair, DDV of
outputs on inputs i and i + n), and the victim-only PGD variant ``modeldiff_pgd``.

The oracles re-write the official formulas (yuanchun-li/ModelDiff, modeldiff.py: ``compute_ddv``,
``_gen_profiling_inputs_search``) in numpy/scipy, with the models used as black boxes on whole batches."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial import distance
from torch import nn
from torch.utils.data import TensorDataset

from removalnet import RemovalNetError, weights_hash
from removalnet.models import SplitModel
from removalnet.verify import Fingerprint, FingerprintCache, create_verifier
from removalnet.verify.adversarial import pgd
from removalnet.verify.modeldiff import (all_pairs_ddv, ddv_similarity, decision_distance, hill_climb, official_ddv,
                                         profiling_score)

from helpers import calibrated_vgg, permuted_copy

SMALL = dict(num_pairs=5, iterations=40, batch_size=8)
PGD_SMALL = dict(num_pairs=10, steps=4, batch_size=8)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(30, 1, 28, 28, generator=g), torch.randint(0, 10, (30,), generator=g))


@pytest.fixture(scope="module")
def models(data):
    x = data.tensors[0]
    return calibrated_vgg(0, x), calibrated_vgg(1, x)


def _np_outputs(model):
    def f(x: np.ndarray) -> np.ndarray:          # the official batch_forward: one batch, raw outputs
        with torch.no_grad():
            return model(torch.from_numpy(x)).double().numpy()
    return f


def official_search(f1, f2, seeds: np.ndarray, positions, targets, step_per_channel):
    """The official hill climbing, re-written with its random draws given; full re-evaluation every step."""
    init1, init2 = f1(seeds), f2(seeds)

    def evaluate(inputs):
        o1, o2 = f1(inputs), f2(inputs)
        d1 = np.mean(distance.cdist(o1, init1).diagonal())
        d2 = np.mean(distance.cdist(o2, init2).diagonal())
        div1, div2 = np.mean(distance.cdist(o1, o1)), np.mean(distance.cdist(o2, o2))
        return d1 * d2 * div1 * div2

    shape, ndims = seeds.shape[1:], int(np.prod(seeds.shape[1:]))
    hw = ndims // seeds.shape[1]
    inputs, score, accepted = seeds.copy(), evaluate(seeds), []
    for p, k in zip(positions, targets):
        mutation = np.zeros(ndims, dtype=np.float32)
        mutation[p] = step_per_channel[p // hw]
        batch = np.zeros(inputs.shape, dtype=np.float32)
        batch[k] = mutation.reshape(shape)
        right, left = inputs + batch, inputs - batch
        right_score, left_score = evaluate(right), evaluate(left)
        if right_score <= score and left_score <= score:
            accepted.append(False)
            continue
        accepted.append(True)
        if right_score > left_score:
            inputs, score = right, right_score
        else:
            inputs, score = left, left_score
    return inputs, np.array(accepted), score


# ------------------------------------------------------------------------------------------ formulas
def test_decision_distance_golden():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 2.0], [3.0, 4.0], [-1.0, -1.0]])
    torch.testing.assert_close(decision_distance(a, b, "cosine"), torch.tensor([1.0, 0.0, 0.0, 2.0]))
    torch.testing.assert_close(decision_distance(a, b, "l2"),
                               torch.tensor([math.sqrt(2), 1.0, 0.0, math.sqrt(8)]))
    torch.testing.assert_close(decision_distance(5 * a, b, "cosine"), decision_distance(a, b, "cosine"))
    with pytest.raises(RemovalNetError):
        decision_distance(a, b, "l1")


def test_ddv_similarity_golden():
    assert ddv_similarity(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([2.0, 0.0, 4.0])) == pytest.approx(1.0)
    assert ddv_similarity(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])) == pytest.approx(0.0, abs=1e-15)
    assert ddv_similarity(torch.tensor([1.0, 2.0, 2.0]), torch.tensor([2.0, 1.0, 2.0])) == pytest.approx(8 / 9)
    assert ddv_similarity(torch.zeros(3), torch.ones(3)) == pytest.approx(0.0, abs=1e-15)
    v = torch.rand(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert ddv_similarity(v, v.clone()) == 1.0                                  # identical DDVs: exactly 1


def test_official_and_all_pairs_ddv_against_scipy():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(8, 5, generator=g)                                        # 2n = 8 profiling outputs
    o = out.double().numpy()
    expected = np.array([distance.cosine(o[i], o[i + 4]) for i in range(4)])   # official compute_ddv
    np.testing.assert_allclose(official_ddv(out).numpy(), expected, rtol=1e-12, atol=1e-15)
    expected_all = np.array([distance.euclidean(o[i], o[j]) for i in range(8) for j in range(i + 1, 8)])
    np.testing.assert_allclose(all_pairs_ddv(out).numpy(), expected_all, rtol=1e-12)   # eq. 3, i < j
    # the official similarity: 1 - cosine distance of the (normalised) DDVs
    out2 = out + 0.3 * torch.randn(8, 5, generator=g)
    d1, d2 = official_ddv(out).numpy(), official_ddv(out2).numpy()
    ref = 1 - distance.cosine(d1 / np.linalg.norm(d1), d2 / np.linalg.norm(d2))
    assert ddv_similarity(official_ddv(out), official_ddv(out2)) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(RemovalNetError, match="2n"):
        official_ddv(out[:7])


def test_profiling_score_against_numpy():
    g = torch.Generator().manual_seed(1)
    o1, i1, o2, i2 = (torch.randn(6, 4, generator=g) for _ in range(4))
    a1, b1, a2, b2 = (t.double().numpy() for t in (o1, i1, o2, i2))
    d1 = np.mean([np.linalg.norm(a1[i] - b1[i]) for i in range(6)])
    d2 = np.mean([np.linalg.norm(a2[i] - b2[i]) for i in range(6)])
    div1 = np.mean([[np.linalg.norm(a1[i] - a1[j]) for j in range(6)] for i in range(6)])   # all N^2, incl. i = j
    div2 = np.mean([[np.linalg.norm(a2[i] - a2[j]) for j in range(6)] for i in range(6)])
    assert profiling_score(o1, i1, o2, i2) == pytest.approx(d1 * d2 * div1 * div2, rel=1e-12)
    assert profiling_score(i1, i1, o2, i2) == pytest.approx(0.0, abs=1e-15)        # no shift from the seeds: 0


# ------------------------------------------------------------------------------------------ the search
def _draws(t, n, ndims, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, ndims, (t,), generator=g), torch.randint(0, n, (t,), generator=g)


def test_hill_climb_matches_the_official_loop_on_cnns(models):
    victim, suspect = models
    seeds = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    positions, targets = _draws(60, 8, 28 * 28, seed=4)
    step = torch.tensor([0.2 * 0.4])                                            # epsilon x std, pixel units
    x, accepted, trace = hill_climb(victim, suspect, seeds, positions, targets, step)
    ref_x, ref_acc, ref_score = official_search(_np_outputs(victim), _np_outputs(suspect), seeds.numpy(),
                                                positions.numpy(), targets.numpy(), step.numpy())
    assert accepted.tolist() == ref_acc.tolist()
    torch.testing.assert_close(x, torch.from_numpy(ref_x), atol=1e-6, rtol=0)
    # float32 outputs computed at other batch shapes than the official loop's: the same score up to rounding
    assert float(trace[-1]) == pytest.approx(ref_score, rel=1e-5)
    # the candidates of several steps share one forward pass: the same decisions step by step
    x1, acc1, _ = hill_climb(victim, suspect, seeds, positions, targets, step, block=1)
    assert acc1.tolist() == accepted.tolist()
    torch.testing.assert_close(x1, x, atol=1e-6, rtol=0)


class _LeftHalf(nn.Module):
    """A small model that never looks at the right half of its 1 x 6 x 6 input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.lin = nn.Linear(36, 4)
        with torch.no_grad():
            self.lin.weight.view(4, 6, 6)[:, :, 3:] = 0

    def forward(self, x):
        return torch.tanh(self.lin(x.flatten(1))) * 3


def test_hill_climb_rejects_mutations_the_models_ignore():
    m1, m2 = _LeftHalf(), _LeftHalf()
    with torch.no_grad():
        m2.lin.weight.mul_(-0.7)
    seeds = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    positions, targets = _draws(80, 6, 36, seed=1)
    step = torch.tensor([0.2])
    x, accepted, trace = hill_climb(m1, m2, seeds, positions, targets, step)
    ref_x, ref_acc, ref_score = official_search(_np_outputs(m1), _np_outputs(m2), seeds.numpy(), positions.numpy(),
                                                targets.numpy(), step.numpy())
    assert accepted.tolist() == ref_acc.tolist()
    ignored = (positions % 6) >= 3
    assert ignored.any() and not accepted[ignored].any()                       # no effect: never kept
    assert accepted.any()
    torch.testing.assert_close(x, torch.from_numpy(ref_x), atol=1e-6, rtol=0)
    assert float(trace[-1]) == pytest.approx(ref_score, rel=1e-9)
    assert torch.all(trace[1:] >= trace[:-1])                                   # the score never drops


class _BatchShaped(_LeftHalf):
    """_LeftHalf whose float32 rounding depends on the batch size, as some CPU kernels' does: the outputs are
    rounded to a grid of 2^-23 x 2^(N mod 5) (N rows in the forward pass); each row is rounded on its own."""

    def forward(self, x):
        big = 2.0 ** (x.shape[0] % 5)
        return (super().forward(x) + big) - big


def test_hill_climb_rejects_no_op_mutations_whatever_the_batch_shape():
    """The official loop evaluates the current inputs and each candidate at the same batch shape, so a mutation
    the models ignore gives bit-identical outputs and is never kept; a model that rounds differently at another
    batch shape must not let such a mutation through here either."""
    m1, m2 = _BatchShaped(), _BatchShaped()
    with torch.no_grad():
        m2.lin.weight.mul_(-0.7)
    seeds = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.equal(m1(seeds)[:2], m1(seeds[:2]))                   # not batch-invariant
    positions, targets = _draws(80, 6, 36, seed=1)
    step = torch.tensor([0.2])
    ignored = (positions % 6) >= 3
    ref_x, ref_acc, _ = official_search(_np_outputs(m1), _np_outputs(m2), seeds.numpy(), positions.numpy(),
                                        targets.numpy(), step.numpy())
    assert ignored.any() and not ref_acc[ignored.numpy()].any()
    for block in (64, 1, 3):
        x, accepted, trace = hill_climb(m1, m2, seeds, positions, targets, step, block=block)
        assert not accepted[ignored].any(), block                                # no effect: never kept
        assert accepted.tolist() == ref_acc.tolist(), block
        torch.testing.assert_close(x, torch.from_numpy(ref_x), atol=1e-6, rtol=0)
        assert torch.all(trace[1:] >= trace[:-1])


# ------------------------------------------------------------------------------------------ the verifier
def test_extract_draws_seeds_and_pairing_searches_per_suspect(data, models):
    victim, suspect = models
    md = create_verifier("modeldiff", **SMALL)
    fp = md.extract(victim, data, seed=0)
    assert fp.suspect_hash is None and set(fp.tensors) == {"indices", "seeds", "labels"}
    assert fp.tensors["seeds"].shape == (10, 1, 28, 28) and len(set(fp.tensors["indices"].tolist())) == 10
    assert torch.equal(fp.tensors["seeds"], data.tensors[0][fp.tensors["indices"]])
    paired = md.pair(fp, victim, suspect)
    assert paired.suspect_hash == weights_hash(suspect) and paired.key != fp.key
    t = paired.tensors
    assert t["inputs"].shape == (10, 1, 28, 28) and t["accepted"].shape == (40,)
    assert int(t["accepted"].sum()) == paired.meta["mutations_accepted"] > 0
    # every change is a whole number of +/- epsilon x std (0.2 x 0.4) steps, at the mutated places only
    steps = (t["inputs"] - t["seeds"]) / (0.2 * 0.4)
    torch.testing.assert_close(steps, steps.round(), atol=1e-4, rtol=0)
    assert int((steps.round() != 0).sum()) <= int(t["accepted"].sum())
    # the same pairing: the search against the victim and this suspect with those draws
    step = 0.2 * victim.normalize.std.flatten()                              # epsilon x the victim's std
    x, acc, _ = hill_climb(victim, suspect, t["seeds"], t["positions"], t["targets"], step)
    assert torch.equal(acc, t["accepted"]) and torch.equal(x, t["inputs"])
    # the metric: official DDV of each model on the profiling inputs, cosine of the two
    with torch.no_grad():
        expected = ddv_similarity(official_ddv(victim(x)), official_ddv(suspect(x)))
    assert md.score(paired, victim, suspect)["MD-DDV"] == pytest.approx(expected, abs=1e-6)
    assert md.score(fp, victim, suspect)["MD-DDV"] == pytest.approx(expected, abs=1e-6)   # pairs on the fly
    with pytest.raises(RemovalNetError, match="another suspect"):
        md.score(paired, victim, victim)
    with pytest.raises(RemovalNetError, match="already paired"):
        md.pair(paired, victim, suspect)
    # another suspect: other profiling inputs from the same seeds and draws
    other = md.pair(fp, victim, calibrated_vgg(2, data.tensors[0]))
    assert torch.equal(other.tensors["positions"], t["positions"]) and torch.equal(other.tensors["seeds"], t["seeds"])
    assert not torch.equal(other.tensors["inputs"], t["inputs"])


def test_identity_unrelated_all_pairs_and_determinism(data, models, tmp_path):
    victim, suspect = models
    h = weights_hash(victim)
    for ddv in ("official", "all_pairs"):
        md = create_verifier("modeldiff", **SMALL, ddv=ddv)
        fp = md.extract(victim, data, seed=3)
        assert md.score(fp, victim, victim)["MD-DDV"] == pytest.approx(1.0, abs=1e-12)
        p1, p2 = md.pair(fp, victim, suspect), md.pair(fp, victim, suspect)
        for k in p1.tensors:
            assert torch.equal(p1.tensors[k], p2.tensors[k]), k
        s = md.score(p1, victim, suspect)["MD-DDV"]
        assert -1.0 <= s < 0.999
        if ddv == "all_pairs":
            with torch.no_grad():
                out_v, out_s = victim(p1.tensors["inputs"]), suspect(p1.tensors["inputs"])
            assert s == pytest.approx(ddv_similarity(F.pdist(out_v.double()), F.pdist(out_s.double())), abs=1e-6)
        p1.save(tmp_path / f"md-{ddv}")
        loaded = Fingerprint.load(tmp_path / f"md-{ddv}")
        assert loaded.suspect_hash == p1.suspect_hash and loaded.key == p1.key
        assert md.score(loaded, victim, suspect)["MD-DDV"] == pytest.approx(s, abs=1e-12)
    assert weights_hash(victim) == h and not victim.training
    assert all(p.requires_grad for p in victim.parameters())   # flags restored after extraction and pairing


def test_softmax_output_changes_search_and_ddv(data, models):
    victim, suspect = models
    md = create_verifier("modeldiff", **SMALL, output="softmax")
    paired = md.pair(md.extract(victim, data, seed=0), victim, suspect)
    x = paired.tensors["inputs"]
    with torch.no_grad():
        pv, ps = F.softmax(victim(x), -1).double().numpy(), F.softmax(suspect(x), -1).double().numpy()
    dv = np.array([distance.cosine(pv[i], pv[i + 5]) for i in range(5)])
    ds = np.array([distance.cosine(ps[i], ps[i + 5]) for i in range(5)])
    assert md.score(paired, victim, suspect)["MD-DDV"] == pytest.approx(1 - distance.cosine(dv, ds), abs=1e-6)


def test_cache_pairs_once_per_suspect(data, models, tmp_path, monkeypatch):
    victim, suspect = models
    md = create_verifier("modeldiff", **SMALL)
    calls = []
    original = type(md)._pair
    monkeypatch.setattr(type(md), "_pair", lambda self, *a, **kw: calls.append(1) or original(self, *a, **kw))
    cache = FingerprintCache(tmp_path)
    base = cache.get_or_extract(md, victim, data, seed=0)
    assert base.suspect_hash is None and not calls
    p1 = cache.get_or_extract(md, victim, data, seed=0, suspect=suspect)
    p2 = FingerprintCache(tmp_path).get_or_extract(md, victim, data, seed=0, suspect=suspect)
    assert len(calls) == 1 and p1.key == p2.key == md.key(victim, data, seed=0, suspect=suspect)
    assert torch.equal(p1.tensors["inputs"], p2.tensors["inputs"])
    FingerprintCache(tmp_path).get_or_extract(md, victim, data, seed=0, suspect=permuted_copy(suspect))
    assert len(calls) == 2 and len(list(tmp_path.glob("*.json"))) == 3        # seeds + one per suspect
    # a verifier with one fingerprint per victim ignores the suspect
    sac = create_verifier("sac", num_samples=4, source="cutmix")
    assert cache.get_or_extract(sac, victim, data, suspect=suspect).suspect_hash is None
    with pytest.raises(RemovalNetError, match="not per suspect"):
        sac.key(victim, data, suspect=suspect)


def test_params_validated():
    for bad in (dict(num_pairs=1), dict(iterations=-1), dict(epsilon=0), dict(ddv="l2"), dict(output="probs"),
                dict(steps=3)):
        with pytest.raises(RemovalNetError, match=next(iter(bad))):
            create_verifier("modeldiff", **bad)
    with pytest.raises(RemovalNetError, match="at least 4 samples"):
        create_verifier("modeldiff").extract(calibrated_vgg(0, torch.rand(4, 1, 28, 28)),
                                             TensorDataset(torch.rand(3, 1, 28, 28), torch.zeros(3).long()))


# ------------------------------------------------------------------------------------------ PGD variant
def test_pgd_projection_determinism_and_no_param_grads(models):
    victim, _ = models
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    adv1 = pgd(victim, x, y, eps=0.05, alpha=0.01, steps=4, generator=torch.Generator().manual_seed(1))
    adv2 = pgd(victim, x, y, eps=0.05, alpha=0.01, steps=4, generator=torch.Generator().manual_seed(1),
               batch_size=4)
    assert torch.equal(adv1, adv2)
    assert (adv1 - x).abs().max() <= 0.05 + 1e-6 and adv1.min() >= 0 and adv1.max() <= 1
    assert all(p.grad is None for p in victim.parameters())
    with torch.no_grad():
        before = F.cross_entropy(victim(x), y, reduction="none")
        after = F.cross_entropy(victim(adv1), y, reduction="none")
    assert (after > before).float().mean() >= 0.8            # untargeted PGD raises the loss
    tgt = (y + 1) % 10
    adv_t = pgd(victim, x, tgt, eps=0.05, alpha=0.01, steps=4, targeted=True, random_start=False)
    with torch.no_grad():
        assert (F.cross_entropy(victim(adv_t), tgt, reduction="none")
                < F.cross_entropy(victim(x), tgt, reduction="none")).float().mean() >= 0.8
    for bad in (dict(eps=-0.1), dict(alpha=0.0), dict(steps=1.5)):
        kw = dict(eps=0.05, alpha=0.01, steps=2) | bad
        with pytest.raises(RemovalNetError, match=next(iter(bad))):
            pgd(victim, x, y, **kw)


def test_pgd_variant_pairs_are_seed_and_its_own_variant(data, models, tmp_path):
    victim, suspect = models
    md = create_verifier("modeldiff_pgd", **PGD_SMALL)
    assert md.metric_names == ("MD-PGD-DDV",) and not md.per_suspect
    fp = md.extract(victim, data, seed=0)
    seeds, variants = fp.tensors["seeds"], fp.tensors["variants"]
    assert seeds.shape == variants.shape == (10, 1, 28, 28)
    assert torch.equal(seeds, data.tensors[0][fp.tensors["indices"]])
    assert (variants - seeds).abs().amax(dim=(1, 2, 3)).max() <= 0.06 + 1e-6   # each variant near its own seed
    assert variants.min() >= 0 and variants.max() <= 1
    with torch.no_grad():
        ddv_v = decision_distance(victim(seeds), victim(variants), "cosine")
        ddv_s = decision_distance(suspect(seeds), suspect(variants), "cosine")
        noise = (seeds + (torch.rand(seeds.shape, generator=torch.Generator().manual_seed(9)) * 2 - 1) * 0.06)
        ddv_noise = decision_distance(victim(seeds), victim(noise.clamp(0, 1)), "cosine")
    torch.testing.assert_close(fp.tensors["ddv_victim"], ddv_v)
    assert ddv_v.mean() > 3 * ddv_noise.mean()               # PGD moved the output away from the seed's
    s = md.score(fp, victim, suspect)["MD-PGD-DDV"]
    assert s == pytest.approx(ddv_similarity(ddv_v, ddv_s), abs=1e-6) and -1.0 <= s < 0.999
    assert md.score(fp, victim, victim)["MD-PGD-DDV"] == pytest.approx(1.0, abs=1e-12)
    fp.save(tmp_path / "mdpgd")
    assert md.score(Fingerprint.load(tmp_path / "mdpgd"), victim, suspect)["MD-PGD-DDV"] == pytest.approx(s, abs=1e-12)
    fp2 = md.extract(victim, data, seed=0)
    for k in fp.tensors:
        assert torch.equal(fp.tensors[k], fp2.tensors[k]), k
    for bad in (dict(num_pairs=1), dict(eps=0), dict(eps=2.0), dict(alpha=-1.0), dict(steps=0),
                dict(ddv="l1"), dict(output="probs"), dict(random_start="yes"), dict(seeds=3)):
        with pytest.raises(RemovalNetError, match=next(iter(bad))):
            create_verifier("modeldiff_pgd", **bad)
