"""The owner's report card of an audit run (``removalnet audit``): for each verifier metric, its false-positive
rate on independent models, its detection rate per attack, the accuracy an attacker pays to evade it, and a
plain verdict.

* False positives and their bound: the independent models (references, and negatives when the run has them)
  that tau calls copies, k of n, and the one-sided 95% Clopper-Pearson upper bound on the false-positive rate
  (``1 - 0.05^(1/n)`` when k = 0: exact for the minmax tau, the most extreme of n values). A metric is
  recommended only when that bound is below ``max_fpr`` (default 5%: at least 59 independent models) and it
  detects every attack; otherwise the card says how many independent models are needed and how to add them
  (docs/confidence.md). The leave-one-out rate over the references is kept in ``fpr``.
* Detection rate: the fraction of an attack's seeds the metric calls a copy (tau from all references), with
  the largest empirical p-value of its seeds against the references.
* An attack that returned its starting point (``status``) is no attack of its name: shown with what it
  reduces to, never counted as an evasion. References whose mean accuracy is more than 3 points from the
  victim's are flagged.
* An attack whose surrogate lost more than ``margin`` accuracy points against the victim is *collapsed*: it is
  shown, never counted as a successful evasion (a useless model evades nothing worth protecting).
* A metric is *degenerate* when its fingerprint says so (no test case reached, no adversarial example kept),
  when its values are NaN, or when every value it gave (references, attacks) is exactly 0 with tau 0: it is
  flagged in every table and excluded from verdicts and votes.
"""
from __future__ import annotations

import html
import itertools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import RemovalNetError
from ..verify import ThresholdRule, all_metrics, verdict
from ..verify.confidence import fpr_upper_bound, models_for_bound, rate_text
from .confidence import independent_values, reference_mismatch, seed_pvalues
from .render import METRIC_NOTES, md_table, provenance
from .table import COLLAPSE_MARGIN, TableData, build_table, load_results

__all__ = ["ReportCard", "build_card", "card_markdown", "card_html", "DEFAULT_MARGIN", "DEFAULT_MAX_FPR"]

DEFAULT_MARGIN = COLLAPSE_MARGIN
#: the false-positive rate a recommended metric must be bounded below, at 95% confidence
DEFAULT_MAX_FPR = 0.05

@dataclass
class ReportCard:
    name: str
    victim_accuracy: float | None
    margin: float
    rule: ThresholdRule
    metrics: list[str]                                   # judged metrics
    degenerate: dict[str, str]                           # flagged metric -> why
    taus: dict[str, float]
    fpr: dict[str, float | None]
    fpr_source: str                                      # "negatives" or "leave-one-out"
    attacks: list[dict[str, Any]]                        # label, n, accuracy, cost, collapsed, detection {m: rate}
    references: list[float]                              # reference models' accuracies
    verdicts: list[str]
    recommendation: str
    settings: dict[str, Any] = field(default_factory=dict)
    max_fpr: float = DEFAULT_MAX_FPR
    false_positives: dict[str, tuple[int, int]] = field(default_factory=dict)   # metric -> (k, n) independent
    fpr_bound: dict[str, float] = field(default_factory=dict)                  # one-sided 95% upper bound
    needed: int = 0                                # independent models for a bound below max_fpr (none called)
    mismatch: str | None = None                    # the references' accuracy far from the victim's


def _mean(v: list[float]) -> float:
    return float(np.mean(v)) if v else math.nan


def _loo_fpr(td: TableData, metric: str, rule: ThresholdRule) -> float | None:
    vals = td.references[metric]
    if len(vals) < 2:
        return None
    m = all_metrics()[metric]
    hits = []
    for i, v in enumerate(vals):
        rest = vals[:i] + vals[i + 1:]
        tau = rule.calibrate({metric: rest}, [m], min_references=1)[metric]
        hits.append(verdict(m, v, tau))
    return float(np.mean(hits))


