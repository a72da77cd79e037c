"""RemovalNet: ILBS (Alg. 2), feature shuffling and the latent reverse (Alg. 1), the attack, the CLI."""
import copy
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from removalnet import create_model, weights_hash
from removalnet.attacks import create_attack
from removalnet.attacks import removalnet as rn
from removalnet.attacks.removalnet import (FoldedTail, feature_loss, feature_shuffle, ilbs, reverse_latent,
                                          shuffle_count, shuffle_index)
from removalnet.checkpoint import load_checkpoint, save_checkpoint
from removalnet.cli import main
from removalnet.utils import RemovalNetError


# ---------------------------------------------------------------------------------------------- ILBS (Alg. 2)

def _ilbs_loop(logits, grid):
    """Algorithm 2 with explicit loops, keeping the SMALLEST lambda that keeps the class."""
    out, lams, partners = [], [], []
    for i in range(len(logits)):
        dmax, j = 0.0, i
        for k in range(len(logits)):
            d = float(torch.linalg.vector_norm(logits[i] - logits[k]))
            if dmax < d:
                dmax, j = d, k
        z, lam_i = logits[i].clone(), 1.0
        for lam in sorted(grid, reverse=True):          # overwrite while the class is kept: ends at the smallest
            cand = lam * logits[i] + (1 - lam) * logits[j]
            if int(cand.argmax()) == int(logits[i].argmax()):
                z, lam_i = cand, lam
        out.append(z)
        lams.append(lam_i)
        partners.append(j)
    return torch.stack(out), torch.tensor(lams), torch.tensor(partners)


def test_ilbs_hand_made_partners_and_smallest_lambda():
    a, b, c = [2.0, 0.0, 0.0], [0.0, 1.5, 0.0], [0.0, 0.0, 4.0]
    logits = torch.tensor([a, b, c])
    z2, lam, partners = ilbs(logits)
    # distances: |a-b| = 2.5, |a-c| = 4.47, |b-c| = 4.27 -> partners a->c, b->c, c->a
    assert partners.tolist() == [2, 2, 0]
    # a: [2l, 0, 4-4l] keeps class 0 iff l > 2/3 -> 0.7; b: 1.5l > 4-4l iff l > 0.727 -> 0.8;
    # c: 4l > 2-2l iff l > 1/3 -> 0.4
    assert lam.tolist() == pytest.approx([0.7, 0.8, 0.4])
    expected = torch.tensor([[1.4, 0.0, 1.2], [0.0, 1.2, 0.8], [1.2, 0.0, 1.6]])
    assert torch.allclose(z2, expected, atol=1e-6)
    assert torch.equal(z2.argmax(1), logits.argmax(1))                   # class kept
    # one grid step below the chosen lambda flips the class (it is the smallest that keeps it)
    below = (lam - 0.1)[:, None] * logits + (1.1 - lam)[:, None] * logits[partners]
    assert not torch.equal(below.argmax(1), logits.argmax(1)) and (below.argmax(1) != logits.argmax(1)).all()


