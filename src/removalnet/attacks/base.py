"""The attack interface, the attack registry and the one training loop every attack shares.

An attack turns a victim :class:`~removalnet.models.SplitModel` and a substitute set D_sub into a
surrogate model (paper, section 2.2). Subclasses declare their parameters in ``PARAMS`` (merged along
the class hierarchy, so the common optimisation parameters below are inherited) and implement
:meth:`Attack.run`; the shared pieces (seeded batch stream, SGD, cosine schedule, trace, checkpoints)
live here so that no attack repeats a training loop::

    @register_attack
    class MyAttack(Attack):
        name = "mine"
        PARAMS = {"ratio": Param(0.5, float, low=0.0, high=1.0, doc="fraction of layers")}

        def run(self, ctx):
            def step(x, y, t):
                loss = F.cross_entropy(ctx.surrogate(x), y)
                return loss, {"ce": loss}
            self.fit(ctx, step)

Common parameters (defaults: paper section 4.1 and the reference code of RemovalNet): ``iterations``
1000, ``batch_size`` 128, ``lr`` 0.01, ``momentum`` 0.9 (paper); ``weight_decay`` 1e-4, ``schedule``
"cosine" with ``tmax_factor`` 1.5 (cosine annealing over T_max = 1.5 x iterations, reference code);
``checkpoint_every`` 100 (paper Fig. 4/5: t = 0, 100, ..., 1000).
"""
from __future__ import annotations

import abc
import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models.split import SplitModel
from ..params import Param, class_params, identity_params, validate_params
from ..registry import Registry
from ..train import evaluate
from ..utils import RemovalNetError, resolve_device, seed_everything

__all__ = [
    "Param", "validate_params", "Attack", "AttackContext", "BatchStream", "register_attack", "create_attack", "list_attacks",
    "attack_class", "make_sgd", "make_schedule", "RETURNED_START", "START_TOLERANCE",
]

Callback = Callable[..., None]

#: an attack's status when it trained yet returned its starting point (never counted as an evasion)
RETURNED_START = "returned the start"
#: the largest absolute change of any floating tensor that still counts as the starting point
START_TOLERANCE = 1e-7


# ----------------------------------------------------------------------------------------------------
# Data, optimiser, schedule
# ----------------------------------------------------------------------------------------------------

class BatchStream(Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """An endless stream of ``(x, y)`` batches drawn from ``dataset`` with a seeded generator.

    Each epoch is a fresh permutation (drawn from ``generator``) cut into consecutive batches of
    ``batch_size``; the last incomplete batch of an epoch is dropped, so every batch has the same size.
    A dataset smaller than ``batch_size`` yields the whole dataset, reshuffled, as every batch.
    Datasets up to ``preload_bytes`` are stacked into one tensor once (fast); larger ones are read item
    by item per batch (same batches either way).
    """

    def __init__(self, dataset: Dataset, batch_size: int, generator: torch.Generator,
                 device: torch.device | str = "cpu", preload_bytes: int = 1 << 30):
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise RemovalNetError("the substitute set is empty")
        self.dataset, self.n, self.generator, self.device = dataset, n, generator, torch.device(device)
        self.batch_size = min(int(batch_size), n)
        self.epoch = 0
        self.last_indices = torch.empty(0, dtype=torch.long)   # dataset positions of the last batch
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        x0, _ = dataset[0]
        x0 = torch.as_tensor(x0)
        if x0.numel() * x0.element_size() * n <= preload_bytes:
            xs, ys = [], []
            for xb, yb, *_ in DataLoader(dataset, batch_size=1024, shuffle=False, num_workers=0):
                xs.append(xb)
                ys.append(torch.as_tensor(yb, dtype=torch.long))
            self._x = torch.cat(xs).to(self.device)
            self._y = torch.cat(ys).to(self.device)

    def __iter__(self) -> "BatchStream":
        return self

    def _next_indices(self) -> torch.Tensor:
        if self._pos + self.batch_size > len(self._order):
            self._order = torch.randperm(self.n, generator=self.generator)
            self._pos = 0
            self.epoch += 1
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx

    def ordered(self, batch_size: int = 256) -> Iterator[torch.Tensor]:
        """The dataset's inputs in dataset order, in batches on the device (for one-off passes, such as
        computing a frozen model's outputs once); draws nothing from the generator."""
        for start in range(0, self.n, batch_size):
            if self._x is not None:
                yield self._x[start:start + batch_size]
            else:
                xs = [torch.as_tensor(self.dataset[i][0]) for i in range(start, min(start + batch_size, self.n))]
                yield torch.stack(xs).to(self.device)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._next_indices()
        self.last_indices = idx
        if self._x is not None and self._y is not None:
            dev_idx = idx.to(self.device)
            return self._x[dev_idx], self._y[dev_idx]
        xs, ys = zip(*(self.dataset[int(i)] for i in idx))
        x = torch.stack([torch.as_tensor(v) for v in xs]).to(self.device, non_blocking=True)
        y = torch.as_tensor([int(v) for v in ys], dtype=torch.long).to(self.device, non_blocking=True)
        return x, y


def make_sgd(parameters: Iterable[nn.Parameter], *, lr: float, momentum: float = 0.9,
             weight_decay: float = 1e-4) -> torch.optim.SGD:
    """SGD with momentum (paper section 4.1) over the parameters that require gradients."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise RemovalNetError("no trainable parameters: every parameter of the surrogate is frozen")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, schedule: str, iterations: int,
                  tmax_factor: float = 1.5) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``"cosine"``: cosine annealing with T_max = tmax_factor x iterations (reference code: 1.5);
    ``"constant"``: no schedule (None)."""
    if schedule == "constant":
        return None
    if schedule == "cosine":
        t_max = max(1, int(round(tmax_factor * max(iterations, 1))))
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max)
    raise RemovalNetError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")


