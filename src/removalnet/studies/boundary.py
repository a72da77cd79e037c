"""Decision boundary (paper section 4.5.3, Fig. 10): t-SNE of the output probabilities of the victim and of
the RemovalNet surrogate at iterations t = 0, 100 and 1000, on ``per_class`` test samples of every class.

Each t gets its own embedding of the 2N probability vectors (victim and surrogate together, scikit-learn's
TSNE, PCA start, seeded). Beside the picture, the numbers behind it: the top-1 agreement of the two models,
the mean total-variation distance between their probability vectors, and the mean distance between each
sample's two embedded points relative to the mean distance between embedded points ("pair distance":
near 0 when the surrogate's outputs overlap the victim's, near 1 when they are unrelated).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..attacks import create_attack
from ..checkpoint import load_checkpoint
from ..data import balanced_subset, dataset_labels, get_dataset_info
from ..experiment.artifacts import VICTIM, checkpoint_path, dataset, model_path, study_job
from ..params import Param
from ..train import predict_logits
from ..utils import RemovalNetError
from .base import finished_job, save_arrays, StudyReport, SurrogateStudy, register_study

__all__ = ["Boundary", "embed_outputs", "pair_distance"]


def embed_outputs(p_victim: np.ndarray, p_surrogate: np.ndarray, perplexity: float, seed: int = 0) -> np.ndarray:
    """t-SNE of the stacked probabilities: rows 0..N-1 the victim's, N..2N-1 the surrogate's (2N x 2)."""
    from sklearn.manifold import TSNE
    data = np.concatenate([p_victim, p_surrogate]).astype(np.float64)
    perplexity = min(perplexity, (len(data) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(data)


def pair_distance(emb: np.ndarray) -> float:
    """Mean distance between the two embedded points of each sample over the mean distance between all
    embedded points (0: the outputs overlap; about 1: no relation)."""
    n = len(emb) // 2
    pair = np.linalg.norm(emb[:n] - emb[n:], axis=1).mean()
    diff = emb[:, None, :] - emb[None, :, :]
    allpairs = np.sqrt((diff ** 2).sum(-1))
    return float(pair / allpairs[np.triu_indices(len(emb), 1)].mean())


@register_study
class Boundary(SurrogateStudy):
    name = "boundary"
    title = "Decision boundary: t-SNE of output probabilities (paper Fig. 10)"
    PARAMS = {
        **SurrogateStudy.PARAMS,
        "iterations_shown": Param([0, 100, 1000], list, low=0, doc="RemovalNet checkpoints embedded (paper: 0, 100, 1000)"),
        "per_class": Param(100, int, low=1, doc="test samples per class (paper: 100)"),
        "perplexity": Param(30.0, float, low=1.0, doc="t-SNE perplexity"),
    }

    def validate(self) -> None:
        super().validate()
        ap = create_attack("removalnet", **self.params["params"]).params
        ts = self.params["iterations_shown"]
        if any(not float(t).is_integer() for t in ts):
            raise RemovalNetError("iterations_shown must be integers")
        self.params["iterations_shown"] = ts = [int(t) for t in ts]
        for t in ts:
            if t > ap["iterations"] or (t % ap["checkpoint_every"] and t != ap["iterations"]):
                raise RemovalNetError(f"iterations_shown: {t} is not a checkpoint (every {ap['checkpoint_every']} "
                                      f"up to {ap['iterations']})")

    def attacks(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        return [self.removalnet_row(self.label, keep_checkpoints=True)]

    def analysis_jobs(self, spec, jobs):
        sur = self.attack_job(spec)
        return [("tsne", {"surrogate": sur, "seed": self.chosen_seed(spec)}, [VICTIM, sur])]

    def run_job(self, job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        cfg, dev = job["config"], job["config"]["device"]
        victim, _ = load_checkpoint(model_path(run_dir, VICTIM), device=dev)
        test = dataset(cfg["dataset"], "test", cfg.get("data_root"))
        classes = get_dataset_info(cfg["dataset"]).num_classes
        per_class = min(self.params["per_class"], int(np.bincount(dataset_labels(test), minlength=classes).min()))
        sub = balanced_subset(test, count=per_class * classes, seed=0)
        labels = dataset_labels(sub)
        pv = torch.softmax(predict_logits(victim, sub, device=dev), 1).numpy()
        arrays: dict[str, np.ndarray] = {"labels": np.asarray(labels), "p_victim": pv}
        metrics: dict[str, Any] = {"per_class": per_class, "t": [], "agreement": [], "total_variation": [],
                                   "pair_distance": []}
        for t in self.params["iterations_shown"]:
            path = checkpoint_path(run_dir, cfg["surrogate"], t)
            if not path.exists():
                raise RemovalNetError(f"checkpoint t={t} of {cfg['surrogate']} was not saved")
            sur, _ = load_checkpoint(path, device=dev)
            ps = torch.softmax(predict_logits(sur, sub, device=dev), 1).numpy()
            emb = embed_outputs(pv, ps, self.params["perplexity"], seed=0)
            arrays[f"p_surrogate_t{t}"] = ps
            arrays[f"embedding_t{t}"] = emb.astype(np.float32)
            metrics["t"].append(t)
            metrics["agreement"].append(float((pv.argmax(1) == ps.argmax(1)).mean()))
            metrics["total_variation"].append(float(0.5 * np.abs(pv - ps).sum(1).mean()))
            metrics["pair_distance"].append(pair_distance(emb))
        save_arrays(run_dir, job["name"], "tsne.safetensors", arrays)
        return metrics

    def report(self, spec: dict[str, Any], rows: list[dict[str, Any]], td: Any, run_dir: Path) -> StudyReport:
        from safetensors.numpy import load_file

        rep = StudyReport(self.title)
        job = finished_job(rows, study_job(self.name, "tsne"))
        if job is None:
            rep.findings.append("the t-SNE job has not finished")
            return rep
        m = job["metrics"]
        head = ["Iteration t", "Top-1 agreement", "Total variation", "Pair distance (t-SNE)"]
        table = [[str(t), f"{a:.3f}", f"{tv:.3f}", f"{pd:.3f}"]
                 for t, a, tv, pd in zip(m["t"], m["agreement"], m["total_variation"], m["pair_distance"])]
        rep.tables.append((f"Victim and surrogate outputs on {m['per_class']} test samples per class", head, table))
        rep.numbers = m
        rep.findings.append("; ".join(f"t={t}: agreement {a:.3f}, pair distance {pd:.3f}"
                                      for t, a, pd in zip(m["t"], m["agreement"], m["pair_distance"])))
        arrays = load_file(str(Path(run_dir) / job["name"] / "tsne.safetensors"))
        rep.figures.append(("boundary", self.figure(arrays, m["t"])))
        return rep

    def figure(self, arrays: dict[str, np.ndarray], ts: list[int]):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = arrays["labels"]
        n = len(labels)
        fig, axes = plt.subplots(1, len(ts), figsize=(3.6 * len(ts), 3.5), squeeze=False)
        for ax, t in zip(axes[0], ts):
            emb = arrays[f"embedding_t{t}"]
            ax.scatter(emb[:n, 0], emb[:n, 1], c=labels, cmap="tab10", s=6, marker="o", alpha=0.6, label="victim")
            ax.scatter(emb[n:, 0], emb[n:, 1], c=labels, cmap="tab10", s=10, marker="x", alpha=0.6, label="surrogate")
            ax.set_title(f"t = {t}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        from matplotlib.lines import Line2D
        handles = [Line2D([], [], ls="", marker="o", color="k", ms=4, label="victim"),
                   Line2D([], [], ls="", marker="x", color="k", ms=4, label="surrogate")]
        fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        return fig
