"""The paper's Table 1 from a run's results database.

Rows: every attack of the spec (FT(0.5), ..., Ours(S_LTD), Ours(S_LSD)), then ``Negative`` and ``tau``. Columns:
fidelity mean +- std and its drop from the victim's accuracy, every metric mean +- std over seeds, and
"Ownership? Yes (k/n)": for each seed a verifier pool claims ownership when the majority of the pool's metrics
say "copy"; k counts those seeds. Thresholds tau come from the reference models (never from the negative
models shown in the table) with the spec's rule (a :class:`ThresholdRule`, or one given to :func:`build_table`).
The threshold-rule comparison measures each rule's detection rate on the rows the spec marks ``baseline``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..attacks import RETURNED_START, attack_class, list_attacks
from ..experiment.store import ResultStore
from ..utils import RemovalNetError
from ..verify import RULES, ThresholdRule, all_metrics, calibrate, false_positive_rate, verdict

__all__ = ["TableData", "load_results", "build_table", "is_baseline", "degenerate_metrics", "POOL_METRICS",
           "COLLAPSE_MARGIN"]

#: the metrics of the paper's Table 1 (plus SAC) that vote on ownership; others are reported beside them
POOL_METRICS = ("DJ-LOD", "DJ-LAD", "ZEST-L2", "ZEST-Cos", "MD-DDV", "IPG-MR", "SAC")


@dataclass
class TableData:
    name: str
    victim_accuracy: float | None
    metrics: list[str]                   # every metric measured, pool first
    pool: list[str]
    rule: ThresholdRule
    taus: dict[str, float]
    rows: list[dict[str, Any]]           # one per attack label + Negative: label, values {metric: [..]}, accuracy [..]
    references: dict[str, list[float]]
    checkpoints: dict[str, dict[int, dict[str, list[float]]]] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    degenerate: list[str] = field(default_factory=list)
    degenerate_why: dict[str, str] = field(default_factory=dict)
    margin: float = 10.0
    references_accuracy: list[float] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)


def load_results(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    db = Path(run_dir) / "results.db"
    if not db.exists():
        raise RemovalNetError(f"no results database at {str(db)!r}: run `removalnet run SPEC.yaml` first")
    with ResultStore(db, readonly=True) as store:
        spec = store.get_meta("spec")
        plan = store.get_meta("plan")
        rows = store.rows(ids=plan)
    if spec is None:
        raise RemovalNetError(f"{str(db)!r} holds no experiment spec")
    return spec, rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def is_baseline(attack_row: dict[str, Any]) -> bool:
    """Whether a stored spec's attack row is marked as a baseline (runs stored before the mark: the attack's
    class says so)."""
    if attack_row.get("baseline") is not None:
        return bool(attack_row["baseline"])
    name = attack_row.get("name")
    return name in list_attacks() and attack_class(name).baseline


#: accuracy points a surrogate may lose against the victim before its row counts as collapsed
COLLAPSE_MARGIN = 10.0


def degenerate_metrics(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Metrics that carry no evidence in a run, with why: NaN values, declared degenerate by their fingerprint
    (no test case reached, no adversarial example kept), or every value 0 (then tau is 0 too)."""
    known = all_metrics()
    scores = [r for r in rows if r["kind"] == "score" and r["status"] == "done"]
    why = {m: "no value (NaN)" for r in scores for m, v in r["metrics"].items()
           if m in known and isinstance(v, float) and math.isnan(v)}
    for r in rows:
        if r["kind"] == "fingerprint" and r["status"] == "done":
            for m in (r["metrics"] or {}).get("degenerate", []):
                why.setdefault(m, f"degenerate fingerprint of {r['config']['verifier']} (no test case or "
                                  "adversarial example)")
    values: dict[str, list[float]] = {}
    for r in scores:
        if r["config"]["role"] != "checkpoint":
            for m, v in r["metrics"].items():
                if m in known:
                    values.setdefault(m, []).append(v)
    for m, vals in values.items():
        if vals and all(v == 0 for v in vals):
            why.setdefault(m, "every value is 0")
    return dict(sorted(why.items()))


