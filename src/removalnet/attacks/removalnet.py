"""RemovalNet: DNN fingerprint removal by min-max bilevel optimisation (Yao et al., section 3).

The surrogate F_S starts as a copy of the victim F_V and is trained on batches x of the substitute set
with y_hat = argmax F_V(x). Every iteration runs both levels of the paper:

* latent level (Algorithm 1, :func:`reverse_latent`): from the victim's latent z1' = F_V^{l-}(x), reverse
  a latent z1 that the surrogate's tail still maps to y_hat but that lies far from z1' (feature shuffling
  plus a few steps on L_re = CE(F_S^{l+}(z1), y_hat) - w log||z1 - z1'||_2), then pull the surrogate's
  latent towards it with L_feat = ||F_S^{l-}(x) - z1||_2 (eq. 11);
* logit level (Algorithm 2, :func:`ilbs`): interpolate each victim logit vector towards the logits of the
  batch sample farthest from it, as far as the predicted class allows, and distil that target z2.

Upper-level loss (eq. 15): ``alpha * CE(F_S(x), y_hat) + (1 - alpha) * KL(softmax(z2/T) || softmax(F_S(x)/T))
+ beta * L_feat``. Eq. 13 writes the CE term on F_V(x); F_V is frozen, so the term is on the surrogate.

Choices the paper leaves open are parameters; defaults follow the paper, else the reference code:

==================  ===========  ==========================================================================
parameter           default      source / meaning
==================  ===========  ==========================================================================
iterations          1000         paper 4.1
batch_size          128          paper 4.1
lr, momentum        0.01, 0.9    paper 4.1 (SGD)
weight_decay        1e-4         reference code (paper silent)
schedule            cosine       reference code: cosine annealing, T_max = tmax_factor (1.5) x iterations
checkpoint_every    100          paper Fig. 4/5 (11 checkpoints t = 0..1000)
alpha, beta         0.2, 2.0     paper 4.1
layer               None         split layer l; None = the victim's ``default_layer``
latent_steps        10           paper Alg. 1 (reference code: 20 for CIFAR10, 30 elsewhere)
latent_step_size    0.01         eta of Alg. 1 (reference code: 0.01)
latent_sign         True         reference code steps with the sign of the gradient (Alg. 1 line 6: plain)
log_weight          1.0          weight w of the log-distance term (paper 1; reference code 0.1)
init_offset         normal       z1 starts at z1' + init_scale x offset, offset N(0,1) ("normal"), U[0,1)
init_scale          0.01         ("uniform"), tan(U[0,1)) ("tan_uniform", the reference code, with scale
                                 1) or none. The paper asks only for a start near z1'; some offset (or
                                 the shuffle) is needed because log||z1 - z1'|| = log 0 = -inf at z1 = z1'
                                 (the distance is clamped at 1e-12, so "none" stays finite). The
                                 reference's tan(U[0,1)) has mean 0.62, as large as post-ReLU activations:
                                 on small models it alone flips F_S^{l+}(z1) away from y_hat for most
                                 samples, against the constraint of eq. 12; hence the small default
shuffle_ratio       0.1          paper Alg. 1 (reference code: 0.02 for CIFAR10): per sample, ceil(C x
                                 ratio) channels chosen at random are rotated along a random cycle
shuffle_mode        per_step     "per_step": a fresh permutation every inner step (Alg. 1 line 4);
                                 "fixed": one permutation per sample, applied once before the first step,
                                 so the channel arrangement stays fixed for the whole inner loop (applying
                                 one permutation at every step would cycle back to the start)
inner_mode          eval         mode of F_S^{l+} during the inner loop (paper silent). "eval" keeps the
                                 surrogate's BatchNorm statistics and dropout out of the lower level (and
                                 folds BatchNorm into the convolutions, :class:`FoldedTail`); "train" uses
                                 batch statistics and updates the running ones, as a loop in train mode
inner_precision     float32      "bfloat16" runs F_S^{l+} of the inner loop under autocast (z1 and its
                                 update stay float32): about 2x faster on CPUs/GPUs with bf16 units
cache_victim_mb     1024         F_V is frozen and D_sub fixed (no augmentation), so F_V^{l-}(x) and F_V(x)
                                 are computed once for the whole substitute set when they fit in this many
                                 MB on the device; 0 (or a set too large): one victim pass per batch. The
                                 head output gives the logits in the same pass either way
feat_loss           l2           eq. 11: mean over the batch of the per-sample L2 norm; "mse": the
                                 element-wise mean squared error of the reference code
lambda_grid         0.1..1.0     Alg. 2 line 20
temperature         1.0          KL temperature on logits. The reference code interpolates probabilities
                                 and re-applies softmax with T=20, which flattens the target towards
                                 uniform; here logits are interpolated (F_V(x_i) + delta_2, eq. 9)
==================  ===========  ==========================================================================

ILBS, as printed, overwrites z2 for every lambda that keeps the class and so always ends at lambda = 1
(no perturbation); the intent, implemented here, is the SMALLEST lambda (largest deviation) that keeps
argmax z2 = y_hat. Ablations: ``beta=0`` is logit-level removal only (the latent reverse is skipped),
``alpha=1`` latent-level only (ILBS is skipped).
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.utils.data import Dataset

from ..models.split import SplitModel
from .base import Attack, AttackContext, BatchStream, Param, register_attack

__all__ = ["RemovalNet", "ilbs", "feature_shuffle", "shuffle_index", "shuffle_count", "reverse_latent",
           "feature_loss", "make_offset", "FoldedTail", "DEFAULT_LAMBDA_GRID"]

DEFAULT_LAMBDA_GRID = [round(0.1 * k, 1) for k in range(1, 11)]
_EPS = 1e-12


# ----------------------------------------------------------------------------------------------------
# Logit level: Algorithm 2
# ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def ilbs(victim_logits: torch.Tensor, lambda_grid: Sequence[float] = DEFAULT_LAMBDA_GRID
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Iterative least-like boundary strategy (Algorithm 2), vectorised.

    For each row i of ``victim_logits`` (B x K): partner j = argmax_j ||F_V(x_i) - F_V(x_j)||_2 (the first
    maximiser; i itself when every distance is 0), then z2_i = lam F_V(x_i) + (1 - lam) F_V(x_j) with the
    smallest ``lam`` of the grid for which argmax z2_i = argmax F_V(x_i). Rows for which no grid value keeps
    the class (only possible when 1.0 is not in the grid) keep their own logits, reported as lam = 1.

    Returns ``(z2, lambdas, partners)`` of shapes (B, K), (B,), (B,).
    """
    if victim_logits.dim() != 2:
        raise ValueError(f"ilbs expects a (batch, classes) tensor, got shape {tuple(victim_logits.shape)}")
    logits = victim_logits.detach()
    b = logits.shape[0]
    dist = torch.cdist(logits.float(), logits.float())
    dmax, partners = dist.max(dim=1)
    rows = torch.arange(b, device=logits.device)
    partners = torch.where(dmax > 0, partners, rows)
    y_hat = logits.argmax(dim=1)
    lam = torch.tensor(sorted(float(v) for v in lambda_grid), dtype=logits.dtype, device=logits.device)
    other = logits[partners]
    z = lam[:, None, None] * logits[None] + (1.0 - lam)[:, None, None] * other[None]   # (L, B, K)
    keeps = z.argmax(dim=2) == y_hat[None]                                              # (L, B)
    found = keeps.any(dim=0)
    first = keeps.to(torch.uint8).argmax(dim=0)                                         # smallest lam
    z2 = torch.where(found[:, None], z[first, rows], logits)
    lambdas = torch.where(found, lam[first], torch.ones_like(lam[first]))
    return z2, lambdas, partners


