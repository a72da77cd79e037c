"""Table 1 from a hand-made results database: means, stds, drops, taus and ownership counts by hand."""
import warnings

import pytest

from removalnet.experiment.store import ResultStore
from removalnet.report import build_table, to_csv, to_latex, to_markdown
from removalnet.report.render import copy_count_cells, table_cells


def _score(store, i, role, label, seed, acc, mr, sac):
    job = {"id": f"s{i}", "kind": "score", "name": f"scores/{label}/{seed}", "seed": seed,
           "config": {"role": role, "label": label, "index": seed}}
    store.record(job, "done", metrics={"accuracy": acc, "IPG-MR": mr, "SAC": sac})
    return job["id"]


@pytest.fixture
def run_dir(tmp_path):
    with ResultStore(tmp_path / "results.db") as s:
        s.set_meta("spec", {"name": "hand", "attacks": [{"name": "ft", "label": "FT(0.5)"}], "threshold_rule": "minmax"})
        ids = []
        s.record({"id": "v", "kind": "train", "name": "models/victim", "seed": 0, "config": {"role": "victim"}},
                 "done", metrics={"accuracy": 0.90})
        ids.append("v")
        for i, (mr, sac) in enumerate([(0.2, 0.5), (0.3, 0.4), (0.25, 0.6)]):
            ids.append(_score(s, i, "reference", "reference", i, 0.9, mr, sac))
        for i, (acc, mr, sac) in enumerate([(0.88, 0.9, 0.1), (0.86, 0.8, 0.2), (0.87, 0.1, 0.7)]):
            ids.append(_score(s, 10 + i, "attack", "FT(0.5)", i, acc, mr, sac))
        for i, (mr, sac) in enumerate([(0.1, 0.45), (0.35, 0.5)]):
            ids.append(_score(s, 20 + i, "negative", "negative", i, 0.89, mr, sac))
        s.record({"id": "junk", "kind": "score", "name": "old", "seed": 0,
                  "config": {"role": "attack", "label": "FT(0.5)"}}, "done", metrics={"accuracy": 0.0, "SAC": 9.0})
        s.set_meta("plan", ids)  # the stale row "junk" is not in the plan and must be ignored
    return tmp_path


