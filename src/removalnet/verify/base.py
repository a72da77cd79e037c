"""Common machinery of the ownership verifiers (paper, section 2.2: extraction E and verification V).

A verifier turns the victim and the verifier's own data D_fp into a :class:`Fingerprint`
(``extract``, the paper's E(F_V, D)), then measures a suspect against it (``score``, the distance
or similarity d of V(F_V, F_S, D_fp, d)). Each verifier reports one or more :class:`Metric`\\ s, each
with a direction: ``"distance"`` (larger = less related) or ``"similarity"`` (larger = more related).

Subclasses implement two methods::

    @register_verifier
    class MyVerifier(Verifier):
        name = "my"
        metrics = (Metric("MY-D", "distance"),)
        PARAMS = {"num_points": Param(100, int, low=1, doc="probing inputs")}  # batch_size: base class

        def _extract(self, victim, data, *, seed, generator, device):
            ...                                 # victim: eval mode, on device, parameters frozen
            return tensors, meta                # dict[str, Tensor], JSON-able dict

        def _score(self, fp, victim, suspect, *, device):
            ...                                 # read extraction settings from fp.params / fp.meta
            return {"MY-D": value}

The base class validates parameters against ``PARAMS`` (merged over the class hierarchy, as for
attacks; :mod:`removalnet.params`), seeds every RNG from ``seed`` (and hands a seeded
``torch.Generator`` to ``_extract``), puts the models in eval mode on the device with frozen
parameters and restores their mode, device and ``requires_grad`` flags afterwards, checks that a
fingerprint belongs to the victim and the verifier before scoring, and stores fingerprints as
safetensors + JSON (never pickle).

Per-suspect verifiers (``per_suspect = True``; ModelDiff, whose profiling inputs are searched on
both models) split the fingerprint in two: ``extract`` builds the victim-side part (the seeds) once,
and ``pair(fp, victim, suspect)`` (``_pair`` in the subclass) completes it for one suspect. The paired
fingerprint carries the suspect's weights hash, which is part of its key; ``score`` pairs on the fly
when handed an unpaired fingerprint and refuses one paired with another suspect.

Verifiers of one family that start from the same costly stage (DeepJudge's seeds and test cases, shared by
``deepjudge``, ``deepjudge_aligned`` and ``deepjudge_scaled``) name it in ``generation`` and implement
``_generate`` and ``generation_params``: ``generate`` returns that stage as a fingerprint of its own (verifier
name ``generation``, keyed by the generation parameters only), and ``extract(..., generation=...)`` builds the
verifier's fingerprint from it, adding only the verifier's own statistics (``_extract`` receives it as
``generation=``). :class:`FingerprintCache` stores the generation beside the fingerprints, so the family
generates once per (victim, data, seed, generation parameters).
"""
from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, NamedTuple, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..params import Param, class_params, validate_params
from ..registry import Registry
from ..utils import RemovalNetError, atomic_path, atomic_write_json, package_versions, resolve_device, \
    seed_everything, weights_hash

__all__ = [
    "Metric", "Fingerprint", "Verifier", "FingerprintCache", "register_verifier", "create_verifier",
    "list_verifiers", "verifier_class", "all_metrics", "fingerprint_key", "data_digest", "prepared_models",
    "dataset_tensors", "input_normalization", "batched_apply", "batched_logits", "verifier_defaults",
    "FORMAT_VERSION", "RUN_META", "auto_batch_size",
]

FORMAT_VERSION = 1
#: the meta entries every extraction adds (the rest of a fingerprint's meta is the verifier's own)
RUN_META = frozenset({"seed", "data_digest", "data_size", "runtime_params", "extract_seconds", "device", "versions",
                      "input_shape"})

#: the automatic ``batch_size``: about this many input elements per forward pass (128 images of 3 x 32 x 32),
#: as a power of two between AUTO_BATCH_MIN and AUTO_BATCH_MAX. Measured in benchmarks/verify_cost.py: the
#: fastest batch on one CPU thread is 128-256 at 28-32 px and 8 at 224 px, where 256 costs about 1.5x.
AUTO_BATCH_ELEMENTS, AUTO_BATCH_MIN, AUTO_BATCH_MAX = 128 * 3 * 32 * 32, 8, 256


