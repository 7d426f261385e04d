"""One meter for all tasks, saved predictions, and ``densemoe evaluate``.

**In the loop**: ``meter = build_metrics(tasks_for(dataset), dataset)``, then ``meter.update(preds,
batch)`` per batch and ``meter.compute()`` → one flat ``{"<task>/<metric>": value}``. There the edge
ground truth is ``seg2bmap`` of the batch's ``edge`` map (NYUD's official choice; an approximation for
PASCAL and SynthScenes); pass ``batch["edge_labels"]`` to use a label map instead.

**NaN/inf predictions**: :meth:`MultiTaskMetrics.update` is the one gate of every evaluation (in training,
of a checkpoint, of saved predictions). A non-finite predicted pixel is a one-line
:class:`~densemoe.metrics.NonFinitePredictionError` naming the task and the share of such pixels, never a
score; ``nonfinite_as_wrong=True`` (``densemoe evaluate --nonfinite-as-wrong``) scores those pixels as wrong
instead, as each metric's module defines it: misclassified and never the true class (``semseg``,
``human_parts``), the worst prediction at every threshold (``sal``, ``edge``), 180° (``normals``), a
prediction of 0 m (``depth``, the official floor of non-positive predictions).

**Saved predictions** (the official protocol; what :func:`evaluate_predictions` reads): one
``<pred_dir>/<sample id>.npz`` per sample, at the sample's original size ``(H, W)`` (padding removed),
one array per task: ``semseg``, ``human_parts`` ``(H, W)`` integer classes; ``sal`` ``(H, W)``
probability; ``edge`` ``(H, W)`` uint8 ``floor(255·σ(logit))`` as the official PNGs (or a probability);
``normals`` ``(3, H, W)`` (any scale); ``depth`` ``(H, W)`` metres. :func:`save_predictions` writes them
from model outputs. A file that is truncated or not an ``.npz``, an array of another shape or dtype, a
class out of range or a probability outside [0, 1] is a one-line :class:`~densemoe.errors.DataError`
naming the file. The boundary ground truth is then the dataset's label map: PASCAL-Context's
``LabelMap`` (relabelled), NYUD's ``edge/<id>.png`` read as a 0/255 label map, SynthScenes'
``instances/<id>.png`` (``specs/ecosystem.md`` §5.1).

**Metrics files** (:func:`write_metrics`) are strict JSON: a metric that is NaN (a task without one valid
ground-truth pixel in the evaluated images) or infinite is a one-line error naming the key, never a bare
``NaN`` in the file.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from densemoe.atomic import NonFiniteValueError, atomic_write, make_dirs, write_json
from densemoe.errors import ConfigError, DataError
from densemoe.metrics import Metric, NonFinitePredictionError, PredictionError, all_reduce_
from densemoe.metrics.boundary import BoundaryMetric
from densemoe.metrics.depth import DepthMetric
from densemoe.metrics.normals import NormalsMetric
from densemoe.metrics.saliency import SaliencyMetric
from densemoe.metrics.segmentation import SegmentationMetric
from densemoe.tasks import TaskSpec, dataset_info, tasks_for
from densemoe.validate import arg_int

log = logging.getLogger("densemoe")
OPTIONS = (
    "from_logits", "sal_double_sigmoid", "edge_workers", "edge_matcher", "edge_max_pending", "progress",
    "nonfinite_as_wrong",
)


def build_metrics(tasks: Mapping[str, TaskSpec], dataset: str, **options) -> MultiTaskMetrics:
    """A :class:`MultiTaskMetrics` with each task's metric set up for ``dataset``.

    Options: ``from_logits`` (True: predictions are model outputs), ``sal_double_sigmoid`` (False; the
    official maxF quirk), ``edge_workers`` (2), ``edge_matcher`` ("cardinality"), ``edge_max_pending``
    (512), ``progress`` (False), ``nonfinite_as_wrong`` (False: a NaN/inf prediction is an error; True:
    scored as wrong, see :class:`MultiTaskMetrics`).
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
    return MultiTaskMetrics(metrics, nonfinite_as_wrong=bool(options.get("nonfinite_as_wrong", False)))


def _percent(part: int, whole: int) -> str:
    """``part / whole`` in %, one decimal, never rounded to 0 or 100 when it is neither."""
    share = 100.0 * part / whole
    if 0 < share < 0.1:
        return "< 0.1"
    if part < whole and share > 99.9:
        return "> 99.9"
    return f"{share:.1f}"


