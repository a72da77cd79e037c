"""``removalnet attack NAME``: run a removal attack on a victim checkpoint and save the surrogate.

Writes, into ``--out DIR`` (assembled in a temporary directory next to it and moved into place only when
complete, so a failed run leaves nothing half-written):

* ``surrogate.safetensors`` + ``surrogate.json``: the surrogate, with the attack, its parameters, the
  scenario, seed, substitute set, victim and accuracies in the sidecar;
* ``trace.csv``: one row per iteration (every loss term, lr, ...);
* ``substitute.json``: the substitute set's indices into its base dataset and its labels;
* ``checkpoints/tNNNN.safetensors``: the surrogate at t = 0, every ``checkpoint_every`` iterations and at
  the end (RemovalNet: every 100 iterations, the paper's Fig. 4/5), unless ``--no-checkpoints``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..params import Option
from ._modelref import add_model_options, load_model, victim_file
from ..utils import RemovalNetError, atomic_write_json, resolve_device, weights_hash
from ._listing import add_list_option, listing

NAME = "attack"
HELP = "run a fingerprint removal attack (RemovalNet or a baseline) on a victim checkpoint"

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def attack_listing() -> str:
    """Every registered attack with its one-line doc and parameters (``removalnet attack --list``)."""
    from ..attacks import attack_class, list_attacks  # lazy: keeps torch off the CLI's start
    return listing("attack", [(n, attack_class(n), attack_class(n).param_spec()) for n in list_attacks()])


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_list_option(p, "attack", attack_listing)
    p.add_argument("name", metavar="NAME", help="a registered attack (--list shows them with their parameters)")
    p.add_argument("--victim", default=None, metavar="CKPT",
                   help="victim checkpoint (.safetensors with sidecar), or a state dict with --model REF")
    p.add_argument("--data", required=True, metavar="DATASET",
                   help="the victim's dataset: its training split feeds S_LTD, its test split the accuracy")
    p.add_argument("--data-root", default=None, help="where the datasets' files are, if not the default place")
    p.add_argument("--scenario", choices=("ltd", "lsd"), default="ltd",
                   help="ltd: part of the training set; lsd: another source (--source) or a disjoint partition")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--fraction", type=Option(float, low=0, high=1, low_open=True), default=None, help="substitute set size as a fraction of the victim's training set, also "
                                                               "when drawn from --source (default 0.1)")
    size.add_argument("--count", type=Option(int, low=1), default=None, help="substitute set size")
    p.add_argument("--source", default=None, metavar="DATASET", help="S_LSD source dataset (e.g. cinic10)")
    p.add_argument("--labels", choices=("victim", "true"), default="victim",
                   help="substitute labels: the victim's predictions (default) or the true labels")
    p.add_argument("--exclude", default=None, metavar="FILE",
                   help="indices never used by the attacker (the verifier's), as a .json list or .npy array")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="attack parameter (value parsed as YAML), repeatable; e.g. --param alpha=0.5")
    p.add_argument("--iterations", type=Option(int, low=0), default=None, help="shortcut for --param iterations=N")
    p.add_argument("--seed", type=Option(int, low=0), default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--no-checkpoints", action="store_true", help="do not save the intermediate checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_model_options(p, weights_help="the victim's weights (same as --victim)")


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["alpha=0.5", "lambda_grid=[0.5, 1.0]"]`` -> dict; values are YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RemovalNetError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise RemovalNetError(f"--param {key}: cannot parse {raw!r} ({str(e).splitlines()[0]})") from e
        if isinstance(value, str) and _NUMBER.match(value.strip()):  # YAML 1.1 reads 1e-4 as a string
            value = float(value)
        if key in out:
            raise RemovalNetError(f"--param {key} is given twice")
        out[key] = value
    return out


def _read_indices(path: str) -> list[int]:
    import numpy as np
    p = Path(path)
    if not p.exists():
        raise RemovalNetError(f"--exclude file {path!r} does not exist")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            obj = json.loads(p.read_text())
            arr = np.asarray(obj["indices"] if isinstance(obj, dict) else obj)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise RemovalNetError(f"--exclude file {path!r} must hold a list of indices ({e})") from e
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise RemovalNetError(f"--exclude file {path!r} must hold a flat list of integer indices")
    return [int(i) for i in arr]


def _prepare_out(out: Path, overwrite: bool) -> None:
    from ..guards import check_output_dir  # lazy: keeps torch off the CLI's start
    check_output_dir(out)  # before the attack runs: it must not fail only at its save
    if out.exists():
        if any(out.iterdir()) and not overwrite:
            raise RemovalNetError(f"--out {str(out)!r} already holds files; choose another or add --overwrite")


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_data(args: argparse.Namespace, vmeta: dict[str, Any]) -> None:
    """The attack's data against the victim's: other classes are refused; another dataset of the same
    classes gets a warning (S_LTD is the victim's own training data; ``--source`` is S_LSD's other dataset)."""
    from ..data import get_dataset_info  # lazy: keeps torch off the CLI's start
    from ..guards import check_comparable, warn  # lazy: keeps torch off the CLI's start
    for name, opt in ((args.data, "--data"), (args.source, "--source")):
        if name is None:
            continue
        info = get_dataset_info(name)
        if opt == "--source" and args.labels == "victim":
            continue  # labelled by the victim: only the images matter, and they are adapted to its input
        check_comparable(vmeta, {"num_classes": info.num_classes}, what=f"{opt} {name!r}",
                         data_warning=False)
    victim_data = vmeta.get("dataset")
    if victim_data and args.data != victim_data:
        warn(f"--data {args.data!r} is not the victim's dataset {victim_data!r}: the substitute set and the "
             "accuracy come from another dataset (for S_LSD, give the other dataset as --source)")


def run(args: argparse.Namespace) -> int:
    from ..attacks import build_substitute, create_attack  # lazy: keeps torch off the CLI's start
    from ..attacks.run import run_attack  # lazy: keeps torch off the CLI's start
    from ..checkpoint import save_checkpoint  # lazy: keeps torch off the CLI's start
    from ..data import load_dataset  # lazy: keeps torch off the CLI's start
    from ..data.refs import canonical_data_ref  # lazy: keeps torch off the CLI's start
    from ..train import evaluate  # lazy: keeps torch off the CLI's start
    from tqdm.auto import tqdm
    from ..guards import check_accuracy  # lazy: keeps torch off the CLI's start
    params = parse_params(args.param)
    if args.iterations is not None:
        if "iterations" in params and params["iterations"] != args.iterations:
            raise RemovalNetError("--iterations and --param iterations=... disagree")
        params["iterations"] = args.iterations
    attack = create_attack(args.name, **params)          # validates name and every parameter first
    out = Path(args.out)
    _prepare_out(out, args.overwrite)
    if args.source is not None and args.scenario != "lsd":
        raise RemovalNetError("--source is only used with --scenario lsd")
    exclude = _read_indices(args.exclude) if args.exclude else None
    device = resolve_device(args.device)

    victim, vmeta = load_model(victim_file(args), args, data=args.data, device=device)
    victim_hash = weights_hash(victim)
    _check_data(args, vmeta)
    bc = getattr(victim, "build_config", {}) or {}
    kw = dict(in_chans=victim.in_chans, input_size=bc.get("input_size"))
    train = load_dataset(args.data, "train", args.data_root, **kw)
    test = load_dataset(args.data, "test", args.data_root, **kw)
    # a victim without a recorded accuracy is measured on the whole test split once, here, for the final line too
    checked = check_accuracy(victim, test, f"the victim ({victim_file(args)})", device=device,
                             limit=None if vmeta.get("test_accuracy") is None else 2000)
    source = load_dataset(args.source, "train", args.data_root, **kw) if args.source else None
    fraction = args.fraction if (args.fraction is not None or args.count is not None) else 0.1
    count = args.count
    if source is not None and count is None:   # a fraction is always of the victim's training set
        count, fraction = max(1, int(round(fraction * len(train)))), None
        if count > len(source):
            raise RemovalNetError(f"--fraction {args.fraction or 0.1} of the training set is {count} samples; "
                                  f"--source {args.source} holds {len(source)}")
    substitute = build_substitute(victim, train, scenario=args.scenario, fraction=fraction, count=count,
                                  source=source, labels=args.labels, exclude=exclude, seed=args.seed,
                                  device=device)
    if source is not None:
        substitute.source = args.source

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; --out gets a normal folder's permissions
    try:
        base_meta = {"role": "surrogate", "attack": attack.name, "params": attack.params, "scenario": args.scenario,
                     "seed": args.seed, "dataset": canonical_data_ref(args.data), "substitute": substitute.describe(),
                     "substitute_size": len(substitute), "victim": str(args.victim),
                     "victim_weights_sha256": victim_hash}
        bar = tqdm(total=attack.params.get("iterations", 0), desc=f"{attack.name}", disable=args.quiet,
                   dynamic_ncols=True)

        def progress(event: str, **info: Any) -> None:
            if event == "iteration":
                bar.update(1)
                loss = info["losses"].get("loss")
                if loss is not None and info["t"] % 10 == 0:
                    bar.set_postfix(loss=f"{loss:.4g}")

        # the same path as an experiment's attack jobs: checkpoints and trace.csv under the output folder
        res = run_attack(attack, victim, substitute, seed=args.seed, out_dir=tmp, device=device, eval_set=test,
                         save_checkpoints=not args.no_checkpoints, checkpoint_meta=base_meta, callbacks=[progress])
        bar.close()
        if weights_hash(victim) != victim_hash:  # the attack API guarantees this; never save over a changed victim
            raise RemovalNetError("the victim's weights changed during the attack")
        # the returned surrogate's accuracy (an attack may return an earlier state than its last checkpoint)
        acc = float(evaluate(res.surrogate, test, device=device))
        victim_acc = vmeta.get("test_accuracy")
        if victim_acc is None:
            victim_acc = checked
        save_checkpoint(tmp / "surrogate.safetensors", res.surrogate, {
            **base_meta, "test_accuracy": acc, "victim_test_accuracy": victim_acc,
            "accuracy_drop": victim_acc - acc, "history": attack.history,
            "iterations": len(attack.trace), "attack_time_s": round(res.time_s, 2), "status": res.status,
            "reduced_to": res.reduced_to})
        atomic_write_json(tmp / "substitute.json", {**substitute.describe(), "indices": substitute.indices.tolist(),
                                                    "labels": substitute.labels.tolist()})
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"{attack.name} on {args.data} ({args.scenario}, {len(substitute)} substitute samples): surrogate "
          f"accuracy {acc * 100:.2f}% (victim {victim_acc * 100:.2f}%) after {len(attack.trace)} iterations "
          f"in {res.time_s:.1f}s on {device}")
    if res.status != "ok":   # never an attack of its name: say what the surrogate is
        print(f"status: {res.status}: the surrogate is {res.reduced_to}, not a trained {attack.name} surrogate "
              f"(its training was discarded)")
    print(f"saved {out / 'surrogate.safetensors'}")
    return 0
