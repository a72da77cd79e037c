"""ModelDiff: decision distance vectors (Li et al., ISSTA 2021; paper 2.3, eq. 3-4), as the official code
(yuanchun-li/ModelDiff, ``modeldiff.py``) computes them.

The profiling inputs depend on BOTH models being compared, so this verifier is per-suspect
(``per_suspect``): ``extract`` draws the seeds once per victim, ``pair`` searches the profiling inputs
for one (victim, suspect) pair, and ``score`` measures the pair on them.

Seeds (official ``get_seed_inputs`` + ``compare``): ``num_pairs`` inputs for each of the two models,
2 x ``num_pairs`` in all, in random order. The official code draws each half from the training data of
its model; the verifier here only holds its own data, so both halves come from it (seeded draw without
replacement).

Profiling inputs (official ``_gen_profiling_inputs_search``): hill climbing from the seeds X_0. For
``iterations`` steps (1000): pick a random input k and a random position p (pixel of one channel),
form X + e and X - e with e = ``epsilon`` at (k, p) only, and keep the better of the two when its score
beats the current one (ties go to the minus side, as in the official code). The score is

    score(X) = d_1 * d_2 * div_1 * div_2,
    d_m   = mean_i ||F_m(X)_i - F_m(X_0)_i||_2          (output shift from the seeds, per model)
    div_m = mean_{i,j} ||F_m(X)_i - F_m(X)_j||_2        (output diversity, all N^2 pairs incl. i = j)

with F_1 the victim and F_2 the suspect. The score starts at 0 (d = 0 on the seeds). Here only the
mutated input and its two candidates are run through the models and only its row of the distance matrices
is recomputed, which gives the official scores (up to rounding) at 6 forwards of one input per step
instead of 8 of all 2n; a candidate that leaves a model's outputs unchanged is rejected exactly
(:func:`hill_climb`).
``epsilon`` is in the model's normalised input units, as in the official code (whose inputs are
normalised tensors): the pixel step is epsilon x the victim's normalisation std of that channel.
Like the official code, nothing clips the mutated inputs to the pixel range.

DDV (``ddv``):

* ``"official"`` (default; official ``compute_ddv``): with 2n profiling inputs, DDV[i] = cosine
  distance (1 - cos) between the model's outputs on input i and on input i + n, i < n.
* ``"all_pairs"``: the RemovalNet paper's eq. 3, DDV = {||F(x_i) - F(x_j)||_2, i < j} over all 2n
  inputs. (Its cosine equals that of the official ``compute_similarity_with_ddm`` distance matrix,
  which the latest official ``compare()`` maps further to (1 + cos) / 2.)

Score (eq. 4, official ``compute_similarity_with_ddv``): ``MD-DDV = cos(DDV_V, DDV_S)``, a similarity;
exactly 1 for identical DDVs, 0 if either DDV is all zeros (the official code would return nan).
``output``: "logits" (default; the official code compares raw model outputs) or "softmax", used for
the search and the DDV alike.

The suspect-independent variant that pairs each seed with a victim-only PGD example is
``modeldiff_pgd`` (metric MD-PGD-DDV), not this verifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..params import Param
from ..utils import RemovalNetError
from .base import (Fingerprint, Metric, Verifier, batched_logits, dataset_tensors, input_normalization,
                   register_verifier)

__all__ = ["ModelDiff", "decision_distance", "ddv_similarity", "official_ddv", "all_pairs_ddv", "profiling_score",
           "hill_climb", "transform_outputs"]

DDVS = ("official", "all_pairs")
OUTPUTS = ("logits", "softmax")


def transform_outputs(logits: torch.Tensor, output: str) -> torch.Tensor:
    """The outputs a ModelDiff verifier compares: the logits, or their softmax."""
    return F.softmax(logits, dim=-1) if output == "softmax" else logits


def decision_distance(out_a: torch.Tensor, out_b: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Row-wise distance between two N x K output matrices: ``1 - cos`` ("cosine") or L2 ("l2")."""
    if out_a.shape != out_b.shape:
        raise RemovalNetError(f"outputs differ in shape: {tuple(out_a.shape)} vs {tuple(out_b.shape)}")
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(out_a, out_b, dim=-1, eps=1e-12)
    if kind == "l2":
        return torch.linalg.vector_norm(out_a - out_b, dim=-1)
    raise RemovalNetError(f"the decision distance must be 'cosine' or 'l2', got {kind!r}")


def official_ddv(outputs: torch.Tensor) -> torch.Tensor:
    """Official ``compute_ddv``: ``1 - cos(out[i], out[i + n])`` for i < n, with 2n rows (float64)."""
    if outputs.dim() != 2 or outputs.shape[0] < 2 or outputs.shape[0] % 2:
        raise RemovalNetError(f"the official DDV needs 2n x K outputs, got shape {tuple(outputs.shape)}")
    o = outputs.double()
    n = o.shape[0] // 2
    return decision_distance(o[:n], o[n:], "cosine")


