import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from removalnet import RemovalNetError, create_model, weights_hash
from removalnet.models import SplitModel
from removalnet.verify import Fingerprint, create_verifier
from removalnet.verify.zest import lime_pinv, lime_signature, masked_inputs, random_masks, segment_images, zest_distances

from helpers import calibrated_vgg, permuted_copy

SMALL = dict(num_images=3, num_masks=40, batch_size=64)


def quadrant_images(n: int = 2, size: int = 28) -> torch.Tensor:
    """Images made of four flat quadrants of distinct intensities (quickshift finds the 4 regions)."""
    levels = torch.tensor([[0.05, 0.35], [0.65, 0.95]])
    imgs = []
    for k in range(n):
        lv = levels.roll(k, dims=1)
        img = lv.repeat_interleave(size // 2, 0).repeat_interleave(size // 2, 1)
        imgs.append(img[None])
    return torch.stack(imgs)


def linear_model(num_classes=3, size=28, bias=True, seed=0) -> SplitModel:
    torch.manual_seed(seed)
    lin = nn.Linear(size * size, num_classes, bias=bias)
    return SplitModel([nn.Identity()], nn.Sequential(nn.Flatten(), lin), in_chans=1, mean=[0.3], std=[0.5]).eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 28, 28, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 5, 1, 2)            # some spatial structure for quickshift
    return TensorDataset(x, torch.randint(0, 10, (24,), generator=g))


@pytest.mark.parametrize("intercept,bias", [(True, True), (False, False)])
def test_lime_recovers_linear_model_exactly(intercept, bias):
    imgs = quadrant_images(2)
    ds = TensorDataset(imgs, torch.zeros(2, dtype=torch.long))
    model = linear_model(bias=bias)
    fp = create_verifier("zest", num_images=2, num_masks=50, intercept=intercept).extract(model, ds, seed=0)
    t = fp.tensors
    assert t["num_segments"].tolist() == [4, 4]
    lin = model.classifier[1]
    for n in range(2):
        img = t["images"][n]
        z = (img - 0.3) / 0.5                                 # normalised input; masked pixels become 0
        seg = t["segments"][n].long()
        for s in range(4):
            expected = lin.weight.detach() @ (z * (seg == s)).flatten()
            torch.testing.assert_close(t["signature"][n, s], expected, atol=1e-4, rtol=1e-4)
        if intercept:
            torch.testing.assert_close(t["intercept"][n], lin.bias.detach(), atol=1e-4, rtol=1e-4)
    # the masked inputs really put the channel mean (normalised value 0) on masked segments
    torch.testing.assert_close(t["fill"], torch.tensor([0.3]))


def test_each_distinct_mask_goes_through_the_model_once():
    """Four segments allow 16 distinct masks: 2 images x 200 masks make at most 32 inputs, not 400, and the
    coefficients equal the fit on every mask row computed one by one (repeats included)."""
    imgs = quadrant_images(2)
    model = linear_model(bias=True)
    seen = []
    model.register_forward_hook(lambda mod, args, out: seen.append(len(args[0])))
    segments = segment_images(imgs)
    masks = random_masks(torch.tensor([4, 4]), 200, torch.Generator().manual_seed(0))
    fill = torch.tensor([0.3])
    coef, _ = lime_signature(model, imgs, segments, masks, fill, batch_size=5)
    distinct = sum(len(torch.unique(masks[i], dim=0)) for i in range(2))
    assert sum(seen) == distinct <= 32 and max(seen) <= 5
    for i in range(2):
        with torch.no_grad():
            y = torch.cat([model(masked_inputs(imgs[i:i + 1], segments[i:i + 1], row[None], fill)) for row in masks[i]])
        w = torch.linalg.pinv(masks[i].double()) @ y.double()
        torch.testing.assert_close(coef[i], w.float(), atol=1e-5, rtol=1e-5)


def test_masked_inputs_golden():
    img = torch.tensor([[[0.0, 1.0], [0.5, 0.25]]])[None]        # 1 x 1 x 2 x 2
    seg = torch.tensor([[[0, 1], [1, 2]]])
    masks = torch.tensor([[1, 0, 1]], dtype=torch.uint8)
    out = masked_inputs(img, seg, masks, torch.tensor([0.3]))
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 0.3], [0.3, 0.25]]]]), atol=1e-7, rtol=0)
    m = SplitModel([nn.Identity()], nn.Flatten(), in_chans=1, mean=[0.3], std=[0.5])
    normed = m.normalize(out)
    assert normed[0, 0, 0, 1].item() == pytest.approx(0.0, abs=1e-7)
    assert normed[0, 0, 1, 0].item() == pytest.approx(0.0, abs=1e-7)


