"""DeepJudge (Chen et al., S&P 2022): white-box testing metrics between a victim and a suspect.

Six distances (all "distance": larger = less related), paper section 2.3:

* DJ-LOD, eq. (1): mean over test cases of || a_V(x) - a_S(x) ||_p, where a(x) is the layer-l output
  averaged over space per channel (a "neuron" is a CHANNEL; layout NCHW, channel axis 1).
* DJ-LAD, eq. (2): per test case, min-max normalise a(x) over the channels and call a neuron active
  when the normalised value is strictly greater than ``threshold`` (0.5); the L1 difference of the two
  activation patterns, averaged over neurons and test cases.
* DJ-NOD / DJ-NAD: the same two formulas at the output layer (the logits), on the seeds and the test
  cases together.
* DJ-RobD: | acc_V(adv) - acc_S(adv) |, accuracies on PGD adversarial examples made from the victim
  on the seeds. The labels are the seeds' true labels, which are also the victim's predictions on
  them (seeds are correctly classified by construction).
* DJ-JSD: mean Jensen-Shannon divergence (natural log, in [0, ln 2]) of the two models' softmax
  outputs on the same adversarial examples.

Fingerprint (``extract``):

1. Seeds: the victim's correctly classified images of the verifier's data, ranked by the confidence
   sum_k softmax(F_V(x))_k^2 (computed on probabilities: a public port ranks by raw logits), the top
   ``num_seeds`` (default 100, the reference's size).
2. White-box test generation at ``layer`` (default: the victim's ``default_layer``): per channel c,
   k_c = m * max over the seeds of a_c(seed) (m = 3). (seed, channel) pairs, assigned round-robin so
   that every channel gets seeds before any gets a second one, are optimised together: gradient
   ascent on a_c(x) w.r.t. the input with Adam at learning rate ``step`` (0.01), as the reference
   implementation does, x clipped to [0, 1] after every step, for up to ``max_iters`` iterations
   (reference 1000); a pair becomes a test case as soon as a_c(x) > k_c. Up to ``batch_size`` pairs
   are in flight at once and a finished pair is replaced by the next one, so batches stay full; Adam's
   state is per element, so each pair follows exactly the path it would follow alone. At most
   ``max_tests`` pairs are tried (default 256; the reference tries every seed with every channel,
   ``max_tests = num_seeds * C``); how many reached k is recorded in the fingerprint's meta. If none
   does, every tried pair's last iterate is kept and a warning is given. The cost is dominated by the
   pairs that never reach k, which run all ``max_iters`` iterations.
3. PGD (L_inf, untargeted, from the victim, random start) on the seeds: ``pgd_eps`` 0.03, ``pgd_steps``
   10, step ``pgd_eps / 4``. The DeepJudge reference uses eps 0.03..0.1 and 10..40 steps. The seeds are
   the victim's most confident images, so a small budget may leave the victim fully accurate on them
   (seen on Fashion-MNIST at eps 0.03: victim adversarial accuracy 1.0); RobD is then 0 against every
   suspect that is as robust, and carries no evidence. ``victim_adv_accuracy`` in the fingerprint's
   meta tells; raise ``pgd_eps`` / ``pgd_steps`` towards the reference's upper values when it is 1.0.

The fingerprint stores these inputs and the victim's values on them; ``score`` runs only the suspect.

Limitation, measured in the tests: DeepJudge is white-box and assumes the two models' neurons are
aligned (same architecture, channel c of the victim is channel c of the suspect). Permuting the
output channels of a convolution (with its BatchNorm) and the input channels of the next convolution
leaves the function unchanged, so predictions, DJ-NOD and DJ-NAD do not move, yet DJ-LOD and DJ-LAD
at that layer do: a copy can be disguised for the layer metrics at no cost in accuracy.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..utils import RemovalNetError
from .adversarial import pgd
from .base import (Fingerprint, Metric, Verifier, batched_apply, check_bool, check_float, check_int,
                   dataset_tensors, register_verifier)

__all__ = ["DeepJudge", "channel_means", "lod", "lad", "jsd", "robd", "seed_confidence", "select_seeds",
           "generate_tests"]


# --------------------------------------------------------------------------- metric math (pure functions)
def channel_means(z: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, C): each channel averaged over its spatial positions. (N, C) is returned as is."""
    if z.dim() < 2:
        raise RemovalNetError(f"expected activations of shape (N, C, ...), got {tuple(z.shape)}")
    return z if z.dim() == 2 else z.flatten(2).mean(dim=2)


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = channel_means(a).double(), channel_means(b).double()
    if a.shape != b.shape:
        raise RemovalNetError(f"the two models' activations differ in shape: {tuple(a.shape)} vs {tuple(b.shape)} "
                              "(DeepJudge compares the same layer of two models of the same architecture)")
    if a.shape[0] == 0:
        raise RemovalNetError("no test cases to compare on")
    return a, b


