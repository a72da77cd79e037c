"""An attack that returned its starting point is no attack of its name: removalnet-plus forced to keep step 0
(its stopping rule accepts only full agreement, and lr 0.02 makes the loss rise) says so in its status, the CLI
line, the surrogate's sidecar and the last row of its trace; a run that trained does not."""
import csv
import json

from removalnet.attacks import RETURNED_START, create_attack
from removalnet.checkpoint import save_checkpoint
from removalnet.cli import main
from test_removal_components import _digits_victim

FORCED = dict(iterations=20, batch_size=32, check_every=5, lr=0.02, min_agreement=1.0)


def test_status_of_a_run_that_kept_step_0():
    victim, sub = _digits_victim()
    a = create_attack("removalnet-plus", **FORCED)
    a(victim, sub, seed=3)
    assert a.selected_t == 0 and len(a.trace) == 20
    assert a.status == RETURNED_START and a.reduced_to == "the permutation alone"
    trained = create_attack("removalnet-plus", iterations=20, batch_size=32, check_every=5, boundary_eps=0.1,
                            min_agreement=0.5)
    trained(victim, sub, seed=3)
    assert trained.selected_t != 0 and trained.status == "ok" and trained.reduced_to is None
    # no stopping rule (holdout 0): the weights are compared with the start, and they moved
    free = create_attack("removalnet-plus", iterations=3, batch_size=32, holdout=0.0)
    free(victim, sub, seed=0)
    assert free.selected_t is None and free.status == "ok"
    # permute-only asks for no training: it is what its name says
    only = create_attack("removalnet-plus", iterations=0, boundary_mix=0.0, holdout=0.0)
    only(victim, sub, seed=0)
    assert only.status == "ok"
    rescaled = create_attack("removalnet-plus", **FORCED, rescale="farthest")
    assert rescaled.start_description() == "the permutation and rescaling alone"


def test_the_cli_line_sidecar_and_trace_say_it(tmp_path, capsys):
    victim, _ = _digits_victim()
    path = save_checkpoint(tmp_path / "victim.safetensors", victim, {"role": "victim", "dataset": "digits"})
    out = tmp_path / "out"
    args = ["attack", "removalnet-plus", "--victim", str(path), "--data", "digits", "--count", "100", "--seed", "3",
            "--out", str(out), "-q", *[f"--param={k}={v}" for k, v in FORCED.items()]]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert ("status: returned the start: the surrogate is the permutation alone, not a trained removalnet-plus "
            "surrogate") in printed
    meta = json.loads((out / "surrogate.json").read_text())
    assert meta["status"] == RETURNED_START and meta["reduced_to"] == "the permutation alone"
    with open(out / "trace.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["status"] == "returned the start: the permutation alone"
    assert all(r["status"] == "" for r in rows[:-1])
