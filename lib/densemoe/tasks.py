"""Tasks of the papers' two benchmarks, as small records (LibMTL's ``task_dict``, typed).

One :class:`TaskSpec` per task says how many channels the head predicts, which loss trains it, which
metrics the paper tables report for it (``<task>/<metric>`` keys), whether higher is better (the
``l_t`` of Δm, survey Eq. 10) and the ignore value of its label maps. The output channels of
``semseg`` and ``human_parts`` depend on the dataset; :func:`tasks_for` fills them in.

Sources: ``specs/mlore.md`` §2 (losses and weights), §3 (classes, ignore values), §4 (metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from densemoe.errors import ConfigError, unknown


@dataclass(frozen=True)
class TaskSpec:
    """A dense-prediction task.

    ``channels`` is the number of output channels of the task head; ``loss`` names the official loss
    (``train/losses.py``); ``metrics`` are the keys the paper tables report, the first one being the
    task's headline metric used by Δm; ``higher_is_better`` refers to that headline metric;
    ``ignore_index`` is the label value that is never counted (255 for label maps, 0 for depth, the zero
    vector for normals).
    """

    name: str
    channels: int
    loss: str
    metrics: tuple[str, ...]
    higher_is_better: bool
    ignore_index: float
    description: str = ""

    @property
    def headline(self) -> str:
        """The metric key Δm uses for this task, e.g. ``semseg/miou``."""
        return f"{self.name}/{self.metrics[0]}"


#: Templates; ``channels=0`` marks "set by the dataset" (number of classes).
TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("semseg", 0, "cross_entropy", ("miou",), True, 255, "semantic segmentation"),
        TaskSpec("human_parts", 0, "cross_entropy", ("miou",), True, 255, "human-part segmentation"),
        TaskSpec(
            "sal", 2, "balanced_cross_entropy", ("maxf", "miou"), True, 255, "saliency (2-class head)",
        ),
        TaskSpec(
            "normals", 3, "normalized_l1", ("mean_err", "median_err", "rmse", "11.25", "22.5", "30"),
            False, 0, "surface normals (camera frame); a zero vector is invalid",
        ),
        TaskSpec("edge", 1, "balanced_bce", ("odsf", "oisf", "ap"), True, 255, "object boundaries"),
        TaskSpec(
            "depth", 1, "masked_l1", ("rmse", "log_rmse", "abs_rel", "delta1"), False, 0, "depth in metres",
        ),
    )
}


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset offers: its task set, class counts and input size (paper profile)."""

    name: str
    tasks: tuple[str, ...]
    num_classes: dict[str, int]
    train_size: tuple[int, int]
    edge_max_dist: float  # SEISM maxDist, relative to the image diagonal (specs/ecosystem.md §5.1)


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "pascal-context", ("semseg", "human_parts", "sal", "normals", "edge"),
            {"semseg": 21, "human_parts": 7}, (512, 512), 0.0075,
        ),
        DatasetInfo(
            "nyud-v2", ("semseg", "depth", "normals", "edge"), {"semseg": 40}, (448, 576), 0.011,
        ),
        # SynthScenes mirrors of the two benchmarks (DESIGN §5); class counts from data/synthetic.py.
        DatasetInfo(
            "synth-pascal", ("semseg", "human_parts", "sal", "normals", "edge"),
            {"semseg": -1, "human_parts": 7}, (128, 128), 0.0075,
        ),
        DatasetInfo("synth-nyud", ("semseg", "depth", "normals", "edge"), {"semseg": -1}, (128, 128), 0.011),
    )
}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; a one-line error listing the valid names otherwise."""
    if name not in DATASETS:
        raise unknown("dataset", name, DATASETS)
    info = DATASETS[name]
    if name.startswith("synth-"):
        from densemoe.data.synthetic import SYNTH_PART_CLASSES, SYNTH_SEMSEG_CLASSES

        counts = {"semseg": len(SYNTH_SEMSEG_CLASSES), "human_parts": len(SYNTH_PART_CLASSES)}
        info = replace(info, num_classes={t: counts[t] for t in info.num_classes})
    return info


def tasks_for(dataset: str, tasks: list[str] | tuple[str, ...] | None = None) -> dict[str, TaskSpec]:
    """The task specs of ``dataset`` (all its tasks, or the listed subset, in the listed order).

    >>> [t.channels for t in tasks_for("nyud-v2").values()]
    [40, 1, 3, 1]
    """
    info = dataset_info(dataset)
    names = info.tasks if tasks is None else tuple(tasks)
    if not names:
        raise ConfigError(f"no tasks given for dataset '{dataset}'; choose from {', '.join(info.tasks)}")
    out: dict[str, TaskSpec] = {}
    for name in names:
        if name not in info.tasks:
            if name not in TASKS:
                raise unknown("task", name, TASKS)
            raise ConfigError(
                f"task '{name}' is not labelled in dataset '{dataset}'; its tasks are {', '.join(info.tasks)}"
            )
        spec = TASKS[name]
        out[name] = replace(spec, channels=info.num_classes[name]) if name in info.num_classes else spec
    return out
