"""The owner's report card of an audit run (``removalnet audit``): for each verifier metric, its false-positive
rate on independent models, its detection rate per attack, the accuracy an attacker pays to evade it, and a
plain verdict.

* False-positive rate: on the negative models (tau from all references) when the run has them, else
  leave-one-out over the references (tau from the other references, the left-out one judged).
* Detection rate: the fraction of an attack's seeds the metric calls a copy (tau from all references).
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
from .render import METRIC_NOTES, md_table, provenance
from .table import COLLAPSE_MARGIN, TableData, build_table, load_results

__all__ = ["ReportCard", "build_card", "card_markdown", "card_html", "DEFAULT_MARGIN"]

DEFAULT_MARGIN = COLLAPSE_MARGIN

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


def build_card(run_dir: str | Path, margin: float = COLLAPSE_MARGIN, settings: dict[str, Any] | None = None) -> ReportCard:
    """The report card of an audit (or any) run folder from its results database (module doc)."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 100:
        raise RemovalNetError(f"margin must be a number of accuracy points in [0, 100], got {margin!r}")
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
        sizes = sorted({r["metrics"].get("substitute_size") for r in rows if r["kind"] == "attack"
                        and r["status"] == "done" and r["config"]["label"] == row["label"]} - {None})
        attacks.append({"label": row["label"], "n": row["n"], "accuracy": acc, "cost": cost,
                        "collapsed": row["collapsed"], "detection": det, "substitute_size": sizes})
    live = [a for a in attacks if not a["collapsed"] and a["n"]]
    verdicts = []
    for m in metrics:
        evaders = [a for a in live if a["detection"][m] is not None and a["detection"][m] < 0.5]
        f = fpr[m]
        ftxt = f"false-positive rate {f:.0%}" if f is not None else "false-positive rate unknown"
        if evaders:
            best = min(evaders, key=lambda a: a["cost"])
            verdicts.append(f"Relied on alone, {m} is evaded by {best['label']} at a cost of {best['cost']:.1f} "
                            f"points ({ftxt}).")
        else:
            verdicts.append(f"{m} detects every attack that keeps its accuracy within {margin:g} points ({ftxt}).")
    recommendation = _recommend(metrics, live, fpr)
    refs_acc = td.references_accuracy
    settings = dict(settings or {})
    settings.setdefault("threshold rule", td.rule.spec_value())
    settings.setdefault("seeds", spec.get("seeds"))
    settings.setdefault("verifier_count", spec.get("verifier_count"))
    return ReportCard(name=td.name, victim_accuracy=va, margin=float(margin), rule=td.rule, metrics=metrics,
                      degenerate=dict(sorted(degenerate.items())), taus=td.taus, fpr=fpr, fpr_source=fpr_source,
                      attacks=attacks, references=refs_acc, verdicts=verdicts, recommendation=recommendation,
                      settings=settings)


def _recommend(metrics: list[str], live: list[dict[str, Any]], fpr: dict[str, float | None]) -> str:
    """The smallest set (one or two metrics) that flags every non-collapsed attack, lowest false-positive
    rate first; otherwise the pair that flags the most."""
    if not metrics:
        return "No verifier metric gave a usable (non-degenerate) result."
    if not live:
        return "Every attack collapsed: none produced a usable copy to test the verifiers against."

    def covered(ms):
        return sum(any((a["detection"][m] or 0) >= 0.5 for m in ms) for a in live)

    def cost(ms):
        return sum(fpr[m] if fpr[m] is not None else 1.0 for m in ms)

    for k in (1, 2):
        full = [ms for ms in itertools.combinations(metrics, k) if covered(ms) == len(live)]
        if full:
            best = min(full, key=cost)
            rate = max(fpr[m] or 0 for m in best)
            return (f"Use {' + '.join(best)}: {'it flags' if k == 1 else 'together they flag'} every attack that keeps "
                    f"its accuracy (worst false-positive rate {rate:.0%}).")
    pairs = list(itertools.combinations(metrics, 2)) or [(metrics[0],)]
    best = max(pairs, key=lambda ms: (covered(ms), -cost(ms)))
    return (f"No one or two metrics flag every attack; the best pair, {' + '.join(best)}, flags {covered(best)} of "
            f"{len(live)} attacks that keep their accuracy.")


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}%"


def _acc(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}%"


def _cells(card: ReportCard) -> tuple[list[str], list[list[str]]]:
    head = ["Metric", f"FPR ({card.fpr_source})"] + [a["label"] + (" (collapsed)" if a["collapsed"] else "")
                                                     for a in card.attacks]
    rows = []
    for m in card.metrics:
        rows.append([m, _pct(card.fpr[m])] + [_pct(a["detection"][m]) for a in card.attacks])
    for m, why in card.degenerate.items():
        rows.append([f"{m} (DEGENERATE: {why}; excluded)", "-"] + ["-" for _ in card.attacks])
    return head, rows


def _attack_cells(card: ReportCard) -> tuple[list[str], list[list[str]]]:
    head = ["Attack", "seeds", "substitute samples", "accuracy", "cost (points)", "status"]
    rows = [[a["label"], str(a["n"]), "/".join(map(str, a["substitute_size"])) or "-", _acc(a["accuracy"]),
             f"{a['cost']:.1f}",
             "collapsed (never an evasion)" if a["collapsed"] else "ok"] for a in card.attacks]
    return head, rows


def card_markdown(card: ReportCard) -> str:
    va = _acc(card.victim_accuracy)
    refs = ", ".join(_acc(a) for a in card.references) or "none"
    out = [f"# Report card: {card.name}", "",
           f"Victim accuracy {va}. Reference models ({len(card.references)}): {refs}. Threshold rule: "
           f"{card.rule.spec_value()}. An attack losing more than {card.margin:g} accuracy points is collapsed.", "",
           "## Detection rate per attack (share of seeds called a copy)", ""]
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
                if j in copy_cols and c.endswith("%") and float(c[:-1]) >= 50:
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
            f"<p><b>{esc(card.recommendation)}</b></p><h2>Detection rate per attack</h2>"
            f"<p>Share of an attack's seeds each metric calls a copy (red: called a copy at least half the time); "
            f"the false-positive rate is measured on {esc(card.fpr_source)} independent models.</p>"
            + table(head, rows, copy_cols=range(2, len(head)))
            + "<h2>Attacks</h2>" + table(ahead, arows) + f"<h2>Verdict</h2><ul>{verdicts}</ul>"
            + f"<h2>Metrics</h2><ul>{notes}</ul><h2>Settings</h2><table>{srows}</table></body></html>\n")