def _start_status(rows: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """``status`` (None, or "returned the start in k/n seeds") and ``reduced_to`` of an attack row, from its
    attack jobs: a seed whose surrogate is its starting point is no attack of the row's name."""
    jobs = [r for r in rows if r["kind"] == "attack" and r["status"] == "done"
            and r["config"].get("label") == label]
    back = [r for r in jobs if (r["metrics"] or {}).get("status") == RETURNED_START]
    if not back:
        return {"status": None, "reduced_to": None}
    return {"status": f"{RETURNED_START} in {len(back)}/{len(jobs)} seeds",
            "reduced_to": back[0]["metrics"].get("reduced_to")}


def build_table(run_dir: str | Path, rule: ThresholdRule | str | dict | None = None,
                margin: float = COLLAPSE_MARGIN) -> TableData:
    """Table 1 of a run; ``rule`` (a rule, its name or mapping) replaces the spec's threshold rule. A row whose
    mean accuracy lost more than ``margin`` points against the victim is marked ``collapsed``: its seeds never
    count as an evasion (``owned`` says nothing about a useless model). A row whose attack returned its starting
    point in some seed carries ``status`` and ``reduced_to`` (what it amounts to). Degenerate metrics
    (:func:`degenerate_metrics`) are flagged and left out of the votes."""
    spec, rows = load_results(run_dir)
    rule = ThresholdRule.parse(rule if rule is not None else spec.get("threshold_rule"))
    known = all_metrics()
    scores = [r for r in rows if r["kind"] == "score" and r["status"] == "done"]
    victim = next((r for r in rows if r["kind"] == "train" and r["config"]["role"] == "victim"
                   and r["status"] == "done"), None)
    # a metric without evidence (NaN, declared degenerate by its fingerprint, all zeros) is left out
    degenerate_why = degenerate_metrics(rows)
    degenerate = sorted(degenerate_why)
    measured = sorted({m for r in scores for m in r["metrics"] if m in known} - set(degenerate))
    pool = [m for m in POOL_METRICS if m in measured]
    metrics = pool + [m for m in measured if m not in pool]
    refs = {m: [r["metrics"][m] for r in scores if r["config"]["role"] == "reference" and m in r["metrics"]]
            for m in metrics}
    have_refs = all(refs[m] for m in metrics) and metrics
    taus = rule.calibrate(refs, [known[m] for m in metrics]) if have_refs else {}
    # a distance threshold at or below 0 calls nothing a copy (a reference reached 0): no evidence either
    for m in [m for m in metrics if known[m].direction == "distance" and m in taus and taus[m] <= 0]:
        degenerate_why[m] = f"threshold {taus.pop(m):.3g}: no distance is below it (a reference model reached 0)"
    degenerate = sorted(degenerate_why)
    pool = [m for m in pool if m not in degenerate_why]
    metrics = [m for m in metrics if m not in degenerate_why]
    labels = [a["label"] for a in spec.get("attacks", [])] + ["Negative"]
    table_rows = []
    for label in labels:
        if label == "Negative":
            sel = [r for r in scores if r["config"]["role"] == "negative"]
        else:
            sel = [r for r in scores if r["config"]["role"] == "attack" and r["config"]["label"] == label]
        sel.sort(key=lambda r: r["seed"] or 0)
        values = {m: [r["metrics"][m] for r in sel if m in r["metrics"]] for m in metrics}
        acc = [r["metrics"]["accuracy"] for r in sel]
        copies = {m: [verdict(known[m], r["metrics"][m], taus[m]) for r in sel if m in r["metrics"]]
                  for m in metrics if m in taus}
        owned = []
        for r in sel:
            votes = [verdict(known[m], r["metrics"][m], taus[m]) for m in pool if m in taus and m in r["metrics"]]
            owned.append(bool(votes) and sum(votes) > len(votes) / 2)
        collapsed = bool(label != "Negative" and acc and victim is not None
                         and 100 * (victim["metrics"]["accuracy"] - float(np.mean(acc))) > margin)
        table_rows.append({"label": label, "n": len(sel), "accuracy": acc, "values": values, "copies": copies,
                           "owned": owned, "collapsed": collapsed, **_start_status(rows, label)})
    checkpoints: dict[str, dict[int, dict[str, list[float]]]] = {}
    for r in scores:
        if r["config"]["role"] == "checkpoint":
            d = checkpoints.setdefault(r["config"]["label"], {}).setdefault(int(r["config"]["t"]), {})
            for m, v in r["metrics"].items():
                if m in known or m == "accuracy":
                    d.setdefault(m, []).append(v)
    rules = {}
    if have_refs:
        negatives = {m: next(row for row in table_rows if row["label"] == "Negative")["values"][m] for m in metrics}
        marked = {a["label"] for a in spec.get("attacks", []) if is_baseline(a)}
        baselines = [row for row in table_rows if row["label"] in marked]
        for rl in RULES:   # every rule (the chosen one with its parameters) on the same reference values
            try:
                t = calibrate(refs, [known[m] for m in metrics], rule if rl == rule.name else ThresholdRule(rl))
            except RemovalNetError:
                continue
            fpr = {m: false_positive_rate(known[m], negatives[m], t[m]) if negatives[m] else None for m in metrics}
            det = {}
            for m in metrics:
                vals = [v for row in baselines for v in row["values"][m]]
                det[m] = float(np.mean([verdict(known[m], v, t[m]) for v in vals])) if vals else None
            rules[rl] = {"taus": t, "false_positive_rate": fpr, "baseline_detection_rate": det}
    failed = [{"name": r["name"], "status": r["status"], "error": r["error"]} for r in rows if r["status"] != "done"]
    return TableData(name=spec["name"], victim_accuracy=victim["metrics"]["accuracy"] if victim else None,
                     metrics=metrics, pool=pool, rule=rule, taus=taus, rows=table_rows, references=refs,
                     checkpoints=checkpoints, rules=rules, failed=failed, degenerate=degenerate,
                     degenerate_why=degenerate_why, margin=float(margin), spec=spec,
                     references_accuracy=[r["metrics"]["accuracy"] for r in scores
                                          if r["config"]["role"] == "reference"])
