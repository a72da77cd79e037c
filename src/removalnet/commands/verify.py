"""``removalnet verify``: measure suspects against a victim with the ownership verifiers.

The fingerprint data D_fp is the verifier's own: the TEST split of the victim's dataset (the ``dataset``
key of the victim's sidecar, or ``--data``), never an attacker's substitute set. Each verifier extracts
its fingerprint once (stored under ``--fp-cache DIR`` when given, and reused by later runs; the three
DeepJudge verifiers share one test generation); every suspect is then scored with every chosen verifier.
ModelDiff's profiling inputs are searched for each (victim, suspect) pair when that suspect is scored (also
stored under ``--fp-cache``). With
``--references`` (independently trained models), each metric's threshold tau is calibrated from them
(paper section 4.1.4, ``--rule``) and every value gets a verdict: "copy" when a distance < tau or a similarity > tau,
beside its p-values against the references (empirical, never below 1/(n+1), and Student-t; docs/confidence.md) and a
verdict combined over the metrics with Holm's adjustment, shown beside the metrics' majority vote.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from typing import Any

import yaml

from ..params import Option
from ._modelref import add_model_options, load_model, victim_file
from ..utils import RemovalNetError, resolve_device, weights_hash
from ._listing import add_list_option, listing
from .report import RULES, add_rule_parameters, rule_from_args

NAME = "verify"
HELP = "score suspect models against a victim with the ownership verifiers (DeepJudge, ZEST, ModelDiff, ...)"

log = logging.getLogger("removalnet")

#: ``removalnet.verify.MIN_REFERENCES``, spelled here so that the parser needs no torch
#: (tests/test_cli_imports.py checks that the two agree)
MIN_REFERENCES = 5


def verifier_listing() -> str:
    """Every registered verifier with its one-line doc and its parameters (``verify --list``)."""
    from ..verify import list_verifiers, verifier_class  # lazy: keeps torch off the CLI's start
    return listing("verifier", [(n, verifier_class(n), verifier_class(n).param_spec()) for n in list_verifiers()])


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_list_option(p, "verifier", verifier_listing)
    p.add_argument("--victim", default=None, metavar="CKPT",
                   help="victim checkpoint (.safetensors with sidecar), or a state dict with --model REF")
    p.add_argument("--suspect", required=True, action="extend", nargs="+", metavar="CKPT",
                   help="suspect checkpoint(s); repeatable")
    p.add_argument("--verifier", action="extend", nargs="+", metavar="NAME", default=None,
                   help="verifier(s) to run (default: every registered one; --list shows them)")
    p.add_argument("--references", nargs="+", default=[], metavar="CKPT",
                   help=f"independently trained reference models for the thresholds (>= {MIN_REFERENCES} recommended)")
    p.add_argument("--rule", choices=RULES, default=None,
                   help="threshold rule: minmax (the paper, default), normal (mean -/+ k std) or percentile")
    add_rule_parameters(p)
    p.add_argument("--data", default=None, metavar="DATASET",
                   help="fingerprint data: this dataset's test split (default: the victim's dataset)")
    p.add_argument("--data-root", default=None, help="where the dataset's files are, if not the default place")
    p.add_argument("--param", action="append", default=[], metavar="VERIFIER.KEY=VALUE",
                   help="verifier parameter (value parsed as YAML), repeatable; e.g. --param deepjudge.max_iters=200")
    p.add_argument("--fp-cache", default=None, metavar="DIR", help="store and reuse fingerprints in DIR")
    p.add_argument("--seed", type=Option(int, low=0), default=0, help="seed of the fingerprint extraction")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    add_model_options(p, weights_help="the victim's weights (same as --victim)")


def _parse_params(items: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for item in items:
        key, sep, value = item.partition("=")
        vname, dot, pname = key.partition(".")
        if not sep or not dot or not vname or not pname:
            raise RemovalNetError(f"--param {item!r}: expected VERIFIER.KEY=VALUE, e.g. deepjudge.max_iters=200")
        if vname not in out:
            raise RemovalNetError(f"--param {item!r}: verifier {vname!r} is not among those run ({', '.join(names)})")
        try:
            out[vname][pname] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise RemovalNetError(f"--param {item!r}: cannot parse the value ({str(e).splitlines()[0]})") from e
    return out


def run(args: argparse.Namespace) -> int:
    from ..data import load_dataset  # lazy: keeps torch off the CLI's start
    from ..guards import check_accuracy, check_comparable, require_finite  # lazy: keeps torch off the CLI's start
    from ..models import NotSplittableError  # lazy: keeps torch off the CLI's start
    from ..verify import (FingerprintCache, calibrate_models, create_verifier, list_verifiers, score_model,  # lazy: keeps torch off the CLI's start
                          verdict)
    device = resolve_device(args.device)
    names = list(dict.fromkeys(args.verifier or list_verifiers()))
    if not names:
        raise RemovalNetError("no verifier is available")
    params = _parse_params(args.param, names)
    verifiers = [create_verifier(n, **params[n]) for n in names]
    rule = rule_from_args(args, default="minmax")   # validated before any work
    metrics = [m for v in verifiers for m in v.metrics]

    victim, vmeta = load_model(victim_file(args), args, data=args.data, device=device)
    dataset = args.data or vmeta.get("dataset")
    if not dataset:
        raise RemovalNetError("the victim's sidecar names no dataset: give the fingerprint data with --data")
    data = load_dataset(dataset, "test", args.data_root, in_chans=vmeta.get("in_chans"),
                        input_size=vmeta.get("input_size"))
    # every model is loaded and checked before any fingerprint or metric: comparable with the victim, finite
    refs = [(f"reference {i} ({path})", *load_model(path, args, data=args.data, device=device))
            for i, path in enumerate(args.references, 1)]
    susp = [(f"suspect {path}", *load_model(path, args, data=args.data, device=device)) for path in args.suspect]
    require_finite(victim, data, f"the victim ({victim_file(args)})", device=device)
    check_accuracy(victim, data, f"the victim ({victim_file(args)})", device=device)
    for name, model, meta in refs + susp:
        check_comparable(vmeta, meta, what=f"the {name}")
        require_finite(model, data, f"the {name}", device=device)
    # without --fp-cache, in memory: the DeepJudge verifiers still share one test generation
    cache = FingerprintCache(args.fp_cache or None)
    fps, extract_info, skipped = {}, {}, {}
    from tqdm import tqdm
    # one bar over the whole command: each verifier's fingerprint, then each (model, verifier) score
    bar = tqdm(total=len(verifiers) * (1 + len(refs) + len(susp)), desc="verify", unit="step",
               disable=args.quiet, dynamic_ncols=True, leave=False)
    for v in verifiers:
        t0 = time.perf_counter()
        bar.set_postfix_str(f"fingerprint {v.name}")
        try:
            fp = cache.get_or_extract(v, victim, data, seed=args.seed, device=device)
        except NotSplittableError as e:  # a white-box verifier on a model without split layers
            skipped[v.name] = f"{v.name} cannot run: {e}"
            bar.clear()
            print(f"warning: {skipped[v.name]}", file=sys.stderr)
            bar.total -= len(refs) + len(susp)
            bar.update(1)
            continue
        bar.update(1)
        fps[v.name] = fp
        extract_info[v.name] = {"key": fp.key, "params": fp.params, "seconds": round(time.perf_counter() - t0, 3),
                                "meta": {k: val for k, val in fp.meta.items() if k != "versions"}}
        bar.clear()
        log.info(f"{v.name}: fingerprint {fp.key[:12]} ready in {time.perf_counter() - t0:.1f}s")

    verifiers = [v for v in verifiers if v.name not in skipped]
    metrics = [m for v in verifiers for m in v.metrics]
    if not verifiers:
        raise RemovalNetError(next(iter(skipped.values())))

    # metrics a fingerprint declares degenerate (e.g. DeepJudge's RobD/JSD without a fooling example) carry no
    # evidence: no value, no threshold, no verdict, an error row
    degenerate = {m: f"degenerate fingerprint ({v.name}: see its meta)" for v in verifiers
                  for m in fps[v.name].meta.get("degenerate", [])}
    for m in degenerate:
        print(f"warning: {m} is degenerate for this victim (no test case): it is not judged", file=sys.stderr)

    def paired(model) -> dict:
        """The fingerprints to score ``model`` with: per-suspect ones (ModelDiff) paired through the cache."""
        return {v.name: (cache.get_or_extract(v, victim, data, seed=args.seed, device=device, suspect=model)
                         if v.per_suspect else fps[v.name]) for v in verifiers}

    def step(what: str):
        """A progress callback: one (model, verifier) score done; the bar names what comes next."""
        def done(name: str) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{what}: after {name}")
        return done

    def score_all(model, what: str) -> tuple[dict[str, float], dict[str, str]]:
        errors: dict[str, str] = {}
        bar.set_postfix_str(f"scoring {what}")
        return score_model(verifiers, paired(model), victim, model, device=device, errors=errors,
                           progress=step(what)), errors

    taus: dict[str, float] = {}
    ref_values: dict[str, list[float]] = {m.name: [] for m in metrics}
    if args.references:
        if len(args.references) < MIN_REFERENCES:
            print(f"warning: thresholds from {len(args.references)} reference model(s); at least {MIN_REFERENCES} "
                  "independently trained models are recommended", file=sys.stderr)
        ref_models = [model for _, model, _ in refs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warned above
            try:  # the same calibration as everywhere: every reference scored by every verifier, then the rule
                bar.set_postfix_str("scoring the references")
                taus, ref_values = calibrate_models(verifiers, fps, victim, ref_models, rule=rule, device=device,
                                                    exclude=degenerate, fingerprints_for=paired,
                                                    progress=step("references"))
            except RemovalNetError as e:
                raise RemovalNetError(f"references: {e}") from None

    suspects = []
    for path, (_, model, _) in zip(args.suspect, susp):
        values, errors = score_all(model, f"suspect {path}")
        rows = {}
        for m in metrics:
            row: dict[str, Any] = {"direction": m.direction, "value": values.get(m.name),
                                   "tau": taus.get(m.name), "copy": None}
            if m.name in errors or m.name in degenerate:
                row["error"] = errors.get(m.name) or degenerate[m.name]
            elif m.name in taus:
                row["copy"] = verdict(m, values[m.name], taus[m.name])
                row.update(_pvalues(values[m.name], ref_values[m.name], m.direction))
            rows[m.name] = row
        judged = [r["copy"] for r in rows.values() if r["copy"] is not None]
        suspects.append({"path": str(path), "weights_hash": weights_hash(model), "metrics": rows,
                         "copy_votes": sum(judged), "judged": len(judged), "combined": _combined(rows)})

    bar.close()
    result = {"victim": str(args.victim), "victim_hash": weights_hash(victim), "data": f"{dataset}:test",
              "data_size": len(data), "seed": args.seed, "rule": rule.name if taus else None,
              "threshold_rule": rule.to_dict() if taus else None,
              "references": list(args.references), "reference_values": ref_values if taus else {},
              "taus": taus, "fingerprints": extract_info, "suspects": suspects, "skipped": skipped}
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, allow_nan=True))
    else:
        print(_table(result, metrics))
    return 0


#: the family-wise false-positive rate of the combined verdict
ALPHA = 0.05


def _pvalues(value: float, refs: list[float], direction: str) -> dict[str, Any]:
    """The p-values of one verdict: empirical (floor 1/(n+1)) and Student-t (None where it cannot be computed)."""
    from ..verify.confidence import empirical_pvalue, parametric_pvalue, pvalue_floor  # lazy: keeps torch off the CLI's start
    par = parametric_pvalue(value, refs, direction)
    return {"p_empirical": empirical_pvalue(value, refs, direction), "p_floor": pvalue_floor(len(refs)),
            "p_parametric": par.p, "p_parametric_log": par.log,
            "p_parametric_note": par.note or None}


def _combined(rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Holm's combined verdict over the judged metrics, on the empirical p-values and (where every metric has
    one) on the Student-t ones."""
    from ..verify.confidence import combined_verdict  # lazy: keeps torch off the CLI's start
    judged = {m: r for m, r in rows.items() if r.get("p_empirical") is not None}
    if not judged:
        return None
    out: dict[str, Any] = {"method": "holm", "alpha": ALPHA}
    for kind in ("empirical", "parametric"):
        ps = {m: r[f"p_{kind}"] for m, r in judged.items()}
        if any(p is None for p in ps.values()):
            out[kind] = None
            continue
        c = combined_verdict(ps, ALPHA, "holm")
        out[kind] = {"copy": c.copy, "min_adjusted_p": min(c.adjusted.values()), "adjusted": c.adjusted}
    return out


