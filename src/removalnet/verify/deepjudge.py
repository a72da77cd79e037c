"""DeepJudge (Chen et al., S&P 2022): white-box testing metrics between a victim and a suspect.

Official code: Testing4AI/DeepJudge (``DeepJudge/metrics.py``, ``neuron_fuzz.py``, ``adversarial_attacks.py``).
Six distances (all "distance": larger = less related); docs/verifiers.md says where we follow the official
code and where we deliberately differ.

A NEURON is one unit of the tested layer's output after averaging all other axes: a channel of a conv output
(N, C, H, W) averaged over H and W, a hidden unit of a transformer block output (N, tokens, hidden) averaged
over the tokens (the official Keras code takes the last axis as neurons; tokens are never neurons). Every
white-box test case belongs to one tested neuron (the one it was generated for).

* DJ-LOD, eq. (1), official ``LOD``: mean over test cases of || a_V(x) - a_S(x) ||_p over all neurons (p = 2).
* DJ-LAD, official ``LAD``: per test case, min-max normalise the neuron vector as the official code does,
  (a - min) / (max - min + 1e-6), active = value > ``threshold`` (0.5); the L1 norm of the difference of the
  two activation patterns (``lad_reduction="sum"``, the official default, values like the paper's tables) or
  its mean over neurons (``"mean"``, the paper's eq. 2 with 1/N_l, values <= 1); averaged over test cases.
* DJ-NOD, official ``NOD``: | a_V(x)[c] - a_S(x)[c] | of each test case's OWN neuron c, averaged over all
  test cases.
* DJ-NAD, official ``NAD``: the same on the thresholded activations of the test case's neuron, averaged over
  the test cases, times the number of tested neurons.
* DJ-RobD: | Rob(F_V) - Rob(F_S) |, Rob = accuracy on the black-box test cases (official ``Rob``). The official
  test cases are the victim's adversarial examples that FOOL the victim, so Rob(F_V) = 0 and RobD = Rob(F_S),
  which is what the official ``blackbox_evaluation.py`` prints as "RobD"; we compute Rob(F_V) on the kept
  examples all the same (it is 0 by construction).
* DJ-JSD, official ``JSD``: mean Jensen-Shannon divergence (natural log, in [0, ln 2]) of the two models'
  softmax outputs on the same adversarial examples.

Fingerprint (``extract``):

1. Seeds: the victim's correctly classified images of the verifier's data, ranked by the confidence
   sum_k softmax(F_V(x))_k^2 (on probabilities: a public port ranks by raw logits), the top ``num_seeds``
   (default 100, the official ``NUMS``).
2. White-box test generation at ``layer`` (default: the victim's ``default_layer``), official
   ``NeuronFuzzing``: k_c = m * max of neuron c over the first ``k_images`` images of the victim's TRAINING
   data (official: 20,000; ``extract(..., train_data=...)``); without training data, over the seeds (what the
   official code does when it is given no training set; ``k_source`` in the meta says which). (seed, neuron)
   pairs, assigned round-robin so that every neuron gets seeds before any gets a second one, are optimised
   together: gradient ascent on a_c(x) w.r.t. the input with Adam at learning rate ``step`` (0.01), x clipped
   to [0, 1] after every step (the official code does not clip), for up to ``max_iters`` iterations (1000); a
   pair becomes a test case as soon as a_c(x) > k_c after a step (as the official loop, which steps before it
   checks: the unmodified seed is never a test case). Up to ``batch_size`` pairs are in flight at once; Adam's
   state is per element, so each pair follows exactly the path it would follow alone. At most ``max_tests``
   pairs are tried (default 256; the official code tries every seed with every neuron, ``num_seeds * C``);
   how many reached k is recorded in the meta. If none does, every tried pair's last iterate is kept, a
   warning is given, and ``degenerate`` in the meta lists the white-box metrics (the official code has no
   test case then: they carry no evidence, and are flagged and left out of votes).
3. Black-box test cases from the victim on the first ``adv_seeds`` (1000) images of the same ranking (the
   official ``seed_selection.py`` saves 1000 seeds; ``whitebox_generation.py`` uses the first 100 of them,
   ``blackbox_generation.py`` all of them), official ``adversarial_attacks.PGD`` with the generation script's
   settings: random start uniform in [-``pgd_eps``, ``pgd_eps``] (0.1), ``pgd_steps`` (10)
   sign-gradient steps of ``pgd_step_size`` (0.03) on the cross-entropy of the true labels, clipped to [0, 1]
   only (no projection to the eps-ball, as the official code); ``adv_method="fgsm"``: the official ``FGSM``
   (random start, one step of ``pgd_eps``). Only the examples that fool the victim are kept; how many is
   ``adv_kept`` in the meta. None kept: a warning at extraction, ``degenerate`` in the meta lists DJ-RobD and
   DJ-JSD, and their score is NaN (never a silent 0; the threshold code refuses to judge NaN).

The fingerprint stores these inputs and the victim's values on them; ``score`` runs only the suspect.
Steps 1-3 are the test generation (``generate``: a fingerprint of its own, ``deepjudge-tests``, keyed by the
``GENERATION_PARAMS`` alone), which ``deepjudge_aligned`` and ``deepjudge_scaled`` share: through a
:class:`~removalnet.verify.FingerprintCache`, the three verifiers generate once.

Limitation, measured in the tests: DeepJudge is white-box and assumes the two models' neurons are
aligned (same architecture, channel c of the victim is channel c of the suspect). Permuting the
output channels of a convolution (with its BatchNorm) and the input channels of the next convolution
leaves the function unchanged, so predictions, DJ-RobD and DJ-JSD do not move, yet all four white-box
metrics at that layer do (DJ-NOD and DJ-NAD included: they read neuron c of both models).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..params import Param
from ..utils import RemovalNetError
from .adversarial import pgd
from .base import Fingerprint, Metric, Verifier, batched_apply, dataset_tensors, register_verifier

__all__ = ["DeepJudge", "activation_pattern", "channel_means", "lod", "lad", "nod", "nad", "jsd", "robd",
           "seed_confidence", "select_seeds", "generate_tests", "neuron_max", "adversarial_tests"]


# --------------------------------------------------------------------------- metric math (pure functions)
LAD_REDUCTIONS = ("sum", "mean")
ADV_METHODS = ("pgd", "fgsm")


def channel_means(z: torch.Tensor) -> torch.Tensor:
    """Neuron values (N, neurons): (N, C, *spatial) -> each channel averaged over its spatial positions;
    (N, tokens, hidden) -> each hidden unit averaged over the tokens; (N, C) is returned as is."""
    if z.dim() < 2:
        raise RemovalNetError(f"expected activations of shape (N, C, ...) or (N, tokens, hidden), got {tuple(z.shape)}")
    if z.dim() == 2:
        return z
    if z.dim() == 3:          # transformer block output: neurons are the LAST axis (official: mean of all others)
        return z.mean(dim=1)
    return z.flatten(2).mean(dim=2)


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = channel_means(a).double(), channel_means(b).double()
    if a.shape != b.shape:
        raise RemovalNetError(f"the two models' activations differ in shape: {tuple(a.shape)} vs {tuple(b.shape)} "
                              "(DeepJudge compares the same layer of two models of the same architecture)")
    if a.shape[0] == 0:
        raise RemovalNetError("no test cases to compare on")
    return a, b


def lod(a: torch.Tensor, b: torch.Tensor, p: float = 2.0) -> float:
    """Eq. (1), official ``LOD``: mean over test cases of the L_p norm of the difference of the neuron values."""
    a, b = _pair(a, b)
    return float(torch.linalg.vector_norm(a - b, ord=p, dim=1).mean())


def activation_pattern(a: torch.Tensor, threshold: float) -> torch.Tensor:
    """Official ``normalize`` then ``> theta``: over the last axis (the neurons of one test case),
    (a - min) / (max - min + 1e-6) > threshold."""
    lo, hi = a.min(dim=-1, keepdim=True).values, a.max(dim=-1, keepdim=True).values
    return (a - lo) / (hi - lo + 1e-6) > threshold


def lad(a: torch.Tensor, b: torch.Tensor, threshold: float = 0.5, reduction: str = "sum") -> float:
    """Official ``LAD``: per test case the L1 norm (``"sum"``) or the mean (``"mean"``, eq. 2) over neurons of
    |phi_V - phi_S|, phi = thresholded min-max normalised neuron values; averaged over test cases."""
    if reduction not in LAD_REDUCTIONS:
        raise RemovalNetError(f"lad reduction must be one of {LAD_REDUCTIONS}, got {reduction!r}")
    a, b = _pair(a, b)
    diff = (activation_pattern(a, threshold) != activation_pattern(b, threshold)).double()
    per_case = diff.sum(dim=1) if reduction == "sum" else diff.mean(dim=1)
    return float(per_case.mean())


def _own_neuron(a: torch.Tensor, b: torch.Tensor, neuron: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a, b = _pair(a, b)
    neuron = torch.as_tensor(neuron, dtype=torch.long).reshape(-1)
    if len(neuron) != a.shape[0]:
        raise RemovalNetError(f"{len(neuron)} neuron indices for {a.shape[0]} test cases")
    if len(neuron) and (int(neuron.min()) < 0 or int(neuron.max()) >= a.shape[1]):
        raise RemovalNetError(f"neuron index out of range for a layer of {a.shape[1]} neurons")
    return a, b, neuron


def nod(a: torch.Tensor, b: torch.Tensor, neuron: torch.Tensor) -> float:
    """Official ``NOD``: mean over test cases i of | a[i, neuron[i]] - b[i, neuron[i]] | (each test case's own
    tested neuron)."""
    a, b, neuron = _own_neuron(a, b, neuron)
    rows = torch.arange(a.shape[0])
    return float((a[rows, neuron] - b[rows, neuron]).abs().mean())


def nad(a: torch.Tensor, b: torch.Tensor, neuron: torch.Tensor, num_neurons: int, threshold: float = 0.5) -> float:
    """Official ``NAD``: mean over test cases of |phi_V - phi_S| at the test case's own neuron (phi as in
    :func:`lad`), times ``num_neurons``, the number of tested neurons."""
    a, b, neuron = _own_neuron(a, b, neuron)
    rows = torch.arange(a.shape[0])
    diff = (activation_pattern(a, threshold)[rows, neuron] != activation_pattern(b, threshold)[rows, neuron]).double()
    return float(diff.mean()) * int(num_neurons)


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
    """RobD = |Rob(F_V) - Rob(F_S)|, Rob = accuracy on the black-box test cases (official ``Rob``)."""
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
def neuron_max(model: nn.Module, layer: int, x: torch.Tensor, *, batch_size: int = 256,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Official ``NeuronFuzzing.getKs`` without the factor m: the maximum of every neuron of ``layer`` over ``x``."""
    return layer_means(model, layer, x, batch_size=batch_size, device=torch.device(device)).max(dim=0).values


