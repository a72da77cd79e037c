"""The paper's architectures (section 4.1, Table 3) as :class:`SplitModel`\\ s, built from torchvision.

Every model is torchvision's own definition (``torchvision.models.<name>(weights=None, ...)``; nothing is
downloaded) whose modules are re-grouped into blocks, so ``SplitModel(x)`` equals the torchvision forward
of the same weights and ``tail(head(x, l), l) == model(x)`` for every ``l``.

Two variants, picked by ``input_size``:

* ``input_size <= 64``: the small-input variant the paper uses for 32x32 data ("we downsampled the filter
  size of the first convolutional layer"): first convolution 3x3 stride 1 and no early downsampling (stem
  max-pool removed; MobileNetV2 also keeps the resolution in its first 24-channel block). VGG: adaptive
  pooling to 1x1 and classifier 512 -> 4096 -> 4096 -> classes (38.96M parameters for VGG19-BN on CIFAR10,
  as Table 3). Inception v3: the stem is one 3x3 convolution to 192 channels (21.64M parameters with 10
  classes, as Table 3). ViT: patch size 4 with ViT-B/32's dimensions.
* ``input_size > 64``: the ImageNet-size torchvision model as is.

``in_chans`` 1 replaces the first convolution by a one-channel one (initialised as torchvision initialises
that layer). :func:`torchvision_model` returns the (edited) torchvision module and :func:`from_torchvision`
re-groups any such module, e.g. one holding pretrained weights loaded from a local file.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.inception import BasicConv2d

from ..utils import RemovalNetError
from .registry import register_model
from .split import SplitModel

__all__ = ["torchvision_model", "from_torchvision", "torchvision_family", "split_torchvision", "SMALL_INPUT_MAX", "ViTEmbedding", "ViTClassifier"]

SMALL_INPUT_MAX = 64
"""Inputs up to this many pixels get the small-input variant."""

_TORCHVISION: dict[str, tuple[str, Callable[..., nn.Module]]] = {
    "vgg19_bn": ("vgg", tvm.vgg19_bn),
    "vgg16_bn": ("vgg", tvm.vgg16_bn),
    "resnet18": ("resnet", tvm.resnet18),
    "resnet50": ("resnet", tvm.resnet50),
    "densenet121": ("densenet", tvm.densenet121),
    "inception_v3": ("inception", tvm.inception_v3),
    "vit_b_32": ("vit", tvm.vit_b_32),
    "mobilenet_v2": ("mobilenet", tvm.mobilenet_v2),
}

_VIT_B_DIMS = dict(num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)  # torchvision vit_b_32's

_DEFAULT_LAYER = {"vgg": 3, "resnet": 3, "densenet": 3, "inception": 3, "mobilenet": 3, "vit": 13}


def _seq(named: Sequence[tuple[str, nn.Module]]) -> nn.Sequential:
    """An ``nn.Sequential`` keeping torchvision's attribute names, without ``nn.Identity`` placeholders."""
    return nn.Sequential(OrderedDict((n, m) for n, m in named if not isinstance(m, nn.Identity)))


def _family(name: str) -> str:
    if name not in _TORCHVISION:
        raise RemovalNetError(f"unknown torchvision architecture {name!r}; known: {', '.join(sorted(_TORCHVISION))}")
    return _TORCHVISION[name][0]


def _check_input_size(name: str, family: str, input_size: int) -> None:
    small = input_size <= SMALL_INPUT_MAX
    if family == "vgg" and input_size < 32:
        raise RemovalNetError(f"input_size {input_size} is too small for {name}: five 2x2 max-pools need >= 32")
    if family == "inception" and not small and input_size < 75:
        raise RemovalNetError(f"input_size {input_size} is too small for the ImageNet-size {name}: it needs >= 75 "
                              f"(or <= {SMALL_INPUT_MAX} for the small-input variant)")
    if family == "vit":
        patch = 4 if small else 32
        if input_size % patch:
            raise RemovalNetError(f"input_size {input_size} is not a multiple of {name}'s patch size {patch} "
                                  f"({'small-input' if small else 'ImageNet-size'} variant)")