def test_random_masks_and_pinv():
    g = torch.Generator().manual_seed(3)
    masks = random_masks(torch.tensor([2, 4]), 30, g)
    assert masks.shape == (2, 30, 4) and masks.dtype == torch.uint8
    assert masks[0, 0].tolist() == [1, 1, 0, 0] and masks[1, 0].tolist() == [1, 1, 1, 1]
    assert masks[0, :, 2:].sum() == 0                          # padding columns stay off
    again = random_masks(torch.tensor([2, 4]), 30, torch.Generator().manual_seed(3))
    assert torch.equal(masks, again)
    p = lime_pinv(masks, intercept=True)
    assert p.shape == (2, 5, 30)
    y = torch.randn(2, 30, 3, dtype=torch.float64)
    w = p @ y
    torch.testing.assert_close(w[0, 3:], torch.zeros_like(w[0, 3:]), atol=1e-12, rtol=0)   # padded segments


def test_segment_images_gray_and_rgb():
    gray = quadrant_images(1)
    seg = segment_images(gray)
    assert seg.shape == (1, 28, 28) and seg.dtype == torch.int64
    assert sorted(seg.unique().tolist()) == [0, 1, 2, 3] and seg[0, 0, 0] == 0
    rgb = gray.repeat(1, 3, 1, 1)
    assert torch.equal(segment_images(rgb), seg)              # grayscale is handled as three equal channels
    with pytest.raises(RemovalNetError):
        segment_images(torch.rand(1, 2, 8, 8))


def test_zest_distances_golden():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    l2, cos_d = zest_distances(a, b)
    assert l2 == pytest.approx(math.sqrt(2)) and cos_d == pytest.approx(1.0)
    l2, cos_d = zest_distances(a, 3 * a)
    assert l2 == pytest.approx(2.0) and cos_d == pytest.approx(0.0, abs=1e-15)
    l2, cos_d = zest_distances(torch.tensor([3.0, 4.0]), torch.tensor([-3.0, -4.0]))
    assert l2 == pytest.approx(10.0) and cos_d == pytest.approx(2.0)
    l2, cos_d = zest_distances(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]))
    assert l2 == pytest.approx(1.0) and cos_d == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-12)
    assert zest_distances(torch.zeros(3), torch.ones(3)) == pytest.approx((math.sqrt(3), 1.0))
    with pytest.raises(RemovalNetError, match="shape"):
        zest_distances(a, torch.zeros(3))


def test_identical_signatures_give_exact_zeros():
    """The code returns exact zeros for identical signatures (1 - cos rounds to 1e-16 on some CPUs)."""
    g = torch.Generator().manual_seed(0)
    for shape in ((200, 10), (3, 7, 5), (1,)):
        sig = torch.randn(*shape, generator=g) * 1e3
        assert zest_distances(sig, sig.clone()) == (0.0, 0.0)
    assert zest_distances(torch.zeros(4, 2), torch.zeros(4, 2)) == (0.0, 0.0)
    sig = torch.randn(500, generator=g, dtype=torch.float64)
    _, cos_d = zest_distances(sig, sig * 3)                    # parallel, not identical: ~0 within rounding
    assert cos_d == pytest.approx(0.0, abs=1e-15)


def test_identity_permutation_and_unrelated(data):
    x = data.tensors[0]
    victim, other = calibrated_vgg(0, x), calibrated_vgg(1, x)
    perm = permuted_copy(victim)
    assert weights_hash(perm) != weights_hash(victim)
    torch.testing.assert_close(perm(x), victim(x), atol=1e-5, rtol=1e-5)
    zest = create_verifier("zest", **SMALL)
    h = weights_hash(victim)
    fp = zest.extract(victim, data, seed=0)
    same = zest.score(fp, victim, victim)
    assert same == pytest.approx({"ZEST-L2": 0.0, "ZEST-Cos": 0.0}, abs=1e-12)
    p = zest.score(fp, victim, perm)
    o = zest.score(fp, victim, other)
    assert p["ZEST-L2"] < 1e-3 * o["ZEST-L2"] and p["ZEST-Cos"] < 1e-6
    assert o["ZEST-Cos"] > 0.01
    assert weights_hash(victim) == h and not victim.training


