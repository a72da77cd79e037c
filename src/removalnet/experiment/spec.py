"""Experiment specs: one YAML file describes a whole grid (paper section 4.1 protocol).

A spec names the victim (dataset, architecture, training recipe), the independently trained reference models
(thresholds) and negative models (the table's "Negative" row), the attacks with their parameters and
scenarios, the seeds, the verifiers with their parameters and the threshold rule. :func:`load_spec` validates
it and names the offending key on any error (``attacks[2].scenario: must be one of ltd, lsd``).
"""
from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..attacks import attack_class, create_attack, list_attacks
from ..data import get_dataset_info, list_datasets
from ..data.refs import canonical_data_ref, is_data_ref
from ..models import check_model_kwargs, is_model_ref, list_models
from ..models.refs import PRETRAINED, canonical_ref, load_factory
from ..train import TrainConfig
from ..utils import RemovalNetError
from ..verify import ThresholdRule, create_verifier, list_verifiers
from .runtime import check_runtime
from .smoke import smoke_dict
from .hooks import spec_section

__all__ = ["ExperimentSpec", "AttackSpec", "ModelSpec", "GroupSpec", "load_spec", "spec_from_dict"]


@dataclass
class ModelSpec:
    """The victim: architecture, its keyword arguments, training recipe (``TrainConfig`` keys) and seed.

    ``model`` names the architecture by any model reference (a registered name, ``file.py:Factory``,
    ``package.module:factory``, ``torchvision:NAME``, ``timm:NAME``; it replaces ``arch``), ``split_after``
    its split points. ``weights`` (a state dict ``.pt``/``.pth``, ``.safetensors``, a removalnet checkpoint, or
    ``pretrained`` for ``timm:``) is a trained victim used as it is: its train job only imports the weights into
    the run folder. ``normalize``: ``data`` (the dataset's mean/std; default when the toolkit trains the
    model), ``none`` (default with ``weights``: the model sees images in [0, 1]) or ``{mean: [..], std: [..]}``.
    """
    arch: str = "vgg_small"
    kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    model: str | None = None
    split_after: list[str] | None = None
    weights: str | None = None
    normalize: Any = None


@dataclass
class GroupSpec:
    """Independently trained models: ``count`` seeds from ``seed_offset`` on, with the paper's jitter of
    iterations and learning rate (``jitter`` = relative half-width).

    ``checkpoints``: the models are given as files instead (weights of the victim's model, or removalnet
    checkpoints); ``count`` is then their number. ``model``/``train``: the architecture (any model reference)
    and recipe of the trained ones (default: the victim's). ``init``: fine-tune from a pretrained start instead
    of a fresh initialisation: ``timm:NAME`` (timm's pretrained weights of that model) or a weights file of
    the model. ``train_fn``: your own training function (``file.py:train`` or ``package.module:train``) instead
    of the built-in trainer: called as ``fn(model, train_set, test_set, seed=SEED)``, it trains the fresh
    (or ``init``) model in place."""
    count: int = 5
    seed_offset: int = 1000
    jitter: float = 0.1
    checkpoints: list[str] | None = None
    init: str | None = None
    model: str | None = None
    train: dict[str, Any] | None = None
    train_fn: str | None = None


@dataclass
class AttackSpec:
    """One row of the table: an attack, its parameters and its substitute set.

    ``scenario`` ltd (a class-balanced ``fraction``/``count`` of the training set) or lsd (``source``: another
    dataset of the same task, or ``partition``: the spec's ``lsd_holdout`` part of the training set, which the
    victim, reference and negative models never see, as the paper's disjoint GTSRB partition). ``fraction`` is
    always relative to the whole training set (also with a named ``source``: 0.1 = 10% of the victim's
    training set, drawn from the source).
    ``score_checkpoints``: also score the checkpoints saved every ``checkpoint_every`` iterations (trade-off plot);
    ``keep_checkpoints``: save them without scoring (for a study that reads them). ``eval_count``: evaluate the
    model during the attack on this many class-balanced test samples (learning curves, e.g. KnockoffNets').
    ``baseline``: the row is one of the parameter-reusing baselines whose detection the threshold rules are
    checked against (default: the attack's class says so; FT, WP and Distill are).
    """
    name: str
    label: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    scenario: str = "ltd"
    fraction: float | None = None
    count: int | None = None
    source: str | None = None
    labels: str = "victim"
    score_checkpoints: bool = False
    keep_checkpoints: bool = False
    eval_count: int | None = None
    baseline: bool | None = None


