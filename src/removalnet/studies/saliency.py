"""Saliency maps of a hidden layer (paper section 4.5.2, Fig. 9): LayerCAM (Jiang et al. 2021) of the
victim, the RemovalNet surrogate and, where the spec trains one, an independent negative model, on the same
test images, all for the victim's predicted class.

LayerCAM comes from the ``grad-cam`` package (``pip install 'removalnet[cam]'``). The layer is a block of the
split model: ``layer`` l means the output of block l (``head(x, l)``), by default RemovalNet's split layer.
How different the maps are is measured by the Pearson correlation of each pair of maps (1 = same map); the
negative model's correlation with the victim tells what "different" looks like for an unrelated model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..data import balanced_subset
from ..experiment.artifacts import VICTIM, dataset, model_job, model_path, study_job
from ..params import Param
from ..utils import RemovalNetError
from .base import finished_job, save_arrays, StudyReport, SurrogateStudy, register_study

__all__ = ["Saliency", "layercam", "map_correlation"]


def layercam(model, x: torch.Tensor, targets: torch.Tensor, layer: int) -> np.ndarray:
    """LayerCAM maps (N x H x W, each scaled to [0, 1] by the library) of block ``layer`` for classes
    ``targets``, upsampled to the input size."""
    try:
        from pytorch_grad_cam import LayerCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:
        raise RemovalNetError("the saliency study needs grad-cam: pip install 'removalnet[cam]'") from e
    model.check_layer(layer)
    model.eval()
    with LayerCAM(model=model, target_layers=[model.blocks[layer - 1]]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return np.asarray(maps, dtype=np.float32)


def map_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair of maps (N x H x W each); 0 where a map is constant."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 0.0)


@register_study
class Saliency(SurrogateStudy):
    name = "saliency"
    title = "LayerCAM saliency of a hidden layer (paper Fig. 9)"
    PARAMS = {
        **SurrogateStudy.PARAMS,
        "layer": Param(None, int, low=1, nullable=True, doc="block whose output is explained (default: split layer)"),
        "num_images": Param(8, int, low=1, high=64, doc="test images shown (class-balanced)"),
    }

    def analysis_jobs(self, spec, jobs):
        deps = [VICTIM, self.attack_job(spec)]
        if spec.negatives.count:
            deps.append(model_job("negative", 0))
        return [("maps", {"surrogate": deps[1], "negative": deps[2] if len(deps) > 2 else None,
                          "seed": self.chosen_seed(spec)}, deps)]

    def run_job(self, job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        cfg, dev = job["config"], job["config"]["device"]
        victim, _ = load_checkpoint(model_path(run_dir, VICTIM), device=dev)
        models = {"victim": victim, "surrogate": load_checkpoint(model_path(run_dir, cfg["surrogate"]), device=dev)[0]}
        if cfg.get("negative"):
            models["negative"] = load_checkpoint(model_path(run_dir, cfg["negative"]), device=dev)[0]
        layer = self.params["layer"] or victim.default_layer
        test = dataset(cfg["dataset"], "test", cfg.get("data_root"))
        sub = balanced_subset(test, count=self.params["num_images"], seed=0)
        x = torch.stack([torch.as_tensor(sub[i][0]) for i in range(len(sub))]).to(dev)
        y = torch.as_tensor([int(sub[i][1]) for i in range(len(sub))])
        with torch.no_grad():
            preds = {k: m(x).argmax(1).cpu() for k, m in models.items()}
        target = preds["victim"]
        arrays = {"images": x.cpu().numpy(), "labels": y.numpy(), "target": target.numpy()}
        for k, m in models.items():
            arrays[f"cam_{k}"] = layercam(m, x, target, layer)
            arrays[f"pred_{k}"] = preds[k].numpy()
        save_arrays(run_dir, job["name"], "cams.safetensors", arrays)
        metrics: dict[str, Any] = {"layer": layer, "num_images": len(sub),
                                   "corr_surrogate": map_correlation(arrays["cam_victim"], arrays["cam_surrogate"]).tolist()}
        if "negative" in models:
            metrics["corr_negative"] = map_correlation(arrays["cam_victim"], arrays["cam_negative"]).tolist()
        return metrics

    def report(self, spec: dict[str, Any], rows: list[dict[str, Any]], td: Any, run_dir: Path) -> StudyReport:
        from safetensors.numpy import load_file

        rep = StudyReport(self.title)
        job = finished_job(rows, study_job(self.name, "maps"))
        if job is None:
            rep.findings.append("the saliency job has not finished")
            return rep
        m = job["metrics"]
        arrays = load_file(str(Path(run_dir) / job["name"] / "cams.safetensors"))
        has_neg = "cam_negative" in arrays
        head = ["Image", "Label", "Victim pred", "Surrogate pred", "corr(victim, surrogate)"]
        head += ["Negative pred", "corr(victim, negative)"] if has_neg else []
        table = []
        for i in range(len(arrays["labels"])):
            row = [str(i), str(int(arrays["labels"][i])), str(int(arrays["pred_victim"][i])),
                   str(int(arrays["pred_surrogate"][i])), f"{m['corr_surrogate'][i]:.3f}"]
            if has_neg:
                row += [str(int(arrays["pred_negative"][i])), f"{m['corr_negative'][i]:.3f}"]
            table.append(row)
        rep.tables.append((f"LayerCAM of block {m['layer']}: map correlation with the victim's", head, table))
        cs = float(np.mean(m["corr_surrogate"]))
        rep.numbers = {"layer": m["layer"], "mean_corr_surrogate": cs}
        line = f"block {m['layer']}: mean correlation of the surrogate's maps with the victim's {cs:.3f}"
        if has_neg:
            cn = float(np.mean(m["corr_negative"]))
            rep.numbers["mean_corr_negative"] = cn
            line += f" (independent negative model: {cn:.3f})"
        rep.findings.append(line)
        rep.figures.append(("saliency", self.figure(arrays)))
        return rep

    def figure(self, arrays: dict[str, np.ndarray]):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        kinds = [k for k in ("victim", "surrogate", "negative") if f"cam_{k}" in arrays]
        imgs = arrays["images"]
        n = len(imgs)
        fig, axes = plt.subplots(1 + len(kinds), n, figsize=(1.3 * n, 1.4 * (1 + len(kinds))), squeeze=False)
        for i in range(n):
            img = imgs[i].transpose(1, 2, 0)
            gray = img.mean(2)
            axes[0][i].imshow(img.squeeze(2) if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
            for r, k in enumerate(kinds, start=1):
                axes[r][i].imshow(gray, cmap="gray")
                axes[r][i].imshow(arrays[f"cam_{k}"][i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            for r in range(1 + len(kinds)):
                axes[r][i].set_xticks([])
                axes[r][i].set_yticks([])
        for r, name in enumerate(["input"] + kinds):
            axes[r][0].set_ylabel(name, fontsize=8)
        fig.tight_layout()
        return fig