def auto_batch_size(input_shape: Sequence[int] | None) -> int:
    """The batch size of the automatic ``batch_size`` for inputs of ``input_shape`` (C x H x W); the largest
    when the shape is unknown (fingerprints made before it was recorded)."""
    if not input_shape:
        return AUTO_BATCH_MAX
    fit = max(1, AUTO_BATCH_ELEMENTS // max(1, math.prod(int(d) for d in input_shape)))
    return int(min(AUTO_BATCH_MAX, max(AUTO_BATCH_MIN, 1 << (fit.bit_length() - 1))))


class Metric(NamedTuple):
    """A verifier's output. ``direction``: "distance" (larger = less related) or "similarity"."""
    name: str
    direction: Literal["distance", "similarity"]


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _jsonable(obj: Any, what: str) -> Any:
    """A JSON round trip of ``obj`` (tuples become lists), so stored and in-memory values compare equal."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise RemovalNetError(f"{what} must be JSON-serialisable (plain numbers, strings, lists, dicts): {e}") from e


def fingerprint_key(verifier: str, params: dict, victim_hash: str, seed: int, data: str | None = None,
                    suspect_hash: str | None = None) -> str:
    """sha256 of (verifier name, canonical JSON of the parameters, victim weights hash, seed[, data digest]
    [, suspect weights hash: per-suspect fingerprints only])."""
    payload = {"verifier": verifier, "params": params, "victim_hash": victim_hash, "seed": seed}
    if data is not None:
        payload["data"] = data
    if suspect_hash is not None:
        payload["suspect_hash"] = suspect_hash
    return hashlib.sha256(_canonical_json(payload).encode()).hexdigest()


def data_digest(data: Dataset, samples: int = 8) -> str:
    """A cheap identity of a dataset: its length and the bytes of ``samples`` evenly spaced items.

    Part of the fingerprint cache key, so that the same victim measured on another D_fp is not served
    a stale fingerprint.
    """
    n = len(data)  # type: ignore[arg-type]
    h = hashlib.sha256(f"len={n}".encode())
    if n:
        idx = sorted({round(i * (n - 1) / max(1, samples - 1)) for i in range(min(samples, n))})
        for i in idx:
            x, y = data[i][0], data[i][1]
            x = torch.as_tensor(x).detach().cpu().contiguous()
            h.update(str((i, tuple(x.shape), str(x.dtype), int(y))).encode())
            h.update(x.numpy().tobytes())
    return h.hexdigest()


@dataclass
class Fingerprint:
    """What ``extract`` produced: the verifier's probing inputs and the victim's values on them.

    ``params``: the verifier's parameters at extraction. ``meta``: JSON values (seed, resolved
    settings, counts, timings, versions). ``tensors``: CPU tensors, stored with safetensors.
    ``suspect_hash``: the weights hash of the suspect a per-suspect fingerprint was paired with (None
    for every other fingerprint).
    """
    verifier: str
    params: dict
    victim_hash: str
    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    suspect_hash: str | None = None

    @property
    def seed(self) -> int:
        return int(self.meta.get("seed", 0))

    @property
    def key(self) -> str:
        """sha256 of (verifier name, parameters that decide the fingerprint, victim hash, seed, data[, suspect])."""
        runtime = set(self.meta.get("runtime_params", ()))
        params = {k: v for k, v in self.params.items() if k not in runtime}
        return fingerprint_key(self.verifier, params, self.victim_hash, self.seed, self.meta.get("data_digest"),
                               self.suspect_hash)

    @property
    def verifier_meta(self) -> dict:
        """The meta the verifier wrote (without the entries :data:`RUN_META` every extraction adds)."""
        return {k: v for k, v in self.meta.items() if k not in RUN_META}

    @staticmethod
    def _paths(path: str | Path) -> tuple[Path, Path]:
        path = Path(path)
        if path.suffix in (".safetensors", ".json"):
            path = path.with_suffix("")
        return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")

    def save(self, path: str | Path) -> None:
        """Write ``<path>.safetensors`` (tensors) then ``<path>.json`` (everything else), each atomically."""
        st_path, js_path = self._paths(path)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.tensors.items()}
        paired = {} if self.suspect_hash is None else {"suspect_hash": self.suspect_hash}
        with atomic_path(st_path) as tmp:
            save_file(tensors, str(tmp), metadata={"verifier": self.verifier, "victim_hash": self.victim_hash,
                                                   **paired})
        atomic_write_json(js_path, {
            "format_version": FORMAT_VERSION, "verifier": self.verifier, "params": self.params,
            "victim_hash": self.victim_hash, **paired, "meta": self.meta, "key": self.key,
            "tensors": sorted(tensors),
        })

    @classmethod
    def load(cls, path: str | Path) -> "Fingerprint":
        """Read a fingerprint written by :meth:`save` (safetensors + JSON; no pickle)."""
        st_path, js_path = cls._paths(path)
        for p in (st_path, js_path):
            if not p.is_file():
                raise RemovalNetError(f"fingerprint file {p} does not exist")
        try:
            info = json.loads(js_path.read_text())
            tensors = load_file(str(st_path))
        except Exception as e:  # corrupt JSON / safetensors header
            raise RemovalNetError(f"cannot read fingerprint {st_path.with_suffix('')}: {e}") from e
        if info.get("format_version") != FORMAT_VERSION:
            raise RemovalNetError(f"fingerprint {js_path} has format version {info.get('format_version')!r}, "
                                  f"this version of removalnet reads {FORMAT_VERSION}")
        if sorted(tensors) != sorted(info.get("tensors", [])):
            raise RemovalNetError(f"fingerprint {st_path} does not hold the tensors its JSON lists "
                                  "(the two files are from different extractions)")
        return cls(verifier=info["verifier"], params=info["params"], victim_hash=info["victim_hash"],
                   tensors=tensors, meta=info.get("meta", {}), suspect_hash=info.get("suspect_hash"))


# ------------------------------------------------------------------------------------ model handling
@contextlib.contextmanager
def prepared_models(*models: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode, on ``device``, parameters frozen; restores training flags, devices and requires_grad.

    Gradients with respect to inputs still flow (test generation, PGD); no parameter gradient is built.
    """
    saved = []
    for m in models:
        if not isinstance(m, nn.Module):
            raise RemovalNetError(f"expected a torch model (nn.Module), got {type(m).__name__}")
        p = next(iter(m.parameters()), None)
        if p is None:
            p = next(iter(m.buffers()), None)
        saved.append((m, m.training, p.device if p is not None else device,
                      [(q, q.requires_grad) for q in m.parameters()],
                      {name: mod.training for name, mod in m.named_modules()}))
    try:
        for m, *_ in saved:
            m.to(device).eval()
            for q in m.parameters():
                q.requires_grad_(False)
        yield
    finally:
        for m, _, dev, flags, modes in saved:
            for q, rg in flags:
                q.requires_grad_(rg)
            for name, mod in m.named_modules():
                mod.training = modes.get(name, mod.training)
            m.to(dev)