# ----------------------------------------------------------------------------------------------------
# torchvision modules with the small-input / grayscale edits
# ----------------------------------------------------------------------------------------------------

def _kaiming_fan_out(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _edit_vgg(m: tvm.VGG, in_chans: int, small: bool) -> None:
    if in_chans != 3:
        m.features[0] = _kaiming_fan_out(nn.Conv2d(in_chans, 64, kernel_size=3, padding=1))
    if small:
        m.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        fc = nn.Linear(512, m.classifier[0].out_features)
        nn.init.normal_(fc.weight, 0, 0.01)
        nn.init.zeros_(fc.bias)
        m.classifier[0] = fc


def _edit_resnet(m: tvm.ResNet, in_chans: int, small: bool) -> None:
    if small:
        m.conv1 = _kaiming_fan_out(nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False))
        m.maxpool = nn.Identity()
    elif in_chans != 3:
        m.conv1 = _kaiming_fan_out(nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False))


def _edit_densenet(m: tvm.DenseNet, in_chans: int, small: bool) -> None:
    out = m.features.conv0.out_channels
    if small:
        m.features.conv0 = nn.Conv2d(in_chans, out, kernel_size=3, stride=1, padding=1, bias=False)
        m.features.pool0 = nn.Identity()
    elif in_chans != 3:
        m.features.conv0 = nn.Conv2d(in_chans, out, kernel_size=7, stride=2, padding=3, bias=False)
    if small or in_chans != 3:
        nn.init.kaiming_normal_(m.features.conv0.weight)


def _edit_inception(m: tvm.Inception3, in_chans: int, small: bool) -> None:
    if small:
        # the reduced stem of the reference code for 32x32: one 3x3 conv to the 192 channels Mixed_5b expects
        m.Conv2d_1a_3x3 = BasicConv2d(in_chans, 192, kernel_size=3, stride=1, padding=1)
        for name in ("Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2"):
            setattr(m, name, nn.Identity())
    elif in_chans != 3:
        m.Conv2d_1a_3x3 = BasicConv2d(in_chans, 32, kernel_size=3, stride=2)
    if small or in_chans != 3:
        nn.init.trunc_normal_(m.Conv2d_1a_3x3.conv.weight, mean=0.0, std=0.1, a=-2, b=2)


def _edit_mobilenet(m: tvm.MobileNetV2, in_chans: int, small: bool) -> None:
    first = m.features[0][0]
    if small or in_chans != 3:
        conv = nn.Conv2d(in_chans, first.out_channels, kernel_size=3, stride=1 if small else 2, padding=1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out")
        m.features[0][0] = conv
    if small:
        # the first 24-channel inverted residual keeps the resolution too (reference code: stride 2 -> 1)
        dw = m.features[2].conv[1][0]
        dw.stride = (1, 1)
        m.features[2].stride = 1


def _edit_vit(m: tvm.VisionTransformer, in_chans: int, small: bool) -> None:
    if in_chans != 3:
        p = m.patch_size
        conv = nn.Conv2d(in_chans, m.hidden_dim, kernel_size=p, stride=p)
        nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / (in_chans * p * p)))
        nn.init.zeros_(conv.bias)
        m.conv_proj = conv


_EDITS = {"vgg": _edit_vgg, "resnet": _edit_resnet, "densenet": _edit_densenet, "inception": _edit_inception,
          "mobilenet": _edit_mobilenet, "vit": _edit_vit}


