"""What a dataset looks like: sample grids with every target, label frequencies, value histograms.

Used by ``notebooks/01_data.ipynb``; works on every dataset the readers know (SynthScenes and real).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from densemoe.config import data_root, find_root, load_params
from densemoe.data.dataset import MultiTaskDataset, get_layout
from densemoe.tasks import dataset_info

TINY = {"height": 64, "width": 64, "splits": {"train": 16, "val": 4, "test": 4}}


def open_dataset(name: str, split: str = "train", profile: str | None = None,
                 tiny_if_missing: bool = True) -> MultiTaskDataset:
    """The dataset ``name`` of ``profile`` with all its tasks, raw (no transforms).

    A missing SynthScenes dataset is generated tiny under ``data/tiny`` when ``tiny_if_missing``
    (what nbval and a newcomer get before running ``dvc repro``).
    """
    params = load_params(find_root() / "params.yaml")
    root = data_root(params, profile=profile)
    folder = root / get_layout(name).folder
    if not folder.exists() and tiny_if_missing and name.startswith("synth-"):
        from dataclasses import replace

        from densemoe.data.synthetic import SYNTH_PRESETS, write_synth_dataset

        root = data_root(params, profile="tiny")
        cfg = replace(SYNTH_PRESETS[name], height=TINY["height"], width=TINY["width"])
        write_synth_dataset(root, name, cfg, TINY["splits"], seed=params.seed, progress=False)
    return MultiTaskDataset(root, name, split, dataset_info(name).tasks)


def class_names(ds: MultiTaskDataset, task: str) -> list[str]:
    """Class names of ``task`` from the dataset's ``meta.json`` where it has one, else indices."""
    meta = ds.folder / "meta.json"
    key = {"semseg": "semseg_classes", "human_parts": "part_classes"}.get(task)
    if key and meta.is_file():
        return list(json.loads(meta.read_text())[key])
    return [str(i) for i in range(dataset_info(ds.name).num_classes.get(task, 2))]


def _panel(task: str, target: torch.Tensor) -> tuple[np.ndarray, dict]:
    """A displayable image of one target and the imshow options for it."""
    if task == "image":
        return target.permute(1, 2, 0).numpy() / 255.0, {}
    if task == "normals":
        return (target.permute(1, 2, 0).numpy() + 1.0) / 2.0, {}
    m = target[0].numpy()
    if task in ("semseg", "human_parts"):
        return np.ma.masked_equal(m, 255), {"cmap": "tab20", "vmin": 0, "vmax": 20, "interpolation": "none"}
    if task == "depth":
        return np.ma.masked_equal(m, 0), {"cmap": "viridis"}
    return np.ma.masked_equal(m, 255), {"cmap": "gray", "vmin": 0, "vmax": 1}


def sample_grid(ds: MultiTaskDataset, n: int = 4) -> Figure:
    """``n`` samples, one per row: the image and every target of the dataset's tasks."""
    cols = ("image", *ds.tasks)
    fig, axes = plt.subplots(n, len(cols), figsize=(2.0 * len(cols), 2.0 * n), squeeze=False)
    for r in range(n):
        sample = ds.raw(r * max(1, len(ds) // n))
        for c, key in enumerate(cols):
            img, kw = _panel(key, sample[key])
            axes[r, c].imshow(img, **kw)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(key, fontsize=9)
        axes[r, 0].set_ylabel(sample["meta"]["name"], fontsize=7)
    fig.suptitle(f"{ds.name} ({ds.split}): samples with every target", fontsize=10)
    fig.tight_layout()
    return fig


def label_frequencies(ds: MultiTaskDataset, task: str, n: int = 64) -> pd.DataFrame:
    """Per class: share of labelled pixels and share of images it appears in, over ``n`` samples."""
    names = class_names(ds, task)
    pixels = np.zeros(len(names), dtype=np.int64)
    images = np.zeros(len(names), dtype=np.int64)
    count = min(n, len(ds))
    for i in range(count):
        m = ds.raw(i)[task][0].long().flatten()
        m = m[m != 255]
        hist = torch.bincount(m, minlength=len(names))[: len(names)].numpy()
        pixels += hist
        images += hist > 0
    return pd.DataFrame({
        "class": names,
        "pixel_share_%": 100.0 * pixels / max(pixels.sum(), 1),
        "image_share_%": 100.0 * images / max(count, 1),
    })


def value_histograms(ds: MultiTaskDataset, n: int = 64) -> Figure:
    """Histograms of valid depth values and of the three normal components over ``n`` samples."""
    panels = [t for t in ("depth", "normals") if t in ds.tasks]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 3), squeeze=False)
    samples = [ds.raw(i) for i in range(min(n, len(ds)))]
    for ax, task in zip(axes[0], panels, strict=False):
        if task == "depth":
            d = torch.cat([s["depth"].flatten() for s in samples])
            ax.hist(d[d > 0].numpy(), bins=60, color="tab:blue")
            ax.set(title="depth of valid pixels", xlabel="metres", ylabel="pixels")
        else:
            nrm = torch.cat([s["normals"].flatten(1) for s in samples], dim=1)
            valid = nrm.abs().sum(0) > 0
            for k, comp in enumerate("xyz"):
                ax.hist(nrm[k, valid].numpy(), bins=60, histtype="step", label=f"n_{comp}")
            ax.set(title="normal components (camera frame)", xlabel="value", ylabel="pixels")
            ax.legend()
    fig.suptitle(f"{ds.name} ({ds.split}): value distributions over {len(samples)} images", fontsize=10)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str | Path, dpi: int = 90) -> Path:
    """Write ``fig`` as PNG (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
