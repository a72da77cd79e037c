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
    x = torch.stack([torch.from_numpy(np.array(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((28, 28))))
                     for im in d.images[:300]]).float().unsqueeze(1) / 255
    y = torch.from_numpy(d.target[:300])
    # the victim (seed 0) and six independently trained models of the same recipe (two disjoint reference sets)
    for seed, name in [(0, "model.pt")] + [(s, f"indep{s}.pt") for s in range(1, 7)]:
        net = user_lenet(root / "mymodel.py", seed=seed).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(30):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        torch.save(net.state_dict(), root / name)
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
    cap = capsys.readouterr()
    out = cap.out
    assert (run / "report-card.md").read_text() == out
    # the fixture's victim is at chance on these digits: said once, before the grid (preflight), not per job
    assert cap.err.count("warning: the victim (") == 1 and "is near chance" in cap.err
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
    # a verdict line per judged metric and per attack that returned its start; neither a collapsed attack nor
    # one that returned its start is ever the evader named
    assert len(card.verdicts) == len(card.metrics) + sum(bool(a["status"]) for a in card.attacks)
    collapsed = {a["label"] for a in card.attacks if a["collapsed"] or a["status"]}
    for v in card.verdicts:
        if v.startswith("Relied on alone"):
            assert not any(f"evaded by {c} " in v for c in collapsed)
    assert card.recommendation.split(" Add them:")[0] in out   # the CLI's card also names the audit to rerun
    assert "Add them: `removalnet audit --model mymodel.py:LeNet --weights model.pt" in out
    # three references can bound no false-positive rate below 5% (1 - 0.05^(1/3) = 63%): advice withheld
    assert card.recommendation.startswith("No recommendation: 3 independent models are too few")
    assert "59 are needed" in card.recommendation and "--train-references 59" in card.recommendation
    for m in card.metrics:
        assert card.false_positives[m] == (0, 3) and card.fpr_bound[m] == pytest.approx(1 - 0.05 ** (1 / 3))
    assert "0/3, <= 71%" in out and "FPR bound (95%)" in out
    # references more than 3 accuracy points from the victim on average are flagged in the card
    gap = 100 * abs(np.mean([r["accuracy"] for r in refs]) - victim_acc)
    assert (card.mismatch is not None) == (gap > 3) and (("**Warning:**" in out) == (gap > 3))
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


def _audit_card(audited, run, refs):
    from removalnet.report.card import build_card
    assert main(["audit", "--model", "mymodel.py:LeNet", "--weights", "model.pt", "--data", "folder:digits",
                 "--references", *refs, "--out", str(run), "-q"]) == 0
    return build_card(run)


def test_advice_agrees_or_is_withheld_with_two_disjoint_reference_sets(audited, tmp_path, capsys, monkeypatch):
    """The same victim audited with two disjoint sets of independently trained references: the advice must not
    flip. At the default target (5%) three references support none, and both cards say so with the number needed."""
    monkeypatch.setitem(audit.BUDGETS, "quick", {**TINY_BUDGET, "seeds": 1})
    monkeypatch.chdir(audited)
    sets = (["indep1.pt", "indep2.pt", "indep3.pt"], ["indep4.pt", "indep5.pt", "indep6.pt"])
    cards = [_audit_card(audited, tmp_path / f"run{i}", refs) for i, refs in enumerate(sets)]
    for c in cards:
        assert c.recommendation.startswith("No recommendation: 3 independent models are too few")
        assert "59 are needed" in c.recommendation and "--references" in c.recommendation
    assert cards[0].fpr_bound == pytest.approx(cards[1].fpr_bound)   # the bound depends on n, not on the draw


def test_an_attack_that_returned_its_start_is_no_attack(audited, tmp_path, capsys, monkeypatch):
    """removalnet-plus forced to keep step 0 (its stopping rule accepts only full agreement): its status is
    "returned the start" in the trace, the report and the card; it is never the evader named."""
    monkeypatch.setitem(audit.BUDGETS, "quick", {**TINY_BUDGET, "seeds": 1})
    plain = audit._attacks

    def forced(b, scenario, source):
        rows = plain(b, scenario, source)
        for r in rows:
            if r["name"] == "removalnet-plus" and r["params"]["iterations"] > 0:
                r["params"]["min_agreement"] = 1.0
        return rows

    monkeypatch.setattr(audit, "_attacks", forced)
    monkeypatch.chdir(audited)
    run = tmp_path / "run"
    card = _audit_card(audited, run, ["indep1.pt", "indep2.pt"])
    out = capsys.readouterr().out
    by_label = {a["label"]: a for a in card.attacks}
    plus, permute = by_label["removalnet-plus S_LTD"], by_label["permute-only S_LTD"]
    assert plus["status"] == "returned the start in 1/1 seeds" and plus["reduced_to"] == "the permutation alone"
    assert permute["status"] is None   # asked for no training: it is what it says
    assert "returned the start in 1/1 seeds: the permutation alone (never an evasion)" in out
    assert not any("evaded by removalnet-plus" in v for v in card.verdicts)
    assert any(v.startswith("removalnet-plus S_LTD returned the start") for v in card.verdicts)
    rows = _rows(run)
    job = next(cfg for name, (cfg, m) in rows.items() if name.startswith("attacks/")
               and cfg.get("label") == "removalnet-plus S_LTD")
    metrics = next(m for name, (cfg, m) in rows.items() if cfg is job)
    assert metrics["status"] == "returned the start" and metrics["reduced_to"] == "the permutation alone"
    traces = [p for p in run.rglob("trace.csv") if "removalnet-plus" in str(p)]
    assert traces
    import csv
    with open(traces[0]) as f:
        last = list(csv.DictReader(f))[-1]
    assert last["status"] == "returned the start: the permutation alone"
    assert main(["report", str(run)]) == 0
    report = capsys.readouterr().out
    assert "returned the start in 1/1 seeds (the permutation alone)" in report
    assert "removalnet-plus S_LTD (returned the start in 1/1 seeds)" in report


@pytest.mark.parametrize("bad", ["0", "1", "nan", "-0.1"])
def test_a_bad_max_fpr_is_refused_before_anything_runs(audited, tmp_path, capsys, monkeypatch, bad):
    monkeypatch.chdir(audited)
    run = tmp_path / "run"
    assert main(["audit", "--model", "mymodel.py:LeNet", "--weights", "model.pt", "--data", "folder:digits",
                 "--max-fpr", bad, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --max-fpr") and err.count("\n") == 1
    assert not run.exists()
