"""A user's own model: references, automatic split points, the user's own state dict, bad input."""
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from removalnet.checkpoint import build_model, load_weights, save_checkpoint
from removalnet.models import NotSplittableError, SplitModel, create_model, describe_split, resolve_model
from removalnet.utils import RemovalNetError

from helpers import LENET, Payload as _Payload, user_lenet as _user_lenet

@pytest.fixture
def lenet_file(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(LENET)
    return path


def _assert_split_consistent(m: SplitModel, x: torch.Tensor) -> None:
    m.eval()
    with torch.no_grad():
        y = m(x)
        for l in range(1, m.num_blocks + 1):
            torch.testing.assert_close(m.tail(m.head(x, l), l), y, rtol=1e-5, atol=1e-5)


def test_user_file_state_dict_loads_with_the_users_keys(lenet_file, tmp_path):
    user = _user_lenet(lenet_file)
    torch.save(user.state_dict(), tmp_path / "model.pt")
    m = build_model(f"{lenet_file}:LeNet", 10, 1, 28, weights=tmp_path / "model.pt").eval()
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(m(x), user(x))
    _assert_split_consistent(m, x)
    # automatic split points: after each pooling (the fx trace's downsampling points)
    assert [n for n, _ in describe_split(m, 28)] == ["max_pool2d", "max_pool2d_1"]
    assert [s for _, s in describe_split(m, 28)] == [(6, 14, 14), (16, 5, 5)]
    # the split model gives the weights back under the user's names
    back = m.source_state_dict()
    assert set(back) == set(user.state_dict())
    for k, v in user.state_dict().items():
        assert torch.equal(back[k], v)
    # nn.Module.load_state_dict takes the user's names too
    other = _user_lenet(lenet_file, seed=3)
    m.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m(x), other(x))


def test_weights_formats(lenet_file, tmp_path):
    user = _user_lenet(lenet_file)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = user(x)
    torch.save({"state_dict": {f"module.{k}": v for k, v in user.state_dict().items()}, "epoch": 3},
               tmp_path / "wrapped.pth")
    save_file(user.state_dict(), str(tmp_path / "plain.safetensors"))
    for f in ("wrapped.pth", "plain.safetensors"):
        m = build_model(f"{lenet_file}:LeNet", 10, 1, 28, weights=tmp_path / f).eval()
        with torch.no_grad():
            torch.testing.assert_close(m(x), want)
    # the project's own checkpoint of that model: rebuilt from its sidecar alone
    from removalnet.checkpoint import load_checkpoint
    save_checkpoint(tmp_path / "ck.safetensors", m, {"dataset": "digits"})
    again, meta = load_checkpoint(tmp_path / "ck.safetensors")
    assert meta["arch"] == f"{lenet_file.resolve()}:LeNet"
    with torch.no_grad():
        torch.testing.assert_close(again(x), want)
    m2 = build_model(f"{lenet_file}:LeNet", 10, 1, 28, weights=tmp_path / "ck.safetensors").eval()
    with torch.no_grad():
        torch.testing.assert_close(m2(x), want)


def test_factory_without_num_classes_and_output_check(lenet_file):
    m = resolve_model(f"{lenet_file}:lenet_fixed", 10, 1, 28)
    assert m.num_blocks == 2
    with pytest.raises(RemovalNetError, match=r"returns \(2, 10\).*expected logits of shape \(2, 7\)"):
        resolve_model(f"{lenet_file}:lenet_fixed", 7, 1, 28)


def test_reference_errors(lenet_file, tmp_path):
    with pytest.raises(RemovalNetError, match="does not exist"):
        resolve_model(f"{tmp_path / 'nope.py'}:LeNet", 10, 1, 28)
    with pytest.raises(RemovalNetError, match="no attribute 'LeNett'.*defines.*LeNet"):
        resolve_model(f"{lenet_file}:LeNett", 10, 1, 28)
    with pytest.raises(RemovalNetError, match=r"factory .*:broken.* raised ValueError .*broken\(num_classes=10\): "
                                              "no GPU here"):
        resolve_model(f"{lenet_file}:broken", 10, 1, 28)
    with pytest.raises(RemovalNetError, match=r"cannot import 'no_such_package_xyz.models' \(No module"):
        resolve_model("no_such_package_xyz.models:net", 10, 1, 28)
    with pytest.raises(RemovalNetError, match="fails on a 3x28x28 input"):
        resolve_model(f"{lenet_file}:LeNet", 10, 3, 28)


