"""``removalnet audit`` end to end at a tiny size: the user's LeNet file, its plain state dict and an image folder;
the report card's numbers are checked against the runner's database, recomputed here independently."""
import numpy as np
import pytest
import torch
from PIL import Image

from removalnet.cli import main
from removalnet.commands import audit
from removalnet.experiment.store import ResultStore
from helpers import LENET, user_lenet

TINY_BUDGET = {"seeds": 2, "references": 3, "train": {"iterations": 6, "batch_size": 32, "lr": 0.05},
               "iterations": 2, "batch_size": 16, "fraction": 0.1, "verifier_count": 30,
               "verifiers": {"ipguard": {"num_points": 5, "max_iter": 5}, "modeldiff": {"num_pairs": 4, "iterations": 5},
                             "sac": {"num_samples": 5}}}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("audit")
    (root / "mymodel.py").write_text(LENET)
    d = load_digits()
    for i, (im, y) in enumerate(zip(d.images[:300], d.target[:300])):
        split = "test" if i % 3 == 0 else "train"
        (root / "digits" / split / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((28, 28)).save(root / "digits" / split / str(y) / f"{i}.png")
    net = user_lenet(root / "mymodel.py", seed=0).train()
    x = torch.stack([torch.from_numpy(np.array(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((28, 28))))
                     for im in d.images[:300]]).float().unsqueeze(1) / 255
    y = torch.from_numpy(d.target[:300])
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.save(net.state_dict(), root / "model.pt")
    return root


def _rows(run):
    with ResultStore(run / "results.db") as st:
        return {r["name"]: (r["config"], r["metrics"]) for r in st.rows()}


def test_audit_card_matches_the_database(audited, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(audit.BUDGETS, "quick", TINY_BUDGET)
    monkeypatch.chdir(audited)
    run = tmp_path / "run"
    argv = ["audit", "--model", "mymodel.py:LeNet", "--weights", "model.pt", "--data", "folder:digits",
            "--out", str(run), "--margin", "5", "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (run / "report-card.md").read_text() == out
    html = (run / "report-card.html").read_text()
    assert "Settings" in html and "machine" in html and "MD-DDV" in html

    rows = _rows(run)
    victim_acc = rows["models/victim"][1]["accuracy"]
    refs = [rows[f"scores/reference-{i}"][1] for i in range(3)]
    labels = [f"{lab} S_LTD" for lab in ("FT(0.5)", "WP(0.5)", "Distill", "KnockoffNets", "RemovalNet",
                                          "removalnet-plus", "permute-only")]
    from removalnet.experiment.artifacts import slug
    from removalnet.report.card import build_card
    card = build_card(run, margin=5)
    assert card.victim_accuracy == pytest.approx(victim_acc)
    assert card.fpr_source == "leave-one-out"
    sim = {"MD-DDV", "IPG-MR"}
    for m in card.metrics:
        ref_vals = [r[m] for r in refs]
        # minmax (the paper): tau = the reference models' min distance / max similarity
        tau = max(ref_vals) if m in sim else min(ref_vals)
        assert card.taus[m] == pytest.approx(tau)
        loo = np.mean([(v > max(ref_vals[:i] + ref_vals[i + 1:])) if m in sim else (v < min(ref_vals[:i] + ref_vals[i + 1:]))
                       for i, v in enumerate(ref_vals)])
        assert card.fpr[m] == pytest.approx(loo)
        for a in card.attacks:
            vals = [rows[f"scores/{slug(a['label'])}/seed-{s}"][1][m] for s in (0, 1)]
            det = np.mean([(v > tau) if m in sim else (v < tau) for v in vals])
            assert a["detection"][m] == pytest.approx(det), (m, a["label"])
    for a in card.attacks:
        accs = [rows[f"scores/{slug(a['label'])}/seed-{s}"][1]["accuracy"] for s in (0, 1)]
        assert a["accuracy"] == pytest.approx(np.mean(accs))
        assert a["cost"] == pytest.approx(100 * (victim_acc - np.mean(accs)))
        assert a["collapsed"] == (a["cost"] > 5)
    assert [a["label"] for a in card.attacks] == labels
    # a verdict line per judged metric; a collapsed attack is never the evader named
    assert len(card.verdicts) == len(card.metrics)
    collapsed = {a["label"] for a in card.attacks if a["collapsed"]}
    for v in card.verdicts:
        if v.startswith("Relied on alone"):
            assert not any(f"evaded by {c} " in v for c in collapsed)
    assert card.recommendation in out
    # resumable: a rerun runs nothing and prints the same card
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "0 ran" in cap.err and cap.out == out
    # report --format html writes a page (a file, never stdout) with the collapsed rows marked
    assert main(["report", str(run), "--format", "html", "--collapse-margin", "5"]) == 0
    cap = capsys.readouterr()
    page = (run / "report.html").read_text()
    assert "<html" not in cap.out and "report.html" in cap.out
    assert "Settings" in page and "reference accuracies" in page
    assert page.count("collapsed (&gt; 5 points lost)") == sum(a["collapsed"] for a in card.attacks)


def test_audit_with_given_references(audited, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(audit.BUDGETS, "quick", {**TINY_BUDGET, "seeds": 1})
    monkeypatch.chdir(audited)
    for s in (1, 2):
        torch.save(user_lenet(audited / "mymodel.py", seed=s).state_dict(), tmp_path / f"r{s}.pt")
    assert main(["audit", "--model", "mymodel.py:LeNet", "--weights", "model.pt", "--data", "folder:digits",
                 "--references", str(tmp_path / "r1.pt"), str(tmp_path / "r2.pt"), "--out", str(tmp_path / "run"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "models/reference-1" in out and "models/reference-2" not in out
    assert not (tmp_path / "run").exists()


def test_audit_on_ray_matches_local(audited, tmp_path, capsys, monkeypatch):
    """``audit --executor ray`` runs the same jobs as the local executor and reaches the same numbers."""
    ray = pytest.importorskip("ray")
    monkeypatch.setitem(audit.BUDGETS, "quick", {**TINY_BUDGET, "seeds": 1})
    monkeypatch.chdir(audited)
    base = ["audit", "--model", "mymodel.py:LeNet", "--weights", "model.pt", "--data", "folder:digits", "-q"]
    assert main(base + ["--out", str(tmp_path / "local")]) == 0
    local_card = capsys.readouterr().out
    try:
        assert main(base + ["--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    finally:
        ray.shutdown()
    ray_card = capsys.readouterr().out

    def metrics(run):
        with ResultStore(run / "results.db") as st:
            return {r["id"]: (r["name"], r["status"], {k: v for k, v in (r["metrics"] or {}).items()
                                                        if "time" not in k and k != "history"}) for r in st.rows()}

    local, on_ray = metrics(tmp_path / "local"), metrics(tmp_path / "ray")
    assert local.keys() == on_ray.keys() and len(local) > 10
    for job, (name, status, m) in local.items():
        assert on_ray[job][:2] == (name, "done") and status == "done"
        assert on_ray[job][2].keys() == m.keys(), name
        for k, v in m.items():
            if isinstance(v, float):
                assert on_ray[job][2][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (name, k)
    # the cards differ only in the run folder named in them
    assert local_card.replace(str(tmp_path / "local"), "RUN") == ray_card.replace(str(tmp_path / "ray"), "RUN")
