"""WP(p): global magnitude pruning of a fraction ``p`` of the weights, then fine-tuning (paper, 4.1.2).

A positive model: the surrogate reuses the victim's parameters. The weights of every convolution and
linear layer are pruned together with ``torch.nn.utils.prune.global_unstructured`` (``L1Unstructured``):
the ``round(p x N)`` entries of smallest magnitude over all N such weights are masked. The model is then
fine-tuned with cross-entropy on the D_sub labels while the masks hold the pruned weights at zero: they
are applied once before training and again after every optimiser step. The surrogate stays a plain model
throughout (the victim's state-dict keys, deep-copyable, every checkpoint loadable). ``prune``'s own
reparametrisation (``weight = weight_orig x mask`` recomputed in a forward pre-hook of the module) is
used only to compute the masks, on a scratch copy: that hook never runs for a weight used without calling
its module, such as the ``out_proj`` of the ``nn.MultiheadAttention`` in torchvision's ViT.

Defaults: ``ratio`` 0.5 (the paper reports p = 0.5 and 0.8); 300 iterations (the paper fine-tunes
100..500 iterations; the reference code 500); ``lr`` 0.005 (reference code's pruning lr); batch 128 and
SGD momentum 0.9 (paper); weight decay 1e-4 and cosine schedule (reference code). The reference code
prunes convolutions only, by a threshold; pruning the linear layers too follows the paper's "weights".
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from ..utils import RemovalNetError
from .base import Attack, AttackContext, Param, register_attack

__all__ = ["WeightPrune", "prunable_weights", "global_magnitude_masks"]

_PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` for every convolution and linear layer of ``model``, in registration order."""
    return [(m, "weight") for m in model.modules()
            if isinstance(m, _PRUNABLE) and isinstance(getattr(m, "weight", None), torch.Tensor)]


def global_magnitude_masks(model: nn.Module, ratio: float) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """``(weight, mask)`` for every conv/linear weight of ``model``: ``prune.global_unstructured`` with
    ``L1Unstructured`` and ``amount=ratio``, computed on a copy (``model`` is not modified)."""
    targets = prunable_weights(model)
    if not targets:
        raise RemovalNetError("weight pruning needs convolution or linear layers; the victim has none")
    scratch = copy.deepcopy(model)
    scratch_targets = prunable_weights(scratch)
    prune.global_unstructured(scratch_targets, pruning_method=prune.L1Unstructured, amount=ratio)
    return [(m.weight, s.weight_mask.detach().clone()) for (m, _), (s, _) in zip(targets, scratch_targets)]


@register_attack
class WeightPrune(Attack):
    """WP(p): prune the ``ratio`` smallest-magnitude conv/linear weights globally, then fine-tune."""

    name = "wp"
    baseline = True
    PARAMS = {
        "ratio": Param(0.5, float, low=0.0, high=1.0, low_open=True, high_open=True,
                       doc="fraction of the conv/linear weights pruned (paper: 0.5, 0.8)"),
        "iterations": Param(300, int, low=0, doc="fine-tuning steps after pruning (paper: 100..500)"),
        "lr": Param(0.005, float, low=0.0, low_open=True, doc="SGD learning rate (reference code: 0.005)"),
    }

    def run(self, ctx: AttackContext) -> None:
        model = ctx.surrogate
        masks = global_magnitude_masks(model, self.params["ratio"])

        @torch.no_grad()
        def apply_masks(t: int = 0) -> None:
            for weight, mask in masks:
                weight.mul_(mask)

        apply_masks()
        self.pruned = {"tensors": len(masks), "weights": sum(m.numel() for _, m in masks),
                       "pruned": int(sum(int((m == 0).sum()) for _, m in masks))}

        def step(x: torch.Tensor, y: torch.Tensor, t: int):
            loss = F.cross_entropy(model(x), y)
            return loss, {"ce": loss}

        self.fit(ctx, step, after_step=apply_masks)