def build_card(run_dir: str | Path, margin: float = COLLAPSE_MARGIN, settings: dict[str, Any] | None = None,
               max_fpr: float = DEFAULT_MAX_FPR, command: str | None = None) -> ReportCard:
    """The report card of an audit (or any) run folder from its results database (module doc). ``command``:
    how to rerun with more reference models (``{n}`` replaced by the number needed), named when advice is
    withheld."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 100:
        raise RemovalNetError(f"margin must be a number of accuracy points in [0, 100], got {margin!r}")
    if isinstance(max_fpr, bool) or not isinstance(max_fpr, (int, float)) or not 0 < max_fpr < 1:
        raise RemovalNetError(f"max_fpr must be a rate in (0, 1), got {max_fpr!r}")
    spec, rows = load_results(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # few references: said in the card, not once per metric
        td = build_table(run_dir, margin=margin)
    known = all_metrics()
    degenerate = dict(td.degenerate_why)
    metrics = [m for m in td.metrics if m not in degenerate and m in td.taus]
    negatives = next((row for row in td.rows if row["label"] == "Negative"), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if negatives and negatives["n"]:
            fpr_source = "negatives"
            fpr = {m: float(np.mean([verdict(known[m], v, td.taus[m]) for v in negatives["values"][m]]))
                   if negatives["values"][m] else None for m in metrics}
        else:
            fpr_source = "leave-one-out"
            fpr = {m: _loo_fpr(td, m, td.rule) for m in metrics}
    va = td.victim_accuracy
    attacks = []
    for row in td.rows:
        if row["label"] == "Negative":
            continue
        acc = _mean(row["accuracy"])
        cost = 100 * (va - acc) if va is not None and not math.isnan(acc) else math.nan
        det = {m: float(np.mean(row["copies"][m])) if row["copies"].get(m) else None for m in metrics}
        pmax = {m: max((p for p, _, _ in seed_pvalues(td, row, m)), default=None) for m in metrics}
        sizes = sorted({r["metrics"].get("substitute_size") for r in rows if r["kind"] == "attack"
                        and r["status"] == "done" and r["config"]["label"] == row["label"]} - {None})
        attacks.append({"label": row["label"], "n": row["n"], "accuracy": acc, "cost": cost,
                        "collapsed": row["collapsed"], "detection": det, "substitute_size": sizes,
                        "p_max": pmax, "status": row.get("status"), "reduced_to": row.get("reduced_to")})
    live = [a for a in attacks if not a["collapsed"] and a["n"] and not a["status"]]
    false_pos, bound = {}, {}
    for m in metrics:
        ind = independent_values(td, m)
        k = sum(verdict(known[m], v, td.taus[m]) for v in ind)
        false_pos[m] = (int(k), len(ind))
        bound[m] = fpr_upper_bound(k, len(ind)) if ind else 1.0
    needed = models_for_bound(max_fpr)
    verdicts = []
    for m in metrics:
        evaders = [a for a in live if a["detection"][m] is not None and a["detection"][m] < 0.5]
        k, n = false_pos[m]
        ftxt = (f"{k} of {n} independent models called copies; false-positive rate below {bound[m]:.0%} at 95% "
                f"confidence" if n else "false-positive rate unknown")
        if evaders:
            best = min(evaders, key=lambda a: a["cost"])
            verdicts.append(f"Relied on alone, {m} is evaded by {best['label']} at a cost of {best['cost']:.1f} "
                            f"points ({ftxt}).")
        else:
            verdicts.append(f"{m} detects every attack that keeps its accuracy within {margin:g} points ({ftxt}).")
    for a in attacks:
        if a["status"]:
            verdicts.append(f"{a['label']} {a['status']}: it is {a['reduced_to']}, not an attack of its name; it "
                            "is never counted as an evasion.")
    n_ind = min((n for _, n in false_pos.values()), default=0)
    recommendation = _recommend(metrics, live, fpr, bound, max_fpr, n_ind, needed, command)
    refs_acc = td.references_accuracy
    settings = dict(settings or {})
    settings.setdefault("threshold rule", td.rule.spec_value())
    settings.setdefault("seeds", spec.get("seeds"))
    settings.setdefault("verifier_count", spec.get("verifier_count"))
    return ReportCard(name=td.name, victim_accuracy=va, margin=float(margin), rule=td.rule, metrics=metrics,
                      degenerate=dict(sorted(degenerate.items())), taus=td.taus, fpr=fpr, fpr_source=fpr_source,
                      attacks=attacks, references=refs_acc, verdicts=verdicts, recommendation=recommendation,
                      settings=settings, max_fpr=float(max_fpr), false_positives=false_pos, fpr_bound=bound,
                      needed=needed, mismatch=reference_mismatch(va, refs_acc))


def _recommend(metrics: list[str], live: list[dict[str, Any]], fpr: dict[str, float | None],
               bound: dict[str, float], max_fpr: float, n_ind: int, needed: int, command: str | None) -> str:
    """Advice only where the evidence supports it: among the metrics whose 95% false-positive bound is below
    ``max_fpr``, the smallest set (one or two metrics) that flags every live attack, lowest leave-one-out
    false-positive rate first; otherwise why none can be recommended."""
    if not metrics:
        return "No verifier metric gave a usable (non-degenerate) result."
    if not live:
        return ("No attack produced a usable copy to test the verifiers against (every attack collapsed or "
                "returned its start).")
    supported = [m for m in metrics if bound[m] < max_fpr]
    if not supported:
        how = (command or "rerun with --train-references {n}, or give --references with {n} independently "
               "trained models").replace("{n}", str(needed))
        best = min(bound.values())
        if n_ind >= needed:
            return (f"No recommendation: every metric calls some of the {n_ind} independent models a copy, so no "
                    f"false-positive bound is below {max_fpr:.0%} at 95% confidence (best {best:.0%}).")
        return (f"No recommendation: {n_ind} independent models are too few. With n of them and none called a "
                f"copy, a metric's false-positive rate is bounded at 95% confidence by 1 - 0.05^(1/n) (here "
                f"{best:.0%} at best), above the target {max_fpr:.0%}; {needed} are needed. Add them: {how}.")
    metrics = supported

    def covered(ms):
        return sum(any((a["detection"][m] or 0) >= 0.5 for m in ms) for a in live)

    def cost(ms):
        return sum(fpr[m] if fpr[m] is not None else 1.0 for m in ms)

    for k in (1, 2):
        full = [ms for ms in itertools.combinations(metrics, k) if covered(ms) == len(live)]
        if full:
            best = min(full, key=cost)
            rate = max(bound[m] for m in best)
            return (f"Use {' + '.join(best)}: {'it flags' if k == 1 else 'together they flag'} every attack that keeps "
                    f"its accuracy (false-positive rate below {rate:.1%} at 95% confidence"
                    f"{', each' if k == 2 else ''}).")
    pairs = list(itertools.combinations(metrics, 2)) or [(metrics[0],)]
    best = max(pairs, key=lambda ms: (covered(ms), -cost(ms)))
    return (f"No one or two metrics with a false-positive bound below {max_fpr:.0%} flag every attack; the best, "
            f"{' + '.join(best)}, flags {covered(best)} of {len(live)} attacks that keep their accuracy.")


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}%"


def _acc(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}%"


def _detection(a: dict[str, Any], m: str) -> str:
    p = a.get("p_max", {}).get(m)
    return _pct(a["detection"][m]) + (f" (p {p:.2f})" if p is not None else "")


def _cells(card: ReportCard) -> tuple[list[str], list[list[str]]]:
    head = ["Metric", "false positives (independent models)", "FPR bound (95%)"] + [
        a["label"] + (" (collapsed)" if a["collapsed"] else "") + (" (returned the start)" if a.get("status") else "")
        for a in card.attacks]
    rows = []
    for m in card.metrics:
        k, n = card.false_positives.get(m, (0, 0))
        rows.append([m, rate_text(k, n) if n else "n/a", _pct(card.fpr_bound.get(m))]
                    + [_detection(a, m) for a in card.attacks])
    for m, why in card.degenerate.items():
        rows.append([f"{m} (DEGENERATE: {why}; excluded)", "-", "-"] + ["-" for _ in card.attacks])
    return head, rows


def _status(a: dict[str, Any]) -> str:
    if a.get("status"):
        return f"{a['status']}: {a['reduced_to']} (never an evasion)"
    return "collapsed (never an evasion)" if a["collapsed"] else "ok"


def _attack_cells(card: ReportCard) -> tuple[list[str], list[list[str]]]:
    head = ["Attack", "seeds", "substitute samples", "accuracy", "cost (points)", "status"]
    rows = [[a["label"], str(a["n"]), "/".join(map(str, a["substitute_size"])) or "-", _acc(a["accuracy"]),
             f"{a['cost']:.1f}", _status(a)] for a in card.attacks]
    return head, rows


def _bound_note(card: ReportCard) -> str:
    return (f"A metric is recommended only when its false-positive rate is below {card.max_fpr:.0%} at 95% "
            f"confidence (one-sided Clopper-Pearson over the independent models; {card.needed} models with no "
            f"false positive reach it) and it detects every attack. p: the empirical p-value against the "
            f"references, never below 1/(n+1).")


def card_markdown(card: ReportCard) -> str:
    va = _acc(card.victim_accuracy)
    refs = ", ".join(_acc(a) for a in card.references) or "none"
    out = [f"# Report card: {card.name}", "",
           f"Victim accuracy {va}. Reference models ({len(card.references)}): {refs}. Threshold rule: "
           f"{card.rule.spec_value()}. An attack losing more than {card.margin:g} accuracy points is collapsed.", "",
           *([f"**Warning:** {card.mismatch}", ""] if card.mismatch else []),
           _bound_note(card), "",
           "## Detection rate per attack (share of seeds called a copy; largest p-value of its seeds)", ""]
    head, rows = _cells(card)
    out += [md_table(head, rows), "", "## Attacks", ""]
    head, rows = _attack_cells(card)
    out += [md_table(head, rows), "", "## Verdict", ""]
    out += [f"- {v}" for v in card.verdicts]
    out += [f"- {m} is degenerate ({why}): not judged." for m, why in card.degenerate.items()]
    out += ["", f"**{card.recommendation}**", ""]
    return "\n".join(out)


def card_html(card: ReportCard) -> str:
    esc = html.escape

    def table(head, rows, copy_cols=()):
        h = "".join(f"<th>{esc(c)}</th>" for c in head)
        body = []
        for r in rows:
            tds = []
            for j, c in enumerate(r):
                cls = ""
                if j in copy_cols and c.split(" ")[0].endswith("%") and float(c.split(" ")[0][:-1]) >= 50:
                    cls = ' class="copy"'
                if "DEGENERATE" in c:
                    cls = ' class="degenerate"'
                tds.append(f"<td{cls}>{esc(c)}</td>")
            body.append("<tr>" + "".join(tds) + "</tr>")
        return f"<table><tr>{h}</tr>{''.join(body)}</table>"

    head, rows = _cells(card)
    ahead, arows = _attack_cells(card)
    notes = "".join(f"<li><b>{esc(m)}</b>: {esc(METRIC_NOTES.get(m, ''))}</li>" for m in card.metrics + list(card.degenerate))
    settings = {**card.settings, "victim accuracy": _acc(card.victim_accuracy),
                "reference accuracies": ", ".join(_acc(a) for a in card.references),
                "collapse margin (points)": card.margin, **provenance()}
    srows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in settings.items())
    verdicts = "".join(f"<li>{esc(v)}</li>" for v in card.verdicts)
    verdicts += "".join(f"<li>{esc(m)} is degenerate ({esc(w)}): not judged.</li>" for m, w in card.degenerate.items())
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}td.copy{background:#f8c9c4}"
             "td.degenerate{color:#777;font-style:italic}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Report card: {esc(card.name)}</title>"
            f"<style>{style}</style></head><body><h1>Report card: {esc(card.name)}</h1>"
            f"<p><b>{esc(card.recommendation)}</b></p>"
            + (f"<p><b>Warning:</b> {esc(card.mismatch)}</p>" if card.mismatch else "")
            + f"<h2>Detection rate per attack</h2><p>Share of an attack's seeds each metric calls a copy (red: "
            f"called a copy at least half the time). {esc(_bound_note(card))}</p>"
            + table(head, rows, copy_cols=range(3, len(head)))
            + "<h2>Attacks</h2>" + table(ahead, arows) + f"<h2>Verdict</h2><ul>{verdicts}</ul>"
            + f"<h2>Metrics</h2><ul>{notes}</ul><h2>Settings</h2><table>{srows}</table></body></html>\n")
