import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from removalnet import RemovalNetError, create_model, weights_hash
from removalnet.models import SplitModel
from removalnet.verify import Fingerprint, create_verifier
from removalnet.verify.sac import correlation_matrix, cutmix, sac_distance

from helpers import calibrated_vgg

SMALL = dict(num_samples=12, batch_size=16)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(40, 1, 28, 28, generator=g), torch.randint(0, 10, (40,), generator=g))


@pytest.fixture(scope="module")
def models(data):
    x = data.tensors[0]
    return calibrated_vgg(0, x), calibrated_vgg(1, x)


def test_correlation_matrix_and_distance_golden():
    out = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    c = correlation_matrix(out)                    # (1 - cos) / 2
    h = (1 - 2 ** -0.5) / 2
    expected = torch.tensor([[0.0, 0.5, h], [0.5, 0.0, h], [h, h, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(c, expected)
    torch.testing.assert_close(correlation_matrix(-out)[0, 1], torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(correlation_matrix(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))[0, 1],
                               torch.tensor(1.0, dtype=torch.float64))
    other = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])   # all rows parallel: C = 0
    assert sac_distance(c, correlation_matrix(other)) == pytest.approx((2 * 0.5 + 4 * h) / 9)
    assert sac_distance(c, c) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(RemovalNetError):
        sac_distance(c, torch.zeros(2, 2))


def test_per_sample_cutmix_patches_from_another_sample_in_a_corner():
    x = torch.arange(6, dtype=torch.float32)[:, None, None, None].expand(6, 1, 30, 30).clone() / 10
    out = cutmix(x, torch.Generator().manual_seed(0), cut_ratio=0.2, mode="per_sample")
    again = cutmix(x, torch.Generator().manual_seed(0), cut_ratio=0.2, mode="per_sample")
    assert torch.equal(out, again)
    for a in range(6):
        changed = out[a, 0] != x[a, 0]
        rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
        assert len(rows) and len(rows) <= 6 and len(cols) <= 6        # patch side 2 * (int(30 * 0.2) // 2) = 6
        vals = out[a, 0][changed].unique()
        assert len(vals) == 1 and vals.item() != x[a, 0, 0, 0].item()  # one other sample's pixels
        cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
        # corner region: centres outside the middle 2/3 on both axes (up to clipping at the border)
        assert (cy <= 30 / 6 or cy >= 5 * 30 / 6 - 1) and (cx <= 30 / 6 or cx >= 5 * 30 / 6 - 1)
    with pytest.raises(RemovalNetError):
        cutmix(x[:1])


def test_cutmix_follows_the_reference_by_default(data, models):
    """The reference cut_mix.py: the first batch of samples of the (unshuffled) split, partners from one
    torch.randperm (a sample may be its own partner) and one patch position for the whole batch. Flat images of
    distinct values show which sample each patch comes from."""
    victim, _ = models
    assert create_verifier("sac").params["cutmix"] == "official"
    flat = torch.arange(40, dtype=torch.float32)[:, None, None, None].expand(40, 1, 28, 28) / 40
    ds = TensorDataset(flat.clone(), data.tensors[1])
    fp = create_verifier("sac", **SMALL, source="cutmix").extract(victim, ds, seed=2)
    x = fp.tensors["samples"]
    assert fp.tensors["indices"].tolist() == list(range(12))                   # the first 12, in order
    changed = torch.stack([x[a, 0] != flat[a, 0] for a in range(12)])
    boxes = {(tuple(c.any(1).nonzero()[:, 0].tolist()), tuple(c.any(0).nonzero()[:, 0].tolist()))
             for c in changed if c.any()}
    assert len(boxes) == 1                                                     # one patch position for all
    rows, cols = next(iter(boxes))
    partner = [round(float(x[a, 0, rows[0], cols[0]]) * 40) for a in range(12)]
    assert sorted(partner) == list(range(12))                                  # one permutation of the batch
    g = torch.Generator().manual_seed(2)
    assert partner == torch.randperm(12, generator=g).tolist()                 # drawn first, then the box
    mine = create_verifier("sac", **SMALL, source="cutmix", cutmix="per_sample").extract(victim, ds, seed=2)
    assert mine.tensors["indices"].tolist() != list(range(12))                 # a seeded random subset


def test_wrong_source_identity_roundtrip(data, models, tmp_path):
    victim, suspect = models
    h = weights_hash(victim)
    sac = create_verifier("sac", **SMALL)
    fp = sac.extract(victim, data, seed=0)
    idx, xs = fp.tensors["indices"], fp.tensors["samples"]
    assert len(idx) == 12 and len(set(idx.tolist())) == 12
    assert torch.equal(xs, data.tensors[0][idx])
    with torch.no_grad():
        assert (victim(xs).argmax(1) != data.tensors[1][idx]).all()     # only misclassified samples
        torch.testing.assert_close(fp.tensors["correlation_victim"], correlation_matrix(victim(xs)).float())
    assert sac.score(fp, victim, victim)["SAC"] == pytest.approx(0.0, abs=1e-12)
    s = sac.score(fp, victim, suspect)["SAC"]
    with torch.no_grad():
        expected = sac_distance(correlation_matrix(victim(xs)), correlation_matrix(suspect(xs)))
    assert s == pytest.approx(expected, rel=1e-6) and s > 0
    fp.save(tmp_path / "sac")
    assert sac.score(Fingerprint.load(tmp_path / "sac"), victim, suspect)["SAC"] == pytest.approx(s, rel=1e-12)
    fp2 = sac.extract(victim, data, seed=0)
    for k in fp.tensors:
        assert torch.equal(fp.tensors[k], fp2.tensors[k]), k
    assert not torch.equal(sac.extract(victim, data, seed=1).tensors["indices"], idx)
    assert weights_hash(victim) == h and not victim.training


def test_cutmix_source_and_softmax(data, models):
    victim, suspect = models
    sac = create_verifier("sac", **SMALL, source="cutmix", output="softmax")
    fp = sac.extract(victim, data, seed=2)
    assert fp.tensors["samples"].shape == (12, 1, 28, 28)
    assert not torch.equal(fp.tensors["samples"], data.tensors[0][fp.tensors["indices"]])
    assert sac.score(fp, victim, victim)["SAC"] == pytest.approx(0.0, abs=1e-12)
    assert 0 < sac.score(fp, victim, suspect)["SAC"] <= 1


def _np_correlation(outputs: np.ndarray) -> np.ndarray:
    """The reference's correlation: cosine distance between every two output rows, scaled to [0, 1]."""
    n = len(outputs)
    c = np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            cos = outputs[a] @ outputs[b] / (np.linalg.norm(outputs[a]) * np.linalg.norm(outputs[b]))
            c[a, b] = (1 - cos) / 2
    return c


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("source", ["wrong", "cutmix"])
def test_softmax_output_against_numpy_oracle(data, models, source):
    """output="softmax" correlates the softmax outputs: an independent numpy oracle on the same samples,
    and a margin from the value on logits, so a verifier that ignored the option would fail."""
    victim, suspect = models
    sac = create_verifier("sac", **SMALL, source=source, output="softmax")
    fp = sac.extract(victim, data, seed=1)
    xs = fp.tensors["samples"]
    with torch.no_grad():
        zv, zs = victim(xs).double().numpy(), suspect(xs).double().numpy()
    cv, cs = _np_correlation(_np_softmax(zv)), _np_correlation(_np_softmax(zs))
    np.testing.assert_allclose(fp.tensors["correlation_victim"].double().numpy(), cv, atol=1e-6)
    expected = np.mean(np.abs(cs - cv))
    got = sac.score(fp, victim, suspect)["SAC"]
    assert got == pytest.approx(expected, rel=1e-5)
    on_logits = np.mean(np.abs(_np_correlation(zs) - _np_correlation(zv)))
    assert abs(on_logits - expected) > 100 * 1e-5 * expected                    # the option matters here
    logit_sac = create_verifier("sac", **SMALL, source=source)
    assert logit_sac.score(logit_sac.extract(victim, data, seed=1), victim, suspect)["SAC"] == \
        pytest.approx(on_logits, rel=1e-5)


def test_too_few_misclassified(data, models):
    victim, _ = models
    with torch.no_grad():
        labels = victim(data.tensors[0]).argmax(1)
    perfect = TensorDataset(data.tensors[0], labels)           # the victim is right on every sample
    with pytest.raises(RemovalNetError, match="misclassifies"):
        create_verifier("sac", **SMALL).extract(victim, perfect, seed=0)
    labels[:5] = (labels[:5] + 1) % 10                          # five wrong: used, with a note
    fp = create_verifier("sac", **SMALL).extract(victim, TensorDataset(data.tensors[0], labels), seed=0)
    assert sorted(fp.tensors["indices"].tolist()) == [0, 1, 2, 3, 4] and "note" in fp.meta


def test_params_validated():
    for bad in (dict(num_samples=1), dict(source="mixup"), dict(cut_ratio=0), dict(output="prob"), dict(cutmix="x"),
                dict(samples=3)):
        with pytest.raises(RemovalNetError, match=next(iter(bad))):
            create_verifier("sac", **bad)
