"""Scale-invariant alignment-aware DeepJudge: DeepJudge's LOD and LAD on per-neuron standardised activations,
after matching the suspect's channels to the victim's.

DeepJudge's LOD (eq. 1) takes the L2 norm of the difference of the neuron values, LAD (eq. 2; the official
``LAD``) compares per test case min-max normalised, thresholded neuron vectors; both compare neuron c of the
victim with neuron c of the suspect, in the units each model happens to use. The alignment-aware DeepJudge
(``deepjudge_aligned``) undoes a channel permutation, but a positive per-channel rescaling (another
function-preserving change that costs nothing, :mod:`removalnet.attacks.rescale`) still moves both metrics.

What differs from ``deepjudge_aligned``: every neuron's values (the per-neuron mean activations DeepJudge
uses) on the fingerprint's inputs, the seeds and the white-box test cases, are standardised per model by that
neuron's own mean and standard deviation over those inputs (population std; the victim with the victim's
statistics, the suspect with the suspect's) BEFORE the channels are matched and before LOD and LAD are taken
on the test-case rows (metrics ``DJS-LOD``, ``DJS-LAD``; DJS-LAD reduces over neurons as ``lad_reduction``
says). The result is invariant to any positive per-neuron affine map ``a -> s a + t`` (``s > 0``; exactly,
but for a neuron at the ``CONSTANT_TOL`` border, whose constant test depends on ``t``),
so to rescaling, and, by the matching, to permutation: a permuted and rescaled copy gets the metrics of the
plain copy (0 for the victim itself). A neuron that is constant over the fingerprint inputs (standard
deviation at most ``CONSTANT_TOL`` times its largest magnitude, float32 rounding included, or all zeros: a
dead ReLU channel) is standardised to 0, never NaN.

Caveat: standardisation also discards information (each neuron's offset and scale, which an unrelated model
is unlikely to share), and it amplifies nearly constant neurons to unit variance; measure its false positives
against independent models before relying on it. Parameters and fingerprint are ``deepjudge_aligned``'s.
"""
from __future__ import annotations

import torch

from .base import Fingerprint, Metric, register_verifier
from .deepjudge import lad, lod
from .deepjudge_aligned import DeepJudgeAligned, match_channels

__all__ = ["DeepJudgeScaled", "standardise", "scaled_metrics", "CONSTANT_TOL"]

#: a neuron whose std over the fingerprint inputs is at most this times its largest |value| is constant
CONSTANT_TOL = 1e-5


def standardise(acts: torch.Tensor) -> torch.Tensor:
    """Each column of ``acts`` (N x C, float64 result) minus its mean, divided by its population std over the
    rows; a constant column (std <= ``CONSTANT_TOL`` x its largest |value|, or all zero) becomes 0."""
    a = acts.double()
    mu, sd = a.mean(0), a.std(0, correction=0)
    const = sd <= CONSTANT_TOL * a.abs().amax(0)
    return torch.where(const, torch.zeros_like(a), (a - mu) / torch.where(const, torch.ones_like(sd), sd))


def scaled_metrics(victim_align: torch.Tensor, suspect_align: torch.Tensor, num_seeds: int, p: float = 2.0,
                   threshold: float = 0.5, reduction: str = "sum") -> dict[str, float]:
    """DJS-LOD and DJS-LAD from both models' neuron values on the fingerprint inputs (N x C each, the
    ``num_seeds`` seed rows first, then the test cases): standardise each model's neurons, match the suspect's
    to the victim's on all rows, then DeepJudge's LOD and LAD on the test-case rows."""
    z_v, z_s = standardise(victim_align), standardise(suspect_align)
    perm = match_channels(z_v, z_s)
    z_v, z_s = z_v[num_seeds:], z_s[num_seeds:][:, perm]
    return {"DJS-LOD": lod(z_v, z_s, p), "DJS-LAD": lad(z_v, z_s, threshold, reduction)}


@register_verifier
class DeepJudgeScaled(DeepJudgeAligned):
    """DeepJudge's LOD and LAD on per-neuron standardised, channel-matched activations (module docstring)."""

    name = "deepjudge_scaled"
    metrics = (Metric("DJS-LOD", "distance"), Metric("DJS-LAD", "distance"))

    def _score(self, fp: Fingerprint, victim, suspect, *, device: torch.device) -> dict[str, float]:
        P = fp.params
        return scaled_metrics(fp.tensors["victim_align"], self._suspect_align(fp, suspect, device),
                              len(fp.tensors["seeds_x"]), P["p"], P["threshold"], P["lad_reduction"])
