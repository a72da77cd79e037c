"""The experiment runner: spec validation, resume after interruption, failure isolation, executors."""
import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from removalnet import RemovalNetError
from removalnet.cli import main
from removalnet.experiment import load_spec, plan_jobs, run_experiment, spec_from_dict
from removalnet.experiment.store import ResultStore

TINY = {
    "name": "tiny",
    "dataset": "digits",
    "seeds": [0, 1],
    "victim": {"arch": "vgg_small", "kwargs": {"width": 4}, "train": {"iterations": 30, "batch_size": 64, "lr": 0.05}},
    "references": {"count": 2, "seed_offset": 1000},
    "negatives": {"count": 1, "seed_offset": 2000},
    "verifier_count": 60,
    "attacks": [
        {"name": "ft", "label": "FT(0.5)", "params": {"ratio": 0.5, "iterations": 4, "batch_size": 16},
         "scenario": "ltd", "count": 40},
        {"name": "removalnet", "label": "Ours(S_LTD)",
         "params": {"iterations": 4, "batch_size": 16, "checkpoint_every": 2, "latent_steps": 2},
         "scenario": "ltd", "count": 40, "score_checkpoints": True},
        {"name": "removalnet", "label": "Ours(S_LSD)", "params": {"iterations": 2, "batch_size": 16, "latent_steps": 2},
         "scenario": "lsd", "source": "partition", "count": 40},
    ],
    "lsd_holdout": 0.1,
    "verifiers": {"ipguard": {"num_points": 8, "max_iter": 20}, "modeldiff": {"num_pairs": 8, "iterations": 30},
                  "sac": {"num_samples": 8}},
}


def _spec(**over):
    d = json.loads(json.dumps(TINY))
    d.update(over)
    return spec_from_dict(d)


def _db_rows(run_dir):
    with ResultStore(run_dir / "results.db") as s:
        rows = s.rows()
    out = {}
    for r in rows:
        m = r["metrics"] or {}
        m = {k: v for k, v in m.items() if "time" not in k and k != "history"}
        out[r["id"]] = (r["name"], r["status"], json.dumps(m, sort_keys=True))
    return out


@pytest.mark.parametrize("patch,key", [
    ({"victim": {"arch": "nope"}}, "victim.arch"),
    ({"attacks": [{"name": "ft", "scenario": "xyz", "count": 5}]}, "attacks[0].scenario"),
    ({"attacks": [{"name": "ft", "params": {"ratio": 3}, "count": 5}]}, "attacks[0].params"),
    ({"attacks": [{"name": "ft", "fraction": 0.1, "count": 5}]}, "attacks[0]"),
    ({"verifiers": {"nope": {}}}, "verifiers.nope"),
    ({"colour": "red"}, "colour"),
    ({"negatives": {"count": 3, "seed_offset": 1001}}, "negatives.seed_offset"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"lsd_holdout": 0.0}, "attacks[2].source"),
    ({"threshold_rule": "median"}, "threshold_rule"),
    ({"threshold_rule": {"name": "normal", "k": -1}}, "threshold_rule"),
    ({"attacks": [{"name": "ft", "count": 5, "baseline": "yes"}]}, "attacks[0].baseline"),
    ({"study": {"name": "nope"}}, "study.name"),
])
def test_spec_errors_name_the_key(patch, key):
    with pytest.raises(RemovalNetError) as e:
        _spec(**patch)
    assert f"spec: {key}" in str(e.value)


def test_spec_rule_and_baseline_marks():
    spec = _spec(threshold_rule={"name": "normal", "k": 3})
    assert spec.threshold_rule.k == 3.0 and spec.to_dict()["threshold_rule"] == {"name": "normal", "k": 3.0}
    assert _spec().to_dict()["threshold_rule"] == "minmax"       # an existing spec is stored as before
    assert [a.baseline for a in spec.attacks] == [True, False, False]   # FT by its class, RemovalNet not
    marked = _spec(attacks=[{**TINY["attacks"][1], "baseline": True}])
    assert marked.attacks[0].baseline is True
    # the mark is not part of the job config: ids stay those of the unmarked spec
    assert [j.id for j in plan_jobs(marked)] == [j.id for j in plan_jobs(_spec(attacks=[TINY["attacks"][1]]))]


def test_plan_is_a_dag_with_stable_ids():
    spec = _spec()
    jobs = plan_jobs(spec)
    seen = set()
    for j in jobs:
        assert set(j.deps) <= seen, f"{j.name} depends on a later job"
        seen.add(j.id)
    assert [j.id for j in jobs] == [j.id for j in plan_jobs(_spec())]
    kinds = [j.kind for j in jobs]
    # victim + 2 refs + 1 negative; 3 attacks x 2 seeds; 3 fingerprints; scores: 3 models + 6 attacks + 2x3 checkpoints
    assert kinds.count("train") == 4 and kinds.count("attack") == 6 and kinds.count("fingerprint") == 3
    assert kinds.count("score") == 3 + 6 + 6
    changed = plan_jobs(_spec(victim={**TINY["victim"], "seed": 5}))
    same = {j.name for j in changed if j.id in {k.id for k in jobs}}
    # only the independently trained models do not depend on the victim; everything else is re-planned
    assert same == {"models/reference-0", "models/reference-1", "models/negative-0"}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    s = run_experiment(_spec(), d, progress=False)
    assert s.ok, (s.failed, s.skipped_deps)
    return d


