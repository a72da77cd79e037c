"""Generate the tables and number-bearing summary lines of docs/findings.md from benchmarks/results/.

    python benchmarks/findings.py            # rewrite every generated block of docs/findings.md
    python benchmarks/findings.py --check    # exit 1, naming the first stale block, when one differs
    python benchmarks/findings.py --unmatched   # list the numbers of the prose found in no results file

A generated block sits between ``<!-- generated: NAME (from benchmarks/results/FILE, ...) -->`` and
``<!-- end generated -->``; everything outside the markers is prose and left alone. Every block of BLOCKS must
appear exactly once. The removal benchmark's blocks read its json; Table 1, the DeepJudge reach verdicts and
the studies are read from their Markdown tables (table1.py and studies.py write no json) and from the
checkpoint line of each Table 1 file's notes. Standard library only: the check runs in CI without torch.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "findings.md"
ARCHS = ("vgg_small", "resnet_small")
BEGIN = re.compile(r"^<!-- generated: (?P<name>[\w.-]+) \(from (?P<src>[^)]*)\) -->$")
END = "<!-- end generated -->"
BASELINES = ("FT(0.5)", "FT(0.8)", "WP(0.5)", "WP(0.8)", "Distill")


class FindingsError(Exception):
    """A results file or the document is not what the generator expects."""


# ---------------------------------------------------------------- reading the results files

def _read(results: Path, name: str) -> str:
    path = results / name
    if not path.is_file():
        raise FindingsError(f"missing results file {path}")
    return path.read_text(encoding="utf-8")


def _json(results: Path, name: str) -> dict:
    try:
        return json.loads(_read(results, name))
    except json.JSONDecodeError as e:
        raise FindingsError(f"{name} is not valid JSON ({e.msg}, line {e.lineno})") from None


def md_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Every Markdown table of ``text`` as a list of row dicts, keyed by the nearest heading above it (a heading
    holding several tables gets ' #2', ' #3' ...)."""
    out: dict[str, list[dict[str, str]]] = {}
    heading, lines = "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-| :]+\|$", lines[i + 1]):
            cols = [c.strip() for c in line.strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip("|").split("|")]
                rows.append(dict(zip(cols, cells)))
                i += 1
            key, k = heading, 2
            while key in out:
                key, k = f"{heading} #{k}", k + 1
            out[key] = rows
            continue
        i += 1
    return out


def _table(tables: dict, heading: str, source: str) -> list[dict[str, str]]:
    for key, rows in tables.items():
        if key.startswith(heading):
            return rows
    raise FindingsError(f"{source}: no table under a heading starting {heading!r}")


def _row(rows: list[dict], first: str, value: str, source: str) -> dict[str, str]:
    for r in rows:
        if r.get(first) == value:
            return r
    raise FindingsError(f"{source}: no row {value!r}")


def _mean(cell: str) -> str:
    return cell.split("±")[0]


def _table_md(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in rows])


