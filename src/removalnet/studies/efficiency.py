"""Computational efficiency against KnockoffNets (paper section 4.4.2, Fig. 7).

For each scenario (and each substitute size of ``fractions``, when given), KnockoffNets (a fresh model
trained on the victim's answers, query budget batch x iterations; paper: 10,000 iterations) records its
learning curve on a class-balanced test subset; RemovalNet runs its usual 1000 iterations on the same
substitute set and is evaluated on the same subset. The report gives
the iterations and the wall time KnockoffNets needs to first reach RemovalNet's fidelity, and the compute
saved, ``1 - cost(RemovalNet) / cost(KnockoffNets to that fidelity)``, in iterations and in wall time (the
paper: 50..85 %). RemovalNet's wall time is its whole attack job (including its 11 checkpoint
evaluations); KnockoffNets' excludes its evaluations.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..attacks import create_attack
from ..params import Param
from ..utils import RemovalNetError
from .base import ATTACK_PARAMS, Study, StudyReport, register_study
from .substitute_size import SCENARIO_NAMES

__all__ = ["Efficiency", "iterations_to_reach", "mean_curve"]


def iterations_to_reach(ts: Sequence[float], values: Sequence[float], target: float) -> int | None:
    """The first iteration ``t`` of a learning curve whose value is at least ``target`` (None if never).
    Points are taken in increasing ``t``; missing values (None) are skipped."""
    for t, v in sorted(zip(ts, values), key=lambda p: p[0]):
        if v is not None and v >= target:
            return int(t)
    return None


def mean_curve(histories: list[list[dict[str, Any]]], key: str = "accuracy") -> tuple[list[int], list[float], list[float]]:
    """Average learning curves over seeds at the iterations every seed recorded: (t, mean value, mean time_s)."""
    common = None
    for h in histories:
        ts = {p["t"] for p in h if p.get(key) is not None}
        common = ts if common is None else common & ts
    ts = sorted(common or ())
    vals, times = [], []
    for t in ts:
        pts = [next(p for p in h if p["t"] == t) for h in histories]
        vals.append(float(np.mean([p[key] for p in pts])))
        times.append(float(np.mean([p.get("time_s") or 0.0 for p in pts])))
    return ts, vals, times


@register_study
class Efficiency(Study):
    name = "efficiency"
    title = "Efficiency against KnockoffNets (paper Fig. 7)"
    PARAMS = {
        **{k: v for k, v in ATTACK_PARAMS.items() if k != "scenario"},   # one row per entry of scenarios
        "scenarios": Param(["ltd", "lsd"], list, choices=("ltd", "lsd"), doc="S_LTD and/or S_LSD"),
        "fraction": Param(0.1, float, low=0.0, low_open=True, high=1.0, nullable=True,
                          doc="substitute set as a fraction of the training set (paper: 10%)"),
        "fractions": Param(None, list, low=0.0, low_open=True, high=1.0, nullable=True,
                           doc="several substitute sizes, one RemovalNet/KnockoffNets pair each (instead of fraction)"),
        "source": Param("partition", str, doc="S_LSD source: a dataset name or 'partition'"),
        "knockoff": Param({"iterations": 10000, "eval_every": 250}, dict,
                          doc="KnockoffNets parameters (paper: budget batch x 10,000 iterations)"),
        "eval_count": Param(2000, int, low=1, doc="class-balanced test samples of the learning curves"),
    }

    def validate(self) -> None:
        try:
            create_attack("knockoff", **self.params["knockoff"])
        except RemovalNetError as e:
            raise RemovalNetError(f"knockoff: {e}") from None
        self.check_substitute()

    def cases(self) -> list[tuple[str, float | None]]:
        """(scenario, fraction) of each RemovalNet/KnockoffNets pair; fraction None: the study's own size."""
        fr = self.params["fractions"] or [None]
        return [(sc, f) for sc in self.params["scenarios"] for f in fr]

    @staticmethod
    def case_name(sc: str, fraction: float | None) -> str:
        return SCENARIO_NAMES[sc] if fraction is None else f"{SCENARIO_NAMES[sc]}, {fraction * 100:g}%"

    def labels(self, sc: str, fraction: float | None = None) -> tuple[str, str]:
        name = self.case_name(sc, fraction)
        return f"Ours({name})", f"KnockoffNets({name})"

    def attacks(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        p = self.params
        holdout = spec.get("lsd_holdout", 0.0) or 0.0
        rows = []
        for sc, f in self.cases():
            if sc == "lsd" and p["source"] == "partition" and f is not None and f > holdout:
                raise RemovalNetError(f"S_LSD fractions up to {f} need lsd_holdout >= {f} (the spec has {holdout})")
            ours, knock = self.labels(sc, f)
            base = self.removalnet_row(ours, scenario=sc, eval_count=p["eval_count"])
            if f is not None:
                base.pop("count", None)
                base["fraction"] = f
            rows.append(base)
            rows.append({**base, "name": "knockoff", "label": knock, "params": dict(p["knockoff"])})
        return rows

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Per case (scenario, or "scenario, fraction%"): RemovalNet's fidelity, iterations and time; KnockoffNets'
        mean curve and the cost to reach RemovalNet's fidelity; the compute saved."""
        attacks: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["kind"] == "attack" and r["status"] == "done":
                attacks.setdefault(r["config"]["label"], []).append(r)
        out = {}
        for sc, f in self.cases():
            ours_l, knock_l = self.labels(sc, f)
            ours, knock = attacks.get(ours_l, []), attacks.get(knock_l, [])
            if not ours or not knock:
                continue
            finals = [max(r["metrics"]["history"], key=lambda p: p["t"]) for r in ours if r["metrics"]["history"]]
            target = float(np.mean([p["accuracy"] for p in finals]))
            ours_iters = int(np.mean([r["metrics"]["iterations"] for r in ours]))
            ours_time = float(np.mean([r["metrics"]["time_s"] for r in ours]))
            ts, vals, times = mean_curve([r["metrics"]["history"] for r in knock])
            t_reach = iterations_to_reach(ts, vals, target)
            time_reach = times[ts.index(t_reach)] if t_reach is not None else None
            per_seed = [iterations_to_reach([p["t"] for p in r["metrics"]["history"]],
                                            [p["accuracy"] for p in r["metrics"]["history"]], target) for r in knock]
            d = {"target_accuracy": target, "removalnet_iterations": ours_iters, "removalnet_time_s": ours_time,
                 "knockoff_curve": {"t": ts, "accuracy": vals, "time_s": times},
                 "knockoff_final_accuracy": vals[-1] if vals else None, "knockoff_iterations": ts[-1] if ts else None,
                 "iterations_to_reach": t_reach, "time_to_reach_s": time_reach, "per_seed_iterations_to_reach": per_seed,
                 "saved_iterations": (1 - ours_iters / t_reach) if t_reach else None,
                 "saved_time": (1 - ours_time / time_reach) if time_reach else None}
            if t_reach is None and ts:
                # never reached: the saving is at least what the whole curve cost
                d["saved_iterations_at_least"] = 1 - ours_iters / ts[-1]
                d["saved_time_at_least"] = 1 - ours_time / times[-1] if times[-1] else None
            out[self.case_name(sc, f)] = d
        return out

    def report(self, spec: dict[str, Any], rows: list[dict[str, Any]], td: Any, run_dir: Path) -> StudyReport:
        rep = StudyReport(self.title)
        summ = self.summary(rows)
        rep.numbers = summ

        def pct(v):
            return "-" if v is None else f"{v * 100:.1f}%"

        head = ["Scenario", "RemovalNet fidelity (%)", "RemovalNet iterations", "RemovalNet time (s)",
                "KnockoffNets final fidelity (%)", "KnockoffNets iterations to reach", "KnockoffNets time to reach (s)",
                "Saved (iterations)", "Saved (time)"]
        table = []
        for sc, d in summ.items():
            reach = d["iterations_to_reach"]
            table.append([sc, f"{d['target_accuracy'] * 100:.2f}", str(d["removalnet_iterations"]),
                          f"{d['removalnet_time_s']:.1f}",
                          f"{d['knockoff_final_accuracy'] * 100:.2f}" if d["knockoff_final_accuracy"] is not None else "-",
                          str(reach) if reach is not None else f"not reached in {d['knockoff_iterations']}",
                          f"{d['time_to_reach_s']:.1f}" if d["time_to_reach_s"] is not None else "-",
                          pct(d["saved_iterations"]) if reach is not None else f">= {pct(d.get('saved_iterations_at_least'))}",
                          pct(d["saved_time"]) if reach is not None else f">= {pct(d.get('saved_time_at_least'))}"])
            if reach is not None:
                rep.findings.append(f"{sc}: KnockoffNets first reaches RemovalNet's fidelity "
                                    f"({d['target_accuracy'] * 100:.2f}%) after {reach} iterations "
                                    f"({d['time_to_reach_s']:.0f} s) against RemovalNet's {d['removalnet_iterations']} "
                                    f"({d['removalnet_time_s']:.0f} s): {pct(d['saved_iterations'])} of the iterations "
                                    f"and {pct(d['saved_time'])} of the time saved")
            else:
                rep.findings.append(f"{sc}: KnockoffNets does not reach RemovalNet's fidelity "
                                    f"({d['target_accuracy'] * 100:.2f}%) within {d['knockoff_iterations']} iterations "
                                    f"(it ends at {d['knockoff_final_accuracy'] * 100:.2f}%)")
        rep.tables.append(("Iterations and time to RemovalNet's fidelity", head, table))
        fig = self.figure(summ)
        if fig is not None:
            rep.figures.append(("efficiency", fig))
        return rep

    def figure(self, summ):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not summ:
            return None
        fig, axes = plt.subplots(1, len(summ), figsize=(4.2 * len(summ), 3.2), squeeze=False)
        for ax, (sc, d) in zip(axes[0], summ.items()):
            c = d["knockoff_curve"]
            ax.plot(c["t"], np.asarray(c["accuracy"]) * 100, "-", label="KnockoffNets")
            ax.axhline(d["target_accuracy"] * 100, ls="--", color="C1",
                       label=f"RemovalNet ({d['removalnet_iterations']} it)")
            if d["iterations_to_reach"] is not None:
                ax.axvline(d["iterations_to_reach"], ls=":", color="grey", lw=0.8)
            ax.set_title(sc, fontsize=9)
            ax.set_xlabel("iterations", fontsize=8)
            ax.set_ylabel("fidelity (%)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7)
        fig.tight_layout()
        return fig
