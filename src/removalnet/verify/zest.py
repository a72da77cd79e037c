"""ZEST: architecture-independent model distance from LIME explanations (Jia et al., ICLR 2021; paper 2.3).

Extraction (once per victim):

1. ``num_images`` reference images: the first ones of the verifier's data, in order, as the reference
   ``get_reference_dataset`` takes the first 128 of its split (``order="random"``: a seeded random draw).
   The reference takes them from the training split; the verifier here only ever holds its own data
   (the test split in the experiments), never the training data an attacker may share.
2. Each image is cut into segments with scikit-image's quickshift (kernel_size 4, ratio 0.2, max_dist
   200: the LIME/ZEST reference settings).
3. ``num_masks`` random binary masks over the segments of each image, the first one all ones.
   A masked segment is set to zero in the model's NORMALISED input space: its pixels get the
   channel mean of the victim's normalisation (``victim.normalize.mean``), whose normalised value is 0.
   Suspect and victim see the same pixel-space inputs.
4. For every image, ordinary least squares WITHOUT intercept, as the reference
   ``lime_pytorch.train_lime_model`` fits it: ``W = pinv(A^T A) A^T Y`` with A the image's masks
   (num_masks x segments) and Y the model's output vectors on the masked images (batched over images;
   a mask that repeats among an image's masks is computed once, its output used for every repeat).
   The per-image coefficient matrix (segments x classes) is the LIME explanation; the signature is the
   concatenation of these matrices over all images.

Score: ``ZEST-L2`` = ||sig_V - sig_S||_2 and ``ZEST-Cos`` = 1 - cos(sig_V, sig_S) (the reference's
``compute_distance``), both distances; identical signatures give exactly 0 for both (the cosine distance
is computed as ||a/|a| - b/|b|||^2 / 2, which is exact there and accurate near 0, where 1 - cos cancels).
The victim's signature is stored in the fingerprint, so scoring runs only the suspect.

Choices where the references differ, each a parameter:

* ``image_range`` (default 255): the value range of the images handed to quickshift. The ZEST
  reference rescales images to 0..255 before LIME's quickshift (with its default Lab conversion), so
  colour differences are on that scale. With images in [0, 1] the same settings leave 1-2 segments
  on a 28x28 image, which makes the explanation nearly empty; at 0..255 Fashion-MNIST images get
  about 5-11 segments. Grayscale images are repeated to three channels so that the Lab conversion
  applies to them as well (their a/b channels are 0, L carries the intensity).
* ``intercept`` (default False, the ZEST reference's fit on the masks alone): ``True`` fits the OLS
  with a constant column, as LIME's own regression does, so the segment coefficients are the effects of
  switching a segment on; the intercept (the output on the fully masked image) is then stored but is
  not part of the signature.
* ``output`` (default "logits"): the ZEST reference regresses the raw model outputs (logits);
  "softmax" regresses probabilities, as LIME does for classifiers.

The reference code also matches output columns between the two models by a greedy assignment
(for models whose class order may differ); here both models classify the same classes in the same
order, and columns are compared as they are.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage.segmentation import quickshift
from torch import nn
from torch.utils.data import Dataset

from ..params import Param
from ..utils import RemovalNetError
from .base import Fingerprint, Metric, Verifier, dataset_tensors, input_normalization, register_verifier

__all__ = ["ZEST", "segment_images", "random_masks", "masked_inputs", "lime_pinv", "lime_signature",
           "zest_distances"]

OUTPUTS = ("logits", "softmax")
ORDERS = ("first", "random")


def segment_images(images: torch.Tensor, *, kernel_size: float = 4, ratio: float = 0.2, max_dist: float = 200,
                   image_range: float = 255.0, seed: int = 0) -> torch.Tensor:
    """Quickshift segment maps of ``images`` (N x C x H x W in [0, 1], C = 1 or 3): N x H x W int64.

    Labels are 0 .. S_i - 1 for image i (relabelled in order of first appearance). Grayscale images are
    repeated to three channels; quickshift runs in Lab space on ``images * image_range``.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise RemovalNetError(f"ZEST segments images of shape N x (1 or 3) x H x W, got {tuple(images.shape)}")
    out = []
    for img in images.detach().cpu().double().numpy():
        hwc = np.moveaxis(img, 0, -1)
        if hwc.shape[-1] == 1:
            hwc = np.repeat(hwc, 3, axis=-1)
        seg = quickshift(hwc * image_range, kernel_size=kernel_size, ratio=ratio, max_dist=max_dist,
                         convert2lab=True, rng=seed)
        _, first = np.unique(seg.ravel(), return_index=True)
        order = np.argsort(first)                      # labels in order of first appearance
        remap = np.empty(len(order), dtype=np.int64)
        remap[order] = np.arange(len(order))
        _, inv = np.unique(seg.ravel(), return_inverse=True)
        out.append(torch.from_numpy(remap[inv].reshape(seg.shape)))
    return torch.stack(out)