def test_ilbs_fallback_identical_rows_and_loop_reference():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.5, 0.0], [0.0, 0.0, 4.0]])
    z2, lam, _ = ilbs(logits, [0.1, 0.5])                 # a needs > 2/3, b > 0.727: no grid value keeps them
    assert torch.equal(z2[0], logits[0]) and torch.equal(z2[1], logits[1]) and lam[:2].tolist() == [1.0, 1.0]
    assert lam[2].item() == pytest.approx(0.5) and torch.allclose(z2[2], torch.tensor([1.0, 0.0, 2.0]))
    same = torch.ones(4, 5)
    z2, lam, partners = ilbs(same)
    assert partners.tolist() == [0, 1, 2, 3] and torch.allclose(z2, same, rtol=0, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(64, 10, generator=g) * 3
    grid = rn.DEFAULT_LAMBDA_GRID
    for got, want in zip(ilbs(rand, grid), _ilbs_loop(rand, grid)):
        assert torch.allclose(got.float(), want.float(), atol=1e-5)
    assert (ilbs(rand)[1] < 1.0).float().mean() > 0.5    # most targets are actually moved


# ---------------------------------------------------------------------------------------------- shuffling

def test_shuffle_count():
    assert [shuffle_count(c, r) for c, r in [(64, 0.1), (10, 0.1), (20, 0.1), (30, 0.1), (7, 0.3), (5, 0.0),
                                             (8, 1.0)]] == [7, 1, 2, 3, 3, 0, 8]


@pytest.mark.parametrize("channels,ratio", [(20, 0.1), (64, 0.1), (30, 0.25), (6, 1.0)])
def test_feature_shuffle_permutes_exactly_k_channels_per_sample(channels, ratio):
    b, k = 5, shuffle_count(channels, ratio)
    spatial = torch.arange(9.0).view(1, 1, 3, 3) / 100
    z = (1000 * torch.arange(b).view(b, 1, 1, 1) + torch.arange(channels).view(1, channels, 1, 1) + spatial)
    out = feature_shuffle(z, ratio, generator=torch.Generator().manual_seed(1))
    src = (out[:, :, 0, 0] - 1000 * torch.arange(b).view(b, 1)).round().long()  # which input channel it holds
    for i in range(b):
        assert sorted(src[i].tolist()) == list(range(channels))     # a permutation of this sample's channels
        moved = src[i] != torch.arange(channels)
        assert int(moved.sum()) == k                                  # exactly ceil(C x ratio) move
        assert torch.equal(out[i, ~moved], z[i, ~moved])              # the rest untouched
        assert torch.equal(out[i], z[i, src[i]])                      # whole feature maps move
    assert not torch.equal(src[0], src[1])                           # per-sample permutations


def test_shuffle_index_seeded():
    a = shuffle_index(4, 16, 0.25, generator=torch.Generator().manual_seed(3))
    b = shuffle_index(4, 16, 0.25, generator=torch.Generator().manual_seed(3))
    c = shuffle_index(4, 16, 0.25, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(shuffle_index(2, 10, 0.1), torch.arange(10).repeat(2, 1))    # k = 1 cannot move


# ---------------------------------------------------------------------------------------------- latent reverse (Alg. 1)

def _group_tail(channels=20, classes=4):
    """F^{l+} by hand: logit k = mean activation of channel group k (channels // classes channels each)."""
    lin = nn.Linear(channels, classes, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        per = channels // classes
        for k in range(classes):
            lin.weight[k, k * per:(k + 1) * per] = 1.0 / per
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin)


def _group_latent(n=32, channels=20, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    z = torch.rand(n, channels, 4, 4, generator=g) * 0.4
    per = channels // classes
    for i in range(n):
        z[i, y[i] * per:(y[i] + 1) * per] += 2.0
    return z, y


def test_reverse_latent_moves_away_and_keeps_the_class():
    tail = _group_tail()
    anchor, y = _group_latent()
    assert torch.equal(tail(anchor).argmax(1), y)
    z1, info = reverse_latent(tail, anchor, y, steps=10, shuffle_ratio=0.0, generator=torch.Generator().manual_seed(0))
    d = torch.stack(info["dist"])
    assert len(d) == 11 and torch.all(d[1:] > d[:-1])                       # every step moves z1 further away
    assert d[0] < 0.01 * 1.5 * math.sqrt(anchor[0].numel())                 # a small N(0, 0.01^2) start
    assert torch.equal(tail(z1).argmax(1), y) and info["agreement"] == pytest.approx(1.0)
    # signed steps: without an offset every element moves by exactly +-0.01 per step
    z0, _ = reverse_latent(tail, anchor, y, steps=3, shuffle_ratio=0.0, init_offset="none")
    steps = (z0 - anchor) / 0.01
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 3 + 1e-3
    assert set(steps.round().abs().unique().tolist()) <= {1.0, 3.0}
    # feature shuffling (paper ratio 0.1: 2 of 20 channels): the distance grows further, the class is kept
    g = torch.Generator().manual_seed(0)
    z1f, info_f = reverse_latent(tail, anchor, y, steps=10, shuffle_mode="fixed", generator=g)
    assert info_f["dist"][-1] > info["dist"][-1] and (tail(z1f).argmax(1) == y).float().mean() >= 0.9
    assert all(b > a for a, b in zip(info_f["dist"], info_f["dist"][1:]))
    _, info_p = reverse_latent(tail, anchor, y, steps=10, generator=torch.Generator().manual_seed(0))
    assert info_p["dist"][-1] > info_f["dist"][-1]                           # a fresh permutation every step
    for p in tail.parameters():                                              # only d L_re / d z1 was computed
        assert p.grad is None


def _reverse_latent_autograd(tail, anchor, y, *, steps, step_size, sign, log_weight, shuffle_ratio, generator):
    """Algorithm 1 written directly: L_re by autograd, out-of-place shuffling, normal(0, 0.01) start."""
    z1 = anchor + 0.01 * torch.randn(anchor.shape, generator=generator)
    for _ in range(steps):
        z1 = feature_shuffle(z1, shuffle_ratio, generator=generator).detach().requires_grad_(True)
        dist = (z1 - anchor).flatten(1).norm(dim=1)
        loss = (F.cross_entropy(tail(z1), y, reduction="none") - log_weight * torch.log(dist)).mean()
        (g,) = torch.autograd.grad(loss, z1)
        z1 = (z1 - step_size * (g.sign() if sign else g)).detach()
    return z1


@pytest.mark.parametrize("sign,log_weight", [(True, 1.0), (False, 1.0), (True, 0.1), (False, 0.0)])
def test_reverse_latent_matches_direct_autograd(sign, log_weight):
    tail = _group_tail()
    anchor, y = _group_latent()
    kw = dict(steps=6, step_size=0.01 if sign else 0.05, sign=sign, log_weight=log_weight, shuffle_ratio=0.1)
    want = _reverse_latent_autograd(tail, anchor, y, generator=torch.Generator().manual_seed(5), **kw)
    got, _ = reverse_latent(tail, anchor, y, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.allclose(got, want, atol=1e-5)


def test_reverse_latent_zero_offset_is_finite_and_modes():
    tail = _group_tail()
    anchor, y = _group_latent()
    z1, info = reverse_latent(tail, anchor, y, steps=5, shuffle_ratio=0.0, init_offset="none")
    assert info["dist"][0] == pytest.approx(0.0, abs=1e-12) and torch.isfinite(z1).all() and info["dist"][-1] > 0      # no log(0) = -inf
    g = torch.Generator().manual_seed(0)
    _, fixed = reverse_latent(tail, anchor, y, steps=4, shuffle_ratio=0.25, shuffle_mode="fixed",
                              init_offset="none", generator=g)
    assert all(torch.isfinite(v) for v in fixed["dist"])
    with pytest.raises(ValueError):
        reverse_latent(tail, anchor, y, shuffle_mode="sometimes")


def test_feature_loss_values():
    a, b = torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    b[0, 0, 0, 0], b[1] = 3.0, 1.0                       # per-sample norms 3 and sqrt(12)
    assert feature_loss(a, b, "l2").item() == pytest.approx((3 + math.sqrt(12)) / 2)
    assert feature_loss(a, b, "mse").item() == pytest.approx((9 + 12) / 24)


def test_folded_tail_equals_tail():
    for arch in ("vgg_small", "resnet_small"):
        torch.manual_seed(0)
        m = create_model(arch, 10, 1, 28, width=4).train()
        with torch.no_grad():
            m(torch.rand(32, 1, 28, 28))                 # non-trivial BatchNorm statistics
        m.eval()
        layer = m.default_layer
        folded = FoldedTail.build(m, layer)
        assert folded is not None and len(folded.pairs) >= 2
        z = m.head(torch.rand(8, 1, 28, 28), layer).detach().requires_grad_(True)
        ref = m.tail(z, layer)
        (g_ref,) = torch.autograd.grad(ref.square().sum(), z)
        out = folded(z)
        (g_out,) = torch.autograd.grad(out.square().sum(), z)
        assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(g_out, g_ref, atol=1e-5)
        with torch.no_grad():                             # weights change: refresh folds the new ones
            for p in m.parameters():
                p.mul_(1.1)
        folded.refresh()
        assert torch.allclose(folded(z), m.tail(z, layer), atol=1e-5)


# ---------------------------------------------------------------------------------------------- the attack

@pytest.fixture(scope="module")
def trained():
    """A tiny victim trained briefly on digits, and the digits splits."""
    from removalnet.data import load_dataset
    from removalnet.train import TrainConfig, evaluate, train_model
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    torch.manual_seed(0)
    victim = create_model("vgg_small", 10, 1, 28, width=4)
    train_model(victim, train, None, TrainConfig(iterations=40, batch_size=64, lr=0.05), seed=0, progress=False)
    victim.eval()
    assert evaluate(victim, test) > 0.5
    return victim, train, test


def _sub(train, n=96):
    return torch.utils.data.Subset(train, list(range(n)))


def test_removalnet_terms_finite_eq15_and_victim_unchanged(trained):
    victim, train, test = trained
    victim.train()                                        # must come back in train mode too
    h = weights_hash(victim)
    a = create_attack("removalnet", iterations=4, batch_size=32, checkpoint_every=2)
    s = a(victim, _sub(train), seed=0, eval_set=test)
    victim.eval()
    assert weights_hash(victim) == h and weights_hash(s) != h and not s.training
    keys = {"loss", "ce", "kl", "feat", "latent_dist", "z1_dist0", "z1_dist", "z1_ce", "z1_agreement",
            "lambda_mean", "agreement", "lr"}
    for r in a.trace:
        assert keys <= set(r) and all(math.isfinite(r[k]) for k in keys)
        assert r["loss"] == pytest.approx(0.2 * r["ce"] + 0.8 * r["kl"] + 2.0 * r["feat"], rel=1e-5)
        assert r["kl"] >= 0 and 0.1 - 1e-6 <= r["lambda_mean"] <= 1.0
        assert r["z1_dist"] > r["z1_dist0"] > 0
    assert [h_["t"] for h_ in a.history] == [0, 2, 4]
    assert all(0 <= h_["accuracy"] <= 1 for h_ in a.history)
    x = torch.stack([train[i][0] for i in range(32)])
    with torch.no_grad():
        moved = (s.head(x, 2) - victim.head(x, 2)).flatten(1).norm(dim=1).mean()
    assert moved > 0.1                                     # the latent of the surrogate has moved


def test_removalnet_seeded_runs_bit_identical(trained):
    victim, train, _ = trained
    runs = []
    for seed in (7, 7, 8):
        a = create_attack("removalnet", iterations=3, batch_size=32)
        runs.append((weights_hash(a(victim, _sub(train), seed=seed)), a.trace))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert runs[2][0] != runs[0][0]


def test_removalnet_one_forward_per_batch_and_ablations(trained, monkeypatch):
    victim, train, _ = trained
    calls = {}

    def count(module, inp, out):
        calls[id(module)] = calls.get(id(module), 0) + 1

    handle = victim.blocks[0].register_forward_hook(count)    # deep copies (frozen victim, surrogate) keep it
    traces = {}
    try:
        for mb in (0.0, 1024.0):
            calls.clear()
            a = create_attack("removalnet", iterations=3, batch_size=32, cache_victim_mb=mb)
            a(victim, _sub(train), seed=0)
            traces[mb] = a.trace
            # per batch: the victim copy and the surrogate run their head once each (3 iterations); with the
            # cache the victim runs once over the 96 substitute samples instead
            assert sorted(calls.values()) == ([3, 3] if mb == 0 else [1, 3])
    finally:
        handle.remove()
    for r0, r1 in zip(traces[0.0], traces[1024.0]):          # same values either way
        assert r0.keys() == r1.keys() and all(r0[k] == pytest.approx(r1[k], rel=1e-4, abs=1e-5) for k in r0)

    def boom(*a, **k):
        raise AssertionError("should be skipped")

    monkeypatch.setattr(rn, "reverse_latent", boom)
    a = create_attack("removalnet", iterations=2, batch_size=32, beta=0.0)
    a(victim, _sub(train), seed=0)
    assert a.trace[-1]["feat"] is None and a.trace[-1]["z1_dist"] is None and a.trace[-1]["kl"] is not None
    monkeypatch.undo()
    monkeypatch.setattr(rn, "ilbs", boom)
    a = create_attack("removalnet", iterations=2, batch_size=32, alpha=1.0)
    a(victim, _sub(train), seed=0)
    assert a.trace[-1]["kl"] is None and a.trace[-1]["lambda_mean"] is None and a.trace[-1]["feat"] is not None
    assert a.trace[-1]["loss"] == pytest.approx(a.trace[-1]["ce"] + 2.0 * a.trace[-1]["feat"], rel=1e-5)


def test_removalnet_options_run(trained):
    victim, train, _ = trained
    for kw in ({"inner_mode": "train"}, {"inner_precision": "bfloat16"}, {"feat_loss": "mse", "layer": 1},
               {"latent_sign": False, "log_weight": 0.1, "shuffle_mode": "fixed", "init_offset": "normal",
                "init_scale": 0.01, "temperature": 4.0, "lambda_grid": [0.5, 1.0], "schedule": "constant"}):
        a = create_attack("removalnet", iterations=2, batch_size=32, **kw)
        a(victim, _sub(train), seed=0)
        assert all(math.isfinite(v) for v in (a.trace[-1]["loss"], a.trace[-1]["feat"]))


def test_removalnet_parameter_validation(trained):
    victim, train, _ = trained
    for bad, name in [({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"iterations": -1}, "iterations"),
                      ({"beta": -1.0}, "beta"), ({"layer": 0}, "layer"), ({"lambda_grid": [0.5, 1.2]}, "lambda_grid"),
                      ({"shuffle_mode": "sometimes"}, "shuffle_mode"), ({"temperature": 0.0}, "temperature"),
                      ({"latent_steps": 2.5}, "latent_steps"), ({"gamma": 1.0}, "gamma")]:
        with pytest.raises(RemovalNetError, match=f"'{name}'"):
            create_attack("removalnet", **bad)
    with pytest.raises(RemovalNetError, match="split layer 7 does not exist"):
        create_attack("removalnet", layer=7, iterations=1)(victim, _sub(train), seed=0)
    p = create_attack("removalnet").params
    assert (p["iterations"], p["batch_size"], p["lr"], p["momentum"], p["alpha"], p["beta"], p["latent_steps"],
            p["shuffle_ratio"], p["checkpoint_every"], p["weight_decay"]) == (1000, 128, 0.01, 0.9, 0.2, 2.0, 10,
                                                                              0.1, 100, 1e-4)
    assert p["lambda_grid"] == pytest.approx([0.1 * k for k in range(1, 11)]) and json.dumps(p)


# ---------------------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def victim_ckpt(trained, tmp_path_factory):
    victim = trained[0]
    path = tmp_path_factory.mktemp("victim") / "victim.safetensors"
    save_checkpoint(path, victim, {"role": "victim", "dataset": "digits"})
    return path


def test_cli_attack_end_to_end(victim_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["attack", "removalnet", "--victim", str(victim_ckpt), "--data", "digits", "--scenario", "ltd",
               "--count", "60", "--iterations", "3", "--param", "checkpoint_every=2", "--param", "batch_size=16",
               "--param", "weight_decay=1e-3", "--param", "lambda_grid=[0.5, 1.0]", "--seed", "1",
               "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    model, meta = load_checkpoint(out / "surrogate.safetensors")
    assert meta["attack"] == "removalnet" and meta["scenario"] == "ltd" and meta["seed"] == 1
    assert meta["substitute_size"] == 60 and meta["params"]["weight_decay"] == 1e-3
    assert meta["params"]["lambda_grid"] == [0.5, 1.0] and meta["params"]["iterations"] == 3
    assert 0 <= meta["test_accuracy"] <= 1 and [h["t"] for h in meta["history"]] == [0, 2, 3]
    with open(out / "trace.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["t"] for r in rows] == ["1", "2", "3"] and all(math.isfinite(float(r["loss"])) for r in rows)
    assert {"ce", "kl", "feat", "latent_dist", "z1_dist", "lambda_mean", "agreement", "lr"} <= set(rows[0])
    assert sorted(p.name for p in (out / "checkpoints").glob("*.safetensors")) == [
        "t0000.safetensors", "t0002.safetensors", "t0003.safetensors"]
    first, m0 = load_checkpoint(out / "checkpoints" / "t0000.safetensors")
    assert weights_hash(first) == weights_hash(load_checkpoint(victim_ckpt)[0]) and m0["t"] == 0
    sub = json.loads((out / "substitute.json").read_text())
    assert len(sub["indices"]) == 60 and len(set(sub["indices"])) == 60
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # no temporary leftovers


def test_cli_attack_errors_leave_nothing(victim_ckpt, tmp_path, capsys):
    base = ["attack", "removalnet", "--victim", str(victim_ckpt), "--data", "digits", "--count", "40",
            "--iterations", "3", "--param", "batch_size=16", "-q"]
    for extra, msg in [(["--param", "gamma=1"], "unknown parameter 'gamma'"),
                       (["--param", "alpha"], "KEY=VALUE"),
                       (["--param", "alpha=1.5"], "'alpha'"),
                       (["--param", "layer=9"], "split layer 9"),
                       (["--param", "lr=1e30"], "non-finite")]:     # fails mid-run: nothing half-written
        out = tmp_path / "o"
        assert main(base + extra + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.strip().count("\n") == 0
        assert not out.exists()
        assert list(tmp_path.iterdir()) == []
    out = tmp_path / "full"
    out.mkdir()
    (out / "x").write_text("keep")
    assert main(base + ["--out", str(out)]) == 2 and "already holds files" in capsys.readouterr().err
    assert (out / "x").read_text() == "keep"


# ---------------------------------------------------------------------------------------------- eq. 15, oracle

def _mlp_victim(seed=0):
    from removalnet.models import SplitModel
    torch.manual_seed(seed)
    blocks = [nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.Tanh()), nn.Sequential(nn.Linear(10, 8), nn.Tanh())]
    head = nn.Linear(8, 5)
    with torch.no_grad():
        head.weight.mul_(4.0)                          # spread logits: ILBS lambdas well below 1
    return SplitModel(blocks, head, in_chans=1, default_layer=1).eval()


def test_removalnet_update_matches_eq15_oracle():
    """Two SGD steps of the logit-level attack (beta=0) against eq. 15 written out here in float64:
    CE on the VICTIM's argmax labels (not the dataset's labels) and KL towards the ILBS target z2 of the
    victim's logits (the explicit loop above, float64), weights alpha and 1 - alpha. No dropout/BatchNorm, batch = whole
    set, so every batch is the same set of samples and the surrogate's train mode changes nothing."""
    victim = _mlp_victim()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 1, 4, 4, generator=g)
    with torch.no_grad():
        v = victim(x).double()
    y_hat = v.argmax(1)
    y = (y_hat + 1 + torch.randint(0, 4, (24,), generator=g)) % 5         # dataset labels: never y_hat
    grid = [0.1 * k for k in range(1, 11)]
    z2 = _ilbs_loop(v, grid)[0]
    assert (z2 - v).abs().amax(1).gt(0.1).sum() >= 12                      # the target really differs from F_V
    alpha, temp, lr = 0.3, 2.0, 0.5
    ref = copy.deepcopy(victim).double()
    p_t = torch.softmax(z2 / temp, 1)
    oracle = []
    for _ in range(2):
        s = ref(x.double())
        logp = s - s.logsumexp(1, keepdim=True)
        ce = -logp[torch.arange(24), y_hat].mean()
        logq = s / temp - (s / temp).logsumexp(1, keepdim=True)
        kl = (p_t * (p_t.log() - logq)).sum(1).mean()
        loss = alpha * ce + (1 - alpha) * kl
        ref.zero_grad()
        loss.backward()
        with torch.no_grad():
            for prm in ref.parameters():
                prm -= lr * prm.grad
        oracle.append((ce.item(), kl.item()))
    a = create_attack("removalnet", iterations=2, batch_size=24, lr=lr, momentum=0.0, weight_decay=0.0,
                      schedule="constant", alpha=alpha, beta=0.0, temperature=temp)
    s = a(victim, torch.utils.data.TensorDataset(x, y), seed=3)
    for row, (ce, kl) in zip(a.trace, oracle):
        assert row["ce"] == pytest.approx(ce, rel=1e-5) and row["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)
    got, want = s.state_dict(), ref.state_dict()
    for k in want:
        assert torch.allclose(got[k].double(), want[k], atol=2e-5, rtol=1e-4), k
    assert max(float((got[k].double() - victim.state_dict()[k].double()).abs().max()) for k in want) > 1e-2


def test_removalnet_full_loss_terms_match_oracle_at_first_step():
    """With both levels on (default alpha, beta), the first iteration's CE and KL (surrogate = victim) equal
    the oracle: CE on the victim's labels, KL towards the ILBS target of the explicit loop."""
    victim = _mlp_victim(seed=2)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(20, 1, 4, 4, generator=g)
    with torch.no_grad():
        v = victim(x).double()
    y_hat = v.argmax(1)
    y = (y_hat + 1) % 5
    z2 = _ilbs_loop(v, [0.1 * k for k in range(1, 11)])[0]
    logp = v - v.logsumexp(1, keepdim=True)
    ce = float(-logp[torch.arange(20), y_hat].mean())
    p_t = torch.softmax(z2, 1)
    kl = float((p_t * (p_t.log() - logp)).sum(1).mean())
    a = create_attack("removalnet", iterations=1, batch_size=20, latent_steps=2)
    a(victim, torch.utils.data.TensorDataset(x, y), seed=0)
    assert a.trace[0]["ce"] == pytest.approx(ce, rel=1e-5) and a.trace[0]["kl"] == pytest.approx(kl, rel=1e-4)
    assert a.trace[0]["feat"] > 0
