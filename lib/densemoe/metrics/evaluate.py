"""One meter for all tasks, saved predictions, and ``densemoe evaluate``.

**In the loop**: ``meter = build_metrics(tasks_for(dataset), dataset)``, then ``meter.update(preds,
batch)`` per batch and ``meter.compute()`` → one flat ``{"<task>/<metric>": value}``. There the edge
ground truth is ``seg2bmap`` of the batch's ``edge`` map (NYUD's official choice; an approximation for
PASCAL and SynthScenes); pass ``batch["edge_labels"]`` to use a label map instead.

**Saved predictions** (the official protocol; what :func:`evaluate_predictions` reads): one
``<pred_dir>/<sample id>.npz`` per sample, at the sample's original size ``(H, W)`` (padding removed),
one array per task: ``semseg``, ``human_parts`` ``(H, W)`` integer classes; ``sal`` ``(H, W)``
probability; ``edge`` ``(H, W)`` uint8 ``floor(255·σ(logit))`` as the official PNGs (or a probability);
``normals`` ``(3, H, W)`` (any scale); ``depth`` ``(H, W)`` metres. :func:`save_predictions` writes them
from model outputs. The boundary ground truth is then the dataset's label map: PASCAL-Context's
``LabelMap`` (relabelled), NYUD's ``edge/<id>.png`` read as a 0/255 label map, SynthScenes'
``instances/<id>.png`` (``specs/ecosystem.md`` §5.1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from densemoe.atomic import atomic_write
from densemoe.errors import ConfigError, DataError
from densemoe.metrics import Metric, all_reduce_
from densemoe.metrics.boundary import BoundaryMetric
from densemoe.metrics.depth import DepthMetric
from densemoe.metrics.normals import NormalsMetric
from densemoe.metrics.saliency import SaliencyMetric
from densemoe.metrics.segmentation import SegmentationMetric
from densemoe.tasks import TaskSpec, dataset_info, tasks_for

log = logging.getLogger("densemoe")
OPTIONS = (
    "from_logits", "sal_double_sigmoid", "edge_workers", "edge_matcher", "edge_max_pending", "progress",
)


def build_metrics(tasks: Mapping[str, TaskSpec], dataset: str, **options) -> MultiTaskMetrics:
    """A :class:`MultiTaskMetrics` with each task's metric set up for ``dataset``.

    Options: ``from_logits`` (True: predictions are model outputs), ``sal_double_sigmoid`` (False; the
    official maxF quirk), ``edge_workers`` (2), ``edge_matcher`` ("cardinality"), ``edge_max_pending``
    (512), ``progress`` (False).
    """
    bad = sorted(set(options) - set(OPTIONS))
    if bad:
        raise ConfigError(f"unknown metric option '{bad[0]}' (valid: {', '.join(OPTIONS)})")
    info = dataset_info(dataset)
    logits = options.get("from_logits", True)
    metrics: dict[str, Metric] = {}
    for name, spec in tasks.items():
        if name in ("semseg", "human_parts"):
            classes = spec.channels or info.num_classes[name]
            metrics[name] = SegmentationMetric(name, classes, int(spec.ignore_index), names=spec.metrics)
        elif name == "sal":
            metrics[name] = SaliencyMetric(spec.metrics, from_logits=logits,
                                           double_sigmoid=options.get("sal_double_sigmoid", False))
        elif name == "normals":
            metrics[name] = NormalsMetric(spec.metrics)
        elif name == "depth":
            metrics[name] = DepthMetric(spec.metrics)
        elif name == "edge":
            metrics[name] = BoundaryMetric(
                spec.metrics, max_dist=info.edge_max_dist, relabel=dataset == "pascal-context",
                from_logits=logits, workers=options.get("edge_workers", 2),
                matcher=options.get("edge_matcher", "cardinality"), progress=options.get("progress", False),
                max_pending=options.get("edge_max_pending", 512))
        else:
            raise ConfigError(f"no metric for task '{name}'")
    return MultiTaskMetrics(metrics)


class MultiTaskMetrics:
    """The metrics of several tasks behind one ``update(preds, batch)`` / ``compute()``."""

    def __init__(self, metrics: Mapping[str, Metric]) -> None:
        self.metrics = dict(metrics)

    def __getitem__(self, task: str) -> Metric:
        return self.metrics[task]

    def __iter__(self):
        return iter(self.metrics)

    @torch.no_grad()
    def update(self, preds: Mapping[str, torch.Tensor], batch: Mapping) -> None:
        for task, metric in self.metrics.items():
            if task not in preds or task not in batch:
                where = "predictions" if task not in preds else "batch"
                raise KeyError(f"task '{task}' is missing from the {where}")
            target = batch[task]
            if task == "edge":
                valid = target != 255
                labels = batch.get("edge_labels", torch.where(valid, target, torch.zeros_like(target)))
                metric.update(preds[task], labels, valid)
            else:
                metric.update(preds[task], target)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in self.metrics.values():
            out.update(metric.compute())
        return out

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{t}.{k}": v for t, m in self.metrics.items() for k, v in m.state_tensors().items()}

    def merge(self, other: MultiTaskMetrics) -> MultiTaskMetrics:
        for task, metric in self.metrics.items():
            metric.merge(other.metrics[task])
        return self

    def all_reduce_(self, device: torch.device | str | None = None) -> None:
        """Sum every task's state over the processes of ``torch.distributed`` (no-op when single)."""
        for metric in self.metrics.values():
            all_reduce_(metric, device)


