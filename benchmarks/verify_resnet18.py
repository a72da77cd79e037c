"""A model owner's first real model, verified and audited before and after a change: ``removalnet verify`` and
``removalnet audit --budget quick`` on a torchvision resnet18 at 32 px, run from two source trees (two commits)
on the same machine in one run, as whole processes (wall clock, CPU seconds, peak memory), with every value
they print compared.

The case (``prepare``): an image folder of Fashion-MNIST as 32 px RGB PNGs (``train/`` 2,000 images, 200 a
class; ``test/`` 1,000, 100 a class), a resnet18 (``torchvision:resnet18``, 10 classes) trained on it (the
victim), a copy of it fine-tuned on half of the training images and an independently trained resnet18 (the two
suspects), all saved as plain state dicts (``.pt``), as a user has them.

    python benchmarks/verify_resnet18.py prepare --work /tmp/rn18
    python benchmarks/verify_resnet18.py run --work /tmp/rn18 --tree /path/to/old/checkout --label before --what verify
    python benchmarks/verify_resnet18.py run --work /tmp/rn18 --tree . --label after --what verify
    python benchmarks/verify_resnet18.py run ... --what audit     (likewise)
    python benchmarks/verify_resnet18.py render --work /tmp/rn18  # -> benchmarks/results/verify-resnet18.md/.json

``run`` runs ``python -m removalnet`` of the tree given (its ``src/`` first on the path, this environment's
packages) with one torch thread and records its time and output under ``--work``; run the pairs in turn
(before, after, before, ...) so that a drift of the machine's speed touches both. ``verify`` runs every
verifier at its defaults, and, where the later tree changed a verifier's definition to the official one
(DeepJudge's black-box seeds, IPGuard's target class and stopping, ZEST's reference images), the options that
select the earlier definition (``AFTER_COMPAT``), so that both trees do the same work and their values can be
compared.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from table1 import machine   # benchmarks/ is the script's folder, as in capacity.py

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

TRAIN_PER_CLASS, TEST_PER_CLASS, SIZE = 200, 100, 32
#: options of the later tree that select the definitions of the earlier one (see docs/verifiers.md)
AFTER_COMPAT = {
    **{f"{v}.adv_seeds": 100 for v in ("deepjudge", "deepjudge_aligned", "deepjudge_scaled")},
    "ipguard.target": "random", "ipguard.tol": 0.0, "zest.order": "random",
}

#: metrics whose definition changed between the trees in a way no option of the later tree undoes
DEFINITION_CHANGES = {
    "IPG-MR": "IPGuard's boundary points stop one Adam step past the first iterate with loss <= tol, as the "
              "reference loop does (the earlier tree stopped at that iterate); with tol=0 the later tree still "
              "takes that step, so its points, and the matching rates, differ",
}


def tree_commit(tree: Path) -> str:
    """The tree's commit, ``+dirty`` when its tracked files differ from it."""
    try:
        sha = subprocess.check_output(["git", "-C", str(tree), "rev-parse", "HEAD"], text=True).strip()
        dirty = subprocess.run(["git", "-C", str(tree), "diff", "--quiet", "HEAD"]).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def _save_pngs(images, labels, folder: Path) -> None:
    from PIL import Image
    for i, (img, y) in enumerate(zip(images, labels)):
        d = folder / f"{int(y)}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((SIZE, SIZE), Image.BILINEAR).convert("RGB").save(d / f"{i:05d}.png")


def _balanced(labels, per_class: int, seed: int):
    import numpy as np
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)]))


def _train(model, x, y, *, epochs: int, lr: float, seed: int):
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def prepare(work: Path) -> None:
    """The image folder and the three state dicts (victim, fine-tuned copy, independent model)."""
    import numpy as np
    import torch
    import torchvision
    from removalnet.data.fashion_mnist import load_fashion_mnist_arrays
    torch.set_num_threads(1)
    folder = work / "data"
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        images, labels, _ = load_fashion_mnist_arrays(split)
        keep = _balanced(labels, per_class, seed=0)
        _save_pngs(images[keep], labels[keep], folder / split)
    images, labels, _ = load_fashion_mnist_arrays("train")
    keep = _balanced(labels, TRAIN_PER_CLASS, seed=0)
    x = torch.nn.functional.interpolate(torch.from_numpy(images[keep]).float().div(255).unsqueeze(1),
                                        size=SIZE, mode="bilinear").repeat(1, 3, 1, 1)
    y = torch.from_numpy(labels[keep]).long()
    models = {}
    for name, seed in (("victim", 0), ("independent", 1)):
        torch.manual_seed(seed)
        models[name] = _train(torchvision.models.resnet18(num_classes=10), x, y, epochs=4, lr=0.02, seed=seed)
    copy = torchvision.models.resnet18(num_classes=10)
    copy.load_state_dict(models["victim"].state_dict())
    half = torch.from_numpy(np.arange(0, len(x), 2))
    models["finetuned"] = _train(copy, x[half], y[half], epochs=1, lr=0.005, seed=2)
    for name, m in models.items():
        torch.save(m.state_dict(), work / f"{name}.pt")
    print(f"prepared {work}: {len(x)} training images, victim, finetuned, independent")