def _join(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


# ---------------------------------------------------------------- blocks

def _models_line(text: str, src: str) -> str:
    m = re.search(r"^- models: (\S+) (\{[^}]*\})", text, re.M)
    if not m:
        raise FindingsError(f"{src}: no '- models:' line")
    return f"{m.group(1)} {m.group(2)}"


def table1(results: Path, arch: str, stem: str | None = None) -> list[str]:
    src = f"{stem or 'table1-' + arch}.md"
    tables = md_tables(_read(results, src))
    main = _table(tables, "Table 1:", src)
    seeds = _table(tables, "Seeds judged a copy", src)
    text = _read(results, src)
    victim = re.search(r"victim accuracy ([\d.]+)%", text)
    vote = re.search(r"the majority of ([^.]+) say copy", text)
    if not victim or not vote:
        raise FindingsError(f"{src}: no victim accuracy or vote line")
    metrics = [c for c in seeds[0] if c != "Attack"]
    live = [m for m in metrics if seeds[0][m] != "degenerate"]
    rows = []
    for r in main:
        if r["Attack"] == "τ":
            continue
        s = _row(seeds, "Attack", r["Attack"], src)
        n = s[live[0]].split("/")[1]
        every = [m for m in live if s[m] == f"{n}/{n}"]
        none = [m for m in live if s[m] == f"0/{n}"]
        some = [f"{m} {s[m]}" for m in live if m not in every and m not in none]
        rows.append([r["Attack"], r["Fidelity (%)"], r["Drop"], r["Ownership?"], _join(every), _join(some),
                     _join(none)])
    dead = [m.split(" (")[0] for m in metrics if m not in live]
    tau = _row(main, "Attack", "τ", src)
    md = {r["Attack"]: _mean(r["MD-DDV (↓)"]) for r in main if r["Attack"] != "τ"}
    n_seeds = _row(seeds, "Attack", main[0]["Attack"], src)[live[0]].split("/")[1]
    return ([f"{arch}: victim accuracy {victim.group(1)}%, {n_seeds} seeds, tau by the min/max rule over 5 reference "
             f"models; the vote is the majority of {vote.group(1)}; degenerate (no evidence): {_join(dead)}.", ""]
            + _table_md(["attack", "fidelity (%)", "drop (pts)", "ownership (vote)", "copy in every seed by",
                         "copy in some seeds", "copy in no seed by"], rows)
            + ["", "MD-DDV (similarity, higher = more alike): "
               + ", ".join(f"{k} {v}" for k, v in md.items()) + f"; tau {tau['MD-DDV (↓)']}."])


def proxy_vs_paper(results: Path, arch: str) -> list[str]:
    """What changed between the width-8 / 1% proxy and the paper's protocol (width 16, 10%): per attack the
    accuracy drop, the ownership vote and every metric whose count of seeds judged a copy moved."""
    srcs = (f"table1-{arch}.md", f"table1-{arch}-paper.md")
    texts = [_read(results, s) for s in srcs]
    mains = [_table(md_tables(t), "Table 1:", s) for t, s in zip(texts, srcs)]
    seeds = [_table(md_tables(t), "Seeds judged a copy", s) for t, s in zip(texts, srcs)]
    acc = [re.search(r"victim accuracy ([\d.]+)%", t) for t in texts]
    if not all(acc):
        raise FindingsError(f"{srcs}: no victim accuracy line")
    models = [_models_line(t, s) for t, s in zip(texts, srcs)]
    def same(label: str) -> str:          # the proxy tables name RemovalNet's rows Ours(...)
        return label.replace("Ours(", "RemovalNet(")
    for t in (*mains, *seeds):
        for r in t:
            r["Attack"] = same(r["Attack"])
    rows = []
    for r in mains[1]:
        if r["Attack"] == "τ" or r["Attack"] not in {x["Attack"] for x in mains[0]}:
            continue
        old = _row(mains[0], "Attack", r["Attack"], srcs[0])
        s0, s1 = ({k.split(" (")[0]: v for k, v in _row(t, "Attack", r["Attack"], src).items()}
                  for t, src in zip(seeds, srcs))             # "DJ-RobD (degenerate: excluded)" -> "DJ-RobD"
        moved = [f"{m} {s0[m]} -> {s1[m]}" for m in s1 if m != "Attack" and m in s0 and s0[m] != s1[m]]
        rows.append([r["Attack"], old["Drop"], r["Drop"], old["Ownership?"], r["Ownership?"], _join(moved)])
    return ([f"{arch}: proxy {models[0]}, victim {acc[0].group(1)}%; paper protocol {models[1]}, victim "
             f"{acc[1].group(1)}%.", ""]
            + _table_md(["attack", "drop, proxy", "drop, paper", "ownership, proxy", "ownership, paper",
                         "seeds judged a copy that moved (proxy -> paper)"], rows))


def fig4(results: Path) -> list[str]:
    out = []
    for arch in ARCHS:
        src = f"table1-{arch}.md"
        text = " ".join(_read(results, src).split())
        m = re.search(r"\(S_LTD, mean of 5 seeds\)\W*(?:accuracy\s*)?(?:goes\s*)?"
                      r"([\d.]+) \(t=0\), ([\d.]+) \(100\),((?: [\d.]+(?: \(\d+\))?,)*) ([\d.]+) \(1000\)", text)
        if not m:
            raise FindingsError(f"{src}: no checkpoint line '(S_LTD, mean of 5 seeds): ... (t=0) ... (1000)'")
        mid = re.findall(r"(\d+\.\d+) \(800\)", m.group(3))
        vals = [float(x) for x in re.findall(r"\d+\.\d+", m.group(3))]
        t0, t100, t1000 = float(m.group(1)), float(m.group(2)), float(m.group(4))
        low = min([t100] + vals)
        out.append(f"- {arch}: test accuracy {t0:.2f} at t=0, {t100:.2f} at t=100, lowest {low:.2f}, "
                   + (f"{mid[0]} at t=800, " if mid else "") + f"{t1000:.2f} at t=1000: "
                   f"{t0 - low:.2f} points lost at the lowest, {t1000 - low:.2f} of them recovered by t=1000.")
    return out


def _aims(d: dict, variants: list[str], max_drop=1.5, min_seeds=4, max_cost=3.0) -> list[str]:
    s, out = d["summary"], []
    for m in [m for m in ("ZEST-L2", "ZEST-Cos", "SAC", "DJ-LAD", "DJA-LOD", "DJA-LAD", "DJS-LOD", "DJS-LAD")
              if m in d["metrics"]]:
        ok = [v for v in variants if s[v]["n"] - s[v]["copies"][m] >= min_seeds and s[v]["drop"] <= max_drop]
        out.append(f"{m}: {_join(ok)}")
    full = [v for v in variants if s[v]["evades_all"] >= min_seeds and s[v]["drop"] <= max_drop
            and s[v]["cost_vs_ft"] is not None and s[v]["cost_vs_ft"] <= max_cost]
    return [f"Evaded in >= {min_seeds} seeds at <= {max_drop} points, per metric: " + "; ".join(out)
            + f". Every metric at once (also <= {max_cost}x FT per iteration): {_join(full) if full else 'no variant'}."]


def removal(results: Path, arch: str, stem: str | None = None) -> list[str]:
    src = f"{stem or 'removal-' + arch}.json"
    d = _json(results, src)
    s, metrics = d["summary"], d["metrics"]
    rows = []
    for label, r in s.items():
        n, c = r["n"], r["copies"]
        if not n:   # every seed returned its start (failed seeds have no summary): nothing judged, no evasion
            back, broken = r.get("returned_start", 0), r.get("collapsed", 0)
            why = ([f"returned the start in {back} seeds: {r.get('reduced_to') or 'its starting point'}"] if back
                   else []) + ([f"collapsed in {broken} seeds"] if broken else [])
            rows.append([label, "0", "-", "-", "-", "-", "-", "; ".join(why), "-", "-"])
            continue
        if r.get("collapsed"):   # seeds whose surrogate lost more than the collapse margin: never judged
            label = f"{label} ({r['collapsed']} seed(s) collapsed, not judged)"
        every = [m for m in metrics if c[m] == n]
        none = [m for m in metrics if c[m] == 0]
        some = [f"{m} {c[m]}/{n}" for m in metrics if 0 < c[m] < n]
        cpu = r.get("retime", {}).get("total_cpu_s")
        trained = r.get("retime", {}).get("iterations")
        zero = sum(abs(x) < 1e-9 for x in r["drops"]) if trained else None
        rows.append([label, str(n), f"{r['drop']:.2f}", "-" if cpu is None else f"{cpu:.1f}",
                     f"{r['evaded']:.1f}/{len(metrics)}", f"{r['evades_all']}/{n}",
                     "-" if zero is None else f"{zero}/{n}", _join(none), _join(some), _join(every)])
    variants = [v for v in s if v not in ("Negative",) + BASELINES and not v.startswith(("Ours(", "RemovalNet("))]
    setting = (f" (width {d['width']}, S_LTD {100 * d['fraction']:.0f}% of the training set)" if "fraction" in d
               else "")
    return ([f"{arch}{setting}: victim accuracy {100 * d['victim_accuracy']:.2f}%; {len(metrics)} metrics with evidence "
             f"({_join(metrics)}); degenerate: {_join(d['degenerate'])}. Verdicts at tau = the closest of the 10 "
             "independent models; 'CPU s' is the `--retime` run (seed 0)"
             + ("" if any(r.get("retime") for r in s.values()) else ", not measured for this file (no `--retime` "
                "run): its cost ratios to FT are the runs' own wall times, taken with other work on the machine")
             + "; 'drop 0.00' counts the seeds of a trained variant whose returned model scores exactly the "
             "victim's accuracy.", ""]
            + _table_md(["model", "n", "drop (pts)", "CPU s", "evaded (mean)", "evades all", "drop 0.00",
                         "evaded in every seed (copy 0/n)", "copy in some seeds", "copy in every seed"], rows)
            + [""] + _aims(d, variants))


def capacity(results: Path) -> list[str]:
    """Per width of the capacity sweep: the victim, RemovalNet's and FT's drops, the vote, and which metrics
    call RemovalNet's surrogates a copy in every seed or in none, and the negatives some metric calls a copy."""
    d = _json(results, "capacity.json")
    rows = []
    for w in sorted(d["widths"], key=lambda r: r["width"]):
        victim, r = w["victim_accuracy"], w["rows"]

        def drop(label: str) -> str:
            acc = r.get(label, {}).get("accuracy")
            return f"{100 * (victim - sum(acc) / len(acc)):.2f}" if acc and victim is not None else "-"
        rn = r.get("RemovalNet(S_LTD)")
        every = [m for m in w["metrics"] if rn and rn["copies"].get(m, "").split("/")[0] == str(rn["n"])]
        none = [m for m in w["metrics"] if rn and rn["copies"].get(m, "").startswith("0/")]
        neg = r.get("Negative", {}).get("copies", {})
        fp = [f"{m} {v}" for m, v in neg.items() if not v.startswith("0/")]
        rows.append([str(w["width"]), f"{w['parameters']:,}", "-" if victim is None else f"{100 * victim:.2f}",
                     drop("RemovalNet(S_LTD)"), drop("FT(0.5)"), rn["owned"] if rn else "-",
                     r.get("FT(0.5)", {}).get("owned", "-"), _join(every) if rn else "-", _join(none) if rn else "-",
                     _join(fp), _join(w["degenerate"])])
    return _table_md(["width", "parameters", "victim (%)", "RemovalNet drop (pts)", "FT(0.5) drop (pts)",
                      "RemovalNet owned (vote)", "FT(0.5) owned (vote)", "RemovalNet a copy in every seed by",
                      "in no seed by", "negatives called a copy", "degenerate"], rows)


# component, its removal-benchmark variant, the metrics it aims at
COMPONENTS = [
    ("channel permutation (`permute: farthest`)", "permute-only", ["DJ-LOD", "DJ-NOD", "DJ-NAD"]),
    ("channel rescaling by rank (`rescale: farthest`, spread 4)", "rescale-only", ["DJA-LOD", "DJA-LAD"]),
    ("the same at spread 16", "rescale-only-16", ["DJA-LOD", "DJA-LAD"]),
    ("rescaling chosen to flip DeepJudge's activation patterns, on the attacker's images (`rescale: lad`)",
     "rescale-lad", ["DJ-LAD", "DJA-LAD"]),
    ("the same on DeepJudge-style test cases made from them (`rescale_inputs: deepjudge`, spread 16)",
     "rescale-lad-dj", ["DJ-LAD", "DJA-LAD"]),
    ("boundary shifting (`removalnet-plus` defaults)", "plus", ["IPG-MR"]),
    ("lighter boundary shifting (`boundary_weight: 0.05`)", "plus-light", ["IPG-MR"]),
    ("masking-consistency distillation on top of `plus` (`mask_mix: 0.25`)", "plus+mask", ["ZEST-L2", "ZEST-Cos"]),
    ("the same without boundary shifting, weight 0.8", "distill+mask", ["ZEST-L2", "ZEST-Cos"]),
    ("CutMix-target distillation (`cutmix_mix: 0.25`, uniform)", "plus+cutmix", ["SAC"]),
    ("all combined (`plus-adaptive`)", "plus-adaptive", []),
]


def arms_race(results: Path) -> list[str]:
    data = {a: _json(results, f"removal-{a}.json") for a in ARCHS}
    rows = []
    for text, label, aimed in COMPONENTS:
        row = [text, f"`{label}`", _join(aimed) if aimed else "every metric"]
        for a in ARCHS:
            d = data[a]
            r = d["summary"].get(label)
            if r is None:
                row += ["not run"] * 3
                continue
            n = r["n"]
            if aimed:
                ev = ", ".join(f"{m} {n - r['copies'][m]}/{n}" if m in d["metrics"] else f"{m} degenerate"
                               for m in aimed)
            else:
                ev = f"every metric {r['evades_all']}/{n}"
            caught = [m for m in d["metrics"] if r["copies"][m] == n]
            xft = r.get("cost_vs_ft")
            row += [ev, f"{r['drop']:.2f}" + ("" if xft is None else f", {xft:.1f}x"), _join(caught)]
        rows.append(row)
    head = ["component", "variant", "aimed at"] + [f"{a} {c}" for a in ARCHS for c in
                                                   ("evaded in (seeds)", "drop (pts), x FT", "caught in every seed by")]
    return _table_md(head, rows)


def cost(results: Path) -> list[str]:
    data = {a: _json(results, f"removal-{a}.json")["summary"] for a in ARCHS}
    labels = list(dict.fromkeys(k for a in ARCHS for k in data[a] if data[a][k].get("retime")))
    rows = []
    for label in labels:
        row = [label]
        for a in ARCHS:
            t = data[a].get(label, {}).get("retime")
            if not t:
                row += ["-"] * 4
                continue
            f = (lambda x, p: "-" if x is None else f"{x:.{p}f}")
            row += [f"{t['iterations']:.0f}", f(t["total_cpu_s"], 1), f(t["x_ft"], 2), f(t["x_ft_steady"], 2)]
        rows.append(row)
    head = ["model"] + [f"{a} {c}" for a in ARCHS for c in ("iterations", "CPU s", "x FT", "x FT steady")]
    return _table_md(head, rows)


def thresholds(results: Path) -> list[str]:
    rows = []
    for a in ARCHS:
        d = _json(results, f"removal-{a}.json")
        for rule, r in d["rules"].items():
            fp = [f"{m} {v:.2f}" for m, v in r["false_positive_rate"].items() if m in d["metrics"] and v > 0]
            det = [f"{m} {v:.2f}" for m, v in r["baseline_detection_rate"].items()
                   if m in d["metrics"] and v < 1]
            rows.append([a, rule, _join(fp), _join(det)])
    return _table_md(["model", "rule", "false-positive rate on the 5 negatives (metrics above 0)",
                      "detection rate of FT/WP/Distill (metrics below 1)"], rows)


def reach(results: Path) -> list[str]:
    d = _json(results, "deepjudge_reach.json")
    rows = [[r["arch"], f"{r['m']:g}", f"{r['tests_reached']}/{r['tests_tried']}",
             f"{r['channels_reached']}/{r['tested_neurons']}", "degenerate" if r["degenerate"] else "judged"]
            for r in d["rows"]]
    out = _table_md(["model", "m", "(seed, neuron) pairs reaching k", "neurons reached", "white-box metrics"],
                    rows)
    for arch, v in sorted(d["verdicts"].items()):
        every, none, mixed = [], [], []
        for label, c in v["copies"].items():
            n, ms = c["n"], [m for m in c if m != "n"]
            if all(c[m] == n for m in ms):
                every.append(label)
            elif all(c[m] == 0 for m in ms):
                none.append(label)
            else:
                mixed.append(label + " (" + ", ".join(f"{m} {c[m]}/{n}" for m in sorted(ms) if c[m]) + ")")
        out += ["", f"{arch} at m = {v['m']:g} (DJ-LOD, DJ-LAD, DJ-NOD, DJ-NAD; tau = the closest of the 10 "
                f"independent models): a copy by all four in every seed: {_join(every)}; by none in any seed: "
                f"{_join(none)}; in between: {_join(mixed)}."]
    return out


def _studies(results: Path) -> dict:
    return md_tables(_read(results, "studies.md"))


def study_efficiency(results: Path) -> list[str]:
    rows = _table(_studies(results), "Iterations and time", "studies.md")
    return _table_md(list(rows[0]), [list(r.values()) for r in rows])


def study_substitute(results: Path) -> list[str]:
    rows = _table(_studies(results), "RemovalNet against the substitute-set size", "studies.md")
    cols = ["Scenario", "Samples", "Fraction", "Fidelity (%)", "Drop", "DJ-LOD", "ZEST-L2", "ZEST-Cos", "MD-DDV",
            "IPG-MR", "Copy votes"]
    return _table_md(cols, [[_mean(r[c]) if c not in ("Copy votes",) else r[c] for c in cols] for r in rows])


def study_ablation(results: Path) -> list[str]:
    rows = _table(_studies(results), "RemovalNet against alpha", "studies.md")
    wanted = ["DJ-LOD", "DJ-LAD", "ZEST-L2", "ZEST-Cos", "MD-DDV", "IPG-MR", "SAC"]
    cols = ["Sweep", "alpha", "beta", "Fidelity (%)"] + [c for c in wanted if c in rows[0]]
    section = _read(results, "studies.md").split("## Ablation of alpha and beta", 1)[-1]
    dead = re.search(r"^- (Degenerate \(no evidence, not shown\): [^\n]*)$", section.split("\n## ", 1)[0], re.M)
    return (([dead.group(1), ""] if dead else [])
            + _table_md(cols, [[_mean(r[c]) for c in cols] for r in rows]))


def study_robustness(results: Path) -> list[str]:
    rows = _table(_studies(results), "Rob and RobD", "studies.md")
    cols = ["Method", "Rob_FV", "Rob_FS", "Rob_Neg", "RobD_FS", "RobD_Neg"]
    return _table_md(cols, [[r[c] for c in cols] for r in rows])


def study_saliency(results: Path) -> list[str]:
    m = re.search(r"^- (block \d+: mean correlation[^\n]*)$", _read(results, "studies.md"), re.M)
    if not m:
        raise FindingsError("studies.md: no LayerCAM summary line")
    return [f"LayerCAM, {m.group(1)}."]


def study_boundary(results: Path) -> list[str]:
    rows = _table(_studies(results), "Victim and surrogate outputs", "studies.md")
    return _table_md(list(rows[0]), [list(r.values()) for r in rows])


# name -> (results files it reads, function of the results folder)
BLOCKS = {
    "table1-vgg_small": (["table1-vgg_small.md"], lambda r: table1(r, "vgg_small")),
    "table1-resnet_small": (["table1-resnet_small.md"], lambda r: table1(r, "resnet_small")),
    "table1-vgg_small-paper": (["table1-vgg_small-paper.md"], lambda r: table1(r, "vgg_small", "table1-vgg_small-paper")),
    "proxy-vs-paper-vgg_small": (["table1-vgg_small.md", "table1-vgg_small-paper.md"],
                                 lambda r: proxy_vs_paper(r, "vgg_small")),
    "table1-resnet_small-paper": (["table1-resnet_small-paper.md"],
                                  lambda r: table1(r, "resnet_small", "table1-resnet_small-paper")),
    "proxy-vs-paper-resnet_small": (["table1-resnet_small.md", "table1-resnet_small-paper.md"],
                                    lambda r: proxy_vs_paper(r, "resnet_small")),
    "removal-vgg_small-paper": (["removal-vgg_small-paper.json"],
                                lambda r: removal(r, "vgg_small", "removal-vgg_small-paper")),
    "removal-resnet_small-paper": (["removal-resnet_small-paper.json"],
                                   lambda r: removal(r, "resnet_small", "removal-resnet_small-paper")),
    "capacity": (["capacity.json"], capacity),
    "fig4": ([f"table1-{a}.md" for a in ARCHS], fig4),
    "removal-vgg_small": (["removal-vgg_small.json"], lambda r: removal(r, "vgg_small")),
    "removal-resnet_small": (["removal-resnet_small.json"], lambda r: removal(r, "resnet_small")),
    "arms-race": ([f"removal-{a}.json" for a in ARCHS], arms_race),
    "cost": ([f"removal-{a}.json" for a in ARCHS], cost),
    "thresholds": ([f"removal-{a}.json" for a in ARCHS], thresholds),
    "deepjudge-reach": (["deepjudge_reach.json"], reach),
    "study-efficiency": (["studies.md"], study_efficiency),
    "study-substitute_size": (["studies.md"], study_substitute),
    "study-ablation": (["studies.md"], study_ablation),
    "study-robustness": (["studies.md"], study_robustness),
    "study-saliency": (["studies.md"], study_saliency),
    "study-boundary": (["studies.md"], study_boundary),
}


# ---------------------------------------------------------------- the document

def render(doc: str, results: Path) -> tuple[str, list[str]]:
    """``doc`` with every generated block rewritten from ``results``, and the names of the blocks that changed."""
    lines, out, changed, seen = doc.splitlines(), [], [], []
    i = 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        name = m.group("name")
        if name not in BLOCKS:
            raise FindingsError(f"unknown generated block {name!r} in the document")
        if name in seen:
            raise FindingsError(f"generated block {name!r} appears twice")
        seen.append(name)
        try:
            j = lines.index(END, i + 1)
        except ValueError:
            raise FindingsError(f"generated block {name!r} has no '{END}'") from None
        files, fn = BLOCKS[name]
        new = [f"<!-- generated: {name} (from " + ", ".join(f"benchmarks/results/{f}" for f in files) + ") -->",
               *fn(results), END]
        if new != lines[i:j + 1]:
            changed.append(f"{name} (from {', '.join(files)})")
        out += new
        i = j + 1
    missing = [n for n in BLOCKS if n not in seen]
    if missing:
        raise FindingsError(f"the document lacks the generated block(s) {', '.join(missing)}")
    return "\n".join(out) + "\n", changed


def prose(doc: str) -> str:
    """``doc`` without its generated blocks and HTML comments."""
    doc = re.sub(r"<!-- generated: .*?" + re.escape(END), "", doc, flags=re.S)
    return re.sub(r"<!--.*?-->", "", doc, flags=re.S)


def _numbers(text: str) -> set[str]:
    """Every number written in ``text``, and every long float (json) at the precisions prose uses."""
    out = set(re.findall(r"\d+(?:\.\d+)?", text))
    out.update(x[:-2] for x in re.findall(r"\d+\.0\b", text))
    for x in re.findall(r"\d+\.\d{3,}", text):
        for p in (0, 1, 2, 3):
            out.update((f"{float(x):.{p}f}", f"{100 * float(x):.{p}f}"))
    return out


def unmatched(doc: str, results: Path, extra: list[Path]) -> list[str]:
    """The numbers of the prose (outside generated blocks; with a decimal point or of two or more digits) that
    the results files its paragraph cites (every results file when it cites none) and the ``extra`` files do
    not hold as written."""
    files = {p.name: p for p in results.iterdir() if p.suffix in (".md", ".json") and p.is_file()}
    every = set().union(*(_numbers(p.read_text(encoding="utf-8")) for p in files.values())) if files else set()
    base = set().union(*(_numbers(p.read_text(encoding="utf-8", errors="replace")) for p in extra)) if extra else set()
    out = []
    for chunk in re.split(r"\n\s*\n|\n(?=- )", prose(doc)):
        cited = set()
        for name in re.findall(r"[\w<>-]+\.(?:md|json)", chunk):
            cited.update(n for n in ([name.replace("<arch>", a) for a in ARCHS] if "<arch>" in name else [name])
                         if n in files)
        hay = base | (set().union(*(_numbers(files[n].read_text(encoding="utf-8")) for n in cited))
                      if cited else every)
        for x in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w])", chunk):
            if ("." in x or len(x) > 1) and x not in hay:
                line = next(ln for ln in chunk.splitlines() if x in ln)
                out.append(f"{x} ({', '.join(sorted(cited)) or 'no file cited'}): {line.strip()[:90]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a generated block is stale")
    ap.add_argument("--unmatched", action="store_true",
                    help="list the prose's numbers that no results file holds (exit 1 if any)")
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--also", type=Path, nargs="*", default=[],
                    help="with --unmatched: further files that may hold a number (e.g. the paper); the Table 1 "
                         "specs and the studies' configs always count")
    args = ap.parse_args(argv)
    try:
        if not args.doc.is_file():
            raise FindingsError(f"no document {args.doc}")
        if not args.results.is_dir():
            raise FindingsError(f"no results folder {args.results}")
        doc = args.doc.read_text(encoding="utf-8")
        if args.unmatched:
            settings = sorted((ROOT / "benchmarks" / "specs").glob("*.yaml")) + sorted(
                (ROOT / "src" / "removalnet" / "configs" / "studies").glob("*.yaml"))
            miss = unmatched(doc, args.results, settings + args.also)
            print("\n".join(miss) if miss else "every number of the prose is in a results file")
            return 1 if miss else 0
        new, changed = render(doc, args.results)
    except FindingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if changed:
            print(f"stale generated block in {args.doc.name}: {changed[0]}; run `make findings`"
                  + (f" ({len(changed) - 1} more)" if len(changed) > 1 else ""))
            return 1
        return 0
    if new != doc:
        args.doc.write_text(new, encoding="utf-8")
    print(f"{args.doc}: {len(changed)} of {len(BLOCKS)} generated blocks rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
