"""benchmarks/findings.py: the generated blocks of docs/findings.md come from the results files, and --check
fails when a results value changes under them."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _findings():
    spec = importlib.util.spec_from_file_location("findings_bench", BENCH / "findings.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["findings_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


F = _findings()


@pytest.fixture
def copy(tmp_path):
    """A copy of the results files (md and json) and a document holding every block, generated from them."""
    results = tmp_path / "results"
    results.mkdir()
    for p in list(F.RESULTS.glob("*.md")) + list(F.RESULTS.glob("*.json")):
        shutil.copy(p, results / p.name)
    doc = tmp_path / "findings.md"
    doc.write_text("# Findings\n\nProse 86.4213 stays.\n\n"
                   + "".join(f"<!-- generated: {n} (from x) -->\n<!-- end generated -->\n\n" for n in F.BLOCKS))
    assert F.main(["--doc", str(doc), "--results", str(results)]) == 0
    return doc, results


def test_generated_doc_passes_check_and_keeps_prose(copy):
    doc, results = copy
    text = doc.read_text()
    assert "Prose 86.4213 stays." in text
    assert "| plus-light | 5 | 1.40 | 16.4 |" in text            # removal-vgg_small.json, drop and retime CPU s
    assert "| Ours(S_LTD) | 84.11±0.73 | 4.71 | No (0/5) |" in text   # table1-vgg_small.md
    assert F.main(["--check", "--doc", str(doc), "--results", str(results)]) == 0


def test_changed_json_value_makes_check_fail(copy, capsys):
    doc, results = copy
    path = results / "removal-vgg_small.json"
    d = json.loads(path.read_text())
    d["summary"]["plus-light"]["drop"] += 0.5
    path.write_text(json.dumps(d))
    before = doc.read_text()
    capsys.readouterr()
    assert F.main(["--check", "--doc", str(doc), "--results", str(results)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "removal-vgg_small" in out[0] and "make findings" in out[0]
    assert doc.read_text() == before                                # --check writes nothing


def test_changed_markdown_value_makes_check_fail(copy, capsys):
    doc, results = copy
    path = results / "studies.md"
    text = path.read_text()
    assert "| S_LTD, 5% | 84.42 | 1000 |" in text
    path.write_text(text.replace("| S_LTD, 5% | 84.42 | 1000 |", "| S_LTD, 5% | 81.42 | 1000 |"))
    capsys.readouterr()
    assert F.main(["--check", "--doc", str(doc), "--results", str(results)]) == 1
    assert "study-efficiency" in capsys.readouterr().out


def test_rewrite_makes_a_stale_doc_current(copy):
    doc, results = copy
    path = results / "table1-resnet_small.md"
    path.write_text(path.read_text().replace("| Ours(S_LSD) | 81.63±2.15 | 5.01 |", "| Ours(S_LSD) | 81.63±2.15 | 5.02 |"))
    assert F.main(["--check", "--doc", str(doc), "--results", str(results)]) == 1
    assert F.main(["--doc", str(doc), "--results", str(results)]) == 0
    assert "| 5.02 |" in doc.read_text()
    assert F.main(["--check", "--doc", str(doc), "--results", str(results)]) == 0


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("<!-- generated: cost (from x) -->", "<!-- generated: nope (from x) -->", 1), "unknown"),
    (lambda t: t.replace("<!-- generated: cost (from x) -->", "", 1), "lacks"),
])
def test_bad_document_is_an_error(tmp_path, capsys, edit, message):
    doc = tmp_path / "findings.md"
    text = edit("".join(f"<!-- generated: {n} (from x) -->\n<!-- end generated -->\n" for n in F.BLOCKS))
    doc.write_text(text)
    assert F.main(["--doc", str(doc)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert doc.read_text() == text                                  # nothing written


def test_missing_results_file_is_an_error(copy, capsys):
    doc, results = copy
    (results / "deepjudge_reach.json").unlink()
    assert F.main(["--check", "--doc", str(doc), "--results", str(results)]) == 2
    assert "deepjudge_reach.json" in capsys.readouterr().err


def test_unmatched_lists_numbers_found_in_no_results_file(copy, capsys):
    doc, results = copy
    doc.write_text(doc.read_text() + "\nThe drop is 4.71 points, not 97.531.\n")
    assert F.main(["--unmatched", "--doc", str(doc), "--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert "97.531" in out and "4.71 (" not in out and "86.4213" in out


def test_unmatched_checks_a_number_against_the_file_its_paragraph_cites(copy, capsys):
    doc, results = copy
    doc.write_text(doc.read_text() + "\nThe drop is 4.71 points (deepjudge_reach.json).\n")
    assert F.main(["--unmatched", "--doc", str(doc), "--results", str(results)]) == 1
    assert "4.71 (deepjudge_reach.json)" in capsys.readouterr().out


def test_committed_findings_are_current(capsys):
    """docs/findings.md as committed matches benchmarks/results/: run `make findings` after a benchmark."""
    assert F.main(["--check"]) == 0, capsys.readouterr().out


def test_proxy_vs_paper_names_what_moved(copy):
    """The paper-protocol comparison: drops and votes side by side, and each metric whose seed count moved."""
    _, results = copy
    proxy = (results / "table1-vgg_small.md").read_text()
    paper = proxy.replace("{'width': 8}", "{'width': 16}").replace("Ours(S_LTD)", "RemovalNet(S_LTD)")
    lines = paper.splitlines()
    seeds_at = lines.index("### Seeds judged a copy, per metric")
    for i in range(seeds_at, len(lines)):           # RemovalNet(S_LTD) now judged a copy by ZEST-L2 in 3 seeds
        if lines[i].startswith("| RemovalNet(S_LTD) |"):
            cells = lines[i].split("|")
            cells[4] = " 3/5 "
            lines[i] = "|".join(cells)
            break
    (results / "table1-vgg_small-paper.md").write_text("\n".join(lines) + "\n")
    out = "\n".join(F.proxy_vs_paper(results, "vgg_small"))
    assert "proxy vgg_small {'width': 8}" in out and "paper protocol vgg_small {'width': 16}" in out
    row = next(line for line in out.splitlines() if line.startswith("| RemovalNet(S_LTD) |"))
    assert row.split("|")[-2].strip() == "ZEST-L2 0/5 -> 3/5"
    ft = next(line for line in out.splitlines() if line.startswith("| FT(0.5) |"))
    assert ft.split("|")[-2].strip() == "none"
    (results / "table1-vgg_small-paper.md").unlink()
    with pytest.raises(F.FindingsError, match="missing results file"):
        F.proxy_vs_paper(results, "vgg_small")


def test_capacity_rows_per_width(tmp_path):
    """The capacity block: drops from each width's victim, the seeds' verdicts read as every / none, the
    negatives some metric calls a copy; a width without a finished RemovalNet row says '-'."""
    rows16 = {"RemovalNet(S_LTD)": {"n": 2, "accuracy": [0.90, 0.92], "owned": "0/2",
                                    "copies": {"DJ-LOD": "2/2", "ZEST-L2": "0/2", "SAC": "1/2"}},
              "FT(0.5)": {"n": 2, "accuracy": [0.925, 0.925], "owned": "2/2", "copies": {"DJ-LOD": "2/2"}},
              "Negative": {"n": 5, "accuracy": [0.93] * 5, "owned": "0/5",
                           "copies": {"DJ-LOD": "0/5", "ZEST-L2": "1/5", "SAC": "0/5"}}}
    data = {"meta": {}, "widths": [
        {"width": 32, "parameters": 290000, "victim_accuracy": None, "metrics": [], "degenerate": [], "rows": {}},
        {"width": 16, "parameters": 72666, "victim_accuracy": 0.93, "metrics": ["DJ-LOD", "ZEST-L2", "SAC"],
         "degenerate": ["DJ-RobD"], "rows": rows16}]}
    (tmp_path / "capacity.json").write_text(json.dumps(data))
    out = F.capacity(tmp_path)
    assert out[2] == ("| 16 | 72,666 | 93.00 | 2.00 | 0.50 | 0/2 | 2/2 | DJ-LOD | ZEST-L2 | ZEST-L2 1/5 | DJ-RobD |")
    assert out[3] == "| 32 | 290,000 | - | - | - | - | - | - | - | none | none |"
