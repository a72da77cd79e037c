"""Classifiers cut into blocks: F(x) = F^{l+}(F^{l-}(x)) (paper, section 2.1).

Every model in the toolkit is a :class:`SplitModel`. ``head(x, l)`` returns the output of block ``l``
(1-based, ``1 <= l <= num_blocks``) and ``tail(z, l)`` maps that latent through blocks ``l+1 ..
num_blocks`` and the classifier to logits, so ``tail(head(x, l), l) == model(x)`` for every ``l``.

Inputs are images in [0, 1]; the per-dataset normalisation is a fixed first step of the model (buffers,
not parameters), so adversarial perturbations and pixel-space budgets mean the same for every model.

:func:`split_module` turns a user's own ``nn.Module`` into a ``SplitModel`` by cutting its torch.fx graph
after named submodules (or after fx nodes, :func:`split_graph`). A model split from a user's module keeps
a map from its own tensor names to the module's (``source_keys``), so the user's ``state_dict`` loads with
the user's names. A model that cannot be split is a one-block ``SplitModel`` with ``unsplit_reason`` set:
it classifies as usual, and ``head``/``tail`` raise :class:`NotSplittableError` saying why.
"""
from __future__ import annotations

import sys
from typing import Iterable, Sequence

import torch
import torch.fx
from torch import nn

from ..utils import RemovalNetError

__all__ = ["Normalize", "SplitModel", "split_module", "split_graph", "unsplit", "NotSplittableError",
           "key_mismatch"]


class NotSplittableError(RemovalNetError):
    """A white-box method needs ``head``/``tail`` of a model that has no split layers."""


