"""ModelDiff-PGD: decision distance vectors on (seed, victim-only PGD variant) pairs. A variant of ModelDiff
(``modeldiff``), not the authors' method, hence its own name and metric (MD-PGD-DDV).

The official ModelDiff searches its profiling inputs on both models, so its fingerprint is regenerated for
every suspect. This variant builds the pairs from the victim alone, so one fingerprint per victim serves
every suspect (scoring costs two forward passes of 2 x ``num_pairs`` inputs per model): each of
``num_pairs`` seeds x_i drawn (seeded) from the verifier's data is paired with an adversarial variant x'_i
found by PGD against the victim (eps 0.06, 50 steps of 0.01, random start in the eps-ball). The PGD
objective, maximised per pair, is the decision distance the DDV uses, on the victim:
``d(F_V(x'_i), F_V(x_i))`` with ``F_V(x_i)`` fixed, within ``|x' - x|_inf <= eps`` and the pixel range.

Score (eq. 3-4 on these pairs): ``DDV_F[i] = d(F(x_i), F(x'_i))`` and ``MD-PGD-DDV = cos(DDV_V, DDV_S)``
(a similarity). ``ddv`` chooses d: ``"cosine"`` (default; 1 - cos, the official ModelDiff's decision
distance) or ``"l2"`` (eq. 3's norm). ``output``: "logits" (default) or "softmax".
``random_start`` should stay on: the objective is at its minimum (zero, with zero gradient) at the seed
itself, so PGD started there does not move.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from ..params import Param
from ..utils import RemovalNetError
from .adversarial import pgd
from .base import Fingerprint, Metric, Verifier, batched_logits, dataset_tensors, register_verifier
from .modeldiff import OUTPUTS, ddv_similarity, decision_distance, transform_outputs

__all__ = ["ModelDiffPGD"]

DDVS = ("cosine", "l2")


@register_verifier
class ModelDiffPGD(Verifier):
    """ModelDiff variant on (seed, victim-only PGD variant) pairs: metric MD-PGD-DDV (similarity).

    Parameters: ``PARAMS`` (``removalnet verify --list`` prints them).
    """

    name = "modeldiff_pgd"
    metrics = (Metric("MD-PGD-DDV", "similarity"),)
    PARAMS = {
        "num_pairs": Param(100, int, low=2, doc="seed inputs, each paired with its PGD variant"),
        "eps": Param(0.06, float, low=0.0, low_open=True, high=1.0, doc="PGD budget in pixel units"),
        "alpha": Param(0.01, float, low=0.0, low_open=True, high=1.0, doc="PGD step in pixel units"),
        "steps": Param(50, int, low=1, doc="PGD steps"),
        "random_start": Param(True, bool, doc="PGD starts at a uniform random point of the eps-ball"),
        "ddv": Param("cosine", str, choices=DDVS, doc="decision distance of a pair: cosine or l2"),
        "output": Param("logits", str, choices=OUTPUTS, doc="model outputs compared"),
    }

    def _ddv(self, model: nn.Module, seeds: torch.Tensor, variants: torch.Tensor, device: torch.device):
        bs, out = self.params["batch_size"], self.params["output"]
        a = transform_outputs(batched_logits(model, seeds, batch_size=bs, device=device), out)
        b = transform_outputs(batched_logits(model, variants, batch_size=bs, device=device), out)
        return decision_distance(a, b, self.params["ddv"])

    def _extract(self, victim: nn.Module, data: Dataset, *, seed: int, generator: torch.Generator,
                 device: torch.device):
        p = self.params
        n = min(p["num_pairs"], len(data))  # type: ignore[arg-type]
        if n < 2:
            raise RemovalNetError("ModelDiff-PGD needs at least 2 samples in the verifier's data")
        idx = torch.randperm(len(data), generator=generator)[:n]  # type: ignore[arg-type]
        seeds, labels = dataset_tensors(data, idx.tolist())
        ref = transform_outputs(batched_logits(victim, seeds, batch_size=p["batch_size"], device=device),
                                p["output"])

        def away(outputs: torch.Tensor, ref_b: torch.Tensor) -> torch.Tensor:
            return decision_distance(transform_outputs(outputs, p["output"]), ref_b, p["ddv"])

        variants = pgd(victim, seeds.to(device), ref.to(device), eps=p["eps"], alpha=p["alpha"], steps=p["steps"],
                       random_start=p["random_start"], loss_fn=away, generator=generator,
                       batch_size=p["batch_size"]).cpu()
        ddv_v = self._ddv(victim, seeds, variants, device)
        meta = {"num_pairs": n, "ddv_mean": round(float(ddv_v.mean()), 6),
                "linf_max": round(float((variants - seeds).abs().max()), 6)}
        if n < p["num_pairs"]:
            meta["note"] = f"the data holds only {n} samples; num_pairs={p['num_pairs']} was asked"
        return {"indices": idx, "seeds": seeds, "labels": labels, "variants": variants, "ddv_victim": ddv_v}, meta

    def _score(self, fp: Fingerprint, victim: nn.Module, suspect: nn.Module, *, device: torch.device):
        seeds, variants = fp.tensors["seeds"], fp.tensors["variants"]
        ddv_v = self.victim_outputs(fp, "variants", lambda: self._ddv(victim, seeds, variants, device), device)
        ddv_s = self._ddv(suspect, seeds, variants, device)
        return {"MD-PGD-DDV": ddv_similarity(ddv_v, ddv_s)}
