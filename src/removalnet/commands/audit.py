"""``removalnet audit``: the owner's one command. Around the user's trained model (``--model REF --weights FILE
--data DATA``) it builds a grid (FT, WP, Distill, KnockoffNets, RemovalNet, removalnet-plus and its permute-only
setting, on S_LTD and, with ``--lsd-data``, S_LSD), runs it on the experiment runner (resumable, progress bar),
and writes a report card (Markdown to stdout and RUN/report-card.md, HTML to RUN/report-card.html): per
verifier metric its false positives with their 95% bound, its detection rate per attack, the accuracy an
attacker pays to evade it, and a plain verdict (``removalnet.report.card``). A metric is recommended only when its
false-positive rate is below ``--max-fpr`` at 95% confidence, which takes at least 59 independent models at 5%
(docs/confidence.md): the quick budget (3 references) withholds advice and says so; standard and paper train 59."""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any

from ..params import Option
from ..utils import RemovalNetError, atomic_write_bytes
from ._modelref import split_after

NAME = "audit"
HELP = "audit your own trained model: run the removal attacks against it and grade every verifier"

#: ``removalnet.report.card.DEFAULT_MARGIN``, spelled here so that the parser needs no torch
#: (tests/test_cli_imports.py checks that the two agree)
DEFAULT_MARGIN = 10.0

#: ``removalnet.report.card.DEFAULT_MAX_FPR``, spelled here for the same reason
DEFAULT_MAX_FPR = 0.05

#: what each budget runs: seeds per attack, reference models trained when none are given (their recipe),
#: attack iterations, substitute-set fraction of the training set, verifier test cases and verifier settings.
#: standard and paper train 59 references: with none called a copy, 59 bound a metric's false-positive rate
#: below 5% at 95% confidence (1 - 0.05^(1/59) = 4.95%); fewer cannot support a recommendation at 5%, and the
#: references are then most of the budget's cost (59 trainings of the victim's recipe)
BUDGETS: dict[str, dict[str, Any]] = {
    "quick": {"seeds": 1, "references": 3, "train": {"iterations": 300, "batch_size": 64, "lr": 0.05},
              "iterations": 150, "batch_size": 64, "fraction": 0.1, "verifier_count": 200,
              "verifiers": {"deepjudge": {"num_seeds": 50, "max_iters": 50}, "ipguard": {"num_points": 50, "max_iter": 100},
                            "modeldiff": {"num_pairs": 20, "iterations": 50}, "sac": {"num_samples": 50},
                            "zest": {"num_images": 32, "num_masks": 200}}},
    "standard": {"seeds": 3, "references": 59, "train": {"epochs": 10, "batch_size": 128, "lr": 0.05},
                 "iterations": 1000, "batch_size": 128, "fraction": 0.1, "verifier_count": 1000,
                 "verifiers": {"deepjudge": {}, "ipguard": {}, "modeldiff": {}, "sac": {}, "zest": {}}},
    "paper": {"seeds": 10, "references": 59, "train": {"epochs": 30, "batch_size": 128, "lr": 0.05},
              "iterations": 1000, "batch_size": 128, "fraction": 0.1, "verifier_count": None,
              "verifiers": {"deepjudge": {}, "ipguard": {}, "modeldiff": {}, "sac": {}, "zest": {}}},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="REF",
                   help="your model: path/to/file.py:Factory, package.module:factory, torchvision:NAME, timm:NAME "
                        "or a registered name")
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="your trained weights: a state dict (.pt/.pth, read with weights_only=True), .safetensors, "
                        "or 'pretrained' for timm:NAME")
    p.add_argument("--data", required=True, metavar="DATA", help="your data: folder:PATH, npz:PATH or a dataset name")
    p.add_argument("--split-after", default=None, metavar="A,B,C", help="split points of --model")
    p.add_argument("--normalize", choices=("none", "data"), default=None,
                   help="input normalisation your model applies (default none: it sees images in [0, 1])")
    refs = p.add_mutually_exclusive_group()
    refs.add_argument("--references", nargs="+", default=None, metavar="FILE",
                      help="independently trained models of your architecture (weights files): the thresholds")
    refs.add_argument("--train-references", type=int, default=None, metavar="N",
                      help="train N reference models from --model here (default: the budget's number)")
    p.add_argument("--lsd-data", default=None, metavar="DATA",
                   help="another dataset of the same task: the attacks also run on it (S_LSD)")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="quick",
                   help="quick (minutes on a CPU for a LeNet on MNIST), standard, paper (docs/guide/audit.md)")
    p.add_argument("--margin", type=Option(float, low=0, high=100), default=DEFAULT_MARGIN,
                   help=f"accuracy points an attack may lose before it counts as collapsed (default {DEFAULT_MARGIN:g})")
    p.add_argument("--max-fpr", type=float, default=DEFAULT_MAX_FPR,
                   help=f"recommend a metric only when its false-positive rate is below this at 95%% confidence "
                        f"(default {DEFAULT_MAX_FPR:g}: needs >= 59 independent models)")
    p.add_argument("--out", default=None, help="run folder (default runs/audit-<weights name>); rerun to resume")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--address", default=None, help="Ray cluster address")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dry-run", action="store_true", help="list the jobs without running them")