class MultiTaskMetrics:
    """The metrics of several tasks behind one ``update(preds, batch)`` / ``compute()``.

    :meth:`update` checks every floating-point prediction for NaN/inf, the one place every evaluation
    path goes through. A non-finite pixel (any channel of it) is a :class:`NonFinitePredictionError`
    naming the task, the share of such pixels in the batch and the batch; with ``nonfinite_as_wrong``
    those pixels are scored as wrong instead (a warning per task says so): in ``semseg``/``human_parts``
    the pixel is misclassified, a false negative of its label and never its true class; in ``sal`` and
    ``edge`` it gets the worst prediction for it (0 on a salient or boundary pixel, the maximum
    elsewhere); in ``normals`` an angular error of 180°; in ``depth`` a prediction of 0 m, which the
    official meter floors at 1e-9 m (an error of the whole true depth, ``abs_rel`` ≈ 1).
    """

    def __init__(self, metrics: Mapping[str, Metric], nonfinite_as_wrong: bool = False) -> None:
        self.metrics = dict(metrics)
        self.nonfinite_as_wrong = nonfinite_as_wrong
        self.batches = 0
        self._warned: set[str] = set()

    def __getitem__(self, task: str) -> Metric:
        return self.metrics[task]

    def __iter__(self):
        return iter(self.metrics)

    @torch.no_grad()
    def update(self, preds: Mapping[str, torch.Tensor], batch: Mapping, tasks: Iterable[str] | None = None,
               source: str | None = None) -> None:
        """Add a batch: ``preds`` ``{task: output}`` against ``batch`` ``{task: target}``.

        ``tasks`` (default: all of the meter's) are the ones this batch updates; ``source`` names the
        input in messages (default ``batch <n>``). For ``edge``, ``batch`` may hold ``edge_labels`` (a label
        map whose region borders are the ground truth; default the edge map) and ``edge_valid`` (the image
        inside its padding; default ``edge != 255``, None: all of it).
        """
        self.batches += 1
        where = source or f"batch {self.batches}"
        for task in self.metrics if tasks is None else tasks:
            metric = self.metrics[task]
            if task not in preds or task not in batch:
                missing = "predictions" if task not in preds else "targets"
                raise PredictionError(f"task '{task}' is missing from the {missing} of {where}; the model "
                                      "or the file must predict every task that is evaluated (see --tasks)")
            pred, target = preds[task], batch[task]
            wrong = self._nonfinite(task, pred, where)
            if task == "edge":
                valid = batch["edge_valid"] if "edge_valid" in batch else target != 255
                labels = batch.get("edge_labels")
                if labels is None:
                    labels = torch.where(target != 255, target, torch.zeros_like(target))
                metric.update(pred, labels, valid, wrong=wrong)
            else:
                metric.update(pred, target, wrong=wrong)

    def _nonfinite(self, task: str, pred: torch.Tensor, where: str) -> torch.Tensor | None:
        """The ``(B, H, W)`` mask of NaN/inf pixels when there are any and they are to be scored as wrong
        (``nonfinite_as_wrong``); None when every value is finite; otherwise the one-line error."""
        if not pred.is_floating_point():
            return None
        bad = ~torch.isfinite(pred.detach())
        if not bool(bad.any()):
            return None
        if bad.ndim >= 3:  # (B, [C,] H, W): a pixel is bad when any of its channels is
            bad = bad.reshape(bad.shape[0], -1, *bad.shape[-2:]).any(1)
        count, total = int(bad.sum()), bad.numel()
        share = (f"{_percent(count, total)} % of the predicted pixels are NaN/inf ({count:,} of {total:,} in "
                 f"{where})")
        if not self.nonfinite_as_wrong:
            raise NonFinitePredictionError(
                f"{task}: {share}; the model diverged: re-train it (e.g. lower train.lr), or pass "
                "--nonfinite-as-wrong (nonfinite_as_wrong=True) to score them as wrong")
        if task not in self._warned:
            self._warned.add(task)
            log.warning("%s: %s; scoring them as wrong (nonfinite_as_wrong)", task, share)
        return bad

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


