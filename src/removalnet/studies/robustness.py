"""The robustness countermeasure (paper section 5.1, Table 4): adversarial sets made on the victim with
FGSM, PGD and DeepFool; Rob(F, D_adv) = accuracy of F on D_adv (eq. 16) for the victim, the RemovalNet
surrogates (every seed) and the negative models; RobD = |Rob(F_V) - Rob(F)| (eq. 17).

The adversarial examples come from the Adversarial Robustness Toolbox (``pip install 'removalnet[robust]'``):
``FastGradientMethod``, ``ProjectedGradientDescent`` (L-inf) and ``DeepFool``, on a class-balanced subset of
the test split (the verifier's side), with the true labels; every setting is recorded in the job's metrics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..data import dataset_labels
from ..experiment.artifacts import VICTIM, model_job, model_path, study_job, verifier_data
from ..params import Param
from ..train import predict_logits
from ..utils import RemovalNetError
from .base import finished_job, save_arrays, StudyReport, SurrogateStudy, fmt_ms, register_study

__all__ = ["Robustness", "rob", "rob_distance", "adversarial_sets"]

METHODS = ("fgsm", "pgd", "deepfool")


def rob(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Eq. 16: the fraction of adversarial samples that ``predictions`` classify as their label."""
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.size == 0:
        raise RemovalNetError(f"rob: need equally long non-empty predictions and labels, got {p.shape} and {y.shape}")
    return float((p == y).mean())


def rob_distance(rob_victim: float, rob_suspect: float) -> float:
    """Eq. 17: RobD = |Rob(F_V) - Rob(F_S)|."""
    return abs(float(rob_victim) - float(rob_suspect))


def adversarial_sets(model, x: np.ndarray, y: np.ndarray, settings: dict[str, dict[str, Any]],
                     device: str = "cpu") -> dict[str, np.ndarray]:
    """Adversarial versions of ``x`` (N x C x H x W in [0, 1]) made on ``model`` with ART, one per method."""
    try:
        from art.attacks.evasion import DeepFool, FastGradientMethod, ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:
        raise RemovalNetError("the robustness study needs the Adversarial Robustness Toolbox: "
                              "pip install 'removalnet[robust]'") from e
    model.eval()
    with torch.no_grad():
        num_classes = int(model(torch.as_tensor(x[:1], device=device)).shape[1])
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=num_classes, clip_values=(0.0, 1.0),
                            device_type="gpu" if str(device).startswith("cuda") else "cpu")
    out = {}
    for method, s in settings.items():
        if method == "fgsm":
            atk = FastGradientMethod(estimator=clf, norm=np.inf, eps=s["eps"], batch_size=s["batch_size"])
        elif method == "pgd":
            atk = ProjectedGradientDescent(estimator=clf, norm=np.inf, eps=s["eps"], eps_step=s["step"],
                                           max_iter=s["steps"], num_random_init=0, batch_size=s["batch_size"],
                                           verbose=False)
        elif method == "deepfool":
            atk = DeepFool(classifier=clf, max_iter=s["steps"], epsilon=s["overshoot"], nb_grads=num_classes,
                           batch_size=s["batch_size"], verbose=False)
        else:
            raise RemovalNetError(f"unknown adversarial method {method!r}; known: {', '.join(METHODS)}")
        labels = y if method != "deepfool" else None  # DeepFool moves each input across its nearest boundary
        out[method] = atk.generate(x=x.astype(np.float32), y=labels).astype(np.float32)
    return out