def lod(a: torch.Tensor, b: torch.Tensor, p: float = 2.0) -> float:
    """Eq. (1): mean over test cases of the L_p norm of the difference of the channel means."""
    a, b = _pair(a, b)
    return float(torch.linalg.vector_norm(a - b, ord=p, dim=1).mean())


def _active(a: torch.Tensor, threshold: float) -> torch.Tensor:
    lo, hi = a.min(dim=1, keepdim=True).values, a.max(dim=1, keepdim=True).values
    rng = hi - lo
    scaled = torch.where(rng > 0, (a - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(a))
    return scaled > threshold


def lad(a: torch.Tensor, b: torch.Tensor, threshold: float = 0.5) -> float:
    """Eq. (2): per test case min-max normalise over channels, active = value > threshold; mean |phi_V - phi_S|.

    A test case whose channels are all equal has no active neuron.
    """
    a, b = _pair(a, b)
    return float((_active(a, threshold) != _active(b, threshold)).double().mean())


def jsd(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean Jensen-Shannon divergence (natural log) between rows of two probability matrices (N, K)."""
    p, q = p.double(), q.double()
    if p.shape != q.shape or p.dim() != 2:
        raise RemovalNetError(f"jsd expects two (N, K) probability matrices, got {tuple(p.shape)} and {tuple(q.shape)}")
    mid = (p + q) / 2
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, mid)).sum(dim=1)
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, mid)).sum(dim=1)
    return float((0.5 * (kl_pm + kl_qm)).clamp_min(0).mean())


def robd(acc_victim: float, acc_suspect: float) -> float:
    """RobD = |Rob(F_V) - Rob(F_S)|, robustness = accuracy on the victim's adversarial examples."""
    return abs(float(acc_victim) - float(acc_suspect))


def seed_confidence(logits: torch.Tensor) -> torch.Tensor:
    """DeepJudge's seed confidence sum_k softmax(z)_k^2, per row (on probabilities, not on logits)."""
    return F.softmax(logits.double(), dim=1).pow(2).sum(dim=1)


def select_seeds(logits: torch.Tensor, labels: torch.Tensor, num: int) -> torch.Tensor:
    """Indices of the ``num`` most confident correctly classified rows, most confident first (stable on ties)."""
    correct = logits.argmax(dim=1) == labels
    conf = torch.where(correct, seed_confidence(logits), torch.full((len(labels),), -1.0, dtype=torch.float64))
    order = torch.sort(conf, descending=True, stable=True).indices
    return order[:min(num, int(correct.sum()))]


# ------------------------------------------------------------------------------------ input optimisation
def generate_tests(model: nn.Module, layer: int, seeds: torch.Tensor, *, m: float = 3.0, step: float = 0.01,
                   max_iters: int = 1000, max_tests: int = 256, batch_size: int = 256,
                   device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """DeepJudge white-box test generation at ``layer`` (see the module docstring), batched over pairs.

    Returns CPU tensors: ``k`` (C,), and for every tried pair ``x`` (its test case: the first iterate above
    k, else the last iterate), ``seed``, ``channel``, ``reached`` (bool) and ``iters`` (iterations used).
    """
    device = torch.device(device)

    def acts(x: torch.Tensor) -> torch.Tensor:
        return channel_means(model.head(x, layer))

    seed_acts = batched_apply(acts, seeds, batch_size=batch_size, device=device)
    k = m * seed_acts.max(dim=0).values                                    # (C,)
    num_seeds, num_channels = seeds.shape[0], seed_acts.shape[1]
    # round-robin: round j gives channel c the seed (c + j) mod S, so all (seed, channel) pairs are distinct
    total = min(max_tests, num_seeds * num_channels)
    t = torch.arange(total)
    channel = t % num_channels
    seed_idx = (channel + t // num_channels) % num_seeds
    xs = seeds[seed_idx].clone()
    reached, iters = torch.zeros(total, dtype=torch.bool), torch.zeros(total, dtype=torch.long)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    k_dev = k.to(device)
    # a pool of at most batch_size pairs in flight; finished pairs are replaced by the next ones in the queue,
    # so batches stay full. Adam's state is per element, so every pair is optimised exactly as on its own.
    idx = torch.zeros(0, dtype=torch.long)
    x = torch.zeros((0, *seeds.shape[1:]), device=device)
    m1, m2 = torch.zeros_like(x), torch.zeros_like(x)
    t_pair = torch.zeros(0, dtype=torch.long, device=device)         # Adam steps taken by each pair
    nxt = 0
    while nxt < total or len(idx):
        if len(idx) < batch_size and nxt < total:
            new = torch.arange(nxt, min(total, nxt + batch_size - len(idx)))
            nxt += len(new)
            x_new = xs[new].to(device)
            idx = torch.cat([idx, new])
            x = torch.cat([x.detach(), x_new])
            m1, m2 = torch.cat([m1, torch.zeros_like(x_new)]), torch.cat([m2, torch.zeros_like(x_new)])
            t_pair = torch.cat([t_pair, torch.zeros(len(new), dtype=torch.long, device=device)])
        ch = channel[idx].to(device)
        x.requires_grad_(True)
        a = acts(x).gather(1, ch[:, None]).squeeze(1)
        hit = a.detach() > k_dev[ch]
        done = hit | (t_pair >= max_iters)
        (grad,) = torch.autograd.grad(a.sum(), x) if not bool(done.all()) else (None,)
        x = x.detach()
        if bool(done.any()):
            d = done.cpu()
            xs[idx[d]] = x[done].cpu()
            reached[idx[d]] = hit[done].cpu()
            iters[idx[d]] = t_pair[done].cpu()
        keep = ~done
        idx, x, m1, m2, t_pair = idx[keep.cpu()], x[keep], m1[keep], m2[keep], t_pair[keep] + 1
        if grad is None or not len(idx):
            continue
        grad = grad[keep]
        with torch.no_grad():                                              # Adam ascent step, lr = step
            m1.mul_(beta1).add_(grad, alpha=1 - beta1)
            m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            shape = (-1,) + (1,) * (x.dim() - 1)
            tt = t_pair.to(x.dtype).view(shape)
            x = (x + step * (m1 / (1 - beta1 ** tt)) / ((m2 / (1 - beta2 ** tt)).sqrt() + eps)).clamp(0, 1)
    return {"k": k, "x": xs, "seed": seed_idx, "channel": channel, "reached": reached, "iters": iters}


# --------------------------------------------------------------------------------------------- verifier
def _require_split(model: nn.Module, who: str, layer: int) -> None:
    if not hasattr(model, "head") or not hasattr(model, "check_layer"):
        raise RemovalNetError(f"DeepJudge is white-box: the {who} must be a SplitModel exposing head(x, l) "
                              f"(wrap a custom network with removalnet.split_module), got {type(model).__name__}")
    model.check_layer(layer)


def layer_means(model: nn.Module, layer: int, x: torch.Tensor, *, batch_size: int, device: torch.device,
                victim_means: torch.Tensor | None = None) -> torch.Tensor:
    """Channel means of block ``layer``'s output on ``x`` (N x C); with ``victim_means``, the suspect's, checked
    to have the victim's channel count."""
    acts = batched_apply(lambda z: channel_means(model.head(z, layer)), x, batch_size=batch_size, device=device)
    if victim_means is not None and acts.shape[1] != victim_means.shape[1]:
        raise RemovalNetError(
            f"the suspect's block {layer} has {acts.shape[1]} channels, the victim's {victim_means.shape[1]}: "
            "DeepJudge's layer metrics need two models of the same architecture")
    return acts


@register_verifier
class DeepJudge(Verifier):
    """DeepJudge's six testing metrics (DJ-LOD, DJ-LAD, DJ-NOD, DJ-NAD, DJ-RobD, DJ-JSD); module docstring for details.

    Parameters: ``layer`` (None = the victim's default_layer), ``num_seeds`` 100, ``m`` 3.0, ``step`` 0.01,
    ``max_iters`` 1000, ``max_tests`` 256, ``p`` 2.0 (LOD/NOD norm), ``threshold`` 0.5 (LAD/NAD),
    ``pgd_eps`` 0.03, ``pgd_steps`` 10, ``pgd_step_size`` None (= pgd_eps / 4), ``pgd_random_start`` True,
    ``batch_size`` 256.
    """

    name = "deepjudge"
    metrics = (Metric("DJ-LOD", "distance"), Metric("DJ-LAD", "distance"), Metric("DJ-NOD", "distance"),
               Metric("DJ-NAD", "distance"), Metric("DJ-RobD", "distance"), Metric("DJ-JSD", "distance"))
    defaults = {"layer": None, "num_seeds": 100, "m": 3.0, "step": 0.01, "max_iters": 1000, "max_tests": 256,
                "p": 2.0, "threshold": 0.5, "pgd_eps": 0.03, "pgd_steps": 10, "pgd_step_size": None,
                "pgd_random_start": True}

    def _check_params(self) -> None:
        P = self.params
        check_int(P, "layer", minimum=1, allow_none=True)
        check_int(P, "num_seeds", minimum=1)
        check_float(P, "m", minimum=0.0, min_exclusive=True)
        check_float(P, "step", minimum=0.0, min_exclusive=True)
        check_int(P, "max_iters", minimum=0)
        check_int(P, "max_tests", minimum=1)
        check_float(P, "p", minimum=1.0)
        check_float(P, "threshold", minimum=0.0, maximum=1.0)
        check_float(P, "pgd_eps", minimum=0.0, min_exclusive=True, maximum=1.0)
        check_int(P, "pgd_steps", minimum=0)
        check_float(P, "pgd_step_size", minimum=0.0, min_exclusive=True, allow_none=True)
        check_bool(P, "pgd_random_start")

    def _layer(self, victim: nn.Module) -> int:
        layer = self.params["layer"] if self.params["layer"] is not None else getattr(victim, "default_layer", None)
        if layer is None:
            raise RemovalNetError("DeepJudge needs a split layer: set parameter layer or use a SplitModel victim")
        _require_split(victim, "victim", layer)
        return layer

    def _extract(self, victim, data: Dataset, *, seed: int, generator: torch.Generator, device: torch.device):
        P, bs = self.params, self.params["batch_size"]
        layer = self._layer(victim)
        # 1. seeds: one batched pass over the verifier's data
        logits, labels = [], []
        with torch.no_grad():
            for x, y in DataLoader(data, batch_size=bs, shuffle=False, num_workers=0):
                logits.append(victim(torch.as_tensor(x, dtype=torch.float32).to(device)).float().cpu())
                labels.append(torch.as_tensor(y, dtype=torch.int64))
        logits_all, labels_all = torch.cat(logits), torch.cat(labels)
        order = select_seeds(logits_all, labels_all, P["num_seeds"])
        if len(order) == 0:
            raise RemovalNetError("DeepJudge found no correctly classified image in the verifier's data: "
                                  "is this the victim's test set?")
        seeds_x, seeds_y = dataset_tensors(data, order.tolist(), batch_size=bs)
        # 2. white-box test cases at the layer
        gen = generate_tests(victim, layer, seeds_x, m=P["m"], step=P["step"], max_iters=P["max_iters"],
                             max_tests=P["max_tests"], batch_size=bs, device=device)
        reached = gen["reached"]
        fallback = not bool(reached.any())
        keep = torch.ones_like(reached) if fallback else reached
        if fallback:
            warnings.warn(f"DeepJudge: no test case reached k = {P['m']} x the seeds' maximum activation in "
                          f"{P['max_iters']} iterations at layer {layer}; using the last iterates instead "
                          "(raise max_iters or lower m)", stacklevel=3)
        tests_x = gen["x"][keep]

        victim_layer = layer_means(victim, layer, tests_x, batch_size=bs, device=device)
        victim_out = batched_apply(victim, torch.cat([seeds_x, tests_x]), batch_size=bs, device=device)
        # 3. adversarial examples from the victim on the seeds
        step_size = P["pgd_step_size"] if P["pgd_step_size"] is not None else P["pgd_eps"] / 4
        adv_x = pgd(victim, seeds_x.to(device), seeds_y.to(device), eps=P["pgd_eps"], alpha=step_size,
                    steps=P["pgd_steps"], random_start=P["pgd_random_start"], generator=generator,
                    batch_size=bs).cpu()
        adv_logits = batched_apply(victim, adv_x, batch_size=bs, device=device)
        victim_adv_acc = (adv_logits.argmax(1) == seeds_y).double().mean().reshape(1)
        per_channel = torch.bincount(gen["channel"][reached], minlength=len(gen["k"]))
        tensors = {
            "seeds_x": seeds_x, "seeds_y": seeds_y, "k": gen["k"],
            "tests_x": tests_x, "tests_seed": gen["seed"][keep], "tests_channel": gen["channel"][keep],
            "victim_layer": victim_layer, "victim_logits": victim_out,
            "adv_x": adv_x, "adv_y": seeds_y.clone(), "victim_adv_logits": adv_logits,
            "victim_adv_acc": victim_adv_acc,
        }
        meta = {
            "layer": layer, "num_channels": int(len(gen["k"])), "num_seeds": int(len(seeds_x)),
            "correct_in_data": int((logits_all.argmax(1) == labels_all).sum()),
            "tests_tried": int(len(reached)), "tests_reached": int(reached.sum()), "tests_kept": int(len(tests_x)),
            "fallback_unreached": fallback, "channels_reached": int((per_channel > 0).sum()),
            "mean_iters_reached": float(gen["iters"][reached].double().mean()) if reached.any() else None,
            "pgd_step_size": step_size, "victim_adv_accuracy": float(victim_adv_acc),
        }
        return tensors, meta

    def _score(self, fp: Fingerprint, victim, suspect, *, device: torch.device) -> dict[str, float]:
        P, T, bs = fp.params, fp.tensors, self.params["batch_size"]
        layer = int(fp.meta["layer"])
        _require_split(suspect, "suspect", layer)

        s_layer = layer_means(suspect, layer, T["tests_x"], batch_size=bs, device=device,
                              victim_means=T["victim_layer"])
        s_out = batched_apply(suspect, torch.cat([T["seeds_x"], T["tests_x"]]), batch_size=bs, device=device)
        s_adv = batched_apply(suspect, T["adv_x"], batch_size=bs, device=device)
        if s_out.shape != T["victim_logits"].shape:
            raise RemovalNetError(f"the suspect outputs {s_out.shape[1]} classes, the victim {T['victim_logits'].shape[1]}")
        s_acc = float((s_adv.argmax(1) == T["adv_y"]).double().mean())
        return {
            "DJ-LOD": lod(T["victim_layer"], s_layer, P["p"]),
            "DJ-LAD": lad(T["victim_layer"], s_layer, P["threshold"]),
            "DJ-NOD": lod(T["victim_logits"], s_out, P["p"]),
            "DJ-NAD": lad(T["victim_logits"], s_out, P["threshold"]),
            "DJ-RobD": robd(float(T["victim_adv_acc"][0]), s_acc),
            "DJ-JSD": jsd(F.softmax(T["victim_adv_logits"].double(), dim=1), F.softmax(s_adv.double(), dim=1)),
        }