def prediction_arrays(outputs: Mapping[str, torch.Tensor], size: tuple[int, int] | None = None,
                      name: str = "") -> dict[str, np.ndarray]:
    """One sample's model outputs ``{task: (C, H, W) logits}`` → the saved-prediction arrays.

    A pixel with a NaN/inf output (any channel; only reached under ``nonfinite_as_wrong``) is saved as NaN,
    so that the file scores as the model did: float maps hold NaN there, an edge map with such pixels is
    saved as float probabilities (σ of the logit) instead of uint8, and a class map, which cannot hold
    NaN, is a :class:`~densemoe.metrics.PredictionError` naming the sample ``name``.
    """
    out = {}
    for task, x in outputs.items():
        x = _crop(x.detach().float().cpu(), size)
        bad = ~torch.isfinite(x).reshape(-1, *x.shape[-2:]).all(0)  # (H, W)
        if task in ("semseg", "human_parts"):
            if bad.any():
                raise PredictionError(
                    f"{task} of sample '{name}': {int(bad.sum()):,} pixels are NaN/inf and a saved class map "
                    "cannot hold them; evaluate without --save-predictions (they are then scored as wrong)")
            out[task] = x.argmax(0).numpy().astype(np.int16)
        elif task == "sal":
            # the official 2-class head (softmax of class 1) or a single logit
            prob = torch.softmax(x, 0)[1] if x.shape[0] == 2 else torch.sigmoid(x[0])
            out[task] = prob.masked_fill(bad, math.nan).numpy().astype(np.float32)
        elif task == "edge":
            if bad.any():
                out[task] = torch.sigmoid(x[0]).masked_fill(bad, math.nan).numpy().astype(np.float32)
            else:
                out[task] = (255 / (1 + torch.exp(-x[0]))).floor().clamp(0, 255).to(torch.uint8).numpy()
        elif task == "normals":
            out[task] = x.masked_fill(bad, math.nan).numpy().astype(np.float32)
        elif task == "depth":
            out[task] = x[0].clamp(min=0).masked_fill(bad, math.nan).numpy().astype(np.float32)
        else:
            raise ConfigError(f"cannot save predictions of unknown task '{task}'")
    return out


def save_predictions(pred_dir: str | Path, outputs: Mapping[str, torch.Tensor], names: Iterable[str],
                     sizes: Iterable[tuple[int, int]] | None = None) -> None:
    """Write outputs ``{task: (B, C, H, W)}`` as ``<pred_dir>/<name>.npz``, centre-cropped to ``sizes``."""
    names = list(names)
    sizes = [None] * len(names) if sizes is None else [tuple(int(v) for v in s) for s in sizes]
    for b, (name, size) in enumerate(zip(names, sizes, strict=True)):
        arrays = prediction_arrays({t: x[b] for t, x in outputs.items()}, size, name)
        atomic_write(Path(pred_dir) / f"{name}.npz", lambda f, a=arrays: np.savez_compressed(f, **a))


def load_prediction(pred_dir: Path, sample_id: str, tasks: Iterable[str]) -> dict[str, np.ndarray]:
    """The arrays ``tasks`` of ``<pred_dir>/<sample_id>.npz``; a missing, truncated or foreign file, or one
    without an array of ``tasks``, is a :class:`DataError` naming it."""
    path = Path(pred_dir) / f"{sample_id}.npz"
    if path.is_dir():
        raise DataError(f"prediction {path} for sample '{sample_id}' is a folder, not a file; save one "
                        "<sample id>.npz per sample")
    if not path.is_file():
        raise DataError(f"missing prediction {path} for sample '{sample_id}'; the predictions must cover the "
                        "split, one <sample id>.npz each")
    tasks = list(tasks)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise DataError(f"cannot read prediction {path}: it holds a single {type(data).__name__}, not an "
                            ".npz archive of one array per task; save it with np.savez(<id>.npz, semseg=...)")
        with data:
            missing = [t for t in tasks if t not in data.files]
            if not missing:
                return {t: data[t] for t in tasks}
            have = ", ".join(data.files) or "nothing"
    except DataError:
        raise
    except Exception as exc:  # truncated or foreign: BadZipFile, EOFError, zlib.error, ValueError, KeyError
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(f"cannot read prediction {path} ({type(exc).__name__}: {first}); it must be an "
                        "intact .npz archive of plain arrays: save it again (save_predictions)") from exc
    raise DataError(f"prediction {path} has no '{missing[0]}' array (it has: {have})")


#: The saved-prediction format of each task: (description, allowed dimensions, allowed dtype kinds).
FORMATS: dict[str, tuple[str, tuple[int, ...], str]] = {
    "semseg": ("an (H, W) integer class map", (2,), "iu"),
    "human_parts": ("an (H, W) integer class map", (2,), "iu"),
    "sal": ("an (H, W) float probability map", (2,), "f"),
    "edge": ("an (H, W) uint8 map (floor(255·σ(logit))) or float probability map", (2,), "uf"),
    "normals": ("a (3, H, W) float array", (3,), "f"),
    "depth": ("an (H, W) float depth map in metres", (2, 3), "f"),
}


