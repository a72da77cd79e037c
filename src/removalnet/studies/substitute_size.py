"""Substitute-set size (paper section 4.4.1, Fig. 6): RemovalNet with 2 %..20 % of the training data (and
absolute counts down to the paper's 400 samples) for S_LTD and S_LSD, with a lowered learning rate.

Rows of the figure: fidelity, distance metrics, similarity metrics against the substitute-set size (mean and
standard deviation over seeds; the dashed line is tau where reference models were trained).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..attacks import create_attack
from ..params import Param
from ..utils import RemovalNetError
from ..verify import all_metrics, verdict
from .base import (Study, StudyReport, fmt_ms, mean_std, metric_split, register_study, scores_by_label)

SCENARIO_NAMES = {"ltd": "S_LTD", "lsd": "S_LSD"}


def size_label(scenario: str, fraction: float | None = None, count: int | None = None) -> str:
    """'Ours(S_LTD, 2%)' or 'Ours(S_LSD, n=400)'."""
    what = f"{fraction * 100:g}%" if fraction is not None else f"n={count}"
    return f"Ours({SCENARIO_NAMES[scenario]}, {what})"


@register_study
class SubstituteSize(Study):
    name = "substitute_size"
    title = "Substitute-set size (paper Fig. 6)"
    PARAMS = {
        "ratios": Param([0.02, 0.05, 0.1, 0.15, 0.2], list, low=0.0, low_open=True, high=1.0, nullable=True,
                        doc="fractions of the training set (paper: 2%..20%)"),
        "counts": Param([400], list, low=1, nullable=True,
                        doc="absolute substitute-set sizes (the paper's headline: 400 and 750 samples)"),
        "scenarios": Param(["ltd", "lsd"], list, choices=("ltd", "lsd"), doc="S_LTD and/or S_LSD"),
        "source": Param("partition", str, doc="S_LSD source: a dataset name or 'partition'"),
        "params": Param({"lr": 0.005}, dict,
                        doc="RemovalNet parameters; the paper lowers the learning rate in this study (value "
                            "not given): 0.005, half the default"),
    }

    def validate(self) -> None:
        p = self.params
        if not p["ratios"] and not p["counts"]:
            raise RemovalNetError("give ratios and/or counts")
        if p["counts"]:
            if any(not float(c).is_integer() for c in p["counts"]):
                raise RemovalNetError("counts must be integers")
            p["counts"] = [int(c) for c in p["counts"]]
        try:
            create_attack("removalnet", **p["params"])
        except RemovalNetError as e:
            raise RemovalNetError(f"params: {e}") from None

    def attacks(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        p = self.params
        holdout = spec.get("lsd_holdout", 0.0) or 0.0
        rows = []
        for sc in p["scenarios"]:
            extra = {"source": p["source"]} if sc == "lsd" else {}
            if sc == "lsd" and p["source"] == "partition" and p["ratios"] and max(p["ratios"]) > holdout:
                raise RemovalNetError(f"S_LSD ratios up to {max(p['ratios'])} need lsd_holdout >= {max(p['ratios'])} "
                                  f"(the spec has {holdout})")
            for r in p["ratios"] or []:
                rows.append({"name": "removalnet", "label": size_label(sc, fraction=r), "params": dict(p["params"]),
                             "scenario": sc, "fraction": r, **extra})
            for n in p["counts"] or []:
                rows.append({"name": "removalnet", "label": size_label(sc, count=n), "params": dict(p["params"]),
                             "scenario": sc, "count": n, **extra})
        return rows

    def points(self, spec: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """Per scenario, the sizes in increasing order: {size, fraction, label, scores (rows per seed)}."""
        scores = scores_by_label(rows)
        sizes: dict[str, list[int]] = {}
        for r in rows:
            if r["kind"] == "attack" and r["status"] == "done":
                sizes.setdefault(r["config"]["label"], []).append(r["metrics"]["substitute_size"])
        out: dict[str, list[dict[str, Any]]] = {}
        mine = {a["label"] for a in self.attacks(spec)}
        for a in spec["attacks"]:
            if a["label"] not in mine or a["label"] not in scores:
                continue
            out.setdefault(a["scenario"], []).append({
                "label": a["label"], "fraction": a.get("fraction"), "scores": scores[a["label"]],
                "size": int(np.mean(sizes[a["label"]])) if sizes.get(a["label"]) else a.get("count")})
        for v in out.values():
            v.sort(key=lambda d: d["size"] or 0)
        return out

    def report(self, spec: dict[str, Any], rows: list[dict[str, Any]], td: Any, run_dir: Path) -> StudyReport:
        rep = StudyReport(self.title)
        pts = self.points(spec, rows)
        metrics = [m for m in td.metrics]
        head = ["Scenario", "Samples", "Fraction", "Fidelity (%)", "Drop"] + metrics + ["Copy votes"]
        table = []
        victim = td.victim_accuracy
        known = all_metrics()
        for sc, plist in pts.items():
            for d in plist:
                acc = [r["metrics"]["accuracy"] for r in d["scores"]]
                drop = (victim - float(np.mean(acc))) * 100 if victim is not None else None
                votes = "-"
                if td.taus:
                    owned = []
                    for r in d["scores"]:
                        v = [verdict(known[m], r["metrics"][m], td.taus[m]) for m in td.pool
                             if m in td.taus and m in r["metrics"]]
                        owned.append(bool(v) and sum(v) > len(v) / 2)
                    votes = f"{sum(owned)}/{len(owned)} owned"
                table.append([SCENARIO_NAMES[sc], str(d["size"]),
                              f"{d['fraction'] * 100:g}%" if d["fraction"] is not None else "-",
                              fmt_ms(acc, 100, 2), f"{drop:.2f}" if drop is not None else "-"]
                             + [fmt_ms([r["metrics"].get(m) for r in d["scores"]]) for m in metrics] + [votes])
        rep.tables.append(("RemovalNet against the substitute-set size", head, table))
        for sc, plist in pts.items():
            if len(plist) >= 2:
                a0 = mean_std([r["metrics"]["accuracy"] for r in plist[0]["scores"]])[0]
                a1 = mean_std([r["metrics"]["accuracy"] for r in plist[-1]["scores"]])[0]
                rep.findings.append(f"{SCENARIO_NAMES[sc]}: fidelity {a0 * 100:.2f}% with {plist[0]['size']} samples, "
                                    f"{a1 * 100:.2f}% with {plist[-1]['size']} samples")
        rep.numbers = {sc: [{"size": d["size"], "accuracy": mean_std([r["metrics"]["accuracy"] for r in d["scores"]])[0]}
                            for d in plist] for sc, plist in pts.items()}
        fig = self.figure(pts, [m for m in metrics if m in td.pool] or metrics, td)  # the paper's metrics
        if fig is not None:
            rep.figures.append(("substitute_size", fig))
        return rep

    def figure(self, pts, metrics: list[str], td: Any):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not pts:
            return None
        dist, sim = metric_split(metrics)
        cols = max(len(dist), len(sim), 1)
        fig, axes = plt.subplots(3, cols, figsize=(3.0 * cols, 7.5), squeeze=False)
        panels = [(0, 0, "accuracy", "fidelity (%)")]
        panels += [(1, i, m, m) for i, m in enumerate(dist)] + [(2, i, m, m) for i, m in enumerate(sim)]
        used = set()
        for r, c, m, ylabel in panels:
            ax = axes[r][c]
            used.add((r, c))
            scale = 100.0 if m == "accuracy" else 1.0
            for sc, plist in pts.items():
                xs = [d["size"] for d in plist]
                stats = [mean_std([s["metrics"].get(m) for s in d["scores"]]) for d in plist]
                ax.errorbar(xs, [s[0] * scale for s in stats], yerr=[s[1] * scale for s in stats], marker="o",
                            ms=3, capsize=2, label=SCENARIO_NAMES[sc])
            if m in td.taus:
                ax.axhline(td.taus[m], color="grey", ls="--", lw=0.8, label="τ")
            ax.set_xscale("log")
            sizes = sorted({d["size"] for plist in pts.values() for d in plist})
            ax.set_xticks(sizes)
            ax.set_xticklabels([str(v) for v in sizes], fontsize=7)
            ax.minorticks_off()
            ax.set_title(ylabel, fontsize=9)
            ax.set_xlabel("substitute samples", fontsize=8)
            ax.tick_params(labelsize=7)
        for r in range(3):
            for c in range(cols):
                if (r, c) not in used:
                    axes[r][c].axis("off")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        return fig
