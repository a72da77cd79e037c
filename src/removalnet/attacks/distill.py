"""Distill: feature distillation from the victim (paper, section 4.1.2).

A positive model: as in the paper, the surrogate starts from the victim's parameters ("fine-tuning,
weight pruning, and distillation are direct parameters reused from the victim model") and is trained on
D_sub with

    L = CE(F_S(x), y) + feat_weight x sum_l MSE(F_S^{l-}(x), F_V^{l-}(x))
        + kd_weight x T^2 x KL(softmax(F_V(x) / T) || softmax(F_S(x) / T)),

where y are the D_sub labels, the feature term runs over the block outputs at ``layer`` (default: the
victim's ``default_layer``) or over every block (``all_layers``), and the temperature knowledge-distillation
term (Hinton et al.) is off by default.

Defaults: ``feat_weight`` 1 and ``lr`` 0.005 (reference code: feat_lmda 1, lr 5e-3, which matches features
at every block of a ResNet and at the last two of a VGG); 1000 iterations, batch 128, SGD momentum 0.9
(paper); weight decay 1e-4 and cosine schedule (reference code's common settings).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.split import SplitModel
from ..utils import RemovalNetError
from .base import Attack, AttackContext, Param, register_attack

__all__ = ["Distill"]


@register_attack
class Distill(Attack):
    """Feature distillation: CE on D_sub labels + MSE to the victim's block outputs (+ optional KD)."""

    name = "distill"
    baseline = True
    PARAMS = {
        "lr": Param(0.005, float, low=0.0, low_open=True, doc="SGD learning rate (reference code: 0.005)"),
        "feat_weight": Param(1.0, float, low=0.0, doc="weight of the feature MSE term (reference code: 1)"),
        "layer": Param(None, int, low=1, nullable=True,
                       doc="block whose output is matched (null: the victim's default_layer)"),
        "all_layers": Param(False, bool, doc="match the outputs of every block instead of one"),
        "kd_weight": Param(0.0, float, low=0.0, doc="weight of the temperature KD term (0: off)"),
        "temperature": Param(4.0, float, low=0.0, low_open=True, doc="KD temperature T"),
    }

    def validate_params(self, params: dict) -> None:
        if params["all_layers"] and params["layer"] is not None:
            raise RemovalNetError("parameter 'layer' must be null when 'all_layers' is true "
                                  "(every block is matched)")

    def validate_inputs(self, victim: SplitModel, substitute) -> None:
        super().validate_inputs(victim, substitute)
        if self.params["layer"] is not None:
            victim.check_layer(self.params["layer"])

    def run(self, ctx: AttackContext) -> None:
        p = self.params
        model, victim = ctx.surrogate, ctx.victim
        layer = p["layer"] if p["layer"] is not None else victim.default_layer
        T, kd_weight, feat_weight = p["temperature"], p["kd_weight"], p["feat_weight"]

        def features_and_logits(m: SplitModel, x: torch.Tensor):
            if p["all_layers"]:
                feats = m.block_outputs(x)
                return feats, m.classifier(feats[-1])
            z = m.head(x, layer)
            return [z], m.tail(z, layer)

        def step(x: torch.Tensor, y: torch.Tensor, t: int):
            with torch.no_grad():
                v_feats, v_logits = features_and_logits(victim, x)
            s_feats, s_logits = features_and_logits(model, x)
            ce = F.cross_entropy(s_logits, y)
            feat = torch.stack([F.mse_loss(s, v) for s, v in zip(s_feats, v_feats)]).sum()
            loss = ce + feat_weight * feat
            logs = {"ce": ce, "feat": feat}
            if kd_weight > 0:
                kd = F.kl_div(F.log_softmax(s_logits / T, dim=1), F.softmax(v_logits / T, dim=1),
                              reduction="batchmean") * (T * T)
                loss = loss + kd_weight * kd
                logs["kd"] = kd
            logs["loss"] = loss
            return loss, logs

        self.fit(ctx, step)
