"""Small model builders shared by the verifier tests."""
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
