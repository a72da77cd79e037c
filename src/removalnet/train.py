"""Supervised training and evaluation, shared by victims, reference and negative models.

One trainer for every independently trained model of the toolkit: SGD or Adam, cosine/step/constant
schedule, optional augmentation (random crop with padding, optional horizontal flip), evaluation on a test
set, a tqdm progress bar, seeded and deterministic on the CPU.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from .utils import RemovalNetError, resolve_device, seed_everything

__all__ = ["TrainConfig", "train_model", "evaluate", "predict_logits", "make_loader", "make_optimizer",
           "make_scheduler", "augment_batch", "infinite_batches"]

_OPTIMIZERS = ("sgd", "adam")
_SCHEDULES = ("cosine", "step", "constant")
_AUGMENTS = ("none", "crop", "crop_flip")


@dataclass
class TrainConfig:
    """Hyperparameters of :func:`train_model`. ``iterations`` (optimizer steps), when set, overrides ``epochs``."""

    epochs: int = 2
    iterations: int | None = None
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    augment: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):
            self.augment = "crop" if self.augment else "none"
        checks = [
            (isinstance(self.epochs, int) and self.epochs >= 1, "epochs must be an integer >= 1"),
            (self.iterations is None or (isinstance(self.iterations, int) and self.iterations >= 1),
             "iterations must be an integer >= 1 or null"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size must be an integer >= 1"),
            (self.optimizer in _OPTIMIZERS, f"optimizer must be one of {_OPTIMIZERS}"),
            (isinstance(self.lr, (int, float)) and self.lr > 0, "lr must be > 0"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.schedule in _SCHEDULES, f"schedule must be one of {_SCHEDULES}"),
            (self.augment in _AUGMENTS, f"augment must be one of {_AUGMENTS}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise RemovalNetError(f"invalid training config: {msg}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RemovalNetError(f"unknown training config key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, **options: Any) -> DataLoader:
    """A DataLoader (single-process unless ``options`` say otherwise, e.g. ``num_workers``, ``pin_memory``);
    when shuffling, the order comes from a generator seeded by ``seed`` (the same with workers)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None,
                      drop_last=False, **{"num_workers": 0, **options})


def infinite_batches(dataset: Dataset, batch_size: int, generator: torch.Generator) -> Iterator[tuple]:
    """Endless (x, y) batches over ``dataset``, reshuffled every epoch with ``generator``; the last short
    batch of an epoch is dropped unless the dataset is smaller than one batch."""
    n = len(dataset)
    if n == 0:
        raise RemovalNetError("cannot draw batches from an empty dataset")
    drop_last = n >= batch_size
    while True:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                            num_workers=0, drop_last=drop_last)
        yield from loader


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (zero padding) per sample, plus a horizontal flip with
    probability 0.5 for ``crop_flip``. Draws from ``generator`` only, so it is seeded with the run."""
    if mode == "none":
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    out = torch.stack([padded[i, :, offs[i, 0]:offs[i, 0] + h, offs[i, 1]:offs[i, 1] + w] for i in range(n)])
    if mode == "crop_flip":
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def make_optimizer(params, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise RemovalNetError(f"unknown optimizer {name!r}; known: {_OPTIMIZERS}")


def make_scheduler(optimizer, name: str, total_steps: int):
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if name == "step":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[int(total_steps * 0.5), int(total_steps * 0.75)], gamma=0.1)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise RemovalNetError(f"unknown schedule {name!r}; known: {_SCHEDULES}")


def _as_dataset(data: Dataset | torch.Tensor) -> Dataset:
    if isinstance(data, torch.Tensor):
        return TensorDataset(data)
    return data


@torch.no_grad()
def predict_logits(model: nn.Module, data: Dataset | torch.Tensor, *, batch_size: int = 512,
                   device: str | torch.device | None = None) -> torch.Tensor:
    """Logits of ``model`` on every input of ``data`` (a Dataset of (x, ...) or a tensor), on the CPU.

    Runs in eval mode and restores the model's previous mode afterwards.
    """
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs = []
    try:
        for batch in make_loader(_as_dataset(data), batch_size, shuffle=False):
            outs.append(model(batch[0].to(dev)).float().cpu())
    finally:
        model.train(was_training)
    if not outs:
        raise RemovalNetError("cannot predict on an empty dataset")
    return torch.cat(outs)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 512,
             device: str | torch.device | None = None) -> float:
    """Top-1 accuracy of ``model`` on a Dataset of (x, y), in [0, 1]."""
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in make_loader(dataset, batch_size, shuffle=False):
            pred = model(x.to(dev)).argmax(1).cpu()
            correct += int((pred == torch.as_tensor(y)).sum())
            total += len(pred)
    finally:
        model.train(was_training)
    if total == 0:
        raise RemovalNetError("cannot evaluate on an empty dataset")
    return correct / total


def train_model(model: nn.Module, train_set: Dataset, test_set: Dataset | None = None,
                config: TrainConfig | None = None, *, seed: int = 0,
                device: str | torch.device | None = None, progress: bool = True,
                loader: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` in place with cross-entropy; return a history dict. ``loader``: extra DataLoader
    options of the training batches (``num_workers``, ``pin_memory``).

    The history has ``iterations``, ``epochs``, ``train_loss`` (mean per epoch), ``test_accuracy`` (per
    epoch, when a test set is given), ``final_test_accuracy``, ``time_s`` and the config. Two runs with the
    same seed, data and config give bit-identical weights on the CPU.
    """
    config = config or TrainConfig()
    dev = resolve_device(device)
    gen = seed_everything(seed)
    model.to(dev)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total = config.iterations or config.epochs * steps_per_epoch
    opt = make_optimizer(model.parameters(), config.optimizer, config.lr, config.momentum, config.weight_decay)
    sched = make_scheduler(opt, config.schedule, total)
    hist: dict[str, Any] = {"config": config.to_dict(), "seed": seed, "train_loss": [], "test_accuracy": []}
    start = time.perf_counter()
    step, epoch = 0, 0
    bar = tqdm(total=total, desc="train", unit="it", disable=not progress, leave=False)
    model.train()
    while step < total:
        epoch += 1
        loss_sum, n_batches = 0.0, 0
        for x, y in make_loader(train_set, config.batch_size, shuffle=True, seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)),
                                **(loader or {})):
            x = augment_batch(x, config.augment, gen).to(dev, non_blocking=True)
            loss = F.cross_entropy(model(x).float(), torch.as_tensor(y).to(dev, non_blocking=True))
            if not bool(torch.isfinite(loss.detach())):
                bar.close()
                raise RemovalNetError(f"training diverged: the loss became non-finite ({float(loss.detach())}) at "
                                      f"iteration {step + 1}; lower the learning rate (lr={config.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
            n_batches += 1
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.3f}")
            if step >= total:
                break
        hist["train_loss"].append(loss_sum / max(1, n_batches))
        if test_set is not None:
            hist["test_accuracy"].append(evaluate(model, test_set, device=dev))
            model.train()
    bar.close()
    model.eval()
    bad = next((k for k, t in model.state_dict().items() if t.is_floating_point() and not bool(t.isfinite().all())), None)
    if bad is not None:
        raise RemovalNetError(f"training diverged: weight {bad!r} became non-finite; lower the learning rate "
                              f"(lr={config.lr})")
    hist.update(iterations=step, epochs=epoch, time_s=time.perf_counter() - start)
    hist["final_test_accuracy"] = hist["test_accuracy"][-1] if hist["test_accuracy"] else None
    return hist
