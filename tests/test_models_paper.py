"""The paper's torchvision architectures as SplitModels: same logits as torchvision, exact layer split.

Compute is kept small for a shared 2-core CPU: block shapes at 32x32 and the ImageNet-size structure are
checked on the meta device (no arithmetic); numerical checks run at the smallest input each variant takes.
"""
import pytest
import torch
import torchvision
from torch import nn
from torch.testing import assert_close

from removalnet.models import create_model, list_models
from removalnet.models.paper import from_torchvision, torchvision_model
from removalnet.utils import RemovalNetError

PAPER = ["densenet121", "inception_v3", "mobilenet_v2", "resnet18", "resnet50", "vgg16_bn", "vgg19_bn", "vit_b_32"]

# (num_blocks, default_layer, block outputs of the small-input variant at 32x32 as (channels, side) for
# CNNs and (tokens, width) for the ViT)
BLOCKS = {
    "vgg19_bn": (5, 3, [(64, 16), (128, 8), (256, 4), (512, 2), (512, 1)]),
    "vgg16_bn": (5, 3, [(64, 16), (128, 8), (256, 4), (512, 2), (512, 1)]),
    "resnet18": (5, 3, [(64, 32), (64, 32), (128, 16), (256, 8), (512, 4)]),
    "resnet50": (5, 3, [(64, 32), (256, 32), (512, 16), (1024, 8), (2048, 4)]),
    "densenet121": (5, 3, [(64, 32), (128, 16), (256, 8), (512, 4), (1024, 4)]),
    "inception_v3": (5, 3, [(192, 32), (288, 32), (768, 15), (768, 15), (2048, 7)]),
    "mobilenet_v2": (5, 3, [(24, 32), (32, 16), (64, 8), (160, 4), (1280, 4)]),
    "vit_b_32": (13, 13, [(65, 768)] * 13),
}
# numerical checks: small-input variant at the smallest size it takes, ImageNet-size variant just above 64
# px (inception: its minimum, 75; ViT: a multiple of its patch size 32, 224 is checked structurally)
SMALL_SIZE = {name: 32 if name.startswith("vgg") else 16 for name in PAPER}
IMAGENET_SIZE = {name: 65 for name in PAPER} | {"inception_v3": 75, "vit_b_32": 96}