def random_masks(num_segments: torch.Tensor, num_masks: int, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """N x num_masks x S_max uint8 masks: uniform 0/1 on each image's segments, row 0 all ones.

    Columns beyond an image's own segment count are 0 (padding; they get zero coefficients).
    """
    n, smax = len(num_segments), int(num_segments.max())
    masks = torch.randint(0, 2, (n, num_masks, smax), generator=generator, dtype=torch.uint8)
    masks[:, 0, :] = 1
    valid = torch.arange(smax)[None, :] < num_segments[:, None]          # N x S_max
    return masks * valid[:, None, :].to(torch.uint8)


def masked_inputs(images: torch.Tensor, segments: torch.Tensor, masks: torch.Tensor, fill: torch.Tensor
                  ) -> torch.Tensor:
    """Inputs for rows of masks: ``images`` B x C x H x W, ``segments`` B x H x W, ``masks`` B x S (0/1).

    Pixels of segments whose mask entry is 0 are set to ``fill`` (C values: the normalisation mean).
    """
    b, c, h, w = images.shape
    on = torch.gather(masks.to(images.dtype), 1, segments.reshape(b, h * w)).reshape(b, 1, h, w)
    fill = fill.to(images).reshape(1, c, 1, 1)
    return fill + on * (images - fill)


def lime_pinv(masks: torch.Tensor, intercept: bool = False) -> torch.Tensor:
    """Batched pseudo-inverse of the design matrices (float64): N x P x num_masks, P = S_max (+1).

    With ``intercept`` the first column of each design matrix is constant 1 (row 0 of the result is
    the intercept). Padding columns are zero, so the minimum-norm solution gives them coefficient 0.
    """
    a = masks.double()
    if intercept:
        a = torch.cat([torch.ones_like(a[..., :1]), a], dim=-1)
    return torch.linalg.pinv(a)


def lime_signature(model: nn.Module, images: torch.Tensor, segments: torch.Tensor, masks: torch.Tensor,
                   fill: torch.Tensor, *, intercept: bool = False, output: str = "logits", batch_size: int = 128,
                   device: torch.device | str = "cpu", group: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """OLS coefficients of ``model``'s outputs on the masks, for every image.

    Returns (coefficients N x S_max x K float32, intercepts N x K float32; zeros without intercept).
    Each image's distinct masks go through the model once (an image of S segments has at most 2^S of them:
    with the few segments quickshift finds on small images most of the 1000 random masks repeat), in chunks
    of ``batch_size`` inputs; every mask row, repeats included, enters the least squares as in the reference.
    The solves run for ``group`` images at a time (bounding memory to group x num_masks x K).
    """
    if output not in OUTPUTS:
        raise RemovalNetError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    n, m, _ = masks.shape
    coefs, icepts = [], []
    images_d, segments_d, fill_d = (t.to(device) for t in (images, segments, fill))
    with torch.inference_mode():     # the results, concatenated outside it, are ordinary tensors
        for g0 in range(0, n, group):
            g1 = min(n, g0 + group)
            uniq = [torch.unique(masks[i], dim=0, return_inverse=True) for i in range(g0, g1)]
            rows = torch.cat([u for u, _ in uniq]).to(device)                  # U x S_max distinct (image, mask)
            sizes = torch.tensor([len(u) for u, _ in uniq])
            img = torch.repeat_interleave(torch.arange(g0, g1), sizes).to(device)
            ys = []
            for lo in range(0, len(rows), batch_size):
                sl = slice(lo, lo + batch_size)
                y = model(masked_inputs(images_d[img[sl]], segments_d[img[sl]], rows[sl], fill_d)).float()
                if output == "softmax":
                    y = F.softmax(y, dim=-1)
                ys.append(y.cpu())
            y_u = torch.cat(ys)
            start = torch.cumsum(sizes, 0) - sizes
            y = torch.stack([y_u[start[j] + inv] for j, (_, inv) in enumerate(uniq)]).double()   # G x m x K
            w = lime_pinv(masks[g0:g1], intercept) @ y                     # G x P x K
            if intercept:
                icepts.append(w[:, 0].float())
                w = w[:, 1:]
            else:
                icepts.append(torch.zeros(w.shape[0], w.shape[2]))
            coefs.append(w.float())
    return torch.cat(coefs), torch.cat(icepts)


def zest_distances(sig_a: torch.Tensor, sig_b: torch.Tensor) -> tuple[float, float]:
    """(L2 distance, cosine distance 1 - cos) between two signatures, flattened, in float64.

    Identical signatures give exactly (0.0, 0.0). The cosine distance is ||a/|a| - b/|b|||^2 / 2 (equal to
    1 - cos), so it does not depend on how a CPU's kernels round a dot product near cos = 1.
    """
    if sig_a.shape != sig_b.shape:
        raise RemovalNetError(f"ZEST signatures differ in shape: {tuple(sig_a.shape)} vs {tuple(sig_b.shape)} "
                              "(the two models must have the same number of classes)")
    a, b = sig_a.double().flatten(), sig_b.double().flatten()
    if torch.equal(a, b):
        return 0.0, 0.0
    l2 = float(torch.linalg.vector_norm(a - b))
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na == 0.0 or nb == 0.0:
        cos_d = 1.0                                   # one zero signature (both zero: equal, handled above)
    else:
        cos_d = min(2.0, float(torch.linalg.vector_norm(a / na - b / nb) ** 2 / 2))
    return l2, cos_d


@register_verifier
class ZEST(Verifier):
    """ZEST (paper 2.3): LIME signatures on reference images; metrics ZEST-L2 and ZEST-Cos (distances).

    Parameters: ``PARAMS`` (defaults: the ZEST reference's; ``removalnet verify --list`` prints them).
    """

    name = "zest"
    metrics = (Metric("ZEST-L2", "distance"), Metric("ZEST-Cos", "distance"))
    PARAMS = {
        "num_images": Param(128, int, low=1, doc="reference images taken from the verifier's data (reference: 128)"),
        "order": Param("first", str, choices=ORDERS,
                       doc="reference images: the first of the data (reference) or a seeded random draw"),
        "num_masks": Param(1000, int, low=2, doc="random segment masks per image, the first all ones (reference 1000)"),
        "kernel_size": Param(4, float, low=0.0, low_open=True, doc="quickshift kernel size (reference: 4)"),
        "ratio": Param(0.2, float, low=0.0, high=1.0, doc="quickshift colour/space ratio (reference: 0.2)"),
        "max_dist": Param(200, float, low=0.0, low_open=True, doc="quickshift maximum distance (reference: 200)"),
        "image_range": Param(255, float, low=0.0, low_open=True, doc="value range of the images quickshift sees"),
        "intercept": Param(False, bool, doc="fit the OLS with a constant column (reference: no)"),
        "output": Param("logits", str, choices=OUTPUTS, doc="outputs the explanation regresses (reference: logits)"),
    }

    def _signature(self, model: nn.Module, t: dict[str, torch.Tensor], device: torch.device):
        return lime_signature(model, t["images"], t["segments"].long(), t["masks"], t["fill"],
                              intercept=self.params["intercept"], output=self.params["output"],
                              batch_size=self.params["batch_size"], device=device)

    def _extract(self, victim: nn.Module, data: Dataset, *, seed: int, generator: torch.Generator,
                 device: torch.device):
        p = self.params
        n = min(p["num_images"], len(data))  # type: ignore[arg-type]
        if p["order"] == "first":
            idx = torch.arange(n)
        else:
            idx = torch.randperm(len(data), generator=generator)[:n]  # type: ignore[arg-type]
        images, _ = dataset_tensors(data, idx.tolist())
        segments = segment_images(images, kernel_size=p["kernel_size"], ratio=p["ratio"], max_dist=p["max_dist"],
                                  image_range=p["image_range"], seed=seed)
        num_segments = segments.flatten(1).max(dim=1).values + 1
        masks = random_masks(num_segments, p["num_masks"], generator)
        fill, _ = input_normalization(victim, images.shape[1])
        tensors = {"indices": idx, "images": images, "segments": segments.to(torch.int32),
                   "num_segments": num_segments.to(torch.int32), "masks": masks, "fill": fill}
        coef, icept = self._signature(victim, tensors, device)
        tensors.update(signature=coef, intercept=icept)
        meta = {"num_images": n, "num_classes": int(coef.shape[-1]),
                "segments_mean": round(float(num_segments.float().mean()), 3),
                "segments_min": int(num_segments.min()), "segments_max": int(num_segments.max())}
        if n < p["num_images"]:
            meta["note"] = f"the data holds only {n} images; num_images={p['num_images']} was asked"
        return tensors, meta

    def _score(self, fp: Fingerprint, victim: nn.Module, suspect: nn.Module, *, device: torch.device):
        sig_s, _ = self._signature(suspect, fp.tensors, device)
        l2, cos_d = zest_distances(fp.tensors["signature"], sig_s)
        if not (math.isfinite(l2) and math.isfinite(cos_d)):
            raise RemovalNetError("ZEST distance is not finite (the suspect's outputs contain inf/nan)")
        return {"ZEST-L2": l2, "ZEST-Cos": cos_d}
