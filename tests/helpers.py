"""Small model builders shared by the verifier tests, and a user's own model file (LeNet) for the tests of
model references."""
import copy
import importlib.util
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

from removalnet import create_model
from removalnet.models import SplitModel


def calibrated_vgg(seed: int, x: torch.Tensor) -> SplitModel:
    """A tiny vgg_small whose BatchNorm statistics are set on ``x`` (so its outputs depend on the input)."""
    torch.manual_seed(seed)
    m = create_model("vgg_small", 10, 1, 28, width=8, mean=[0.3], std=[0.4])
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = None
    with torch.no_grad():
        m.train()
        m(x)
    return m.eval()


def digits_vgg(seed: int = 0, iterations: int = 40) -> SplitModel:
    """A tiny vgg_small trained a few steps on digits (8 px), in eval mode."""
    from removalnet.data import load_dataset
    from removalnet.train import TrainConfig, train_model
    torch.manual_seed(seed)
    m = create_model("vgg_small", 10, 1, 8, width=4)
    train_model(m, load_dataset("digits", "train"), None, TrainConfig(iterations=iterations, batch_size=64, lr=0.05),
                seed=seed, progress=False)
    return m.eval()


def permuted_copy(model: SplitModel, seed: int = 0) -> SplitModel:
    """The same function with the channels of the last conv layer permuted (a function-preserving change)."""
    m = copy.deepcopy(model)
    block = m.blocks[2]
    conv, bn, lin = block[3], block[4], m.classifier[3]
    perm = torch.randperm(conv.out_channels, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        conv.weight.copy_(conv.weight[perm])
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.copy_(t[perm])
        lin.weight.copy_(lin.weight[:, perm])
    return m


# a user's own module file, as `removalnet ... --model mymodel.py:LeNet` takes it
LENET = textwrap.dedent('''
    import torch
    from torch import nn
    import torch.nn.functional as F

    class LeNet(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, num_classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = torch.flatten(x, 1)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def lenet_fixed():
        return LeNet(10)

    def broken(num_classes):
        raise ValueError("no GPU here")

    class Dynamic(nn.Module):          # data-dependent control flow: torch.fx cannot trace it
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x):
            z = self.conv(x)
            if z.mean() > 100:
                z = z * 2
            return self.fc(z.mean((2, 3)))
''')


def user_lenet(path, seed=0):
    """The user's own class, imported independently of removalnet (the oracle)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"user_lenet_{seed}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(seed)
    return mod.LeNet(10).eval()


class Payload:
    """Pickles to code that writes ``target`` when unpickled (a malicious weights file)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('pwned')",))


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (as run from benchmarks/: its sibling imports, e.g. ``table1``, resolve)."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_bench", bench / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(bench))
