"""removalnet-plus's verifier-aimed terms (attacks.adaptive_losses): masking consistency against ZEST and CutMix
targets against SAC-m. Every term is checked against an independent computation (numpy, ZEST's and SAC's own
functions), the inputs against what the verifiers draw, and the components end to end (seeded, CLI, effect)."""
import csv

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from removalnet import RemovalNetError, create_model
from removalnet.attacks import adaptive_losses as adaptive
from removalnet.attacks import build_substitute, create_attack
from removalnet.cli import main
from removalnet.checkpoint import save_checkpoint
from removalnet.data import load_dataset
from removalnet.train import TrainConfig, train_model
from removalnet.verify import create_verifier
from removalnet.verify.sac import cutmix
from removalnet.verify.zest import random_masks, segment_images

NEW = ("mask_mix", "mask_weight", "mask_target", "cutmix_mix", "cutmix_weight", "cutmix_target", "cutmix_ratio")


# ---- small known tensors -------------------------------------------------------------------------------------

def _np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _np_kl(target, logits, t):
    q = _np_softmax(logits / t)
    return t * t * float(np.mean(np.sum(target * (np.log(target) - np.log(q)), axis=1)))


def test_tempered_kl_and_targets_golden():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    v = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    for t in (1.0, 2.5):
        p = adaptive.mask_targets("clean", v, t)
        np.testing.assert_allclose(p.numpy(), _np_softmax(v.double().numpy() / t), rtol=1e-6)
        got = float(adaptive.tempered_kl(z, p, t))
        assert got == pytest.approx(_np_kl(p.double().numpy(), z.double().numpy(), t), rel=1e-5)
    u = adaptive.mask_targets("uniform", v, 2.0)
    np.testing.assert_allclose(u.numpy(), np.full((2, 3), 1 / 3), rtol=1e-7)
    # golden: KL(uniform || softmax([0, 0, ln 4])) = ln 6 - ln 3 - ... computed by hand at T = 1
    z2 = torch.tensor([[0.0, 0.0, float(np.log(4.0))]])
    expected = np.mean([1 / 3 * (np.log(1 / 3) - np.log(q)) for q in (1 / 6, 1 / 6, 4 / 6)]) * 3
    assert float(adaptive.tempered_kl(z2, torch.full((1, 3), 1 / 3), 1.0)) == pytest.approx(expected, rel=1e-6)
    assert float(adaptive.tempered_kl(v, adaptive.mask_targets("clean", v, 1.0), 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_cutmix_area_targets_golden():
    v = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    partner = torch.tensor([1, 2, 0])
    lam = torch.tensor([0.25, 0.5, 0.0])
    p = _np_softmax(v.double().numpy())
    expected = np.stack([0.75 * p[0] + 0.25 * p[1], 0.5 * p[1] + 0.5 * p[2], p[2]])
    got = adaptive.cutmix_targets("area", v, partner, lam, 1.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(got.sum(1).numpy(), np.ones(3), rtol=1e-6)
    np.testing.assert_allclose(adaptive.cutmix_targets("uniform", v, partner, lam, 1.0).numpy(),
                               np.full((3, 2), 0.5), rtol=1e-7)


def test_cutmix_batch_is_sacs_cutmix_and_its_area_is_the_patch():
    # image a is the constant a + 1: the pixels that changed are exactly the patch
    x = (torch.arange(6, dtype=torch.float32) + 1)[:, None, None, None].expand(6, 2, 30, 30).clone()
    xc, partner, lam = adaptive.cutmix_batch(x, torch.Generator().manual_seed(4), 0.2)
    assert torch.equal(xc, cutmix(x, torch.Generator().manual_seed(4), 0.2, mode="per_sample"))  # one implementation
    for a in range(6):
        changed = xc[a, 0] != x[a, 0]
        assert int(partner[a]) != a
        assert torch.equal(xc[a][:, changed], x[int(partner[a])][:, changed])
        assert float(lam[a]) == pytest.approx(int(changed.sum()) / 900, abs=1e-7)
        assert 0 < int(changed.sum()) <= 36                          # side 2 * (int(30 * 0.2) // 2) = 6
    # 28 px, ratio 0.5: half side 7; corner centres c in 0..4 or 24..27, clipped to the image, so each side is
    # min(28, c + 7) - max(0, c - 7) in 7..11 (never the full 14) and lam = side_y * side_x / 784
    x28 = (torch.arange(40, dtype=torch.float32) + 1)[:, None, None, None].expand(40, 1, 28, 28).clone()
    xc28, _, lam28 = adaptive.cutmix_batch(x28, torch.Generator().manual_seed(0), 0.5)
    sides = {min(28, c + 7) - max(0, c - 7) for c in (0, 1, 2, 3, 4, 24, 25, 26, 27)}
    assert sides == {7, 8, 9, 10, 11}
    assert set(np.round(lam28.numpy() * 784).astype(int)) <= {a * b for a in sides for b in sides}
    for a in range(40):
        assert float(lam28[a]) == pytest.approx(int((xc28[a, 0] != x28[a, 0]).sum()) / 784, abs=1e-7)
    with pytest.raises(RemovalNetError, match="at least 2"):
        adaptive.cutmix_batch(x[:1], torch.Generator().manual_seed(0))


# ---- the verifiers' own inputs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def victim_and_data():
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    v = create_model("vgg_small", 10, 1, 28, width=4, mean=[0.3], std=[0.4])
    # trained well (99% test accuracy): a weak victim makes the functional checks below noisy
    train_model(v, train, None, TrainConfig(iterations=200, batch_size=64, lr=0.05), seed=0, progress=False)
    sub = build_substitute(v, train, scenario="ltd", count=100, seed=0)
    return v.eval(), sub


def test_segments_and_fill_are_zests(victim_and_data):
    victim, sub = victim_and_data
    x = torch.stack([sub[i][0] for i in range(12)])
    data = TensorDataset(x, torch.zeros(12, dtype=torch.long))
    fp = create_verifier("zest", num_images=12, num_masks=3).extract(victim, data, seed=5)
    segments, num_segments = adaptive.zest_segments(x, seed=5)
    idx = fp.tensors["indices"]
    assert torch.equal(segments[idx], fp.tensors["segments"].long())
    assert torch.equal(num_segments[idx], fp.tensors["num_segments"].long())
    assert int(num_segments.min()) >= 3                              # the images have something to mask
    assert torch.equal(adaptive.zest_fill(victim, 1), fp.tensors["fill"])


def test_masks_are_zests_and_the_masked_images_recomputed(victim_and_data):
    victim, sub = victim_and_data
    x = torch.stack([sub[i][0] for i in range(8)])
    segments, ns = adaptive.zest_segments(x, seed=0)
    fill = adaptive.zest_fill(victim, 1)
    xm, masks = adaptive.masked_batch(x, segments, ns, fill, torch.Generator().manual_seed(9))
    zest_rows = random_masks(ns, 2, torch.Generator().manual_seed(9))
    assert torch.equal(masks, zest_rows[:, 1])                       # ZEST's draw, its non-trivial row
    assert not torch.equal(masks, torch.ones_like(masks) * (masks.sum() > 0))
    xn, sn, mn = x.numpy(), segments.numpy(), masks.numpy()
    for i in range(8):                                               # by hand: a masked segment gets the fill
        off = mn[i][sn[i]] == 0
        expected = np.where(off, 0.3, xn[i, 0])
        np.testing.assert_allclose(xm[i, 0].numpy(), expected, atol=1e-6)
        assert (mn[i, int(ns[i]):] == 0).all()                       # padding columns


# ---- the terms inside removalnet-plus's step, recomputed ---------------------------------------------------------

def _no_dropout(victim):
    v = create_model("vgg_small", 10, 1, 28, width=4, mean=[0.3], std=[0.4])
    v.load_state_dict(victim.state_dict())
    for m in v.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0                                                # train mode = eval mode (BN frozen)
    return v.eval()


def test_mask_term_in_the_step_matches_an_independent_computation(victim_and_data, monkeypatch):
    victim = _no_dropout(victim_and_data[0])
    seen = []
    real = adaptive.masked_batch

    def spy(images, segments, num_segments, fill, generator):
        out = real(images, segments, num_segments, fill, generator)
        seen.append((images.clone(), out[1].clone()))
        return out

    monkeypatch.setattr(adaptive, "masked_batch", spy)
    t = 2.0
    a = create_attack("removalnet-plus", iterations=1, batch_size=16, permute="none", holdout=0.0, boundary_mix=0.0,
                      temperature=t, mask_mix=0.25)
    a(victim, victim_and_data[1], seed=0)
    images, masks = seen[0]
    assert len(images) == 4
    seg = segment_images(images, kernel_size=4, ratio=0.2, max_dist=200, image_range=255, seed=0).numpy()
    mn = masks.numpy()
    xm = np.stack([np.where(mn[i][seg[i]] == 0, 0.3, images[i, 0].numpy()) for i in range(4)])[:, None]
    with torch.no_grad():   # at t = 1 the surrogate is still the victim
        zm = victim(torch.from_numpy(xm).float()).double().numpy()
        zc = victim(images).double().numpy()
    expected = _np_kl(_np_softmax(zc / t), zm, t)
    assert a.trace[0]["mask"] == pytest.approx(expected, rel=1e-4)
    assert expected > 1e-4


def test_cutmix_term_in_the_step_matches_an_independent_computation(victim_and_data, monkeypatch):
    victim = _no_dropout(victim_and_data[0])
    seen = {}
    real_boxes, real_batch = adaptive.cutmix_boxes, adaptive.cutmix_batch

    def spy_boxes(*args, **kw):
        seen["boxes"] = real_boxes(*args, **kw)
        return seen["boxes"]

    def spy_batch(images, generator, cut_ratio):
        seen["images"] = images.clone()
        return real_batch(images, generator, cut_ratio)

    monkeypatch.setattr(adaptive, "cutmix_boxes", spy_boxes)
    monkeypatch.setattr(adaptive, "cutmix_batch", spy_batch)
    t = 1.5
    a = create_attack("removalnet-plus", iterations=1, batch_size=16, permute="none", holdout=0.0, boundary_mix=0.0,
                      temperature=t, cutmix_mix=0.25, cutmix_ratio=0.5)
    a(victim, victim_and_data[1], seed=1)
    images = seen["images"].numpy()
    partner, boxes = (b.numpy() for b in seen["boxes"])
    assert len(images) == 4
    mixed, lam = images.copy(), []
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        mixed[i, :, y0:y1, x0:x1] = images[partner[i], :, y0:y1, x0:x1]
        lam.append((y1 - y0) * (x1 - x0) / (28 * 28))
    lam = np.array(lam)[:, None]
    with torch.no_grad():
        zm = victim(torch.from_numpy(mixed)).double().numpy()
        pv = _np_softmax(victim(torch.from_numpy(images)).double().numpy() / t)
    target = (1 - lam) * pv + lam * pv[partner]
    assert a.trace[0]["cutmix"] == pytest.approx(_np_kl(target, zm, t), rel=1e-4)


# ---- the attack end to end -----------------------------------------------------------------------------------

def test_new_params_default_off_validated_and_left_out_of_job_ids():
    a = create_attack("removalnet-plus")
    assert a.params["mask_mix"] == 0.0 and a.params["cutmix_mix"] == 0.0
    assert a.params["cutmix_ratio"] == pytest.approx(0.2)
    assert not set(NEW) & set(a.identity_params())
    added_later = set(NEW) | {"rescale", "rescale_spread", "rescale_when", "rescale_inputs"}
    assert {k: v for k, v in a.params.items() if k not in added_later} == a.identity_params()
    b = create_attack("removalnet-plus", mask_mix=0.2, cutmix_target="uniform")
    assert b.identity_params()["mask_mix"] == 0.2 and b.identity_params()["cutmix_target"] == "uniform"
    assert "mask_weight" not in b.identity_params() and "cutmix_mix" not in b.identity_params()
    for bad, match in (({"mask_mix": 1.0}, "mask_mix"), ({"cutmix_mix": -0.1}, "cutmix_mix"),
                       ({"mask_target": "victim"}, "mask_target"), ({"cutmix_target": "x"}, "cutmix_target"),
                       ({"mask_weight": -1}, "mask_weight"), ({"cutmix_ratio": 0.0}, "cutmix_ratio"),
                       ({"boundary_mix": 0.5, "mask_mix": 0.3, "cutmix_mix": 0.2}, "must be < 1")):
        with pytest.raises(RemovalNetError, match=match):
            create_attack("removalnet-plus", **bad)


@pytest.mark.parametrize("extra", [{"mask_mix": 0.25}, {"cutmix_mix": 0.25, "cutmix_target": "uniform"},
                                   {"mask_mix": 0.2, "cutmix_mix": 0.2, "mask_target": "uniform"}])
def test_seeded_and_logged(victim_and_data, extra):
    victim, sub = victim_and_data
    params = dict(iterations=4, batch_size=16, check_every=2, min_agreement=0.0, **extra)
    a1, a2 = create_attack("removalnet-plus", **params), create_attack("removalnet-plus", **params)
    s1, s2 = a1(victim, sub, seed=2), a2(victim, sub, seed=2)
    assert all(torch.equal(u, w) for u, w in zip(s1.state_dict().values(), s2.state_dict().values()))
    assert a1.trace == a2.trace
    keys = {"mask"} if "mask_mix" in extra else set()
    keys |= {"cutmix"} if "cutmix_mix" in extra else set()
    assert all(keys <= set(r) and all(r[k] >= 0 for k in keys) for r in a1.trace)
    s3 = create_attack("removalnet-plus", **params)(victim, sub, seed=3)
    assert not all(torch.equal(u, w) for u, w in zip(s1.state_dict().values(), s3.state_dict().values()))


def test_through_the_cli_and_bad_params(victim_and_data, tmp_path, capsys):
    path = tmp_path / "victim.safetensors"
    save_checkpoint(path, victim_and_data[0], {"role": "victim", "dataset": "digits"})
    out = tmp_path / "out"
    rc = main(["attack", "removalnet-plus", "--victim", str(path), "--data", "digits", "--count", "60",
               "--iterations", "2", "--param", "batch_size=16", "--param", "mask_mix=0.2",
               "--param", "cutmix_mix=0.2", "--param", "holdout=0", "--seed", "0", "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    with open(out / "trace.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["mask"]) >= 0 and float(r["cutmix"]) >= 0 for r in rows)
    capsys.readouterr()
    rc = main(["attack", "removalnet-plus", "--victim", str(path), "--data", "digits", "--count", "60",
               "--param", "mask_target=victim", "--out", str(tmp_path / "bad"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "mask_target" in err[0]
    assert not (tmp_path / "bad").exists()


def _mean_kl(model, x, target, t=1.0):
    with torch.no_grad():
        return float(adaptive.tempered_kl(model(x), target, t))


def test_masking_pulls_masked_outputs_to_the_clean_target(victim_and_data):
    victim, sub = victim_and_data
    s = create_attack("removalnet-plus", iterations=30, batch_size=32, lr=0.001, holdout=0.0, boundary_mix=0.0,
                      mask_mix=0.3)(victim, sub, seed=0)
    x = torch.stack([sub[i][0] for i in range(len(sub))])
    segments, ns = adaptive.zest_segments(x, seed=1)
    xm, _ = adaptive.masked_batch(x, segments, ns, adaptive.zest_fill(victim, 1), torch.Generator().manual_seed(7))
    with torch.no_grad():
        target = adaptive.mask_targets("clean", victim(x), 1.0)
    kl_s, kl_v = _mean_kl(s, xm, target), _mean_kl(victim, xm, target)
    assert kl_s < 0.5 * kl_v, (kl_s, kl_v)          # measured: 1.37 against 4.34 (fresh masks, other segments)


def test_cutmix_pulls_outputs_to_the_area_target(victim_and_data):
    victim, sub = victim_and_data
    s = create_attack("removalnet-plus", iterations=30, batch_size=32, holdout=0.0, boundary_mix=0.0,
                      cutmix_mix=0.3, cutmix_ratio=0.5)(victim, sub, seed=0)
    x = torch.stack([sub[i][0] for i in range(len(sub))])
    xc, partner, lam = adaptive.cutmix_batch(x, torch.Generator().manual_seed(7), 0.5)
    with torch.no_grad():
        target = adaptive.cutmix_targets("area", victim(x), partner, lam, 1.0)
    kl_s, kl_v = _mean_kl(s, xc, target), _mean_kl(victim, xc, target)
    assert kl_s < 0.8 * kl_v, (kl_s, kl_v)          # measured: 0.38 against 0.59 (fresh patches)