def generate_tests(model: nn.Module, layer: int, seeds: torch.Tensor, *, m: float = 3.0, step: float = 0.01,
                   max_iters: int = 1000, max_tests: int = 256, batch_size: int = 256,
                   device: torch.device | str = "cpu", neuron_maxima: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """DeepJudge white-box test generation at ``layer`` (see the module docstring), batched over pairs.

    ``neuron_maxima``: every neuron's maximum over the official k data (the training images); None: over the
    seeds. k = m * neuron_maxima. Returns CPU tensors: ``k`` (C,), and for every tried pair ``x`` (its test
    case: the first iterate above k, else the last iterate), ``seed``, ``channel`` (the tested neuron),
    ``reached`` (bool) and ``iters`` (iterations used).
    """
    device = torch.device(device)

    def acts(x: torch.Tensor) -> torch.Tensor:
        return channel_means(model.head(x, layer))

    if neuron_maxima is None:
        neuron_maxima = neuron_max(model, layer, seeds, batch_size=batch_size, device=device)
    k = m * neuron_maxima.float()                                          # (C,)
    num_seeds, num_channels = seeds.shape[0], len(k)
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
        hit = (a.detach() > k_dev[ch]) & (t_pair >= 1)      # official: a step first, then the check
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


# ---------------------------------------------------------------------------------- black-box test cases
def adversarial_tests(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, method: str = "pgd", eps: float = 0.1,
                      steps: int = 10, step_size: float = 0.03, random_start: bool = True,
                      generator: torch.Generator | None = None, batch_size: int = 256,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official ``adversarial_attacks.PGD`` / ``FGSM`` on ``(x, y)``: random start uniform in [-eps, eps],
    sign-gradient steps of ``step_size`` (PGD, ``steps`` of them) or one step of ``eps`` (FGSM) on the
    cross-entropy of ``y``, clipped to [0, 1] only (no eps-ball projection, as the official code).

    Returns ``(adv_x, logits, fooled)`` for every input (CPU): the model's logits on ``adv_x`` and whether it
    misclassifies them; the official generator keeps only the ``fooled`` rows.
    """
    if method not in ADV_METHODS:
        raise RemovalNetError(f"adversarial method must be one of {ADV_METHODS}, got {method!r}")
    device = torch.device(device)
    if method == "fgsm":
        steps, step_size = 1, eps
    adv = pgd(model, x.to(device), y.to(device), eps=eps, alpha=step_size, steps=steps, random_start=random_start,
              generator=generator, batch_size=batch_size, project=False).cpu()
    logits = batched_apply(model, adv, batch_size=batch_size, device=device)
    return adv, logits, logits.argmax(1) != y.cpu()


# --------------------------------------------------------------------------------------------- verifier
def _require_split(model: nn.Module, who: str, layer: int) -> None:
    if not hasattr(model, "head") or not hasattr(model, "check_layer"):
        raise RemovalNetError(f"DeepJudge is white-box: the {who} must be a SplitModel exposing head(x, l) "
                              f"(wrap a custom network with removalnet.split_module), got {type(model).__name__}")
    model.check_layer(layer)


def layer_means(model: nn.Module, layer: int, x: torch.Tensor, *, batch_size: int, device: torch.device,
                victim_means: torch.Tensor | None = None) -> torch.Tensor:
    """Neuron values (:func:`channel_means`) of block ``layer``'s output on ``x`` (N x C); with ``victim_means``,
    the suspect's, checked to have the victim's neuron count."""
    acts = batched_apply(lambda z: channel_means(model.head(z, layer)), x, batch_size=batch_size, device=device)
    if victim_means is not None and acts.shape[1] != victim_means.shape[1]:
        raise RemovalNetError(
            f"the suspect's block {layer} has {acts.shape[1]} channels, the victim's {victim_means.shape[1]}: "
            "DeepJudge's layer metrics need two models of the same architecture")
    return acts


@register_verifier
class DeepJudge(Verifier):
    """DeepJudge's six testing metrics (DJ-LOD, DJ-LAD, DJ-NOD, DJ-NAD, DJ-RobD, DJ-JSD); module docstring for details.

    Parameters: ``PARAMS`` (defaults: the official code's; ``removalnet verify --list`` prints them).
    """

    name = "deepjudge"
    metrics = (Metric("DJ-LOD", "distance"), Metric("DJ-LAD", "distance"), Metric("DJ-NOD", "distance"),
               Metric("DJ-NAD", "distance"), Metric("DJ-RobD", "distance"), Metric("DJ-JSD", "distance"))
    PARAMS = {
        "layer": Param(None, int, low=1, nullable=True,
                       doc="split layer whose neurons are tested (None: the victim's default_layer)"),
        "num_seeds": Param(100, int, low=1, doc="seed images: the victim's most confident correct ones (NUMS)"),
        "adv_seeds": Param(1000, int, low=1,
                           doc="seeds of the black-box test cases, from the same ranking (official seed file: 1000)"),
        "m": Param(3.0, float, low=0.0, low_open=True, doc="k_c = m x neuron c's maximum on the training images"),
        "step": Param(0.01, float, low=0.0, low_open=True, doc="Adam learning rate of the white-box test generation"),
        "max_iters": Param(1000, int, low=0, doc="test-generation iterations per (seed, neuron) pair"),
        "max_tests": Param(256, int, low=1, doc="(seed, neuron) pairs tried (official: num_seeds x neurons)"),
        "k_images": Param(20000, int, low=1, doc="training images the neuron maxima for k are taken over"),
        "p": Param(2.0, float, low=1.0, doc="norm of DJ-LOD"),
        "threshold": Param(0.5, float, low=0.0, high=1.0, doc="activation threshold of DJ-LAD and DJ-NAD"),
        "lad_reduction": Param("sum", str, choices=LAD_REDUCTIONS,
                               doc="DJ-LAD over neurons: sum (official code) or mean (the paper's eq. 2)"),
        "adv_method": Param("pgd", str, choices=ADV_METHODS, doc="black-box test cases: official PGD or FGSM"),
        "pgd_eps": Param(0.1, float, low=0.0, low_open=True, high=1.0,
                         doc="random start range (and the FGSM step) in pixel units"),
        "pgd_steps": Param(10, int, low=1, doc="PGD sign-gradient steps"),
        "pgd_step_size": Param(0.03, float, low=0.0, low_open=True, doc="PGD step in pixel units"),
        "pgd_random_start": Param(True, bool, doc="PGD starts at a uniform random point of the eps-box"),
    }
    uses_train_data = True
    generation = "deepjudge-tests"
    #: the parameters that decide the seeds and the test cases (the others only decide how a suspect is measured)
    GENERATION_PARAMS = ("layer", "num_seeds", "adv_seeds", "m", "step", "max_iters", "max_tests", "k_images",
                         "adv_method", "pgd_eps", "pgd_steps", "pgd_step_size", "pgd_random_start")

    def generation_params(self) -> dict:
        return {k: self.params[k] for k in self.GENERATION_PARAMS}

    def _layer(self, victim: nn.Module) -> int:
        layer = self.params["layer"] if self.params["layer"] is not None else getattr(victim, "default_layer", None)
        if layer is None:
            raise RemovalNetError("DeepJudge needs a split layer: set parameter layer or use a SplitModel victim")
        _require_split(victim, "victim", layer)
        return layer

    def _neuron_maxima(self, victim, layer: int, train_data: Dataset, device: torch.device) -> torch.Tensor:
        """Every neuron's maximum over the first ``k_images`` training images (streamed, never stacked)."""
        n = min(self.params["k_images"], len(train_data))  # type: ignore[arg-type]
        if n == 0:
            raise RemovalNetError("DeepJudge was given an empty training set for k")
        best = None
        bs = self.params["batch_size"]
        for x, _ in DataLoader(Subset(train_data, range(n)), batch_size=bs, shuffle=False, num_workers=0):
            a = neuron_max(victim, layer, torch.as_tensor(x, dtype=torch.float32), batch_size=bs, device=device)
            best = a if best is None else torch.maximum(best, a)
        return best

    def _generate(self, victim, data: Dataset, *, seed: int, generator: torch.Generator, device: torch.device,
                  train_data: Dataset | None = None):
        """The seeds, the white-box and the black-box test cases and the victim's values on them (steps 1-3 of
        the module docstring): what deepjudge, deepjudge_aligned and deepjudge_scaled share."""
        P, bs = self.params, self.params["batch_size"]
        layer = self._layer(victim)
        # 1. seeds: one batched pass over the verifier's data
        logits, labels = [], []
        with torch.inference_mode():
            for x, y in DataLoader(data, batch_size=bs, shuffle=False, num_workers=0):
                logits.append(victim(torch.as_tensor(x, dtype=torch.float32).to(device)).float().cpu())
                labels.append(torch.as_tensor(y, dtype=torch.int64))
        logits_all, labels_all = torch.cat(logits), torch.cat(labels)
        # the official seed file: the top of the ranking; white-box uses its first num_seeds, black-box adv_seeds
        order = select_seeds(logits_all, labels_all, max(P["num_seeds"], P["adv_seeds"]))
        if len(order) == 0:
            raise RemovalNetError("DeepJudge found no correctly classified image in the verifier's data: "
                                  "is this the victim's test set?")
        ranked_x, ranked_y = dataset_tensors(data, order.tolist(), batch_size=bs)
        seeds_x, seeds_y = ranked_x[:P["num_seeds"]], ranked_y[:P["num_seeds"]]
        adv_seeds_x, adv_seeds_y = ranked_x[:P["adv_seeds"]], ranked_y[:P["adv_seeds"]]
        # 2. white-box test cases at the layer; k from the training data (official) or the seeds
        maxima = None if train_data is None else self._neuron_maxima(victim, layer, train_data, device)
        gen = generate_tests(victim, layer, seeds_x, m=P["m"], step=P["step"], max_iters=P["max_iters"],
                             max_tests=P["max_tests"], batch_size=bs, device=device, neuron_maxima=maxima)
        reached = gen["reached"]
        fallback = not bool(reached.any())
        keep = torch.ones_like(reached) if fallback else reached
        if fallback:
            warnings.warn(f"DeepJudge: no test case reached k = {P['m']} x the neurons' maximum activation in "
                          f"{P['max_iters']} iterations at layer {layer}; using the last iterates instead "
                          "(raise max_iters or lower m)", stacklevel=3)
        tests_x = gen["x"][keep]
        victim_layer = layer_means(victim, layer, tests_x, batch_size=bs, device=device)
        # 3. black-box test cases: the victim's adversarial examples on the seed file that fool it (official)
        adv_all, adv_logits_all, fooled = adversarial_tests(
            victim, adv_seeds_x, adv_seeds_y, method=P["adv_method"], eps=P["pgd_eps"], steps=P["pgd_steps"],
            step_size=P["pgd_step_size"], random_start=P["pgd_random_start"], generator=generator,
            batch_size=bs, device=device)
        adv_x, adv_y, adv_logits = adv_all[fooled], adv_seeds_y[fooled], adv_logits_all[fooled]
        kept = int(fooled.sum())
        if kept == 0:
            warnings.warn(f"DeepJudge: none of the {len(adv_seeds_x)} adversarial examples ({P['adv_method']}, eps "
                          f"{P['pgd_eps']}) fools the victim, so DJ-RobD and DJ-JSD have no test case and will be "
                          "NaN (raise pgd_eps / pgd_steps)", stacklevel=3)
            victim_adv_acc = torch.zeros(0, dtype=torch.float64)      # no example: no accuracy (not 0, not NaN)
        else:
            victim_adv_acc = (adv_logits.argmax(1) == adv_y).double().mean().reshape(1)
        per_channel = torch.bincount(gen["channel"][reached], minlength=len(gen["k"]))
        tensors = {
            "seeds_x": seeds_x, "seeds_y": seeds_y, "k": gen["k"],
            "tests_x": tests_x, "tests_seed": gen["seed"][keep], "tests_channel": gen["channel"][keep],
            "victim_layer": victim_layer,
            "adv_x": adv_x, "adv_y": adv_y, "adv_index": fooled.nonzero()[:, 0],     # position in the seed ranking
            "victim_adv_logits": adv_logits, "victim_adv_acc": victim_adv_acc,
        }
        meta = {
            "layer": layer, "num_channels": int(len(gen["k"])), "num_seeds": int(len(seeds_x)),
            "correct_in_data": int((logits_all.argmax(1) == labels_all).sum()),
            "k_source": "seeds" if train_data is None else "train_data",
            "k_images_used": int(len(seeds_x)) if train_data is None else min(P["k_images"], len(train_data)),
            "tests_tried": int(len(reached)), "tests_reached": int(reached.sum()), "tests_kept": int(len(tests_x)),
            "tested_neurons": int(len(torch.unique(gen["channel"]))),
            "fallback_unreached": fallback, "channels_reached": int((per_channel > 0).sum()),
            "mean_iters_reached": float(gen["iters"][reached].double().mean()) if reached.any() else None,
            "adv_tried": int(len(adv_seeds_x)), "adv_kept": kept,
            "victim_adv_accuracy": None if kept == 0 else float(victim_adv_acc),
        }
        return tensors, meta

    def _extract(self, victim, data: Dataset, *, seed: int, generator: torch.Generator, device: torch.device,
                 train_data: Dataset | None = None, generation: Fingerprint):
        """DeepJudge's fingerprint: the shared generation's tensors and meta, and the metrics it leaves without
        evidence (``degenerate``)."""
        meta = generation.verifier_meta
        meta["degenerate"] = (([] if meta["adv_kept"] else ["DJ-RobD", "DJ-JSD"])
                              + ([m.name for m in self.metrics if m.name not in ("DJ-RobD", "DJ-JSD")]
                                 if meta["fallback_unreached"] else []))
        meta["generation"] = {"key": generation.key, "seconds": generation.meta.get("extract_seconds")}
        return dict(generation.tensors), meta

    def _score(self, fp: Fingerprint, victim, suspect, *, device: torch.device) -> dict[str, float]:
        P, T, bs = fp.params, fp.tensors, self.params["batch_size"]
        layer = int(fp.meta["layer"])
        _require_split(suspect, "suspect", layer)

        s_layer = layer_means(suspect, layer, T["tests_x"], batch_size=bs, device=device,
                              victim_means=T["victim_layer"])
        out = {
            "DJ-LOD": lod(T["victim_layer"], s_layer, P["p"]),
            "DJ-LAD": lad(T["victim_layer"], s_layer, P["threshold"], P["lad_reduction"]),
            "DJ-NOD": nod(T["victim_layer"], s_layer, T["tests_channel"]),
            "DJ-NAD": nad(T["victim_layer"], s_layer, T["tests_channel"], int(fp.meta["tested_neurons"]),
                          P["threshold"]),
        }
        out.update(self._blackbox(T, suspect, bs=bs, device=device))
        return out

    @staticmethod
    def _blackbox(T: dict[str, torch.Tensor], suspect, *, bs: int, device: torch.device) -> dict[str, float]:
        if len(T["adv_x"]) == 0:       # degenerate fingerprint (warned at extraction): no evidence, not 0
            return {"DJ-RobD": math.nan, "DJ-JSD": math.nan}
        s_adv = batched_apply(suspect, T["adv_x"], batch_size=bs, device=device)
        if s_adv.shape != T["victim_adv_logits"].shape:
            raise RemovalNetError(f"the suspect outputs {s_adv.shape[1]} classes, "
                                  f"the victim {T['victim_adv_logits'].shape[1]}")
        s_acc = float((s_adv.argmax(1) == T["adv_y"]).double().mean())
        return {"DJ-RobD": robd(float(T["victim_adv_acc"][0]), s_acc),
                "DJ-JSD": jsd(F.softmax(T["victim_adv_logits"].double(), dim=1), F.softmax(s_adv.double(), dim=1))}