# ----------------------------------------------------------------------------------------------------
# Latent level: Algorithm 1
# ----------------------------------------------------------------------------------------------------

def _cycles(batch: int, channels: int, k: int, generator: torch.Generator | None,
            device: torch.device | str) -> torch.Tensor:
    """(batch, k): per row, k distinct channels in random order (the cycle c_1 -> c_2 -> ... -> c_k)."""
    return torch.rand(batch, channels, generator=generator, device=device).argsort(dim=1)[:, :k]


def shuffle_index(batch: int, channels: int, ratio: float, *, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-sample channel permutations for feature shuffling: a (batch, channels) index tensor.

    In each row, k = ceil(channels x ratio) channels are chosen at random, in random order, and permuted
    among themselves along that order as one cycle (channel c_1 takes c_2's values, ..., c_k takes c_1's),
    so every chosen channel moves (k >= 2; a single chosen channel cannot move); every other channel maps
    to itself. Drawn with ``generator``; vectorised over the batch.
    """
    k = shuffle_count(channels, ratio)
    idx = torch.arange(channels, device=device).repeat(batch, 1)
    if k < 2:
        return idx
    chosen = _cycles(batch, channels, k, generator, device)
    idx.scatter_(1, chosen, chosen.roll(-1, dims=1))
    return idx


def shuffle_count(channels: int, ratio: float) -> int:
    """ceil(channels x ratio): how many channels feature shuffling permutes (paper: ratio 0.1)."""
    return min(channels, math.ceil(channels * ratio - 1e-9)) if ratio > 0 else 0


def feature_shuffle(z: torch.Tensor, ratio: float, *, generator: torch.Generator | None = None,
                    index: torch.Tensor | None = None) -> torch.Tensor:
    """Feature shuffling (Algorithm 1, line 4) on a (B, C, ...) latent: out[b, c] = z[b, index[b, c]]
    with ``index`` from :func:`shuffle_index` (drawn here when not given)."""
    if index is None:
        index = shuffle_index(z.shape[0], z.shape[1], ratio, generator=generator, device=z.device)
    view = index.view(*index.shape, *([1] * (z.dim() - 2))).expand_as(z)
    return z.gather(1, view)


def _feature_shuffle_(z: torch.Tensor, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    """In-place :func:`feature_shuffle` that moves only the k shuffled channels (same draws, same result)."""
    k = shuffle_count(z.shape[1], ratio)
    if k >= 2:
        chosen = _cycles(z.shape[0], z.shape[1], k, generator, z.device)
        rows = torch.arange(z.shape[0], device=z.device)[:, None]
        z[rows, chosen] = z[rows, chosen.roll(-1, dims=1)]
    return z


def _per_sample_norm(d: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(d.flatten(1), ord=2, dim=1)


def make_offset(shape: Sequence[int], kind: str, scale: float, *, generator: torch.Generator | None,
                device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The starting offset of z1: N(0,1), U[0,1), tan(U[0,1)) (reference code) or none, times ``scale``."""
    if kind == "none" or scale == 0:
        return None
    if kind == "normal":
        r = torch.randn(*shape, generator=generator, device=device, dtype=dtype)
    else:
        r = torch.rand(*shape, generator=generator, device=device, dtype=dtype)
        if kind == "tan_uniform":
            r = torch.tan(r)
        elif kind != "uniform":
            raise ValueError(f"unknown init_offset {kind!r}")
    return r * scale if scale != 1 else r


@contextlib.contextmanager
def _frozen(modules: Sequence[nn.Module], mode: str) -> Iterator[None]:
    """Parameters of ``modules`` stop requiring gradients; modules in eval/train ``mode``; all restored."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    try:
        for p in params:
            p.requires_grad_(False)
        for m in modules:
            m.train(mode == "train")
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        for m, t in modes:
            m.training = t


def reverse_latent(tail: Callable[[torch.Tensor], torch.Tensor], anchor: torch.Tensor, y_hat: torch.Tensor, *,
                   steps: int = 10, step_size: float = 0.01, sign: bool = True, log_weight: float = 1.0,
                   shuffle_ratio: float = 0.1, shuffle_mode: str = "per_step", init_offset: str = "normal",
                   init_scale: float = 0.01, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Latent space reverse-engineering (Algorithm 1).

    ``anchor`` is z1' = F_V^{l-}(x); ``tail`` is F_S^{l+} (its weights need no gradients: only
    d L_re / d z1 is computed). z1 starts at z1' + offset; each of the ``steps`` steps shuffles z1's
    channels (:func:`feature_shuffle`; with ``shuffle_mode="fixed"`` only before the first step),
    evaluates L_re = mean_i [CE(tail(z1)_i, y_hat_i) - w log||z1_i - z1'_i||_2] and moves
    z1 <- z1 - eta * d L_re / d z1 (the sign of the gradient when ``sign``). The distance is clamped at
    1e-12 inside the log, so a zero start stays finite (the log term then has no gradient).

    Returns ``(z1, info)``; z1 is detached, info holds the per-step mean distances ``dist`` (before each
    step's update, plus the final one), the final ``agreement`` (fraction of samples with argmax tail(z1)
    = y_hat, measured on the last step's z1 before its update) and ``ce`` of that last step.
    """
    anchor = anchor.detach()
    offset = make_offset(anchor.shape, init_offset, init_scale, generator=generator, device=anchor.device,
                         dtype=anchor.dtype)
    z1 = anchor.clone() if offset is None else anchor + offset
    if shuffle_mode not in ("per_step", "fixed"):
        raise ValueError(f"unknown shuffle_mode {shuffle_mode!r}")
    b = anchor.shape[0]
    bshape = (b,) + (1,) * (anchor.dim() - 1)
    dists: list[torch.Tensor] = []
    ce = agreement = None
    for i in range(steps):
        if shuffle_ratio > 0 and (shuffle_mode == "per_step" or i == 0):
            _feature_shuffle_(z1, shuffle_ratio, generator)          # z1 is a fresh tensor: shuffle in place
        z1.requires_grad_(True)
        logits = tail(z1)
        ce_i = F.cross_entropy(logits, y_hat, reduction="none")
        # d/dz1 of the CE part by autograd (through the tail only); of -w log||z1 - z1'|| in closed form:
        # -w (z1 - z1') / ||z1 - z1'||^2 per sample (0 where the distance is clamped), both over the batch mean
        (grad,) = torch.autograd.grad(ce_i.mean(), z1)
        with torch.no_grad():
            z1 = z1.detach()
            d = z1 - anchor
            dist = _per_sample_norm(d)
            if log_weight:
                coef = torch.where(dist > _EPS, log_weight / (b * dist.clamp_min(_EPS) ** 2),
                                   torch.zeros_like(dist))
                grad.sub_(d.mul_(coef.view(bshape)))
            dists.append(dist.mean())
            ce = ce_i.mean()
            agreement = (logits.argmax(1) == y_hat).float().mean()
            z1 = z1 - step_size * (grad.sign_() if sign else grad)
    with torch.no_grad():
        dists.append(_per_sample_norm(z1 - anchor).mean())
    return z1, {"dist": dists, "ce": ce, "agreement": agreement}


def feature_loss(z_s: torch.Tensor, z1: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """L_feat (eq. 11): mean over the batch of ||F_S^{l-}(x)_i - z1_i||_2 ("l2") or the element MSE ("mse")."""
    if kind == "l2":
        return _per_sample_norm(z_s - z1).mean()
    if kind == "mse":
        return F.mse_loss(z_s, z1)
    raise ValueError(f"unknown feat_loss {kind!r}")


class FoldedTail(nn.Module):
    """F^{l+} of ``model`` for the inner loop in eval mode, with each BatchNorm that directly follows a
    convolution folded into that convolution (same function up to float rounding, fewer operations).

    The tail is traced once with torch.fx; the folded convolutions are private copies refreshed from the
    live model by :meth:`refresh` (call it after each weight update); every other module is the model's
    own. ``FoldedTail.build`` returns None when the tail cannot be traced or has nothing to fold.
    """

    def __init__(self, graph_module: torch.fx.GraphModule, pairs: list[tuple[nn.Module, nn.Module, nn.Module]]):
        super().__init__()
        self.gm = graph_module
        self.pairs = pairs
        self.refresh()

    @staticmethod
    def build(model: SplitModel, layer: int) -> "FoldedTail | None":
        tail = nn.Sequential(*model.blocks[layer:], model.classifier)
        try:
            gm = torch.fx.symbolic_trace(tail)
        except Exception:  # noqa: BLE001  (fx raises many types for untraceable code: fall back)
            return None
        modules = dict(gm.named_modules())
        pairs = []
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
                continue
            bn = modules[node.target]
            src = node.args[0] if node.args else None
            if (not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1
                    or type(modules.get(src.target)) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d)
                    or bn.running_mean is None or len(node.args) != 1 or node.kwargs):
                continue
            conv = modules[src.target]
            fused = copy.deepcopy(conv).requires_grad_(False)
            if fused.bias is None:
                fused.bias = nn.Parameter(torch.zeros(fused.out_channels, dtype=conv.weight.dtype,
                                                      device=conv.weight.device), requires_grad=False)
            name = f"folded_{len(pairs)}"
            gm.add_submodule(name, fused)
            src.target = name
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            pairs.append((fused, conv, bn))
        if not pairs:
            return None
        gm.graph.lint()
        gm.recompile()
        return FoldedTail(gm, pairs)

    @torch.no_grad()
    def refresh(self) -> None:
        for fused, conv, bn in self.pairs:
            w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
            fused.weight.copy_(w)
            fused.bias.copy_(b)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.gm(z)


# ----------------------------------------------------------------------------------------------------
# The attack
# ----------------------------------------------------------------------------------------------------

@register_attack
class RemovalNet(Attack):
    """RemovalNet (Yao et al.): latent-level (Alg. 1) and logit-level (Alg. 2) removal, loss eq. 15.

    See the module docstring for every parameter, its default and its source. ``self.trace`` rows hold
    ``loss``, ``ce``, ``kl``, ``feat`` (the three terms of eq. 15, before weighting), ``latent_dist``
    (mean per-sample ||F_S^{l-}(x) - F_V^{l-}(x)||_2, the surrogate in train mode), ``z1_dist0``/``z1_dist``
    (mean ||z1 - z1'||_2 at the first inner step, after its shuffle, and at the end of the inner loop),
    ``z1_ce``/``z1_agreement`` (CE and agreement of F_S^{l+}(z1) with y_hat at the last inner step: how
    well the constraint of eq. 12 holds), ``lambda_mean`` (mean ILBS lambda), ``agreement`` (fraction of
    the batch on which the surrogate predicts the victim's label, train mode) and ``lr``. Terms an
    ablation skips are None.
    """

    name = "removalnet"
    PARAMS = {
        "alpha": Param(0.2, float, low=0.0, high=1.0, doc="weight of CE; 1 - alpha weighs the KL (paper: 0.2)"),
        "beta": Param(2.0, float, low=0.0, doc="weight of L_feat (paper: 2.0)"),
        "layer": Param(None, int, low=1, nullable=True, doc="split layer l (None: the victim's default)"),
        "latent_steps": Param(10, int, low=0, doc="inner steps of Alg. 1 (paper: 10)"),
        "latent_step_size": Param(0.01, float, low=0.0, low_open=True, doc="eta of Alg. 1 (0.01)"),
        "latent_sign": Param(True, bool, doc="signed gradient step (reference code)"),
        "log_weight": Param(1.0, float, low=0.0, doc="weight of -log||z1 - z1'|| (paper 1, reference 0.1)"),
        "init_offset": Param("normal", str, choices=("normal", "uniform", "tan_uniform", "none"),
                             doc="distribution of z1's initial offset (reference code: tan_uniform)"),
        "init_scale": Param(0.01, float, low=0.0, doc="scale of the initial offset (reference code: 1)"),
        "shuffle_ratio": Param(0.1, float, low=0.0, high=1.0, doc="fraction of channels shuffled (paper 0.1)"),
        "shuffle_mode": Param("per_step", str, choices=("per_step", "fixed"),
                              doc="fresh permutation every inner step, or one per sample for the inner loop"),
        "inner_mode": Param("eval", str, choices=("eval", "train"), doc="mode of F_S^{l+} in the inner loop"),
        "inner_precision": Param("float32", str, choices=("float32", "bfloat16"),
                                 doc="precision of F_S^{l+} in the inner loop (bfloat16: autocast, faster)"),
        "cache_victim_mb": Param(1024.0, float, low=0.0,
                                 doc="compute F_V on the whole substitute set once if it fits in this many MB"),
        "feat_loss": Param("l2", str, choices=("l2", "mse"), doc="eq. 11 L2 norm, or MSE (reference)"),
        "lambda_grid": Param(list(DEFAULT_LAMBDA_GRID), list, low=0.0, high=1.0, doc="ILBS line search grid"),
        "temperature": Param(1.0, float, low=0.0, low_open=True, doc="KL temperature on logits"),
    }

    def validate_inputs(self, victim: SplitModel, substitute: Dataset) -> None:
        self.split_layer(victim)

    def split_layer(self, victim: SplitModel) -> int:
        layer = self.params["layer"]
        return victim.check_layer(victim.default_layer if layer is None else layer)

    def run(self, ctx: AttackContext) -> None:
        p = self.params
        victim, surrogate = ctx.victim, ctx.surrogate
        layer = self.split_layer(victim)
        alpha, beta, temp = p["alpha"], p["beta"], p["temperature"]
        use_latent, use_logit = beta > 0, alpha < 1
        tail_modules = [*surrogate.blocks[layer:], surrogate.classifier]
        folded = FoldedTail.build(surrogate, layer) if use_latent and p["inner_mode"] == "eval" else None
        inner_tail: Callable[[torch.Tensor], torch.Tensor] = folded if folded is not None else (
            lambda z: surrogate.tail(z, layer))
        bf16 = p["inner_precision"] == "bfloat16"

        def surrogate_tail(z: torch.Tensor) -> torch.Tensor:
            if not bf16:
                return inner_tail(z)
            with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16):
                return inner_tail(z).float()

        stream = self.batches(ctx)
        cache = self.victim_outputs(victim, stream, layer, p["cache_victim_mb"])

        def step(x: torch.Tensor, _y: torch.Tensor, t: int) -> tuple[torch.Tensor, dict[str, Any]]:
            with torch.no_grad():
                if cache is not None:
                    idx = stream.last_indices.to(ctx.device)
                    z_v, v_logits = cache[0][idx], cache[1][idx]
                else:
                    z_v = victim.head(x, layer)               # z1' = F_V^{l-}(x)
                    v_logits = victim.tail(z_v, layer)        # F_V(x), same pass
                y_hat = v_logits.argmax(dim=1)
            logs: dict[str, Any] = {}
            z1 = None
            if use_latent:
                if folded is not None:
                    folded.refresh()                          # fold the current weights and statistics
                with _frozen(tail_modules, p["inner_mode"]):
                    z1, info = reverse_latent(
                        surrogate_tail, z_v, y_hat, steps=p["latent_steps"], step_size=p["latent_step_size"],
                        sign=p["latent_sign"], log_weight=p["log_weight"], shuffle_ratio=p["shuffle_ratio"],
                        shuffle_mode=p["shuffle_mode"], init_offset=p["init_offset"], init_scale=p["init_scale"],
                        generator=ctx.device_generator)
                logs.update(z1_dist0=info["dist"][0], z1_dist=info["dist"][-1],
                            z1_ce=info["ce"], z1_agreement=info["agreement"])
            else:
                logs.update(z1_dist0=None, z1_dist=None, z1_ce=None, z1_agreement=None)
            z_s = surrogate.head(x, layer)                    # F_S^{l-}(x), reused below
            s_logits = surrogate.tail(z_s, layer)             # F_S(x)
            ce = F.cross_entropy(s_logits, y_hat)
            loss = alpha * ce
            if use_logit:
                z2, lambdas, _ = ilbs(v_logits, p["lambda_grid"])
                kl = F.kl_div(F.log_softmax(s_logits / temp, dim=1), F.softmax(z2 / temp, dim=1),
                              reduction="batchmean")
                loss = loss + (1 - alpha) * kl
                logs.update(kl=kl, lambda_mean=lambdas.mean())
            else:
                logs.update(kl=None, lambda_mean=None)
            if use_latent:
                feat = feature_loss(z_s, z1, p["feat_loss"])
                loss = loss + beta * feat
                logs["feat"] = feat
            else:
                logs["feat"] = None
            with torch.no_grad():
                logs["latent_dist"] = _per_sample_norm(z_s - z_v).mean()
                logs["agreement"] = (s_logits.argmax(1) == y_hat).float().mean()
            logs = {"loss": loss.detach(), "ce": ce.detach(), **{k: (v.detach() if isinstance(v, torch.Tensor)
                                                                    else v) for k, v in logs.items()}}
            return loss, logs

        self.fit(ctx, step, batch_stream=stream)

    @staticmethod
    @torch.no_grad()
    def victim_outputs(victim: SplitModel, stream: BatchStream, layer: int, limit_mb: float
                       ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(F_V^{l-}(x), F_V(x)) for every substitute sample, in dataset order, if they fit in
        ``limit_mb`` MB; else None (the victim then runs once per batch). The victim is frozen and the
        substitute set fixed, so these are the values every batch would compute."""
        if limit_mb <= 0:
            return None
        zs, ls = [], []
        for xb in stream.ordered(256):
            z = victim.head(xb, layer)
            zs.append(z)
            ls.append(victim.tail(z, layer))
            if len(zs) == 1:
                per_sample = (z[0].numel() + ls[0][0].numel()) * z.element_size()
                if per_sample * stream.n > limit_mb * 2**20:
                    return None
        return torch.cat(zs), torch.cat(ls)
