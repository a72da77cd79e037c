import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from removalnet import RemovalNetError, create_model, weights_hash
from removalnet.models import SplitModel
from removalnet.verify import Fingerprint, create_verifier
from removalnet.verify.ipguard import boundary_points, ipguard_loss, matching_rate

SMALL = dict(num_points=10, max_iter=100, batch_size=16)


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes told apart by the image's brightness level."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = (0.15 + 0.2 * y.float())[:, None, None, None] + 0.1 * torch.rand(n, 1, 28, 28, generator=g)
    return x, y


def fitted_vgg(seed: int, x: torch.Tensor, y: torch.Tensor) -> SplitModel:
    """A tiny vgg_small that classifies ``x`` confidently: BatchNorm statistics set on ``x`` and the
    last linear layer fitted by least squares to one-hot targets of height 10 (no gradient training)."""
    torch.manual_seed(seed)
    m = create_model("vgg_small", 4, 1, 28, width=8, mean=[0.5], std=[0.3])
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = None
    with torch.no_grad():
        m.train()
        m(x)
        m.eval()
        feats = m.classifier[:2](m.block_outputs(x)[-1])
        a = torch.cat([feats, torch.ones(len(x), 1)], 1)
        w = torch.linalg.lstsq(a, torch.nn.functional.one_hot(y, 4).float() * 10).solution
        m.classifier[3].weight.copy_(w[:-1].T)
        m.classifier[3].bias.copy_(w[-1])
    return m


def linear_model(seed=0, num_classes=4) -> SplitModel:
    torch.manual_seed(seed)
    return SplitModel([nn.Identity()], nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes)),
                      in_chans=1, mean=[0.5], std=[0.25]).eval()


@pytest.fixture(scope="module")
def data():
    return TensorDataset(*synthetic(24, 1))


@pytest.fixture(scope="module")
def models():
    x, y = synthetic(96, 0)
    return fitted_vgg(0, x, y), fitted_vgg(1, x, y)


def test_matching_rate_golden():
    assert matching_rate(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 0])) == pytest.approx(0.5)
    assert matching_rate(torch.tensor([4, 4, 4]), torch.tensor([4, 4, 4])) == pytest.approx(1.0)
    assert matching_rate(torch.tensor([1]), torch.tensor([2])) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(RemovalNetError):
        matching_rate(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(RemovalNetError):
        matching_rate(torch.tensor([]), torch.tensor([]))


def test_ipguard_loss_golden():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0],      # i=0, j=1: relu(3-1+0.5)=2.5; t=2: relu(2-3)=0
                      [0.0, 5.0, 1.0, 4.0],      # i=1, j=3: relu(5-4+0.5)=1.5; t=2: relu(1-5)=0
                      [1.0, 3.0, 2.0, 0.0],      # i=0, j=1: relu(1-3+0.5)=0;   t=2: relu(2-1)=1
                      [1.0, 2.0, 0.5, 0.0]])     # i=0, j=1: relu(1-2+0.5)=0;   t=2: relu(0.5-1)=0
    i = torch.tensor([0, 1, 0, 0])
    j = torch.tensor([1, 3, 1, 1])
    torch.testing.assert_close(ipguard_loss(z, i, j, 0.5), torch.tensor([2.5, 1.5, 1.0, 0.0]))
    # two classes: only the margin term
    z2 = torch.tensor([[2.0, 1.0]])
    torch.testing.assert_close(ipguard_loss(z2, torch.tensor([0]), torch.tensor([1]), 0.1), torch.tensor([1.1]))


def test_manual_adam_matches_torch_adam():
    model = linear_model()
    x0 = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    with torch.no_grad():
        i = model(x0).argmax(1)
    j = (i + 1) % 4
    k = 50.0                                   # unreachable within 3 steps: the point keeps moving
    pts, done, _ = boundary_points(model, x0, i, j, k=k, lr=0.01, max_iter=3)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        ipguard_loss(model(x), i, j, k).sum().backward()
        opt.step()
    assert not done.any()
    torch.testing.assert_close(pts, x.detach().clamp(0, 1), atol=1e-6, rtol=0)


def test_defaults_are_the_references():
    """The RemovalNet reference (defense/IPGuard): target "L" (least likely class) by default, and a point
    stops once its loss is <= 1e-4."""
    p = create_verifier("ipguard").params
    assert p["target"] == "least" and p["tol"] == pytest.approx(1e-4)
    assert p["k"] == pytest.approx(0.01) and p["lr"] == pytest.approx(0.01) and p["max_iter"] == 1000