def torchvision_model(name: str, num_classes: int = 10, in_chans: int = 3, input_size: int = 32) -> nn.Module:
    """torchvision's ``name`` (random weights) with the variant edits for ``input_size`` and ``in_chans``.

    The result is a plain torchvision module whose own ``forward`` works; :func:`from_torchvision` turns it
    into a :class:`SplitModel` sharing its modules.
    """
    family = _family(name)
    _check_input_size(name, family, input_size)
    small = input_size <= SMALL_INPUT_MAX
    builder = _TORCHVISION[name][1]
    if family == "inception":
        model = builder(weights=None, num_classes=num_classes, aux_logits=False, init_weights=True)
    elif family == "vit" and small:
        model = tvm.VisionTransformer(image_size=input_size, patch_size=4, num_classes=num_classes, **_VIT_B_DIMS)
    elif family == "vit":
        model = builder(weights=None, num_classes=num_classes, image_size=input_size)
    else:
        model = builder(weights=None, num_classes=num_classes)
    _EDITS[family](model, in_chans, small)
    return model


# ----------------------------------------------------------------------------------------------------
# re-grouping a torchvision module into blocks
# ----------------------------------------------------------------------------------------------------

def _split_vgg(m: tvm.VGG):
    blocks, cur = [], []
    for n, layer in m.features.named_children():
        cur.append((n, layer))
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(_seq(cur))
            cur = []
    if cur or len(blocks) != 5:
        raise RemovalNetError("a VGG split needs features made of five stages each ending with a max-pool")
    classifier = _seq([("avgpool", m.avgpool), ("flatten", nn.Flatten(1)), ("classifier", m.classifier)])
    return blocks, classifier


def _split_resnet(m: tvm.ResNet):
    stem = _seq([("conv1", m.conv1), ("bn1", m.bn1), ("relu", m.relu), ("maxpool", m.maxpool)])
    blocks = [stem, m.layer1, m.layer2, m.layer3, m.layer4]
    classifier = _seq([("avgpool", m.avgpool), ("flatten", nn.Flatten(1)), ("fc", m.fc)])
    return blocks, classifier


def _split_densenet(m: tvm.DenseNet):
    f = m.features
    blocks = [_seq([(n, getattr(f, n)) for n in ("conv0", "norm0", "relu0", "pool0")])]
    for i in (1, 2, 3):
        blocks.append(_seq([(f"denseblock{i}", getattr(f, f"denseblock{i}")),
                            (f"transition{i}", getattr(f, f"transition{i}"))]))
    # torchvision applies F.relu(features, inplace=True) after norm5
    blocks.append(_seq([("denseblock4", f.denseblock4), ("norm5", f.norm5), ("relu5", nn.ReLU(inplace=True))]))
    classifier = _seq([("avgpool", nn.AdaptiveAvgPool2d((1, 1))), ("flatten", nn.Flatten(1)),
                       ("classifier", m.classifier)])
    return blocks, classifier


