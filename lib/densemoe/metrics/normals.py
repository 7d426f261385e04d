"""Surface-normal angular errors (``specs/mlore.md`` §4).

As MLoRE's ``NormalsMeter`` (``evaluation/eval_normals.py``, from ASTMT): the prediction and the ground
truth are L2-normalised (a zero vector stays zero), and per pixel ``angle = 2·atan2(‖p − g‖, ‖p + g‖)``
in degrees (the numerically stable form of ``acos(p·g)``); errors are pooled over every valid pixel of
the dataset. ``mean_err`` is the paper's "mErr". The other numbers follow MTL-PyTorch's ``eval_normals``:
``median_err``, ``rmse`` (of the angle), and ``11.25`` / ``22.5`` / ``30`` = % of pixels with angle < t.

Valid pixels are those whose ground truth is not the zero vector (the sample contract; the official
``AddIgnoreRegions`` turns norm-0 normals into 255, which the meter then skips) and not 255 on all
three channels. The official pipeline also quantises the prediction to the 8-bit PNG encoding and back
(``(n + 1)·255/2`` then ``2v/255 − 1``) in float; that is the identity up to float rounding and is
skipped. The median comes from a histogram of 0.001° bins (it is the centre of the bin holding the
middle value, within 0.0005° of the exact median) so that the state stays a fixed-size sum.

A pixel scored as wrong (``update(..., wrong=mask)``: a NaN/inf prediction under ``nonfinite_as_wrong``)
has the largest angular error there is, 180° (the opposite direction): within no threshold, and in the
last bin of the median's histogram.
"""

from __future__ import annotations

import math

import torch

from densemoe.metrics import Metric, PredictionError

WITHIN = (11.25, 22.5, 30.0)
BIN_DEG = 1e-3
N_BINS = round(180 / BIN_DEG)


def angular_error(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between ``(B, 3, H, W)`` vector fields after L2 normalisation, ``(B, H, W)``."""
    p = torch.nn.functional.normalize(pred.double(), dim=1)
    g = torch.nn.functional.normalize(gt.double(), dim=1)
    return torch.rad2deg(2 * torch.atan2(torch.linalg.vector_norm(p - g, dim=1),
                                         torch.linalg.vector_norm(p + g, dim=1)))


class NormalsMetric(Metric):
    """Mean / median / RMS angular error and % within 11.25°, 22.5°, 30°.

    ``pred`` is ``(B, 3, H, W)`` in any scale (normalised here); ``target`` ``(B, 3, H, W)`` unit vectors
    with the zero vector where invalid.
    """

    task = "normals"
    available = ("mean_err", "median_err", "rmse", "11.25", "22.5", "30")

    def reset(self) -> None:
        self.state = {
            "sum": torch.zeros((), dtype=torch.float64),
            "sum_sq": torch.zeros((), dtype=torch.float64),
            "count": torch.zeros((), dtype=torch.int64),
            "within": torch.zeros(len(WITHIN), dtype=torch.int64),
            "histogram": torch.zeros(N_BINS, dtype=torch.int64),
        }

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor | None = None) -> None:
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise PredictionError(f"normals: expected (B, 3, H, W) prediction and target, got "
                                  f"{tuple(pred.shape)} and {tuple(target.shape)}")
        pred, target = pred.detach().cpu(), target.detach().cpu()
        valid = (target != 0).any(1) & ~(target == 255).all(1)
        err = angular_error(pred, target)
        if wrong is not None:  # the worst error there is
            wrong = wrong.detach().to("cpu", torch.bool).reshape(err.shape)
            err = torch.where(wrong, torch.full_like(err, 180.0), err)
        err = err[valid]
        s = self.state
        s["sum"] += err.sum()
        s["sum_sq"] += (err**2).sum()
        s["count"] += err.numel()
        for k, t in enumerate(WITHIN):
            s["within"][k] += (err < t).sum()
        bins = torch.clamp((err / BIN_DEG).long(), 0, N_BINS - 1)
        s["histogram"] += torch.bincount(bins, minlength=N_BINS)

    def _median(self) -> float:
        hist = self.state["histogram"]
        n = int(hist.sum())
        if n == 0:
            return math.nan
        k = int(torch.searchsorted(hist.cumsum(0), torch.tensor((n + 1) // 2)))
        return (k + 0.5) * BIN_DEG

    def _values(self) -> dict[str, float]:
        s = self.state
        n = int(s["count"])
        if n == 0:
            return dict.fromkeys(self.available, math.nan)
        out = {"mean_err": s["sum"].item() / n, "median_err": self._median(),
               "rmse": math.sqrt(s["sum_sq"].item() / n)}
        for k, t in enumerate(WITHIN):
            out[f"{t:g}"] = 100.0 * s["within"][k].item() / n
        return out