def test_resume_after_interruption_matches_uninterrupted(full_run, tmp_path):
    spec = _spec()
    part = run_experiment(spec, tmp_path, max_jobs=6, progress=False)
    assert part.stopped_early and part.ran == 6 and not part.ok
    rest = run_experiment(spec, tmp_path, progress=False)
    assert rest.skipped_done == 6 and rest.ok
    assert _db_rows(tmp_path) == _db_rows(full_run)
    again = run_experiment(spec, tmp_path, progress=False)
    assert again.ran == 0 and again.skipped_done == again.planned


def test_database_records_config_versions_and_metrics(full_run):
    con = sqlite3.connect(full_run / "results.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = con.execute("SELECT kind, config, seed, versions, metrics, status FROM jobs WHERE kind='score'").fetchall()
    assert rows and all(r[5] == "done" for r in rows)
    m = json.loads(rows[0][4])
    assert {"IPG-MR", "MD-DDV", "SAC", "accuracy"} <= set(m)
    assert "torch" in json.loads(rows[0][3])
    assert (full_run / "attacks" / "ours-s_ltd" / "seed-0" / "trace.csv").exists()
    assert (full_run / "attacks" / "ours-s_ltd" / "seed-0" / "checkpoints" / "t0004.safetensors").exists()


def test_failing_job_is_recorded_and_others_go_on(tmp_path):
    spec = _spec(attacks=TINY["attacks"] + [
        {"name": "removalnet", "label": "Broken", "params": {"iterations": 2, "layer": 9},
         "scenario": "ltd", "count": 40}])
    s = run_experiment(spec, tmp_path, progress=False)
    assert not s.ok
    assert sorted(s.failed) == ["attacks/broken/seed-0", "attacks/broken/seed-1"]
    assert sorted(s.skipped_deps) == ["scores/broken/seed-0", "scores/broken/seed-1"]
    with ResultStore(tmp_path / "results.db") as st:
        rows = {r["name"]: r for r in st.rows()}
    assert "split layer 9" in rows["attacks/broken/seed-0"]["error"]
    assert rows["scores/ours-s_ltd/seed-1"]["status"] == "done"


def test_cli_run_dry_run_and_report(full_run, tmp_path, capsys):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY))
    assert main(["run", str(spec_file), "--out", str(full_run), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0 to run" in out and "attack" in out
    for fmt in ("md", "csv", "tex", "html"):
        assert main(["report", str(full_run), "--format", fmt, "--out", str(tmp_path / f"t.{fmt}")]) == 0
    md = (tmp_path / "t.md").read_text()
    assert "FT(0.5)" in md and "Negative" in md and "τ" in md
    assert (tmp_path / "t.html").read_text().count("data:image/png;base64") == 1
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_ray_executor_matches_local(full_run, tmp_path):
    ray = pytest.importorskip("ray")
    from removalnet.experiment import RayExecutor

    try:
        ex = RayExecutor(num_cpus=2)
        s = run_experiment(_spec(), tmp_path, executor=ex, progress=False)
    finally:
        ray.shutdown()
    assert s.ok and s.ran == s.planned
    assert _db_rows(tmp_path) == _db_rows(full_run)


def test_lsd_partition_is_held_out_from_training():
    from removalnet.data import assert_disjoint, dataset_labels
    from removalnet.experiment.jobs import training_split

    rest, hold = training_split({"dataset": "digits", "data_root": None, "lsd_holdout": 0.1})
    assert_disjoint(rest, hold)
    assert len(rest) + len(hold) == 1437 and 130 <= len(hold) <= 150
    assert len(set(dataset_labels(hold).tolist())) == 10  # stratified
    full, none = training_split({"dataset": "digits", "data_root": None, "lsd_holdout": 0.0})
    assert none is None and len(full) == 1437


ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(ROOT.glob("configs/paper/*.yaml")) + sorted(ROOT.glob("benchmarks/specs/*.yaml")) + [
    ROOT / "src" / "removalnet" / "configs" / "demo.yaml"]


@pytest.mark.parametrize("path", [str(p) for p in SHIPPED], ids=[p.stem for p in SHIPPED])
def test_shipped_specs_validate_and_plan(path, tmp_path, capsys):
    spec = load_spec(path)
    jobs = plan_jobs(spec)
    assert len({j.id for j in jobs}) == len(jobs)
    assert main(["run", path, "--out", str(tmp_path), "--dry-run"]) == 0
    assert f"{len(jobs)} jobs, {len(jobs)} to run" in capsys.readouterr().out


def test_failed_job_is_rerun_on_the_next_run(tmp_path, monkeypatch):
    """A job that failed in an earlier run (e.g. out of memory) is run again, not skipped as finished, and
    the jobs that were skipped because of it run too."""
    import removalnet.experiment.runner as runner

    spec = _spec(seeds=[0], attacks=TINY["attacks"][:1], references={"count": 1, "seed_offset": 1000})
    real = runner.execute
    calls = []

    def flaky(job, run_dir, fp_jobs=None):
        calls.append(job["name"])
        if job["kind"] == "attack":
            return {**real({"kind": "nope"}, run_dir), "status": "failed", "error": "RuntimeError: out of memory"}
        return real(job, run_dir, fp_jobs)

    monkeypatch.setattr(runner, "execute", flaky)
    first = run_experiment(spec, tmp_path, progress=False)
    assert first.failed == ["attacks/ft-0.5/seed-0"] and first.skipped_deps == ["scores/ft-0.5/seed-0"]
    monkeypatch.setattr(runner, "execute", real)
    with ResultStore(tmp_path / "results.db") as st:
        before = {r["name"]: r["status"] for r in st.rows()}
    assert before["attacks/ft-0.5/seed-0"] == "failed" and before["scores/ft-0.5/seed-0"] == "skipped"
    second = run_experiment(spec, tmp_path, progress=False)
    assert second.ok and second.ran == 2 and second.skipped_done == second.planned - 2
    with ResultStore(tmp_path / "results.db") as st:
        after = {r["name"]: r for r in st.rows()}
    assert all(r["status"] == "done" for r in after.values())
    assert after["attacks/ft-0.5/seed-0"]["error"] is None
    assert (tmp_path / "attacks" / "ft-0.5" / "seed-0" / "surrogate.safetensors").is_file()
    assert "IPG-MR" in after["scores/ft-0.5/seed-0"]["metrics"]


def _content_keys(ds):
    import hashlib
    return [hashlib.sha1(ds[i][0].numpy().tobytes()).hexdigest() for i in range(len(ds))]


def test_verifiers_draw_their_data_from_the_test_split(tmp_path, monkeypatch):
    """verifier_data, the fingerprint job and the score job use test-split samples only (identified by
    content against both splits), and the score job's accuracy is the suspect's test accuracy."""
    import torch

    from removalnet import create_model
    from removalnet.checkpoint import save_checkpoint
    from removalnet.data import load_dataset
    from removalnet.experiment.jobs import execute, verifier_data
    from removalnet.verify import FingerprintCache

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    in_train, in_test = set(_content_keys(train)), set(_content_keys(test))
    only_test = in_test - in_train

    def from_test(ds):
        keys = _content_keys(ds)
        return all(k in in_test for k in keys) and sum(k in only_test for k in keys) >= 0.9 * len(keys)

    vd = verifier_data({"dataset": "digits", "data_root": None, "verifier_count": 60})
    assert len(vd) == 60 and from_test(vd)
    assert len(verifier_data({"dataset": "digits", "data_root": None})) == len(test)

    spec = _spec(seeds=[0], attacks=TINY["attacks"][:1], verifiers={"sac": {"num_samples": 8}})
    jobs = {j.name: j.to_dict() for j in plan_jobs(spec)}
    fp_jobs = {n: j for n, j in jobs.items() if j["kind"] == "fingerprint"}
    torch.manual_seed(0)
    model = create_model("vgg_small", 10, 1, 28, width=4).eval()
    for name in ("models/victim", "models/reference-0"):
        save_checkpoint(tmp_path / name / "model.safetensors", model, {"role": "test"})
    seen = []
    real = FingerprintCache.get_or_extract

    def spy(self, verifier, victim, data, **kw):
        seen.append(data)
        return real(self, verifier, victim, data, **kw)

    monkeypatch.setattr(FingerprintCache, "get_or_extract", spy)
    fp = execute(fp_jobs["fingerprints/sac"], tmp_path, fp_jobs)
    score = execute(jobs["scores/reference-0"], tmp_path, fp_jobs)
    assert fp["status"] == "done" and score["status"] == "done", (fp["error"], score["error"])
    assert len(seen) == 2 and all(len(d) == 60 and from_test(d) for d in seen)
    with torch.no_grad():
        xs = torch.stack([test[i][0] for i in range(len(test))])
        ys = torch.tensor([int(test[i][1]) for i in range(len(test))])
        acc = float((model(xs).argmax(1) == ys).double().mean())
    assert score["metrics"]["accuracy"] == pytest.approx(acc, abs=1e-9)
