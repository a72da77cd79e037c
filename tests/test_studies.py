"""The paper's studies (Fig. 6-10, Table 4): pure functions on hand-made inputs, and each study end to end on
a tiny digits config (figure files, tables with the expected rows and columns)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from removalnet import RemovalNetError
from removalnet.cli import main
from removalnet.experiment import plan_jobs, run_experiment, spec_from_dict
from removalnet.report import build_table, write_sections
from removalnet.studies import build_study_report, create_study, list_studies
from removalnet.studies.boundary import pair_distance
from removalnet.studies.efficiency import iterations_to_reach, mean_curve
from removalnet.studies.robustness import rob, rob_distance
from removalnet.studies.saliency import map_correlation

BASE = {"dataset": "digits", "seeds": [0, 1],
        "victim": {"arch": "vgg_small", "kwargs": {"width": 4},
                   "train": {"iterations": 30, "batch_size": 64, "lr": 0.05}},
        "references": {"count": 2, "seed_offset": 1000}, "negatives": {"count": 1, "seed_offset": 2000},
        "verifier_count": 60, "lsd_holdout": 0.2,
        "verifiers": {"ipguard": {"num_points": 8, "max_iter": 20}, "modeldiff": {"num_pairs": 8, "iterations": 30}}}
FAST = {"iterations": 4, "batch_size": 16, "latent_steps": 1, "checkpoint_every": 2}
TINY = {
    "substitute_size": {"ratios": [0.05, 0.1], "counts": [40], "params": FAST},
    "efficiency": {"scenarios": ["ltd", "lsd"], "fraction": 0.05, "params": FAST,
                   "knockoff": {"iterations": 20, "eval_every": 5, "batch_size": 16}, "eval_count": 50},
    "ablation": {"alphas": [0.0, 1.0], "betas": [0.0, 2.0], "params": FAST, "count": 40, "fraction": None},
    "saliency": {"params": FAST, "num_images": 4, "count": 40},
    "boundary": {"params": FAST, "iterations_shown": [0, 2, 4], "per_class": 5, "perplexity": 5, "count": 40},
    "robustness": {"params": FAST, "count": 20, "pgd_steps": 2, "deepfool_steps": 3},
}


def tiny_spec(name: str, **over):
    d = json.loads(json.dumps({**BASE, "name": f"tiny-{name}", "study": {"name": name, **TINY[name]}}))
    d.update(over)
    return spec_from_dict(d)


# ------------------------------------------------------------------------------------- pure functions
def test_iterations_to_reach_hand_made_curve():
    ts = [0, 100, 200, 300, 400]
    acc = [0.10, 0.50, 0.79, 0.81, 0.80]
    assert iterations_to_reach(ts, acc, 0.80) == 300          # first point at or above the target
    assert iterations_to_reach(ts, acc, 0.79) == 200          # ties count as reached
    assert iterations_to_reach(ts, acc, 0.05) == 0
    assert iterations_to_reach(ts, acc, 0.90) is None         # never reached
    assert iterations_to_reach([300, 0, 100], [0.9, 0.1, 0.95], 0.9) == 100   # order by t, not by position
    assert iterations_to_reach([0, 100], [None, 0.7], 0.5) == 100            # missing points skipped


def test_mean_curve_uses_common_points():
    h1 = [{"t": 0, "accuracy": 0.1, "time_s": 0.0}, {"t": 10, "accuracy": 0.5, "time_s": 2.0},
          {"t": 20, "accuracy": 0.7, "time_s": 4.0}]
    h2 = [{"t": 0, "accuracy": 0.3, "time_s": 0.0}, {"t": 10, "accuracy": 0.7, "time_s": 4.0}]
    ts, vals, times = mean_curve([h1, h2])
    assert ts == [0, 10]
    assert vals == pytest.approx([0.2, 0.6])
    assert times == pytest.approx([0.0, 3.0])


def test_rob_and_robd_hand_made_predictions():
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    victim = [0, 1, 2, 0, 0, 0, 0, 0, 0, 0]      # 3 of 10 right
    suspect = [0, 1, 2, 3, 4, 5, 6, 0, 0, 0]     # 7 of 10 right
    assert rob(victim, labels) == pytest.approx(0.3)
    assert rob(suspect, labels) == pytest.approx(0.7)
    assert rob_distance(rob(victim, labels), rob(suspect, labels)) == pytest.approx(0.4)
    assert rob_distance(0.7, 0.3) == pytest.approx(0.4)       # symmetric, eq. 17's absolute value
    with pytest.raises(RemovalNetError, match="equally long"):
        rob([0, 1], [0])


def test_map_correlation_golden():
    a = np.array([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]]])
    b = np.array([[[0.0, 2.0], [4.0, 6.0]], [[0.0, 1.0], [2.0, 3.0]]])
    c = map_correlation(a, b)
    assert c[0] == pytest.approx(1.0)    # a linear rescaling is the same map
    assert c[1] == pytest.approx(0.0, abs=1e-12)  # a constant map correlates with nothing
    assert map_correlation(a[:1], -a[:1])[0] == pytest.approx(-1.0)


def test_pair_distance_golden():
    # victim points at (0,0) and (2,0); surrogate points on top of them: 0
    emb = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    assert pair_distance(emb) == pytest.approx(0.0)
    # swapped partners: pair distance 2; all six pairwise distances 2,0,2,2,0,2 -> mean 4/3 -> 1.5
    emb = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    assert pair_distance(emb) == pytest.approx(1.5)


# --------------------------------------------------------------------------------------- validation
def test_every_study_registered():
    assert list_studies() == ["ablation", "boundary", "efficiency", "robustness", "saliency", "substitute_size"]


@pytest.mark.parametrize("study,msg", [
    ({"name": "nope"}, "study.name"),
    ({"name": "ablation", "alphas": [1.5]}, "alphas"),
    ({"name": "ablation", "params": {"alpha": 0.3}}, "alpha and beta are what the study varies"),
    ({"name": "substitute_size", "scenarios": ["xyz"]}, "scenarios"),
    ({"name": "substitute_size", "ratios": [0.5]}, "lsd_holdout"),
    ({"name": "boundary", "iterations_shown": [0, 150, 1000]}, "150 is not a checkpoint"),
    ({"name": "efficiency", "knockoff": {"policy": "greedy"}}, "knockoff"),
    ({"name": "efficiency", "scenarios": ["lsd"], "fractions": [0.3]}, "S_LSD fractions up to 0.3 need lsd_holdout"),
    ({"name": "robustness", "colour": 1}, "unknown parameter 'colour'"),
])
def test_bad_study_parameters_name_the_problem(study, msg):
    d = {**BASE, "name": "bad", "study": study}
    with pytest.raises(RemovalNetError, match=msg) as e:
        spec_from_dict(json.loads(json.dumps(d)))
    assert str(e.value).startswith("spec: study")


def test_study_rows_and_jobs():
    spec = tiny_spec("substitute_size")
    labels = [a.label for a in spec.attacks]
    assert labels == ["Ours(S_LTD, 5%)", "Ours(S_LTD, 10%)", "Ours(S_LTD, n=40)",
                      "Ours(S_LSD, 5%)", "Ours(S_LSD, 10%)", "Ours(S_LSD, n=40)"]
    assert all(a.params["lr"] == 0.005 and a.params["iterations"] == 4 for a in spec.attacks)  # merged defaults
    spec = tiny_spec("ablation")
    assert [a.label for a in spec.attacks] == ["Ours(alpha=0, beta=0)", "Ours(alpha=1, beta=0)",
                                               "Ours(alpha=0, beta=2)"]   # (0, 0) serves both sweeps
    jobs = plan_jobs(tiny_spec("robustness"))
    study = [j for j in jobs if j.kind == "study"]
    assert [j.name for j in study] == ["study/robustness/rob"]
    names = {j.id: j.name for j in jobs}
    assert sorted(names[d] for d in study[0].deps) == ["attacks/ours-s_ltd/seed-0", "attacks/ours-s_ltd/seed-1",
                                                      "models/negative-0", "models/victim"]
    # a study spec is still an ordinary spec: the same config gives the same job ids
    assert [j.id for j in plan_jobs(tiny_spec("robustness"))] == [j.id for j in jobs]


# ------------------------------------------------------------------------------------- end to end
def _run(name, tmp_path, **over):
    spec = tiny_spec(name, **over)
    run_dir = tmp_path / name
    s = run_experiment(spec, run_dir, progress=False, echo=lambda m: None)
    assert s.ok, s.failed
    rep = build_study_report(run_dir)
    paths = write_sections([rep], run_dir / "report", spec.name)
    return spec, run_dir, rep, paths


def _table(rep, i=0):
    title, head, rows = rep.tables[i]
    return head, rows


def _has_figures(paths, stem):
    names = {p.name for p in paths}
    assert f"{stem}.png" in names and f"{stem}.pdf" in names
    png = next(p for p in paths if p.name == f"{stem}.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_substitute_size_end_to_end(tmp_path):
    spec, run_dir, rep, paths = _run("substitute_size", tmp_path)
    _has_figures(paths, "substitute_size")
    head, rows = _table(rep)
    assert head[:5] == ["Scenario", "Samples", "Fraction", "Fidelity (%)", "Drop"]
    assert "MD-DDV" in head and "IPG-MR" in head
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("S_LTD", "40", "-"), ("S_LTD", "72", "5%"), ("S_LTD", "144", "10%"),
        ("S_LSD", "40", "-"), ("S_LSD", "72", "5%"), ("S_LSD", "144", "10%")]
    assert all(r[-1].endswith("/2 owned") for r in rows)
    names = {p.name for p in paths}
    assert {"tiny-substitute_size.md", "tiny-substitute_size-table1.csv", "tiny-substitute_size-table1.tex"} <= names


def test_efficiency_end_to_end(tmp_path):
    spec, run_dir, rep, paths = _run("efficiency", tmp_path)
    _has_figures(paths, "efficiency")
    head, rows = _table(rep)
    assert head[0] == "Scenario" and "KnockoffNets iterations to reach" in head
    assert [r[0] for r in rows] == ["S_LTD", "S_LSD"]
    for sc, d in rep.numbers.items():
        c = d["knockoff_curve"]
        assert c["t"][0] == 0 and c["t"][-1] == 20 and len(c["t"]) == 5
        assert d["iterations_to_reach"] == iterations_to_reach(c["t"], c["accuracy"], d["target_accuracy"])
        if d["iterations_to_reach"] is not None:
            assert d["saved_iterations"] == pytest.approx(1 - 4 / d["iterations_to_reach"])


def test_efficiency_at_several_fractions(tmp_path):
    """fractions: one RemovalNet/KnockoffNets pair per substitute size, each on its own substitute set."""
    d = {**BASE, "name": "tiny-efficiency-fractions",
         "study": {**TINY["efficiency"], "name": "efficiency", "scenarios": ["ltd"], "fractions": [0.05, 0.1]}}
    spec = spec_from_dict(json.loads(json.dumps(d)))
    assert {a.label: a.fraction for a in spec.attacks} == {
        "Ours(S_LTD, 5%)": 0.05, "KnockoffNets(S_LTD, 5%)": 0.05, "Ours(S_LTD, 10%)": 0.1, "KnockoffNets(S_LTD, 10%)": 0.1}
    s = run_experiment(spec, tmp_path / "run", progress=False, echo=lambda m: None)
    assert s.ok, s.failed
    rep = build_study_report(tmp_path / "run")
    head, rows = _table(rep)
    assert [r[0] for r in rows] == ["S_LTD, 5%", "S_LTD, 10%"]
    assert set(rep.numbers) == {"S_LTD, 5%", "S_LTD, 10%"}
    # a metric without evidence is named, with why, never silently left out of a study's report
    td = build_table(tmp_path / "run")
    td.degenerate, td.degenerate_why = ["IPG-MR", "MD-DDV"], {"IPG-MR": "no point", "MD-DDV": "no point"}
    assert build_study_report(tmp_path / "run", td=td).findings[0] == \
        "Degenerate (no evidence, not shown): IPG-MR, MD-DDV (no point)"


def test_ablation_end_to_end(tmp_path):
    spec, run_dir, rep, paths = _run("ablation", tmp_path)
    _has_figures(paths, "ablation")
    head, rows = _table(rep)
    assert head[:4] == ["Sweep", "alpha", "beta", "Fidelity (%)"]
    assert [(r[0], r[1], r[2]) for r in rows] == [("alpha", "0", "0"), ("alpha", "1", "0"), ("beta", "0", "0"),
                                                   ("beta", "0", "2")]
    assert rows[0][3:] == rows[2][3:]    # the shared (0, 0) row


def test_saliency_end_to_end(tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    spec, run_dir, rep, paths = _run("saliency", tmp_path)
    _has_figures(paths, "saliency")
    head, rows = _table(rep)
    assert head == ["Image", "Label", "Victim pred", "Surrogate pred", "corr(victim, surrogate)", "Negative pred",
                    "corr(victim, negative)"]
    assert len(rows) == 4
    assert all(-1.0 <= float(r[4]) <= 1.0 for r in rows)
    assert (run_dir / "study/saliency/maps/cams.safetensors").exists()


def test_boundary_end_to_end(tmp_path):
    spec, run_dir, rep, paths = _run("boundary", tmp_path, seeds=[0])
    _has_figures(paths, "boundary")
    head, rows = _table(rep)
    assert head == ["Iteration t", "Top-1 agreement", "Total variation", "Pair distance (t-SNE)"]
    assert [r[0] for r in rows] == ["0", "2", "4"]
    # t = 0 is the victim's copy: same outputs
    assert rows[0][1] == "1.000" and rows[0][2] == "0.000"


def test_robustness_end_to_end(tmp_path):
    pytest.importorskip("art")
    spec, run_dir, rep, paths = _run("robustness", tmp_path)
    head, rows = _table(rep)
    assert head[:6] == ["Method", "Rob_FV", "Rob_FS", "Rob_Neg", "RobD_FS", "RobD_Neg"]
    assert [r[0] for r in rows] == ["FGSM", "PGD", "DeepFool"]
    for method, d in rep.numbers.items():
        assert len(d["rob_surrogate"]) == 2 and len(d["rob_negative"]) == 1
        assert d["robd_surrogate"] == pytest.approx([abs(d["rob_victim"] - r) for r in d["rob_surrogate"]])
    assert "eps=0.03137" in rows[0][-1]


def test_study_command_and_html(tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    d = json.loads(json.dumps({**BASE, "name": "tiny-cli", "seeds": [0]}))
    d["study"] = {"name": "boundary", **TINY["boundary"]}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(d))
    assert main(["study", "boundary", str(spec_file), "-q", "--runs", str(tmp_path / "runs")]) == 0
    run_dir = tmp_path / "runs" / "tiny-cli"
    html = (run_dir / "report.html").read_text()
    assert "t-SNE" in html and "data:image/png;base64" in html
    assert (run_dir / "report" / "boundary.pdf").exists()
    # the wrong study name for this spec: one clear line, exit 2
    assert main(["study", "saliency", str(spec_file)]) == 2


def test_shipped_study_configs_dry_run(capsys):
    root = Path(__file__).resolve().parents[1]
    configs = sorted((root / "src/removalnet/configs/studies").glob("*.yaml"))
    assert {c.stem for c in configs} == set(list_studies())
    for c in configs + sorted((root / "configs/paper/studies").glob("*.yaml")):
        assert main(["study", yaml.safe_load(c.read_text())["study"]["name"], str(c), "--dry-run"]) == 0, c
    assert len(sorted((root / "configs/paper/studies").glob("*.yaml"))) == 6
