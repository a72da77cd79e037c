"""Function-preserving channel rescaling: a removal component that costs no accuracy.

In a channel space (:func:`removalnet.attacks.permute.channel_spaces`) whose every operation is positively
homogeneous (ReLU, LeakyReLU, max/avg pooling, dropout, identity, residual ``add``), the channels can be
multiplied by any scales ``s_c > 0`` without changing the function: the producers' output rows (weight dim 0)
and biases times ``s``, the consumers' input columns (weight dim 1; for a linear layer after a flatten, each
channel's block of features) times ``1 / s``. A BatchNorm member (eval mode) is made to output exactly ``s``
times its old output when its input is ``s`` times the old one::

    running_mean *= s;  running_var = s^2 var + (s^2 - 1) eps   (so var' + eps = s^2 (var + eps))
    weight *= s;        bias *= s

which also covers a BatchNorm between a convolution and its ReLU. A residual stream is one merged space, so
one scale vector serves every skip connection of it. A space holding anything else (GELU, SiLU, Tanh,
Sigmoid, Hardswish, ELU, ReLU6, an operation the analysis does not understand, a BatchNorm without affine
parameters or running statistics) is left at scale 1 (``ChannelSpace.homogeneous`` is False). With ``s < 1``
``running_var`` may become slightly negative where ``var < (1 / s^2 - 1) eps``; ``var' + eps``, the only
quantity BatchNorm uses, stays ``s^2 (var + eps) > 0``.

Why it matters: DeepJudge's white-box metrics compare neuron c of the victim with neuron c of the suspect
(eq. 1, LOD: raw magnitudes; eq. 2, LAD: per test case min-max normalised over the neurons, thresholded), so
they move under a rescaling that leaves every prediction unchanged; the alignment-aware DeepJudge
(``deepjudge_aligned``) undoes permutations, not scales. ``deepjudge_scaled`` is the countermeasure.

:func:`channel_scales` chooses the scales, :func:`rescale_model` applies them (a copy).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.fx
from torch import nn

from ..utils import RemovalNetError
from ..verify.deepjudge import activation_pattern
from .permute import ChannelSpace, _features, _probe_activations, channel_spaces

__all__ = ["SCALE_MODES", "scalable", "channel_scales", "lad_flips", "rescale_model"]

SCALE_MODES = ("farthest", "lad", "random")


def scalable(sp: ChannelSpace) -> bool:
    """Whether the channels of ``sp`` can be rescaled exactly: permutable and positively homogeneous."""
    return sp.permutable and sp.homogeneous


def _check_spread(spread: float) -> float:
    spread = float(spread)
    if not math.isfinite(spread) or spread <= 1.0:
        raise RemovalNetError(f"spread must be a finite number > 1, got {spread!r}")
    return spread


def channel_scales(model: nn.Module, x: torch.Tensor, spaces: list[ChannelSpace] | None = None,
                   mode: str = "farthest", spread: float = 4.0, generator: torch.Generator | None = None,
                   batch_size: int = 256, threshold: float = 0.5, sweeps: int = 3) -> dict[int, torch.Tensor]:
    """One positive scale vector (float64, one entry per channel) per scalable space of ``model``.

    ``"random"``: log-uniform in ``[1 / spread, spread]`` (``generator`` seeds it).

    ``"farthest"``: from the attacker's inputs ``x``, rank each space's channels by their mean activation
    (over ``x`` and all positions, at the space's last node) and give the weakest channel ``spread``, the
    strongest ``1 / spread`` and the ones between log-linearly spaced scales by rank
    (``s = spread^(1 - 2 r / (C - 1))``, r = 0 the weakest; a one-channel space keeps 1). Why: DeepJudge's LAD
    min-max normalises each test case's neuron vector and thresholds it at half range, so which neurons are
    "active" is decided by their relative magnitudes; shrinking the strong channels and amplifying the weak
    ones by up to ``spread^2`` relative to each other inverts that order where it can, flipping activation
    patterns. LOD compares raw magnitudes: a strong channel moves by ``(1 - 1 / spread)`` of its value, a weak
    one by ``(spread - 1)`` times its value, so every neuron moves. Positive scales keep signs and ReLU
    patterns, so the function is unchanged (:func:`rescale_model`).

    ``"lad"``: aimed at DeepJudge's LAD (eq. 2, official form: per input, min-max normalise the channel means
    over the channels, active = above ``threshold``). On the attacker's inputs ``x`` (their channel means at the
    space's last node), from the better of no scaling and the ``farthest`` scales, coordinate ascent over the
    channels (at most ``sweeps`` passes; each channel's scale chosen from nine log-spaced values in
    ``[1 / spread, spread]``) maximises the mean number of channels whose active state differs between the
    network and its rescaled copy (:func:`lad_flips`, with DeepJudge's own
    :func:`~removalnet.verify.deepjudge.activation_pattern`): the LAD the copy would score on these inputs. The
    fingerprint's own inputs are never used.
    """
    if mode not in SCALE_MODES:
        raise RemovalNetError(f"rescale mode must be one of {', '.join(SCALE_MODES)}, got {mode!r}")
    spread = _check_spread(spread)
    spaces = spaces if spaces is not None else channel_spaces(model, x[:2])
    todo = [sp for sp in spaces if scalable(sp)]
    log_s = math.log(spread)
    if mode == "random":
        return {sp.id: torch.exp((torch.rand(sp.channels, generator=generator, dtype=torch.float64) * 2 - 1) * log_s)
                for sp in todo}
    was = model.training
    model.eval()
    gm = torch.fx.symbolic_trace(model)   # node names match those of channel_spaces' trace
    sums: dict[int, torch.Tensor] = {}
    for start in range(0, len(x), batch_size):
        acts = _probe_activations(gm, x[start:start + batch_size], {sp.probe for sp in todo})
        for sp in todo:
            m = _features(acts[sp.probe].double(), "channel_means")   # (C, N)
            if mode == "lad":                                          # keep every input's (N, C) means
                sums[sp.id] = torch.cat([sums[sp.id], m.t()]) if sp.id in sums else m.t()
            else:                                                      # C: summed over the inputs
                sums[sp.id] = sums[sp.id] + m.sum(1) if sp.id in sums else m.sum(1)
    model.train(was)
    if mode == "lad":
        return {sp.id: _lad_scales(sums[sp.id].cpu(), spread, threshold, sweeps) for sp in todo}
    return {sp.id: _rank_scales(sums[sp.id].cpu(), spread) for sp in todo}


def _rank_scales(sums: torch.Tensor, spread: float) -> torch.Tensor:
    """The ``farthest`` rule: the weakest channel (smallest summed mean) ``spread``, the strongest
    ``1 / spread``, log-linear by rank between them."""
    c = len(sums)
    rank = torch.empty(c, dtype=torch.float64)
    rank[torch.sort(sums, stable=True).indices] = torch.arange(c, dtype=torch.float64)
    frac = rank / (c - 1) if c > 1 else torch.full((c,), 0.5, dtype=torch.float64)
    return torch.exp((1 - 2 * frac) * math.log(spread))


def lad_flips(means: torch.Tensor, scales: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per input, how many channels change their active state when the channel means (N, C) are multiplied by
    ``scales``: DeepJudge's LAD (sum over neurons) between a network and its rescaled copy on these inputs."""
    return (activation_pattern(means, threshold) != activation_pattern(means * scales, threshold)).sum(-1).double()