def test_stops_one_step_after_the_loss_reaches_the_tolerance():
    """The reference's loop: loss at x, one optimiser step, THEN ``if loss <= 1e-4: break``: the point it returns
    is one step past the first iterate whose loss is <= 1e-4. Replayed with torch.optim.Adam (one state per
    point, clamped to [0, 1] after each step as here)."""
    model = linear_model(3)
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        z0 = model(x0)
    i, j = z0.argmax(1), z0.argmin(1)
    pts, done, iters = boundary_points(model, x0, i, j, k=0.01, lr=0.01, max_iter=300)
    assert done.all()
    for b in range(4):
        x = x0[b:b + 1].clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.01)
        for step in range(300):
            opt.zero_grad()
            loss = ipguard_loss(model(x), i[b:b + 1], j[b:b + 1], 0.01).sum()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            if float(loss.detach()) <= 1e-4:
                break
        assert int(iters[b]) == step + 1 > 1
        torch.testing.assert_close(pts[b:b + 1], x.detach(), atol=1e-6, rtol=0)


def test_points_lie_on_the_victim_boundary_linear():
    model = linear_model()
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(20, 1, 8, 8, generator=g)
    with torch.no_grad():
        z0 = model(x0)
    i = z0.argmax(1)
    j = (i + torch.randint(1, 4, (20,), generator=g)) % 4
    k = 0.05
    pts, done, iters = boundary_points(model, x0, i, j, k=k, lr=0.002, max_iter=1000)
    assert done.all()
    with torch.no_grad():
        z = model(pts)
    top2 = z.topk(2, dim=1)
    # just across the i/j boundary: in class j, i the runner-up (the step taken after the loss fell to 1e-4, as
    # the reference's, moves a few points a little further, past a third class)
    assert torch.equal(top2.indices[:, 0], j) and (top2.indices[:, 1] == i).float().mean() >= 0.8
    gap = top2.values[:, 0] - top2.values[:, 1]
    zi = z.gather(1, i[:, None])[:, 0]
    assert (top2.values[:, 0] - zi >= k - 1e-4).all() and (gap < k + 0.25).all()
    assert pts.min() >= 0 and pts.max() <= 1
    g0 = z0.topk(2, dim=1).values
    assert gap.median() < 0.4 * (g0[:, 0] - g0[:, 1]).median()


def test_extract_on_small_cnn_near_boundary(data, models):
    victim, _ = models
    h = weights_hash(victim)
    ip = create_verifier("ipguard", **{**SMALL, "num_points": 8}, lr=0.001)
    fp = ip.extract(victim, data, seed=0)
    t = fp.tensors
    assert fp.meta["converged"] == 8
    with torch.no_grad():
        z = victim(t["points"])
        z0 = victim(data.tensors[0][t["indices"]])
    assert torch.equal(z.argmax(1), t["target_class"]) and torch.equal(t["victim_pred"], t["target_class"])
    assert torch.equal(z0.argmax(1), t["start_class"])
    assert not torch.equal(t["start_class"], t["target_class"]) and (t["start_class"] != t["target_class"]).all()
    gap = z.topk(2, 1).values
    gap0 = z0.topk(2, 1).values
    assert ((gap[:, 0] - gap[:, 1]) >= 0.01 - 1e-5).all()
    assert (gap0[:, 0] - gap0[:, 1]).median() > 5                      # confident on the data points
    assert (gap[:, 0] - gap[:, 1]).median() < 0.1 * (gap0[:, 0] - gap0[:, 1]).median()
    assert weights_hash(victim) == h and not victim.training


def test_identity_roundtrip_determinism(data, models, tmp_path):
    victim, suspect = models
    ip = create_verifier("ipguard", **{**SMALL, "max_iter": 30})
    fp = ip.extract(victim, data, seed=4)
    fp2 = ip.extract(victim, data, seed=4)
    for k in fp.tensors:
        assert torch.equal(fp.tensors[k], fp2.tensors[k]), k
    assert ip.score(fp, victim, victim) == pytest.approx({"IPG-MR": 1.0})
    s = ip.score(fp, victim, suspect)["IPG-MR"]
    assert 0.0 <= s < 1.0
    fp.save(tmp_path / "ipg")
    assert ip.score(Fingerprint.load(tmp_path / "ipg"), victim, suspect)["IPG-MR"] == pytest.approx(s, rel=1e-12)
    least = create_verifier("ipguard", **{**SMALL, "max_iter": 1}, target="least").extract(victim, data, seed=4)
    with torch.no_grad():
        assert torch.equal(least.tensors["target_class"],
                           victim(data.tensors[0][least.tensors["indices"]]).argmin(1))


def test_params_validated():
    for bad in (dict(num_points=0), dict(k=-1.0), dict(lr=0), dict(max_iter=0), dict(target="next"),
                dict(steps=10)):
        with pytest.raises(RemovalNetError, match=next(iter(bad))):
            create_verifier("ipguard", **bad)
