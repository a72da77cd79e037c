"""SAC: sample correlation (Guan et al., "Are You Stealing My Model? Sample Correlation for
Fingerprinting Deep Neural Networks", NeurIPS 2022). Not one of the paper's verifiers; a strong,
simple check that a user also wants.

Extraction picks ``num_samples`` probing inputs from the verifier's data (seeded):

* ``source="wrong"`` (SAC-w, default): samples the victim misclassifies (argmax F_V(x) != y), taken in
  a seeded random order. If the data holds fewer, all of them are used (at least 2 are needed).
* ``source="cutmix"`` (SAC-m): CutMix variants. Each sample gets a square patch of side
  ``2 * floor(cut_ratio * size / 2)`` pixels (cut_ratio 0.2) from a partner sample, centred in a corner
  region (centre coordinates outside the middle 2/3 of both axes). ``cutmix="official"`` (default), as the
  reference ``cut_mix.py``: the first ``num_samples`` samples of the verifier's data, partners from one
  random permutation of them (a sample may be its own partner, and then stays unchanged) and one patch
  position for all; ``"per_sample"``: a seeded random subset, every sample its own partner (never itself)
  and its own patch position.

Score: for a model F, the N x N correlation matrix ``C_F[a, b] = (1 - cos(F(x_a), F(x_b))) / 2`` (the
reference's ``correlation``: cosine distance scaled to [0, 1]), and ``SAC = mean |C_S - C_V|`` over all
N^2 entries (a distance; 0 for identical outputs). ``output``: "logits" (default; the reference
correlates raw model outputs) or "softmax".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..params import Param
from ..utils import RemovalNetError
from .base import Fingerprint, Metric, Verifier, batched_logits, dataset_tensors, register_verifier

__all__ = ["SAC", "correlation_matrix", "sac_distance", "cutmix", "cutmix_boxes", "paste_patches"]

SOURCES = ("wrong", "cutmix")
CUTMIX_MODES = ("official", "per_sample")
OUTPUTS = ("logits", "softmax")


def correlation_matrix(outputs: torch.Tensor) -> torch.Tensor:
    """N x N matrix (1 - cos(o_a, o_b)) / 2 of the rows of ``outputs`` (float64)."""
    o = F.normalize(outputs.double(), dim=-1, eps=1e-12)
    return (1.0 - o @ o.T) / 2.0


def sac_distance(c_v: torch.Tensor, c_s: torch.Tensor) -> float:
    """mean |C_S - C_V| over all entries."""
    if c_v.shape != c_s.shape:
        raise RemovalNetError(f"correlation matrices differ in shape: {tuple(c_v.shape)} vs {tuple(c_s.shape)}")
    return float((c_s.double() - c_v.double()).abs().mean())


def cutmix_boxes(n: int, h: int, w: int, generator: torch.Generator | None = None, cut_ratio: float = 0.2,
                 mode: str = "official") -> tuple[torch.Tensor, torch.Tensor]:
    """The random choices of :func:`cutmix` for ``n`` samples of ``h`` x ``w`` pixels: ``partner`` (n, the
    sample each patch comes from) and ``boxes`` (n x 4: y0, y1, x0, x1, the patch rows y0:y1 and columns
    x0:x1, clipped to the image). ``mode="official"``: partners from one random permutation (a sample may be
    its own partner), one box for all; ``"per_sample"``: partners never the sample itself, a box each."""
    if n < 2:
        raise RemovalNetError("cutmix needs at least 2 samples")
    if mode not in CUTMIX_MODES:
        raise RemovalNetError(f"cutmix mode must be one of {CUTMIX_MODES}, got {mode!r}")
    if mode == "official":
        partner = torch.randperm(n, generator=generator)
    else:
        partner = (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n   # never the sample itself
    half_h, half_w = int(h * cut_ratio) // 2, int(w * cut_ratio) // 2
    draws = 1 if mode == "official" else n

    def corner_centres(size: int) -> torch.Tensor:
        # the reference redraws a centre while size/6 < c < 5 size/6
        allowed = torch.tensor([c for c in range(size) if not size / 6 < c < 5 * size / 6])
        return allowed[torch.randint(0, len(allowed), (draws,), generator=generator)].expand(n)

    cy, cx = corner_centres(h), corner_centres(w)
    boxes = torch.stack([(cy - half_h).clamp(min=0), (cy + half_h).clamp(max=h),
                         (cx - half_w).clamp(min=0), (cx + half_w).clamp(max=w)], dim=1)
    return partner, boxes


def paste_patches(x: torch.Tensor, partner: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``x`` with sample a's box ``boxes[a]`` (y0, y1, x0, x1) replaced by the same pixels of ``x[partner[a]]``."""
    out = x.clone()
    for a, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        out[a, :, y0:y1, x0:x1] = x[int(partner[a]), :, y0:y1, x0:x1]
    return out


