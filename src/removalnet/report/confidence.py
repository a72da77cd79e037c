"""Table 1's verdicts with their confidence (docs/confidence.md), from the values already in a run's database:

* per row and metric, the p-values of its seeds against the reference models (empirical, never below
  1/(n+1), and Student-t);
* per row, the paper's vote (majority of the pool at the minmax threshold) beside a verdict combined over the
  same pool with Holm's adjustment (family-wise alpha 5%), each count with its Clopper-Pearson interval;
* per attack and metric, ROC-AUC between the independent models (references and negatives) and the attack's
  seeds, with its score interval, and the detection rate at FPR <= 5% and <= 1%, or "n too small" with the
  number of independent models needed;
* a warning when the references' mean accuracy differs from the victim's by more than
  :data:`MISMATCH_POINTS` points (the thresholds then judge a different kind of model).

The paper's minmax table stays the main one; this is a section beside it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..verify import all_metrics
from ..verify.confidence import (combined_verdict, empirical_pvalue, parametric_pvalue, pvalue_floor, rate_text,
                                 references_needed, roc_auc, tpr_at_fpr)
from .section import Section
from .table import TableData

__all__ = ["ALPHA", "FPRS", "MISMATCH_POINTS", "confidence_section", "seed_pvalues", "combined_counts",
           "reference_mismatch", "independent_values", "ownership_text"]

#: the family-wise false-positive rate of the combined verdict
ALPHA = 0.05
#: the false-positive rates detection is reported at
FPRS = (0.05, 0.01)
#: accuracy points between the references' mean and the victim beyond which the references are flagged
MISMATCH_POINTS = 3.0


def reference_mismatch(victim_accuracy: float | None, references_accuracy: list[float],
                       points: float = MISMATCH_POINTS) -> str | None:
    """A sentence when the references' mean accuracy is more than ``points`` away from the victim's, else None."""
    if victim_accuracy is None or not references_accuracy:
        return None
    mean = float(np.mean(references_accuracy))
    gap = 100 * (mean - victim_accuracy)
    if abs(gap) <= points:
        return None
    return (f"The reference models' mean accuracy ({100 * mean:.1f}%) is {abs(gap):.1f} points "
            f"{'above' if gap > 0 else 'below'} the victim's ({100 * victim_accuracy:.1f}%), more than "
            f"{points:g}: the thresholds and p-values come from a different kind of model than the one they judge.")


def independent_values(td: TableData, metric: str) -> list[float]:
    """Every independent model's value (references, then negatives)."""
    neg = next((r for r in td.rows if r["label"] == "Negative"), None)
    return list(td.references.get(metric, [])) + (list(neg["values"].get(metric, [])) if neg else [])


def seed_pvalues(td: TableData, row: dict[str, Any], metric: str) -> list[tuple[float, float | None, str]]:
    """(empirical p, Student-t p or None, note) of each seed of ``row`` against the references."""
    refs = td.references.get(metric, [])
    direction = all_metrics()[metric].direction
    out = []
    for v in row["values"].get(metric, []):
        par = parametric_pvalue(v, refs, direction)
        out.append((empirical_pvalue(v, refs, direction), par.p, par.note))
    return out


def combined_counts(td: TableData, row: dict[str, Any]) -> dict[str, list[bool | None]]:
    """Per seed, Holm's combined verdict over the pool (empirical and Student-t p-values; None where a metric
    of the seed has no p-value)."""
    pool = [m for m in td.pool if m in td.taus and len(row["values"].get(m, [])) == row["n"]]
    ps = {m: seed_pvalues(td, row, m) for m in pool}
    out: dict[str, list[bool | None]] = {"empirical": [], "parametric": []}
    for i in range(row["n"] if pool else 0):
        out["empirical"].append(combined_verdict({m: ps[m][i][0] for m in pool}, ALPHA).copy)
        par = {m: ps[m][i][1] for m in pool}
        out["parametric"].append(None if any(p is None for p in par.values())
                                 else combined_verdict(par, ALPHA).copy)
    return out


def ownership_text(k: int, n: int) -> str:
    """"Yes (5/5, >= 48%)": the seeds' majority, the count and its Clopper-Pearson interval."""
    return f"{'Yes' if k > n / 2 else 'No'} ({rate_text(k, n)})" if n else "-"


def _p(p: float | None) -> str:
    return "-" if p is None or (isinstance(p, float) and math.isnan(p)) else (f"{p:.3f}" if p >= 1e-3 else f"{p:.0e}")


