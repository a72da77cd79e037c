"""FT(r): fine-tune the last ``r`` fraction of the victim's layers on D_sub (paper, section 4.1.2).

A positive model: the surrogate reuses the victim's parameters. "Layers" are the modules that own
parameters directly (convolutions, linear layers, normalisation layers; a container that owns a tensor
itself, such as a ViT's class token, is one layer too), ordered by their first call in a forward pass (a
module used without being called, such as the ``out_proj`` of ``nn.MultiheadAttention``, follows what
its parent runs). The last ``round(r x n)`` of the ``n`` layers (at least one) are trained with
cross-entropy on the D_sub labels; the others are frozen: no gradients, and they run in eval mode during
training, so their BatchNorm running statistics stay bit-identical to the victim's. The reference code counts parameter tensors instead of modules (``int(len(params) x r)``); with
modules a BatchNorm's weight, bias and statistics are frozen or trained together.

Defaults: ``ratio`` 0.5 (the paper reports r = 0.5 and 0.8), 1000 iterations, batch 128, SGD momentum 0.9
(paper), ``lr`` 0.01 (reference code's fine-tuning lr), weight decay 1e-4 and cosine schedule (reference
code).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import RemovalNetError
from .base import Attack, AttackContext, Param, register_attack

__all__ = ["FineTune", "layers_in_forward_order", "num_tuned_layers"]


def layers_in_forward_order(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for every module owning parameters directly, ordered by first forward call.

    ``example`` is one input batch; the forward pass runs in eval mode without gradients and leaves the
    model's mode and state unchanged. A module whose parameters are used without calling it (e.g. the
    ``out_proj`` of ``nn.MultiheadAttention``) is placed after everything its nearest called parent runs.
    """
    modules = list(model.named_modules())
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    handles = []
    for name, m in modules:
        def pre(mod, args, name=name):
            start.setdefault(name, len(start))

        def post(mod, args, out, name=name):
            end.setdefault(name, len(start))
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    def key(item: tuple[int, tuple[str, nn.Module]]) -> tuple[float, int]:
        reg, (name, _) = item
        if name in start:
            return float(start[name]), reg
        parent = name
        while parent:
            parent = parent.rpartition(".")[0]
            if parent in end:
                return end[parent] - 0.5, reg
        return float(len(modules)), reg

    owners = [(i, (name, m)) for i, (name, m) in enumerate(modules)
              if next(m.parameters(recurse=False), None) is not None]
    return [nm for _, nm in sorted(owners, key=key)]


def num_tuned_layers(ratio: float, n_layers: int) -> int:
    """Layers fine-tuned by FT(ratio) out of ``n_layers``: round half up of ratio x n, at least 1."""
    return min(n_layers, max(1, int(math.floor(ratio * n_layers + 0.5))))


@register_attack
class FineTune(Attack):
    """FT(r): train the last ``ratio`` fraction of the layers with CE on D_sub; freeze the rest."""

    name = "ft"
    baseline = True
    PARAMS = {
        "ratio": Param(0.5, float, low=0.0, high=1.0, low_open=True,
                       doc="fraction of layers fine-tuned, counted from the output (paper: 0.5, 0.8)"),
        "lr": Param(0.01, float, low=0.0, low_open=True, doc="SGD learning rate (reference code: 0.01)"),
    }

    def run(self, ctx: AttackContext) -> None:
        model = ctx.surrogate
        x0 = torch.as_tensor(ctx.substitute[0][0]).unsqueeze(0).to(ctx.device)
        layers = layers_in_forward_order(model, x0)
        if not layers:
            raise RemovalNetError("the victim has no parameters to fine-tune")
        k = num_tuned_layers(self.params["ratio"], len(layers))
        frozen = layers[:len(layers) - k]
        self.frozen_layers = [name for name, _ in frozen]
        self.tuned_layers = [name for name, _ in layers[len(layers) - k:]]
        frozen_modules = [m for _, m in frozen]
        for m in frozen_modules:
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)

        def step(x: torch.Tensor, y: torch.Tensor, t: int):
            for m in frozen_modules:  # every step: checkpoints switch the whole model back to train mode
                m.eval()
            loss = F.cross_entropy(model(x), y)
            return loss, {"ce": loss}

        try:
            self.fit(ctx, step)
        finally:
            model.requires_grad_(True)