@register_study
class Robustness(SurrogateStudy):
    name = "robustness"
    title = "Robustness countermeasure: Rob and RobD (paper Table 4)"
    PARAMS = {
        **SurrogateStudy.PARAMS,
        "count": Param(1000, int, low=1, doc="class-balanced test samples attacked"),
        "methods": Param(list(METHODS), list, choices=METHODS, doc="adversarial sets"),
        "fgsm_eps": Param(8 / 255, float, low=0.0, low_open=True, high=1.0, doc="FGSM L-inf budget"),
        "pgd_eps": Param(8 / 255, float, low=0.0, low_open=True, high=1.0, doc="PGD L-inf budget"),
        "pgd_step": Param(2 / 255, float, low=0.0, low_open=True, high=1.0, doc="PGD step size"),
        "pgd_steps": Param(10, int, low=1, doc="PGD iterations"),
        "deepfool_steps": Param(50, int, low=1, doc="DeepFool iterations (ART default 100)"),
        "deepfool_overshoot": Param(0.02, float, low=0.0, doc="DeepFool overshoot (Moosavi-Dezfooli et al.: 0.02)"),
        "batch_size": Param(128, int, low=1, doc="batch size of the adversarial generation"),
    }

    def settings(self) -> dict[str, dict[str, Any]]:
        p = self.params
        every = {"fgsm": {"eps": p["fgsm_eps"], "norm": "inf"},
                 "pgd": {"eps": p["pgd_eps"], "step": p["pgd_step"], "steps": p["pgd_steps"], "norm": "inf",
                         "random_init": False},
                 "deepfool": {"steps": p["deepfool_steps"], "overshoot": p["deepfool_overshoot"]}}
        return {m: {**every[m], "batch_size": p["batch_size"]} for m in p["methods"]}

    def analysis_jobs(self, spec, jobs):
        surrogates = [self.attack_job(spec, s) for s in spec.seeds]
        negatives = [model_job("negative", i) for i in range(spec.negatives.count)]
        return [("rob", {"surrogates": surrogates, "negatives": negatives},
                 [VICTIM, *surrogates, *negatives])]

    def run_job(self, job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        cfg, dev = job["config"], job["config"]["device"]
        victim, _ = load_checkpoint(model_path(run_dir, VICTIM), device=dev)
        data = verifier_data({**cfg, "verifier_count": self.params["count"]})
        x = np.stack([np.asarray(data[i][0], dtype=np.float32) for i in range(len(data))])
        y = np.asarray(dataset_labels(data))
        settings = self.settings()
        adv = adversarial_sets(victim, x, y, settings, device=dev)
        save_arrays(run_dir, job["name"], "adversarial.safetensors", {"labels": y, **adv})

        def rob_of(model) -> dict[str, float]:
            res = {}
            for method, xa in adv.items():
                pred = predict_logits(model, torch.utils.data.TensorDataset(torch.from_numpy(xa),
                                                                           torch.from_numpy(y)), device=dev).argmax(1)
                res[method] = rob(pred.numpy(), y)
            return res

        result: dict[str, Any] = {"settings": settings, "count": len(y), "victim": rob_of(victim),
                                  "surrogate": {}, "negative": {}}
        for name in cfg["surrogates"]:
            result["surrogate"][name] = rob_of(load_checkpoint(model_path(run_dir, name), device=dev)[0])
        for name in cfg["negatives"]:
            result["negative"][name] = rob_of(load_checkpoint(model_path(run_dir, name), device=dev)[0])
        return result

    def report(self, spec: dict[str, Any], rows: list[dict[str, Any]], td: Any, run_dir: Path) -> StudyReport:
        rep = StudyReport(self.title)
        job = finished_job(rows, study_job(self.name, "rob"))
        if job is None:
            rep.findings.append("the robustness job has not finished")
            return rep
        m = job["metrics"]
        head = ["Method", "Rob_FV", "Rob_FS", "Rob_Neg", "RobD_FS", "RobD_Neg", "Settings"]
        table = []
        numbers = {}
        for method in [k for k in METHODS if k in m["settings"]]:  # stored JSON is key-sorted
            s = m["settings"][method]
            rv = m["victim"][method]
            rs = [d[method] for d in m["surrogate"].values()]
            rn = [d[method] for d in m["negative"].values()]
            ds = [rob_distance(rv, v) for v in rs]
            dn = [rob_distance(rv, v) for v in rn]
            setting = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items())
            table.append([method.upper() if method != "deepfool" else "DeepFool", f"{rv:.3f}", fmt_ms(rs),
                          fmt_ms(rn), fmt_ms(ds), fmt_ms(dn), setting])
            numbers[method] = {"rob_victim": rv, "rob_surrogate": rs, "rob_negative": rn,
                               "robd_surrogate": ds, "robd_negative": dn}
            if ds and dn:
                sep = "below" if max(ds) < min(dn) else ("above" if min(ds) > max(dn) else "overlapping")
                rep.findings.append(f"{method}: RobD of the surrogates {np.mean(ds):.3f} (n={len(ds)}), of the negative "
                                    f"models {np.mean(dn):.3f} (n={len(dn)}): ranges {sep}")
        rep.numbers = numbers
        rep.tables.append((f"Rob and RobD on {m['count']} adversarial test samples made on the victim "
                           f"(mean±std over {len(m['surrogate'])} surrogates, {len(m['negative'])} negative models)",
                           head, table))
        return rep