def cutmix(x: torch.Tensor, generator: torch.Generator | None = None, cut_ratio: float = 0.2,
           mode: str = "official") -> torch.Tensor:
    """CutMix variants of ``x`` (N x C x H x W, N >= 2): a corner-region patch from a partner sample each
    (:func:`cutmix_boxes` draws the partners and patches)."""
    n, _, h, w = x.shape
    partner, boxes = cutmix_boxes(n, h, w, generator, cut_ratio, mode)
    return paste_patches(x, partner, boxes)


@register_verifier
class SAC(Verifier):
    """Sample correlation: metric SAC (distance) on misclassified samples or CutMix variants.

    Parameters: ``PARAMS`` (``removalnet verify --list`` prints them).
    """

    name = "sac"
    metrics = (Metric("SAC", "distance"),)
    PARAMS = {
        "num_samples": Param(100, int, low=2, doc="samples whose output correlations are compared"),
        "source": Param("wrong", str, choices=SOURCES,
                        doc="samples: the victim's misclassified ones or CutMix variants"),
        "cut_ratio": Param(0.2, float, low=0.0, low_open=True, high=1.0,
                           doc="CutMix patch side as a fraction of the image side"),
        "output": Param("logits", str, choices=OUTPUTS, doc="model outputs correlated: logits or softmax"),
        "cutmix": Param("official", str, choices=CUTMIX_MODES,
                        doc="SAC-m samples: official (the first ones, one permutation, one box) or per_sample"),
    }

    def _outputs(self, model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        z = batched_logits(model, x, batch_size=self.params["batch_size"], device=device)
        return F.softmax(z, dim=-1) if self.params["output"] == "softmax" else z

    def _extract(self, victim: nn.Module, data: Dataset, *, seed: int, generator: torch.Generator,
                 device: torch.device):
        p = self.params
        n_data = len(data)  # type: ignore[arg-type]
        meta: dict = {}
        if p["source"] == "cutmix":           # official: the first batch, in order; per_sample: a random subset
            official = p["cutmix"] == "official"
            idx = torch.arange(min(n_data, p["num_samples"])) if official else \
                torch.randperm(n_data, generator=generator)[:p["num_samples"]]
            x, _ = dataset_tensors(data, idx.tolist())
            if len(x) < 2:
                raise RemovalNetError("SAC with source='cutmix' needs at least 2 samples in the verifier's data")
            x = cutmix(x, generator, p["cut_ratio"], p["cutmix"])
        else:  # misclassified by the victim, scanned in seeded random order, one batch at a time
            order = torch.randperm(n_data, generator=generator)
            chosen, xs = [], []
            scan = max(p["batch_size"], p["num_samples"])
            for lo in range(0, n_data, scan):
                part = order[lo:lo + scan]
                xb, yb = dataset_tensors(data, part.tolist())
                wrong = batched_logits(victim, xb, batch_size=p["batch_size"], device=device).argmax(1) != yb
                chosen.append(part[wrong])
                xs.append(xb[wrong])
                if sum(len(c) for c in chosen) >= p["num_samples"]:
                    break
            idx, x = torch.cat(chosen)[:p["num_samples"]], torch.cat(xs)[:p["num_samples"]]
            if len(idx) < 2:
                raise RemovalNetError(f"SAC with source='wrong' needs at least 2 samples the victim misclassifies; "
                                      f"the verifier's data has {len(idx)}")
            if len(idx) < p["num_samples"]:
                meta["note"] = (f"the victim misclassifies only {len(idx)} samples of the data; "
                                f"num_samples={p['num_samples']} was asked")
        corr = correlation_matrix(self._outputs(victim, x, device))
        meta["num_samples"] = len(x)
        return {"indices": idx, "samples": x, "correlation_victim": corr.float()}, meta

    def _score(self, fp: Fingerprint, victim: nn.Module, suspect: nn.Module, *, device: torch.device):
        x = fp.tensors["samples"]
        c_v = self.victim_outputs(fp, "samples", lambda: correlation_matrix(self._outputs(victim, x, device)), device)
        c_s = correlation_matrix(self._outputs(suspect, x, device))
        return {"SAC": sac_distance(c_v, c_s)}