def test_table_matches_hand_computation(run_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        td = build_table(run_dir)
    assert td.victim_accuracy == pytest.approx(0.90)
    assert td.pool == ["IPG-MR", "SAC"]
    assert td.taus == pytest.approx({"IPG-MR": 0.3, "SAC": 0.4})  # max similarity / min distance of references
    head, rows = table_cells(td)
    ft, neg, tau = rows
    assert ft[:3] == ["FT(0.5)", "87.00±1.00", "3.00"]
    assert ft[3] == "0.600±0.436"  # mean(0.9, 0.8, 0.1), sample std
    assert ft[-1] == "Yes (2/3)"
    assert neg[0] == "Negative" and neg[-1] == "No (0/2)"
    assert tau[3:5] == ["0.300", "0.400"]
    _, counts = copy_count_cells(td)
    assert counts[0] == ["FT(0.5)", "2/3", "2/3"] and counts[1] == ["Negative", "1/2", "0/2"]
    fpr = td.rules["minmax"]["false_positive_rate"]
    assert fpr == {"IPG-MR": 0.5, "SAC": 0.0}
    assert td.rules["minmax"]["baseline_detection_rate"]["IPG-MR"] == pytest.approx(2 / 3)
    md = to_markdown(td)
    assert "| FT(0.5) | 87.00±1.00 | 3.00 |" in md
    assert to_csv(td).splitlines()[1].startswith("FT(0.5),87.00±1.00,3.00")
    assert r"87.00$\pm$1.00" in to_latex(td)


def _with_spec(run_dir, **spec):
    with ResultStore(run_dir / "results.db") as s:
        s.set_meta("spec", {"name": "hand", "attacks": [{"name": "ft", "label": "FT(0.5)"}], **spec})


def test_spec_rule_with_parameters_reaches_the_report(run_dir):
    import numpy as np
    _with_spec(run_dir, threshold_rule={"name": "normal", "k": 1.5})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        td = build_table(run_dir)
        cli = build_table(run_dir, rule="minmax")            # a rule given to the report replaces the spec's
    mr, sac = np.array([0.2, 0.3, 0.25]), np.array([0.5, 0.4, 0.6])
    # oracle: IPG-MR is a similarity (mean + k std), SAC a distance (mean - k std), sample std
    assert td.taus["IPG-MR"] == pytest.approx(mr.mean() + 1.5 * mr.std(ddof=1), abs=1e-12)
    assert td.taus["SAC"] == pytest.approx(sac.mean() - 1.5 * sac.std(ddof=1), abs=1e-12)
    assert td.rule.to_dict() == {"name": "normal", "k": 1.5} and "rule `normal (k=1.5)`" in to_markdown(td)
    assert td.rules["normal"]["taus"] == td.taus                 # the comparison uses the chosen rule's k
    assert cli.taus == pytest.approx({"IPG-MR": 0.3, "SAC": 0.4})


def test_baseline_rows_come_from_the_spec_not_the_labels(run_dir):
    _with_spec(run_dir, attacks=[{"name": "ft", "label": "FT(0.5)", "baseline": False}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        td = build_table(run_dir)
    assert td.rules["minmax"]["baseline_detection_rate"]["IPG-MR"] is None     # no row marked
    _with_spec(run_dir, attacks=[{"name": "removalnet", "label": "FT(0.5)", "baseline": True}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        td = build_table(run_dir)
    assert td.rules["minmax"]["baseline_detection_rate"]["IPG-MR"] == pytest.approx(2 / 3)


def test_report_rule_parameters_alone_apply_to_the_spec_rule(run_dir, capsys):
    import numpy as np

    from removalnet.cli import main
    mr = np.array([0.2, 0.3, 0.25])
    _with_spec(run_dir, threshold_rule={"name": "normal", "k": 1.5})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["report", str(run_dir), "--k", "0.5"]) == 0
    assert "rule `normal (k=0.5)`" in capsys.readouterr().out
    # the spec's normal rule with k = 0.5 from the command line (oracle: mean + k std of the references, ddof 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        td = build_table(run_dir, rule={"name": "normal", "k": 0.5})
    assert td.taus["IPG-MR"] == pytest.approx(mr.mean() + 0.5 * mr.std(ddof=1), abs=1e-12)
    # a parameter the spec's rule does not take is refused in one line, before anything is written
    _with_spec(run_dir, threshold_rule="minmax")
    assert main(["report", str(run_dir), "--q", "10"]) == 2
    assert capsys.readouterr().err == ("error: the minmax rule takes no parameter q (rules and their parameters: "
                                       "minmax: none, normal: k, percentile: q and margin)\n")


def test_a_distance_threshold_at_zero_is_flagged_degenerate(run_dir):
    """A reference reaching distance 0 puts the min/max tau at 0: no distance is below it, nothing can be called
    a copy. The metric is flagged (with why), left out of tau and of the votes, never scored silently."""
    with ResultStore(run_dir / "results.db") as s:
        plan = s.get_meta("plan")
        for row in s.rows(kind="score"):
            if row["id"] in plan:
                m = dict(row["metrics"])
                m["SAC"] = 0.0 if row["config"]["role"] == "reference" and row["config"]["index"] == 1 else m["SAC"]
                s.record({"id": row["id"], "kind": "score", "name": row["name"], "seed": row["seed"],
                          "config": row["config"]}, "done", metrics=m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        td = build_table(run_dir)
    assert "SAC" in td.degenerate and "threshold 0" in td.degenerate_why["SAC"]
    assert "SAC" not in td.taus and td.pool == ["IPG-MR"] and "SAC" not in td.metrics
    assert "Degenerate metrics" in to_markdown(td) and "SAC (threshold 0" in to_markdown(td)


def test_confidence_section_by_hand(run_dir):
    """The verdicts with their confidence, recomputed by hand from the fixture's values (3 references, 2 negatives)."""
    import numpy as np

    from removalnet.report.confidence import confidence_section, reference_mismatch
    from removalnet.report.render import to_html
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        td = build_table(run_dir)
    sec = confidence_section(td)
    own, pvals, auc = sec.tables
    # paper vote 2/3 (Clopper-Pearson 2/3: 9-99%); Holm over IPG-MR and SAC: the best seed has p = 1/4 for both,
    # adjusted 2 x 1/4 = 0.5 > 0.05, so no seed is a copy (0/3: <= 71%)
    assert own[2][0][:3] == ["FT(0.5)", "Yes (2/3, 9-99%)", "No (0/3, <= 71%)"]
    # Student-t prediction p-values (IPG-MR on values, SAC on logs, df 2); Holm: copy when 2 x min p <= 0.05
    from scipy import stats
    mr, sac = np.array([0.2, 0.3, 0.25]), np.log([0.5, 0.4, 0.6])
    scale = np.sqrt(1 + 1 / 3)
    holm_copies = 0
    for v_mr, v_sac in ((0.9, 0.1), (0.8, 0.2), (0.1, 0.7)):
        p_mr = stats.t.sf((v_mr - mr.mean()) / (mr.std(ddof=1) * scale), 2)
        p_sac = stats.t.cdf((np.log(v_sac) - sac.mean()) / (sac.std(ddof=1) * scale), 2)
        holm_copies += 2 * min(p_mr, p_sac) <= 0.05
    assert holm_copies == 2 and own[2][0][3] == "Yes (2/3, 9-99%)"
    assert own[2][1][:3] == ["Negative", "No (0/2, <= 84%)", "No (0/2, <= 84%)"]
    # the weakest seed (MR 0.1 below every reference, SAC 0.7 above every reference): p = 4/4
    assert pvals[2][0][1].startswith("1.000 / ") and pvals[2][0][2].startswith("1.000 / ")
    # AUC of IPG-MR: seeds 0.9, 0.8 beat the 5 independent models, 0.1 ties one and loses to four: 10.5/15
    assert auc[2][0][0] == "FT(0.5)" and auc[2][0][1].startswith("0.70 (")
    assert any("n too small (5 independent models; >= 19 needed" in f for f in sec.findings)
    assert any("1/4 = 0.250" in f and ">= 19 references" in f for f in sec.findings)
    md = to_markdown(td)
    assert "## Verdicts with their confidence" in md and "Yes (2/3, 9-99%)" in md
    assert "Yes (2/3)" in md                      # the paper's table stays as it was
    assert "Ownership with confidence" in to_csv(td) and "Holm, empirical p" in to_latex(td)
    assert "Verdicts with their confidence" in to_html(td)
    from removalnet.report.terminal import to_terminal   # what `removalnet demo` prints
    term = to_terminal(td, width=100)
    assert "Ownership with confidence" in term and "No (0/3, <= 71%)" in term and "1/4 = 0.250" in term
    assert reference_mismatch(0.90, [0.9, 0.9]) is None and reference_mismatch(0.90, [0.92, 0.93]) is None
    text = reference_mismatch(0.734, [0.82, 0.85])
    assert "10.1 points above" in text and "more than 3" in text
    assert not any("mean accuracy" in f for f in sec.findings)