def _command(work: Path, label: str, what: str) -> list[str]:
    base = [sys.executable, "-m", "removalnet", what, "--threads", "1", "--model", "torchvision:resnet18",
            "--weights", str(work / "victim.pt"), "--data", f"folder:{work / 'data'}"]
    if what == "audit":
        return base + ["--budget", "quick", "--quiet", "--out", str(work / f"audit-{label}")]
    params = {} if label == "before" else AFTER_COMPAT
    return base + ["--suspect", str(work / "finetuned.pt"), str(work / "independent.pt"), "--json", "--quiet",
                   *[a for k, v in params.items() for a in ("--param", f"{k}={v}")]]


def run(work: Path, tree: Path, label: str, what: str) -> int:
    """One command of one tree as a whole process; its time, memory and output go to ``work/<label>-<what>.json``."""
    cmd = _command(work, label, what)
    env = dict(os.environ, PYTHONPATH=str(tree.resolve() / "src"), REMOVALNET_THREADS="1")
    load = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    # the child's own accounting: this process runs one child, so its children's usage is that child's
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    rec = {"label": label, "what": what, "tree": str(tree), "commit": tree_commit(tree), "returncode": proc.returncode,
           "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
           "peak_rss_mb": round(usage.ru_maxrss / 1024), "load_average_before": [round(v, 2) for v in load],
           "load_average_after": [round(v, 2) for v in os.getloadavg()],
           "command": " ".join(Path(c).name if c == sys.executable else c for c in cmd),
           "stdout": out, "stderr_tail": err[-3000:]}
    (work / f"{label}-{what}.json").write_text(json.dumps(rec, indent=2) + "\n")
    print(f"{label} {what}: rc {proc.returncode}, wall {wall:.1f} s, cpu {rec['cpu_s']} s, peak {rec['peak_rss_mb']} MB")
    return proc.returncode


def _values(rec: dict) -> dict[tuple[str, str], float]:
    """(suspect file, metric) -> value from a ``verify --json`` output."""
    out = {}
    for sus in json.loads(rec["stdout"])["suspects"]:
        for metric, m in sus["metrics"].items():
            if m.get("value") is not None:
                out[(Path(sus["path"]).name, metric)] = float(m["value"])
    return out


def _card(work: Path, label: str) -> str:
    p = work / f"audit-{label}" / "report-card.md"
    return p.read_text() if p.exists() else ""


