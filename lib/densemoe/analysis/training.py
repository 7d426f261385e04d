"""One run, after training: loss curves (``history.csv``), metric curves (``evals.csv``), sample predictions.

Used by ``notebooks/02_train.ipynb``. It reads a run folder ``runs/<name>/`` as the trainer writes it and
never trains, except :func:`tiny_run`: a 3-iteration run on the tiny SynthScenes under ``runs/tiny/`` that
gives the notebook something to show before ``dvc repro`` (what nbval and a newcomer get).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from densemoe.analysis.data_summary import _panel, open_dataset
from densemoe.config import data_root, find_root, load_params
from densemoe.errors import DataError


def tiny_run(experiment: str, iterations: int = 3) -> Path:
    """``runs/tiny/<experiment>``: the experiment for a few iterations on the tiny data (reused if done)."""
    from densemoe.train.experiment import resolve_experiment
    from densemoe.train.trainer import train

    params = load_params(find_root() / "params.yaml")
    open_dataset(params.experiment(experiment).dataset, "val", profile="tiny")  # generated on demand
    exp = resolve_experiment(params, experiment, runs=find_root() / "runs" / "tiny",
                             root=data_root(params, profile="tiny"), iterations=iterations, eval_every=0,
                             checkpoint_every=0, log_every=1, batch_size=2, val_batch_size=4, edge_workers=1)
    if not (exp.run_dir / "metrics.json").is_file():
        train(exp, progress=False, restart=True)
    return exp.run_dir


def read_csv(run_dir: str | Path, name: str) -> pd.DataFrame:
    """``history.csv`` or ``evals.csv`` of a run; a one-line error naming the fix if it is missing."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise DataError(f"{path} does not exist; train the run first (dvc repro, or densemoe train)")
    return pd.read_csv(path)


def loss_curves(history: pd.DataFrame, title: str = "") -> Figure:
    """Left: the total loss (Σ_t λ_t L_t + aux) and each task's unweighted L_t per logged iteration (log
    scale). Right: the lr."""
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [3, 1]})
    x = history["iteration"]
    ax.plot(x, history["loss"], color="black", lw=2, label="total")
    for col in [c for c in history.columns if c.startswith(("loss/", "aux/"))]:
        ax.plot(x, history[col].clip(lower=1e-8), lw=1, label=col.split("/", 1)[1])
    ax.set(yscale="log", xlabel="iteration", ylabel="loss", title=title or "training losses")
    ax.legend(fontsize=7, ncol=2)
    ax_lr.plot(x, history["lr"])
    ax_lr.set(xlabel="iteration", title="learning rate (poly 0.9)")
    fig.tight_layout()
    return fig


def eval_curves(evals: pd.DataFrame, keys: list[str], title: str = "") -> Figure:
    """Each headline metric over the evaluations (one panel per metric)."""
    keys = [k for k in keys if k in evals.columns]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 2.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(evals["iteration"], evals[key], marker="o")
        ax.set(title=key, xlabel="iteration")
    fig.suptitle(title or "evaluation metrics", fontsize=10)
    fig.tight_layout()
    return fig


def _prediction_panel(task: str, arr: np.ndarray) -> tuple[np.ndarray, dict]:
    if task in ("semseg", "human_parts"):
        return _panel(task, torch.from_numpy(arr.astype(np.int64))[None])
    if task == "normals":
        n = arr / np.clip(np.linalg.norm(arr, axis=0, keepdims=True), 1e-6, None)
        return _panel(task, torch.from_numpy(n))
    if task == "edge":
        return arr / 255.0, {"cmap": "gray", "vmin": 0, "vmax": 1}
    if task == "depth":
        return arr, {"cmap": "viridis"}
    return arr, {"cmap": "gray", "vmin": 0, "vmax": 1}


@torch.no_grad()
def sample_predictions(run_dir: str | Path, n: int = 2, split: str = "val") -> Figure:
    """``n`` images of ``split``: per task the target (top) and the run's prediction (below)."""
    from densemoe.metrics.evaluate import _crop, prediction_arrays
    from densemoe.train.checkpoint import build_model, load_checkpoint
    from densemoe.train.experiment import eval_loader

    ckpt = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    config = ckpt["meta"]["config"]
    model = build_model(ckpt).eval()
    tasks = list(config["tasks"])
    loader = eval_loader(config["dataset"], Path(config["data_root"]), split, tasks, tuple(config["crop"]), n)
    batch = next(iter(loader))
    outputs = model(batch["image"])
    fig, axes = plt.subplots(2 * n, len(tasks) + 1, figsize=(1.8 * (len(tasks) + 1), 3.6 * n), squeeze=False)
    for i in range(n):
        size = tuple(batch["meta"][i].get("size", batch["image"].shape[-2:]))
        pred = prediction_arrays({t: outputs[t][i] for t in tasks}, size)  # padding removed
        image = _crop(batch["image"][i], size).permute(1, 2, 0).numpy()
        axes[2 * i, 0].imshow((image - image.min()) / max(np.ptp(image), 1e-6))
        axes[2 * i, 0].set_title(f"image {i} ({size[0]}x{size[1]})", fontsize=8)
        for c, task in enumerate(tasks, start=1):
            target = _crop(batch[task][i], size)
            img, kw = _panel(task, target if target.dim() == 3 else target[None])
            axes[2 * i, c].imshow(img, **kw)
            axes[2 * i, c].set_title(f"{task}: target", fontsize=8)
            img, kw = _prediction_panel(task, pred[task])
            axes[2 * i + 1, c].imshow(img, **kw)
            axes[2 * i + 1, c].set_title(f"{task}: prediction", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i in range(n):
        axes[2 * i + 1, 0].axis("off")
    step = ckpt.get("iteration", "?")
    fig.suptitle(f"{config['experiment']} at iteration {step}: {split} samples", fontsize=10)
    fig.tight_layout()
    return fig


def find_run(experiment: str, runs_dir: str | Path = "runs", tiny_if_missing: bool = True) -> Path:
    """``<runs_dir>/<experiment>`` if it holds a checkpoint, else (``tiny_if_missing``) :func:`tiny_run`."""
    run_dir = find_root() / runs_dir / experiment
    if (run_dir / "checkpoint.pt").is_file():
        return run_dir
    if not tiny_if_missing:
        raise DataError(f"{run_dir} holds no checkpoint; run `dvc repro` (or densemoe train) first")
    return tiny_run(experiment)
