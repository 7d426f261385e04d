"""Depth errors, pooled over every valid pixel of the dataset (``specs/mlore.md`` §4).

As MLoRE's ``DepthMeter`` (``evaluation/eval_depth.py``, from ASTMT): valid pixels are
``min_depth < gt < max_depth`` (0 and 80 m); the prediction is clamped at 0 and non-positive values
become 1e-9 (so the logarithm exists); then, summed over all valid pixels of the split,
``rmse = sqrt(Σ(p − g)² / N)`` in metres (not a mean of per-image RMSEs), ``log_rmse = sqrt(Σ(ln g −
ln p)² / N)``, ``abs_rel = Σ|p − g|/g / N`` and ``sq_rel = Σ(p − g)²/g / N``. ``delta1``/``delta2``/``delta3``
(% of pixels with ``max(p/g, g/p) < 1.25^k``) are the usual extra accuracies, not in the official meter.
Sums are float64 (float32 tensors and Python floats in the original).

A pixel scored as wrong (``update(..., wrong=mask)``: a NaN/inf prediction under ``nonfinite_as_wrong``)
counts as a prediction of 0 m, i.e. the 1e-9 floor the official meter gives any non-positive prediction:
an error of the whole true depth (``abs_rel`` ≈ 1), a log error of ``ln(g / 1e-9)``, within no δ. Excluding
it would reward a model for failing; an unbounded error would let one pixel decide the whole split.
"""

from __future__ import annotations

import math

import torch

from densemoe.metrics import Metric, PredictionError

DELTAS = (1.25, 1.25**2, 1.25**3)


class DepthMetric(Metric):
    """RMSE, log-RMSE, abs-rel, sq-rel and δ accuracies of metric depth.

    ``pred`` and ``target`` are ``(B, 1, H, W)`` (or ``(B, H, W)``) in metres; ``target`` is 0 where
    invalid (and padded).
    """

    task = "depth"
    available = ("rmse", "log_rmse", "abs_rel", "sq_rel", "delta1", "delta2", "delta3")

    def __init__(self, names=None, min_depth: float = 0.0, max_depth: float = 80.0) -> None:
        self.min_depth, self.max_depth = min_depth, max_depth
        super().__init__(names)

    def reset(self) -> None:
        z = torch.zeros((), dtype=torch.float64)
        self.state = {"sq": z.clone(), "log_sq": z.clone(), "abs_rel": z.clone(), "sq_rel": z.clone(),
                      "delta": torch.zeros(len(DELTAS), dtype=torch.int64),
                      "count": torch.zeros((), dtype=torch.int64)}

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor | None = None) -> None:
        if pred.shape != target.shape:
            raise PredictionError(f"depth: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                                  "differ")
        pred = pred.detach().to("cpu", torch.float64)
        gt = target.detach().to("cpu", torch.float64)
        valid = (gt > self.min_depth) & (gt < self.max_depth)
        if wrong is not None:  # a prediction of 0 m: the floor below
            wrong = wrong.detach().to("cpu", torch.bool).reshape(pred.shape)
            pred = torch.where(wrong, torch.zeros_like(pred), pred)
        p = pred[valid]
        p = torch.where(p > 0, p, torch.full_like(p, 1e-9))
        g = gt[valid]
        s = self.state
        diff = p - g
        s["sq"] += (diff**2).sum()
        s["log_sq"] += ((torch.log(g) - torch.log(p)) ** 2).sum()
        s["abs_rel"] += (diff.abs() / g).sum()
        s["sq_rel"] += (diff**2 / g).sum()
        ratio = torch.maximum(p / g, g / p)
        for k, t in enumerate(DELTAS):
            s["delta"][k] += (ratio < t).sum()
        s["count"] += g.numel()

    def _values(self) -> dict[str, float]:
        s = self.state
        n = int(s["count"])
        if n == 0:
            return dict.fromkeys(self.available, math.nan)
        out = {"rmse": math.sqrt(s["sq"].item() / n), "log_rmse": math.sqrt(s["log_sq"].item() / n),
               "abs_rel": s["abs_rel"].item() / n, "sq_rel": s["sq_rel"].item() / n}
        for k in range(len(DELTAS)):
            out[f"delta{k + 1}"] = 100.0 * s["delta"][k].item() / n
        return out