TV_BUILDERS = {
    "vgg19_bn": lambda nc, size: torchvision.models.vgg19_bn(weights=None, num_classes=nc),
    "vgg16_bn": lambda nc, size: torchvision.models.vgg16_bn(weights=None, num_classes=nc),
    "resnet18": lambda nc, size: torchvision.models.resnet18(weights=None, num_classes=nc),
    "resnet50": lambda nc, size: torchvision.models.resnet50(weights=None, num_classes=nc),
    "densenet121": lambda nc, size: torchvision.models.densenet121(weights=None, num_classes=nc),
    "inception_v3": lambda nc, size: torchvision.models.inception_v3(weights=None, num_classes=nc,
                                                                     aux_logits=False, init_weights=True),
    "vit_b_32": lambda nc, size: torchvision.models.vit_b_32(weights=None, num_classes=nc, image_size=size),
    "mobilenet_v2": lambda nc, size: torchvision.models.mobilenet_v2(weights=None, num_classes=nc),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU, OpenMP's spinning threads cost 10x here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    """Give a module built on the meta device real, seeded weights, cheaply: a pool of 2**16 uniform numbers
    cycled from a random offset per tensor, scaled so activations stay O(1) (He scale for weights; norms
    near 1; positive running variances). Skips torchvision's initialisation, which dominates test time."""
    module.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    size = 1 << 16
    pool = torch.rand(size, generator=g) * 2 - 1
    pool = torch.cat([pool, pool])
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                t.zero_()
                continue
            flat, off = t.view(-1), int(torch.randint(size, (1,), generator=g))
            for i in range(0, flat.numel(), size):
                m = min(size, flat.numel() - i)
                flat[i:i + m].copy_(pool[off:off + m])
            if name.endswith("running_var"):
                t.abs_().mul_(0.5).add_(0.5)
            elif t.dim() >= 2:
                t.mul_((6.0 / t[0].numel()) ** 0.5)
            elif name.endswith("weight"):
                t.mul_(0.1).add_(1.0)
            else:
                t.mul_(0.1)
    return module


def _meta_then_seeded(build, seed: int) -> nn.Module:
    with torch.device("meta"):
        module = build()
    return _seeded(module, seed).eval()


def _check_split(model, x, ref):
    """model(x) == ref, and tail(head(x, l), l) == model(x) for every l.

    ``head(x, l)`` is compared with ``block_outputs(x)[l - 1]`` for l = 1, 2, default_layer and the last one,
    and every tail runs from ``block_outputs`` (the same tensors, without a quadratic number of passes).
    """
    out = model(x)
    assert_close(out, ref)
    assert out.abs().max() > 0 and out.std() > 0
    outs = model.block_outputs(x)
    for l in sorted({1, 2, model.default_layer, model.num_blocks}):
        assert_close(model.head(x, l), outs[l - 1])
    for l in range(1, model.num_blocks + 1):
        assert_close(model.tail(outs[l - 1], l), out)


def test_registered():
    assert list_models("paper") == PAPER


@pytest.mark.parametrize("name", PAPER)
def test_small_variant_blocks_at_32px(name):
    num_blocks, default_layer, shapes = BLOCKS[name]
    with torch.device("meta"):
        model = create_model(name, 10, 3, 32).eval()
        outs = model.block_outputs(torch.empty(2, 3, 32, 32))
        logits = model.tail(outs[-1], num_blocks)
    assert (model.num_blocks, model.default_layer, model.arch) == (num_blocks, default_layer, name)
    got = [(o.shape[1], o.shape[-1]) if o.dim() == 4 else (o.shape[1], o.shape[2]) for o in outs]
    assert got == shapes
    if name != "vit_b_32":
        assert all(o.dim() == 4 and o.shape[-1] == o.shape[-2] for o in outs)
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("name", PAPER)
def test_small_variant_matches_torchvision_and_splits(name):
    size = SMALL_SIZE[name]
    tv = _meta_then_seeded(lambda: torchvision_model(name, num_classes=10, in_chans=3, input_size=size), seed=1)
    model = from_torchvision(name, tv, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3]).eval()
    # the SplitModel holds exactly torchvision's parameters: no copies, none left out
    assert {id(p) for p in model.parameters()} == {id(p) for p in tv.parameters()}
    assert (model.num_blocks, model.default_layer) == BLOCKS[name][:2]
    x = torch.rand(1 if name == "vit_b_32" else 2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _check_split(model, x, tv((x - model.normalize.mean) / model.normalize.std))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_create_model_is_the_regrouped_torchvision_model(name):
    torch.manual_seed(3)
    a = create_model(name, 10, 3, 32, mean=[0.5], std=[0.25])
    torch.manual_seed(3)
    b = from_torchvision(name, torchvision_model(name, 10, 3, 32), mean=[0.5], std=[0.25])
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.build_config["arch"] == name == a.arch


@pytest.mark.parametrize("name", PAPER)
def test_imagenet_variant_is_torchvision_as_is(name):
    size = 299 if name == "inception_v3" else 224
    with torch.device("meta"):
        ours, ref = torchvision_model(name, 1000, 3, size), TV_BUILDERS[name](1000, size)
        model = from_torchvision(name, ours).eval()
        logits = model(torch.empty(1, 3, size, size))
    assert repr(ours) == repr(ref)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert logits.shape == (1, 1000) and model.num_blocks == BLOCKS[name][0]


@pytest.mark.parametrize("name", PAPER)
def test_imagenet_variant_matches_torchvision_and_splits(name):
    size = IMAGENET_SIZE[name]
    tv = _meta_then_seeded(lambda: TV_BUILDERS[name](7, size), seed=5)
    model = from_torchvision(name, tv).eval()
    assert {id(p) for p in model.parameters()} == {id(p) for p in tv.parameters()}
    assert (model.num_blocks, model.default_layer) == BLOCKS[name][:2]
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        _check_split(model, x, tv(x))


@pytest.mark.parametrize("name", ["vgg16_bn", "resnet18", "mobilenet_v2"])
def test_grayscale_numerics(name):
    size = SMALL_SIZE[name]
    tv = _meta_then_seeded(lambda: torchvision_model(name, num_classes=5, in_chans=1, input_size=size), seed=7)
    model = from_torchvision(name, tv, mean=[0.3], std=[0.2]).eval()
    assert model.in_chans == 1
    x = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 5)
        assert_close(out, tv((x - 0.3) / 0.2))
        l = model.default_layer
        assert_close(model.tail(model.head(x, l), l), out)


