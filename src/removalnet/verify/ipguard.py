"""IPGuard: fingerprint points on the victim's classification boundary (Cao et al., AsiaCCS 2021; paper eq. 5).

Extraction: ``num_points`` data points x drawn (seeded) from the verifier's data. For each, i is the
victim's predicted class on x and j a target class (``target="least"``, the default: the victim's least
likely class, as the RemovalNet reference's default "L"; ``"random"``: uniform over the other classes,
seeded, the reference's "R").
The input is optimised with Adam on the IPGuard loss

    L(x) = ReLU(z_i - z_j + k) + ReLU(z_t - z_i),   z = F_V(x) (logits),  t = argmax_{c != i, j} z_c

which is zero exactly when z_j >= z_i + k and z_i >= z_t: the point has just crossed from class i
into class j, with i still the runner-up, so it lies on the boundary between i and j with a logit gap
of at least k (and, as the optimisation stops as soon as L is about 0, not much more). With two
classes only the first term exists. As the reference loop (loss, step, then ``if loss <= 1e-4:
break``), a point stops one step past its first iterate with L <= ``tol`` (1e-4); points whose loss
never gets there keep the iterate after ``max_iter`` steps (counted in the meta as not converged).
Inputs are clamped to [0, 1] after every step.

k is a logit margin. Small k puts the points right on the boundary (the RemovalNet reference uses
k = 0.01, "since logits are always smaller than 10"); larger k (IPGuard explores up to 10) pushes them
deeper into class j, where unrelated models agree more often. Default ``k = 0.01``.

The reference code rebuilds its Adam optimiser at every step, which makes every step a sign step of
size lr; here one Adam state per point is kept for the whole run (betas 0.9/0.999, eps 1e-8, as
torch.optim.Adam), all points optimised in one batch, and only the points not yet done are updated.

Score (eq. 5): ``IPG-MR`` = fraction of fingerprint points where argmax F_V == argmax F_S (similarity).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..params import Param
from ..utils import RemovalNetError
from .base import Fingerprint, Metric, Verifier, batched_logits, dataset_tensors, register_verifier

__all__ = ["IPGuard", "matching_rate", "ipguard_loss", "boundary_points"]

TARGETS = ("random", "least")


def matching_rate(pred_v: torch.Tensor, pred_s: torch.Tensor) -> float:
    """Eq. 5: the fraction of points on which the two predicted labels agree."""
    if pred_v.shape != pred_s.shape or pred_v.numel() == 0:
        raise RemovalNetError(f"matching_rate needs two label vectors of one non-zero length, got "
                              f"{tuple(pred_v.shape)} and {tuple(pred_s.shape)}")
    return float((pred_v == pred_s).double().mean())


def ipguard_loss(z: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: float) -> torch.Tensor:
    """Per-sample IPGuard loss ReLU(z_i - z_j + k) + ReLU(z_t - z_i), t = argmax over classes != i, j."""
    zi = z.gather(1, i[:, None])[:, 0]
    zj = z.gather(1, j[:, None])[:, 0]
    loss = F.relu(zi - zj + k)
    if z.shape[1] > 2:
        others = z.scatter(1, i[:, None], float("-inf")).scatter(1, j[:, None], float("-inf"))
        loss = loss + F.relu(others.max(dim=1).values - zi)
    return loss


def boundary_points(model: nn.Module, x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, *, k: float,
                    lr: float = 0.01, max_iter: int = 1000, tol: float = 1e-4,
                    betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise :func:`ipguard_loss` over the inputs ``x`` (B x C x H x W in [0, 1]) with Adam.

    Returns (points, converged mask, steps taken per point). As the reference loop, every iteration
    computes the loss, takes a step, then stops the point if that loss was ``<= tol``: a point is frozen
    one step past its first iterate with loss <= tol. All tensors on ``x``'s device.
    """
    x = x.detach().clone()
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    iters = torch.full((len(x),), max_iter, dtype=torch.int64, device=x.device)
    with torch.enable_grad():
        for step in range(max_iter):
            act = (~done).nonzero()[:, 0]
            if len(act) == 0:
                break
            xa = x[act].requires_grad_(True)
            loss = ipguard_loss(model(xa), i[act], j[act], k)
            (g,) = torch.autograd.grad(loss.sum(), xa)
            with torch.no_grad():
                m[act] = betas[0] * m[act] + (1 - betas[0]) * g
                v[act] = betas[1] * v[act] + (1 - betas[1]) * g * g
                t = step + 1                          # every active point has taken exactly `step` steps
                mhat = m[act] / (1 - betas[0] ** t)
                vhat = v[act] / (1 - betas[1] ** t)
                x[act] = (x[act] - lr * mhat / (vhat.sqrt() + adam_eps)).clamp(0.0, 1.0)
            hit = act[loss.detach() <= tol]           # the reference checks the loss after its step
            done[hit] = True
            iters[hit] = step + 1
    return x.detach(), done, iters


