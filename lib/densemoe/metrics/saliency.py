"""Saliency maxF and mIoU (``specs/mlore.md`` §4; ``specs/ecosystem.md`` §6).

**maxF**, as MLoRE's ``SaliencyMeter`` (``evaluation/eval_sal.py``, from ASTMT): at each of the 19
thresholds ``torch.arange(0.05, 1, 0.05)`` a pixel is positive when ``p ≥ t``; true positives, predicted
positives and actual positives are summed over every valid pixel of the dataset; ``F_β = (1 + β²)·P·R /
(β²·P + R)`` with ``β² = 0.3`` (NaN → 0); ``maxF = 100 · max_t F_β``. Counts are int64 here (float32 in
the original, which rounds sums above 2²⁴; the difference is in the last digits at PASCAL size).

**The double-sigmoid quirk** (``double_sigmoid=True``): the official meter receives the probability
``p`` (softmax of the two-class head) and applies a sigmoid *again*, thresholding ``σ(p) ∈ [0.5, 0.731]``:
every threshold ≤ 0.5 marks all pixels, every threshold ≥ 0.75 none, and the effective cut-offs on ``p``
are 0, 0.2007, 0.4055, 0.6190 and 0.8473. The maxF numbers published by TaskPrompter and MLoRE were
produced this way; set the switch to compare with them. Off by default (the metric as defined).

**mIoU**, as MTL-PyTorch's ``SaliencyMeter`` (``evaluation/eval_sal.py``): per image, the Jaccard index of
``p > t`` against the ground truth at 15 thresholds ``linspace(0.2, 0.9, 15)`` (1 when both are empty),
averaged over images; ``mIoU = 100 · max_t`` of that mean. It ignores the double-sigmoid switch.

Pixels labelled ``ignore_index`` (255: padding) never count; an image with no valid pixel is skipped.

A pixel scored as wrong (``update(..., wrong=mask)``: a NaN/inf prediction under ``nonfinite_as_wrong``)
gets the worst prediction for it at every threshold of both numbers: a salient pixel is never positive, a
background pixel always (probability 0 and 1, set after the double-sigmoid quirk, which could not reach
them).
"""

from __future__ import annotations

import torch

from densemoe.metrics import Metric, PredictionError

#: The official maxF thresholds, exactly as ``torch.arange(0.05, 1, 0.05)`` makes them (float32).
MAXF_THRESHOLDS = torch.arange(0.05, 1, 0.05)
#: MTL-PyTorch's saliency-mIoU thresholds.
MIOU_THRESHOLDS = torch.linspace(0.2, 0.9, 15, dtype=torch.float64)
BETA_SQUARED = 0.3


class SaliencyMetric(Metric):
    """maxF (β² = 0.3) and per-image-averaged mIoU of a binary saliency map.

    ``pred`` is the official two-class head's logits ``(B, 2, H, W)`` (probability = softmax of class 1),
    or ``(B, 1, H, W)`` / ``(B, H, W)``: logits (``from_logits=True``; probability = sigmoid) or
    probabilities in [0, 1]; ``target`` is ``(B, H, W)`` in {0, 1} with ``ignore_index`` where padded.
    """

    task = "sal"
    available = ("maxf", "miou")

    def __init__(self, names=None, from_logits: bool = True, double_sigmoid: bool = False,
                 beta_squared: float = BETA_SQUARED, ignore_index: float = 255) -> None:
        self.from_logits, self.double_sigmoid = from_logits, double_sigmoid
        self.beta_squared, self.ignore_index = beta_squared, ignore_index
        super().__init__(names)

    def reset(self) -> None:
        k, j = len(MAXF_THRESHOLDS), len(MIOU_THRESHOLDS)
        self.state = {
            "true_pos": torch.zeros(k, dtype=torch.int64),
            "pred_pos": torch.zeros(k, dtype=torch.int64),
            "actual_pos": torch.zeros(k, dtype=torch.int64),
            "jaccard_sum": torch.zeros(j, dtype=torch.float64),
            "images": torch.zeros((), dtype=torch.int64),
        }

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor | None = None) -> None:
        prob = pred.detach().to("cpu", torch.float32)
        if prob.ndim == target.ndim + 1 and prob.shape[1] == 2:
            prob = torch.softmax(prob, dim=1)[:, 1]  # the official 2-class head
        elif prob.ndim == target.ndim + 1:
            prob = prob.squeeze(1)
            if self.from_logits:
                prob = torch.sigmoid(prob)
        elif self.from_logits:
            prob = torch.sigmoid(prob)
        if prob.shape != target.shape:
            raise PredictionError(f"sal: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                                  "differ")
        target = target.detach().to("cpu")
        valid = target != self.ignore_index
        gt = (target == 1) & valid
        scored = torch.sigmoid(prob) if self.double_sigmoid else prob  # the official quirk, on request
        if wrong is not None:  # the worst prediction: 0 where salient, 1 elsewhere
            wrong = wrong.detach().to("cpu", torch.bool).reshape(prob.shape)
            worst = (~gt).float()
            prob, scored = torch.where(wrong, worst, prob), torch.where(wrong, worst, scored)
        s = self.state
        for k, t in enumerate(MAXF_THRESHOLDS):
            positive = (scored >= t) & valid
            s["true_pos"][k] += (positive & gt).sum()
            s["pred_pos"][k] += positive.sum()
            s["actual_pos"][k] += gt.sum()
        for b in range(prob.shape[0]):
            v = valid[b]
            if not v.any():
                continue
            g, p = gt[b][v], prob[b][v].double()
            for k, t in enumerate(MIOU_THRESHOLDS):
                mask = p > t
                union = (mask | g).sum().item()
                s["jaccard_sum"][k] += 1.0 if union == 0 else (mask & g).sum().item() / union
            s["images"] += 1

    def _values(self) -> dict[str, float]:
        s = self.state
        tp = s["true_pos"].double()
        precision, recall = tp / s["pred_pos"], tp / s["actual_pos"]
        f = (1 + self.beta_squared) * precision * recall / (self.beta_squared * precision + recall)
        f = torch.nan_to_num(f, nan=0.0)
        images = s["images"].item()
        miou = (s["jaccard_sum"] / images).max().item() if images else 0.0
        return {"maxf": 100.0 * f.max().item(), "miou": 100.0 * miou}
