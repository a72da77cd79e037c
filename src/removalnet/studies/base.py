"""The paper's studies (section 4.4, 4.5, 5.1) as kinds of experiment spec.

A study is a small class that does up to three things, all on top of the ordinary experiment runner:

* :meth:`Study.attacks` adds the rows the study needs to the spec (e.g. RemovalNet at every substitute-set
  size); they run as ordinary attack jobs, one per seed, and are scored as in Table 1;
* :meth:`Study.analysis_jobs` adds ``study`` jobs that need the trained models (saliency maps, t-SNE,
  adversarial sets); their ids hash their configuration and dependencies like every other job, so a study
  resumes and runs on either executor; :meth:`Study.run_job` is what such a job does;
* :meth:`Study.report` turns the stored results into tables, matplotlib figures and findings, as data
  (:class:`StudyReport`, a :class:`removalnet.report.Section`); :mod:`removalnet.report` renders it as
  Markdown/CSV/LaTeX and PNG/PDF and embeds it in the HTML report.

Parameters are declared in ``PARAMS`` and validated at construction (:class:`removalnet.params.Param`), like
attacks. ``create_study(name, **params)``; ``list_studies()``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..attacks import create_attack
from ..experiment.artifacts import attack_job, study_job
from ..experiment.hooks import SpecSection, register_job_kind, register_spec_section
from ..experiment.smoke import SMOKE_ATTACK, SMOKE_DATA, smoke_attack_params, two_ends
from ..params import Param, validate_params
from ..registry import Registry
from ..report import Section
from ..utils import RemovalNetError, atomic_path
from ..verify import all_metrics

__all__ = ["Study", "SurrogateStudy", "StudyReport", "register_study", "create_study", "list_studies", "study_class",
           "ATTACK_PARAMS", "mean_std", "fmt_ms", "scores_by_label", "metric_split",
           "finished_job", "save_arrays"]

_STUDIES: Registry[type["Study"]] = Registry("study")

#: the substitute-set parameters shared by the studies that add a RemovalNet row
ATTACK_PARAMS = {
    "params": Param({}, dict, doc="RemovalNet parameters of the study's rows (paper defaults otherwise)"),
    "scenario": Param("ltd", str, choices=("ltd", "lsd"), doc="substitute scenario of the study's rows"),
    "fraction": Param(0.01, float, low=0.0, low_open=True, high=1.0, nullable=True,
                      doc="substitute set as a fraction of the training set (or give count)"),
    "count": Param(None, int, low=1, nullable=True, doc="substitute set size in samples (instead of fraction)"),
    "source": Param(None, str, nullable=True, doc="S_LSD source: a dataset name or 'partition'"),
}


#: what a study's ``report`` returns: tables, figures and findings as data, rendered by :mod:`removalnet.report`
StudyReport = Section


class Study:
    """Base class: see the module docstring. Subclasses set ``name``, ``title``, ``PARAMS``."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Param]] = {}

    def __init__(self, **params: Any):
        self.params = validate_params(self.PARAMS, params, f"study {self.name!r}")
        for k, p in self.PARAMS.items():  # a study's parameter mappings (e.g. lowered lr) merge under the user's
            if p.kind is dict and p.default and self.params[k] is not None:
                self.params[k] = {**p.default, **self.params[k]}
        self.validate()

    def validate(self) -> None:
        """Cross-parameter checks (raise RemovalNetError)."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}

    # -- what the study adds to the job graph -------------------------------------------------------
    def attacks(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        """Attack rows (spec ``attacks`` entries) the study adds; ``spec`` is the raw spec mapping."""
        return []

    def analysis_jobs(self, spec, jobs: dict[str, Any]) -> list[tuple[str, dict[str, Any], list[str]]]:
        """Extra jobs as ``(name, config, names of the jobs it depends on)``; ``jobs`` maps job names to jobs."""
        return []

    def run_job(self, job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        raise RemovalNetError(f"study {self.name!r} has no analysis jobs")

    def report(self, spec: dict[str, Any], rows: list[dict[str, Any]], td: Any, run_dir: Path) -> StudyReport:
        """Tables and figures from the run's job rows (``rows``) and its Table 1 data (``td``: taus, rows)."""
        raise NotImplementedError

    # -- helpers for the studies that add one RemovalNet row ----------------------------------------
    def removalnet_row(self, label: str, scenario: str | None = None, **extra: Any) -> dict[str, Any]:
        """A spec attack row of RemovalNet on the study's substitute set (``count`` wins over ``fraction``), in
        ``scenario`` (default: the study's ``scenario`` parameter)."""
        p = self.params
        row = {"name": "removalnet", "label": label, "params": dict(p["params"]),
               "scenario": scenario or p.get("scenario", "ltd")}
        if p["count"] is not None:
            row["count"] = p["count"]
        else:
            row["fraction"] = p["fraction"]
        if row["scenario"] == "lsd":
            row["source"] = p["source"]
        row.update(extra)
        return row

    def check_substitute(self) -> None:
        p = self.params
        if p.get("scenario") == "lsd" and not p["source"]:
            raise RemovalNetError("scenario lsd needs a source (a dataset name, or 'partition')")
        try:
            create_attack("removalnet", **p["params"])
        except RemovalNetError as e:
            raise RemovalNetError(f"params: {e}") from None


