"""KnockoffNets (Orekondy et al., CVPR 2019): model stealing, the efficiency baseline of paper 4.4.2.

A freshly initialised model of the victim's architecture (same input normalisation, unrelated weights;
initialised from a seed drawn from the attack's generator, so a run with seed s never starts from the
initialisation of a victim trained with seed s) learns from the victim's answers to queries drawn from
the substitute pool D_sub:

* ``policy="random"``: each iteration queries a batch drawn uniformly without replacement (a fresh
  permutation of the pool per epoch);
* ``policy="adaptive"``: a gradient bandit (Sutton & Barto, section 2.8; Knockoff's adaptive strategy)
  over the pool's classes, i.e. its labels (the victim's predictions when D_sub was built with
  ``labels="victim"``, obtained when D_sub was built and not counted below). Each query samples a class
  ``a ~ pi = softmax(H)`` and then an image of that class (without replacement until the class is used
  up). Per query the reward is, as in
  Knockoff, ``cert`` (top-1 minus top-2 victim probability), ``div`` (sum_k max(0, p_k - running mean
  p_k)), ``loss`` (cross-entropy of the current surrogate's output against the victim's probabilities,
  computed in the same forward pass as the training loss) or ``all`` (their mean); each reward type is
  standardised by its running mean and variance, and the preferences follow
  ``H += bandit_lr x mean_i (r_i - r_bar) (1[a = a_i] - pi)`` once per batch (``r_bar``: running mean).

Every image sent to the victim counts as one query: iteration t has made ``t x batch`` queries, and
training stops when ``budget`` queries are spent (default ``batch_size x iterations``; the paper's budget
is batch x 10,000). The surrogate learns from the victim's probabilities (``target="soft"``, KL
divergence) or its top-1 labels (``"hard"``, cross-entropy).

``self.history`` is the learning curve of paper Fig. 7: at t = 0, every ``eval_every`` iterations and
at every checkpoint, ``{"t", "queries", "time_s", "accuracy", "fidelity"}`` with ``time_s`` the
wall-clock training time so far (evaluation and checkpoint callbacks excluded), ``accuracy`` on
``eval_set`` and ``fidelity`` the fraction of ``eval_set`` where the surrogate's top-1 equals the
victim's (both None without an eval set; the evaluation's victim outputs are not counted as queries).

Defaults: ``lr`` 0.01 and weight decay 5e-3 (reference code's stealing run), batch 128, SGD momentum 0.9,
1000 iterations (paper), cosine schedule (reference code), soft targets (Knockoff's victims return
posteriors), reward ``all`` (the Knockoff implementation the reference code uses).
"""
from __future__ import annotations

import math
import time
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..data.subsets import dataset_labels
from ..models.split import SplitModel
from ..train import predict_logits
from ..utils import RemovalNetError
from .base import Attack, AttackContext, Param, register_attack
from .independent import fresh_like

__all__ = ["KnockoffNets", "ClassBandit"]