def test_missing_and_extra_keys_named(lenet_file, tmp_path):
    state = _user_lenet(lenet_file).state_dict()
    state.pop("fc3.bias")
    state.pop("conv1.weight")
    state["head.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(RemovalNetError) as e:
        build_model(f"{lenet_file}:LeNet", 10, 1, 28, weights=tmp_path / "bad.pt")
    msg = str(e.value)
    assert "missing 2 tensor(s), e.g. 'conv1.weight', 'fc3.bias'" in msg
    assert "1 unexpected tensor(s), e.g. 'head.weight'" in msg
    torch.save(_user_lenet(lenet_file).state_dict(), tmp_path / "ten.pt")     # 10 classes, the data has 4
    with pytest.raises(RemovalNetError, match=r"tensor 'fc3.weight' has shape \(10, 84\), the model expects \(4, 84\)"):
        build_model(f"{lenet_file}:LeNet", 4, 1, 28, weights=tmp_path / "ten.pt")


def test_malicious_pickle_refused(lenet_file, tmp_path):
    target = tmp_path / "pwned.txt"
    torch.save({"conv1.weight": _Payload(target)}, tmp_path / "evil.pt")
    # the payload is real: unpickling it without weights_only creates the file
    with open(tmp_path / "evil2.pkl", "wb") as f:
        pickle.dump(_Payload(tmp_path / "control.txt"), f)
    with open(tmp_path / "evil2.pkl", "rb") as f:
        pickle.load(f)
    assert (tmp_path / "control.txt").exists()
    with pytest.raises(RemovalNetError, match="refusing to load"):
        build_model(f"{lenet_file}:LeNet", 10, 1, 28, weights=tmp_path / "evil.pt")
    assert not target.exists()


def test_torchvision_resnet18_state_dict(tmp_path):
    from torchvision.models import resnet18
    torch.manual_seed(0)
    tv = resnet18(num_classes=10).eval()
    torch.save(tv.state_dict(), tmp_path / "r18.pt")
    m = build_model("torchvision:resnet18", 10, 3, 32, weights=tmp_path / "r18.pt").eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(m(x), tv(x))
    _assert_split_consistent(m, x)
    assert m.split_points == ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert m.default_layer == 3


def test_timm_tiny_models():
    timm = pytest.importorskip("timm")
    for name, points in (("test_resnet", ["act1", "layer1", "layer2", "layer3", "layer4"]),
                         ("test_vit", [f"blocks.{i}" for i in range(6)])):
        torch.manual_seed(0)
        m = resolve_model(f"timm:{name}", 10, 3, 32 if name == "test_resnet" else 160).eval()
        assert m.split_points == points
        size = 32 if name == "test_resnet" else 160
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        _assert_split_consistent(m, x)
        # same function as timm's own module with the same weights
        ref = timm.create_model(name, num_classes=10).eval()
        ref.load_state_dict(m.source_state_dict())
        with torch.no_grad():
            torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)


def test_split_after_override_and_errors(lenet_file):
    m = resolve_model(f"{lenet_file}:LeNet", 10, 1, 28, split_after=["conv1", "conv2", "fc1"])
    assert m.num_blocks == 3 and m.build_config["kwargs"] == {"split_after": ["conv1", "conv2", "fc1"]}
    _assert_split_consistent(m, torch.rand(2, 1, 28, 28))
    m = resolve_model(f"{lenet_file}:LeNet", 10, 1, 28, split_after=["relu", "max_pool2d_1"])   # fx node names
    assert [s for _, s in describe_split(m, 28)] == [(6, 28, 28), (16, 5, 5)]
    with pytest.raises(RemovalNetError, match="no submodule or fx node of that name"):
        resolve_model(f"{lenet_file}:LeNet", 10, 1, 28, split_after=["pool9"])
    with pytest.raises(RemovalNetError, match="fixed blocks"):
        resolve_model("vgg_small", 10, 1, 28, split_after=["x"])
    # create_model delegates references (so checkpoints and fresh models rebuild them)
    c = create_model(f"{lenet_file}:LeNet", 10, 1, 28, split_after=["conv1", "conv2"])
    assert c.num_blocks == 2


def test_unsplittable_model_is_a_plain_classifier(lenet_file):
    from removalnet.verify import create_verifier
    from torch.utils.data import TensorDataset

    m = resolve_model(f"{lenet_file}:Dynamic", 10, 1, 28).eval()
    assert m.unsplit_reason and "torch.fx could not trace" in m.unsplit_reason
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert m(x).shape == (6, 10)
    with pytest.raises(NotSplittableError, match="no split layers .*white-box"):
        m.head(x, 1)
    data = TensorDataset(x, torch.arange(6) % 10)
    with pytest.raises(NotSplittableError, match="white-box"):
        create_verifier("deepjudge", num_seeds=2, max_iters=1, max_tests=2).extract(m, data, seed=0)
    fp = create_verifier("modeldiff", num_pairs=2, iterations=5).extract(m, data, seed=0)   # black-box works
    assert fp is not None
    from removalnet.attacks import create_attack
    with pytest.raises(NotSplittableError, match="white-box"):     # RemovalNet needs head/tail: says so
        create_attack("removalnet").validate_inputs(m, data)
    create_attack("ft").validate_inputs(m, data)                    # fine-tuning does not


def test_load_weights_into_registered_model(tmp_path):
    m = create_model("vgg_small", 10, 1, 28, width=4)
    torch.save(m.state_dict(), tmp_path / "v.pt")
    m2 = load_weights(create_model("vgg_small", 10, 1, 28, width=4), tmp_path / "v.pt")
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(RemovalNetError, match="does not exist"):
        load_weights(m, tmp_path / "none.pt")


def test_user_module_with_nn_sequential_and_unused_parameter(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
            self.unused = nn.Linear(3, 3)          # in the state dict, never called
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    from removalnet.models import auto_split
    torch.manual_seed(0)
    net = Net().eval()
    m = auto_split(net, in_chans=3, input_size=16).eval()
    assert [s for _, s in describe_split(m, 16)] == [(8, 8, 8), (16, 4, 4)]
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), net(x))
    _assert_split_consistent(m, x)
    torch.manual_seed(1)
    other = Net().eval()
    m.load_state_dict(other.state_dict())        # 'unused.*' accepted and ignored
    with torch.no_grad():
        torch.testing.assert_close(m(x), other(x))
