"""Small model builders shared by the verifier tests."""
import copy

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