class ClassBandit:
    """Gradient bandit over the classes of a pool: sample query indices, update from per-query rewards."""

    def __init__(self, labels: torch.Tensor, generator: torch.Generator, *, lr: float, reward: str):
        labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        self.classes, inverse = torch.unique(labels, return_inverse=True)
        self.counts = torch.bincount(inverse, minlength=len(self.classes))
        self.order = torch.argsort(inverse, stable=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.action_of = {int(c): i for i, c in enumerate(self.classes)}
        self.H = torch.zeros(len(self.classes), dtype=torch.float64)
        self._perm: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * len(self.classes)
        self._cursor = [0] * len(self.classes)
        self.generator, self.lr, self.reward = generator, lr, reward
        self.kinds = ("cert", "div", "loss") if reward == "all" else (reward,)
        self.n_seen = 0
        self.stat_mean = torch.zeros(len(self.kinds), dtype=torch.float64)
        self.stat_m2 = torch.zeros(len(self.kinds), dtype=torch.float64)
        self.reward_mean = 0.0
        self.y_mean: torch.Tensor | None = None

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.H, 0)

    def sample(self, n: int) -> torch.Tensor:
        """Pool indices of ``n`` queries: a class from pi, then the next member of that class in a random
        order (without replacement until the class is used up, then reshuffled)."""
        actions = torch.multinomial(self.probs, n, replacement=True, generator=self.generator)
        out = torch.empty(n, dtype=torch.long)
        for j, a in enumerate(actions.tolist()):
            if self._cursor[a] >= len(self._perm[a]):
                start, count = int(self.starts[a]), int(self.counts[a])
                self._perm[a] = self.order[start + torch.randperm(count, generator=self.generator)]
                self._cursor[a] = 0
            out[j] = self._perm[a][self._cursor[a]]
            self._cursor[a] += 1
        return out

    def update(self, labels: torch.Tensor, victim_probs: torch.Tensor, surrogate_logits: torch.Tensor) -> None:
        """One preference step from a batch of queries (``labels``: their pool labels)."""
        pv = victim_probs.detach().double().cpu()
        actions = torch.tensor([self.action_of[int(c)] for c in labels.cpu()], dtype=torch.long)
        b = len(actions)
        if self.y_mean is None:
            self.y_mean = torch.zeros(pv.shape[1], dtype=torch.float64)
        self.y_mean += (pv.sum(0) - b * self.y_mean) / (self.n_seen + b)  # running mean incl. this batch
        parts = []
        for kind in self.kinds:
            if kind == "cert":
                top2 = pv.topk(2, dim=1).values
                parts.append(top2[:, 0] - top2[:, 1])
            elif kind == "div":
                parts.append((pv - self.y_mean).clamp_min(0).sum(1))
            else:
                logp = F.log_softmax(surrogate_logits.detach().double().cpu(), dim=1)
                parts.append(-(pv * logp).sum(1))
        raw = torch.stack(parts, 1)  # b x kinds
        # Chan et al. parallel update of the running mean / variance of every reward type
        n_a, n_b = self.n_seen, b
        mean_b = raw.mean(0)
        m2_b = ((raw - mean_b) ** 2).sum(0)
        delta = mean_b - self.stat_mean
        self.stat_mean = self.stat_mean + delta * n_b / (n_a + n_b)
        self.stat_m2 = self.stat_m2 + m2_b + delta ** 2 * n_a * n_b / (n_a + n_b)
        self.n_seen = n_a + n_b
        std = (self.stat_m2 / max(self.n_seen - 1, 1)).sqrt().clamp_min(1e-8)
        r = ((raw - self.stat_mean) / std).mean(1)
        pi = self.probs
        onehot = F.one_hot(actions, len(self.classes)).double()
        self.H += self.lr * ((r - self.reward_mean)[:, None] * (onehot - pi)).mean(0)
        self.reward_mean += (float(r.sum()) - b * self.reward_mean) / self.n_seen