@dataclass
class ExperimentSpec:
    name: str
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    victim: ModelSpec = field(default_factory=ModelSpec)
    references: GroupSpec = field(default_factory=lambda: GroupSpec(5, 1000))
    negatives: GroupSpec = field(default_factory=lambda: GroupSpec(10, 2000))
    attacks: list[AttackSpec] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: list(range(10)))
    verifiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    verifier_count: int | None = None
    lsd_holdout: float = 0.0
    threshold_rule: ThresholdRule = field(default_factory=ThresholdRule)
    device: str = "cpu"
    study: dict[str, Any] = field(default_factory=dict)
    smoke: bool = False
    runtime: dict[str, Any] = field(default_factory=dict)
    #: sentences the report shows with the table (e.g. why a setting departs from a verifier's defaults)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["threshold_rule"] = self.threshold_rule.spec_value()   # "minmax", or {name: normal, k: 3}
        return d


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _fail(key: str, msg: str) -> None:
    raise RemovalNetError(f"spec: {key}: {msg}")


def _take(d: dict, cls, key: str):
    if not isinstance(d, dict):
        _fail(key, f"must be a mapping, got {type(d).__name__}")
    known = set(cls.__dataclass_fields__)
    for k in d:
        if k not in known:
            _fail(f"{key}.{k}" if key else str(k), f"unknown key (known: {', '.join(sorted(known))})")
    return d


def _int(v, key, low=None):
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(key, f"must be an integer, got {v!r}")
    if low is not None and v < low:
        _fail(key, f"must be >= {low}, got {v}")
    return v


def _check_ref(ref: Any, key: str) -> str:
    """A model reference: a registered name, or a reference whose module file/package can be imported."""
    if not isinstance(ref, str) or not ref:
        _fail(key, f"must be a model name or reference, got {ref!r}")
    if not is_model_ref(ref):
        if ref not in list_models():
            _fail(key, f"unknown architecture {ref!r} (a registered name, file.py:Factory, package.module:factory, "
                       "torchvision:NAME or timm:NAME)")
        return ref
    ref = canonical_ref(ref)
    if not ref.startswith(("timm:", "torchvision:")):
        try:
            load_factory(ref)
        except RemovalNetError as e:
            _fail(key, str(e))
    return ref


def _check_file(path: Any, key: str) -> str:
    if not isinstance(path, str) or not path:
        _fail(key, f"must be a file path, got {path!r}")
    p = Path(path).expanduser()
    if not p.is_file():
        _fail(key, f"file {path!r} does not exist")
    return str(p.resolve())


def _check_victim(victim: ModelSpec) -> None:
    if victim.model is not None:
        victim.model = _check_ref(victim.model, "victim.model")
        victim.arch = victim.model
    elif victim.arch not in list_models():
        _fail("victim.arch", f"unknown architecture {victim.arch!r}")
    if victim.split_after is not None:
        if not is_model_ref(victim.arch):
            _fail("victim.split_after", f"{victim.arch} is a registered model with fixed blocks")
        if not isinstance(victim.split_after, list) or not all(isinstance(n, str) and n for n in victim.split_after):
            _fail("victim.split_after", "must be a list of submodule or fx node names")
    try:
        check_model_kwargs(victim.arch, victim.kwargs)
    except RemovalNetError as e:
        _fail("victim.kwargs", str(e))
    if victim.weights is not None:
        if victim.weights == PRETRAINED:
            if not victim.arch.startswith("timm:"):
                _fail("victim.weights", f"{PRETRAINED} is only available for timm:NAME models")
        else:
            victim.weights = _check_file(victim.weights, "victim.weights")
    n = victim.normalize
    if n is not None and n not in ("data", "none"):
        if not (isinstance(n, dict) and set(n) == {"mean", "std"}
                and all(isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v) for v in n.values())):
            _fail("victim.normalize", "must be data, none or {mean: [..], std: [..]}")


