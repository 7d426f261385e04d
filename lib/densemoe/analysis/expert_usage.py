"""Expert usage of a routed decoder (MLoRE Fig. 4, FGMoE's routers): which task activates which expert.

Reads ``runs/<name>/routing/iter_<k>.json`` as the trainer writes it at every evaluation
(``densemoe.train.evaluation``): per block, a (T, N) matrix ``mean_weight`` (the task's routing weight of
each expert, averaged over the images) and ``selected`` (the share of images in which the expert was among
the task's top-k). Used by ``notebooks/05_expert_usage.ipynb``.

- :func:`activation_heatmaps`: Fig. 4(a), task × expert activation per block.
- :func:`tasks_per_expert`: Fig. 4(b), the share of experts activated by 0..T tasks. inferred: the paper
  counts activations per image; from the averaged statistics we count expert ``e`` as activated by task
  ``t`` when ``selected[t, e] >= threshold`` (default 0.5: in most images).
- :func:`routing_summary`: per block and task, the routing entropy (nats) and the busiest expert's load.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from densemoe.errors import DataError


def read_routing(run_dir: str | Path, iteration: int | None = None) -> dict:
    """The routing statistics of a run's evaluation at ``iteration`` (default: the last)."""
    folder = Path(run_dir) / "routing"
    files = sorted(folder.glob("iter_*.json"))
    if not files:
        raise DataError(f"{folder} holds no routing statistics; train the run first (dvc repro)")
    if iteration is not None:
        files = [f for f in files if f.name == f"iter_{iteration:06d}.json"]
        if not files:
            raise DataError(f"{folder} has no evaluation at iteration {iteration}")
    return json.loads(files[-1].read_text())


def is_routed(routing: dict) -> bool:
    """Whether the model routes at all (baselines and single-task models have no blocks)."""
    return bool(routing.get("blocks"))


def activation_heatmaps(routing: dict, key: str = "selected", title: str = "") -> Figure:
    """Fig. 4(a): one task × expert heatmap per block of ``routing[blocks][b][key]``; one colour bar."""
    blocks = routing["blocks"]
    cols = min(4, len(blocks))
    rows = math.ceil(len(blocks) / cols)
    vmax = 1.0 if key == "selected" else max(float(np.max(s[key])) for s in blocks.values())
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols + 0.8, 1.9 * rows), squeeze=False)
    for ax, (name, stats) in zip(axes.flat, blocks.items(), strict=False):
        sns.heatmap(np.asarray(stats[key]), ax=ax, vmin=0, vmax=vmax, cmap="viridis", cbar=False,
                    yticklabels=routing["tasks"], xticklabels=5)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("expert", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(blocks):]:
        ax.axis("off")
    what = "share of images selecting the expert" if key == "selected" else "mean routing weight"
    fig.suptitle(title or f"task × expert activation ({what}), iteration {routing['iteration']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    bar = fig.add_axes((0.945, 0.15, 0.012, 0.7))
    fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, vmax), "viridis"), cax=bar, label=what)
    bar.yaxis.label.set_size(8)
    bar.tick_params(labelsize=7)
    return fig


def tasks_per_expert(routing: dict, threshold: float = 0.5) -> pd.DataFrame:
    """Fig. 4(b): per block, the share (%) of experts activated by exactly k tasks, k = 0..T."""
    records = []
    for name, stats in routing["blocks"].items():
        active = np.asarray(stats["selected"]) >= threshold  # (T, N)
        counts = active.sum(axis=0)
        for k in range(active.shape[0] + 1):
            records.append({"block": name, "tasks": k, "share %": 100.0 * float((counts == k).mean())})
    return pd.DataFrame(records)


def routing_summary(routing: dict) -> pd.DataFrame:
    """Per block and task: routing entropy of the mean weights (nats; log N is uniform) and max load."""
    records = []
    for name, stats in routing["blocks"].items():
        weights = np.asarray(stats["mean_weight"], dtype=float)  # (T, N)
        for task, w in zip(routing["tasks"], weights, strict=True):
            p = w / w.sum() if w.sum() > 0 else w
            entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
            records.append({"block": name, "task": task, "entropy": round(entropy, 3),
                            "uniform": round(math.log(len(w)), 3), "max load": round(float(p.max()), 3)})
    return pd.DataFrame(records)


def tasks_per_expert_figure(shares: pd.DataFrame, title: str = "") -> Figure:
    """Bar chart of :func:`tasks_per_expert` averaged over the blocks (one bar group per k)."""
    mean = shares.groupby("tasks", as_index=False)["share %"].mean()
    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    sns.barplot(mean, x="tasks", y="share %", ax=ax, color="tab:blue")
    ax.set(xlabel="number of tasks activating the expert", ylabel="experts (%)",
           title=title or "experts by number of tasks (mean over blocks)")
    fig.tight_layout()
    return fig


def compare_tasks_per_expert(routings: dict[str, dict], threshold: float = 0.5) -> pd.DataFrame:
    """Fig. 4(b) across runs: ``{label: routing}`` → the share (%) of experts activated by k tasks, averaged
    over each run's blocks (columns label, tasks, share %)."""
    frames = []
    for label, routing in routings.items():
        mean = tasks_per_expert(routing, threshold).groupby("tasks", as_index=False)["share %"].mean()
        frames.append(mean.assign(run=label))
    return pd.concat(frames, ignore_index=True)[["run", "tasks", "share %"]]


def compare_figure(shares: pd.DataFrame, title: str = "") -> Figure:
    """Grouped bars of :func:`compare_tasks_per_expert`: one colour per run, one group per k tasks."""
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    sns.barplot(shares, x="tasks", y="share %", hue="run", ax=ax)
    ax.set(xlabel="number of tasks activating the expert", ylabel="experts (%, mean over blocks)",
           title=title or "experts by number of tasks activating them")
    ax.legend(fontsize=8, title=None)
    fig.tight_layout()
    return fig
