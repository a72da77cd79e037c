"""Baseline removal attacks (FT, WP, Distill, KnockoffNets) and independently trained models."""
import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from removalnet import RemovalNetError, weights_hash
from removalnet.attacks import build_substitute, create_attack
from removalnet.attacks.finetune import layers_in_forward_order, num_tuned_layers
from removalnet.attacks.independent import (build_from_config, fresh_like, independent_seeds,
                                            train_independent)
from removalnet.attacks.prune import prunable_weights
from removalnet.data import get_dataset_info, load_dataset
from removalnet.models import SplitModel, create_model
from removalnet.train import TrainConfig, evaluate, train_model
from removalnet.utils import seed_everything

SIZE = 16
FAST = dict(batch_size=32, checkpoint_every=10)


@pytest.fixture(scope="module")
def task():
    torch.set_num_threads(1)
    info = get_dataset_info("digits")
    train = load_dataset("digits", "train", input_size=SIZE)
    test = load_dataset("digits", "test", input_size=SIZE)
    seed_everything(0)
    victim = create_model("vgg_small", 10, 1, SIZE, width=8, mean=info.mean, std=info.std)
    train_model(victim, train, None, TrainConfig(iterations=120, batch_size=64, lr=0.05), seed=0, progress=False)
    sub = build_substitute(victim, train, count=160, seed=0)
    return {"victim": victim, "train": train, "test": test, "sub": sub, "acc": evaluate(victim, test),
            "info": info}


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _corr(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


# ---------------------------------------------------------------------------------------------------- FT

def test_layer_order_and_count():
    class Net(nn.Module):  # registration order differs from call order
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.attn = nn.MultiheadAttention(4, 1, batch_first=True)  # out_proj is used, never called
            self.bn = nn.BatchNorm1d(4)
            self.first = nn.Linear(3, 4)

        def forward(self, x):
            h = torch.relu(self.bn(self.first(x))).unsqueeze(1)
            return self.fc(self.attn(h, h, h, need_weights=False)[0].squeeze(1))

    net = Net().train()
    names = [n for n, _ in layers_in_forward_order(net, torch.randn(2, 3))]
    assert names == ["first", "bn", "attn", "attn.out_proj", "fc"]
    assert net.training and int(net.bn.num_batches_tracked) == 0  # the probe pass changed nothing
    assert [num_tuned_layers(r, 13) for r in (0.01, 0.5, 0.8, 1.0)] == [1, 7, 10, 13]


def test_ft_freezes_first_half_bit_identically(task):
    victim = task["victim"]
    attack = create_attack("ft", ratio=0.5, iterations=15, lr=0.05, **FAST)
    surrogate = attack(victim, task["sub"], seed=0, eval_set=task["test"])  # checkpoints re-enter train mode
    # vgg_small: 6 conv + 6 BN + 1 linear = 13 layers, the last round(6.5) = 7 are tuned
    assert attack.frozen_layers == ["blocks.0.0", "blocks.0.1", "blocks.0.3", "blocks.0.4", "blocks.1.0",
                                    "blocks.1.1"]
    assert len(attack.tuned_layers) == 7 and attack.tuned_layers[-1] == "classifier.3"
    vmods, smods = dict(victim.named_modules()), dict(surrogate.named_modules())
    for name in attack.frozen_layers:  # parameters AND BatchNorm buffers identical
        vs, ss = vmods[name].state_dict(), smods[name].state_dict()
        assert all(torch.equal(vs[k], ss[k]) for k in vs), name
    for name in attack.tuned_layers:
        vs, ss = vmods[name].state_dict(), smods[name].state_dict()
        assert any(not torch.equal(vs[k], ss[k]) for k in vs), name
    assert all(p.requires_grad for p in surrogate.parameters())
    assert not surrogate.training


# ---------------------------------------------------------------------------------------------------- WP

@pytest.mark.parametrize("ratio", [0.5, 0.8])
def test_wp_exact_sparsity_and_plain_model(task, ratio):
    victim = task["victim"]
    seen = []
    attack = create_attack("wp", ratio=ratio, iterations=12, lr=0.05, **FAST)
    def on_event(event, **kw):
        if event == "checkpoint":
            seen.append((kw["t"], _state(kw["model"])))

    surrogate = attack(victim, task["sub"], seed=0, callbacks=[on_event])
    pairs = list(zip(prunable_weights(victim), prunable_weights(surrogate)))
    total = sum(m.weight.numel() for (m, _), _ in pairs)
    zeros = sum(int((s.weight == 0).sum()) for _, (s, _) in pairs)
    assert abs(zeros - ratio * total) <= 1 and attack.pruned["pruned"] == round(ratio * total)
    # plain model: same state-dict keys as the victim, no pruning hooks, deep-copyable
    assert list(surrogate.state_dict()) == list(victim.state_dict())
    assert not any(m._forward_pre_hooks for m in surrogate.modules())
    copy.deepcopy(surrogate)
    # the pruned entries are the smallest-magnitude victim weights (global threshold), the others moved
    v_all = torch.cat([v.weight.detach().flatten() for (v, _), _ in pairs])
    s_all = torch.cat([s.weight.detach().flatten() for _, (s, _) in pairs])
    kept = s_all != 0
    assert v_all[~kept].abs().max() <= v_all[kept].abs().min()
    assert not torch.equal(s_all[kept], v_all[kept])
    # checkpoints handed to callbacks are plain and already sparse
    assert [t for t, _ in seen] == [0, 10, 12]
    assert all(list(st) == list(victim.state_dict()) for _, st in seen)
    first = seen[0][1]
    assert sum(int((first[f"{n}.weight"] == 0).sum()) for n, m in victim.named_modules()
               if any(m is v for (v, _), _ in pairs)) == round(ratio * total)


def test_wp_weight_used_without_calling_its_module():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 4, 4)

        def forward(self, x):
            return self.conv(x).flatten(2).transpose(1, 2)

    class Attention(nn.Module):  # as in torchvision's ViT: attn.out_proj.weight is read, out_proj never called
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, z):
            return self.attn(z, z, z, need_weights=False)[0]

    torch.manual_seed(0)
    model = SplitModel([Tokens(), Attention()], nn.Sequential(nn.Flatten(), nn.Linear(32, 3)), in_chans=1)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
    attack = create_attack("wp", ratio=0.6, iterations=4, batch_size=16)
    surrogate = attack(model, data, seed=0)
    weights = [m.weight for m, _ in prunable_weights(surrogate)]
    assert any(w is surrogate.blocks[1].attn.out_proj.weight for w in weights)
    total = sum(w.numel() for w in weights)
    assert abs(sum(int((w == 0).sum()) for w in weights) - 0.6 * total) <= 1


