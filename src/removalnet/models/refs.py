"""A user's own model, named by a reference, as a :class:`SplitModel`.

:func:`resolve_model` accepts

* a registered name (``vgg_small``, ``resnet18``, ...: :func:`create_model`);
* ``path/to/file.py:Factory`` or ``package.module:factory``: a class or function returning an ``nn.Module``;
  it is called with ``num_classes=`` when its signature accepts it (and ``in_chans=``/``in_channels=`` when
  it names them), else with no arguments; the model's output size is checked against ``num_classes``;
* ``torchvision:<name>``: torchvision's own model (``torchvision.models.get_model(name, weights=None)``);
* ``timm:<name>``: ``timm.create_model(name)``; timm's pretrained weights only with ``weights="pretrained"``.

Split points are chosen automatically (:func:`auto_split`): torchvision's known stages (``models/paper.py``),
timm's ``feature_info`` stages, else the points of the torch.fx trace where the spatial resolution drops
(after each pooling / strided layer and the activations that follow it, or at the end of the stage before
it where a skip connection crosses), or the top-level layers of a network without feature maps. ``split_after``
overrides them: submodule names (``layer1,layer2``) or fx node names as ``removalnet models --inspect``
lists them. A network fx cannot trace is kept whole (:func:`~removalnet.models.split.unsplit`): it works as a
classifier with every black-box verifier and attack; the white-box ones say why they cannot run.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.fx
from torch import nn

from ..utils import RemovalNetError
from .paper import _EDITS, split_torchvision, torchvision_family
from .registry import _REGISTRY, check_model_kwargs
from .registry import create_model as create_registered
from .split import NotSplittableError, SplitModel, _trace, crossing, split_graph, split_module, unsplit

__all__ = ["resolve_model", "is_model_ref", "auto_split", "load_factory", "describe_split", "user_code", "PRETRAINED"]

PRETRAINED = "pretrained"
"""``weights=PRETRAINED`` asks timm for its pretrained weights (needs a network)."""


@contextlib.contextmanager
def user_code(what: str, doing: str = "") -> Iterator[None]:
    """Run a user's own code (a model file's import, a factory, a training function): whatever it raises, or a
    ``sys.exit`` it calls, becomes one :class:`RemovalNetError` saying what ``what`` did ``doing`` (e.g.
    ``"while being imported"``). ``KeyboardInterrupt`` stays the interrupt it is; our own errors pass through."""
    tail = f" {doing}" if doing else ""
    try:
        yield
    except (KeyboardInterrupt, RemovalNetError):
        raise
    except SystemExit as e:
        raise RemovalNetError(f"{what} called sys.exit({e.code!r}){tail}") from None
    except BaseException as e:
        text = str(e).splitlines()[0] if str(e) else ""
        raise RemovalNetError(f"{what} raised {type(e).__name__}{tail}" + (f": {text}" if text else "")) from e



def is_model_ref(ref: str) -> bool:
    """Whether ``ref`` is a reference (``file.py:F``, ``pkg.mod:f``, ``torchvision:n``, ``timm:n``), not a name."""
    return isinstance(ref, str) and ":" in ref and ref not in _REGISTRY


def _split_ref(ref: str) -> tuple[str, str]:
    where, _, attr = ref.rpartition(":")
    if not where or not attr:
        raise RemovalNetError(f"model reference {ref!r} must be NAME, path/file.py:Factory, package.module:factory, "
                              "torchvision:NAME or timm:NAME")
    return where, attr


def canonical_ref(ref: str) -> str:
    """``ref`` with a file path made absolute (so checkpoints rebuild the model from any directory)."""
    where, attr = _split_ref(ref) if is_model_ref(ref) else ("", "")
    if where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{attr}"
    return ref


_FILE_MODULES: dict[tuple[str, float], Any] = {}


def _import_file(path: Path) -> Any:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise RemovalNetError(f"model file {str(path)!r} does not exist")
    key = (str(path), path.stat().st_mtime)
    if key not in _FILE_MODULES:
        name = f"removalnet_user_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            with user_code(f"model file {str(path)!r}", "while being imported"):
                spec.loader.exec_module(mod)
        except RemovalNetError:
            sys.modules.pop(name, None)
            raise
        _FILE_MODULES[key] = mod
    return _FILE_MODULES[key]


def load_factory(ref: str) -> Callable[..., nn.Module]:
    """The class or function ``ref`` (``file.py:Name`` or ``package.module:name``, dotted names allowed) names."""
    where, attr = _split_ref(ref)
    if where.endswith(".py"):
        mod = _import_file(Path(where))
    else:
        try:
            with user_code(f"module {where!r}", "while being imported"):
                mod = importlib.import_module(where)
        except RemovalNetError as e:
            if isinstance(e.__cause__, ImportError) and getattr(e.__cause__, "name", None) \
                    and where.startswith(e.__cause__.name):   # the module itself (or its package) is not found
                raise RemovalNetError(f"model reference {ref!r}: cannot import {where!r} ({e.__cause__})") from None
            raise
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            found = sorted(n for n, v in vars(mod).items() if not n.startswith("_") and callable(v)
                           and getattr(v, "__module__", None) == mod.__name__)
            raise RemovalNetError(f"{where!r} has no attribute {attr!r}"
                                  + (f"; it defines {', '.join(found)}" if found else ""))
        obj = getattr(obj, part)
    if not callable(obj):
        raise RemovalNetError(f"{ref!r} is a {type(obj).__name__}, not a class or function returning a model")
    return obj


def _call_factory(fn: Callable[..., nn.Module], ref: str, num_classes: int, in_chans: int) -> nn.Module:
    kwargs: dict[str, Any] = {}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if "num_classes" in params or var_kw:
        kwargs["num_classes"] = num_classes
    for name in ("in_chans", "in_channels"):
        if name in params:
            kwargs[name] = in_chans
    call = f"{getattr(fn, '__qualname__', ref)}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    with user_code(f"model factory {ref!r}", f"when called as {call}"):
        module = fn(**kwargs)
    if not isinstance(module, nn.Module):
        raise RemovalNetError(f"model factory {ref!r} returned a {type(module).__name__}, not a torch nn.Module")
    return module


def _torchvision(name: str, num_classes: int, in_chans: int, input_size: int) -> nn.Module:
    from torchvision import models as tvm

    kw: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name.startswith("vit_"):
        kw["image_size"] = input_size
    if name.startswith("inception"):
        kw.update(aux_logits=False, init_weights=True)
    try:
        module = tvm.get_model(name, **kw)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RemovalNetError(f"torchvision:{name}: cannot build it ({first})") from e
    if in_chans != 3:
        family = torchvision_family(module)
        if family is None:
            raise RemovalNetError(f"torchvision:{name} takes 3 input channels; the data has {in_chans}")
        _EDITS[family](module, in_chans, False)   # the ImageNet-size layout, first conv re-made
    return module


def _timm(name: str, num_classes: int, in_chans: int, pretrained: bool) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise RemovalNetError(f"timm:{name} needs the timm package (pip install timm)") from e
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RemovalNetError(f"timm:{name}: cannot build it ({first})") from e


def _example(module: nn.Module, in_chans: int, input_size: int) -> torch.Tensor:
    p = next(iter(module.parameters()), None)
    return torch.rand(2, in_chans, input_size, input_size, generator=torch.Generator().manual_seed(0),
                      device=p.device if p is not None else "cpu")


def _shape_prop(gm: torch.fx.GraphModule, x: torch.Tensor) -> dict[torch.fx.Node, tuple[int, ...] | None]:
    """Output shape of every node on ``x`` (eval mode, no grad; the modules' training flags are restored)."""
    shapes: dict[torch.fx.Node, tuple[int, ...] | None] = {}

    class Prop(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            shapes[n] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            return out

    flags = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            Prop(gm).run(x)
    finally:
        for m, f in flags.items():
            m.training = f
    return shapes


def _downsampling_cuts(gm: torch.fx.GraphModule, x: torch.Tensor) -> list[torch.fx.Node]:
    """Cut points where the spatial resolution drops, else after the top-level layers (see the module doc)."""
    shapes = _shape_prop(gm, x)
    order = list(gm.graph.nodes)
    body = [n for n in order if n.op not in ("placeholder", "output", "get_attr")]
    if len(body) < 2:
        return []
    last = body[-1]

    def hw(n):
        s = shapes.get(n)
        return s[-2] * s[-1] if s is not None and len(s) == 4 else None

    def extend(i: int) -> torch.fx.Node:   # through the activations / norms that follow, same shape
        while (i + 1 < len(body) and body[i + 1].all_input_nodes == [body[i]] and len(body[i].users) == 1
               and shapes.get(body[i + 1]) == shapes.get(body[i])):
            i += 1
        return body[i]

    def ok(n: torch.fx.Node) -> bool:
        return n is not last and crossing(order, n) is None

    cuts: list[torch.fx.Node] = []
    for i, n in enumerate(body):
        a = hw(n)
        ins = [hw(d) for d in n.all_input_nodes if hw(d) is not None]
        if a is None or a <= 1 or not ins or not all(2 * a <= b for b in ins):   # at least halves
            continue
        after = extend(i)
        if ok(after):
            cuts.append(after)
        elif i > 0 and hw(body[i - 1]) is not None and hw(body[i - 1]) > a and ok(body[i - 1]):
            cuts.append(body[i - 1])
    maps = [i for i, n in enumerate(body) if (hw(n) or 0) > 1]
    if maps and ok(extend(maps[-1])):
        cuts.append(extend(maps[-1]))          # the end of the feature maps: the classifier pools
    if not cuts:                               # no feature maps: after each top-level layer
        top = {name for name, _ in gm.named_children()}
        for i, n in enumerate(body):
            if n.op == "call_module" and str(n.target).split(".")[0] in top and ok(extend(i)):
                cuts.append(extend(i))
    pos = {n: i for i, n in enumerate(order)}
    return sorted(set(cuts), key=pos.__getitem__)


def auto_split(module: nn.Module, *, in_chans: int, input_size: int, split_after: Sequence[str] | None = None,
               mean=None, std=None, arch: str = "custom") -> SplitModel:
    """Split ``module`` at its known stages (torchvision, timm ``feature_info``), its fx trace's downsampling
    points or ``split_after``; a module fx cannot trace (or with no split point) is kept whole."""
    kw = dict(in_chans=in_chans, mean=mean, std=std, arch=arch)
    if split_after:
        names = list(split_after)
        modules = dict(module.named_modules())
        if all(n in modules and n for n in names):
            return split_module(module, names, **kw)
        gm = _trace(module, set())
        nodes = {n.name: n for n in gm.graph.nodes}
        bad = [n for n in names if n not in nodes]
        if bad:
            raise RemovalNetError(f"cannot split at {bad[0]!r}: no submodule or fx node of that name in "
                                  f"{type(module).__name__} (see `removalnet models --inspect`)")
        return split_graph(module, gm, [nodes[n] for n in names], names, **kw)
    if torchvision_family(module) is not None:
        try:
            return split_torchvision(module, mean=mean, std=std, arch=arch)
        except RemovalNetError:
            pass
    stages = [f.get("module") for f in getattr(module, "feature_info", None) or [] if isinstance(f, dict)]
    if stages and all(stages):
        try:
            return split_module(module, stages, **kw)
        except RemovalNetError:
            pass
    try:
        with user_code(f"model {arch!r}", "while being traced"):   # its forward runs here first
            gm = _trace(module, set())
            cuts = _downsampling_cuts(gm, _example(module, in_chans, input_size))
    except NotSplittableError as e:
        return unsplit(module, str(e), **kw)
    except RemovalNetError as e:
        if e.__cause__ is None:
            raise   # a sys.exit
        e = e.__cause__
        return unsplit(module, f"running its fx trace failed ({type(e).__name__}: {e})", **kw)
    if not cuts:
        return unsplit(module, "no split point found in its fx trace", **kw)
    try:
        return split_graph(module, gm, cuts, [c.name for c in cuts], **kw)
    except RemovalNetError as e:
        return unsplit(module, str(e), **kw)


def _check_output(model: SplitModel, ref: str, num_classes: int, in_chans: int, input_size: int) -> None:
    x = _example(model, in_chans, input_size)
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), user_code(f"model {ref!r}", f"on a {in_chans}x{input_size}x{input_size} input"):
            y = model(x)
    except RemovalNetError as e:
        if e.__cause__ is None:
            raise   # a sys.exit in its forward
        e = e.__cause__
        raise RemovalNetError(f"model {ref!r} fails on a {in_chans}x{input_size}x{input_size} input: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        for m, f in flags.items():
            m.training = f
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (x.shape[0], num_classes):
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise RemovalNetError(f"model {ref!r} returns {got} for a batch of {x.shape[0]}; expected logits of shape "
                              f"({x.shape[0]}, {num_classes}) for {num_classes} classes")


def resolve_model(ref: str, num_classes: int = 10, in_chans: int = 3, input_size: int = 32, *,
                  weights: str | Path | None = None, split_after: Sequence[str] | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> SplitModel:
    """The model ``ref`` names (module doc) as a :class:`SplitModel`; ``weights="pretrained"`` gives timm's
    pretrained weights. Weight files (the user's state dict, safetensors, a checkpoint) are loaded by
    :func:`removalnet.checkpoint.build_model`, which calls this.
    """
    if weights is not None and weights != PRETRAINED:
        raise RemovalNetError("resolve_model loads only timm's pretrained weights; load a weights file with "
                              "removalnet.checkpoint.build_model (or load_weights)")
    if not isinstance(ref, str) or not ref:
        raise RemovalNetError(f"model reference must be a non-empty string, got {ref!r}")
    pretrained = weights == PRETRAINED
    if pretrained and not ref.startswith("timm:"):
        raise RemovalNetError(f"--weights {PRETRAINED} is only available for timm:NAME models, not {ref!r}")
    split_after = list(split_after) if split_after else None
    if not is_model_ref(ref):
        if split_after:
            raise RemovalNetError(f"{ref} is a registered model with fixed blocks; --split-after applies to "
                                  "a model given as file.py:Factory, package.module:factory, torchvision: or timm:")
        model = create_registered(ref, num_classes, in_chans, input_size, mean=mean, std=std)
    else:
        ref = canonical_ref(ref)
        where, name = _split_ref(ref)
        if where == "torchvision":
            module = _torchvision(name, num_classes, in_chans, input_size)
        elif where == "timm":
            module = _timm(name, num_classes, in_chans, pretrained)
        else:
            module = _call_factory(load_factory(ref), ref, num_classes, in_chans)
        model = auto_split(module, in_chans=in_chans, input_size=input_size, split_after=split_after,
                           mean=mean, std=std, arch=ref)
        _check_output(model, ref, num_classes, in_chans, input_size)
        model.build_config = dict(arch=ref, num_classes=num_classes, in_chans=in_chans, input_size=input_size,
                                  kwargs={"split_after": split_after} if split_after else {})
    return model


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, input_size: int = 32, *,
                 mean=None, std=None, **kwargs) -> SplitModel:
    """A registered architecture (:func:`~removalnet.models.registry.create_model`) or a model reference
    (:func:`resolve_model`, keyword ``split_after``) as a :class:`SplitModel`."""
    if isinstance(name, str) and ":" in name and name not in _REGISTRY:
        check_model_kwargs(name, kwargs)
        return resolve_model(name, num_classes, in_chans, input_size, mean=mean, std=std, **kwargs)
    return create_registered(name, num_classes, in_chans, input_size, mean=mean, std=std, **kwargs)


def describe_split(model: SplitModel, input_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """``(split point name, block output shape)`` for every block, on one ``input_size`` input."""
    if model.unsplit_reason:
        return []
    x = torch.rand(1, model.in_chans, input_size, input_size)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            outs = model.block_outputs(x)
    finally:
        model.train(was)
    names = model.split_points or [f"block{l}" for l in range(1, model.num_blocks + 1)]
    return [(n, tuple(o.shape[1:])) for n, o in zip(names, outs)]