def _params(rule: dict) -> str:
    p = {k: v for k, v in rule.items() if k != "name"}
    return f" ({', '.join(f'{k}={v:g}' for k, v in p.items())})" if p else ""


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3e}"


def _table(result: dict, metrics) -> str:
    lines = [f"victim {result['victim']}  fingerprint data {result['data']} ({result['data_size']} images)"]
    if result["taus"]:
        lines.append(f"thresholds: rule {result['rule']}{_params(result['threshold_rule'])} from {len(result['references'])} reference model(s)")
    else:
        lines.append("thresholds: none (give --references to get verdicts)")
    lines += [f"skipped: {why}" for why in result.get("skipped", {}).values()]
    header = f"{'metric':<10} {'direction':<10} {'value':>11} {'tau':>11} {'p (emp.)':>9} {'p (t)':>9}  verdict"
    for s in result["suspects"]:
        lines += ["", f"suspect {s['path']}", header, "-" * len(header)]
        for name, r in s["metrics"].items():
            if "error" in r:
                lines.append(f"{name:<10} {r['direction']:<10} {'n/a':>11} {_fmt(r['tau']):>11} {'-':>9} {'-':>9}  "
                             f"error: {r['error']}")
                continue
            v = "-" if r["copy"] is None else ("copy" if r["copy"] else "not a copy")
            pe, pt = _p(r.get("p_empirical")), _p(r.get("p_parametric")) + ("*" if r.get("p_parametric_note") else "")
            lines.append(f"{name:<10} {r['direction']:<10} {_fmt(r['value']):>11} {_fmt(r['tau']):>11} {pe:>9} "
                         f"{pt:>9}  {v}")
        if s["judged"]:
            lines.append(f"=> judged a copy by {s['copy_votes']}/{s['judged']} metrics (majority vote: "
                         f"{'copy' if s['copy_votes'] > s['judged'] / 2 else 'not a copy'})")
            lines += _combined_lines(s["combined"], len(result["references"]))
            notes = sorted({f"{m}: {r['p_parametric_note']}" for m, r in s["metrics"].items()
                            if r.get("p_parametric_note")})
            if notes:
                lines.append("* Student-t p-value doubtful: " + "; ".join(notes))
    return "\n".join(lines)


def _p(p: float | None) -> str:
    return "-" if p is None else (f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}")


def _combined_lines(c: dict[str, Any] | None, n_refs: int) -> list[str]:
    from ..verify.confidence import pvalue_floor, references_needed  # lazy: keeps torch off the CLI's start
    if not c:
        return []
    out = []
    for kind, what in (("empirical", "empirical p-values"), ("parametric", "Student-t p-values")):
        r = c.get(kind)
        if r is None:
            out.append(f"=> Holm-combined on {what}: not computed (a metric has none)")
            continue
        verdict_txt = "copy" if r["copy"] else "not a copy"
        out.append(f"=> Holm-combined on {what} (family-wise alpha {c['alpha']:g}): {verdict_txt} "
                   f"(smallest adjusted p {_p(r['min_adjusted_p'])})")
    if n_refs and pvalue_floor(n_refs) > c["alpha"]:
        out.append(f"   with {n_refs} references no empirical p-value goes below 1/{n_refs + 1} = "
                   f"{pvalue_floor(n_refs):.3f}: a claim at {c['alpha']:g} needs >= "
                   f"{references_needed(c['alpha'])} independent models")
    return out
