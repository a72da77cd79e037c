import pytest
import torch
from torch import nn

from removalnet import RemovalNetError
from removalnet.models import SplitModel, create_model, list_models, split_module


@pytest.mark.parametrize("name", list_models("small"))
@pytest.mark.parametrize("size,chans", [(28, 1), (32, 3)])
def test_split_identity_small(name, size, chans):
    torch.manual_seed(0)
    m = create_model(name, 10, chans, size, mean=[0.5] * chans, std=[0.25] * chans).eval()
    x = torch.rand(3, chans, size, size)
    y = m(x)
    assert y.shape == (3, 10)
    for l in range(1, m.num_blocks + 1):
        torch.testing.assert_close(m.tail(m.head(x, l), l), y, rtol=0, atol=0)
    outs = m.block_outputs(x)
    assert len(outs) == m.num_blocks
    for l, o in enumerate(outs, 1):
        torch.testing.assert_close(o, m.head(x, l))


def test_split_layer_validation():
    m = create_model("vgg_small", 10, 1, 28)
    for bad in (0, m.num_blocks + 1, -1, 1.5, True):
        with pytest.raises(RemovalNetError, match="split layer"):
            m.head(torch.rand(1, 1, 28, 28), bad)


def test_normalisation_inside_model():
    m = create_model("vgg_small", 10, 1, 28, mean=[0.3], std=[0.2])
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(m.normalize(x), (x - 0.3) / 0.2)
    assert "normalize.mean" in m.state_dict()
    assert not any("normalize" in n for n, _ in m.named_parameters())


def test_create_model_errors():
    with pytest.raises(RemovalNetError, match="unknown model"):
        create_model("nope")
    with pytest.raises(RemovalNetError, match="num_classes"):
        create_model("vgg_small", 1)
    with pytest.raises(RemovalNetError, match="in_chans"):
        create_model("vgg_small", 10, 2)


class UserNet(nn.Module):
    """A user's model with a residual connection inside `stage2`."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.stage2 = Residual(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.act1(self.conv1(x))
        x = self.stage2(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


class SkipAcross(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)
        self.b = nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        h = self.a(x)
        y = self.b(h) + x  # x is used after the cut at `a`
        return self.fc(y.mean((2, 3)))


def test_split_user_module():
    torch.manual_seed(0)
    net = UserNet().eval()
    m = split_module(net, after=["act1", "stage2"])
    assert isinstance(m, SplitModel) and m.num_blocks == 2
    x = torch.rand(4, 3, 16, 16)
    y = net(x)
    torch.testing.assert_close(m(x), y)
    for l in (1, 2):
        torch.testing.assert_close(m.tail(m.head(x, l), l), y)
    torch.testing.assert_close(m.head(x, 1), net.act1(net.conv1(x)))


def test_split_user_module_errors():
    with pytest.raises(RemovalNetError, match="no submodule"):
        split_module(UserNet(), after=["missing"])
    with pytest.raises(RemovalNetError, match="crosses the cut"):
        split_module(SkipAcross(), after=["a"])
    with pytest.raises(RemovalNetError, match="order"):
        split_module(UserNet(), after=["stage2", "act1"])
