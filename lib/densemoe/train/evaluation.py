"""Evaluation in the loop and of a checkpoint: the papers' metrics plus the routing statistics.

Every rank runs its share of the split; the metrics' sums and the routing sums are added over the ranks
(:mod:`densemoe.train.distributed`), so rank 0 reports the whole split. Routing statistics (for the
expert-usage figures) come from ``model.routing_stats()``, ``{block: g (B, T, N)}``: per block, task and
expert, the mean routing weight over the images and how often the expert was among the top-k (g > 0).

Predictions go through :meth:`densemoe.metrics.MultiTaskMetrics.update`, so a model that outputs NaN/inf
stops the evaluation with one line naming the task and the share of such pixels (or, with
``nonfinite_as_wrong``, has them scored as wrong), here as for saved predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from densemoe.metrics import build_metrics
from densemoe.tasks import TaskSpec
from densemoe.train.checkpoint import unwrap
from densemoe.train.distributed import DistInfo, all_reduce_sum

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` ∈ none, bf16, fp16 (a null context for none)."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def to_device(batch: Mapping, device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    out = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
           for k, v in batch.items()}
    if channels_last:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


class RoutingStats:
    """Sums of the routing weights and top-k selections per block, task and expert."""

    def __init__(self) -> None:
        self.weight: dict[str, torch.Tensor] = {}
        self.selected: dict[str, torch.Tensor] = {}
        self.images = 0

    def update(self, stats: Mapping[str, torch.Tensor]) -> None:
        for name, g in stats.items():
            g = g.detach().float().cpu()  # (B, T, N)
            self.weight[name] = self.weight.get(name, 0) + g.sum(0)
            self.selected[name] = self.selected.get(name, 0) + (g > 0).float().sum(0)
        if stats:
            self.images += next(iter(stats.values())).shape[0]

    def all_reduce(self, info: DistInfo) -> None:
        for d in (self.weight, self.selected):
            for k in sorted(d):
                d[k] = all_reduce_sum(info, d[k])
        self.images = int(all_reduce_sum(info, torch.tensor(float(self.images))).item())

    def to_dict(self, tasks: list[str]) -> dict[str, Any]:
        n = max(self.images, 1)
        return {"images": self.images, "tasks": tasks, "blocks": {
            name: {"mean_weight": (self.weight[name] / n).tolist(),
                   "selected": (self.selected[name] / n).tolist()} for name in sorted(self.weight)}}


@torch.no_grad()
def evaluate(model: nn.Module, loader, tasks: Mapping[str, TaskSpec], dataset: str,
             info: DistInfo | None = None, amp: str = "none", channels_last: bool = False,
             edge_workers: int = 2, progress: bool = False, save_dir: str | Path | None = None, *,
             nonfinite_as_wrong: bool = False,
             sal_double_sigmoid: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics ``{"<task>/<metric>": v}`` and routing statistics of ``model`` over ``loader``'s split.

    Under ``torch.distributed`` every rank must call it with its shard. ``save_dir`` also writes the
    predictions in the format of :func:`densemoe.metrics.evaluate.save_predictions` (padding removed).
    NaN/inf outputs are a :class:`~densemoe.metrics.NonFinitePredictionError` unless ``nonfinite_as_wrong``
    (scored as wrong, :class:`~densemoe.metrics.MultiTaskMetrics`); ``sal_double_sigmoid`` is the official
    saliency maxF quirk.
    """
    from densemoe.metrics.evaluate import save_predictions

    info = info or DistInfo(device=next(model.parameters()).device)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    meter = build_metrics(tasks, dataset, edge_workers=edge_workers, nonfinite_as_wrong=nonfinite_as_wrong,
                          sal_double_sigmoid=sal_double_sigmoid)
    routing = RoutingStats()
    try:
        for batch in tqdm(loader, desc="evaluate", unit="batch", leave=False, disable=not progress):
            batch = to_device(batch, info.device, channels_last)
            with autocast(info.device, amp):
                preds = net(batch["image"])
            preds = {t: p.float() for t, p in preds.items()}
            meter.update(preds, batch)
            if hasattr(net, "routing_stats"):
                routing.update(net.routing_stats())
            if save_dir is not None:
                metas = batch["meta"]
                save_predictions(save_dir, preds, [m["name"] for m in metas], [m["size"] for m in metas])
    finally:
        net.train(was_training)
    if info.distributed:
        meter.all_reduce_(info.device)
        routing.all_reduce(info)
    return meter.compute(), routing.to_dict(list(tasks))