def dataset_tensors(data: Dataset, indices: Sequence[int] | None = None, *, batch_size: int = 512
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (x, y) items of ``data`` (all, or ``indices`` in that order) into CPU tensors (float32, int64)."""
    ds = data if indices is None else Subset(data, list(indices))
    if len(ds) == 0:  # type: ignore[arg-type]
        raise RemovalNetError("the verifier's data set is empty")
    xs, ys = [], []
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(torch.as_tensor(y, dtype=torch.int64))
    return torch.cat(xs), torch.cat(ys)


def input_normalization(model: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) of the model's input normalisation (``model.normalize``), CPU float32.

    A model without one gets (0, 1): its normalised space is pixel space.
    """
    norm = getattr(model, "normalize", None)
    out = []
    for name, default in (("mean", 0.0), ("std", 1.0)):
        t = getattr(norm, name, None)
        if t is None:
            out.append(torch.full((channels,), default))
            continue
        t = t.detach().float().cpu().flatten()
        if t.numel() != channels:
            raise RemovalNetError(f"the victim normalises {t.numel()} channels, the data has {channels}")
        out.append(t)
    return out[0], out[1]


def batched_apply(fn, x: torch.Tensor, *, batch_size: int, device: torch.device) -> torch.Tensor:
    """``torch.cat([fn(chunk on device) for chunks of x])`` on the CPU, under ``torch.inference_mode`` (the result,
    concatenated outside it, is an ordinary tensor that autograd may use later)."""
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            outs.append(fn(x[i:i + batch_size].to(device)).detach().float().cpu())
    return torch.cat(outs)


def batched_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int, device: torch.device) -> torch.Tensor:
    return batched_apply(model, x, batch_size=batch_size, device=device)