def _check_group(g: GroupSpec, gname: str, victim: ModelSpec) -> None:
    if g.checkpoints is not None:
        if not isinstance(g.checkpoints, list) or not g.checkpoints:
            _fail(f"{gname}.checkpoints", "must be a non-empty list of weight files")
        if g.init is not None or g.train is not None or g.model is not None or g.train_fn is not None:
            _fail(f"{gname}.checkpoints", "given models are used as they are: no init, model or train")
        g.checkpoints = [_check_file(c, f"{gname}.checkpoints[{i}]") for i, c in enumerate(g.checkpoints)]
        g.count = len(g.checkpoints)
        return
    if g.model is not None:
        g.model = _check_ref(g.model, f"{gname}.model")
    if g.train is not None:
        try:
            TrainConfig.from_dict(g.train)
        except RemovalNetError as e:
            _fail(f"{gname}.train", str(e))
    if g.train_fn is not None:
        if not isinstance(g.train_fn, str) or ":" not in g.train_fn or g.train_fn.startswith(("timm:", "torchvision:")):
            _fail(f"{gname}.train_fn", "must be file.py:function or package.module:function")
        g.train_fn = canonical_ref(g.train_fn)
        try:
            load_factory(g.train_fn)
        except RemovalNetError as e:
            _fail(f"{gname}.train_fn", str(e))
    if g.init is not None:
        if isinstance(g.init, str) and g.init.startswith("timm:"):
            if g.model is not None and g.model != g.init:
                _fail(f"{gname}.init", "a timm:NAME start is the model itself: leave out model")
        else:
            g.init = _check_file(g.init, f"{gname}.init")


