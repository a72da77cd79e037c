"""Ablation of the two removal levels (paper section 4.5.1, Fig. 8): RemovalNet's metrics against alpha
(weight of CE; 1 - alpha weighs the logit-level KL term, eq. 15) with beta = 0, and against beta (weight of
the latent-level L_feat) with alpha fixed; learning rate 0.03 as in the paper; averaged over seeds.

The paper writes "when evaluating the impact of alpha, we set beta = 0, and vice versa", so the default
``fixed_alpha`` of the beta sweep is 0 (set it to 0.2, the paper's default alpha, for the other reading).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..params import Param
from ..utils import RemovalNetError
from .base import ATTACK_PARAMS, Study, StudyReport, fmt_ms, mean_std, register_study, scores_by_label


def sweep_label(alpha: float, beta: float) -> str:
    return f"Ours(alpha={alpha:g}, beta={beta:g})"


@register_study
class Ablation(Study):
    name = "ablation"
    title = "Ablation of alpha and beta (paper Fig. 8)"
    PARAMS = {
        "alphas": Param([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], list, low=0.0, high=1.0, nullable=True,
                        doc="alpha values of the first sweep (beta = 0)"),
        "betas": Param([0.0, 0.5, 1.0, 2.0, 4.0], list, low=0.0, nullable=True,
                       doc="beta values of the second sweep (alpha = fixed_alpha)"),
        "fixed_alpha": Param(0.0, float, low=0.0, high=1.0, doc="alpha during the beta sweep ('vice versa')"),
        **ATTACK_PARAMS,
        "params": Param({"lr": 0.03}, dict, doc="RemovalNet parameters (paper: lr 0.03 in this study)"),
    }

    def validate(self) -> None:
        p = self.params
        if not p["alphas"] and not p["betas"]:
            raise RemovalNetError("give alphas and/or betas")
        if "alpha" in p["params"] or "beta" in p["params"]:
            raise RemovalNetError("params: alpha and beta are what the study varies; set alphas / betas")
        self.check_substitute()

    def sweeps(self) -> list[tuple[str, float, float]]:
        """(sweep, alpha, beta) of every row."""
        p = self.params
        out = [("alpha", a, 0.0) for a in p["alphas"] or []]
        out += [("beta", p["fixed_alpha"], b) for b in p["betas"] or []]
        return out

    def attacks(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        rows, seen = [], set()
        for _, a, b in self.sweeps():
            label = sweep_label(a, b)
            if label in seen:  # (alpha, 0) can be in both sweeps: one row serves both
                continue
            seen.add(label)
            row = self.removalnet_row(label)
            row["params"].update(alpha=a, beta=b)
            rows.append(row)
        return rows

    def report(self, spec: dict[str, Any], rows: list[dict[str, Any]], td: Any, run_dir: Path) -> StudyReport:
        rep = StudyReport(self.title)
        scores = scores_by_label(rows)
        metrics = list(td.metrics)
        head = ["Sweep", "alpha", "beta", "Fidelity (%)"] + metrics
        table = []
        for sweep, a, b in self.sweeps():
            sel = scores.get(sweep_label(a, b), [])
            table.append([sweep, f"{a:g}", f"{b:g}", fmt_ms([r["metrics"]["accuracy"] for r in sel], 100, 2)]
                         + [fmt_ms([r["metrics"].get(m) for r in sel]) for m in metrics])
        rep.tables.append(("RemovalNet against alpha (beta = 0) and beta (alpha fixed)", head, table))
        for sweep in ("alpha", "beta"):
            pts = [(a if sweep == "alpha" else b, scores.get(sweep_label(a, b), [])) for s, a, b in self.sweeps()
                   if s == sweep]
            pts = [(x, sel) for x, sel in pts if sel]
            for m in metrics:
                vals = [mean_std([r["metrics"].get(m) for r in sel])[0] for _, sel in pts]
                if len(vals) >= 2:
                    rep.findings.append(f"{m} over the {sweep} sweep ({pts[0][0]:g} -> {pts[-1][0]:g}): "
                                        f"{vals[0]:.3f} -> {vals[-1]:.3f}")
        fig = self.figure(scores, [m for m in metrics if m in td.pool] or metrics, td)  # the paper's metrics
        if fig is not None:
            rep.figures.append(("ablation", fig))
        return rep

    def figure(self, scores, metrics: list[str], td: Any):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        sweeps = [s for s in ("alpha", "beta") if any(sw == s for sw, _, _ in self.sweeps())]
        cols = ["accuracy"] + metrics
        fig, axes = plt.subplots(len(sweeps), len(cols), figsize=(2.6 * len(cols), 2.6 * len(sweeps)), squeeze=False)
        for i, sweep in enumerate(sweeps):
            pts = [(a if sweep == "alpha" else b, scores.get(sweep_label(a, b), [])) for s, a, b in self.sweeps()
                   if s == sweep]
            for j, m in enumerate(cols):
                ax = axes[i][j]
                scale = 100.0 if m == "accuracy" else 1.0
                stats = [mean_std([r["metrics"].get(m) for r in sel]) for _, sel in pts]
                ax.errorbar([x for x, _ in pts], [s[0] * scale for s in stats], yerr=[s[1] * scale for s in stats],
                            marker="o", ms=3, capsize=2)
                if m in td.taus:
                    ax.axhline(td.taus[m], color="grey", ls="--", lw=0.8)
                ax.set_title("fidelity (%)" if m == "accuracy" else m, fontsize=9)
                ax.set_xlabel(sweep + (" (beta = 0)" if sweep == "alpha" else f" (alpha = {self.params['fixed_alpha']:g})"),
                              fontsize=8)
                ax.tick_params(labelsize=7)
        fig.tight_layout()
        return fig
