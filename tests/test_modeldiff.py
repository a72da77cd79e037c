import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from removalnet import RemovalNetError, create_model, weights_hash
from removalnet.models import SplitModel
from removalnet.verify import Fingerprint, create_verifier
from removalnet.verify.adversarial import pgd
from removalnet.verify.modeldiff import ddv_similarity, decision_distance

from helpers import calibrated_vgg

SMALL = dict(num_pairs=10, steps=4, batch_size=8)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(30, 1, 28, 28, generator=g), torch.randint(0, 10, (30,), generator=g))


@pytest.fixture(scope="module")
def models(data):
    x = data.tensors[0]
    return calibrated_vgg(0, x), calibrated_vgg(1, x)


def test_decision_distance_golden():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 2.0], [3.0, 4.0], [-1.0, -1.0]])
    torch.testing.assert_close(decision_distance(a, b, "cosine"), torch.tensor([1.0, 0.0, 0.0, 2.0]))
    torch.testing.assert_close(decision_distance(a, b, "l2"),
                               torch.tensor([math.sqrt(2), 1.0, 0.0, math.sqrt(8)]))
    # cosine: invariant to the scale of each output vector; l2 is not
    torch.testing.assert_close(decision_distance(5 * a, b, "cosine"), decision_distance(a, b, "cosine"))
    with pytest.raises(RemovalNetError):
        decision_distance(a, b, "l1")


def test_ddv_similarity_golden():
    assert ddv_similarity(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([2.0, 0.0, 4.0])) == pytest.approx(1.0)
    assert ddv_similarity(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])) == pytest.approx(0.0)
    # cos([1, 2, 2], [2, 1, 2]) = (2 + 2 + 4) / (3 * 3)
    assert ddv_similarity(torch.tensor([1.0, 2.0, 2.0]), torch.tensor([2.0, 1.0, 2.0])) == pytest.approx(8 / 9)
    assert ddv_similarity(torch.zeros(3), torch.ones(3)) == 0.0
    # end to end on hand-made outputs: DDV of each model, then eq. 4
    seeds_v = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    vars_v = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    seeds_s = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    vars_s = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    ddv_v = decision_distance(seeds_v, vars_v, "l2")          # [sqrt(8), 0]
    ddv_s = decision_distance(seeds_s, vars_s, "l2")          # [1, sqrt(2)]
    assert ddv_similarity(ddv_v, ddv_s) == pytest.approx(1 / math.sqrt(3))
    ddv_v = decision_distance(seeds_v, vars_v, "cosine")      # [1, 0]
    ddv_s = decision_distance(seeds_s, vars_s, "cosine")      # [1 - 1/sqrt(2), 1]
    c = 1 - 1 / math.sqrt(2)
    assert ddv_similarity(ddv_v, ddv_s) == pytest.approx(c / math.sqrt(c * c + 1))


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


def test_pairs_are_seed_and_its_own_variant(data, models):
    victim, suspect = models
    md = create_verifier("modeldiff", **SMALL)
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
    assert md.score(fp, victim, suspect)["MD-DDV"] == pytest.approx(ddv_similarity(ddv_v, ddv_s), abs=1e-6)


def test_identity_roundtrip_determinism_and_unmodified(data, models, tmp_path):
    victim, suspect = models
    h = weights_hash(victim)
    for ddv in ("cosine", "l2"):
        md = create_verifier("modeldiff", **SMALL, ddv=ddv)
        fp = md.extract(victim, data, seed=3)
        if ddv == "cosine":
            fp2 = md.extract(victim, data, seed=3)
            for k in fp.tensors:
                assert torch.equal(fp.tensors[k], fp2.tensors[k]), k
        assert md.score(fp, victim, victim)["MD-DDV"] == pytest.approx(1.0, abs=1e-12)
        s = md.score(fp, victim, suspect)["MD-DDV"]
        assert -1.0 <= s < 0.999
        fp.save(tmp_path / f"md-{ddv}")
        assert md.score(Fingerprint.load(tmp_path / f"md-{ddv}"), victim, suspect)["MD-DDV"] == s
    assert weights_hash(victim) == h and not victim.training
    assert all(p.requires_grad for p in victim.parameters())   # flags restored after extraction


def test_params_validated():
    for bad in (dict(num_pairs=1), dict(eps=0), dict(eps=2.0), dict(alpha=-1.0), dict(steps=0),
                dict(ddv="l1"), dict(output="probs"), dict(random_start="yes"), dict(seeds=3)):
        with pytest.raises(RemovalNetError, match=next(iter(bad))):
            create_verifier("modeldiff", **bad)
