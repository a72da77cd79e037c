"""A function-preserving channel permutation: the black-box verifiers (IPGuard, ModelDiff, ZEST, SAC) see the
same model, DeepJudge's layer metrics at the permuted layer do not (tests/test_deepjudge.py covers that side)."""
import pytest
import torch
from torch.utils.data import TensorDataset

from helpers import calibrated_vgg, permuted_copy
from removalnet.verify import create_verifier

PARAMS = {
    "ipguard": {"num_points": 10, "max_iter": 30},
    "modeldiff": {"num_pairs": 10, "iterations": 100},
    "sac": {"num_samples": 12, "source": "cutmix"},
    "zest": {"num_images": 2, "num_masks": 40},
}
IDENTICAL = {"IPG-MR": 1.0, "MD-DDV": 1.0, "SAC": 0.0, "ZEST-L2": 0.0, "ZEST-Cos": 0.0}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_black_box_verifiers_ignore_a_channel_permutation(name):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(30, 1, 28, 28, generator=g), torch.randint(0, 10, (30,), generator=g))
    victim = calibrated_vgg(0, data.tensors[0])
    perm, other = permuted_copy(victim), calibrated_vgg(1, data.tensors[0])
    torch.testing.assert_close(perm(data.tensors[0]), victim(data.tensors[0]), atol=1e-5, rtol=1e-5)
    v = create_verifier(name, **PARAMS[name])
    fp = v.extract(victim, data, seed=0)
    same, unrelated = v.score(fp, victim, perm), v.score(fp, victim, other)
    for metric, value in same.items():
        assert value == pytest.approx(IDENTICAL[metric], abs=1e-3), (metric, value)
        assert unrelated[metric] != pytest.approx(IDENTICAL[metric], abs=1e-3), (metric, unrelated[metric])