# ---------------------------------------------------------------------------------------------------- Distill

def test_distill_loss_finite_and_accuracy_kept(task):
    victim = task["victim"]
    attack = create_attack("distill", iterations=15, kd_weight=0.5, **FAST)
    surrogate = attack(victim, task["sub"], seed=0)
    assert {"ce", "feat", "kd", "loss"} <= set(attack.trace[-1])
    assert all(np.isfinite(r["loss"]) and r["feat"] >= 0 for r in attack.trace)
    assert evaluate(surrogate, task["test"]) >= task["acc"] - 0.05
    all_layers = create_attack("distill", iterations=3, all_layers=True, **FAST)
    all_layers(victim, task["sub"], seed=0)
    assert np.isfinite(all_layers.trace[-1]["feat"])
    with pytest.raises(RemovalNetError, match="split layer 7"):
        create_attack("distill", layer=7, iterations=1)(victim, task["sub"], seed=0)
    with pytest.raises(RemovalNetError, match="'layer'"):
        create_attack("distill", layer=2, all_layers=True)


# ---------------------------------------------------------------------------------------------------- Knockoff

def test_knockoff_fresh_model_and_learning_curve(task):
    victim = task["victim"]
    start = {}
    attack = create_attack("knockoff", iterations=20, eval_every=5, checkpoint_every=10, batch_size=32, lr=0.05)
    surrogate = attack(victim, task["sub"], seed=0, eval_set=task["test"],  # victim initialised with seed 0 too
                       callbacks=[lambda ev, **kw: ev == "checkpoint" and kw["t"] == 0
                                  and start.update(_state(kw["model"]))])
    vstate = victim.state_dict()
    assert weights_hash(start) != weights_hash(victim)
    conv = "blocks.0.0.weight"
    assert abs(_corr(start[conv], vstate[conv])) < 0.5
    assert torch.equal(start["normalize.mean"], vstate["normalize.mean"])
    curve = attack.history
    assert [p["t"] for p in curve] == [0, 5, 10, 15, 20]
    assert [p["queries"] for p in curve] == [32 * p["t"] for p in curve]
    assert all(b["time_s"] >= a["time_s"] for a, b in zip(curve, curve[1:]))
    assert all(0 <= p["fidelity"] <= 1 and 0 <= p["accuracy"] <= 1 for p in curve)
    assert curve[-1]["fidelity"] > curve[0]["fidelity"]
    assert weights_hash(surrogate) != weights_hash(victim)


@pytest.mark.parametrize("policy", ["random", "adaptive"])
def test_knockoff_budget_and_policies(task, policy):
    attack = create_attack("knockoff", policy=policy, budget=150, iterations=50, batch_size=32, target="hard")
    attack(task["victim"], task["sub"], seed=1)
    queries = [r["queries"] for r in attack.trace]
    assert queries == [32, 64, 96, 128, 150]  # stops at the budget, last batch cut
    assert attack.history[-1]["queries"] == 150 and attack.history[-1]["accuracy"] is None
    if policy == "adaptive":
        probs = attack.bandit.probs
        assert abs(float(probs.sum()) - 1) < 1e-9 and not torch.allclose(probs, torch.full_like(probs, 0.1))