def prediction_tensor(path: Path, task: str, array: np.ndarray, size: tuple[int, int],
                      num_classes: int | None = None) -> torch.Tensor:
    """One saved prediction array, checked against the format (module docstring), as a batch of one.

    A wrong dtype or shape, another spatial size than the sample's, a class outside ``[0, num_classes)``
    or a (finite) probability outside [0, 1] is a :class:`DataError` naming the file; NaN/inf values are
    left to :meth:`MultiTaskMetrics.update`, which decides on them for every evaluation path alike.
    """
    what, dims, kinds = FORMATS[task]
    a = np.asarray(array)
    fits = a.ndim in dims and a.dtype.kind in kinds and (task != "edge" or a.dtype.kind == "f"
                                                          or a.dtype == np.uint8)
    fits = fits and (task != "normals" or a.shape[0] == 3) and (task != "depth" or a.ndim == 2
                                                                   or a.shape[0] == 1)
    if not fits:
        raise DataError(f"prediction {path}: '{task}' must be {what}, got a {a.dtype} array of shape "
                        f"{a.shape}; save predictions in the format of densemoe.metrics.evaluate")
    if tuple(a.shape[-2:]) != tuple(size):
        raise DataError(f"prediction {path}: '{task}' is {a.shape[-2]}x{a.shape[-1]} but the sample is "
                        f"{size[0]}x{size[1]}; save predictions at the original image size (padding removed)")
    if a.dtype.kind in "iu":
        if a.size and num_classes is not None:
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi >= num_classes:
                value = lo if lo < 0 else hi
                raise DataError(f"prediction {path}: '{task}' holds class {value}, outside 0 … "
                                f"{num_classes - 1} ({num_classes} classes); save class indices (the argmax "
                                "of the logits)")
        return torch.from_numpy(a.astype(np.int64))[None]
    if a.dtype == np.uint8:  # edge PNG values
        return torch.from_numpy(a.copy())[None]
    t = torch.from_numpy(a.astype(np.float32))
    if task in ("sal", "edge"):
        finite = t[torch.isfinite(t)]
        if finite.numel() and (finite.min() < 0 or finite.max() > 1):
            raise DataError(f"prediction {path}: '{task}' holds values in [{float(finite.min()):.4g}, "
                            f"{float(finite.max()):.4g}], not probabilities in [0, 1]; save σ(logit) (or the "
                            "softmax), not logits")
    if task == "depth":
        return t.reshape(1, 1, *size)
    return t[None]


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
            what = ("is a folder, not a file" if path.is_dir() else "is not a regular file" if path.exists()
                    else "does not exist")
            raise DataError(f"edge id list {path} {what}; pass a text file with one sample id per line")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"edge id list {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                            "pass a text file with one sample id per line") from exc
        return {line.strip() for line in text.splitlines() if line.strip()}
    return set(edge_ids)