@register_verifier
class IPGuard(Verifier):
    """IPGuard (paper eq. 5): metric IPG-MR (similarity) on points near the victim's decision boundary.

    Parameters: ``PARAMS`` (defaults: the reference code's; ``removalnet verify --list`` prints them).
    """

    name = "ipguard"
    metrics = (Metric("IPG-MR", "similarity"),)
    PARAMS = {
        "num_points": Param(100, int, low=1, doc="boundary points (reference: 100)"),
        "k": Param(0.01, float, low=0.0, doc="logit margin of eq. 5"),
        "lr": Param(0.01, float, low=0.0, low_open=True, doc="Adam learning rate of the point search"),
        "max_iter": Param(1000, int, low=1, doc="optimisation steps per batch of points (reference: 1000)"),
        "tol": Param(1e-4, float, low=0.0, doc="a point stops one step after its loss is <= tol (reference: 1e-4)"),
        "target": Param("least", str, choices=TARGETS,
                        doc="target class: least (the victim's least likely, reference default) or random (seeded)"),
    }

    def _extract(self, victim: nn.Module, data: Dataset, *, seed: int, generator: torch.Generator,
                 device: torch.device):
        p = self.params
        n = min(p["num_points"], len(data))  # type: ignore[arg-type]
        idx = torch.randperm(len(data), generator=generator)[:n]  # type: ignore[arg-type]
        x0, _ = dataset_tensors(data, idx.tolist())
        z0 = batched_logits(victim, x0, batch_size=p["batch_size"], device=device)
        num_classes = z0.shape[1]
        if num_classes < 2:
            raise RemovalNetError("IPGuard needs a classifier with at least 2 classes")
        i = z0.argmax(dim=1)
        if p["target"] == "least":
            j = z0.argmin(dim=1)
        else:  # uniform over the other classes
            j = (i + torch.randint(1, num_classes, (n,), generator=generator)) % num_classes
        points, done, iters = [], [], []
        for lo in range(0, n, p["batch_size"]):
            sl = slice(lo, lo + p["batch_size"])
            pts, dn, it = boundary_points(victim, x0[sl].to(device), i[sl].to(device), j[sl].to(device),
                                          k=p["k"], lr=p["lr"], max_iter=p["max_iter"], tol=p["tol"])
            points.append(pts.cpu())
            done.append(dn.cpu())
            iters.append(it.cpu())
        points, done, iters = torch.cat(points), torch.cat(done), torch.cat(iters)
        z = batched_logits(victim, points, batch_size=p["batch_size"], device=device)
        top2 = z.topk(2, dim=1).values
        meta = {"num_points": n, "converged": int(done.sum()), "iterations_mean": round(float(iters.float().mean()), 2),
                "iterations_max": int(iters.max()),
                "top2_gap_median": round(float((top2[:, 0] - top2[:, 1]).median()), 6)}
        if n < p["num_points"]:
            meta["note"] = f"the data holds only {n} samples; num_points={p['num_points']} was asked"
        tensors = {"indices": idx, "points": points, "start_class": i, "target_class": j,
                   "victim_pred": z.argmax(dim=1), "converged": done.to(torch.uint8)}
        return tensors, meta

    def _score(self, fp: Fingerprint, victim: nn.Module, suspect: nn.Module, *, device: torch.device):
        pts, bs = fp.tensors["points"], self.params["batch_size"]
        pred_v = self.victim_outputs(fp, "points", lambda: batched_logits(victim, pts, batch_size=bs, device=device)
                                     .argmax(dim=1), device)
        pred_s = batched_logits(suspect, pts, batch_size=bs, device=device).argmax(dim=1)
        return {"IPG-MR": matching_rate(pred_v, pred_s)}