def confidence_section(td: TableData) -> Section | None:
    """The section "Verdicts with their confidence" of a Table 1 (module doc); None without thresholds."""
    metrics = [m for m in td.metrics if m in td.taus]
    if not metrics:
        return None
    known = all_metrics()
    n_refs = min(len(td.references[m]) for m in metrics)
    n_ind = min(len(independent_values(td, m)) for m in metrics)
    rows = [r for r in td.rows if r["n"]]
    attacks = [r for r in rows if r["label"] != "Negative"]

    def label(r):
        return r["label"] + (" (collapsed)" if r.get("collapsed") else "") + (f" ({r['status']})" if r.get("status")
                                                                               else "")

    findings = []
    floor = pvalue_floor(n_refs)
    findings.append(
        f"p-values against the {n_refs} reference models: an empirical p-value can never go below 1/{n_refs + 1} = "
        f"{floor:.3f}" + (f", so no verdict here supports a false-positive rate below {ALPHA:.0%} "
                          f"(that needs >= {references_needed(ALPHA)} references)" if floor > ALPHA else "")
        + "; the Student-t p-value assumes normal (log-normal for distances) reference values.")
    findings.append(f"Holm: a seed is a copy when some pool metric ({', '.join(td.pool)}) keeps an adjusted p-value "
                    f"<= {ALPHA:g}, so an independent model is called a copy by any of them with probability <= "
                    f"{ALPHA:.0%}; the paper's vote is the majority of the same metrics at the minmax threshold.")
    mismatch = reference_mismatch(td.victim_accuracy, td.references_accuracy)
    if mismatch:
        findings.append(mismatch)

    own_head = ["Attack", "Paper: majority vote (minmax)", f"Holm, empirical p (alpha {ALPHA:g})",
                f"Holm, Student-t p (alpha {ALPHA:g})"]
    own_rows, numbers = [], {"n_references": n_refs, "n_independent": n_ind, "p_floor": floor, "rows": {}}
    for r in rows:
        c = combined_counts(td, r)
        k = sum(r["owned"])
        emp = c["empirical"]
        par = [x for x in c["parametric"] if x is not None]
        own_rows.append([label(r), ownership_text(k, len(r["owned"])) if td.pool else "-",
                         ownership_text(sum(emp), len(emp)) if emp else "-",
                         ownership_text(sum(par), len(par)) + (f" ({len(emp) - len(par)} seeds without one)"
                                                              if len(par) < len(emp) else "") if par else "-"])
        numbers["rows"][r["label"]] = {"vote": [k, len(r["owned"])], "holm_empirical": [sum(emp), len(emp)],
                                       "holm_parametric": [sum(par), len(par)]}

    p_head = ["Attack"] + metrics
    p_rows = []
    doubtful = set()
    for r in rows:
        cells = [label(r)]
        for m in metrics:
            ps = seed_pvalues(td, r, m)
            if not ps:
                cells.append("-")
                continue
            pars = [p for _, p, _ in ps]
            par = None if any(p is None for p in pars) else max(pars)
            note = "*" if any(n for _, _, n in ps) else ""
            if note:
                doubtful.add(m)
            cells.append(f"{_p(max(e for e, _, _ in ps))} / {_p(par)}{note}")
        p_rows.append(cells)
    if doubtful:
        findings.append("* Student-t assumptions doubtful for " + ", ".join(sorted(doubtful))
                        + " (fewer than 3 references, no variance, or Shapiro-Wilk rejects normality).")

    auc_rows, tpr_rows = [], {a: [] for a in FPRS}
    for r in attacks:
        auc_cells, tpr_cells = [label(r)], {a: [label(r)] for a in FPRS}
        for m in metrics:
            neg, pos = independent_values(td, m), r["values"].get(m, [])
            if not neg or not pos:
                auc_cells.append("-")
                for a in FPRS:
                    tpr_cells[a].append("-")
                continue
            auc = roc_auc(neg, pos, known[m].direction)
            auc_cells.append(f"{auc.auc:.2f} ({auc.low:.2f}-{auc.high:.2f})")
            for a in FPRS:
                t = tpr_at_fpr(neg, pos, known[m].direction, a)
                tpr_cells[a].append(t.text() if t.tpr is not None else "n too small")
        auc_rows.append(auc_cells)
        for a in FPRS:
            tpr_rows[a].append(tpr_cells[a])
    tables = [("Ownership with confidence (seeds, Clopper-Pearson 95% interval)", own_head, own_rows),
              (f"p-values against the {n_refs} references, the largest over seeds (empirical / Student-t)",
               p_head, p_rows)]
    if auc_rows:
        tables.append((f"ROC-AUC, {n_ind} independent models against each attack's seeds (95% score interval)",
                       ["Attack"] + metrics, auc_rows))
    for a in FPRS:
        need = references_needed(a)
        if n_ind < need:
            findings.append(f"Detection at a false-positive rate <= {a:.0%}: n too small ({n_ind} independent "
                            f"models; >= {need} needed for an empirical p-value to reach {a:g}).")
        elif auc_rows:
            tables.append((f"Detection at FPR <= {a:.0%} (seeds with empirical p <= {a:g} against the {n_ind} "
                           "independent models; Clopper-Pearson 95%)", ["Attack"] + metrics, tpr_rows[a]))
    return Section(title="Verdicts with their confidence", tables=tables, findings=findings, numbers=numbers)
