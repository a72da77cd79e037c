"""Removal components beyond the paper: function-preserving channel permutation (exactness on plain, BatchNorm
and residual networks), the alignment-aware DeepJudge that undoes it, and removalnet-plus."""
import copy

import pytest
import torch
from torch import nn

from removalnet import RemovalNetError
from removalnet.attacks import create_attack
from removalnet.attacks.permute import channel_spaces, farthest_permutations, permute_model, random_permutations
from removalnet.models import create_model
from removalnet.verify import create_verifier
from removalnet.verify.deepjudge_aligned import match_channels

from helpers import calibrated_vgg


def _trained_bn(model, x):
    """Give BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        model.train()
        for _ in range(3):
            model(x)
    return model.eval()


@pytest.mark.parametrize("arch", ["vgg_small", "resnet_small"])
@pytest.mark.parametrize("how", ["random", "farthest"])
def test_permutation_preserves_the_function(arch, how):
    torch.manual_seed(0)
    x = torch.rand(16, 1, 28, 28)
    m = _trained_bn(create_model(arch, 10, 1, 28, width=8, mean=[0.3], std=[0.3]), x)
    spaces = channel_spaces(m, x[:2])
    if how == "random":
        perms = random_permutations(spaces, torch.Generator().manual_seed(1))
    else:
        perms, _ = farthest_permutations(m, x, spaces)
    assert perms and all(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    pm = permute_model(m, spaces, perms)
    with torch.no_grad():
        assert torch.allclose(pm(x), m(x), atol=1e-5)
        moved = [float((pm.head(x, l) - m.head(x, l)).abs().max()) for l in range(1, m.num_blocks)]
    assert all(d > 1e-3 for d in moved)               # every hidden block output is rearranged
    assert m.state_dict().keys() == pm.state_dict().keys()


def test_residual_stream_shares_one_permutation():
    x = torch.rand(4, 1, 28, 28)
    m = create_model("resnet_small", 10, 1, 28, width=4)
    spaces = channel_spaces(m, x[:2])
    stream = next(sp for sp in spaces if "blocks.0.0" in sp.producers)
    # the stem's output is added to the first stage's second conv: one space, two producers
    assert "blocks.1.0.conv2" in stream.producers
    assert {"blocks.1.0.conv1", "blocks.2.0.conv1", "blocks.2.0.downsample.0"} <= set(stream.consumers)
    fixed = [sp for sp in spaces if sp.fixed]
    assert any("classifier.2" in sp.producers for sp in fixed)   # the logits never move


def test_permutation_of_torchvision_resnet18_is_exact():
    import torchvision
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    net = _trained_bn(torchvision.models.resnet18(num_classes=10), x)
    spaces = channel_spaces(net, x[:2])
    perms = random_permutations(spaces, torch.Generator().manual_seed(0))
    assert len(perms) >= 8
    with torch.no_grad():
        assert torch.allclose(permute_model(net, spaces, perms)(x), net(x), atol=1e-4)


class _Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.d = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return self.d(torch.relu(self.c(torch.cat([self.a(x), self.b(x)], 1)))).mean((2, 3))


def test_unknown_operations_are_left_alone():
    x = torch.rand(2, 1, 8, 8)
    net = _Cat()
    spaces = channel_spaces(net, x)
    by_producer = {p: sp for sp in spaces for p in sp.producers}
    assert by_producer["a"].fixed and by_producer["b"].fixed          # torch.cat: not analysed, not permuted
    assert by_producer["c"].permutable
    perms = random_permutations(spaces, torch.Generator().manual_seed(0))
    assert set(perms) == {by_producer["c"].id}
    with torch.no_grad():
        assert torch.allclose(permute_model(net, spaces, perms)(x), net(x), atol=1e-6)
    with pytest.raises(RemovalNetError, match="cannot be permuted"):
        permute_model(net, spaces, {by_producer["a"].id: torch.tensor([1, 0, 2, 3])})
    with pytest.raises(RemovalNetError, match="not a permutation"):
        permute_model(net, spaces, {by_producer["c"].id: torch.zeros(6, dtype=torch.long)})


def test_farthest_permutation_beats_random():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 28, 28)
    m = _trained_bn(create_model("vgg_small", 10, 1, 28, width=8), x)
    spaces = channel_spaces(m, x[:2])
    best, info = farthest_permutations(m, x, spaces, features="channel_means")
    rand = random_permutations(spaces, torch.Generator().manual_seed(0))
    from removalnet.attacks.permute import _features, _probe_activations
    acts = _probe_activations(torch.fx.symbolic_trace(m), x, {sp.probe for sp in spaces if sp.permutable})
    for sp in spaces:
        if not sp.permutable:
            continue
        a = _features(acts[sp.probe].double(), "channel_means")

        def dist(p):
            return float(((a[p] - a) ** 2).sum())
        assert dist(best[sp.id]) == pytest.approx(info[sp.id]["distance"], rel=1e-6)
        assert dist(best[sp.id]) >= dist(rand[sp.id]) - 1e-9
    with pytest.raises(RemovalNetError, match="features"):
        farthest_permutations(m, x, spaces, features="nope")


def test_match_channels_recovers_a_permutation():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(50, 6, generator=g)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    s = torch.empty_like(v)
    s[:, perm] = v * 2.0 + 1.0            # suspect channel perm[c] carries victim channel c (rescaled)
    assert torch.equal(match_channels(v, s), perm)


def test_aligned_deepjudge_sees_through_a_permutation():
    from torch.utils.data import TensorDataset
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    victim = calibrated_vgg(0, x)
    with torch.no_grad():
        data = TensorDataset(x, victim(x).argmax(1))      # every image correctly classified: all can be seeds
    spaces = channel_spaces(victim, x[:2])
    permuted = permute_model(victim, spaces, farthest_permutations(victim, x, spaces)[0])
    params = dict(num_seeds=16, max_iters=20, max_tests=32)
    dj, dja = create_verifier("deepjudge", **params), create_verifier("deepjudge_aligned", **params)
    fp, fpa = dj.extract(victim, data, seed=0), dja.extract(victim, data, seed=0)
    plain = dj.score(fp, victim, permuted)
    aligned = dja.score(fpa, victim, permuted)
    with torch.no_grad():
        assert torch.allclose(permuted(x), victim(x), atol=1e-4)        # the function did not move
    assert plain["DJ-LOD"] > 0.1 and plain["DJ-NOD"] > 0.1           # the layer's neurons (DeepJudge's NOD too) did
    assert aligned["DJA-LOD"] < 1e-5 and aligned["DJA-LAD"] < 1e-12
    assert all(abs(v) < 1e-12 for v in dja.score(fpa, victim, victim).values())


def _digits_victim():
    from removalnet.attacks import build_substitute
    from removalnet.data import load_dataset
    from removalnet.train import TrainConfig, train_model
    train = load_dataset("digits", "train")
    torch.manual_seed(0)   # the same victim whatever ran before (create_model draws from the global generator)
    v = create_model("vgg_small", 10, 1, 8, width=4)
    train_model(v, train, None, TrainConfig(iterations=60, batch_size=64, lr=0.05), seed=0, progress=False)
    sub = build_substitute(v, train, scenario="ltd", count=100, seed=0)
    return v.eval(), sub


def test_removalnet_plus_is_seeded_keeps_the_victim_and_obeys_its_stopping_rule():
    victim, sub = _digits_victim()
    before = copy.deepcopy(victim.state_dict())
    params = dict(iterations=20, batch_size=32, check_every=5, boundary_eps=0.1, min_agreement=0.5)
    a1 = create_attack("removalnet-plus", **params)
    s1 = a1(victim, sub, seed=3)
    s2 = create_attack("removalnet-plus", **params)(victim, sub, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(s1.state_dict().values(), s2.state_dict().values()))
    assert all(torch.equal(before[k], v) for k, v in victim.state_dict().items())
    sel = a1.selection
    assert [r["t"] for r in sel] == [0, 5, 10, 15, 20]
    eligible = [r for r in sel if r["agreement"] >= 0.5]
    chosen = min(eligible, key=lambda r: r["boundary_agreement"])
    assert a1.selected_t == chosen["t"]
    assert {"boundary", "kl", "ce"} <= set(a1.trace[0])


def test_removalnet_plus_permutation_only_is_the_victims_function():
    victim, sub = _digits_victim()
    s = create_attack("removalnet-plus", iterations=0, boundary_mix=0.0, holdout=0.0)(victim, sub, seed=0)
    x = torch.stack([sub[i][0] for i in range(32)])
    with torch.no_grad():
        assert torch.allclose(s(x), victim(x), atol=1e-5)
        assert not torch.allclose(s.head(x, 1), victim.head(x, 1))
    with pytest.raises(RemovalNetError, match="boundary_mix"):
        create_attack("removalnet-plus", boundary_mix=1.0)


def test_removalnet_plus_latent_level_runs_in_the_permuted_channel_order():
    victim, sub = _digits_victim()
    a = create_attack("removalnet-plus", iterations=4, batch_size=32, beta=2.0, latent_steps=2, holdout=0.0)
    s = a(victim, sub, seed=0)
    assert all("feat" in row and row["feat"] >= 0 for row in a.trace)
    # at t = 1 the reversed latent starts next to the permuted start's own latent: the loss is finite
    assert all(torch.isfinite(v).all() for v in s.state_dict().values() if v.is_floating_point())


class _FlatHead(nn.Module):
    """LeNet-style: a conv space flattened spatially into a linear layer, functional and module flatten."""

    def __init__(self, module_flatten: bool, bn1d: bool = False):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 5, 3)
        self.flat = nn.Flatten() if module_flatten else None
        self.drop = nn.Dropout(0.5)
        self.bn = nn.BatchNorm1d(5 * 2 * 2) if bn1d else None
        self.fc1, self.fc2 = nn.Linear(5 * 2 * 2, 7), nn.Linear(7, 3)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.relu(self.conv2(x))
        x = self.flat(x) if self.flat is not None else torch.flatten(x, 1)
        if self.bn is not None:
            x = self.bn(x)
        return self.fc2(torch.relu(self.fc1(self.drop(x))))


@pytest.mark.parametrize("module_flatten", [False, True])
def test_a_spatial_flatten_into_a_linear_layer_is_permuted_and_rescaled_in_blocks(module_flatten):
    """(N, C, H, W) -> (N, C*H*W) -> Linear: the linear layer's input columns move in blocks of H*W per channel,
    so the last conv space is permuted and rescaled too (a LeNet's conv2), and the function stays exact."""
    from removalnet.attacks.rescale import channel_scales, rescale_model

    torch.manual_seed(0)
    net = _FlatHead(module_flatten).eval()
    x = torch.rand(16, 1, 8, 8)
    spaces = channel_spaces(net, x[:2])
    by_producer = {p: sp for sp in spaces for p in sp.producers}
    assert by_producer["conv2"].permutable and by_producer["conv2"].consumers == ["fc1"]
    assert by_producer["conv2"].probe is not None and "flatten" not in by_producer["conv2"].probe
    perms = random_permutations(spaces, torch.Generator().manual_seed(1))
    assert by_producer["conv2"].id in perms
    permuted = permute_model(net, spaces, perms)
    p = perms[by_producer["conv2"].id]
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), net(x), atol=1e-5, rtol=1e-5)
        # block j of the new fc1 input columns is old channel p[j]'s block of 2 x 2 features
        w_old, w_new = net.fc1.weight.reshape(7, 5, 4), permuted.fc1.weight.reshape(7, 5, 4)
        rows = perms.get(by_producer["fc1"].id, torch.arange(7))   # fc1's own outputs are permuted too
        torch.testing.assert_close(w_new, w_old[rows][:, p], atol=0, rtol=0)
    scales = channel_scales(net, x, spaces, mode="random", generator=torch.Generator().manual_seed(2))
    assert by_producer["conv2"].id in scales
    with torch.no_grad():
        torch.testing.assert_close(rescale_model(net, spaces, scales)(x), net(x), atol=1e-5, rtol=1e-5)
    _, dist = farthest_permutations(net, x, spaces)   # the probes are (N, C, H, W) activations
    assert by_producer["conv2"].id in dist


def test_a_flattened_space_read_by_anything_but_a_linear_layer_is_left_alone():
    net = _FlatHead(module_flatten=True, bn1d=True).eval()   # BatchNorm1d over C*H*W features: not per channel
    spaces = channel_spaces(net, torch.rand(2, 1, 8, 8))
    by_producer = {p: sp for sp in spaces for p in sp.producers}
    assert by_producer["conv2"].fixed and not by_producer["conv2"].permutable
    assert by_producer["conv1"].permutable