def _split_inception(m: tvm.Inception3):
    if m.transform_input:
        raise RemovalNetError("inception_v3 with transform_input=True cannot be split: set transform_input=False "
                              "and give the matching mean/std instead")
    g = lambda *names: _seq([(n, getattr(m, n)) for n in names])  # noqa: E731
    blocks = [g("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                "maxpool2"),
              g("Mixed_5b", "Mixed_5c", "Mixed_5d"),
              g("Mixed_6a"),
              g("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
              g("Mixed_7a", "Mixed_7b", "Mixed_7c")]
    classifier = _seq([("avgpool", m.avgpool), ("dropout", m.dropout), ("flatten", nn.Flatten(1)), ("fc", m.fc)])
    return blocks, classifier


_MOBILENET_STAGES = ((0, 4), (4, 7), (7, 11), (11, 17), (17, 19))


def _split_mobilenet(m: tvm.MobileNetV2):
    if len(m.features) != 19:
        raise RemovalNetError(f"a MobileNetV2 split expects 19 feature modules, got {len(m.features)}")
    blocks = [_seq([(str(i), m.features[i]) for i in range(a, b)]) for a, b in _MOBILENET_STAGES]
    classifier = _seq([("avgpool", nn.AdaptiveAvgPool2d((1, 1))), ("flatten", nn.Flatten(1)),
                       ("classifier", m.classifier)])
    return blocks, classifier


class ViTEmbedding(nn.Module):
    """Block 1 of a torchvision ``VisionTransformer``: patchify (``conv_proj``), prepend the class token,
    add the position embedding, dropout. Holds the torchvision module's own layers and parameters."""

    def __init__(self, vit: tvm.VisionTransformer):
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout
        self.image_size = vit.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise RemovalNetError(f"this ViT takes {self.image_size}x{self.image_size} inputs, got {h}x{w}")
        x = self.conv_proj(x).flatten(2).transpose(1, 2)          # (n, patches, hidden)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class ViTClassifier(nn.Module):
    """The tail of a torchvision ``VisionTransformer``: final LayerNorm, class-token selection, head."""

    def __init__(self, vit: tvm.VisionTransformer):
        super().__init__()
        self.ln = vit.encoder.ln
        self.heads = vit.heads

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.heads(self.ln(z)[:, 0])


def _split_vit(m: tvm.VisionTransformer):
    if not isinstance(m.conv_proj, nn.Conv2d):
        raise RemovalNetError("a ViT split expects a single-convolution patch embedding (conv_proj)")
    return [ViTEmbedding(m), *m.encoder.layers.children()], ViTClassifier(m)


_SPLITS = {"vgg": (_split_vgg, tvm.VGG), "resnet": (_split_resnet, tvm.ResNet),
           "densenet": (_split_densenet, tvm.DenseNet), "inception": (_split_inception, tvm.Inception3),
           "mobilenet": (_split_mobilenet, tvm.MobileNetV2), "vit": (_split_vit, tvm.VisionTransformer)}


def _first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def from_torchvision(name: str, module: nn.Module, *, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, default_layer: int | None = None) -> SplitModel:
    """Re-group a torchvision module of architecture ``name`` into a :class:`SplitModel`.

    The SplitModel holds the module's own layers (no copy), so it computes the same logits from the same
    weights; ``mean``/``std`` become its first step (inputs in [0, 1]). Inception's auxiliary head, if
    any, is not part of the SplitModel (it only acts in training). It maps its tensor names to the module's
    (``source_keys``): a state dict named as torchvision's loads into it.
    """
    family = _family(name)
    split, cls = _SPLITS[family]
    if not isinstance(module, cls):
        raise RemovalNetError(f"{name} expects a torchvision {cls.__name__}, got {type(module).__name__}")
    blocks, classifier = split(module)
    in_chans = _first_conv(module).in_channels
    model = SplitModel(blocks, classifier, in_chans=in_chans, mean=mean, std=std,
                       default_layer=default_layer or _DEFAULT_LAYER[family], arch=name)
    return model.record_source(module)   # torchvision's own tensor names load too, and name what a mismatch lacks


def torchvision_family(module: nn.Module) -> str | None:
    """The family (vgg, resnet, densenet, inception, mobilenet, vit) whose known stages split ``module``."""
    for family, (_, cls) in _SPLITS.items():
        if isinstance(module, cls):
            return family
    return None


def split_torchvision(module: nn.Module, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      arch: str = "custom") -> SplitModel:
    """Any torchvision VGG / ResNet / DenseNet / Inception3 / MobileNetV2 / VisionTransformer (not only the
    registered depths) split at its known stages, as :func:`from_torchvision`; ``split_points`` names the
    module that ends each block and the SplitModel maps its tensor names to the module's."""
    family = torchvision_family(module)
    if family is None:
        raise RemovalNetError(f"{type(module).__name__} is not a torchvision architecture with known stages")
    blocks, classifier = _SPLITS[family][0](module)
    names = {id(m): n for n, m in module.named_modules()}
    points = []
    for l, b in enumerate(blocks, 1):
        last = list(b.children())[-1] if isinstance(b, nn.Sequential) else b
        if isinstance(b, nn.Sequential) and isinstance(last, nn.ReLU) and id(last) not in names:
            last = list(b.children())[-2]           # densenet's added final ReLU
        points.append(names.get(id(b)) or names.get(id(last)) or f"block{l}")
    model = SplitModel(blocks, classifier, in_chans=_first_conv(module).in_channels, mean=mean, std=std,
                       default_layer=_DEFAULT_LAYER[family], arch=arch)
    model.split_points = points
    return model.record_source(module)


def _build(name: str, num_classes: int, in_chans: int, input_size: int, mean, std, kw: dict) -> SplitModel:
    if kw:
        raise RemovalNetError(f"{name} takes no option(s) {', '.join(sorted(kw))}")
    return from_torchvision(name, torchvision_model(name, num_classes, in_chans, input_size), mean=mean, std=std)


# ----------------------------------------------------------------------------------------------------
# registered builders
# ----------------------------------------------------------------------------------------------------

@register_model("vgg19_bn", family="paper", description="VGG19-BN (torchvision), 5 blocks; CIFAR10 victim")
def vgg19_bn(num_classes: int, in_chans: int, input_size: int, mean=None, std=None, **kw) -> SplitModel:
    """VGG19 with batch norm (torchvision ``vgg19_bn``), the paper's CIFAR10 victim (38.96M parameters).

    Blocks: block l is ``features`` up to and including the l-th max-pool (5 blocks: 2, 2, 4, 4, 4 conv-BN-ReLU
    layers). Classifier: avgpool, flatten, the three linear layers. ``default_layer`` 3 (reference code).
    Small input (<= 64 px, >= 32 px): adaptive average pool to 1x1 and ``Linear(512, 4096)`` first.
    """
    return _build("vgg19_bn", num_classes, in_chans, input_size, mean, std, kw)


@register_model("vgg16_bn", family="paper", description="VGG16-BN (torchvision), 5 blocks")
def vgg16_bn(num_classes: int, in_chans: int, input_size: int, mean=None, std=None, **kw) -> SplitModel:
    """VGG16 with batch norm (torchvision ``vgg16_bn``); blocks, classifier and variants as :func:`vgg19_bn`
    (5 blocks of 2, 2, 3, 3, 3 conv-BN-ReLU layers each ending at a max-pool). ``default_layer`` 3."""
    return _build("vgg16_bn", num_classes, in_chans, input_size, mean, std, kw)


@register_model("resnet18", family="paper", description="ResNet18 (torchvision), stem + 4 stages")
def resnet18(num_classes: int, in_chans: int, input_size: int, mean=None, std=None, **kw) -> SplitModel:
    """ResNet18 (torchvision ``resnet18``).

    Blocks: 1 = stem (conv1, bn1, relu, maxpool), 2..5 = layer1..layer4. Classifier: avgpool, flatten, fc.
    ``default_layer`` 3 (output of layer2, reference code). Small input: conv1 3x3 stride 1, no maxpool.
    """
    return _build("resnet18", num_classes, in_chans, input_size, mean, std, kw)


@register_model("resnet50", family="paper", description="ResNet50 (torchvision), stem + 4 stages; skin lesion victim")
def resnet50(num_classes: int, in_chans: int, input_size: int, mean=None, std=None, **kw) -> SplitModel:
    """ResNet50 (torchvision ``resnet50``), the paper's skin-lesion victim (23.52M parameters with 8 classes).

    Blocks: 1 = stem (conv1, bn1, relu, maxpool), 2..5 = layer1..layer4 (3, 4, 6, 3 bottlenecks). Classifier:
    avgpool, flatten, fc. ``default_layer`` 3 (output of layer2). Small input: conv1 3x3 stride 1, no maxpool.
    """
    return _build("resnet50", num_classes, in_chans, input_size, mean, std, kw)


@register_model("densenet121", family="paper", description="DenseNet121 (torchvision), 5 blocks; CelebA victim")
def densenet121(num_classes: int, in_chans: int, input_size: int, mean=None, std=None, **kw) -> SplitModel:
    """DenseNet121 (torchvision ``densenet121``), the paper's CelebA victim (Table 3's 6.96M parameters are
    the ImageNet-size variant with 2 classes; the small-input one has 6.95M).

    Blocks: 1 = stem (conv0, norm0, relu0, pool0); 2..4 = denseblock{i} + transition{i} for i = 1..3;
    5 = denseblock4 + norm5 + ReLU. Classifier: adaptive avgpool, flatten, linear. ``default_layer`` 3
    (output of transition2). Small input: conv0 3x3 stride 1, no pool0.
    """
    return _build("densenet121", num_classes, in_chans, input_size, mean, std, kw)


@register_model("inception_v3", family="paper",
                description="Inception v3 (torchvision, no aux head), 5 blocks; GTSRB victim")
def inception_v3(num_classes: int, in_chans: int, input_size: int, mean=None, std=None, **kw) -> SplitModel:
    """Inception v3 (torchvision ``inception_v3``, ``aux_logits=False``), the paper's GTSRB victim.

    Blocks (as the reference code counts them): 1 = stem (Conv2d_1a .. Conv2d_4a with both max-pools),
    2 = Mixed_5b-5d, 3 = Mixed_6a (grid reduction), 4 = Mixed_6b-6e, 5 = Mixed_7a-7c. Classifier: avgpool,
    dropout, flatten, fc. ``default_layer`` 3. Small input (<= 64 px): the stem is a single 3x3 stride-1
    BasicConv2d to 192 channels (21.64M parameters with 10 classes, as Table 3); ImageNet-size input >= 75 px.
    """
    return _build("inception_v3", num_classes, in_chans, input_size, mean, std, kw)


@register_model("vit_b_32", family="paper",
                description="ViT-B/32 (torchvision), embedding + 12 encoder blocks; ImageNet victim")
def vit_b_32(num_classes: int, in_chans: int, input_size: int, mean=None, std=None, **kw) -> SplitModel:
    """ViT-B/32 (torchvision ``vit_b_32``), the paper's ImageNet victim.

    Blocks: 1 = patch embedding + class token + position embedding + dropout (:class:`ViTEmbedding`),
    2..13 = the 12 encoder layers. Classifier: final LayerNorm, class token, head (:class:`ViTClassifier`).
    ``default_layer`` 13 (the encoder output: the reference code splits ViTs between the features and the
    head). Small input (<= 64 px, a multiple of 4): ``VisionTransformer(patch_size=4)`` with ViT-B/32's
    dimensions; otherwise ``vit_b_32`` at ``image_size=input_size`` (a multiple of 32; 224 is the standard).
    Inputs must be exactly ``input_size`` square.
    """
    return _build("vit_b_32", num_classes, in_chans, input_size, mean, std, kw)


@register_model("mobilenet_v2", family="paper", description="MobileNetV2 (torchvision), 5 blocks")
def mobilenet_v2(num_classes: int, in_chans: int, input_size: int, mean=None, std=None, **kw) -> SplitModel:
    """MobileNetV2 (torchvision ``mobilenet_v2``).

    Blocks, as whole inverted-residual stages of ``features`` (as the reference code groups them):
    1 = features[0:4] (stem conv, 16- and 24-channel stages), 2 = [4:7] (32), 3 = [7:11] (64),
    4 = [11:17] (96 and 160), 5 = [17:19] (320 and the 1x1 conv to 1280). Classifier: adaptive avgpool,
    flatten, dropout, linear. ``default_layer`` 3. Small input: stem conv stride 1 and the first 24-channel
    block stride 1 (total downsampling 8 instead of 32).
    """
    return _build("mobilenet_v2", num_classes, in_chans, input_size, mean, std, kw)
