"""Which removal attack evades which verifier, at what cost: removalnet-plus and its components against the
paper's RemovalNet and the baselines, on the Table 1 benchmark's models.

    python benchmarks/removal.py [--protocol paper|proxy] [--arch vgg_small resnet_small] [--seeds 5] [--variants plus ...]

Reads the finished Table 1 run of the protocol (``paper``, the default: runs/bench/table1-<arch>-paper, width 16,
S_LTD 10%; ``proxy``: runs/bench/table1-<arch>, width 8, S_LTD 1%; victim, 5 reference and 5 negative models,
the baselines' and RemovalNet's surrogates, their scores), runs every removal variant per seed on the same
substitute sets as the table (its S_LTD fraction of the training data, the table's seeds), scores every model
with every verifier of the table plus the alignment-aware and the scale-invariant DeepJudge, and writes
benchmarks/results/removal-<arch>[-paper].md, .json and .png (Pareto: accuracy drop against the number of
metrics evaded). Results are stored per model in runs/bench/removal-<arch>[-paper]/results.json, so a rerun
resumes.

Verdicts are judged at tau = the closest of the 10 independent models (5 references + 5 negatives): the most
verifier-friendly threshold that calls none of them a copy. The per-rule table gives each references-only rule's
false-positive rate on the negatives. ``--no-summary`` runs variants only (before the Table 1 run has finished,
or split over processes by ``--variants``); ``--no-knockoff`` skips the KnockoffNets curves. ``--retime [LABEL ...]``
runs FT(0.5) and the variants (or the LABELs) once more each, one at a time, and records their process CPU
seconds (setup, steady per iteration, finish): run it with nothing else on the machine; the cost columns and the
"Cost" table then come from these runs instead of the variants' own wall times.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from removalnet.attacks import RETURNED_START, build_substitute, create_attack
from removalnet.checkpoint import load_checkpoint, save_checkpoint
from removalnet.experiment import load_spec
from removalnet.experiment.artifacts import (VICTIM, attack_job, dataset, fingerprint_dir, model_job, model_path,
                                             score_job, slug, substitute_count, training_split, verifier_data,
                                             verifier_train_data)
from removalnet.experiment.store import ResultStore
from removalnet.report.table import COLLAPSE_MARGIN
from removalnet.train import evaluate
from removalnet.utils import RemovalNetError
from removalnet.verify import FingerprintCache, all_metrics, calibrate, create_verifier, verdict
from removalnet.verify.confidence import clopper_pearson, fpr_upper_bound, interval_text, models_for_bound, roc_auc, \
    tpr_at_fpr

HERE = Path(__file__).resolve().parent
from table1 import commit, machine  # noqa: E402

#: the Table 1 spec of each protocol: benchmarks/specs/table1-<arch><suffix>.yaml
PROTOCOLS = {"paper": "-paper", "proxy": ""}

#: the variants measured; each is removalnet-plus with these parameters
VARIANTS = {
    "permute-only": {"iterations": 0, "boundary_mix": 0.0, "holdout": 0.0},
    "distill+permute": {"boundary_mix": 0.0},
    "plus": {},
    "plus+ilbs": {"logit_level": "ilbs"},
    "plus+latent": {"beta": 2.0},
    # boundary shifting costs ~2 points within its first 25 iterations at weight 0.2 (vgg_small); a quarter of it
    "plus-light": {"boundary_weight": 0.05},
    "plus-strong": {"boundary_eps": 0.05, "boundary_mix": 0.25, "boundary_weight": 1.0, "min_agreement": 0.0},
    # adaptive components, one per surviving verifier, alone (on top of plus) and combined
    "rescale-only": {"iterations": 0, "boundary_mix": 0.0, "holdout": 0.0, "rescale": "farthest"},
    "rescale-only-16": {"iterations": 0, "boundary_mix": 0.0, "holdout": 0.0, "rescale": "farthest",
                        "rescale_spread": 16.0},
    "rescale-only-64": {"iterations": 0, "boundary_mix": 0.0, "holdout": 0.0, "rescale": "farthest",
                        "rescale_spread": 64.0},
    "rescale-lad": {"iterations": 0, "boundary_mix": 0.0, "holdout": 0.0, "rescale": "lad"},
    "rescale-lad-dj": {"iterations": 0, "boundary_mix": 0.0, "holdout": 0.0, "rescale": "lad",
                       "rescale_inputs": "deepjudge", "rescale_spread": 16.0},
    "plus-light+lad": {"boundary_weight": 0.05, "rescale": "lad", "rescale_inputs": "deepjudge",
                       "rescale_spread": 16.0},
    "plus+rescale": {"rescale": "farthest"},
    "plus+rescale-start": {"rescale": "farthest", "rescale_when": "start"},
    "plus+mask": {"mask_mix": 0.25},
    # without boundary shifting (its ~2 points), a lighter masking term: ZEST at the edge of tau for ~1.3 points
    "distill+mask": {"boundary_mix": 0.0, "mask_mix": 0.25, "mask_weight": 0.8},
    "plus+cutmix": {"cutmix_mix": 0.25, "cutmix_target": "uniform"},
    "plus-adaptive": {"rescale": "farthest", "boundary_mix": 0.3, "mask_mix": 0.2, "cutmix_mix": 0.2,
                      "cutmix_target": "uniform"},
    "plus-adaptive-start": {"rescale": "farthest", "rescale_when": "start", "boundary_mix": 0.3, "mask_mix": 0.2,
                            "cutmix_mix": 0.2, "cutmix_target": "uniform"},
    "adaptive-0.95": {"rescale": "farthest", "boundary_mix": 0.3, "mask_mix": 0.2, "cutmix_mix": 0.2,
                      "cutmix_target": "uniform", "min_agreement": 0.95},
}
#: the variants run by default (the others stay selectable with --variants)
DEFAULT_VARIANTS = ("permute-only", "distill+permute", "plus", "plus-light", "plus-strong", "rescale-only",
                    "rescale-only-16", "rescale-lad", "rescale-lad-dj", "plus+rescale", "plus-light+lad",
                    "plus+rescale-start", "plus+mask", "distill+mask", "plus+cutmix", "plus-adaptive",
                    "plus-adaptive-start", "adaptive-0.95")
#: the metrics an attack must evade: the paper's six, SAC, RobD, DeepJudge's neuron-level metrics and the
#: alignment-aware and scale-invariant DeepJudge (those a run does not produce are left out)
EVADE = ("DJ-LOD", "DJ-LAD", "ZEST-L2", "ZEST-Cos", "MD-DDV", "IPG-MR", "SAC", "DJ-RobD", "DJ-JSD", "DJ-NOD",
         "DJ-NAD", "DJA-LOD", "DJA-LAD", "DJS-LOD", "DJS-LAD")
#: verifiers scored here on top of the Table 1 run's own (same parameters as its DeepJudge)
EXTRA = ("deepjudge_aligned", "deepjudge_scaled")


class Bench:
    def __init__(self, arch: str, runs: Path, protocol: str = "paper"):
        suffix = PROTOCOLS[protocol]
        self.spec = load_spec(HERE / "specs" / f"table1-{arch}{suffix}.yaml")
        self.name = f"removal-{arch}{suffix}"
        self.run_dir = runs / self.spec.name
        if not (self.run_dir / "results.db").is_file():
            raise RemovalNetError(f"{self.run_dir}: no Table 1 run here; run `python benchmarks/table1.py --protocol "
                                  f"{protocol} --arch {arch} --runs {runs}` first")
        # the substitute sets of the table's S_LTD attacks (one fraction for all of them in a Table 1 spec)
        fractions = {a.fraction for a in self.spec.attacks if a.scenario == "ltd"}
        if len(fractions) != 1:
            raise RemovalNetError(f"{self.spec.name}: the S_LTD attacks use several substitute fractions {fractions}")
        self.fraction = float(fractions.pop())
        self.out = runs / self.name
        self.out.mkdir(parents=True, exist_ok=True)
        self.results_path = self.out / "results.json"
        self.results = json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
        self.cfg = {"dataset": self.spec.dataset, "data_root": self.spec.data_root,
                    "lsd_holdout": self.spec.lsd_holdout, "verifier_count": self.spec.verifier_count}
        self.victim, _ = load_checkpoint(model_path(self.run_dir, VICTIM))
        self.test = dataset(self.spec.dataset, "test", self.spec.data_root)
        self.verifiers = dict(self.spec.verifiers)
        for name in EXTRA:
            self.verifiers[name] = dict(self.spec.verifiers.get("deepjudge", {}))
        self.cache = FingerprintCache(fingerprint_dir(self.run_dir))
        # exactly the table run's fingerprints: DeepJudge's k from the victim's training data, as the experiment
        self.fps = {}
        self.legacy_keys = {}   # the keys rows scored before DeepJudge's k came from the training data carry
        for name, params in self.verifiers.items():
            v = create_verifier(name, **params)
            self.fps[name] = self.cache.get_or_extract(v, self.victim, verifier_data(self.cfg), seed=0,
                                                       train_data=verifier_train_data(v, self.cfg))
            self.legacy_keys[name] = v.key(self.victim, verifier_data(self.cfg), seed=0)
        self.fp_keys = {name: fp.key for name, fp in self.fps.items()}
        with ResultStore(self.run_dir / "results.db") as store:
            plan = set(store.get_meta("plan"))
            self.db = {r["name"]: r for r in store.rows(kind="score") if r["id"] in plan and r["status"] == "done"}
            attacks = {r["name"]: r for r in store.rows(kind="attack") if r["id"] in plan and r["status"] == "done"}
        self.attack_times = attacks

    def substitute(self, seed: int):
        """The Table 1 run's S_LTD substitute set of ``seed`` (its fraction of the whole training set, drawn from
        the training split, labelled by the victim): the same samples as the table's S_LTD attacks."""
        train, _ = training_split(self.cfg)
        full = dataset(self.spec.dataset, "train", self.spec.data_root)
        count = substitute_count({"scenario": "ltd", "fraction": self.fraction}, len(full))
        return build_substitute(self.victim, train, scenario="ltd", count=count, seed=seed)

    def save(self, *keys: str) -> None:
        """Write ``keys`` of this process's results into the file, merged with what is on disk (several processes
        may run disjoint --variants at once; a process never writes back rows it did not change)."""
        import fcntl
        with open(self.out / "results.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            on_disk = json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
            on_disk.update({k: self.results[k] for k in keys})
            self.results = {**self.results, **on_disk}
            tmp = self.results_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(on_disk, indent=1, sort_keys=True))
            os.replace(tmp, self.results_path)

    def refresh(self) -> int:
        """Re-score every stored row with the verifiers whose fingerprint changed since it was scored (its
        ``fingerprints`` keys; rows without them used ``legacy_keys``). Variants are re-scored from their saved
        surrogates; the table's rows lose the changed extra metrics, which :meth:`existing` then re-scores.
        Returns how many rows changed."""
        n = 0
        for key, row in sorted(self.results.items()):
            if key.startswith(("knockoff/", "retime/")) or not isinstance(row, dict) or "failed" in row:
                continue
            had = row.get("fingerprints", self.legacy_keys)
            changed = [v for v in self.fp_keys if had.get(v) != self.fp_keys[v]]
            if not changed:
                continue
            if key.startswith("variant/"):
                _, name, seed = key.split("/")
                model, _ = load_checkpoint(self.out / slug(name) / f"{seed}.safetensors")
                row.update(self.score(model, changed))
            elif key == "victim":
                row.update(self.score(self.victim, changed))
            else:   # a table model: its own verifiers' metrics come from the table run, the extra ones are redone
                for v in changed:
                    if v in EXTRA:
                        for m in create_verifier(v, **self.verifiers[v]).metrics:
                            row.pop(m.name, None)
            row["fingerprints"] = dict(self.fp_keys)
            self.results[key] = row   # save() re-reads the file: the changed row must be the one it writes
            n += 1
            print(f"re-scored {key} with {', '.join(changed)}", flush=True)
            self.save(key)
        return n

    def score(self, model, names=None) -> dict[str, float]:
        out = {}
        for name in names or self.verifiers:
            v = create_verifier(name, **self.verifiers[name])
            out.update(v.score(self.fps[name], self.victim, model))
        return out

    def existing(self, key: str, model_job_name: str) -> dict[str, float]:
        """Scores of a model of the table run: its stored metrics plus the alignment-aware and scale-invariant
        DeepJudge (re-scored when a stored row lacks one of their metrics, e.g. a verifier added since)."""
        want = {m.name for n in EXTRA for m in create_verifier(n, **self.verifiers[n]).metrics}
        if key not in self.results or not want <= set(self.results[key]):
            row = self.db[score_job(model_job_name)]
            model, _ = load_checkpoint(model_path(self.run_dir, model_job_name))
            m = dict(row["metrics"])
            m.update(self.score(model, list(EXTRA)))
            m.pop("score_time_s", None)
            m["fingerprints"] = dict(self.fp_keys)
            self.results[key] = m
            self.save(key)
        return self.results[key]

    def variant(self, name: str, params: dict, seed: int) -> dict[str, float]:
        key = f"variant/{name}/seed-{seed}"
        if key in self.results:
            return self.results[key]
        sub = self.substitute(seed)
        attack = create_attack("removalnet-plus", **params)
        t0 = time.perf_counter()
        try:
            surrogate = attack(self.victim, sub, seed=seed)
        except RemovalNetError as e:   # e.g. a loss became non-finite: recorded, reported, never scored
            self.results[key] = {"failed": str(e)}
            self.save(key)
            return self.results[key]
        wall = time.perf_counter() - t0
        save_checkpoint(self.out / slug(name) / f"seed-{seed}.safetensors", surrogate, {"variant": name, "seed": seed,
                                                                                         "params": attack.params})
        m = {"accuracy": evaluate(surrogate, self.test), **self.score(surrogate), "time_s": wall,
             "iterations": attack.params["iterations"], "selected_t": attack.selected_t,
             "trained_iterations": len(attack.trace), "fingerprints": dict(self.fp_keys),
             "status": attack.status, "reduced_to": attack.reduced_to, "torch_threads": torch.get_num_threads()}
        self.results[key] = m
        self.save(key)
        return m

    def retime(self, label: str, seed: int, warmup: int = 3) -> dict[str, float]:
        """Time one run of ``label`` (a variant or an S_LTD attack of the table, e.g. FT(0.5)) on its seed's
        substitute set, as process CPU seconds (wall too) on what should be an otherwise idle machine: the cost
        columns use these rows when they exist (the variants' own ``time_s`` were taken with other jobs running).
        Setup = CPU time before the first iteration (victim outputs, permutation, segmentation, test generation);
        finish = after the last one (selecting the returned state, rescaling at the end); steady = the median CPU
        time between consecutive iterations after ``warmup``."""
        key = f"retime/{label}/seed-{seed}"
        if key in self.results:
            return self.results[key]
        if label in VARIANTS:
            attack = create_attack("removalnet-plus", **VARIANTS[label])
        else:
            spec = {a.label: a for a in self.spec.attacks if a.scenario == "ltd"}
            if label not in spec:
                raise RemovalNetError(f"--retime: {label!r} is neither a variant nor an S_LTD attack of "
                                      f"{self.spec.name} ({', '.join(spec)})")
            attack = create_attack(spec[label].name, **spec[label].params)
        sub = self.substitute(seed)
        stamps: list[float] = []

        def cb(event: str, **_: object) -> None:
            if event == "iteration":
                stamps.append(time.process_time())

        load_before = os.getloadavg()
        w0, c0 = time.perf_counter(), time.process_time()
        failed = None
        try:
            attack(self.victim, sub, seed=seed, callbacks=[cb])
        except RemovalNetError as e:   # diverged (as in its scored run): recorded, never counted as a cost
            failed = str(e)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        steady = np.diff(stamps[warmup:])
        self.results[key] = {
            **({"failed": failed} if failed else {}), "wall_s": wall, "cpu_s": cpu, "iterations": len(attack.trace),
            "setup_cpu_s": (stamps[0] - c0) if stamps else cpu,
            "finish_cpu_s": (c0 + cpu - stamps[-1]) if stamps else 0.0,
            "steady_cpu_s_per_it": float(np.median(steady)) if len(steady) else None,
            "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
            "torch_threads": torch.get_num_threads(), "commit": commit(), "machine": machine()}
        self.save(key)
        return self.results[key]