def spec_from_dict(raw: dict[str, Any]) -> ExperimentSpec:
    """Validate a parsed spec; every error names its key."""
    raw = copy.deepcopy(raw)
    _take(raw, ExperimentSpec, "")
    if not isinstance(raw.get("smoke", False), bool):
        _fail("smoke", "must be true or false")
    if raw.get("smoke"):  # the smoke scale: same code path, every size shrunk (see smoke.py)
        raw = smoke_dict(raw)
    if "name" not in raw:
        _fail("name", "is required")
    if not isinstance(raw["name"], str) or not _NAME_RE.match(raw["name"]):
        _fail("name", "must be letters, digits, '_', '-' or '.'")
    if is_data_ref(raw.get("dataset")):
        raw["dataset"] = canonical_data_ref(raw["dataset"])
        try:
            get_dataset_info(raw["dataset"])
        except RemovalNetError as e:
            _fail("dataset", str(e))
    elif str(raw.get("dataset", "fashion-mnist")).partition("?")[0] not in list_datasets():
        _fail("dataset", f"unknown dataset {raw.get('dataset')!r} (known: {', '.join(list_datasets())}; "
                         "or folder:PATH, npz:PATH)")
    elif "?" in str(raw.get("dataset", "")):   # a registered dataset with options (fashion-mnist?size=32&channels=3)
        try:
            get_dataset_info(raw["dataset"])
        except RemovalNetError as e:
            _fail("dataset", str(e))
    victim = ModelSpec(**_take(raw.pop("victim", {}), ModelSpec, "victim"))
    _check_victim(victim)
    _int(victim.seed, "victim.seed", 0)
    try:
        TrainConfig.from_dict(victim.train)
    except RemovalNetError as e:
        _fail("victim.train", str(e))
    groups = {}
    for gname, default_offset in (("references", 1000), ("negatives", 2000)):
        g = GroupSpec(**{"seed_offset": default_offset, **_take(raw.pop(gname, {}), GroupSpec, gname)})
        _int(g.count, f"{gname}.count", 0)
        _int(g.seed_offset, f"{gname}.seed_offset", 0)
        if not isinstance(g.jitter, (int, float)) or not 0 <= g.jitter < 1:
            _fail(f"{gname}.jitter", "must be a number in [0, 1)")
        _check_group(g, gname, victim)
        groups[gname] = g
    r, n = groups["references"], groups["negatives"]
    if set(range(r.seed_offset, r.seed_offset + r.count)) & set(range(n.seed_offset, n.seed_offset + n.count)):
        _fail("negatives.seed_offset", "reference and negative seeds overlap: they must be independent models")
    study = raw.pop("study", None) or {}
    raw_attacks = list(raw.pop("attacks", []) or [])
    if study:  # a kind of spec provided by a higher layer (the studies): it adds attack rows
        try:
            study, added = spec_section("study").expand(study, raw)
        except RemovalNetError as e:
            raise RemovalNetError(f"spec: {e}") from None
        given = {a.get("label") for a in raw_attacks if isinstance(a, dict)}
        raw_attacks += [a for a in added if a["label"] not in given]
    attacks = []
    labels = set()
    for i, a in enumerate(raw_attacks):
        key = f"attacks[{i}]"
        a = AttackSpec(**_take(a, AttackSpec, key)) if isinstance(a, dict) and "name" in a else _fail(key, "needs a name")
        if a.name not in list_attacks():
            _fail(f"{key}.name", f"unknown attack {a.name!r} (known: {', '.join(list_attacks())})")
        if a.scenario not in ("ltd", "lsd"):
            _fail(f"{key}.scenario", "must be one of ltd, lsd")
        if (a.fraction is None) == (a.count is None):
            _fail(key, "give exactly one of fraction or count")
        if a.fraction is not None and not (isinstance(a.fraction, (int, float)) and 0 < a.fraction <= 1):
            _fail(f"{key}.fraction", "must be in (0, 1]")
        if a.count is not None:
            _int(a.count, f"{key}.count", 1)
        if a.scenario == "lsd" and not a.source:
            _fail(f"{key}.source", "scenario lsd needs a source (a dataset name, or 'partition')")
        if a.eval_count is not None:
            _int(a.eval_count, f"{key}.eval_count", 1)
        if a.labels not in ("victim", "true"):
            _fail(f"{key}.labels", "must be victim or true")
        a.label = a.label or a.name
        if a.label in labels:
            _fail(f"{key}.label", f"duplicate label {a.label!r}")
        labels.add(a.label)
        if a.baseline is None:
            a.baseline = attack_class(a.name).baseline
        elif not isinstance(a.baseline, bool):
            _fail(f"{key}.baseline", "must be true or false")
        try:
            create_attack(a.name, **a.params)
        except RemovalNetError as e:
            _fail(f"{key}.params", str(e))
        attacks.append(a)
    seeds = raw.pop("seeds", list(range(10)))
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(_int(seeds, "seeds", 1)))
    if not isinstance(seeds, list) or not seeds:
        _fail("seeds", "must be a count or a non-empty list of integers")
    for j, s in enumerate(seeds):
        _int(s, f"seeds[{j}]", 0)
    if len(set(seeds)) != len(seeds):
        _fail("seeds", "has duplicates")
    verifiers = raw.pop("verifiers", None)
    if verifiers is None:
        verifiers = {v: {} for v in list_verifiers()}
    if isinstance(verifiers, list):
        verifiers = {v: {} for v in verifiers}
    if not isinstance(verifiers, dict):
        _fail("verifiers", "must be a mapping of verifier name to parameters, or a list of names")
    for vname, vparams in verifiers.items():
        if vname not in list_verifiers():
            _fail(f"verifiers.{vname}", f"unknown verifier (known: {', '.join(list_verifiers())})")
        try:
            create_verifier(vname, **(vparams or {}))
        except RemovalNetError as e:
            _fail(f"verifiers.{vname}", str(e))
        verifiers[vname] = dict(vparams or {})
    holdout = raw.get("lsd_holdout", 0.0)
    if not isinstance(holdout, (int, float)) or isinstance(holdout, bool) or not 0 <= holdout < 1:
        _fail("lsd_holdout", "must be a number in [0, 1)")
    for i, a in enumerate(attacks):
        if a.scenario == "lsd" and a.source == "partition" and not holdout:
            _fail(f"attacks[{i}].source", "'partition' needs lsd_holdout > 0 (the part of the training set "
                                          "that only the attacker holds)")
        if a.scenario == "lsd" and a.source == "partition" and a.fraction is not None and a.fraction > holdout:
            _fail(f"attacks[{i}].fraction", f"exceeds lsd_holdout ({holdout}): the partition is all there is")
    try:
        rule = ThresholdRule.parse(raw.pop("threshold_rule", None))
    except RemovalNetError as e:
        _fail("threshold_rule", str(e))
    spec = ExperimentSpec(victim=victim, attacks=attacks, seeds=seeds, verifiers=verifiers, study=study, **groups,
                          threshold_rule=rule, **raw)
    if spec.verifier_count is not None:
        _int(spec.verifier_count, "verifier_count", 1)
    if isinstance(spec.notes, str):
        spec.notes = [spec.notes]
    if not isinstance(spec.notes, list) or not all(isinstance(n, str) for n in spec.notes):
        _fail("notes", "must be a sentence or a list of sentences")
    try:  # GPU options (bf16, channels_last, workers, cudnn): see runtime.py
        spec.runtime = check_runtime(spec.runtime)
    except RemovalNetError as e:
        raise RemovalNetError(f"spec: {e}") from None
    return spec


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentSpec:
    """Read and validate a YAML spec; ``overrides`` replace top-level keys (e.g. seeds, device)."""
    path = Path(path)
    if not path.exists():
        raise RemovalNetError(f"spec file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RemovalNetError(f"spec file {str(path)!r} is not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(raw, dict):
        raise RemovalNetError(f"spec file {str(path)!r} must hold a mapping")
    raw.update(overrides or {})
    return spec_from_dict(raw)