def _checked_inputs(victim: nn.Module, data: Dataset) -> int:
    """The size of ``data``; a victim that is no torch model, or data that is not a non-empty sized Dataset, refused."""
    if not isinstance(victim, nn.Module):
        raise RemovalNetError(f"the victim must be a torch model (nn.Module), got {type(victim).__name__}")
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError as e:
        raise RemovalNetError(f"the verifier's data must be a sized Dataset of (x, y), "
                              f"got {type(data).__name__}") from e
    if n == 0:
        raise RemovalNetError("the verifier's data set is empty")
    return n


def _input_shape(data: Dataset) -> list[int] | None:
    """The shape of the data's first input (C x H x W), or None when it has none to read."""
    try:
        x = data[0][0]  # type: ignore[index]
    except Exception:   # any Dataset: its own error is not ours to raise here
        return None
    return [int(d) for d in x.shape] if isinstance(x, torch.Tensor) else None


# --------------------------------------------------------------------------------------- the verifier
class Verifier(abc.ABC):
    """Base class of every verifier; see the module docstring for what subclasses implement.

    Parameters are keyword arguments, declared in ``PARAMS`` (:class:`~removalnet.params.Param`, merged over
    the class hierarchy) and validated at construction; unknown names and bad values raise
    :class:`RemovalNetError`. A float parameter given as an integer keeps it (ZEST's ``kernel_size`` 4 stays 4,
    not 4.0): fingerprint keys and job ids hash the values as written, so existing caches and runs stay valid.
    ``batch_size`` bounds every forward pass (default None: :func:`auto_batch_size` of the input shape, 256 at
    28 px, 128 at 3 x 32 x 32, 8 at 224 px). Parameters listed in ``runtime_params``
    change speed, not the fingerprint: they are left out of the cache key and may differ between
    extraction and scoring; every other parameter must match the fingerprint's.
    ``per_suspect``: the probing inputs depend on the suspect too (see the module docstring).
    """

    name: ClassVar[str]
    metrics: ClassVar[tuple[Metric, ...]]
    per_suspect: ClassVar[bool] = False
    PARAMS: ClassVar[dict[str, Param]] = {
        "batch_size": Param(None, int, low=1, nullable=True,
                            doc="inputs per forward pass (speed only: not part of the fingerprint); None: from the "
                                "input size (256 at 28 px, 128 at 3x32x32, 8 at 224 px)"),
    }
    runtime_params: ClassVar[frozenset[str]] = frozenset({"batch_size"})
    #: True when ``_extract`` also takes ``train_data`` (the victim's training data, e.g. DeepJudge's k)
    uses_train_data: ClassVar[bool] = False
    #: the name of a first stage shared with other verifiers (DeepJudge's test generation), or None
    generation: ClassVar[str | None] = None

    def __init__(self, **params: Any):
        values = validate_params(self.param_spec(), params, f"verifier {self.name!r}", keep_ints=True)
        self.params: dict[str, Any] = _jsonable(values, f"parameters of verifier {self.name!r}")
        self.validate_params(self.params)
        self._victim_memo: dict[tuple, tuple[torch.Tensor, Any]] = {}

    @classmethod
    def param_spec(cls) -> dict[str, Param]:
        """All parameters of this verifier: ``PARAMS`` of every class in the MRO, subclasses winning."""
        return class_params(cls)

    def validate_params(self, params: dict[str, Any]) -> None:
        """Cross-parameter checks (override; raise RemovalNetError naming the parameters). Default: none."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def fingerprint_params(self) -> dict:
        return {k: v for k, v in self.params.items() if k not in self.runtime_params}

    def key(self, victim: nn.Module, data: Dataset, *, seed: int = 0, train_data: Dataset | None = None,
            suspect: nn.Module | None = None) -> str:
        """The key the fingerprint of (this verifier, victim, data[, train_data], seed) will have; with ``suspect``
        (per-suspect verifiers only), the key of the fingerprint paired with that suspect."""
        shash = None
        if suspect is not None:
            if not self.per_suspect:
                raise RemovalNetError(f"verifier {self.name!r} extracts one fingerprint per victim, not per suspect")
            shash = weights_hash(suspect)
        return fingerprint_key(self.name, self.fingerprint_params(), weights_hash(victim), seed,
                               self._data_digest(data, train_data), shash)

    def _data_digest(self, data: Dataset, train_data: Dataset | None) -> str:
        if train_data is None:
            return data_digest(data)
        if not self.uses_train_data:
            raise RemovalNetError(f"verifier {self.name!r} takes no training data")
        return f"{data_digest(data)}+train:{data_digest(train_data)}"

    # ------------------------------------------------------------------------------------ extraction
    def generation_params(self) -> dict:
        """The parameters that decide the shared generation (verifiers with a ``generation``; else empty)."""
        return {}

    def generation_key(self, victim: nn.Module, data: Dataset, *, seed: int = 0,
                       train_data: Dataset | None = None) -> str | None:
        """The key of the shared generation this verifier's fingerprint starts from (None without one): the
        same for every verifier of the family with the same generation parameters."""
        if self.generation is None:
            return None
        return fingerprint_key(self.generation, self.generation_params(), weights_hash(victim), seed,
                               self._data_digest(data, train_data))

    def generate(self, victim: nn.Module, data: Dataset, *, seed: int = 0, device: str | torch.device | None = None,
                 train_data: Dataset | None = None) -> Fingerprint:
        """The shared first stage alone (verifiers with a ``generation``), as a fingerprint named after it whose
        key is :meth:`generation_key`; ``extract(..., generation=)`` of any verifier of the family reads it."""
        if self.generation is None:
            raise RemovalNetError(f"verifier {self.name!r} shares no generation with other verifiers")
        params = {**self.generation_params(), **{k: self.params[k] for k in self.runtime_params}}
        return self._run(self.generation, params, self._generate, victim, data, seed=seed, device=device,
                         train_data=train_data)

    def _generate(self, victim: nn.Module, data: Dataset, *, seed: int, generator: torch.Generator,
                  device: torch.device, **kw: Any) -> tuple[dict[str, torch.Tensor], dict]:
        """Verifiers with a ``generation``: return its (tensors, meta), as ``_extract`` does."""
        raise NotImplementedError(f"verifier {self.name!r} names a generation but implements no _generate")

    def extract(self, victim: nn.Module, data: Dataset, *, seed: int = 0,
                device: str | torch.device | None = None, train_data: Dataset | None = None,
                generation: Fingerprint | None = None) -> Fingerprint:
        """E(F_V, D_fp): build the fingerprint from the verifier's own data ``data`` (a Dataset of (x, y)).

        ``train_data``: the victim's training data, for verifiers with ``uses_train_data`` only (part of the key).
        ``generation``: the shared first stage (:meth:`generate`) of a verifier with a ``generation``, made by
        any verifier of the family for the same victim, data, seed and generation parameters; None: generated
        here.
        """
        extra: dict[str, Any] = {}
        if self.generation is not None:
            _checked_inputs(victim, data)
            gkey = self.generation_key(victim, data, seed=seed, train_data=train_data)
            if generation is None:
                generation = self.generate(victim, data, seed=seed, device=device, train_data=train_data)
            elif generation.verifier != self.generation or generation.key != gkey:
                raise RemovalNetError(f"this {generation.verifier} generation was made for another victim, data, seed "
                                      f"or parameters than this {self.name} verifier's "
                                      f"({self.generation} {gkey[:12]}...)")
            extra["generation"] = generation
        elif generation is not None:
            raise RemovalNetError(f"verifier {self.name!r} shares no generation with other verifiers")
        return self._run(self.name, dict(self.params), self._extract, victim, data, seed=seed, device=device,
                         train_data=train_data, extra=extra)

    def _run(self, name: str, params: dict, fn, victim: nn.Module, data: Dataset, *, seed: int,
             device: str | torch.device | None, train_data: Dataset | None, extra: dict | None = None) -> Fingerprint:
        """Run ``fn`` (``_extract`` or ``_generate``) on the prepared victim, seeded; check and wrap its result."""
        dev = resolve_device(device)
        n = _checked_inputs(victim, data)
        vhash = weights_hash(victim)
        digest = self._data_digest(data, train_data)
        extra = {**({"train_data": train_data} if self.uses_train_data else {}), **(extra or {})}
        shape = _input_shape(data)
        generator = seed_everything(seed)
        t0 = time.perf_counter()
        with prepared_models(victim, device=dev), self._batch_for(shape):
            tensors, meta = fn(victim, data, seed=seed, generator=generator, device=dev, **extra)
        elapsed = time.perf_counter() - t0
        if weights_hash(victim) != vhash:
            raise AssertionError(f"{name}: extraction modified the victim's weights")
        bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise AssertionError(f"{name}: fingerprint entry {bad[0]!r} is not a tensor")
        meta = _jsonable({**meta, "seed": seed, "data_digest": digest, "data_size": n, "input_shape": shape,
                          "runtime_params": sorted(self.runtime_params), "extract_seconds": round(elapsed, 3),
                          "device": str(dev), "versions": package_versions()}, f"{name} fingerprint meta")
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        return Fingerprint(verifier=name, params=params, victim_hash=vhash, tensors=tensors, meta=meta)

    @contextlib.contextmanager
    def _batch_for(self, input_shape: Sequence[int] | None) -> Iterator[None]:
        """While open, ``params["batch_size"]`` is a number: the given one, or the automatic one for the shape."""
        if self.params["batch_size"] is not None:
            yield
            return
        self.params["batch_size"] = auto_batch_size(input_shape)
        try:
            yield
        finally:
            self.params["batch_size"] = None

    @abc.abstractmethod
    def _extract(self, victim: nn.Module, data: Dataset, *, seed: int, generator: torch.Generator,
                 device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
        """Return (tensors, meta). ``victim`` is in eval mode on ``device`` with frozen parameters."""

    # ------------------------------------------------------------------------------- per-suspect pairing
    def pair(self, fp: Fingerprint, victim: nn.Module, suspect: nn.Module, *,
             device: str | torch.device | None = None) -> Fingerprint:
        """Complete the victim-side fingerprint ``fp`` of a per-suspect verifier for ``suspect``.

        Every RNG is seeded from the fingerprint's seed, so pairing is deterministic. The result holds the
        tensors of ``fp`` and those ``_pair`` adds, and carries the suspect's weights hash.
        """
        dev = resolve_device(device)
        if not self.per_suspect:
            raise RemovalNetError(f"verifier {self.name!r} extracts one fingerprint per victim; nothing to pair")
        self.check_fingerprint(fp, victim)
        if fp.suspect_hash is not None:
            raise RemovalNetError(f"this {self.name} fingerprint is already paired with a suspect "
                                  f"(weights hash {fp.suspect_hash[:12]}...)")
        if not isinstance(suspect, nn.Module):
            raise RemovalNetError(f"the suspect must be a torch model (nn.Module), got {type(suspect).__name__}")
        vhash, shash = fp.victim_hash, weights_hash(suspect)
        generator = seed_everything(fp.seed)
        t0 = time.perf_counter()
        with prepared_models(victim, suspect, device=dev), self._batch_for(fp.meta.get("input_shape")):
            tensors, meta = self._pair(fp, victim, suspect, generator=generator, device=dev)
        elapsed = time.perf_counter() - t0
        if weights_hash(victim) != vhash or weights_hash(suspect) != shash:
            raise AssertionError(f"{self.name}: pairing modified a model's weights")
        clash = sorted(set(tensors) & set(fp.tensors))
        if clash:
            raise AssertionError(f"{self.name}: _pair returned {clash[0]!r}, which the fingerprint already holds")
        meta = _jsonable({**fp.meta, **meta, "pair_seconds": round(elapsed, 3), "pair_device": str(dev)},
                         f"{self.name} fingerprint meta")
        tensors = {**fp.tensors, **{k: v.detach().cpu().contiguous() for k, v in tensors.items()}}
        return Fingerprint(verifier=fp.verifier, params=dict(fp.params), victim_hash=vhash, tensors=tensors,
                           meta=meta, suspect_hash=shash)

    def _pair(self, fp: Fingerprint, victim: nn.Module, suspect: nn.Module, *, generator: torch.Generator,
              device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
        """Per-suspect verifiers: return the (tensors, meta) that complete ``fp`` for ``suspect``."""
        raise NotImplementedError(f"verifier {self.name!r} declares per_suspect but implements no _pair")

    # -------------------------------------------------------------------------------------- scoring
    def check_fingerprint(self, fp: Fingerprint, victim: nn.Module) -> None:
        if not isinstance(fp, Fingerprint):
            raise RemovalNetError(f"expected a Fingerprint, got {type(fp).__name__}")
        if fp.verifier != self.name:
            raise RemovalNetError(f"this fingerprint was made by verifier {fp.verifier!r}, not {self.name!r}")
        if fp.victim_hash != weights_hash(victim):
            raise RemovalNetError(
                f"this {self.name} fingerprint belongs to another victim (weights hash {fp.victim_hash[:12]}..., "
                f"the given victim has {weights_hash(victim)[:12]}...): extract it from this victim")
        mine, theirs = self.fingerprint_params(), {k: v for k, v in fp.params.items() if k not in self.runtime_params}
        for k in sorted(set(mine) | set(theirs)):
            if mine.get(k) != theirs.get(k):
                raise RemovalNetError(f"the fingerprint was extracted with {k}={theirs.get(k)!r}, this {self.name} "
                                      f"verifier has {k}={mine.get(k)!r}")

    def score(self, fp: Fingerprint, victim: nn.Module, suspect: nn.Module, *,
              device: str | torch.device | None = None) -> dict[str, float]:
        """d(F_V, F_S) on the fingerprint: one float per metric of this verifier.

        Per-suspect verifiers: an unpaired fingerprint is paired with ``suspect`` first (:meth:`pair`);
        a fingerprint paired with another suspect is refused.
        """
        dev = resolve_device(device)
        self.check_fingerprint(fp, victim)
        if not isinstance(suspect, nn.Module):
            raise RemovalNetError(f"the suspect must be a torch model (nn.Module), got {type(suspect).__name__}")
        if fp.suspect_hash is not None and fp.suspect_hash != weights_hash(suspect):
            raise RemovalNetError(
                f"this {self.name} fingerprint was generated for another suspect (weights hash "
                f"{fp.suspect_hash[:12]}..., the given suspect has {weights_hash(suspect)[:12]}...)")
        if self.per_suspect and fp.suspect_hash is None:
            fp = self.pair(fp, victim, suspect, device=dev)
        with prepared_models(victim, suspect, device=dev), self._batch_for(fp.meta.get("input_shape")):
            out = self._score(fp, victim, suspect, device=dev)
        if set(out) != set(self.metric_names):
            raise AssertionError(f"{self.name}: _score returned {sorted(out)}, expected {list(self.metric_names)}")
        return {m: float(out[m]) for m in self.metric_names}

    @abc.abstractmethod
    def _score(self, fp: Fingerprint, victim: nn.Module, suspect: nn.Module, *,
               device: torch.device) -> dict[str, float]:
        """Return {metric name: value}; models are in eval mode on ``device`` with frozen parameters."""

    #: how many (fingerprint inputs, device) results :meth:`victim_outputs` keeps
    VICTIM_MEMO = 8

    def victim_outputs(self, fp: Fingerprint, inputs: str, fn: Callable[[], Any], device: torch.device) -> Any:
        """``fn()``: the victim's outputs on the fingerprint's tensor ``inputs``, computed once per (those
        inputs, device, batch size) by this verifier object, so the suspects and references of one ``verify``
        share them. For ``_score`` only: ``score`` has checked the victim's weights against the fingerprint."""
        x = fp.tensors[inputs]
        key = (fp.victim_hash, inputs, id(x), str(device), self.params["batch_size"])
        hit = self._victim_memo.get(key)
        if hit is not None and hit[0] is x:      # the memo holds x, so its id is not reused while it is there
            return hit[1]
        out = fn()
        while len(self._victim_memo) >= self.VICTIM_MEMO:
            self._victim_memo.pop(next(iter(self._victim_memo)))
        self._victim_memo[key] = (x, out)
        return out