def all_pairs_ddv(outputs: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ``||out[i] - out[j]||_2`` for every i < j (row-major order), float64."""
    if outputs.dim() != 2 or outputs.shape[0] < 2:
        raise RemovalNetError(f"the all-pairs DDV needs N x K outputs with N >= 2, got shape {tuple(outputs.shape)}")
    return F.pdist(outputs.double())


def ddv_similarity(ddv_a: torch.Tensor, ddv_b: torch.Tensor) -> float:
    """Eq. 4: cosine similarity of two decision distance vectors (float64); exactly 1 for identical
    vectors, 0 if either is all zeros."""
    if ddv_a.shape != ddv_b.shape:
        raise RemovalNetError(f"DDVs differ in length: {tuple(ddv_a.shape)} vs {tuple(ddv_b.shape)}")
    a, b = ddv_a.double().flatten(), ddv_b.double().flatten()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na == 0 or nb == 0:
        return 0.0
    if torch.equal(a, b):
        return 1.0
    return float(max(-1.0, min(1.0, float(a @ b / (na * nb)))))


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|A| x |B| L2 distances, computed entry by entry (no matrix-product shortcut: exact zeros stay zero)."""
    return torch.linalg.vector_norm(a[:, None, :] - b[None, :, :], dim=-1)


def profiling_score(out1: torch.Tensor, init1: torch.Tensor, out2: torch.Tensor, init2: torch.Tensor) -> float:
    """The search objective ``d_1 * d_2 * div_1 * div_2`` of the official ``_gen_profiling_inputs_search``.

    ``out_m``: model m's outputs on the current inputs; ``init_m``: its outputs on the seeds (N x K each).
    """
    def parts(out: torch.Tensor, init: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, init = out.double(), init.double()
        return torch.linalg.vector_norm(out - init, dim=-1).mean(), _pairwise(out, out).mean()

    (d1, div1), (d2, div2) = parts(out1, init1), parts(out2, init2)
    return float(d1 * d2 * div1 * div2)


def hill_climb(model1: nn.Module, model2: nn.Module, seeds: torch.Tensor, positions: torch.Tensor,
               targets: torch.Tensor, step: torch.Tensor, *, output: str = "logits", batch_size: int = 256,
               device: torch.device | str = "cpu", block: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official profiling-input search with its random draws given: step t mutates input ``targets[t]``
    at flat position ``positions[t]`` (index into C x H x W) by +/- ``step[channel]``.

    Returns (inputs N x C x H x W, accepted T bool, score after every step T float64).

    The official loop's decisions at a fraction of its cost: a step changes one input only, so only that
    input and its two candidates are run through the models, and only its row of each model's distance
    matrix changes. The candidates of up to ``block`` consecutive steps that mutate distinct inputs do not
    depend on each other's outcome, so they are run together, in three passes of one shape: the current
    inputs, the plus candidates, the minus candidates. A candidate whose outputs equal (bit for bit) those
    of its current input in the same place of a pass of the same shape leaves that model's part of the
    score as it is, exactly as in the official loop (which evaluates every candidate at the shape of the
    current inputs), whatever a kernel's batch-dependent rounding. The steps are then decided one after
    the other; the current and the candidate scores are computed from the same sums. Where a candidate
    does change the outputs, its score can differ from the official loop's by rounding (relative 1e-7),
    so a near tie could be decided the other way.
    """
    n = seeds.shape[0]
    hw = seeds[0].numel() // seeds.shape[1]
    models = (model1, model2)

    def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return transform_outputs(batched_logits(model, x, batch_size=batch_size, device=device), output).double()

    x = seeds.detach().float().cpu().clone()
    init = [outputs(m, x) for m in models]
    cur = [o.clone() for o in init]
    dist = [torch.cdist(o, o, compute_mode="donot_use_mm_for_euclid_dist") for o in cur]
    rowsum = [d.sum(dim=1) for d in dist]
    total = [r.sum() for r in rowsum]
    shift = [torch.zeros(n, dtype=torch.float64) for _ in models]
    accepted = torch.zeros(len(targets), dtype=torch.bool)
    trace = torch.zeros(len(targets), dtype=torch.float64)
    score = profiling_score(cur[0], init[0], cur[1], init[1])
    step = step.detach().float().cpu()
    t0 = 0
    while t0 < len(targets):
        t1, seen = t0, set()
        while t1 < len(targets) and t1 - t0 < block and int(targets[t1]) not in seen:
            seen.add(int(targets[t1]))
            t1 += 1
        now = x[targets[t0:t1]]
        rows_idx = torch.arange(t1 - t0)
        delta = step[positions[t0:t1] // hw]
        plus, minus = now.flatten(1).clone(), now.flatten(1).clone()
        plus[rows_idx, positions[t0:t1]] += delta
        minus[rows_idx, positions[t0:t1]] -= delta
        cand = (now, plus.reshape(now.shape), minus.reshape(now.shape))
        # three passes of one shape (current inputs, plus, minus): row j sits at the same place in each, so a
        # candidate the model ignores gives the current input's outputs bit for bit, as in the official loop
        outs = [[outputs(m, c) for c in cand] for m in models]
        for j, t in enumerate(range(t0, t1)):
            k = int(targets[t])
            scores = torch.ones(3, dtype=torch.float64)
            unchanged = [True, True, True]
            rows, shifts = [], []
            for m in range(2):
                same = [torch.equal(outs[m][c][j], outs[m][0][j]) for c in (1, 2)]
                o = torch.stack([cur[m][k]] + [cur[m][k] if same[c - 1] else outs[m][c][j] for c in (1, 2)])
                row = _pairwise(o, cur[m])
                row[:, k] = 0.0
                sh = torch.linalg.vector_norm(o - init[m][k], dim=-1)
                div_rest = total[m] - 2 * rowsum[m][k]                               # pairs without input k
                d_rest = shift[m].sum() - shift[m][k]
                scores *= ((d_rest + sh) / n) * ((div_rest + 2 * row.sum(dim=1)) / (n * n))
                rows.append((o, row))
                shifts.append(sh)
                unchanged = [u and torch.equal(o[c], o[0]) for c, u in enumerate(unchanged)]
            for c in (1, 2):
                if unchanged[c]:
                    scores[c] = scores[0]
            current, plus, minus = (float(v) for v in scores)
            if plus > current or minus > current:
                c = 1 if plus > minus else 2
                x[k] = cand[c][j]
                for m in range(2):
                    o, row = rows[m]
                    new = row[c]
                    rowsum[m] += new - dist[m][k]
                    rowsum[m][k] = new.sum()
                    total[m] = rowsum[m].sum()
                    dist[m][k, :] = new
                    dist[m][:, k] = new
                    cur[m][k] = o[c]
                    shift[m][k] = shifts[m][c]
                accepted[t] = True
                score = float(scores[c])
            trace[t] = score
        t0 = t1
    return x, accepted, trace


@register_verifier
class ModelDiff(Verifier):
    """ModelDiff as its official code computes it: metric MD-DDV (similarity) on inputs searched per suspect.

    The profiling inputs are searched for each (victim, suspect) pair (``per_suspect``).

    Parameters: ``PARAMS`` (defaults: the official code's; ``removalnet verify --list`` prints them).
    """

    name = "modeldiff"
    metrics = (Metric("MD-DDV", "similarity"),)
    per_suspect = True
    PARAMS = {
        "num_pairs": Param(300, int, low=2, doc="seeds per model (N_INPUT_PAIRS; 2 x num_pairs profiling inputs)"),
        "iterations": Param(1000, int, low=0, doc="hill-climbing steps of the input search (official: 1000)"),
        "epsilon": Param(0.2, float, low=0.0, low_open=True, doc="mutation size in normalised units (official 0.2)"),
        "ddv": Param("official", str, choices=DDVS, doc="decision distance vector: official or all_pairs (eq. 3)"),
        "output": Param("logits", str, choices=OUTPUTS, doc="model outputs compared (official: logits)"),
    }

    def _extract(self, victim: nn.Module, data: Dataset, *, seed: int, generator: torch.Generator,
                 device: torch.device):
        p = self.params
        n_data = len(data)  # type: ignore[arg-type]
        n = min(p["num_pairs"], n_data // 2)
        if n < 2:
            raise RemovalNetError("ModelDiff needs at least 4 samples in the verifier's data (2 pairs)")
        idx = torch.randperm(n_data, generator=generator)[:2 * n]
        seeds, labels = dataset_tensors(data, idx.tolist())
        meta = {"num_pairs": n, "num_inputs": 2 * n, "per_suspect": True}
        if n < p["num_pairs"]:
            meta["note"] = f"the data holds only {n_data} samples; num_pairs={p['num_pairs']} was asked"
        return {"indices": idx, "seeds": seeds, "labels": labels}, meta

    def _pair(self, fp: Fingerprint, victim: nn.Module, suspect: nn.Module, *, generator: torch.Generator,
              device: torch.device):
        p = self.params
        seeds = fp.tensors["seeds"]
        iters = p["iterations"]
        positions = torch.randint(0, seeds[0].numel(), (iters,), generator=generator)
        targets = torch.randint(0, seeds.shape[0], (iters,), generator=generator)
        step = p["epsilon"] * input_normalization(victim, seeds.shape[1])[1]
        inputs, accepted, trace = hill_climb(victim, suspect, seeds, positions, targets, step, output=p["output"],
                                             batch_size=p["batch_size"], device=device)
        meta = {"mutations_accepted": int(accepted.sum()), "search_score": float(trace[-1]) if iters else 0.0}
        return {"inputs": inputs, "positions": positions, "targets": targets, "accepted": accepted,
                "ddv_victim": self._ddv(victim, inputs, device)}, meta

    def _ddv(self, model: nn.Module, inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
        out = transform_outputs(batched_logits(model, inputs, batch_size=self.params["batch_size"], device=device),
                                self.params["output"])
        return official_ddv(out) if self.params["ddv"] == "official" else all_pairs_ddv(out)

    def _score(self, fp: Fingerprint, victim: nn.Module, suspect: nn.Module, *, device: torch.device):
        # the victim's DDV on these inputs was computed when pairing (the base class checked the victim's hash)
        return {"MD-DDV": ddv_similarity(fp.tensors["ddv_victim"], self._ddv(suspect, fp.tensors["inputs"], device))}