def _lad_scales(means: torch.Tensor, spread: float, threshold: float, sweeps: int) -> torch.Tensor:
    """Coordinate ascent of the mean :func:`lad_flips` over log-spaced scales (``channel_scales(mode="lad")``)."""
    c = means.shape[1]
    grid = torch.tensor([spread ** (k / 4) for k in range(-4, 5)], dtype=torch.float64)
    scales = torch.ones(c, dtype=torch.float64)
    if c < 2 or len(means) == 0:
        return scales
    base = activation_pattern(means, threshold)
    # start from the better of no scaling (0 flips) and the farthest rule
    ranked = _rank_scales(means.sum(0), spread)
    best = float(lad_flips(means, ranked, threshold).mean())
    if best > 0:
        scales = ranked
    for _ in range(max(1, int(sweeps))):
        changed = False
        for ch in range(c):
            trial = scales.repeat(len(grid), 1)       # (G, C): every grid value for this channel at once
            trial[:, ch] = grid
            flips = (activation_pattern(means.unsqueeze(0) * trial.unsqueeze(1), threshold) != base).sum(2)
            flips = flips.double().mean(1)
            g = int(torch.argmax(flips))
            if float(flips[g]) > best + 1e-9:
                best, scales, changed = float(flips[g]), trial[g].clone(), True
        if not changed:
            break
    return scales


def _consumer_scale(m: nn.Module, inv: torch.Tensor, channels: int) -> torch.Tensor:
    """``inv`` (C,) broadcast to the input axis of ``m``'s weight: per input channel, or per block of features
    of a linear layer after a flatten (channel-major, as ``torch.flatten`` orders them)."""
    n_in = m.weight.shape[1]
    if n_in == channels:
        col = inv
    elif isinstance(m, nn.Linear) and n_in % channels == 0:
        col = inv.repeat_interleave(n_in // channels)
    else:
        raise RemovalNetError(f"{type(m).__name__} reads {n_in} inputs, not a multiple of {channels} channels")
    return col.reshape(1, -1, *([1] * (m.weight.dim() - 2)))


def rescale_model(model: nn.Module, spaces: list[ChannelSpace], scales: dict[int, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with the channels of each space ``id`` in ``scales`` multiplied by ``scales[id]``
    (positive, one per channel); the function is unchanged in eval mode (module docstring)."""
    model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    by_id = {sp.id: sp for sp in spaces}
    with torch.no_grad():
        for sid, s in scales.items():
            sp = by_id.get(sid)
            if sp is None or not scalable(sp):
                raise RemovalNetError(f"channel space {sid} cannot be rescaled")
            s = torch.as_tensor(s, dtype=torch.float64).reshape(-1)
            if len(s) != sp.channels or not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
                raise RemovalNetError(f"scales of space {sid} must be {sp.channels} finite positive numbers")
            for name in sp.producers:
                m = mods[name]
                sd = s.to(m.weight.device)
                m.weight.copy_(m.weight.double() * sd.reshape(-1, *([1] * (m.weight.dim() - 1))))
                if m.bias is not None:
                    m.bias.copy_(m.bias.double() * sd)
            for name in sp.members:
                m = mods[name]
                sd = s.to(m.running_var.device)
                m.running_var.copy_(sd * sd * m.running_var.double() + (sd * sd - 1) * m.eps)
                for t in (m.running_mean, m.weight, m.bias):
                    t.copy_(t.double() * sd)
            for name in sp.consumers:
                m = mods[name]
                m.weight.copy_(m.weight.double() * _consumer_scale(m, 1 / s.to(m.weight.device), sp.channels))
    return model
