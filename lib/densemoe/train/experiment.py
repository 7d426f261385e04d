"""An experiment of ``params.yaml`` resolved into everything a run needs, and its data loaders.

:func:`resolve_experiment` turns ``experiments.<name>`` (model preset + overrides, dataset, tasks,
``train`` overrides) and its profile's training defaults into an :class:`Experiment`: the model's
constructor keywords, the task specs, the crop size (``data.augment.crop``, else the SynthScenes size of
``data.synth.<dataset>``, else the dataset's training size) that is also the model's ``img_size``, the
data folder and the run folder ``runs/<name>``.

Loaders are resumable to the batch: the order of epoch ``e`` is a permutation drawn from
``seed + e``, sharded over the ranks, and each sample's augmentation draws from a generator seeded by
``(seed, epoch, index)``, so an interrupted run that resumes at iteration k sees exactly the batches of
an uninterrupted one, with any number of loader workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from densemoe.config import AugmentParams, Params, TrainParams, data_root, find_root
from densemoe.data.dataset import MultiTaskDataset
from densemoe.data.transforms import eval_transforms, train_transforms
from densemoe.errors import DataError
from densemoe.tasks import TaskSpec, dataset_info, tasks_for
from densemoe.train.losses import default_edge_w
from densemoe.train.signals import worker_ignores_signals


@dataclass
class Experiment:
    """A resolved experiment (module docstring)."""

    name: str
    preset: str
    model_args: dict[str, Any]
    dataset: str
    tasks: dict[str, TaskSpec]
    train: TrainParams
    augment: AugmentParams
    crop: tuple[int, int]
    data_root: Path
    run_dir: Path
    seed: int = 0
    profile: str = "smoke"

    @property
    def edge_w(self) -> float:
        return self.train.edge_w if self.train.edge_w is not None else default_edge_w(self.dataset)

    def config(self) -> dict[str, Any]:
        """The resolved configuration as plain data (``config.yaml``, checkpoint ``meta``)."""
        return _plain({
            "experiment": self.name, "profile": self.profile, "seed": self.seed, "model": self.preset,
            "model_args": self.model_args, "dataset": self.dataset, "tasks": list(self.tasks),
            "crop": list(self.crop), "edge_w": self.edge_w, "train": asdict(self.train),
            "augment": asdict(self.augment), "data_root": str(self.data_root), "run_dir": str(self.run_dir),
        })


def _plain(x: Any) -> Any:
    """Tuples → lists, paths → str, recursively (YAML- and weights-only-safe)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def crop_size(params: Params, dataset: str) -> tuple[int, int]:
    if params.data.augment.crop is not None:
        return tuple(params.data.augment.crop)
    if dataset in params.data.synth:
        s = params.data.synth[dataset]
        return (s.height, s.width)
    return dataset_info(dataset).train_size


def resolve_experiment(params: Params, name: str, runs: str | Path | None = None,
                       root: str | Path | None = None, **train_overrides) -> Experiment:
    """Experiment ``name`` of ``params``; ``runs`` (default ``<repo>/runs``) holds ``runs/<name>``,
    ``root`` overrides the data folder, ``train_overrides`` replace keys of the training recipe."""
    from dataclasses import replace

    exp = params.experiment(name)
    profile = params.experiment_profile(name)
    train = params.train_params(name)
    if train_overrides:
        train = replace(train, **train_overrides)
    crop = crop_size(params, exp.dataset)
    tasks = tasks_for(exp.dataset, exp.tasks)
    model_args = {"dataset": exp.dataset, "tasks": list(tasks), "img_size": crop, **exp.model_args}
    base = Path(runs) if runs is not None else find_root() / "runs"
    folder = Path(root) if root is not None else data_root(params, profile=profile)
    return Experiment(name, exp.model, model_args, exp.dataset, tasks, train, params.data.augment, crop,
                      folder, base / name, params.seed, profile)


# ----------------------------------------------------------------------------------------------------------
# Data


def collate(samples: list[dict]) -> dict[str, Any]:
    """Stack the maps; ``meta`` stays a list of dicts."""
    out: dict[str, Any] = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "meta"}
    out["meta"] = [s.get("meta", {}) for s in samples]
    return out


def item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


class AugmentedDataset(Dataset):
    """The training split with the official augmentation, indexed by ``(epoch, index)``."""

    def __init__(self, ds: MultiTaskDataset, crop: tuple[int, int], aug: AugmentParams, seed: int) -> None:
        self.ds, self.seed = ds, seed
        self.gen = torch.Generator()
        self.transform = train_transforms(crop, (aug.scale_min, aug.scale_max), aug.cat_max_ratio,
                                          aug.flip, aug.photometric, generator=self.gen)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        self.gen.manual_seed(item_seed(self.seed, epoch, index))
        return self.transform(self.ds.raw(index))


class TrainBatches:
    """Batches of iteration ``start`` onwards, epoch by epoch (drop_last, as the official code)."""

    def __init__(self, exp: Experiment, rank: int = 0, world: int = 1) -> None:
        t = exp.train
        ds = MultiTaskDataset(exp.data_root, exp.dataset, "train", list(exp.tasks))
        self.data = AugmentedDataset(ds, exp.crop, exp.augment, exp.seed)
        self.exp, self.rank, self.world = exp, rank, world
        self.per_epoch = len(ds) // (t.batch_size * world)
        if self.per_epoch == 0:
            raise DataError(f"the train split of {exp.dataset} has {len(ds)} images, fewer than one batch of "
                            f"{t.batch_size} x {world} processes; lower train.batch_size")

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.exp.seed + epoch)
        perm = torch.randperm(len(self.data), generator=g).tolist()
        used = perm[: self.per_epoch * self.exp.train.batch_size * self.world]
        return used[self.rank :: self.world]

    def __call__(self, start: int):
        """Yield ``(epoch, batch)`` from iteration ``start`` on, forever."""
        t = self.exp.train
        epoch, skip = divmod(start, self.per_epoch)
        while True:
            keys = [(epoch, i) for i in self.epoch_order(epoch)][skip * t.batch_size :]
            loader = DataLoader(_Keys(self.data, keys), batch_size=t.batch_size, num_workers=t.workers,
                                collate_fn=collate, generator=torch.Generator().manual_seed(epoch),
                                persistent_workers=False, pin_memory=torch.cuda.is_available(),
                                worker_init_fn=worker_ignores_signals)
            for batch in loader:
                yield epoch, batch
            epoch, skip = epoch + 1, 0


class _Keys(Dataset):
    def __init__(self, data: Dataset, keys: list) -> None:
        self.data, self.keys = data, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        return self.data[self.keys[i]]


def eval_loader(exp_or_dataset: Experiment | str, root: Path | None = None, split: str = "val",
                tasks: list[str] | None = None, crop: tuple[int, int] | None = None, batch_size: int = 6,
                workers: int = 0, rank: int = 0, world: int = 1) -> DataLoader:
    """The official test transform over this rank's share (``rank::world``) of ``split``."""
    if isinstance(exp_or_dataset, Experiment):
        e = exp_or_dataset
        root, dataset, tasks, crop = e.data_root, e.dataset, list(e.tasks), e.crop
    else:
        dataset = exp_or_dataset
    ds = MultiTaskDataset(root, dataset, split, tasks or list(tasks_for(dataset)),
                          transform=eval_transforms(crop or dataset_info(dataset).train_size))
    shard = _Keys(ds, list(range(rank, len(ds), world)))
    return DataLoader(shard, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                      generator=torch.Generator().manual_seed(0), pin_memory=torch.cuda.is_available(),
                      worker_init_fn=worker_ignores_signals)