def render(work: Path) -> None:
    recs = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*-*.json"), key=lambda p: p.stat().st_mtime)}
    labels = ["before"] + list(dict.fromkeys(r["label"] for r in recs.values() if r["label"] != "before"))
    result: dict = {"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "case": {"train_images": 10 * TRAIN_PER_CLASS, "test_images": 10 * TEST_PER_CLASS, "size": SIZE,
                             "after_compat": AFTER_COMPAT}, "runs": {}}
    lines = ["# verify and audit of a torchvision resnet18, before and after", "",
             "`python benchmarks/verify_resnet18.py` (its docstring: the case, and how the runs are made). "
             "Each command is one whole process with one torch thread; each later tree ran in turn with the "
             "earlier one on the same machine.", "",
             f"- machine: {result['machine']}; rendered {result['date']}", "",
             "| command | tree | commit | wall s | CPU s | peak MB | load before | exit | wall / before |",
             "|---|---|---|---:|---:|---:|---|---:|---:|"]
    for what in ("verify", "audit"):
        b = recs.get(f"before-{what}")
        for label in labels:
            r = recs.get(f"{label}-{what}")
            if r is None:
                continue
            result["runs"][f"{label}-{what}"] = {k: v for k, v in r.items() if k not in ("stdout", "stderr_tail")}
            ratio = r["wall_s"] / b["wall_s"] if b and label != "before" else None
            if ratio is not None:
                result["runs"][f"{label}-{what}"]["wall_ratio_to_before"] = round(ratio, 3)
            lines.append(f"| {what} | {label} | `{r['commit'][:12]}` | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']} "
                         f"| {r['load_average_before']} | {r['returncode']} | {'-' if ratio is None else f'{ratio:.2f}'} |")
    b = recs.get("before-verify")
    others = [l for l in labels[1:] if recs.get(f"{l}-verify", {}).get("returncode") == 0]
    if b and b["returncode"] == 0 and others:
        vals = {"before": _values(b), **{l: _values(recs[f"{l}-verify"]) for l in others}}
        keys = sorted(set().union(*vals.values()))
        rows = [{"suspect": k[0], "metric": k[1], **{l: vals[l].get(k) for l in vals}} for k in keys]
        result["verify_values"] = rows
        fmt = (lambda v: "-" if v is None else f"{v:.6g}")
        diff = (lambda x, y: None if x is None or y is None else abs(x - y))
        lines += ["", "## verify's values", "",
                  "| suspect | metric | before | " + " | ".join(f"{l} | abs diff" for l in others) + " |",
                  "|---|---|---:|" + "---:|---:|" * len(others)]
        lines += [f"| {r['suspect']} | {r['metric']} | {fmt(r['before'])} | "
                  + " | ".join(f"{fmt(r[l])} | {fmt(diff(r['before'], r[l]))}" for l in others) + " |" for r in rows]
        moved = sorted({r["metric"] for r in rows for l in others if (diff(r["before"], r[l]) or 0) > 1e-5 * max(
            1.0, abs(r["before"] or 0))})
        result["values_that_differ"] = moved
        lines += ["", "Values that differ by more than float32 rounding: "
                  + ("none." if not moved else "; ".join(f"{m} ({DEFINITION_CHANGES.get(m, 'not explained')})"
                                                         for m in moved) + ".")]
    kinds_lines = []
    for label in labels:
        db = work / f"audit-{label}" / "results.db"
        if db.exists() and f"{label}-audit" in result["runs"]:
            import sqlite3
            with sqlite3.connect(db) as con:
                rows = con.execute("select kind, count(*), sum(duration_s) from jobs group by kind").fetchall()
            by_kind = {k: {"jobs": n, "seconds": round(t or 0.0, 1)} for k, n, t in rows}
            result["runs"][f"{label}-audit"]["job_seconds_by_kind"] = by_kind
            kinds_lines.append(f"| {label} | " + " | ".join(
                f"{by_kind.get(k, {}).get('seconds', 0)} ({by_kind.get(k, {}).get('jobs', 0)})"
                for k in ("train", "attack", "fingerprint", "score")) + " |")
    if kinds_lines:
        lines += ["", "## The audit's job time by kind (seconds, jobs)", "",
                  "| tree | train | attack | fingerprint | score |", "|---|---:|---:|---:|---:|", *kinds_lines]
    for label in labels:
        card = _card(work, label)
        if card and f"{label}-audit" in result["runs"]:
            verdict = card.split("## Verdict", 1)[-1].strip().splitlines()
            result["runs"][f"{label}-audit"]["card_verdict"] = verdict
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "verify-resnet18.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (RESULTS / "verify-resnet18.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _label(text: str) -> str:
    if not text.replace("-", "").isalnum():
        raise argparse.ArgumentTypeError(f"a label of letters, digits and '-', not {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("prepare", "run", "render"):
        p = sub.add_parser(name)
        p.add_argument("--work", type=Path, required=True, help="folder of the case and of the runs' records")
        if name == "run":
            p.add_argument("--tree", type=Path, required=True, help="the source tree (a checkout) whose CLI runs")
            p.add_argument("--label", required=True, type=_label,
                           help="before (the earlier tree, its own definitions) or another name (a later tree, with "
                                "AFTER_COMPAT)")
            p.add_argument("--what", choices=("verify", "audit"), required=True)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.cmd == "prepare":
        prepare(args.work)
        return 0
    if args.cmd == "run":
        return run(args.work, args.tree, args.label, args.what)
    render(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