class SurrogateStudy(Study):
    """A study of one RemovalNet surrogate against its victim: it adds the row ``Ours(S_LTD)`` (or
    ``Ours(S_LSD)``) and looks at the surrogate of seed ``seed`` (default: the spec's first seed)."""

    PARAMS = {**ATTACK_PARAMS,
              "seed": Param(None, int, low=0, nullable=True, doc="which seed's surrogate (default: the first)")}

    def validate(self) -> None:
        self.check_substitute()

    @property
    def label(self) -> str:
        return "Ours(S_LSD)" if self.params["scenario"] == "lsd" else "Ours(S_LTD)"

    def attacks(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        return [self.removalnet_row(self.label)]

    def attack_job(self, spec, seed: int | None = None) -> str:
        """Name of the attack job of ``seed`` (default: the chosen seed) in ``spec`` (an ExperimentSpec)."""
        return attack_job(self.label, self.chosen_seed(spec) if seed is None else seed)

    def chosen_seed(self, spec) -> int:
        seeds = spec.seeds
        s = self.params["seed"]
        if s is None:
            return seeds[0]
        if s not in seeds:
            raise RemovalNetError(f"study seed {s} is not one of the spec's seeds {seeds}")
        return s


def register_study(cls: type[Study]) -> type[Study]:
    if not (isinstance(cls, type) and issubclass(cls, Study)) or not cls.name:
        raise TypeError("register_study needs a Study subclass with a non-empty `name`")
    return _STUDIES.add(cls.name, cls)


def list_studies() -> list[str]:
    return _STUDIES.names()


def study_class(name: str) -> type[Study]:
    return _STUDIES.get(name)


def create_study(name: str, **params: Any) -> Study:
    """Build a registered study with validated parameters."""
    return study_class(name)(**params)


# ------------------------------------------------------------------------ hooks into the experiment runner
def _expand_section(section: Any, raw_spec: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A spec's ``study`` section validated, and the attack rows the study adds."""
    if not isinstance(section, dict) or "name" not in section:
        raise RemovalNetError("study: must be a mapping with a name")
    if section["name"] not in _STUDIES:
        raise RemovalNetError(f"study.name: unknown study {section['name']!r} (known: {', '.join(list_studies())})")
    try:
        st = create_study(**section)
        added = st.attacks(raw_spec)
    except RemovalNetError as e:
        raise RemovalNetError(f"study: {e}") from None
    return st.to_dict(), added


def _plan_section(spec, jobs: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], list[str]]]:
    """The study's analysis jobs as ``(kind, name, config, dependency names)``."""
    study = create_study(**spec.study)
    return [("study", study_job(study.name, name), {"study": study.to_dict(), **cfg}, deps)
            for name, cfg, deps in study.analysis_jobs(spec, jobs)]


def _run_study_job(job: dict[str, Any], run_dir: Path, **_: Any) -> dict[str, Any]:
    return create_study(**job["config"]["study"]).run_job(job, run_dir)


def _smoke_section(study: dict[str, Any]) -> dict[str, Any]:
    """The study section at the smoke scale (experiment/smoke.py): every sweep at its ends, every size small."""
    s = dict(study)
    try:
        full = create_study(**s).params  # with the defaults, to shrink what the user left out too
    except (RemovalNetError, TypeError):
        return study  # left for the spec's validation to name
    if "params" in full:
        s["params"] = smoke_attack_params("removalnet", full["params"] or {})
    name = s["name"]
    if name == "ablation":
        s["alphas"], s["betas"] = two_ends(full["alphas"]), two_ends(full["betas"])
    elif name == "boundary":
        s["iterations_shown"] = list(range(0, SMOKE_ATTACK["iterations"] + 1, SMOKE_ATTACK["checkpoint_every"]))
        s["per_class"] = min(full["per_class"], SMOKE_DATA["test"][0])
    elif name == "efficiency":
        s["knockoff"] = smoke_attack_params("knockoff", full["knockoff"])
        s["eval_count"] = 8
        if full["fractions"]:
            s["fractions"] = two_ends(full["fractions"])
    elif name == "robustness":
        s.update(count=8, pgd_steps=2, deepfool_steps=2, batch_size=8)
    elif name == "saliency":
        s["num_images"] = 2
    elif name == "substitute_size":
        s["ratios"], s["counts"] = two_ends(full["ratios"]), [8] if full["counts"] else full["counts"]
    return s


register_spec_section(SpecSection("study", _expand_section, _plan_section, _smoke_section))
register_job_kind("study", _run_study_job)


# ---------------------------------------------------------------------------------------------- helpers
def mean_std(values) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def fmt_ms(values, scale: float = 1.0, digits: int = 3) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "-"
    return f"{m * scale:.{digits}f}±{s * scale:.{digits}f}"


def scores_by_label(rows: list[dict[str, Any]], role: str = "attack") -> dict[str, list[dict[str, Any]]]:
    """Finished score rows of ``role`` grouped by label, each list sorted by seed."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] == "score" and r["status"] == "done" and r["config"]["role"] == role:
            out.setdefault(r["config"]["label"], []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r["seed"] or 0)
    return out


def finished_job(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The finished job row called ``name`` (e.g. ``study/boundary/tsne``), or None."""
    return next((r for r in rows if r["name"] == name and r["status"] == "done"), None)


def save_arrays(run_dir: Path, job_name: str, filename: str, arrays: dict[str, Any]) -> Path:
    """Write a study job's arrays (numpy) as safetensors under the job's folder, atomically."""
    from safetensors.numpy import save_file
    path = Path(run_dir) / job_name / filename
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    return path


def metric_split(metrics: list[str]) -> tuple[list[str], list[str]]:
    """(distance metrics, similarity metrics) among ``metrics``, in the given order."""
    known = all_metrics()
    dist = [m for m in metrics if m in known and known[m].direction == "distance"]
    sim = [m for m in metrics if m in known and known[m].direction == "similarity"]
    return dist, sim
