"""One multi-task Dataset class for every layout: SynthScenes, PASCAL-Context MT and NYUD-v2 MT.

A :class:`Layout` is data (the way timm keeps pretrained configs as data): the folder name, where the
split lists live, and one reader per task. SynthScenes writes its splits in a layout of the same kind
with the same file encodings, so the synthetic default exercises the very code path the real datasets
take. A sample is the dict of DESIGN §4: ``image`` (3×H×W float), one target per task and ``meta``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from densemoe.data import io
from densemoe.errors import DataError, unknown
from densemoe.tasks import dataset_info

Sample = dict[str, Any]


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files are, relative to its folder ``<data_root>/<folder>``.

    ``splits`` is the split-list pattern (one id per line); ``split_alias`` maps our split names onto
    the dataset's (NYUD-v2 and PASCAL-Context evaluate on ``val``, which the papers call test);
    ``verify`` raises a :class:`DataError` for a foreign variant of the dataset (e.g. the 480×640 NYUD).
    ``required`` lists the paths (relative) whose presence identifies a complete extraction.
    """

    name: str
    folder: str
    image: io.Reader
    targets: dict[str, io.Reader]
    splits: str
    split_alias: dict[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    verify: Callable[[Path], None] | None = None


def synth_layout(name: str) -> Layout:
    """The on-disk layout written by :func:`densemoe.data.synthetic.write_synth_dataset`."""
    return Layout(
        name=name,
        folder=name,
        image=io.rgb_image("images/{id}.png"),
        targets={
            "semseg": io.label_png("semseg/{id}.png"),
            "human_parts": io.label_png("human_parts/{id}.png"),
            "sal": io.binary_png("sal/{id}.png"),
            "normals": io.normals_png("normals/{id}.png"),
            "depth": io.depth_npy("depth/{id}.npy"),
            "edge": io.binary_png("edge/{id}.png"),
        },
        splits="gt_sets/{split}.txt",
        required=("images", "gt_sets", "meta.json"),
    )


def get_layout(name: str) -> Layout:
    """The layout of dataset ``name`` (``synth-pascal``, ``synth-nyud``, ``pascal-context``, ``nyud-v2``)."""
    if name.startswith("synth-"):
        dataset_info(name)  # validates the name
        return synth_layout(name)
    from densemoe.data.nyud import NYUD_LAYOUT
    from densemoe.data.pascal import PASCAL_LAYOUT

    layouts = {"pascal-context": PASCAL_LAYOUT, "nyud-v2": NYUD_LAYOUT}
    if name not in layouts:
        raise unknown("dataset", name, [*layouts, "synth-pascal", "synth-nyud"])
    return layouts[name]


def make_command(name: str) -> str:
    """The command that creates dataset ``name``."""
    return f"densemoe data {'synth' if name.startswith('synth-') else 'fetch'} {name}"


def check_layout(layout: Layout, folder: Path) -> None:
    """Raise a one-line :class:`DataError` unless ``folder`` holds an extracted copy of ``layout``."""
    if not folder.is_dir():
        raise DataError(
            f"dataset folder {folder} does not exist; run `{make_command(layout.name)}` "
            f"(or point data.root in params.yaml / --root at the folder that contains '{layout.folder}')"
        )
    missing = [r for r in layout.required if not (folder / r).exists()]
    if missing:
        raise DataError(
            f"{folder} is not a complete {layout.name} dataset: missing {', '.join(missing)}; "
            f"re-run `{make_command(layout.name)}`"
        )
    if layout.verify is not None:
        layout.verify(folder)


def read_split(layout: Layout, folder: Path, split: str) -> list[str]:
    """The sample ids of ``split``, read from the layout's split list."""
    path = folder / layout.splits.format(split=layout.split_alias.get(split, split))
    if not path.is_file():
        raise DataError(
            f"missing split file {path} for split '{split}'; the dataset at {folder} is incomplete")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"split file {path} lists no samples")
    return ids


def _to_tensor(task: str, arr: np.ndarray) -> torch.Tensor:
    """Raw float32 maps → (C, H, W) float tensors; transforms keep this form until ``Finalize``."""
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return t.permute(2, 0, 1) if t.ndim == 3 else t.unsqueeze(0)


class MultiTaskDataset(Dataset):
    """Samples of one split of one dataset, restricted to ``tasks``.

    Each item is ``{"image": (3, H, W), <task>: map, "meta": {...}}``; ``transform`` (see
    ``data/transforms.py``) turns the raw float maps into the model's inputs and targets.
    """

    def __init__(
        self,
        root: str | Path,
        name: str,
        split: str,
        tasks: list[str] | tuple[str, ...],
        transform: Callable[[Sample], Sample] | None = None,
    ) -> None:
        self.layout = get_layout(name)
        self.folder = Path(root) / self.layout.folder
        check_layout(self.layout, self.folder)
        bad = [t for t in tasks if t not in self.layout.targets]
        if bad:
            raise unknown("task", bad[0], self.layout.targets, where=f" for dataset '{name}'")
        self.name, self.split, self.tasks, self.transform = name, split, tuple(tasks), transform
        self.ids = read_split(self.layout, self.folder, split)
        self.num_classes = dataset_info(name).num_classes

    def __len__(self) -> int:
        return len(self.ids)

    def raw(self, index: int) -> Sample:
        """The decoded sample before any transform: float tensors (C, H, W) and ``meta``."""
        sid = self.ids[index]
        image = self.layout.image(self.folder, sid)
        sample: Sample = {"image": _to_tensor("image", image)}
        for task in self.tasks:
            target = self.layout.targets[task](self.folder, sid)
            if target.shape[:2] != image.shape[:2]:
                raise DataError(
                    f"{task} label of '{sid}' is {target.shape[:2]} but its image is {image.shape[:2]}; "
                    f"the dataset at {self.folder} is corrupt"
                )
            self._check_values(task, sid, target)
            sample[task] = _to_tensor(task, target)
        sample["meta"] = {"name": sid, "size": tuple(image.shape[:2]), "dataset": self.name}
        return sample

    def _check_values(self, task: str, sid: str, target: np.ndarray) -> None:
        """A label outside its task's range is a one-line error here, where the file is known, rather than
        an index error in the loss or a silently wrong confusion matrix later."""
        classes = self.num_classes.get(task)
        if classes is not None:
            wrong = (target < 0) | (target >= classes) | (target != np.round(target))
            bad = target[(target != 255) & wrong]
            allowed = f"0..{classes - 1}, or 255 = ignore"
        elif task == "depth":
            bad = target[~np.isfinite(target) | (target < 0)]
            allowed = "finite metres >= 0, 0 = invalid"
        elif task == "normals":
            bad = target[~np.isfinite(target)]
            allowed = "finite"
        else:
            return
        if bad.size:
            raise DataError(f"{task} label of sample '{sid}' holds {bad.flat[0]:g} ({bad.size} pixels; "
                            f"allowed: {allowed}); the dataset at {self.folder} is corrupt or another variant, "
                            "re-fetch or regenerate it")

    def __getitem__(self, index: int) -> Sample:
        sample = self.raw(index)
        return self.transform(sample) if self.transform is not None else sample