def key_mismatch(missing: Sequence[str], unexpected: Sequence[str], show: int = 3) -> str:
    """``missing 2 tensor(s), e.g. 'a', 'b'; 1 unexpected tensor(s), e.g. 'c'`` (a few names of each)."""
    parts = []
    for what, keys in (("missing", sorted(missing)), ("unexpected", sorted(unexpected))):
        if keys:
            eg = ", ".join(repr(k) for k in keys[:show]) + (", ..." if len(keys) > show else "")
            parts.append(f"missing {len(keys)} tensor(s), e.g. {eg}" if what == "missing"
                         else f"{len(keys)} unexpected tensor(s), e.g. {eg}")
    return "; ".join(parts)


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean and std stored as buffers."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, in_chans: int):
        super().__init__()
        mean = list(mean) if mean is not None else [0.0] * in_chans
        std = list(std) if std is not None else [1.0] * in_chans
        if len(mean) == 1 and in_chans > 1:
            mean, std = mean * in_chans, std * in_chans
        if len(mean) != in_chans or len(std) != in_chans:
            raise RemovalNetError(f"normalisation has {len(mean)} channels, model expects {in_chans}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SplitModel(nn.Module):
    """A classifier made of ``blocks`` followed by ``classifier``, with the layer split of the paper.

    Args:
        blocks: the feature blocks, in order; block ``l`` is ``blocks[l - 1]``.
        classifier: maps the output of the last block to logits (pooling, flatten, linear layers).
        in_chans: input channels. mean/std: the input normalisation (None: identity).
        default_layer: the split layer used by RemovalNet and DeepJudge when none is given.
        arch: the registry name, stored in checkpoints.
        unsplit_reason: set for a model that could not be split (one block holding the whole network):
            it works as a classifier, and ``head``/``tail``/``block_outputs`` raise, giving this reason.

    Attributes set when the model was split from a user's module: ``source_keys`` (own tensor name ->
    the module's name; :meth:`load_state_dict` accepts either naming), ``source_names`` (every tensor
    name of the module; those its forward never uses are accepted and ignored) and ``split_points``
    (the name of each cut).
    """

    def __init__(self, blocks: Iterable[nn.Module], classifier: nn.Module, *, in_chans: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 default_layer: int | None = None, arch: str = "custom", unsplit_reason: str | None = None):
        super().__init__()
        self.normalize = Normalize(mean, std, in_chans)
        self.blocks = nn.ModuleList(blocks)
        self.classifier = classifier
        if len(self.blocks) == 0:
            raise RemovalNetError("a SplitModel needs at least one block")
        self.in_chans = in_chans
        self.arch = arch
        self.unsplit_reason = unsplit_reason
        self.source_keys: dict[str, str] | None = None
        self.source_names: tuple[str, ...] = ()
        self.split_points: list[str] = []
        self.default_layer = default_layer if default_layer is not None else max(1, len(self.blocks) // 2)
        if unsplit_reason is None:
            self.check_layer(self.default_layer)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def check_layer(self, l: int) -> int:
        if getattr(self, "unsplit_reason", None):
            raise NotSplittableError(
                f"{self.arch} has no split layers ({self.unsplit_reason}); white-box methods that need "
                "head(x, l)/tail(z, l) cannot run on it (black-box verifiers and attacks can); "
                "give split points with --split-after")
        if not isinstance(l, int) or isinstance(l, bool) or not 1 <= l <= self.num_blocks:
            raise RemovalNetError(
                f"split layer {l!r} does not exist in {self.arch}: it has blocks 1..{self.num_blocks}")
        return l

    def head(self, x: torch.Tensor, l: int) -> torch.Tensor:
        """F^{l-}(x): the output of block ``l``."""
        self.check_layer(l)
        z = self.normalize(x)
        for block in self.blocks[:l]:
            z = block(z)
        return z

    def tail(self, z: torch.Tensor, l: int) -> torch.Tensor:
        """F^{l+}(z): blocks ``l+1 .. num_blocks`` and the classifier."""
        self.check_layer(l)
        for block in self.blocks[l:]:
            z = block(z)
        return self.classifier(z)

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every block (index ``l - 1`` holds block ``l``), in one pass."""
        self.check_layer(1)
        z = self.normalize(x)
        outs = []
        for block in self.blocks:
            z = block(z)
            outs.append(z)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalize(x)
        for block in self.blocks:
            z = block(z)
        return self.classifier(z)

    # ------------------------------------------------------------------ the user's own tensor names
    def record_source(self, module: nn.Module) -> "SplitModel":
        """Map this model's tensor names to those of ``module``, whose tensors it holds (matched by identity)."""
        names: dict[int, str] = {}
        mod_state = module.state_dict(keep_vars=True)
        for name, t in mod_state.items():
            names.setdefault(id(t), name)
        own = super().state_dict(keep_vars=True)
        self.source_keys = {k: names[id(t)] for k, t in own.items() if id(t) in names}
        self.source_names = tuple(mod_state)
        return self

    def is_source_state(self, state: dict) -> bool:
        """Whether ``state`` is named as the user's module (rather than as this model)."""
        if not self.source_keys:
            return False
        keys = set(state)
        return len(keys & set(self.source_keys.values())) > len(keys & set(super().state_dict()))

    def from_source_state(self, state: dict, *, strict: bool = True) -> dict:
        """``state`` named as the user's module -> named as this model. Tensors the module's state dict does
        not hold (the input normalisation, buffers fx made persistent) keep their current values."""
        need = set(self.source_keys.values())
        missing = need - set(state)
        unexpected = set(state) - set(self.source_names)
        if strict and (missing or unexpected):
            raise RemovalNetError(f"the state dict does not match {self.arch}: {key_mismatch(missing, unexpected)}")
        out = {}
        for k, v in super().state_dict().items():
            src = self.source_keys.get(k)
            out[k] = state[src] if src in state else v
        return out

    def source_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights named as the user's module (``torch.save(model.source_state_dict())`` loads into it)."""
        if not self.source_keys:
            raise RemovalNetError(f"{self.arch} was not split from a user's module: it has no source names")
        own = self.state_dict()
        return {src: own[k] for k, src in self.source_keys.items()}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict``; a state dict named as the user's module is accepted too."""
        if self.is_source_state(state_dict):
            state_dict = self.from_source_state(state_dict, strict=strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _timm_notrace() -> tuple[tuple, tuple]:
    """timm's functions and modules that fx must not trace into (its own fx helpers use them), if timm is loaded."""
    if "timm" not in sys.modules:
        return (), ()
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:
        return (), ()
    return tuple(get_notrace_functions()), tuple(get_notrace_modules())


class _BoundaryTracer(torch.fx.Tracer):
    def __init__(self, leaves: set[str]):
        functions, self.leaf_types = _timm_notrace()
        super().__init__(autowrap_functions=functions)
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (qualname in self.leaves or (bool(self.leaf_types) and isinstance(m, self.leaf_types))
                or super().is_leaf_module(m, qualname))


def _segment(gm: torch.fx.GraphModule, nodes: list[torch.fx.Node], inp: torch.fx.Node) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {inp: graph.placeholder("x")}

    def lookup(n: torch.fx.Node) -> torch.fx.Node:
        if n not in env:
            if n.op != "get_attr":
                raise AssertionError(n)
            env[n] = graph.node_copy(n, lookup)
        return env[n]

    for n in nodes:
        env[n] = graph.node_copy(n, lookup)
    graph.output(env[nodes[-1]])
    return torch.fx.GraphModule(gm, graph)


def _optional_args(module: nn.Module) -> dict:
    """forward's parameters after the input that have defaults (timm's ``attn_mask=None``), fixed for tracing."""
    import inspect
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params[1:]
            if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _trace(module: nn.Module, leaves: set[str]) -> torch.fx.GraphModule:
    try:
        graph = _BoundaryTracer(leaves).trace(module, concrete_args=_optional_args(module) or None)
    except Exception as e:  # fx raises many types for untraceable control flow
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NotSplittableError(f"cannot split {type(module).__name__}: torch.fx could not trace it ({first})") from e
    _drop_fixed_args(graph)
    return torch.fx.GraphModule(module, graph)


def _drop_fixed_args(graph: torch.fx.Graph) -> None:
    """Remove the placeholders of arguments fixed while tracing, with the checks fx added on them (nothing that
    reaches the output uses them)."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for p in placeholders[1:]:
        seen, stack = [], [p]
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.append(n)
                stack.extend(n.users)
        if any(n.op == "output" for n in seen):
            continue
        order = {n: i for i, n in enumerate(graph.nodes)}
        for n in sorted(seen, key=order.__getitem__, reverse=True):
            graph.erase_node(n)


def split_module(module: nn.Module, after: Sequence[str], *, in_chans: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 default_layer: int | None = None, arch: str = "custom") -> SplitModel:
    """Cut a user's ``nn.Module`` into a :class:`SplitModel` after the submodules named in ``after``.

    Block ``l`` ends with the output of ``after[l - 1]``; everything after the last name becomes the
    classifier. The module is traced with torch.fx (the named submodules are kept whole). A name that is
    not a submodule, a model that fx cannot trace, or a value computed before a cut and used after it
    (a skip connection across the cut) raises a :class:`RemovalNetError` naming the problem.
    """
    names = list(after)
    if not names:
        raise RemovalNetError("split_module needs at least one submodule name in `after`")
    known = dict(module.named_modules())
    for name in names:
        if name not in known or name == "":
            raise RemovalNetError(f"cannot split at {name!r}: no submodule of that name in {type(module).__name__}")
    gm = _trace(module, set(names))
    order = list(gm.graph.nodes)
    cuts: list[torch.fx.Node] = []
    for name in names:
        hits = [n for n in order if n.op == "call_module" and n.target == name]
        if len(hits) != 1:
            raise RemovalNetError(f"cannot split at {name!r}: it is called {len(hits)} times in forward, not once")
        cuts.append(hits[0])
    return split_graph(module, gm, cuts, names, in_chans=in_chans, mean=mean, std=std,
                       default_layer=default_layer, arch=arch)


def crossing(order: list[torch.fx.Node], cut: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node] | None:
    """A value computed before ``cut`` (other than the cut's own) that a node after it uses, as (value, user)."""
    pos = {n: i for i, n in enumerate(order)}
    p = pos[cut]
    for n in order[p + 1:]:
        if n.op == "output":
            continue
        for dep in n.all_input_nodes:
            if dep is not cut and dep.op != "get_attr" and pos[dep] <= p:
                return dep, n
    return None


def split_graph(module: nn.Module, gm: torch.fx.GraphModule, cuts: Sequence[torch.fx.Node], names: Sequence[str], *,
                in_chans: int = 3, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                default_layer: int | None = None, arch: str = "custom") -> SplitModel:
    """Cut the fx graph ``gm`` of ``module`` after the nodes ``cuts`` (named ``names`` in messages).

    Each segment becomes a block (a GraphModule holding ``module``'s own submodules and tensors); the
    segment after the last cut is the classifier. The result maps its tensor names to ``module``'s.
    """
    names, cuts = list(names), list(cuts)
    order = [n for n in gm.graph.nodes]
    placeholders = [n for n in order if n.op == "placeholder"]
    if len(placeholders) > 1:  # optional arguments fixed to their defaults while tracing leave unused placeholders
        placeholders = [n for n in placeholders if n.users] or placeholders[:1]
    if len(placeholders) != 1:
        raise RemovalNetError(f"cannot split {type(module).__name__}: forward must take exactly one input")
    pos = {n: i for i, n in enumerate(order)}
    if [pos[c] for c in cuts] != sorted(pos[c] for c in cuts) or len(set(cuts)) != len(cuts):
        raise RemovalNetError(f"cannot split: the names {names} are not in the order forward calls them")
    out_node = next(n for n in order if n.op == "output")
    if not isinstance(out_node.args[0], torch.fx.Node):
        raise RemovalNetError("cannot split: forward must return a single tensor")
    body = [n for n in order if n.op not in ("placeholder", "output", "get_attr")]
    segments: list[list[torch.fx.Node]] = [[]]
    for n in body:
        segments[-1].append(n)
        if n in cuts:
            segments.append([])
    inputs = [placeholders[0]] + cuts
    for k, seg in enumerate(segments):
        allowed = set(seg) | {inputs[k]}
        for n in seg:
            for dep in n.all_input_nodes:
                if dep.op == "get_attr" or dep in allowed:
                    continue
                where = names[k - 1] if k > 0 else "the input"
                raise RemovalNetError(
                    f"cannot split at {where!r}: {dep.name!r}, computed before that cut, is used after it "
                    f"by {n.name!r} (a connection crosses the cut)")
        if k < len(segments) - 1 and seg and seg[-1] is not cuts[k]:
            raise AssertionError("segment does not end at its cut")
    blocks = [_segment(gm, seg, inputs[k]) for k, seg in enumerate(segments[:-1])]
    if segments[-1]:
        if out_node.args[0] is not segments[-1][-1]:
            raise RemovalNetError("cannot split: the output is not the last value forward computes")
        classifier = _segment(gm, segments[-1], inputs[-1])
    else:
        classifier = nn.Identity()
    model = SplitModel(blocks, classifier, in_chans=in_chans, mean=mean, std=std,
                       default_layer=default_layer or max(1, len(blocks) // 2), arch=arch)
    model.split_points = names
    return model.record_source(module)


def unsplit(module: nn.Module, reason: str, *, in_chans: int = 3, mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None, arch: str = "custom") -> SplitModel:
    """``module`` as a one-block :class:`SplitModel` without split layers (``reason`` says why)."""
    model = SplitModel([module], nn.Identity(), in_chans=in_chans, mean=mean, std=std, default_layer=1, arch=arch,
                       unsplit_reason=reason)
    return model.record_source(module)
