"""Alignment-aware DeepJudge: DeepJudge's layer metrics after matching the suspect's channels to the victim's.

DeepJudge's LOD and LAD (eq. 1, 2) compare channel c of the victim with channel c of the suspect. A copy
whose hidden channels were permuted (a function-preserving change that costs nothing, see
:mod:`removalnet.attacks.permute`) moves both metrics as far as an independent model. This countermeasure
first matches channels: on the fingerprint's inputs (DeepJudge's seeds and test cases) it correlates every
victim channel's mean activation with every suspect channel's and solves the linear assignment that
maximises the total correlation (Hungarian, scipy); LOD and LAD are then computed on the matched channels
(metrics ``DJA-LOD``, ``DJA-LAD``; DJA-LAD sums over neurons or averages as DeepJudge's ``lad_reduction``
says, the official sum by default). A permuted copy gets exactly the LOD/LAD of the unpermuted one.
Reference models are matched the same way, so tau stays honest: matching can only lower their distances too.

Parameters and fingerprint are DeepJudge's (same seeds, test cases and layer: the test generation is
DeepJudge's, shared with ``deepjudge`` and ``deepjudge_scaled`` through the fingerprint cache); the fingerprint
also stores the victim's channel means on the seeds and test cases (the alignment data).
"""
from __future__ import annotations

import torch

from .base import Fingerprint, Metric, register_verifier
from .deepjudge import DeepJudge, _require_split, lad, lod, layer_means

__all__ = ["DeepJudgeAligned", "match_channels"]


def match_channels(victim_acts: torch.Tensor, suspect_acts: torch.Tensor) -> torch.Tensor:
    """``perm`` with suspect channel ``perm[c]`` matched to victim channel ``c``: the assignment that
    maximises the summed Pearson correlation of the channels' activations over the rows (N x C each)."""
    from scipy.optimize import linear_sum_assignment

    v = victim_acts.double() - victim_acts.double().mean(0)
    s = suspect_acts.double() - suspect_acts.double().mean(0)
    nv, ns = v.norm(dim=0), s.norm(dim=0)
    corr = (v.T @ s) / (nv[:, None] * ns[None, :]).clamp_min(1e-12)
    rows, cols = linear_sum_assignment(corr.numpy(), maximize=True)
    return torch.as_tensor(cols, dtype=torch.long)[torch.as_tensor(rows).argsort()]


@register_verifier
class DeepJudgeAligned(DeepJudge):
    """DeepJudge's LOD and LAD after matching the suspect's channels to the victim's (module docstring)."""

    name = "deepjudge_aligned"
    metrics = (Metric("DJA-LOD", "distance"), Metric("DJA-LAD", "distance"))

    def _extract(self, victim, data, *, seed: int, generator: torch.Generator, device: torch.device,
                 train_data=None, generation: Fingerprint):
        tensors, meta = super()._extract(victim, data, seed=seed, generator=generator, device=device,
                                         train_data=train_data, generation=generation)
        layer = int(meta["layer"])
        inputs = torch.cat([tensors["seeds_x"], tensors["tests_x"]])
        tensors["victim_align"] = layer_means(victim, layer, inputs, batch_size=self.params["batch_size"],
                                              device=device)
        return tensors, meta

    def _suspect_align(self, fp: Fingerprint, suspect, device: torch.device) -> torch.Tensor:
        """The suspect's neuron values on the seeds and the test cases (N x C, the alignment data)."""
        T, layer = fp.tensors, int(fp.meta["layer"])
        _require_split(suspect, "suspect", layer)
        return layer_means(suspect, layer, torch.cat([T["seeds_x"], T["tests_x"]]),
                           batch_size=self.params["batch_size"], device=device, victim_means=T["victim_align"])

    def _score(self, fp: Fingerprint, victim, suspect, *, device: torch.device) -> dict[str, float]:
        P, T = fp.params, fp.tensors
        s_align = self._suspect_align(fp, suspect, device)
        perm = match_channels(T["victim_align"], s_align)
        s_layer = s_align[len(T["seeds_x"]):][:, perm]
        return {"DJA-LOD": lod(T["victim_layer"], s_layer, P["p"]),
                "DJA-LAD": lad(T["victim_layer"], s_layer, P["threshold"], P["lad_reduction"])}