# ------------------------------------------------------------------------------------------- registry
_VERIFIERS: Registry[type[Verifier]] = Registry("verifier")


def register_verifier(cls: type[Verifier]) -> type[Verifier]:
    """Class decorator: register a Verifier subclass under ``cls.name`` (names and metric names unique)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} has no verifier name")
    metrics = getattr(cls, "metrics", ())
    if not metrics:
        raise ValueError(f"verifier {name!r} declares no metrics")
    taken = {m.name: v for v, c in _VERIFIERS.items() if v != name for m in c.metrics}
    for m in metrics:
        if not isinstance(m, Metric) or m.direction not in ("distance", "similarity"):
            raise ValueError(f"verifier {name!r}: {m!r} is not a Metric with direction distance/similarity")
        if m.name in taken:
            raise ValueError(f"metric {m.name!r} of verifier {name!r} is already declared by {taken[m.name]!r}")
    return _VERIFIERS.add(name, cls)


def list_verifiers() -> list[str]:
    return _VERIFIERS.names()


def verifier_class(name: str) -> type[Verifier]:
    return _VERIFIERS.get(name)


def create_verifier(name: str, **params: Any) -> Verifier:
    return verifier_class(name)(**params)


def verifier_defaults(name: str) -> dict[str, Any]:
    """A registered verifier's parameters with their defaults."""
    return {k: p.default for k, p in verifier_class(name).param_spec().items()}


