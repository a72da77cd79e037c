"""Table 1 explained for a reader who has not read the paper: one line per column, arrow, row kind, scenario and
the threshold rule (:func:`legend`), and, per metric, what this run cannot show (:func:`limitations`: a metric
that calls few of the parameter-reusing baselines a copy cannot tell a fine-tuned copy from an independent
model at this run's size, and the report says so in words next to the numbers)."""
from __future__ import annotations

from ..attacks import attack_class
from ..verify import list_verifiers, verifier_class
from .table import TableData

__all__ = ["legend", "limitations", "departures", "ATTACK_NAMES"]

#: what each registered attack does, in a line (others: the first line of the attack's docstring)
ATTACK_NAMES = {
    "ft": "fine-tuning: FT(r) trains the last r of the layers on the substitute set, the others frozen",
    "wp": "weight pruning: WP(r) sets the share r of smallest weights to zero, then fine-tunes",
    "distill": "distillation: a model trained on the substitute set to reproduce the victim's outputs and "
               "block features",
    "knockoff": "KnockoffNets: a fresh model trained on the victim's outputs for queries from the substitute set",
    "removalnet": "RemovalNet, the paper's attack (its tables call it \"Ours\"): it moves the victim's "
                  "internal representations (latent level, Alg. 1) and outputs (logit level, Alg. 2) away from "
                  "the fingerprint while keeping its behaviour on the substitute set",
}


def _attack_line(name: str) -> str:
    if name in ATTACK_NAMES:
        return ATTACK_NAMES[name]
    try:
        doc = (attack_class(name).__doc__ or "").strip().splitlines()
    except Exception:  # an attack this installation does not know: its name alone
        doc = []
    return doc[0].rstrip(".") if doc else name


def _rule_line(td: TableData) -> str:
    name = td.rule.name
    if name == "minmax":
        how = ("the most copy-like value among the reference models (the largest similarity or the smallest "
               "distance): a suspect is a copy only when it is more copy-like than every independent model")
    elif name == "normal":
        how = "the references' mean minus (distance) or plus (similarity) k standard deviations"
    else:
        how = "a percentile of the references' values, moved by a margin"
    n = min((len(v) for v in td.references.values()), default=0)
    return (f"τ: the threshold of each metric, from {n} independently trained reference models by the rule "
            f"`{td.rule.describe()}`: {how}. With n reference models no false-positive rate below 1/(n+1) = "
            f"{1 / (n + 1):.0%} can be claimed.") if n else "τ: no reference models, so no thresholds or verdicts."


def departures(td: TableData) -> list[str]:
    """One phrase per verifier whose settings in the run differ from its defaults (its authors' official
    values, see docs/verifiers.md): "deepjudge m=2 (default 3), ..."."""
    out = []
    for name, params in (td.spec.get("verifiers") or {}).items():
        if name not in list_verifiers() or not isinstance(params, dict):
            continue
        spec = verifier_class(name).param_spec()
        diff = [f"{k}={v!r} (default {spec[k].default!r})" for k, v in params.items()
                if k in spec and v != spec[k].default and k not in getattr(verifier_class(name), "runtime_params", ())]
        if diff:
            out.append(f"{name} " + ", ".join(diff))
    return out


def legend(td: TableData) -> list[str]:
    """One line per thing a reader meets in Table 1 (plain text, Markdown-safe)."""
    by_name: dict[str, list[str]] = {}
    for a in td.spec.get("attacks", []):
        if isinstance(a, dict) and a.get("name"):
            by_name.setdefault(a["name"], []).append(str(a.get("label", a["name"])))
    attacks = [f"{', '.join(labels)}: {_attack_line(name)}" for name, labels in by_name.items()]
    lines = [
        "Rows: one removal attack each, applied to the victim (the protected model) on every seed; "
        + "; ".join(attacks) + "." if attacks else "Rows: one removal attack each, applied to the victim.",
        "S_LTD / S_LSD: the attacker's substitute data: a part of the victim's own training data (S_LTD, "
        "limited training data) or data of the same task the victim never saw (S_LSD, limited substitute data).",
        "Negative: models trained independently of the victim. They are not copies: a metric that calls one a "
        "copy has made a false positive.",
        "Fidelity (%): the attacked model's test accuracy, mean ± standard deviation over seeds; Drop: the "
        "victim's accuracy minus that mean, in points (what the attack cost the thief).",
        "Metric columns: each verifier's measurement of the attacked model against the victim, mean ± std over "
        "seeds. A distance (DeepJudge, ZEST, SAC) is low for a copy; a similarity (ModelDiff, IPGuard) is high. "
        "The arrow is the direction the attacker wants: ↑ a distance pushed up, ↓ a similarity pushed down.",
        _rule_line(td),
        "A value is a copy when a distance is below τ or a similarity above it. Ownership?: for each seed, the "
        f"majority of the voting metrics ({', '.join(td.pool) or 'none'}; the metrics of the paper's Table 1) "
        "must say copy; 'Yes (k/n)' when more than half of the n seeds are owned. The other metrics are shown "
        "beside them and do not vote.",
    ]
    changed = departures(td)
    if changed:
        lines.append("Verifier settings that differ from the authors' defaults in this run: " + "; ".join(changed)
                     + ".")
    lines += [str(n) for n in td.spec.get("notes") or []]
    if td.degenerate:
        lines.append("degenerate: the metric carries no evidence in this run (e.g. DeepJudge reached no test "
                     "case, or τ is 0 so no distance can be below it); it is shown, never judged.")
    if any(r.get("collapsed") for r in td.rows):
        lines.append(f"collapsed: the attack lost more than {td.margin:g} accuracy points; a useless model is "
                     "never counted as an evasion.")
    return lines


def limitations(td: TableData, low: float = 0.5) -> dict[str, str]:
    """Metric -> a sentence, for each metric that detects at most ``low`` of the baseline rows' seeds (FT, WP,
    Distill: models that reuse the victim's parameters) at the table's rule: at this run's size it cannot tell
    a fine-tuned copy from an independent model, whatever it says about the other attacks."""
    det = (td.rules.get(td.rule.name) or {}).get("baseline_detection_rate") or {}
    out = {}
    for m in td.metrics:
        rate = det.get(m)
        if rate is not None and rate <= low:
            out[m] = (f"{m} calls only {rate:.0%} of the fine-tuned, pruned and distilled copies a copy here: at "
                      "this run's size it does not tell a copy from an independent model, so its verdicts on "
                      "the other attacks are no evidence either way.")
    return out
