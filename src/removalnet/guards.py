"""Checks shared by the commands and the experiment runner, made before any work starts.

* :func:`check_output_dir`: an output folder can be created and written (probed, so a training never runs
  only to fail at its save); :func:`check_output_file` the same for an output file;
* :func:`check_comparable`: two checkpoints' classes, channels and input size agree (refused otherwise),
  and their datasets (a warning: another dataset of the same shape can be legitimate);
* :func:`require_finite`: a model's weights and outputs are finite, checked by name (victim, suspect,
  reference N) before any metric of it is computed;
* :class:`RunLock`: one runner per run folder (an exclusive ``flock`` on ``<run folder>/.lock``, released
  by the kernel on any exit of the holder, ``kill -9`` included).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.refs import canonical_data_ref
from .utils import RemovalNetError
from .verify.base import dataset_tensors

__all__ = ["warn", "check_output_dir", "check_output_file", "check_comparable", "require_finite", "check_accuracy",
           "RunLock"]


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Fail with one line unless ``path`` is (or can be created as) a folder this process can write in.

    Nothing is left behind: the probe is a temporary folder created and removed in the nearest existing
    ancestor (as root, permission bits do not stop writes; a file in the way or a read-only file system does).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RemovalNetError(f"{what} {str(path)!r} exists and is not a directory")
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise RemovalNetError(f"{what} {str(path)!r} cannot be created: {str(parent)!r} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".removalnet-probe-", dir=parent))
    except OSError as e:
        raise RemovalNetError(f"{what} {str(path)!r} cannot be written: {str(parent)!r} is not writable "
                              f"({e.strerror or e})") from e
    return path


def check_output_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """Fail with one line unless ``path`` can be written as a file: not a folder, and its folder is (or can be
    created as) one this process can write in (:func:`check_output_dir`; nothing is left behind)."""
    path = Path(path)
    if path.is_dir():
        raise RemovalNetError(f"{what} {str(path)!r} is a directory; give a file name")
    check_output_dir(path.parent, f"{what} {str(path)!r}: its folder")
    return path


def _shape(meta: dict[str, Any]) -> dict[str, Any]:
    bc = meta.get("build_config") or {}
    return {"classes": meta.get("num_classes", bc.get("num_classes")),
            "channels": meta.get("in_chans", bc.get("in_chans")),
            "input size": meta.get("input_size", bc.get("input_size"))}


def check_comparable(ref: dict[str, Any], other: dict[str, Any], *, what: str, ref_what: str = "the victim",
                     data_warning: bool = True) -> None:
    """Refuse ``other`` (a checkpoint's sidecar, or a dataset's ``num_classes``/``in_chans``/``input_size``)
    when its classes, channels or input size differ from ``ref``'s; warn when both name a dataset and the
    datasets differ. Values missing on either side are not compared."""
    a, b = _shape(ref), _shape(other)
    diff = [f"{k} {b[k]} vs {a[k]}" for k in a if a[k] is not None and b[k] is not None and a[k] != b[k]]
    if diff:
        raise RemovalNetError(f"{what} cannot be compared with {ref_what}: {', '.join(diff)}")
    da, db = ref.get("dataset"), other.get("dataset")   # npz:/folder: paths compared resolved (one file, two spellings)
    if data_warning and da and db and canonical_data_ref(str(da)) != canonical_data_ref(str(db)):
        warn(f"{what} comes from dataset {db!r}, {ref_what} from {da!r}")


@torch.no_grad()
def require_finite(model: nn.Module, data: Any, name: str, *, device: Any = None, probe: int = 64) -> None:
    """Refuse ``model`` by ``name`` when a weight, or its output on the first ``probe`` inputs of ``data`` (a
    Dataset of (x, y) or a tensor of inputs), is NaN or infinite."""
    if isinstance(data, torch.Tensor):
        x = data[:probe]
    else:
        x = dataset_tensors(data, range(min(len(data), probe)))[0]
    for pname, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RemovalNetError(f"{name} has non-finite weights (nan/inf in {pname!r}): refusing to score it")
    was_training = model.training
    model.eval()
    try:
        dev = device if device is not None else next(iter(model.parameters()), torch.empty(0)).device
        out = model(x.to(dev))
    finally:
        model.train(was_training)
    if not bool(torch.isfinite(out).all()):
        raise RemovalNetError(f"{name} outputs non-finite values (nan/inf): refusing to score it")


def check_accuracy(model: nn.Module, data: Any, name: str, *, device: Any = None, limit: int | None = 2000) -> float:
    """Print ``model``'s top-1 accuracy on ``data`` (up to ``limit`` evenly spread samples; None: all of them)
    before any work, and warn when it is near chance (at most twice 1/K) or when relabelling the model's classes
    would raise it by 20 points or more: the usual signs of a label-order (``folder:`` numbers classes in sorted
    folder-name order) or normalisation mismatch between the model and the data. Returns the accuracy in [0, 1]."""
    from scipy.optimize import linear_sum_assignment

    n = len(data)
    idx = list(range(n)) if limit is None or n <= limit else [i * n // limit for i in range(limit)]
    was_training = model.training
    model.eval()
    preds, labels = [], []
    try:
        dev = device if device is not None else next(iter(model.parameters()), torch.empty(0)).device
        with torch.inference_mode():
            for i in range(0, len(idx), 256):   # a batch of images in memory at a time
                x, yb = dataset_tensors(data, idx[i:i + 256])[:2]
                preds.append(model(x.to(dev)).argmax(1).cpu())
                labels.append(yb)
    finally:
        model.train(was_training)
    pred, y = torch.cat(preds), torch.cat(labels).long()
    k = int(max(int(y.max()), int(pred.max()))) + 1
    acc = float((pred == y).float().mean())
    logging.getLogger("removalnet").info(f"{name}: accuracy {acc * 100:.2f}% on {len(y)} test images")
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    rows, cols = linear_sum_assignment(confusion.numpy(), maximize=True)
    relabelled = float(confusion.numpy()[rows, cols].sum()) / len(y)
    if relabelled - acc >= 0.2:
        moved = ", ".join(f"{r}->{c}" for r, c in zip(rows, cols) if r != c)
        warn(f"{name} would score {relabelled * 100:.1f}% with its classes renumbered (data class -> model class: "
             f"{moved}): its class order differs from the data's (folder: numbers classes in sorted folder-name "
             "order)")
    elif acc <= 2.0 / max(k, 2):
        warn(f"{name} is near chance on this data ({acc * 100:.1f}%, chance {100 / max(k, 2):.1f}%): check that "
             "the model and the data match (class order, --normalize, input size)")
    return acc


class RunLock:
    """An exclusive lock on a run folder: ``with RunLock(run_dir, wait=False): ...``.

    A second holder fails at once with a message naming the holder's pid, or with ``wait=True`` blocks
    until the holder releases it. The lock is an ``flock`` on ``<run_dir>/.lock`` (which holds the pid):
    the kernel releases it whenever the holding process ends, however it ends.
    """

    def __init__(self, run_dir: str | os.PathLike, *, wait: bool = False):
        self.path = Path(run_dir) / ".lock"
        self.wait = wait
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                    raise
                if not self.wait:
                    raise RemovalNetError(
                        f"run folder {str(self.path.parent)!r} is in use by another removalnet process "
                        f"(pid {self._holder()}); wait for it to finish, or pass --wait") from None
                warn(f"run folder {str(self.path.parent)!r} is in use by pid {self._holder()}; waiting for it")
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
