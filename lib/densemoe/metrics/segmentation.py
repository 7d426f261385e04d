"""Pooled-confusion-matrix mIoU for ``semseg`` and ``human_parts`` (``specs/mlore.md`` §4).

As the official ``SemsegMeter`` / ``HumanPartsMeter`` (MLoRE ``evaluation/eval_semseg.py``, from ASTMT):
per class ``c``, TP, FP and FN are summed over every valid pixel of the dataset; ``IoU_c = TP / max(TP +
FP + FN, 1e-8)``, so a class absent from both prediction and ground truth scores 0 and still counts in
the mean; ``mIoU = 100 · mean_c IoU_c`` over all ``num_classes`` (21 PASCAL incl. background, 7 parts,
40 NYUD). Pixels whose label is ``ignore_index`` (255) never count. A label that is neither a class nor
the ignore value counts, as officially, as a false positive of the predicted class and nothing else.

A pixel scored as wrong (``update(..., wrong=mask)``: a NaN/inf prediction under ``nonfinite_as_wrong``)
counts as misclassified and never as its true class: a false negative of its label and a false positive
of no class (it predicted none), so it lowers its class's IoU and the pixel accuracy without crediting or
blaming any other class. Predicted classes must be ``0 … num_classes − 1``; anything else (say 200 with 21
classes) is a :class:`~densemoe.metrics.PredictionError` naming the value, as are float class maps.
"""

from __future__ import annotations

import torch

from densemoe.metrics import Metric, PredictionError


class SegmentationMetric(Metric):
    """mIoU from a ``(num_classes + 1) × num_classes`` confusion matrix (last row: out-of-range labels)
    and the per-label count of pixels scored as wrong (``no_prediction``, ``num_classes + 1``).

    ``pred`` is logits ``(B, C, H, W)`` (argmax taken here) or integer class indices ``(B, H, W)``;
    ``target`` is ``(B, H, W)`` integer labels with ``ignore_index`` where unlabelled.
    """

    available = ("miou", "pixel_acc")

    def __init__(self, task: str, num_classes: int, ignore_index: int = 255, names=None) -> None:
        if num_classes < 1:
            raise ValueError(f"{task}: num_classes must be positive, got {num_classes}")
        self.task, self.num_classes, self.ignore_index = task, int(num_classes), int(ignore_index)
        super().__init__(names)

    def reset(self) -> None:
        n = self.num_classes
        self.state = {"confusion": torch.zeros(n + 1, n, dtype=torch.int64),
                      "no_prediction": torch.zeros(n + 1, dtype=torch.int64)}

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor | None = None) -> None:
        n = self.num_classes
        if pred.ndim == target.ndim + 1:
            if pred.shape[1] != n:
                raise PredictionError(f"{self.task}: expected {n} channels of logits, "
                                      f"got {tuple(pred.shape)}")
            pred = pred.argmax(1)
        elif pred.is_floating_point():
            raise PredictionError(f"{self.task}: expected logits (B, {n}, H, W) or integer classes "
                                  f"(B, H, W), got {pred.dtype} of shape {tuple(pred.shape)}")
        if pred.shape != target.shape:
            raise PredictionError(f"{self.task}: prediction {tuple(pred.shape)} != target "
                                  f"{tuple(target.shape)}")
        pred, target = pred.detach().to("cpu", torch.int64), target.detach().to("cpu", torch.int64)
        valid = target != self.ignore_index
        if wrong is not None:
            wrong = wrong.detach().to("cpu", torch.bool).reshape(target.shape)
            scored_wrong = target[valid & wrong]
            valid &= ~wrong
        gt, pr = target[valid], pred[valid]
        if pr.numel() and (pr.min() < 0 or pr.max() >= n):
            value = int(pr.min()) if pr.min() < 0 else int(pr.max())
            raise PredictionError(f"{self.task}: predicted class {value} is out of range [0, {n}); "
                                  f"predictions must be class indices 0 … {n - 1}")
        gt = self._row(gt)
        self.state["confusion"] += torch.bincount(gt * n + pr, minlength=(n + 1) * n).view(n + 1, n)
        if wrong is not None:
            self.state["no_prediction"] += torch.bincount(self._row(scored_wrong), minlength=n + 1)

    def _row(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels as confusion rows: out-of-range labels → the last row."""
        n = self.num_classes
        return torch.where((labels >= 0) & (labels < n), labels, torch.full_like(labels, n))

    def per_class_iou(self) -> torch.Tensor:
        """IoU of every class in [0, 1] (float64), as the official ``jac`` list."""
        cm = self.state["confusion"].double()
        tp = cm.diagonal()
        fp = cm.sum(0) - tp  # predicted c, labelled otherwise (including out-of-range labels)
        fn = cm[: self.num_classes].sum(1) - tp + self.state["no_prediction"][: self.num_classes].double()
        return tp / torch.clamp(tp + fp + fn, min=1e-8)

    def _values(self) -> dict[str, float]:
        cm = self.state["confusion"]
        total = cm.sum().item() + self.state["no_prediction"].sum().item()
        return {
            "miou": 100.0 * self.per_class_iou().mean().item(),
            "pixel_acc": 100.0 * cm.diagonal().sum().item() / total if total else 0.0,
        }
