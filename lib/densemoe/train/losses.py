"""The official per-task losses and their weights (``specs/mlore.md`` §2, "Losses").

Each loss averages over the valid pixels of the batch, as the official ``losses/`` do:

- ``cross_entropy`` (semseg, human_parts): CE with ignore 255, summed over valid pixels / number valid.
- ``balanced_cross_entropy`` (sal, a 2-channel softmax head as the official code): per-batch class
  balance, w_pos = fraction of negatives and w_neg = fraction of positives; weighted sum / number valid.
- ``normalized_l1`` (normals): L2-normalise the prediction, L1 summed over xyz / number of valid pixels
  (valid = a non-zero label vector; our sample contract stores the official 255 as the zero vector).
- ``balanced_bce`` (edge): mean over pixels ≠ 255 of −w·y·log σ(z) − (1−w)(1−y)·log(1−σ(z)), w = ``edge_w``.
- ``masked_l1`` (depth): L1 in metres over pixels whose label is not 0.

One deliberate difference: where a batch has *no* valid pixel for a task (a PASCAL batch without any
person for ``human_parts``), the official mean is 0/0 = NaN; here it is 0, so the NaN guard of the
trainer only fires on real divergence.

Total loss: L = Σ_t λ_t L_t + the model's auxiliary losses (load balancing, already weighted by λ_lb).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from densemoe.errors import ConfigError, unknown
from densemoe.tasks import TaskSpec

#: λ_t of the official configs; PASCAL and NYUD agree on the tasks they share (spec §2 table).
LOSS_WEIGHTS: dict[str, float] = {
    "semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0, "edge": 50.0, "depth": 1.0,
}
IGNORE = 255


def default_edge_w(dataset: str) -> float:
    """``edge_w`` of the official configs: NYUD 0.88, PASCAL ViT-B/S 0.95 (ViT-L 0.925: per experiment)."""
    return 0.88 if "nyud" in dataset else 0.95


def _mean_over(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return total / count.clamp(min=1)


def cross_entropy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred (B, K, H, W) logits, target (B, H, W) long with 255 = ignore."""
    loss = F.cross_entropy(pred, target, ignore_index=IGNORE, reduction="sum")
    return _mean_over(loss, (target != IGNORE).sum())


def balanced_cross_entropy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred (B, 2, H, W) logits, target (B, H, W) in {0, 1, 255}; class weights from this batch."""
    valid = target != IGNORE
    labels = torch.where(valid, target, torch.zeros_like(target)).long()
    n_valid = valid.sum()
    n_pos = (valid & (labels == 1)).sum()
    frac_pos = n_pos.float() / n_valid.clamp(min=1)
    weight = torch.where(labels == 1, 1 - frac_pos, frac_pos) * valid  # w_pos = fraction of negatives
    ce = F.cross_entropy(pred, labels, reduction="none")  # (B, H, W)
    return _mean_over((ce * weight).sum(), n_valid)


def normalized_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred (B, 3, H, W), target (B, 3, H, W) unit vectors, the zero vector where invalid."""
    valid = (target != 0).any(dim=1, keepdim=True)  # (B, 1, H, W)
    diff = (F.normalize(pred, dim=1) - target).abs() * valid
    return _mean_over(diff.sum(), valid.sum())


def balanced_bce(pred: torch.Tensor, target: torch.Tensor, edge_w: float = 0.95) -> torch.Tensor:
    """pred (B, 1, H, W) logits, target (B, H, W) in {0, 1, 255}: the fixed-weight balanced BCE."""
    z = pred[:, 0]
    valid = target != IGNORE
    y = torch.where(valid, target, torch.zeros_like(target)).float()
    loss = -edge_w * y * F.logsigmoid(z) - (1 - edge_w) * (1 - y) * F.logsigmoid(-z)
    return _mean_over((loss * valid).sum(), valid.sum())


def masked_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred (B, 1, H, W) metres, target (B, 1, H, W) metres with 0 = invalid."""
    valid = target != 0
    return _mean_over(((pred - target).abs() * valid).sum(), valid.sum())


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": cross_entropy,
    "balanced_cross_entropy": balanced_cross_entropy,
    "normalized_l1": normalized_l1,
    "balanced_bce": balanced_bce,
    "masked_l1": masked_l1,
}


class MultiTaskLoss(nn.Module):
    """Σ_t λ_t L_t over the tasks' :class:`TaskSpec` losses; ``forward`` → (total, {task: L_t unweighted}).

    ``weights`` overrides :data:`LOSS_WEIGHTS` per task; ``edge_w`` is the boundary BCE's positive weight.
    Predictions are cast to float32, so the losses run outside autocast's reduced precision.
    """

    def __init__(self, tasks: Mapping[str, TaskSpec], weights: Mapping[str, float] | None = None,
                 edge_w: float = 0.95) -> None:
        super().__init__()
        weights = dict(weights or {})
        for task in weights:
            if task not in tasks:
                raise unknown("task", task, tasks, where=" in train.loss_weights")
        for name, spec in tasks.items():
            if spec.loss not in LOSSES:
                raise unknown("loss", spec.loss, LOSSES, where=f" of task '{name}'")
        self.tasks = dict(tasks)
        self.weights = {t: float(weights.get(t, LOSS_WEIGHTS.get(t, 1.0))) for t in tasks}
        self.edge_w = edge_w

    def forward(self, preds: Mapping[str, torch.Tensor], batch: Mapping) -> tuple[torch.Tensor,
                                                                                   dict[str, torch.Tensor]]:
        losses = {}
        for task, spec in self.tasks.items():
            if task not in preds:
                raise ConfigError(f"the model predicted no '{task}' (it gave {', '.join(preds)})")
            fn = LOSSES[spec.loss]
            kwargs = {"edge_w": self.edge_w} if spec.loss == "balanced_bce" else {}
            losses[task] = fn(preds[task].float(), batch[task], **kwargs)
        total = sum(self.weights[t] * loss for t, loss in losses.items())
        return total, losses