# ----------------------------------------------------------------------------------------------------
# Attack
# ----------------------------------------------------------------------------------------------------

@dataclass
class AttackContext:
    """Everything :meth:`Attack.run` works with during one call.

    ``victim`` is a private frozen copy of the caller's victim (eval mode, no gradients, on ``device``);
    ``surrogate`` is the model being trained; ``generator`` (CPU) drives batch order and every other random
    choice made on the CPU; ``device_generator`` is seeded from the same seed for random tensors created on
    ``device`` (it is ``generator`` itself on the CPU).
    """

    victim: SplitModel
    surrogate: SplitModel
    substitute: Dataset
    generator: torch.Generator
    device_generator: torch.Generator
    device: torch.device
    seed: int
    eval_set: Dataset | None = None
    callbacks: Sequence[Callback] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class Attack(abc.ABC):
    """Base class of every attack. ``create_attack(name, **params)`` builds one from the registry.

    ``__init__(**params)`` validates every parameter against ``PARAMS`` (merged over the class hierarchy)
    and raises :class:`RemovalNetError` naming a bad or unknown parameter. ``self.params`` holds all
    parameters with defaults filled in (JSON-serialisable).

    Calling the attack returns the surrogate in eval mode and fills ``self.trace`` (one dict per
    iteration: ``t``, every loss term, ``lr``) and ``self.history`` (``{"t", "accuracy"}`` at each
    checkpoint; accuracy on ``eval_set`` or None), and ``self.status``: ``"ok"``, or :data:`RETURNED_START`
    when the attack trained (iterations > 0) yet returned its starting point (every floating tensor within
    :data:`START_TOLERANCE` of the surrogate at t = 0, e.g. a stopping rule that kept step 0); such a
    surrogate is no attack of its name but what ``reduced_to`` says (``START`` of the class).
    """

    name: ClassVar[str] = ""
    #: what a surrogate that returned its starting point amounts to
    START: ClassVar[str] = "its starting point"
    #: a parameter-reusing baseline (FT, WP, Distill): the threshold rules' detection rate is measured on these
    baseline: ClassVar[bool] = False
    PARAMS: ClassVar[dict[str, Param]] = {
        "iterations": Param(1000, int, low=0, doc="optimisation steps (paper: 1000)"),
        "batch_size": Param(128, int, low=1, doc="substitute samples per step (paper: 128)"),
        "lr": Param(0.01, float, low=0.0, low_open=True, doc="SGD learning rate (paper: 0.01)"),
        "momentum": Param(0.9, float, low=0.0, high=1.0, high_open=True, doc="SGD momentum (paper: 0.9)"),
        "weight_decay": Param(1e-4, float, low=0.0, doc="SGD weight decay (reference code: 1e-4)"),
        "schedule": Param("cosine", str, choices=("cosine", "constant"),
                          doc="learning-rate schedule (reference code: cosine annealing)"),
        "tmax_factor": Param(1.5, float, low=0.0, low_open=True,
                             doc="cosine T_max = tmax_factor x iterations (reference code: 1.5)"),
        "checkpoint_every": Param(100, int, low=1, doc="iterations between checkpoints (paper: 100)"),
    }

    def __init__(self, **params: Any):
        values = validate_params(self.param_spec(), params, f"attack {self.name!r}")
        self.params: dict[str, Any] = values
        self.validate_params(values)
        self.trace: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.status: str = "ok"
        self.reduced_to: str | None = None
        self._start: dict[str, torch.Tensor] | None = None

    def identity_params(self) -> dict[str, Any]:
        """The parameters that identify a job of this attack: all of them, less those added later
        (``Param(omit_default=True)``) while at their defaults (:func:`removalnet.params.identity_params`)."""
        return identity_params(self.param_spec(), self.params)

    # -- declaration helpers ------------------------------------------------------------------------
    @classmethod
    def param_spec(cls) -> dict[str, Param]:
        """All parameters of this attack: ``PARAMS`` of every class in the MRO, subclasses winning."""
        return class_params(cls)

    def validate_params(self, params: dict[str, Any]) -> None:
        """Cross-parameter checks (override; raise RemovalNetError)."""

    def validate_inputs(self, victim: SplitModel, substitute: Dataset) -> None:
        """Checks that need the victim (e.g. ``victim.check_layer(l)``); override and call super()."""

    def make_surrogate(self, victim: SplitModel, ctx: AttackContext) -> SplitModel:
        """The starting surrogate: a copy of the victim (override for a fresh model)."""
        return copy.deepcopy(victim)

    @abc.abstractmethod
    def run(self, ctx: AttackContext) -> None:
        """Train ``ctx.surrogate`` in place (use :meth:`fit` for the loop)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    # -- the call -------------------------------------------------------------------------------------
    def __call__(self, victim: SplitModel, substitute: Dataset, *, seed: int,
                 callbacks: Sequence[Callback] = (), eval_set: Dataset | None = None,
                 device: str | torch.device | None = None) -> SplitModel:
        if not isinstance(victim, SplitModel):
            raise RemovalNetError(f"the victim must be a SplitModel, got {type(victim).__name__}")
        if substitute is None or len(substitute) == 0:  # type: ignore[arg-type]
            raise RemovalNetError("the substitute set is empty")
        self.validate_inputs(victim, substitute)
        dev = resolve_device(device) if device is not None else next(victim.parameters()).device
        generator = seed_everything(seed)
        if dev.type == "cpu":
            device_generator = generator
        else:
            device_generator = torch.Generator(device=dev)
            device_generator.manual_seed(seed)
        frozen = copy.deepcopy(victim).to(dev).eval().requires_grad_(False)
        ctx = AttackContext(victim=frozen, surrogate=frozen, substitute=substitute, generator=generator,
                            device_generator=device_generator, device=dev, seed=seed, eval_set=eval_set,
                            callbacks=tuple(callbacks))
        surrogate = self.make_surrogate(frozen, ctx).to(dev)
        surrogate.requires_grad_(True)
        ctx.surrogate = surrogate
        self.trace, self.history = [], []
        self.status, self.reduced_to, self._start = "ok", None, None
        self.run(ctx)
        if self.params.get("iterations", 0) > 0 and self.trace and self.returned_start(ctx):
            self.status, self.reduced_to = RETURNED_START, self.start_description()
        self._start = None
        return surrogate.eval()

    def returned_start(self, ctx: AttackContext) -> bool:
        """Whether the returned surrogate is its starting point (the state when :meth:`fit` began): every
        floating tensor within :data:`START_TOLERANCE`; override for a rule of the attack's own."""
        if self._start is None:
            return False
        now = ctx.surrogate.state_dict()
        return now.keys() == self._start.keys() and all(
            torch.allclose(now[k].detach().float().cpu(), v.float(), rtol=0, atol=START_TOLERANCE)
            for k, v in self._start.items() if v.is_floating_point())

    def start_description(self) -> str:
        """What a surrogate that returned its start is (``START``; override to name the parameters)."""
        return self.START

    # -- shared loop pieces ----------------------------------------------------------------------------
    def batches(self, ctx: AttackContext, batch_size: int | None = None) -> BatchStream:
        """The seeded endless batch stream over the substitute set."""
        return BatchStream(ctx.substitute, batch_size or self.params["batch_size"], ctx.generator, ctx.device)

    def make_optimizer(self, parameters: Iterable[nn.Parameter]) -> torch.optim.SGD:
        p = self.params
        return make_sgd(parameters, lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"])

    def make_scheduler(self, optimizer: torch.optim.Optimizer, iterations: int | None = None):
        p = self.params
        return make_schedule(optimizer, p["schedule"], p["iterations"] if iterations is None else iterations,
                             p["tmax_factor"])

    def emit(self, ctx: AttackContext, event: str, **info: Any) -> None:
        for cb in ctx.callbacks:
            cb(event, **info)

    def record(self, ctx: AttackContext, t: int, logs: dict[str, Any], lr: float | None = None) -> dict[str, Any]:
        """Append one trace row (tensors become floats in one transfer) and emit ``"iteration"``."""
        keys = list(logs)
        tensors = [logs[k] for k in keys if isinstance(logs[k], torch.Tensor)]
        values = torch.stack([v.detach().float().reshape(()) for v in tensors]).cpu().tolist() if tensors else []
        it = iter(values)
        row: dict[str, Any] = {"t": t}
        for k in keys:
            row[k] = next(it) if isinstance(logs[k], torch.Tensor) else logs[k]
        if lr is not None:
            row["lr"] = lr
        for k, v in row.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise RemovalNetError(f"attack {self.name!r}: {k} became non-finite ({v}) at iteration {t}; "
                                      f"lower the learning rate")
        self.trace.append(row)
        self.emit(ctx, "iteration", t=t, losses={k: v for k, v in row.items() if k != "t"})
        return row

    def checkpoint(self, ctx: AttackContext, t: int, model: nn.Module | None = None) -> float | None:
        """Evaluate on ``eval_set`` (if any), append to ``history`` and emit ``"checkpoint"``.

        The model is evaluated in eval mode and returned to its previous mode afterwards.
        """
        model = ctx.surrogate if model is None else model
        acc = None
        if ctx.eval_set is not None:
            was_training = model.training
            acc = float(evaluate(model, ctx.eval_set, device=ctx.device))
            model.train(was_training)
        self.history.append({"t": t, "accuracy": acc})
        self.emit(ctx, "checkpoint", t=t, model=model, accuracy=acc)
        return acc

    def is_checkpoint(self, t: int) -> bool:
        """t = 0, every ``checkpoint_every`` iterations, and the last iteration."""
        return t == 0 or t % self.params["checkpoint_every"] == 0 or t == self.params["iterations"]

    def fit(self, ctx: AttackContext,
            loss_fn: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict[str, Any]]],
            parameters: Iterable[nn.Parameter] | None = None, *,
            after_step: Callable[[int], None] | None = None, iterations: int | None = None,
            batch_stream: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """The shared loop: checkpoint at t=0, then per iteration draw a batch, ``loss, logs =
        loss_fn(x, y, t)``, SGD step, ``after_step(t)`` (e.g. re-apply pruning masks), schedule step,
        trace row, and checkpoints every ``checkpoint_every`` iterations and at the end.

        The surrogate is in train mode during the loop. ``parameters`` defaults to all surrogate
        parameters that require gradients.
        """
        model = ctx.surrogate
        if self._start is None:   # the starting point, to tell a run that returned it (returned_start)
            self._start = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        n = self.params["iterations"] if iterations is None else iterations
        opt = self.make_optimizer(model.parameters() if parameters is None else parameters)
        sched = self.make_scheduler(opt, n)
        stream = self.batches(ctx) if batch_stream is None else batch_stream
        model.eval()
        self.checkpoint(ctx, 0)
        model.train()
        for t in range(1, n + 1):
            x, y = next(stream)
            loss, logs = loss_fn(x, y, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(t)
            lr = opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step()
            self.record(ctx, t, logs, lr)
            if t % self.params["checkpoint_every"] == 0 or t == n:
                self.checkpoint(ctx, t)
        model.eval()


# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------

_ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make ``cls`` available as ``create_attack(cls.name)``."""
    if not (isinstance(cls, type) and issubclass(cls, Attack)) or not cls.name:
        raise TypeError("register_attack needs an Attack subclass with a non-empty `name`")
    return _ATTACKS.add(cls.name, cls)


def list_attacks() -> list[str]:
    return _ATTACKS.names()


def attack_class(name: str) -> type[Attack]:
    return _ATTACKS.get(name)


def create_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack with validated parameters."""
    return attack_class(name)(**params)