# ---------------------------------------------------------------------------------------------------- common

@pytest.mark.parametrize("name,params", [
    ("ft", {"ratio": 0.8}), ("wp", {"ratio": 0.5}), ("distill", {}),
    ("knockoff", {"policy": "adaptive", "reward": "all"}),
])
def test_seeded_determinism_and_victim_untouched(task, name, params):
    victim = task["victim"]
    before, mode = weights_hash(victim), victim.training
    hashes = []
    for seed in (3, 3, 4):
        attack = create_attack(name, iterations=6, **FAST, **params)
        hashes.append(weights_hash(attack(victim, task["sub"], seed=seed)))
    assert hashes[0] == hashes[1] != hashes[2]
    assert weights_hash(victim) == before and victim.training == mode


@pytest.mark.parametrize("name,params,bad", [
    ("ft", {"ratio": 0.0}, "ratio"), ("ft", {"ratio": 1.5}, "ratio"), ("ft", {"ratio": -0.2}, "ratio"),
    ("wp", {"ratio": 1.0}, "ratio"), ("wp", {"iterations": -1}, "iterations"),
    ("distill", {"feat_weight": -1.0}, "feat_weight"), ("knockoff", {"policy": "greedy"}, "policy"),
    ("knockoff", {"budget": 0}, "budget"), ("knockoff", {"target": "probs"}, "target"),
    ("ft", {"ratios": 0.5}, "ratios"),
])
def test_bad_parameters(name, params, bad):
    with pytest.raises(RemovalNetError, match=f"'{bad}'"):
        create_attack(name, **params)


# ---------------------------------------------------------------------------------------------------- independent

def test_independent_models_jitter_and_seeds(task):
    cfg = dict(task["victim"].build_config, mean=list(task["info"].mean), std=list(task["info"].std))
    base = TrainConfig(iterations=20, batch_size=64, lr=0.05)
    m1, i1 = train_independent(cfg, task["train"], task["test"], seed=2000, base_config=base, jitter=0.1)
    m2, i2 = train_independent(cfg, task["train"], None, seed=2000, base_config=base, jitter=0.1)
    m3, i3 = train_independent(cfg, task["train"], None, seed=2001, base_config=base, jitter=0.1)
    f_lr, f_it = np.random.default_rng(2000).uniform(0.9, 1.1, size=2)
    assert i1["lr"] == pytest.approx(0.05 * f_lr) and i1["iterations"] == round(20 * f_it)
    assert i1["history"]["iterations"] == i1["iterations"] == i1["config"]["iterations"]
    assert weights_hash(m1) == weights_hash(m2) == i1["weights_hash"] != weights_hash(m3)
    assert (i1["lr"], i1["iterations"]) != (i3["lr"], i3["iterations"])
    assert 0.045 <= i3["lr"] <= 0.055 and 18 <= i3["iterations"] <= 22
    assert torch.equal(m1.normalize.std, task["victim"].normalize.std)
    assert abs(_corr(m1.state_dict()["blocks.0.0.weight"], task["victim"].state_dict()["blocks.0.0.weight"])) < 0.5
    _, i0 = train_independent(task["victim"], task["train"], None, seed=1000, base_config=base, jitter=0.0)
    assert (i0["iterations"], i0["lr"]) == (20, 0.05)
    with pytest.raises(RemovalNetError, match="jitter"):
        train_independent(cfg, task["train"], None, seed=1, base_config=base, jitter=1.0)
    with pytest.raises(RemovalNetError, match="unknown key"):
        build_from_config({"arch": "vgg_small", "depth": 3})


def test_independent_seed_ranges_are_disjoint():
    ref, neg = independent_seeds("reference", 10), independent_seeds("negative", 10)
    assert ref == list(range(1000, 1010)) and neg == list(range(2000, 2010))
    assert independent_seeds("negative", 2, start=998) == [2998, 2999]
    with pytest.raises(RemovalNetError, match="start \\+ count"):
        independent_seeds("reference", 1001)
    with pytest.raises(RemovalNetError, match="role"):
        independent_seeds("victim", 1)


def test_fresh_like_without_build_config(task):
    model = copy.deepcopy(task["victim"])
    del model.build_config
    torch.manual_seed(5)
    fresh = fresh_like(model)
    assert list(fresh.state_dict()) == list(model.state_dict())
    assert torch.equal(fresh.normalize.mean, model.normalize.mean)
    assert abs(_corr(fresh.state_dict()["blocks.0.0.weight"], model.state_dict()["blocks.0.0.weight"])) < 0.5
    bn = fresh.blocks[0][1]                                           # BatchNorm statistics reset
    torch.testing.assert_close(bn.running_var, torch.ones_like(bn.running_var))
    torch.testing.assert_close(bn.running_mean, torch.zeros_like(bn.running_mean))
