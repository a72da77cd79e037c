"""Small, fast architectures for 28x28 / 32x32 inputs on a CPU.

``vgg_small``: three VGG-style blocks (two 3x3 conv-BN-ReLU, then 2x2 max-pool); block l ends at the
l-th max-pool, as the reference code counts VGG blocks. ``resnet_small``: a 3x3 stem (block 1) and three
residual stages (blocks 2..4) of torchvision ``BasicBlock``s, as the reference code counts ResNet blocks.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock

from .registry import register_model
from .split import SplitModel


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model("vgg_small", family="small", description="3-block VGG-style CNN (~73k params at width 16), 28/32 px")
def vgg_small(num_classes: int, in_chans: int, input_size: int, width: int = 16, mean=None, std=None):
    w = [width, 2 * width, 4 * width]
    blocks, cin = [], in_chans
    for c in w:
        blocks.append(nn.Sequential(*_conv_bn(cin, c), *_conv_bn(c, c), nn.MaxPool2d(2)))
        cin = c
    classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(cin, num_classes))
    return SplitModel(blocks, classifier, in_chans=in_chans, mean=mean, std=std, default_layer=2)


def _stage(cin: int, cout: int, stride: int, n: int) -> nn.Sequential:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    layers = [BasicBlock(cin, cout, stride=stride, downsample=down)]
    layers += [BasicBlock(cout, cout) for _ in range(n - 1)]
    return nn.Sequential(*layers)


@register_model("resnet_small", family="small", description="ResNet-style CNN, stem + 3 stages (~78k params at width 16)")
def resnet_small(num_classes: int, in_chans: int, input_size: int, width: int = 16, depth: int = 1,
                 mean=None, std=None):
    w = [width, 2 * width, 4 * width]
    stem = nn.Sequential(*_conv_bn(in_chans, w[0]))
    blocks = [stem, _stage(w[0], w[0], 1, depth), _stage(w[0], w[1], 2, depth), _stage(w[1], w[2], 2, depth)]
    classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w[2], num_classes))
    return SplitModel(blocks, classifier, in_chans=in_chans, mean=mean, std=std, default_layer=3)