def _attacks(b: dict[str, Any], scenario: str, source: str | None) -> list[dict[str, Any]]:
    it, bs = b["iterations"], b["batch_size"]
    tag = "S_LTD" if scenario == "ltd" else "S_LSD"
    rows = [("ft", "FT(0.5)", {"ratio": 0.5}), ("wp", "WP(0.5)", {"ratio": 0.5}), ("distill", "Distill", {}),
            ("knockoff", "KnockoffNets", {}), ("removalnet", "RemovalNet", {}),
            ("removalnet-plus", "removalnet-plus", {}), ("removalnet-plus", "permute-only", {"iterations": 0})]
    out = []
    for name, label, params in rows:
        row = {"name": name, "label": f"{label} {tag}", "scenario": scenario, "fraction": b["fraction"],
               "params": {"iterations": it, "batch_size": bs, **params}}
        if name == "removalnet-plus":
            row["params"].pop("batch_size")
            row["params"].setdefault("iterations", it)
        if source:
            row["source"] = source
        out.append(row)
    return out


def build_audit_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec (as a mapping) of an audit: the user's model as the victim, references given or trained."""
    b = copy.deepcopy(BUDGETS[args.budget])
    if args.weights != "pretrained" and not Path(args.weights).is_file():
        raise RemovalNetError(f"--weights: file {args.weights!r} does not exist")
    stem = "pretrained" if args.weights == "pretrained" else Path(args.weights).stem
    victim: dict[str, Any] = {"model": args.model, "weights": args.weights, "train": b["train"]}
    if split_after(args):
        victim["split_after"] = split_after(args)
    if args.normalize:
        victim["normalize"] = args.normalize
    if args.references:
        refs: dict[str, Any] = {"checkpoints": list(args.references)}
    else:
        n = b["references"] if args.train_references is None else args.train_references
        if n < 2:
            raise RemovalNetError("--train-references: at least 2 reference models are needed (leave-one-out)")
        refs = {"count": n}
    attacks = _attacks(b, "ltd", None) + (_attacks(b, "lsd", args.lsd_data) if args.lsd_data else [])
    return {"name": f"audit-{stem}", "dataset": args.data, "seeds": b["seeds"], "victim": victim,
            "references": refs, "negatives": {"count": 0}, "verifier_count": b["verifier_count"],
            "attacks": attacks, "verifiers": b["verifiers"], "device": args.device}


#: the keys of the spec an audit builds (their messages start ``spec: KEY:``), as the audit's options
_OPTIONS = ((r"victim\.weights", "--weights"), (r"victim\.(?:model|arch)", "--model"),
            (r"victim\.split_after", "--split-after"), (r"victim\.normalize", "--normalize"),
            (r"references\.checkpoints\[(\d+)\]", "--references"), (r"dataset", "--data"),
            (r"attacks\[\d+\]\.source", "--lsd-data"))


def _in_audit_terms(e: RemovalNetError, budget: str) -> RemovalNetError:
    """``spec: victim.weights: ...`` -> ``--weights: ...``; a key of the grid itself names the budget."""
    m = re.match(r"spec: (\S+?): (.*)", str(e), re.S)
    if not m:
        return e
    key, message = m.groups()
    for pattern, option in _OPTIONS:
        k = re.fullmatch(pattern, key)
        if k:
            return RemovalNetError(f"{option}{f' (file {int(k[1]) + 1})' if k.groups() else ''}: {message}")
    return RemovalNetError(f"--budget {budget} ({key} of its grid): {message}")


def run(args: argparse.Namespace) -> int:
    from ..experiment import make_executor, run_experiment, spec_from_dict  # lazy: keeps torch off the CLI's start
    from ..report.card import build_card, card_html, card_markdown  # lazy: keeps torch off the CLI's start
    if args.references is not None and len(args.references) < 2:
        raise RemovalNetError("--references: give at least 2 models (thresholds and leave-one-out need them)")
    if not 0 < args.max_fpr < 1:   # also NaN
        raise RemovalNetError(f"--max-fpr: a rate in (0, 1), got {args.max_fpr!r}")
    raw = build_audit_spec(args)
    try:   # the grid's checks speak of the spec it is run as: say it in the audit's options
        spec = spec_from_dict(raw)
        out = Path(args.out) if args.out else Path("runs") / spec.name
        executor = None if args.dry_run else make_executor(args.executor, args.address)
        s = run_experiment(spec, out, executor=executor, dry_run=args.dry_run, progress=not args.quiet)
    except RemovalNetError as e:
        raise _in_audit_terms(e, args.budget) from None
    if args.dry_run:
        return 0
    print(f"{out}: {s.planned} jobs, {s.skipped_done} already done, {s.ran} ran, {len(s.failed)} failed",
          file=sys.stderr)
    settings = {"model": args.model, "weights": args.weights, "data": args.data, "budget": args.budget,
                "lsd data": args.lsd_data, "references": ("given: " + ", ".join(args.references)) if args.references
                else f"{spec.references.count} trained here", "attacks": ", ".join(a.label for a in spec.attacks),
                "iterations per attack": BUDGETS[args.budget]["iterations"],
                "substitute set": f"{BUDGETS[args.budget]['fraction']:g} of the training set"}
    rerun = (f"`removalnet audit --model {args.model} --weights {args.weights} --data {args.data} --budget "
             f"{args.budget} --train-references {{n}}`, or give `--references` with {{n}} independently trained models")
    card = build_card(out, margin=args.margin, settings=settings, max_fpr=args.max_fpr, command=rerun)
    md = card_markdown(card)
    atomic_write_bytes(out / "report-card.md", md.encode())
    atomic_write_bytes(out / "report-card.html", card_html(card).encode())
    print(md, end="")
    print(f"wrote {out / 'report-card.md'} and {out / 'report-card.html'}", file=sys.stderr)
    return 0 if s.ok else 1
