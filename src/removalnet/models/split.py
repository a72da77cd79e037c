"""Classifiers cut into blocks: F(x) = F^{l+}(F^{l-}(x)) (paper, section 2.1).

Every model in the toolkit is a :class:`SplitModel`. ``head(x, l)`` returns the output of block ``l``
(1-based, ``1 <= l <= num_blocks``) and ``tail(z, l)`` maps that latent through blocks ``l+1 ..
num_blocks`` and the classifier to logits, so ``tail(head(x, l), l) == model(x)`` for every ``l``.

Inputs are images in [0, 1]; the per-dataset normalisation is a fixed first step of the model (buffers,
not parameters), so adversarial perturbations and pixel-space budgets mean the same for every model.

:func:`split_module` turns a user's own ``nn.Module`` into a ``SplitModel`` by cutting its torch.fx graph
after named submodules.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.fx
from torch import nn

from ..utils import RemovalNetError

__all__ = ["Normalize", "SplitModel", "split_module"]


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
    """

    def __init__(self, blocks: Iterable[nn.Module], classifier: nn.Module, *, in_chans: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 default_layer: int | None = None, arch: str = "custom"):
        super().__init__()
        self.normalize = Normalize(mean, std, in_chans)
        self.blocks = nn.ModuleList(blocks)
        self.classifier = classifier
        if len(self.blocks) == 0:
            raise RemovalNetError("a SplitModel needs at least one block")
        self.in_chans = in_chans
        self.arch = arch
        self.default_layer = default_layer if default_layer is not None else max(1, len(self.blocks) // 2)
        self.check_layer(self.default_layer)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def check_layer(self, l: int) -> int:
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


class _BoundaryTracer(torch.fx.Tracer):
    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


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


def split_module(module: nn.Module, after: Sequence[str], *, in_chans: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 default_layer: int | None = None) -> SplitModel:
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
    try:
        tracer = _BoundaryTracer(set(names))
        graph = tracer.trace(module)
    except Exception as e:  # fx raises many types for untraceable control flow
        raise RemovalNetError(f"cannot split {type(module).__name__}: torch.fx could not trace it ({e})") from e
    gm = torch.fx.GraphModule(module, graph)
    order = [n for n in gm.graph.nodes]
    placeholders = [n for n in order if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise RemovalNetError(f"cannot split {type(module).__name__}: forward must take exactly one input")
    cuts: list[torch.fx.Node] = []
    for name in names:
        hits = [n for n in order if n.op == "call_module" and n.target == name]
        if len(hits) != 1:
            raise RemovalNetError(f"cannot split at {name!r}: it is called {len(hits)} times in forward, not once")
        cuts.append(hits[0])
    pos = {n: i for i, n in enumerate(order)}
    if [pos[c] for c in cuts] != sorted(pos[c] for c in cuts):
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
    if not segments[-1]:
        segments[-1] = []
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
    return SplitModel(blocks, classifier, in_chans=in_chans, mean=mean, std=std,
                      default_layer=default_layer or max(1, len(blocks) // 2), arch="custom")