@register_attack
class KnockoffNets(Attack):
    """KnockoffNets: train a fresh model on the victim's outputs for random/adaptive queries from D_sub."""

    name = "knockoff"
    PARAMS = {
        "lr": Param(0.01, float, low=0.0, low_open=True, doc="SGD learning rate (reference code: 0.01)"),
        "weight_decay": Param(5e-3, float, low=0.0, doc="SGD weight decay (reference code: 5e-3)"),
        "policy": Param("random", str, choices=("random", "adaptive"), doc="query selection policy"),
        "budget": Param(None, int, low=1, nullable=True,
                        doc="victim queries (null: batch_size x iterations; paper: batch x 10,000)"),
        "target": Param("soft", str, choices=("soft", "hard"),
                        doc="train on the victim's probabilities (KL) or top-1 labels (CE)"),
        "reward": Param("all", str, choices=("cert", "div", "loss", "all"), doc="adaptive policy's reward"),
        "bandit_lr": Param(0.1, float, low=0.0, low_open=True, doc="adaptive policy's preference step size"),
        "eval_every": Param(100, int, low=1, doc="iterations between learning-curve points"),
    }

    def make_surrogate(self, victim: SplitModel, ctx: AttackContext) -> SplitModel:
        """A fresh model of the victim's architecture, initialised from a seed drawn from the attack's
        generator: never the initialisation of a model trained with the same integer seed."""
        self.init_seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            return fresh_like(victim)

    def run(self, ctx: AttackContext) -> None:
        p = self.params
        model, victim = ctx.surrogate, ctx.victim
        n_pool = len(ctx.substitute)
        b = min(p["batch_size"], n_pool)
        budget = p["budget"] if p["budget"] is not None else p["batch_size"] * p["iterations"]
        iterations = min(p["iterations"], math.ceil(budget / b))
        self.budget = budget
        self.queries = 0
        self._victim_pred = (predict_logits(victim, ctx.eval_set, device=ctx.device).argmax(1)
                             if ctx.eval_set is not None else None)
        self._eval_labels = (torch.from_numpy(dataset_labels(ctx.eval_set))
                             if ctx.eval_set is not None else None)
        self._clock = time.perf_counter()
        self._overhead = 0.0  # evaluation and checkpoint callbacks, excluded from time_s

        bandit = None
        if p["policy"] == "adaptive":
            bandit = ClassBandit(torch.from_numpy(dataset_labels(ctx.substitute)), ctx.generator,
                                 lr=p["bandit_lr"], reward=p["reward"])
        self.bandit = bandit
        stream = self._queries_stream(ctx, b, budget, bandit)

        def step(x: torch.Tensor, y: torch.Tensor, t: int):
            with torch.no_grad():
                v_logits = victim(x)  # the query
            self.queries += x.shape[0]
            pv = F.softmax(v_logits, dim=1)
            logits = model(x)
            if p["target"] == "soft":
                loss = F.kl_div(F.log_softmax(logits, dim=1), pv, reduction="batchmean")
            else:
                loss = F.cross_entropy(logits, v_logits.argmax(1))
            if bandit is not None:
                bandit.update(y, pv, logits)
            return loss, {"loss": loss, "queries": self.queries}

        def after_step(t: int) -> None:
            if t % p["eval_every"] == 0 and not (t % p["checkpoint_every"] == 0 or t == iterations):
                self.history.append(self._curve_point(ctx, t))

        self.fit(ctx, step, after_step=after_step, iterations=iterations, batch_stream=stream)

    def _queries_stream(self, ctx: AttackContext, b: int, budget: int,
                        bandit: ClassBandit | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of queries, the last one cut to what is left of the budget."""
        base = self.batches(ctx, b) if bandit is None else None
        ds = ctx.substitute
        while True:
            left = budget - self.queries
            if left <= 0:
                raise RemovalNetError("query budget exhausted")  # fit never asks past the budget
            if base is not None:
                x, y = next(base)
            else:
                idx = bandit.sample(b).tolist()
                getter = getattr(ds, "__getitems__", None)
                items = getter(idx) if getter is not None else [ds[i] for i in idx]
                x = torch.stack([torch.as_tensor(v[0]) for v in items]).to(ctx.device)
                y = torch.as_tensor([int(v[1]) for v in items], dtype=torch.long).to(ctx.device)
            yield x[:left], y[:left]

    def _curve_point(self, ctx: AttackContext, t: int) -> dict:
        start = time.perf_counter()
        acc = fid = None
        if ctx.eval_set is not None:
            pred = predict_logits(ctx.surrogate, ctx.eval_set, device=ctx.device).argmax(1)
            acc = float((pred == self._eval_labels).double().mean())
            fid = float((pred == self._victim_pred).double().mean())
        point = {"t": t, "queries": self.queries,
                 "time_s": start - self._clock - self._overhead, "accuracy": acc, "fidelity": fid}
        self._overhead += time.perf_counter() - start
        return point

    def checkpoint(self, ctx: AttackContext, t: int, model: nn.Module | None = None) -> float | None:
        """A learning-curve point that is also a checkpoint event (model saved by the runner)."""
        point = self._curve_point(ctx, t)
        self.history.append(point)
        start = time.perf_counter()
        self.emit(ctx, "checkpoint", t=t, model=ctx.surrogate if model is None else model,
                  accuracy=point["accuracy"])
        self._overhead += time.perf_counter() - start
        return point["accuracy"]