def test_reference_images_are_the_first_of_the_verifiers_data(data):
    """The official get_reference_dataset takes the first 128 images of its split in order; the verifier does the
    same within its own data (never the attacker's); order="random" draws them (seeded) instead."""
    victim = calibrated_vgg(0, data.tensors[0])
    assert create_verifier("zest").params["order"] == "first"
    fp = create_verifier("zest", **SMALL).extract(victim, data, seed=3)
    assert fp.tensors["indices"].tolist() == [0, 1, 2]
    assert torch.equal(fp.tensors["images"], data.tensors[0][:3])
    drawn = create_verifier("zest", **SMALL, order="random").extract(victim, data, seed=3).tensors["indices"]
    assert len(set(drawn.tolist())) == 3 and drawn.tolist() != [0, 1, 2]
    assert torch.equal(drawn, torch.randperm(24, generator=torch.Generator().manual_seed(3))[:3])


def test_seeded_bit_identical_roundtrip_and_batching(data, tmp_path):
    x = data.tensors[0]
    victim, suspect = calibrated_vgg(0, x), calibrated_vgg(1, x)
    zest = create_verifier("zest", **SMALL)
    fp1 = zest.extract(victim, data, seed=5)
    fp2 = zest.extract(victim, data, seed=5)
    assert fp1.tensors.keys() == fp2.tensors.keys()
    for k in fp1.tensors:
        assert torch.equal(fp1.tensors[k], fp2.tensors[k]), k
    fp3 = zest.extract(victim, data, seed=6)
    assert not torch.equal(fp1.tensors["masks"], fp3.tensors["masks"]) or \
        not torch.equal(fp1.tensors["indices"], fp3.tensors["indices"])
    fp1.save(tmp_path / "zest")
    loaded = Fingerprint.load(tmp_path / "zest")
    assert zest.score(loaded, victim, suspect) == pytest.approx(zest.score(fp1, victim, suspect), rel=1e-12)
    small_batches = create_verifier("zest", **{**SMALL, "batch_size": 7})
    s_small = small_batches.score(fp1, victim, suspect)
    s_big = zest.score(fp1, victim, suspect)
    assert s_small["ZEST-L2"] == pytest.approx(s_big["ZEST-L2"], rel=1e-4)


def _reference_inputs(image: np.ndarray, segment: np.ndarray, masks: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The reference ``get_reference_dataset``: masked segments of the image take the fudge value (the mean)."""
    out = []
    for sample in masks:
        temp = image.copy()
        hidden = np.zeros(segment.shape, dtype=bool)
        for z in np.where(sample == 0)[0]:
            hidden[segment == z] = True
        temp[:, hidden] = mean[:, None]
        out.append(temp)
    return np.stack(out)


@pytest.mark.parametrize("intercept", [False, True])
def test_signature_against_the_reference_fit(data, intercept):
    """Oracle: the reference's masked inputs and its least squares re-written in numpy:
    pinv(A^T A) A^T Y without intercept (``train_lime_model``); with the option, lstsq on [1, A]."""
    x = data.tensors[0]
    victim = calibrated_vgg(0, x)
    zest = create_verifier("zest", **SMALL, intercept=intercept)
    assert create_verifier("zest").params["intercept"] is False                # the reference's fit by default
    fp = zest.extract(victim, data, seed=0)
    t = fp.tensors
    mean = t["fill"].double().numpy()
    for i in range(len(t["images"])):
        s_i = int(t["num_segments"][i])
        a = t["masks"][i, :, :s_i].double().numpy()
        inputs = _reference_inputs(t["images"][i].double().numpy(), t["segments"][i].numpy(), a, mean)
        with torch.no_grad():
            y = victim(torch.from_numpy(inputs).float()).double().numpy()
        if intercept:
            design = np.hstack([np.ones((len(a), 1)), a])
            w = np.linalg.lstsq(design, y, rcond=None)[0][1:]
        else:
            w = np.linalg.pinv(a.T @ a) @ a.T @ y
        np.testing.assert_allclose(t["signature"][i, :s_i].double().numpy(), w, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(t["signature"][i, s_i:].numpy(), 0.0, atol=1e-6)   # padding


def test_params_validated_and_mismatch(data):
    for bad in (dict(num_images=0), dict(num_masks=1), dict(output="probs"), dict(intercept=1), dict(order="last"),
                dict(kernel_size=0), dict(ratio=2.0), dict(nonsense=3)):
        with pytest.raises(RemovalNetError, match=next(iter(bad))):
            create_verifier("zest", **bad)
    x = data.tensors[0]
    victim = calibrated_vgg(0, x)
    fp = create_verifier("zest", **SMALL).extract(victim, data, seed=0)
    with pytest.raises(RemovalNetError, match="num_masks"):
        create_verifier("zest", **{**SMALL, "num_masks": 41}).score(fp, victim, victim)
    with pytest.raises(RemovalNetError, match="another victim"):
        create_verifier("zest", **SMALL).score(fp, calibrated_vgg(1, x), victim)
