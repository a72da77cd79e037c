"""`removalnet run --executor ray` on a local Ray cluster of two nodes gives the local executor's database rows."""
import pytest
import yaml

from removalnet.cli import main
from removalnet.experiment import load_spec, plan_jobs
from removalnet.experiment.store import ResultStore

DEEPJUDGE = {"num_seeds": 6, "adv_seeds": 30, "max_tests": 8, "max_iters": 20, "m": 1.5, "pgd_steps": 3,
             "pgd_eps": 0.3, "pgd_step_size": 0.1}
SPEC = {
    "name": "ray-tiny", "dataset": "digits", "seeds": [0], "verifier_count": 60, "lsd_holdout": 0.1,
    "victim": {"arch": "vgg_small", "kwargs": {"width": 4}, "train": {"iterations": 20, "batch_size": 64, "lr": 0.05}},
    "references": {"count": 1, "seed_offset": 1000},
    "attacks": [
        {"name": "ft", "label": "FT(0.5)", "params": {"ratio": 0.5, "iterations": 3, "batch_size": 16},
         "scenario": "ltd", "count": 30},
        {"name": "removalnet", "label": "Ours(S_LSD)", "params": {"iterations": 2, "batch_size": 16, "latent_steps": 2},
         "scenario": "lsd", "source": "partition", "count": 30},
    ],
    # the DeepJudge family shares one test generation: on Ray the later two wait for the first
    "verifiers": {"deepjudge": DEEPJUDGE, "deepjudge_aligned": DEEPJUDGE,
                  "ipguard": {"num_points": 6, "max_iter": 10}, "sac": {"num_samples": 6}},
}


def _rows(run_dir):
    with ResultStore(run_dir / "results.db") as st:
        return {r["id"]: (r["name"], r["status"], {k: v for k, v in (r["metrics"] or {}).items()
                                                    if "time" not in k and k != "history"}) for r in st.rows()}


def _close(a, b, where):
    """Equal up to 1e-5 (floats, recursively); everything else exactly."""
    if isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-5, nan_ok=True), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow
def test_run_on_a_two_node_ray_cluster_matches_local(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    assert main(["run", str(spec), "--out", str(tmp_path / "local"), "-q"]) == 0
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        assert main(["run", str(spec), "--out", str(tmp_path / "ray"), "--executor", "ray",
                     "--address", cluster.address, "-q"]) == 0
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
    local, on_ray = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert local.keys() == on_ray.keys() and len(local) == len(plan_jobs(load_spec(spec)))
    for job, (name, status, metrics) in local.items():
        assert status == "done" and on_ray[job][:2] == (name, "done"), name
        _close(metrics, on_ray[job][2], name)
    generations = {m["generation"] for name, _, m in local.values() if name.startswith("fingerprints/deepjudge")}
    assert len(generations) == 1