# ----------------------------------------------------------------------------------------------------------
# Saved predictions


def _crop(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Undo the centre padding of ``PadToSize`` (top/left get ``d // 2``)."""
    if size is None:
        return x
    h, w = x.shape[-2:]
    top, left = max(h - size[0], 0) // 2, max(w - size[1], 0) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def prediction_arrays(outputs: Mapping[str, torch.Tensor],
                      size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """One sample's model outputs ``{task: (C, H, W) logits}`` → the saved-prediction arrays."""
    out = {}
    for task, x in outputs.items():
        x = _crop(x.detach().float().cpu(), size)
        if task in ("semseg", "human_parts"):
            out[task] = x.argmax(0).numpy().astype(np.int16)
        elif task == "sal":
            # the official 2-class head (softmax of class 1) or a single logit
            prob = torch.softmax(x, 0)[1] if x.shape[0] == 2 else torch.sigmoid(x[0])
            out[task] = prob.numpy().astype(np.float32)
        elif task == "edge":
            out[task] = (255 / (1 + torch.exp(-x[0]))).floor().clamp(0, 255).to(torch.uint8).numpy()
        elif task == "normals":
            out[task] = x.numpy().astype(np.float32)
        elif task == "depth":
            out[task] = x[0].clamp(min=0).numpy().astype(np.float32)
        else:
            raise ConfigError(f"cannot save predictions of unknown task '{task}'")
    return out


def save_predictions(pred_dir: str | Path, outputs: Mapping[str, torch.Tensor], names: Iterable[str],
                     sizes: Iterable[tuple[int, int]] | None = None) -> None:
    """Write outputs ``{task: (B, C, H, W)}`` as ``<pred_dir>/<name>.npz``, centre-cropped to ``sizes``."""
    names = list(names)
    sizes = [None] * len(names) if sizes is None else [tuple(int(v) for v in s) for s in sizes]
    for b, (name, size) in enumerate(zip(names, sizes, strict=True)):
        arrays = prediction_arrays({t: x[b] for t, x in outputs.items()}, size)
        atomic_write(Path(pred_dir) / f"{name}.npz", lambda f, a=arrays: np.savez_compressed(f, **a))


def load_prediction(pred_dir: Path, sample_id: str, tasks: Iterable[str]) -> dict[str, np.ndarray]:
    path = Path(pred_dir) / f"{sample_id}.npz"
    if not path.is_file():
        raise DataError(f"missing prediction {path} for sample '{sample_id}'; they must cover the split")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [t for t in tasks if t not in data.files]
            if missing:
                have = ", ".join(data.files)
                raise DataError(f"prediction {path} has no '{missing[0]}' array (it has: {have})")
            return {t: data[t] for t in tasks}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read prediction {path} ({exc})") from exc


def edge_ground_truth(dataset: str, folder: Path, sample_id: str) -> np.ndarray:
    """The label map whose region borders are the boundary ground truth (``specs/ecosystem.md`` §5.1)."""
    from densemoe.data import io

    if dataset == "pascal-context":
        from densemoe.data.pascal import label_map

        return label_map(folder, sample_id)
    pattern = "edge/{id}.png" if dataset == "nyud-v2" else "instances/{id}.png"
    return io.load_png(io.sample_path(folder, pattern, sample_id)).astype(np.int64)


def _read_ids(edge_ids: str | Path | Iterable[str] | None) -> set[str] | None:
    if edge_ids is None:
        return None
    if isinstance(edge_ids, str | Path):
        path = Path(edge_ids)
        if not path.is_file():
            raise DataError(f"edge id list {path} does not exist")
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    return set(edge_ids)


def write_metrics(path: str | Path, metrics: Mapping[str, float]) -> None:
    """Write a flat metrics JSON atomically (temp file + ``os.replace``)."""
    text = json.dumps({k: float(v) for k, v in metrics.items()}, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def evaluate_predictions(pred_dir: str | Path, dataset: str, split: str, root: str | Path,
                         tasks: Iterable[str] | None = None, out_json: str | Path | None = None, *,
                         edge_ids: str | Path | Iterable[str] | None = None, workers: int = 2,
                         progress: bool = False, sal_double_sigmoid: bool = False) -> dict[str, float]:
    """Evaluate saved predictions (module docstring) on ``split`` of ``dataset`` under ``root``.

    Every sample of the split needs a prediction file. ``edge_ids`` (ids, or a file with one id per line)
    restricts the boundary evaluation to a subset: SEISM's ``test_new`` (2,498 ids) for PASCAL-Context;
    by default every sample counts. Writes ``out_json`` (flat, atomically) when given; returns the metrics.
    """
    from tqdm import tqdm

    from densemoe.data.dataset import MultiTaskDataset
    from densemoe.data.transforms import Finalize

    specs = tasks_for(dataset, list(tasks) if tasks is not None else None)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder {pred_dir} does not exist")
    ds = MultiTaskDataset(root, dataset, split, list(specs))
    ids = _read_ids(edge_ids)
    if ids is not None and not ids & set(ds.ids):
        raise DataError(f"none of the {len(ids)} edge ids is in the '{split}' split of {dataset}")
    if "edge" in specs and ids is None and dataset == "pascal-context":
        log.warning("edge: evaluating all %d images; the official odsF uses SEISM's test_new subset (2,498 "
                    "ids), pass edge_ids / --edge-ids to match it", len(ds))
    meter = build_metrics(specs, dataset, from_logits=False, sal_double_sigmoid=sal_double_sigmoid,
                          edge_workers=workers, progress=progress)
    finalize = Finalize()
    for index in tqdm(range(len(ds)), desc=f"evaluate {dataset} {split}", unit="img", disable=not progress):
        sid = ds.ids[index]
        sample = finalize(ds.raw(index))
        pred = load_prediction(pred_dir, sid, specs)
        for task, metric in meter.metrics.items():
            p = torch.from_numpy(np.asarray(pred[task]))[None]
            target = sample[task][None]
            if p.shape[-2:] != target.shape[-2:]:
                raise DataError(f"prediction {task} of '{sid}' is {tuple(p.shape[-2:])} but the sample is "
                                f"{tuple(target.shape[-2:])}; save predictions at the original image size")
            if task == "edge":
                if ids is None or sid in ids:
                    labels = torch.from_numpy(edge_ground_truth(dataset, ds.folder, sid))[None]
                    metric.update(p, labels)
            elif task == "depth":
                metric.update(p.reshape(target.shape).float(), target)
            else:
                metric.update(p if task in ("semseg", "human_parts") else p.float(), target)
    metrics = meter.compute()
    if out_json is not None:
        write_metrics(out_json, metrics)
    return metrics


# ----------------------------------------------------------------------------------------------------------
# ``densemoe evaluate``


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Evaluate saved predictions (or a checkpoint) and write the metrics JSON (the ``evaluate`` stage)."""
    if getattr(args, "checkpoint", None) or getattr(args, "experiment", None):
        if args.predictions is not None:
            raise ConfigError("pass either --predictions or --checkpoint/--experiment, not both")
        from densemoe.train.commands import cmd_evaluate_checkpoint

        cmd_evaluate_checkpoint(args)
        return
    missing = [f"--{k}" for k in ("predictions", "dataset", "out") if getattr(args, k) is None]
    if missing:
        raise ConfigError(f"densemoe evaluate needs {', '.join(missing)} (or --checkpoint/--experiment)")
    root = args.root
    if root is None:
        from densemoe.config import data_root, load_params

        root = data_root(load_params(getattr(args, "params", None)))
    metrics = evaluate_predictions(
        args.predictions, args.dataset, args.split, root, args.tasks, args.out, edge_ids=args.edge_ids,
        workers=args.workers, progress=not getattr(args, "quiet", False) and not os.environ.get("CI"),
        sal_double_sigmoid=args.sal_double_sigmoid)
    for key, value in metrics.items():
        print(f"{key:<22s} {value:.4f}")
    print(f"wrote {args.out}")


def add_evaluate_parser(subparsers,
                        parents: Iterable[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``densemoe evaluate`` on ``subparsers``.

    ``parents`` (e.g. the CLI's common options) may already supply ``--root``, ``--params`` and ``-q``.
    """
    parents = list(parents)
    parser = subparsers.add_parser(
        "evaluate", parents=parents,
        help="evaluate saved predictions or a checkpoint on a split and write one metrics JSON",
        description="Evaluate saved predictions (one <id>.npz per sample, see densemoe.metrics.evaluate), "
                    "or a checkpoint (--checkpoint CKPT, or --experiment NAME for runs/NAME/checkpoint.pt), "
                    "with the papers' protocol, including SEISM-style boundary odsF, and write one flat "
                    "metrics JSON.")
    given = {s for p in parents for a in p._actions for s in a.option_strings}
    parser.add_argument("--predictions", default=None, metavar="DIR", help="folder of <sample id>.npz files")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="synth-pascal, synth-nyud, pascal-context or nyud-v2 "
                             "(a checkpoint knows its own)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    if "--root" not in given:
        parser.add_argument("--root", default=None, metavar="DATA",
                            help="data folder (default: data.root of params.yaml)")
    if "--quiet" not in given:
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                        help="tasks to evaluate (default: all tasks of the dataset)")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="metrics JSON to write, atomically "
                             "(checkpoints: default <run>/metrics_<split>.json)")
    parser.add_argument("--edge-ids", default=None, metavar="FILE",
                        help="ids for the boundary evaluation, one per line (SEISM's test_new for PASCAL)")
    parser.add_argument("--workers", type=int, default=2, help="processes matching boundaries (default 2)")
    parser.add_argument("--sal-double-sigmoid", action="store_true",
                        help="saliency maxF with the official double-sigmoid quirk (as published numbers)")
    if "--params" not in given:
        parser.add_argument("--params", default=None,
                            help="params file (default: the repository's params.yaml)")
    from densemoe.train.commands import add_checkpoint_arguments

    add_checkpoint_arguments(parser)
    parser.set_defaults(func=cmd_evaluate)
    return parser
