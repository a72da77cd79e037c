"""Table 1 explained (report/explain.py) and fitted to a terminal (report/terminal.py)."""
from removalnet.report.explain import departures, legend, limitations
from removalnet.report.table import TableData
from removalnet.report.terminal import text_table, to_terminal
from removalnet.verify import ThresholdRule


def _table(detection: dict[str, float]) -> TableData:
    metrics = ["DJ-LOD", "MD-DDV", "SAC"]
    rows = [{"label": label, "n": 2, "accuracy": [0.80, 0.81], "values": {m: [0.1, 0.2] for m in metrics},
             "copies": {m: [True, False] for m in metrics}, "owned": [True, True], "collapsed": False}
            for label in ("FT(0.5)", "RemovalNet(S_LTD)", "Negative")]
    spec = {"attacks": [{"name": "ft", "label": "FT(0.5)"}, {"name": "removalnet", "label": "RemovalNet(S_LTD)"}]}
    return TableData(name="t", victim_accuracy=0.82, metrics=metrics, pool=["DJ-LOD", "MD-DDV"],
                     rule=ThresholdRule("minmax"), taus={m: 0.5 for m in metrics}, rows=rows,
                     references={m: [0.3, 0.4, 0.5, 0.6, 0.7] for m in metrics},
                     rules={"minmax": {"taus": {}, "false_positive_rate": {}, "baseline_detection_rate": detection}},
                     spec=spec, degenerate=["DJ-RobD"], degenerate_why={"DJ-RobD": "threshold 0"})


def test_legend_names_the_attack_and_explains_every_column():
    text = "\n".join(legend(_table({})))
    assert "RemovalNet(S_LTD): RemovalNet, the paper's attack" in text
    assert "FT(0.5): fine-tuning" in text
    for word in ("S_LTD", "S_LSD", "Negative", "Fidelity", "Drop", "↑", "↓", "τ", "Ownership?", "degenerate"):
        assert word in text, word
    assert "1/(n+1) = 17%" in text            # 5 references
    assert "(DJ-LOD, MD-DDV;" in text          # the voting metrics are named, the others said not to vote


def test_limitations_name_the_metrics_that_miss_the_baselines():
    notes = limitations(_table({"DJ-LOD": 1.0, "MD-DDV": 0.4, "SAC": 0.0}))
    assert sorted(notes) == ["MD-DDV", "SAC"]
    assert "40%" in notes["MD-DDV"] and "0%" in notes["SAC"]
    assert limitations(_table({"DJ-LOD": 1.0, "MD-DDV": 0.51, "SAC": None})) == {}


def test_text_table_splits_wide_tables_and_repeats_the_first_column():
    head = ["Attack"] + [f"metric-{i:02d}" for i in range(12)]
    rows = [["FT(0.5)"] + ["0.123±0.004"] * 12, ["Negative"] + ["9.876±0.100"] * 12]
    out = text_table(head, rows, width=60)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 60
    assert sum(line.startswith("Attack") for line in lines) >= 3   # several blocks, each with the labels
    assert all(f"metric-{i:02d}" in out for i in range(12))
    assert text_table(["a", "b"], [["x", "y"]], width=80).splitlines() == ["a  b", "-  -", "x  y"]


def test_terminal_view_fits_and_leaves_degenerate_columns_to_the_intro():
    out = to_terminal(_table({"DJ-LOD": 1.0, "MD-DDV": 0.4, "SAC": 1.0}), width=80)
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "(degenerate" not in out.split("How to read it:")[0].split("\n\n", 2)[2]  # tables: no such column
    assert "What this run cannot show:" in out and "MD-DDV calls only 40%" in out


def test_departures_from_the_verifiers_defaults_and_the_spec_notes_are_shown():
    td = _table({})
    td.spec["verifiers"] = {"deepjudge": {"m": 2.0, "num_seeds": 100, "batch_size": 64}, "sac": {}}
    td.spec["notes"] = ["DeepJudge runs at m = 2 here because ..."]
    # num_seeds is the default; batch_size is a speed setting, not part of the fingerprint
    assert departures(td) == ["deepjudge m=2.0 (default 3.0)"]
    text = "\n".join(legend(td))
    assert "differ from the authors' defaults in this run: deepjudge m=2.0 (default 3.0)." in text
    assert "DeepJudge runs at m = 2 here because ..." in text


def test_spec_notes_are_validated():
    import pytest

    from removalnet.experiment import spec_from_dict
    from removalnet.utils import RemovalNetError
    assert spec_from_dict({"name": "x", "notes": "one sentence"}).notes == ["one sentence"]
    with pytest.raises(RemovalNetError, match="spec: notes: must be a sentence or a list of sentences"):
        spec_from_dict({"name": "x", "notes": [1, 2]})
