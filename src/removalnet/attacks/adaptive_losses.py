"""Loss terms of removalnet-plus aimed at single verifiers, built from the attacker's own substitute images.

Each term draws its inputs with the verifier's own functions (so they follow the verifier's distribution
exactly) but never sees the verifier's inputs, and distils the surrogate's output on them towards a target
with the temperature-scaled KL of the other distillation terms: ``T^2 x KL(target || softmax(F_S(x') / T))``.

* **Masking consistency** (against ZEST, :mod:`removalnet.verify.zest`): the attacker's images are cut into
  segments once with ZEST's :func:`~removalnet.verify.zest.segment_images` (ZEST's default quickshift
  settings); every step draws one mask per image as ZEST draws its masks
  (:func:`~removalnet.verify.zest.random_masks`: uniform 0/1 per segment) and fills the masked segments with
  ZEST's fill (the channel mean of the victim's normalisation, :func:`~removalnet.verify.zest.masked_inputs`).
  ZEST's signature is the least-squares response of the outputs to the masked segments; distilling the
  masked outputs towards a target other than the victim's own masked outputs changes that response while
  the clean term keeps the clean outputs. Targets (``mask_target``): ``clean``, the victim's output on the
  unmasked image (a surrogate insensitive to the masks: its segment response flattens; the class is kept,
  so the term does not fight the clean term); ``uniform``, the uniform distribution (masked inputs carry no
  class: the response differs more, at a higher risk to accuracy on partly occluded inputs).
* **CutMix targets** (against SAC-m, :mod:`removalnet.verify.sac`): CutMix variants of the attacker's images
  with SAC's own :func:`~removalnet.verify.sac.cutmix_boxes` (a corner patch from another image of the
  batch). Targets (``cutmix_target``): ``area``, the mixture ``(1 - lam) p_V(x_a) + lam p_V(x_b)`` of the
  victim's tempered softmax outputs on the two source images, lam the patch's share of the pixels (CutMix's
  label mixing); ``uniform``. SAC-m correlates the outputs on such samples; moving them off the victim's
  own outputs on them moves the correlation matrix.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..verify.base import input_normalization
from ..verify.sac import SAC, cutmix_boxes, paste_patches
from ..verify.zest import ZEST, masked_inputs, random_masks, segment_images

__all__ = ["MASK_TARGETS", "CUTMIX_TARGETS", "tempered_kl", "zest_segments", "zest_fill", "masked_batch",
           "mask_targets", "cutmix_batch", "cutmix_targets"]

MASK_TARGETS = ("clean", "uniform")
CUTMIX_TARGETS = ("area", "uniform")
#: SAC's default patch side (fraction of the image side)
SAC_CUT_RATIO = SAC.PARAMS["cut_ratio"].default


def tempered_kl(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 x KL(target || softmax(logits / T))``, batch mean; ``target`` are probabilities."""
    return F.kl_div(F.log_softmax(logits / temperature, 1), target, reduction="batchmean") * temperature * temperature


# ---- masking consistency (ZEST) ----------------------------------------------------------------------------

def zest_segments(images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ZEST's segment maps of ``images`` (N x C x H x W, CPU) with the ZEST verifier's default quickshift
    settings, and each image's number of segments: (N x H x W int64, N int64)."""
    d = {k: ZEST.PARAMS[k].default for k in ("kernel_size", "ratio", "max_dist", "image_range")}
    segments = segment_images(images.cpu(), seed=seed, **d)
    return segments, segments.flatten(1).max(dim=1).values + 1


def zest_fill(victim: torch.nn.Module, channels: int) -> torch.Tensor:
    """ZEST's fill value of a masked segment: the channel mean of the victim's normalisation (C values)."""
    return input_normalization(victim, channels)[0]


def masked_batch(images: torch.Tensor, segments: torch.Tensor, num_segments: torch.Tensor, fill: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random ZEST mask per image and the masked images: (B x C x H x W on ``images``' device, masks
    B x S_max uint8 on the CPU). The mask is row 1 of ``random_masks(num_segments, 2)``: row 0 of ZEST's
    masks is the all-ones mask, every other row is uniform 0/1 over the image's segments."""
    masks = random_masks(num_segments.cpu(), 2, generator)[:, 1]
    dev = images.device
    return masked_inputs(images, segments.to(dev), masks.to(dev), fill.to(dev)), masks


def mask_targets(kind: str, victim_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The target distributions of the masked images from the victim's logits on the CLEAN images."""
    if kind == "clean":
        return F.softmax(victim_logits / temperature, 1)
    if kind == "uniform":
        return torch.full_like(victim_logits, 1.0 / victim_logits.shape[1])
    raise ValueError(f"unknown mask target {kind!r}")


# ---- CutMix targets (SAC-m) ---------------------------------------------------------------------------------

def cutmix_batch(images: torch.Tensor, generator: torch.Generator, cut_ratio: float = SAC_CUT_RATIO
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAC's CutMix variants of ``images`` (B >= 2): (mixed images, partner B (positions in the batch), lam B
    float32: the share of each mixed image's pixels that comes from its partner). The attacker draws a partner
    other than the sample and a corner box per sample (SAC's ``per_sample`` sampler): every image of a batch is
    mixed, where the official sampler's one box for all can fall on a blank corner of every image."""
    n, _, h, w = images.shape
    partner, boxes = cutmix_boxes(n, h, w, generator, cut_ratio, mode="per_sample")
    lam = ((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])).float() / (h * w)
    return paste_patches(images, partner.to(images.device), boxes), partner, lam


def cutmix_targets(kind: str, victim_logits: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """Target distributions of CutMix'd images from the victim's logits on the source images (batch order)."""
    if kind == "area":
        p = F.softmax(victim_logits / temperature, 1)
        lam = lam.to(p)[:, None]
        return (1 - lam) * p + lam * p[partner.to(p.device)]
    if kind == "uniform":
        return torch.full_like(victim_logits, 1.0 / victim_logits.shape[1])
    raise ValueError(f"unknown cutmix target {kind!r}")