@pytest.mark.parametrize("name", PAPER)
@pytest.mark.parametrize("size", [32, "imagenet"])
def test_grayscale_first_conv(name, size):
    """The one-channel first convolution keeps the three-channel one's kernel, stride and padding."""
    size = IMAGENET_SIZE[name] if size == "imagenet" else size
    with torch.device("meta"):
        gray, rgb = create_model(name, 4, 1, size), create_model(name, 4, 3, size)
        out = gray.eval()(torch.empty(2, 1, size, size))
    assert out.shape == (2, 4) and gray.in_chans == 1
    c1, c3 = (next(m for m in mdl.modules() if isinstance(m, nn.Conv2d)) for mdl in (gray, rgb))
    assert (c1.in_channels, c3.in_channels) == (1, 3)
    assert (c1.out_channels, c1.kernel_size, c1.stride, c1.padding) == \
        (c3.out_channels, c3.kernel_size, c3.stride, c3.padding)


@pytest.mark.parametrize("name, num_classes, input_size, millions", [
    ("vgg19_bn", 10, 32, 38.96),      # Table 3, CIFAR10
    ("resnet50", 8, 32, 23.52),       # Table 3, skin lesion (8 classes)
    ("densenet121", 2, 224, 6.96),    # Table 3, CelebA (binary attributes)
    ("inception_v3", 10, 32, 21.64),  # Table 3 lists GTSRB; 21.64M is the 10-class count
    ("vit_b_32", 1000, 224, 88.22),   # torchvision's count; Table 3 says 88.19M
])
def test_parameter_counts(name, num_classes, input_size, millions):
    with torch.device("meta"):
        model = create_model(name, num_classes, 3, input_size)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions


def test_variant_edits():
    with torch.device("meta"):
        small = create_model("resnet50", 10, 3, 64)
        big = create_model("resnet50", 10, 3, 65)
        vgg = create_model("vgg19_bn", 10, 3, 32)
        vit = create_model("vit_b_32", 10, 3, 32)
        inc = create_model("inception_v3", 10, 3, 32)
        mob = create_model("mobilenet_v2", 10, 3, 32)
    assert small.blocks[0].conv1.kernel_size == (3, 3) and small.blocks[0].conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.blocks[0].modules())
    assert big.blocks[0].conv1.kernel_size == (7, 7) and isinstance(big.blocks[0].maxpool, nn.MaxPool2d)
    assert vgg.classifier.avgpool.output_size == (1, 1) and vgg.classifier.classifier[0].in_features == 512
    assert vit.blocks[0].conv_proj.kernel_size == (4, 4)
    assert [n for n, _ in inc.blocks[0].named_children()] == ["Conv2d_1a_3x3"]
    assert inc.blocks[0].Conv2d_1a_3x3.conv.out_channels == 192
    strides = [m.stride for m in mob.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert len(strides) == 3  # 32, 64 and 160-channel stages; the stem and the 24-channel stage keep 32x32


def test_inception_with_aux_head_splits_without_it():
    tv = _meta_then_seeded(lambda: torchvision.models.inception_v3(weights=None, num_classes=3, aux_logits=True,
                                                                init_weights=False),
                           seed=9)
    model = from_torchvision("inception_v3", tv).eval()
    assert not any("AuxLogits" in n for n, _ in model.named_parameters())
    x = torch.rand(1, 3, 75, 75, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        assert_close(model(x), tv(x))


@pytest.mark.parametrize("call, match", [
    (lambda: create_model("vgg19_bn", 10, 3, 28), "input_size"),
    (lambda: create_model("inception_v3", 10, 3, 70), "input_size"),
    (lambda: create_model("vit_b_32", 10, 3, 30), "input_size"),
    (lambda: create_model("vit_b_32", 10, 3, 100), "input_size"),
    (lambda: create_model("resnet18", 10, 3, 32, width=8), "width"),
    (lambda: from_torchvision("resnet18", torchvision.models.mobilenet_v2(weights=None)), "ResNet"),
    (lambda: from_torchvision("alexnet", torchvision.models.alexnet(weights=None)), "alexnet"),
    (lambda: from_torchvision("inception_v3", torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=False, transform_input=True)), "transform_input"),
])
def test_bad_parameters_raise(call, match):
    with pytest.raises(RemovalNetError, match=match):
        with torch.device("meta"):
            call()


def test_vit_rejects_other_input_sizes():
    with torch.device("meta"):
        model = create_model("vit_b_32", 10, 3, 16)
        with pytest.raises(RemovalNetError, match="16x16"):
            model(torch.empty(1, 3, 32, 32))
