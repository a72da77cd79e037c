"""ModelDiff: decision distance vectors (Li et al., ISSTA 2021; paper 2.3, eq. 3-4).

Extraction: ``num_pairs`` seeds x_i drawn (seeded) from the verifier's data, each paired with an
adversarial variant x'_i found by PGD against the victim (reference settings: eps 0.06, 50 steps of
0.01, random start in the eps-ball). The PGD objective, maximised per pair, is the same decision
distance the DDV uses, on the victim: ``d(F_V(x'_i), F_V(x_i))`` with ``F_V(x_i)`` fixed. So every
variant moves the victim's output away from its output on the seed, within ``|x' - x|_inf <= eps``.

Score (eq. 3-4): ``DDV_F[i] = d(F(x_i), F(x'_i))`` for each pair, and ``MD-DDV = cos(DDV_V, DDV_S)``
(a similarity). The pairs are always (seed, its own variant); nothing pairs unrelated clean inputs.

``ddv`` chooses d:

* ``"cosine"`` (default): ``1 - cos(F(x), F(x'))``, the cosine distance the ModelDiff reference code
  uses (equivalently, half the squared L2 distance of the L2-normalised outputs). It is invariant to
  the scale of each output vector, so a suspect whose logits are uniformly larger or smaller (a
  changed temperature, a distilled copy) is compared on the direction of its decisions only.
* ``"l2"``: ``||F(x) - F(x')||_2``, the form of the paper's eq. 3.

``output``: "logits" (default; the reference compares raw model outputs) or "softmax".
``random_start`` should stay on: the objective is at its minimum (zero, with zero gradient) at the seed
itself, so PGD started there does not move.
If a DDV is all zeros (a model that gives the same output on every pair) the similarity is 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..utils import RemovalNetError
from .adversarial import pgd
from .base import Fingerprint, Metric, Verifier, batched_logits, check_bool, check_choice, check_float, \
    check_int, dataset_tensors, register_verifier

__all__ = ["ModelDiff", "decision_distance", "ddv_similarity"]

DDVS = ("cosine", "l2")
OUTPUTS = ("logits", "softmax")


def _transform(logits: torch.Tensor, output: str) -> torch.Tensor:
    return F.softmax(logits, dim=-1) if output == "softmax" else logits


def decision_distance(out_a: torch.Tensor, out_b: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Row-wise distance between two N x K output matrices: ``1 - cos`` ("cosine") or L2 ("l2")."""
    if out_a.shape != out_b.shape:
        raise RemovalNetError(f"outputs differ in shape: {tuple(out_a.shape)} vs {tuple(out_b.shape)}")
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(out_a, out_b, dim=-1, eps=1e-12)
    if kind == "l2":
        return torch.linalg.vector_norm(out_a - out_b, dim=-1)
    raise RemovalNetError(f"ddv must be one of {', '.join(DDVS)}, got {kind!r}")


def ddv_similarity(ddv_a: torch.Tensor, ddv_b: torch.Tensor) -> float:
    """Eq. 4: cosine similarity of two decision distance vectors (float64); 0 if either is all zeros."""
    if ddv_a.shape != ddv_b.shape:
        raise RemovalNetError(f"DDVs differ in length: {tuple(ddv_a.shape)} vs {tuple(ddv_b.shape)}")
    a, b = ddv_a.double().flatten(), ddv_b.double().flatten()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(max(-1.0, min(1.0, float(a @ b / (na * nb)))))


@register_verifier
class ModelDiff(Verifier):
    """ModelDiff (paper eq. 3-4): metric MD-DDV (similarity) on (seed, PGD variant) pairs.

    Parameters: ``num_pairs`` (100), ``eps`` (0.06), ``alpha`` (0.01, the PGD step), ``steps`` (50),
    ``random_start`` (True) -- PGD settings of the reference; ``ddv`` ("cosine"), ``output`` ("logits").
    """

    name = "modeldiff"
    metrics = (Metric("MD-DDV", "similarity"),)
    defaults = {"num_pairs": 100, "eps": 0.06, "alpha": 0.01, "steps": 50, "random_start": True,
                "ddv": "cosine", "output": "logits"}

    def _check_params(self) -> None:
        p = self.params
        check_int(p, "num_pairs", minimum=2)
        check_float(p, "eps", minimum=0.0, maximum=1.0, min_exclusive=True)
        check_float(p, "alpha", minimum=0.0, maximum=1.0, min_exclusive=True)
        check_int(p, "steps", minimum=1)
        check_bool(p, "random_start")
        check_choice(p, "ddv", DDVS)
        check_choice(p, "output", OUTPUTS)

    def _ddv(self, model: nn.Module, seeds: torch.Tensor, variants: torch.Tensor, device: torch.device):
        bs, out = self.params["batch_size"], self.params["output"]
        a = _transform(batched_logits(model, seeds, batch_size=bs, device=device), out)
        b = _transform(batched_logits(model, variants, batch_size=bs, device=device), out)
        return decision_distance(a, b, self.params["ddv"])

    def _extract(self, victim: nn.Module, data: Dataset, *, seed: int, generator: torch.Generator,
                 device: torch.device):
        p = self.params
        n = min(p["num_pairs"], len(data))  # type: ignore[arg-type]
        if n < 2:
            raise RemovalNetError("ModelDiff needs at least 2 samples in the verifier's data")
        idx = torch.randperm(len(data), generator=generator)[:n]  # type: ignore[arg-type]
        seeds, labels = dataset_tensors(data, idx.tolist())
        ref = _transform(batched_logits(victim, seeds, batch_size=p["batch_size"], device=device), p["output"])

        def away(outputs: torch.Tensor, ref_b: torch.Tensor) -> torch.Tensor:
            return decision_distance(_transform(outputs, p["output"]), ref_b, p["ddv"])

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
        ddv_v = self._ddv(victim, seeds, variants, device)
        ddv_s = self._ddv(suspect, seeds, variants, device)
        return {"MD-DDV": ddv_similarity(ddv_v, ddv_s)}
