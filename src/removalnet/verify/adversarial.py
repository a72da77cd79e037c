"""Projected gradient descent (Madry et al., 2018) on inputs in [0, 1], tensors in and tensors out.

Used by the verifiers that probe a model with adversarial inputs (ModelDiff's input pairs, DeepJudge's
RobD/JSD). ``pgd`` maximises a per-sample loss ``loss_fn(model(x_adv), y)`` with sign-gradient steps of
size ``alpha``, projecting after every step onto the L-inf ball of radius ``eps`` around ``x`` and onto
[0, 1]. FGSM is ``pgd(..., steps=1, alpha=eps, random_start=False)``. With ``project=False`` the iterate is
clipped to [0, 1] only, as DeepJudge's official ``adversarial_attacks.PGD`` / ``FGSM`` do (``eps`` then
only bounds the random start).

Gradients are taken with ``torch.autograd.grad`` with respect to the input only, so no ``.grad`` is
written into the model's parameters; the model's train/eval mode is left as the caller set it (the
verifiers run it in eval mode). The random start is drawn for the whole input at once from a CPU
``torch.Generator``, so it does not depend on ``batch_size`` or on the device.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import RemovalNetError

__all__ = ["pgd", "ce_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of ``logits`` against integer labels ``y`` (the default PGD objective)."""
    return F.cross_entropy(logits, y, reduction="none")


def _check(name: str, value, low: float, *, integer: bool = False, allow_equal: bool = True) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (value < low if allow_equal else value <= low):
        kind = "an integer" if integer else "a number"
        op = ">=" if allow_equal else ">"
        raise RemovalNetError(f"{name} must be {kind} {op} {low}, got {value!r}")


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, eps: float, alpha: float,
        steps: int, random_start: bool = True, loss_fn: LossFn | None = None, targeted: bool = False,
        generator: torch.Generator | None = None, batch_size: int | None = None,
        project: bool = True) -> torch.Tensor:
    """L-inf PGD: returns ``x_adv`` with ``0 <= x_adv <= 1`` and, with ``project``, ``|x_adv - x| <= eps``
    (same device as ``x``).

    Args:
        model: maps a batch of images in [0, 1] to outputs (logits).
        x: inputs ``B x C x H x W`` in [0, 1].
        y: a tensor aligned with ``x`` on its first axis, passed to ``loss_fn`` (labels for the default
            cross-entropy, reference outputs for other objectives). Required by the default loss.
        eps, alpha, steps: the radius, the step size and the number of sign-gradient steps.
        random_start: start from a uniform point of the eps-ball (drawn with ``generator``).
        loss_fn: ``loss_fn(outputs, y) -> per-sample loss`` to MAXIMISE; default cross-entropy on ``y``.
        targeted: minimise the loss instead (with the default loss: move towards the labels ``y``).
        generator: a CPU ``torch.Generator`` for the random start (None: the global RNG).
        batch_size: process ``x`` in chunks of this size (None: all at once). Samples are independent,
            so chunking changes nothing but memory.
        project: project every iterate onto the eps-ball around ``x`` (False: clip to [0, 1] only).
    """
    _check("eps", eps, 0.0)
    _check("alpha", alpha, 0.0, allow_equal=False)
    _check("steps", steps, 0, integer=True)
    if batch_size is not None:
        _check("batch_size", batch_size, 1, integer=True)
    if x.dim() < 2 or x.shape[0] == 0:
        raise RemovalNetError(f"pgd needs a non-empty batch of inputs, got shape {tuple(x.shape)}")
    if loss_fn is None:
        if y is None:
            raise RemovalNetError("pgd with the default cross-entropy loss needs labels y")
        loss_fn = ce_loss
    if y is not None and y.shape[0] != x.shape[0]:
        raise RemovalNetError(f"y has {y.shape[0]} rows for {x.shape[0]} inputs")

    x = x.detach()
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator, dtype=torch.float32, device="cpu")
        start = (x + (noise.to(device=x.device, dtype=x.dtype) * 2 - 1) * eps).clamp(0.0, 1.0)
    else:
        start = x.clone()
    sign = -1.0 if targeted else 1.0
    bs = x.shape[0] if batch_size is None else batch_size
    out = []
    with torch.enable_grad():
        for lo in range(0, x.shape[0], bs):
            xb = x[lo:lo + bs]
            yb = None if y is None else y[lo:lo + bs]
            adv = start[lo:lo + bs].clone()
            for _ in range(steps):
                adv.requires_grad_(True)
                loss = loss_fn(model(adv), yb)
                if loss.dim() != 1 or loss.shape[0] != adv.shape[0]:
                    raise RemovalNetError(
                        f"loss_fn must return one loss per sample, got shape {tuple(loss.shape)}")
                (grad,) = torch.autograd.grad(loss.sum() * sign, adv)
                with torch.no_grad():
                    adv = adv + alpha * grad.sign()
                    if project:
                        adv = torch.min(torch.max(adv, xb - eps), xb + eps)
                    adv = adv.clamp(0.0, 1.0)
            out.append(adv.detach())
    return torch.cat(out)