def all_metrics() -> dict[str, Metric]:
    """Every registered metric by name (verifiers in name order, metrics in declared order)."""
    return {m.name: m for _, v in _VERIFIERS.items() for m in v.metrics}


# -------------------------------------------------------------------------------------------- caching
class FingerprintCache:
    """Fingerprints on disk under ``directory`` (None: in memory, for one process), keyed by :attr:`Fingerprint.key`.

    ``get_or_extract`` loads the stored fingerprint when one with the same key exists, else extracts
    and stores it; scoring further suspects then never regenerates it. For a per-suspect verifier
    given a ``suspect``, it returns the fingerprint paired with that suspect (its key includes the
    suspect's weights hash), pairing and storing it once. A verifier with a shared ``generation``
    (DeepJudge's test generation) extracts from the stored generation of its family, generating and
    storing it (``<generation>-<key>``) only when no verifier of the family has yet.
    """

    def __init__(self, directory: str | Path | None):
        self.directory = None if directory is None else Path(directory)
        self._memory: dict[str, Fingerprint] = {}

    def path_for(self, verifier: Verifier, key: str) -> Path:
        return self._path(verifier.name, key)

    def _path(self, name: str, key: str) -> Path:
        if self.directory is None:
            raise RemovalNetError("this fingerprint cache is in memory: it has no files")
        return self.directory / f"{name}-{key[:24]}"

    def _stored(self, name: str, key: str) -> Fingerprint | None:
        if self.directory is None:
            return self._memory.get(key)
        path = self._path(name, key)
        if Fingerprint._paths(path)[1].is_file():
            fp = Fingerprint.load(path)
            if fp.key == key:
                return fp
        return None

    def _store(self, name: str, key: str, fp: Fingerprint) -> Fingerprint:
        if fp.key != key:
            raise AssertionError(f"{name}: fingerprint key changed during extraction")
        if self.directory is None:
            self._memory[key] = fp
        else:
            fp.save(self._path(name, key))
        return fp

    def generation(self, verifier: Verifier, victim: nn.Module, data: Dataset, *, seed: int = 0,
                   device: str | torch.device | None = None, train_data: Dataset | None = None) -> Fingerprint | None:
        """The stored shared generation of ``verifier``'s family (made and stored once); None without one."""
        gkey = verifier.generation_key(victim, data, seed=seed, train_data=train_data)
        if gkey is None:
            return None
        gen = self._stored(verifier.generation, gkey)
        if gen is None:
            gen = self._store(verifier.generation, gkey,
                              verifier.generate(victim, data, seed=seed, device=device, train_data=train_data))
        return gen

    def get_or_extract(self, verifier: Verifier, victim: nn.Module, data: Dataset, *, seed: int = 0,
                       device: str | torch.device | None = None, train_data: Dataset | None = None,
                       suspect: nn.Module | None = None) -> Fingerprint:
        """The fingerprint of (verifier, victim, data[, train_data], seed); paired with ``suspect`` when the
        verifier is per-suspect and a suspect is given (``suspect`` is ignored by the other verifiers)."""
        key = verifier.key(victim, data, seed=seed, train_data=train_data)
        fp = self._stored(verifier.name, key)
        if fp is None:
            gen = self.generation(verifier, victim, data, seed=seed, device=device, train_data=train_data)
            fp = self._store(verifier.name, key, verifier.extract(victim, data, seed=seed, device=device,
                                                                  train_data=train_data, generation=gen))
        if suspect is None or not verifier.per_suspect:
            return fp
        pkey = verifier.key(victim, data, seed=seed, train_data=train_data, suspect=suspect)
        paired = self._stored(verifier.name, pkey)
        if paired is None:
            paired = self._store(verifier.name, pkey, verifier.pair(fp, victim, suspect, device=device))
        return paired