KNOCKOFF = {"iterations": 3000, "eval_every": 200}


def knockoff_curve(b: Bench, seed: int) -> list[dict]:
    """KnockoffNets (from scratch) on the same substitute set, its learning curve on the full test split."""
    key = f"knockoff/seed-{seed}"
    if key not in b.results:
        sub = b.substitute(seed)
        attack = create_attack("knockoff", **KNOCKOFF)
        attack(b.victim, sub, seed=seed, eval_set=b.test)
        b.results[key] = attack.history
        b.save(key)
    return b.results[key]


def run_costs(ms: list[dict], retimed: list[dict] | None) -> tuple[list[float], list[float]]:
    """(total seconds, seconds per trained iteration) of each timed run: the ``--retime`` rows' process CPU
    seconds when ``retimed`` is given (a list, possibly empty), else the runs' own wall times ``ms``."""
    if retimed is not None:
        return [r["cpu_s"] for r in retimed], [r["cpu_s"] / r["iterations"] for r in retimed if r["iterations"]]
    timed = [m for m in ms if m.get("time_s") is not None]
    times = [m["time_s"] for m in timed]
    its = [m.get("trained_iterations", m.get("iterations")) for m in timed]
    return times, [t / i for t, i in zip(times, its) if i]


def cost_section(retimed: dict[str, list[dict]], ft_label: str) -> tuple[list[str], dict[str, dict]]:
    """The 'Cost' table of the ``--retime`` rows: per label, setup and steady CPU seconds, and the ratios to FT
    (amortised = total CPU / trained iterations; steady = the median time between iterations)."""
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return float(np.mean(xs)) if xs else None
    ft = retimed[ft_label]
    ft_per = mean([r["cpu_s"] / r["iterations"] for r in ft if r["iterations"]])
    ft_steady = mean([r["steady_cpu_s_per_it"] for r in ft])
    lines = ["### Cost (`--retime`: one process, one torch thread, machine otherwise idle)", "",
             "| Model | runs | trained iterations | setup CPU s | steady CPU s/iteration | finish CPU s | total CPU s | "
             "x FT (total / iteration) | x FT (steady) | load average before (1 min; ~1 = this benchmark alone) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    out = {}
    for label, rs in retimed.items():
        if not rs:
            continue
        d = {"runs": len(rs), "iterations": mean([r["iterations"] for r in rs]),
             "setup_cpu_s": mean([r["setup_cpu_s"] for r in rs]),
             "finish_cpu_s": mean([r.get("finish_cpu_s") for r in rs]),
             "steady_cpu_s_per_it": mean([r["steady_cpu_s_per_it"] for r in rs]),
             "total_cpu_s": mean([r["cpu_s"] for r in rs]),
             "per_iteration_cpu_s": mean([r["cpu_s"] / r["iterations"] for r in rs if r["iterations"]]),
             "commits": sorted({r["commit"] for r in rs})}
        d["x_ft"] = d["per_iteration_cpu_s"] / ft_per if d["per_iteration_cpu_s"] and ft_per else None
        d["x_ft_steady"] = d["steady_cpu_s_per_it"] / ft_steady if d["steady_cpu_s_per_it"] and ft_steady else None
        out[label] = d

        def f(x, fmt):
            return "-" if x is None else format(x, fmt)
        lines.append(f"| {label} | {d['runs']} | {d['iterations']:.0f} | {f(d['setup_cpu_s'], '.1f')} | "
                     f"{f(d['steady_cpu_s_per_it'], '.4f')} | {f(d['finish_cpu_s'], '.1f')} | {d['total_cpu_s']:.1f} | "
                     f"{f(d['x_ft'], '.2f')} | "
                     f"{f(d['x_ft_steady'], '.2f')} | " + ", ".join(f"{r['loadavg_before'][0]:.2f}" for r in rs) + " |")
    return lines, out


def summarise(b: Bench, seeds: list[int], variants: list[str], knockoff: bool = True) -> tuple[str, dict]:
    known = all_metrics()
    refs = [b.existing(f"reference-{i}", model_job("reference", i)) for i in range(b.spec.references.count)]
    metrics = [m for m in EVADE if all(m in r for r in refs)]
    negs = [b.existing(f"negative-{i}", model_job("negative", i)) for i in range(b.spec.negatives.count)]
    metrics = [m for m in metrics if all(m in n for n in negs)]
    # the verdicts of the main table: tau at the closest of the independent models (references and negatives),
    # the most verifier-friendly threshold that calls none of them a copy (false-positive rate 0, in sample)
    taus = calibrate({m: [r[m] for r in refs + negs] for m in metrics}, [known[m] for m in metrics], "minmax",
                     min_references=2)
    taus_ref = calibrate({m: [r[m] for r in refs] for m in metrics}, [known[m] for m in metrics], "minmax")
    # a threshold that does not even call the victim itself a copy carries no evidence: flagged, and not counted
    if "victim" not in b.results:
        b.results["victim"] = {**b.score(b.victim), "fingerprints": dict(b.fp_keys)}
        b.save("victim")
    # ... and so does a metric its fingerprint declares degenerate (e.g. DeepJudge with no test case reached)
    declared = {m for fp in b.fps.values() for m in fp.meta.get("degenerate", [])}
    degenerate = [m for m in metrics if m in declared or not verdict(known[m], b.results["victim"][m], taus[m])]
    counted = [m for m in metrics if m not in degenerate]
    with ResultStore(b.run_dir / "results.db") as store:
        victim_acc = next(r["metrics"]["accuracy"] for r in store.rows(kind="train") if r["name"] == VICTIM)
    groups: dict[str, list[dict]] = {"Negative": negs}
    for a in b.spec.attacks:
        if a.scenario != "ltd":
            continue
        for s in seeds:
            job = attack_job(a.label, s)
            if score_job(job) in b.db:
                m = dict(b.existing(f"attack/{a.label}/seed-{s}", job))
                at = b.attack_times.get(job)
                if at:
                    m["time_s"] = at["metrics"]["time_s"]
                    m["iterations"] = at["metrics"]["iterations"]
                    m["status"] = at["metrics"].get("status", "ok")
                    m["reduced_to"] = at["metrics"].get("reduced_to")
                groups.setdefault(a.label, []).append(m)
    failed = {}
    for v in variants:
        for s in seeds:
            r = b.results[f"variant/{v}/seed-{s}"]
            if "failed" in r:
                failed[f"{v} seed {s}"] = r["failed"]
            else:
                groups.setdefault(v, []).append(r)
    from removalnet.studies.efficiency import iterations_to_reach, mean_curve
    if knockoff:
        kts, kacc, ktime = mean_curve([knockoff_curve(b, s) for s in seeds])
    rows, summary = [], {}
    head = (["Model", "n", "Acc drop (pts)", f"Metrics evaded (mean, of {len(counted)})", "Evades all"]
            + [f"{m} (degenerate τ)" if m in degenerate else m for m in metrics] + ["Status"]
            + ["s/iteration", "x FT", "Time (s)"] + (["KnockoffNets to this accuracy (it / s)"] if knockoff else []))
    # the cost unit: FT's seconds per iteration (its first row). With --retime rows for FT, every cost cell is
    # a retimed one (process CPU seconds, machine otherwise idle) and labels without such rows get none; else
    # the runs' own wall times (taken with other jobs running)
    ft_label = next((label for label in groups if label.startswith("FT")), None)
    retimed = {label: [r for k, r in sorted(b.results.items()) if k.startswith(f"retime/{label}/")
                       and "failed" not in r] for label in groups}
    use_retime = bool(ft_label and retimed.get(ft_label))

    def cost(label: str, ms: list[dict]) -> tuple[list[float], list[float]]:
        return run_costs(ms, retimed.get(label, []) if use_retime else None)
    ft_runs = cost(ft_label, groups[ft_label])[1] if ft_label else []
    ft_per_it = float(np.mean(ft_runs)) if ft_runs else None
    for label, ms in groups.items():
        drops = [(victim_acc - m["accuracy"]) * 100 for m in ms]
        # a seed whose surrogate is its starting point is no attack of the row's name: never an evasion
        back = [m for m in ms if returned_start(m)]
        # ... nor is a seed whose surrogate lost more than COLLAPSE_MARGIN points: a useless model evades trivially
        broken = [m for m in ms if not returned_start(m) and collapsed(m, victim_acc)]
        trained = [m for m in ms if not returned_start(m) and not collapsed(m, victim_acc)]
        evaded = [[not verdict(known[k], m[k], taus[k]) for k in counted] for m in trained]
        n_ev = [sum(e) for e in evaded]
        per_metric = [sum(1 for m in trained if verdict(known[k], m[k], taus[k])) for k in metrics]
        times, per_it = cost(label, ms)
        ratio = float(np.mean(per_it)) / ft_per_it if per_it and ft_per_it else None
        summary[label] = {"drop": float(np.mean(drops)), "drops": drops,
                          "evaded": float(np.mean(n_ev)) if n_ev else 0.0,
                          "evades_all": sum(all(e) for e in evaded), "n": len(trained),
                          "copies": dict(zip(metrics, per_metric)), "returned_start": len(back),
                          "collapsed": len(broken),
                          "reduced_to": back[0].get("reduced_to") or "its starting point" if back else None,
                          "per_iteration_s": float(np.mean(per_it)) if per_it else None, "cost_vs_ft": ratio}
        nt = len(trained)
        cells = [label, str(len(ms)), f"{np.mean(drops):.2f}±{np.std(drops, ddof=1) if len(ms) > 1 else 0:.2f}",
                 f"{np.mean(n_ev):.1f}/{len(counted)}" if n_ev else "-", f"{summary[label]['evades_all']}/{nt}"]
        cells += [f"{c}/{nt} copy ({interval_text(*clopper_pearson(c, nt))})" if nt else "-" for c in per_metric]
        status = ([f"{RETURNED_START} in {len(back)}/{len(ms)} seeds: {summary[label]['reduced_to']} "
                   "(never an evasion)"] if back else [])
        status += ([f"collapsed in {len(broken)}/{len(ms)} seeds (more than {COLLAPSE_MARGIN:g} points lost; "
                    "never an evasion, not judged)"] if broken else [])
        cells.append("; ".join(status) or "ok")
        cells += [f"{np.mean(per_it):.3f}" if per_it else "-", f"{ratio:.1f}" if ratio else "-",
                  f"{np.mean(times):.1f}" if times else "-"]
        if knockoff:
            reach = iterations_to_reach(kts, kacc, float(np.mean([m["accuracy"] for m in ms])))
            summary[label]["knockoff_to_reach"] = reach
            cells.append(f"{reach} / {ktime[kts.index(reach)]:.0f}" if reach is not None else f"> {kts[-1]} (not reached)")
        rows.append(cells)
    pad = " |" * (len(head) - 5 - len(metrics) + 1)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["| τ (closest of the 10 independent models) | | | | | " + " | ".join(f"{taus[m]:.3f}" for m in metrics) + pad]
    lines += ["| τ (min/max, 5 references) | | | | | " + " | ".join(f"{taus_ref[m]:.3f}" for m in metrics) + pad]
    lines += ["", "Verdicts at τ = the value of the closest of the 10 independent models (5 references + 5 negatives): "
                  "the most verifier-friendly threshold with no false positive among them (so the Negative row is "
                  "0/5 by construction; how often innocent models are called copies under the references-only rules "
                  "is in the next table). 'x FT': seconds per iteration relative to FT(0.5)"
              + (" (process CPU seconds of separate runs on an otherwise idle machine, `--retime`; see 'Cost')."
                 if use_retime else " (wall seconds of the runs themselves, taken while other jobs shared the "
                                    "machine: indicative only; `--retime` measures them alone).")]
    if use_retime:
        section, per_label = cost_section(retimed, ft_label)
        lines += [""] + section
        for label, d in per_label.items():
            summary[label]["retime"] = d
    if knockoff:
        lines += ["", f"KnockoffNets: a fresh model trained on the victim's answers for the same substitute sets "
                      f"({json.dumps(KNOCKOFF)}); the last column is the first evaluated iteration at which its mean "
                      f"test accuracy over the seeds reaches the row's mean accuracy, and the training time to there "
                      f"(final: {kacc[-1] * 100:.2f}% at {kts[-1]} iterations, {ktime[-1]:.0f} s)."]
    # threshold rules: false positives on the negative models, detection of the parameter-reusing baselines
    from removalnet.verify import RULES
    marked = {a.label for a in b.spec.attacks if a.baseline}   # the spec marks the parameter-reusing baselines
    baselines = [m for label, ms in groups.items() if label in marked for m in ms]
    rules = {}
    lines += ["", f"### Threshold rules (references only; all {len(metrics)} metrics)", "",
              "| Rule | Quantity | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for rule in RULES:
        t = calibrate({m: [r[m] for r in refs] for m in metrics}, [known[m] for m in metrics], rule)
        fpr = {m: float(np.mean([verdict(known[m], n[m], t[m]) for n in groups["Negative"]])) for m in metrics}
        det = {m: float(np.mean([verdict(known[m], b_[m], t[m]) for b_ in baselines])) for m in metrics}
        rules[rule] = {"taus": t, "false_positive_rate": fpr, "baseline_detection_rate": det}
        lines.append(f"| {rule} | false-positive rate (negatives) | " + " | ".join(f"{fpr[m]:.2f}" for m in metrics) + " |")
        lines.append(f"| {rule} | detection rate (FT/WP/Distill) | " + " | ".join(f"{det[m]:.2f}" for m in metrics) + " |")
    lines += [""] + confidence_lines(groups, refs + negs, metrics, victim_acc)
    lines += ["", "### Aims", ""] + aims(summary, counted, len(seeds), variants)
    if failed:
        lines += ["", "Failed runs (left out of their row's n): "
                  + "; ".join(f"{k}: {msg}" for k, msg in failed.items()) + "."]
    if degenerate:
        lines += ["", f"Degenerate thresholds (the victim itself is not called a copy at τ; not counted in "
                      f"'Metrics evaded', 'Evades all' or the aims): {', '.join(degenerate)}."]
    return "\n".join(lines), {"summary": summary, "taus": taus, "taus_references": taus_ref, "metrics": counted,
                              "degenerate": degenerate, "all_metrics": metrics,
                              "victim_accuracy": victim_acc, "rules": rules}


def returned_start(m: dict) -> bool:
    """Whether a run's surrogate is its starting point: its status says so, or (results stored before the
    status) removalnet-plus's stopping rule kept step 0 of a run that trained."""
    return m.get("status") == RETURNED_START or (bool(m.get("iterations")) and m.get("selected_t") == 0)


def run_time_line(results: dict) -> str:
    """The variant runs' own attack wall time in all, from their stored results (a resumed benchmark's runs
    come from several invocations), with their torch thread counts where recorded."""
    runs = [r for k, r in results.items() if k.startswith("variant/") and "time_s" in r]
    threads: dict[str, int] = {}
    for r in runs:
        t = str(r.get("torch_threads", "not recorded"))
        threads[t] = threads.get(t, 0) + 1
    return (f"variant runs: {len(runs)}, {sum(r['time_s'] for r in runs) / 60:.1f} min of attack wall time in all "
            f"(torch threads: {', '.join(f'{k} in {v}' for k, v in sorted(threads.items()))})")


def collapsed(m: dict, victim_acc: float) -> bool:
    """Whether a run's surrogate lost more than ``COLLAPSE_MARGIN`` accuracy points against the victim (the
    report's rule for a collapsed row, applied per seed): it carries no evidence about a verifier."""
    return 100 * (victim_acc - m["accuracy"]) > COLLAPSE_MARGIN


def confidence_lines(groups: dict[str, list[dict]], independent: list[dict], metrics: list[str],
                     victim_acc: float) -> list[str]:
    """ROC-AUC (95% score interval) of every row's seeds against the independent models, detection at
    FPR <= 5% or "n too small", and which metrics' false-positive rate is bounded below 5% at 95% confidence
    at the closest-of-the-independent-models tau (docs/confidence.md)."""
    known = all_metrics()
    n = len(independent)
    out = [f"### Confidence ({n} independent models: references + negatives)", "",
           "ROC-AUC of each row's seeds against the independent models (95% score interval, Newcombe's method 5); "
           "a seed that returned its start or collapsed is left out.", "",
           "| Model | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for label, ms in groups.items():
        if label == "Negative":
            continue
        trained = [m for m in ms if not returned_start(m) and not collapsed(m, victim_acc)]
        cells = []
        for k in metrics:
            if not trained:
                cells.append("-")
                continue
            a = roc_auc([r[k] for r in independent], [m[k] for m in trained], known[k].direction)
            cells.append(f"{a.auc:.2f} ({a.low:.2f}-{a.high:.2f})")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    probe = tpr_at_fpr([r[metrics[0]] for r in independent], [0.0], known[metrics[0]].direction, 0.05) \
        if metrics and independent else None
    if probe is not None and probe.tpr is None:
        out += ["", f"Detection at FPR <= 5%: n too small ({n} independent models; >= {probe.needed} needed for an "
                    "empirical p-value to reach 0.05)."]
    bound = fpr_upper_bound(0, n) if n else 1.0
    out += ["", f"False-positive bound: τ calls none of the {n} independent models a copy, so each metric's "
                f"false-positive rate is below {bound:.0%} at 95% confidence (1 - 0.05^(1/{n})); no metric reaches "
                f"a bound below 5%, which needs {models_for_bound(0.05)} independent models with none called a "
                "copy." if bound >= 0.05 else f"False-positive bound below 5% at 95% confidence for every metric "
                                              f"({n} independent models, none called a copy)."]
    return out


#: the verifiers that no cheap attack moved before the adaptive components (docs/findings.md)
SURVIVORS = ("ZEST-L2", "ZEST-Cos", "SAC", "DJ-LAD", "DJA-LOD", "DJA-LAD")


def aims(summary: dict, metrics: list[str], n_seeds: int, variants: list[str], max_drop: float = 1.5,
         min_seeds: int = 4, max_cost: float = 3.0) -> list[str]:
    """Per surviving metric, the variants that evade it in >= min_seeds seeds at <= max_drop points; and the
    variants judged not a copy by every metric in >= min_seeds seeds at <= max_drop points and <= max_cost x FT."""
    out = []
    variants = [v for v in variants if v in summary]   # a variant whose every run failed has no row
    for m in [m for m in SURVIVORS if m in metrics] + [m for m in metrics if m.startswith("DJS")]:
        ok = [v for v in variants if summary[v]["n"] - summary[v]["copies"][m] >= min_seeds
              and summary[v]["drop"] <= max_drop]
        out.append(f"- {m}: evaded in >= {min_seeds}/{n_seeds} seeds at <= {max_drop} points by "
                   + (", ".join(ok) if ok else "**no variant**"))
    evade = [v for v in variants if summary[v]["evades_all"] >= min_seeds and summary[v]["drop"] <= max_drop]
    full = [v for v in evade if summary[v]["cost_vs_ft"] is not None and summary[v]["cost_vs_ft"] <= max_cost]
    unmeasured = [v for v in evade if summary[v]["cost_vs_ft"] is None]
    out.append(f"- every metric at once in >= {min_seeds}/{n_seeds} seeds, <= {max_drop} points, <= {max_cost}x FT "
               f"per iteration: " + (", ".join(full) if full else "**no variant**")
               + (f" (cost not measured, so not counted: {', '.join(unmeasured)})" if unmeasured else ""))
    return out


def pareto_plot(summary: dict, n_metrics: int, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    at: dict[tuple[float, float], list[str]] = {}   # models at the same point share one label
    for label, d in summary.items():
        marker = "s" if label in VARIANTS else ("^" if label == "Negative" else "o")
        ax.scatter(d["drop"], d["evaded"], marker=marker, s=40)
        at.setdefault((round(d["drop"], 2), round(d["evaded"], 2)), []).append(label)
    for (x, y), labels in at.items():
        ax.annotate("\n".join(labels), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.axvline(1.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("accuracy drop (points)")
    ax.set_ylabel(f"metrics evaded (of {n_metrics}, mean over seeds)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=tuple(PROTOCOLS), default="paper",
                    help="which Table 1 run: the paper's protocol (width 16, S_LTD 10%%) or the width-8 / 1%% proxy")
    ap.add_argument("--arch", nargs="+", default=["vgg_small", "resnet_small"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--runs", default="runs/bench")
    ap.add_argument("--no-knockoff", dest="knockoff", action="store_false",
                    help="skip the KnockoffNets learning curves (the last column)")
    ap.add_argument("--no-summary", dest="summary", action="store_false",
                    help="only run the variants (the Table 1 run need not be finished; several processes with "
                         "disjoint --variants may share one results file); a later call writes the tables")
    ap.add_argument("--retime", nargs="*", metavar="LABEL", default=None,
                    help="time LABELs (default: FT(0.5) and --variants) again, one at a time, on the first "
                         "--retime-seeds seeds; run it alone on the machine: the cost columns then use these runs")
    ap.add_argument("--retime-seeds", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("REMOVALNET_THREADS", "1")))
    for arch in args.arch:
        t0 = time.perf_counter()
        try:
            b = Bench(arch, Path(args.runs), args.protocol)
        except RemovalNetError as e:
            raise SystemExit(f"error: {e}") from None
        seeds = b.spec.seeds[:args.seeds]
        for v in args.variants:
            for s in seeds:
                m = b.variant(v, VARIANTS[v], s)
                print(f"{arch} {v} seed {s}: " + (f"failed: {m['failed']}" if "failed" in m
                                                     else f"accuracy {m['accuracy']:.4f}"), flush=True)
        if args.retime is not None:
            for label in args.retime or ["FT(0.5)"] + list(args.variants):
                for s in seeds[:args.retime_seeds]:
                    r = b.retime(label, s)
                    print(f"{arch} retime {label} seed {s}: {r['cpu_s']:.1f} CPU s, {r['iterations']} iterations, "
                          f"setup {r['setup_cpu_s']:.1f} s" + (f"; failed: {r['failed']}" if "failed" in r else ""),
                          flush=True)
        if not args.summary:
            continue
        b.refresh()
        table, data = summarise(b, seeds, args.variants, args.knockoff)
        png = HERE / "results" / f"{b.name}.png"
        width = b.spec.victim.kwargs.get("width", "default")
        pareto_plot(data["summary"], len(data["metrics"]), png,
                    f"{arch} (width {width}), Fashion-MNIST, S_LTD {b.fraction:.0%}")
        header = (f"# Removal variants against every verifier: {arch} on Fashion-MNIST ({args.protocol} protocol)\n\n"
                  f"- machine: {machine()}\n- date: {dt.date.today().isoformat()}\n- commit: {commit()}\n"
                  f"- Table 1 run: {b.spec.name} (width {width}, S_LTD {b.fraction:.0%} of the training set)\n"
                  f"- victim accuracy {data['victim_accuracy'] * 100:.2f}%; seeds {seeds}; verdicts at the closest of the "
                  f"{b.spec.references.count} reference and {b.spec.negatives.count} negative (independent) models\n"
                  f"- variants: removalnet-plus with {json.dumps({v: VARIANTS[v] for v in args.variants})}\n"
                  f"- {run_time_line(b.results)}; this invocation {(time.perf_counter() - t0) / 60:.1f} min, torch "
                  f"threads {torch.get_num_threads()}\n\n![pareto]({b.name}.png)\n\n")
        data.update(protocol=args.protocol, table1=b.spec.name, width=width, fraction=b.fraction, commit=commit(),
                    machine=machine())
        (HERE / "results" / f"{b.name}.md").write_text(header + table + "\n")
        (HERE / "results" / f"{b.name}.json").write_text(json.dumps(data, indent=1))
        print(f"wrote benchmarks/results/{b.name}.md")


if __name__ == "__main__":
    main()