def prepare_output(path: str | Path, what: str = "--out") -> Path:
    """Check, before any work, that the metrics file ``path`` can be written: not a folder, and its folder
    made (a path component that is a file is :func:`~densemoe.atomic.make_dirs`' one line)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; name the JSON file to write, e.g. "
                          f"{path / 'metrics.json'}")
    make_dirs(path.parent)
    return path


def write_metrics(path: str | Path, metrics: Mapping[str, float]) -> None:
    """Write a flat metrics JSON, strict and atomically (:func:`densemoe.atomic.write_json`).

    A NaN or infinite value is a :class:`~densemoe.atomic.NonFiniteValueError` naming its key, and nothing
    is written: a metric is NaN when its task had no valid ground-truth pixel in the evaluated images (the
    error says so; evaluate without the task, or a split that labels it), infinite when its errors overflowed.
    """
    values = {k: float(v) for k, v in metrics.items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        key, value = bad[0], values[bad[0]]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        why = ("its task had no valid ground-truth pixel in the evaluated images" if math.isnan(value)
               else "its errors overflowed: the predictions are far out of range")
        task = key.split("/")[0]
        raise NonFiniteValueError(f"metric {key} is {value}{more}: {why}; {path} was not written (strict "
                                  f"JSON has no NaN/Infinity): check the split's {task} labels, or leave "
                                  f"{task} out (--tasks)")
    write_json(path, values, indent=2, sort_keys=True)


def evaluate_predictions(pred_dir: str | Path, dataset: str, split: str, root: str | Path,
                         tasks: Iterable[str] | None = None, out_json: str | Path | None = None, *,
                         edge_ids: str | Path | Iterable[str] | None = None, workers: int = 2,
                         progress: bool = False, sal_double_sigmoid: bool = False,
                         nonfinite_as_wrong: bool = False) -> dict[str, float]:
    """Evaluate saved predictions (module docstring) on ``split`` of ``dataset`` under ``root``.

    Every sample of the split needs a prediction file. ``edge_ids`` (ids, or a file with one id per line)
    restricts the boundary evaluation to a subset: SEISM's ``test_new`` (2,498 ids) for PASCAL-Context;
    by default every sample counts. NaN/inf predicted values are an error unless ``nonfinite_as_wrong``
    (:class:`MultiTaskMetrics`). Writes ``out_json`` (flat, strict, atomically) when given; returns the
    metrics.
    """
    from tqdm import tqdm

    from densemoe.data.dataset import MultiTaskDataset
    from densemoe.data.transforms import Finalize

    specs = tasks_for(dataset, list(tasks) if tasks is not None else None)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        what = "is a file, not a folder" if pred_dir.exists() else "does not exist"
        raise DataError(f"prediction folder {pred_dir} {what}; pass the folder of <sample id>.npz files")
    if out_json is not None:
        prepare_output(out_json)
    ds = MultiTaskDataset(root, dataset, split, list(specs))
    ids = _read_ids(edge_ids)
    if ids is not None and not ids & set(ds.ids):
        raise DataError(f"none of the {len(ids)} edge ids is in the '{split}' split of {dataset}")
    if "edge" in specs and ids is None and dataset == "pascal-context":
        log.warning("edge: evaluating all %d images; the official odsF uses SEISM's test_new subset (2,498 "
                    "ids), pass edge_ids / --edge-ids to match it", len(ds))
    meter = build_metrics(specs, dataset, from_logits=False, sal_double_sigmoid=sal_double_sigmoid,
                          edge_workers=workers, progress=progress, nonfinite_as_wrong=nonfinite_as_wrong)
    finalize = Finalize()
    for index in tqdm(range(len(ds)), desc=f"evaluate {dataset} {split}", unit="img", disable=not progress):
        sid = ds.ids[index]
        sample = finalize(ds.raw(index))
        path = pred_dir / f"{sid}.npz"
        arrays = load_prediction(pred_dir, sid, specs)
        scored = [t for t in specs if t != "edge" or ids is None or sid in ids]
        preds, batch = {}, {}
        for task in scored:
            target = sample[task][None]
            classes = getattr(meter[task], "num_classes", None)
            preds[task] = prediction_tensor(path, task, arrays[task], tuple(target.shape[-2:]), classes)
            if task == "edge":  # the label map's region borders, the whole image (no padding)
                labels = torch.from_numpy(edge_ground_truth(dataset, ds.folder, sid))[None]
                batch.update(edge=labels, edge_labels=labels, edge_valid=None)
            else:
                batch[task] = target
        meter.update(preds, batch, tasks=scored, source=f"prediction {path}")
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
        if args.edge_ids is not None:
            raise ConfigError("--edge-ids applies to saved predictions only: evaluate the checkpoint with "
                              "--save-predictions DIR, then run densemoe evaluate --predictions DIR "
                              f"--edge-ids {args.edge_ids}")
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
        sal_double_sigmoid=args.sal_double_sigmoid, nonfinite_as_wrong=args.nonfinite_as_wrong)
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
                        help="ids for the boundary evaluation, one per line (SEISM's test_new for PASCAL; "
                             "saved predictions only)")
    parser.add_argument("--workers", type=arg_int(ge=1), default=2,
                        help="processes matching boundaries (default 2; 1: in this process)")
    parser.add_argument("--sal-double-sigmoid", action="store_true",
                        help="saliency maxF with the official double-sigmoid quirk (as published numbers)")
    parser.add_argument("--nonfinite-as-wrong", action="store_true",
                        help="score NaN/inf predicted pixels as wrong (misclassified; the worst saliency and "
                             "boundary value; 180 degrees; 0 m) instead of stopping with an error")
    if "--params" not in given:
        parser.add_argument("--params", default=None,
                            help="params file (default: the repository's params.yaml)")
    from densemoe.train.commands import add_checkpoint_arguments

    add_checkpoint_arguments(parser)
    parser.set_defaults(func=cmd_evaluate)
    return parser
