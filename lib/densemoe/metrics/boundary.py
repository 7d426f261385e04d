"""Boundary odsF / oisF / AP as SEISM computes them, in Python (``specs/ecosystem.md`` §5).

The official numbers come from MATLAB SEISM as set up by ``prismformore/Boundary-Detection-Evaluation-
Tools`` (MLoRE, TaskPrompter, InvPT). This module reproduces that pipeline on numpy/scipy:

1. the prediction is the uint8 PNG the official code saves, ``floor(255·σ(logit))``, read back as
   ``v/255`` (``quantize=True``);
2. NMS with orientation from a triangle-smoothed (r = 4) copy, ``r=1, s=5, m=1.01`` on the raw map
   (:mod:`.boundary_nms`);
3. at each of the 101 HED thresholds, ``thin(E > t)`` (strict) is matched to ``thin(seg2bmap(G))``
   within ``maxDist × diagonal`` (0.0075 PASCAL-Context, 0.011 NYUD; :mod:`.boundary_match`); the
   ground truth ``G`` is a label map: PASCAL's ``LabelMap`` after ``relabel`` (``relabel=True``),
   NYUD's edge PNG (0/255) as it is, SynthScenes' instance map;
4. the counts ``cntR, sumR, cntP, sumP`` are pooled over images: odsF = best F over thresholds of the
   pooled counts (``gather_measure`` + ``general_ods``), oisF = F of the counts pooled at each
   image's best threshold (``general_ois``), AP = ``general_ap`` (precision interpolated at recall
   0, 0.01, …, 1 within the observed recall range, summed / 100; 0 when every threshold has the same
   recall, e.g. for a binary prediction, perfect or not); all reported ×100. The special
   cases follow SEISM: no GT pixel → P = 0, R = 1; no predicted pixel → P = 1, R = 0.

A pixel scored as wrong (``update(..., wrong=mask)``: a NaN/inf prediction under ``nonfinite_as_wrong``)
gets the worst value for it: 0 (a miss at every threshold) on a true boundary pixel, the maximum (a
detection at every threshold) elsewhere; NMS and matching then treat it as any prediction (so a false
detection within the matching radius of a true boundary can still be matched, as it would be from a model).

Where this departs from SEISM, and why:

- **Matching.** SEISM's ``correspondPixels`` solves a min-cost assignment with CSA on a sparse graph whose
  outlier edges are drawn at random. Here the number of matches is the size of a maximum matching,
  computed exactly by max-flow (``"cardinality"``, default); the min-cost assignment with the same
  outlier cost (``"min_cost"``, exact, slow) gives the same count unless an augmenting path crosses
  ≥ 200 matched pairs (see :mod:`.boundary_match`). CSA's random sparse outlier graph can differ from
  both by a few pixels per image (pyEdgeEval's authors report ~0.01 % differences from it).
- **Thinning** is our implementation of the algorithm MATLAB documents for ``bwmorph thin`` (Guo & Hall as
  in Lam et al. 1992); it equals skimage's ``thin`` on every random image tested, but was not compared
  with MATLAB's binary (no MATLAB here).
- **Floating point.** convTri, gradients, atan/cos/sin and the bilinear interpolation run in float32
  numpy/scipy, not SSE/libm single precision: an NMS decision can flip where ``1.01·e`` equals its
  neighbour to the last bit. Thresholds compare ``E > t`` in float64, which we take to be how MATLAB
  compares a single with a double (not verified without MATLAB; it matters only where a value equals a
  threshold in single precision, e.g. 51/255 = 0.2). ``0/0`` orientations (undefined in the MEX) are 0.
  The PNG value ``floor(255/(1 + e^−x))`` is computed in CPU float32, the official one on the GPU, so a
  value can land one grey level apart.
- **Reporting.** Scores are not rounded (SEISM's script prints ``%0.3f`` of the fraction); no image is
  rotated to fit its ground truth (SEISM silently rotates a transposed prediction; here it is an error);
  one ground truth per image (SEISM accepts several; PASCAL-Context and NYUD have one); the image set is
  whatever the caller passes (SEISM's ``test_new``: 2,498 of PASCAL's 5,105 val images, all 654 of NYUD).
- **AP** interpolates at ``linspace(0, 1, 101)``, which can differ from MATLAB's ``0:.01:1`` in the last
  bit; ``unique`` keeps the first threshold of a repeated recall, as MATLAB's default does.
"""

from __future__ import annotations

import multiprocessing
import numbers
from functools import partial

import numpy as np
import torch
from tqdm import tqdm

from densemoe.errors import ConfigError
from densemoe.metrics import Metric, PredictionError
from densemoe.metrics.boundary_match import HED_THRESHOLDS, MATCHERS, image_counts
from densemoe.metrics.boundary_nms import relabel, seg2bmap


def precision_recall(cnt_r, sum_r, cnt_p, sum_p) -> tuple[np.ndarray, np.ndarray]:
    """SEISM's ``gather_measure`` rules on (pooled) counts, elementwise."""
    cnt_r, sum_r, cnt_p, sum_p = (np.asarray(a, np.float64) for a in (cnt_r, sum_r, cnt_p, sum_p))
    rec, prec = np.zeros_like(sum_r), np.zeros_like(sum_r)
    no_gt = (sum_r == 0) & (cnt_p == 0)
    rec[no_gt], prec[no_gt] = 1.0, 0.0
    no_pred = (sum_p == 0) & (cnt_r == 0)
    rec[no_pred], prec[no_pred] = 0.0, 1.0
    ok = (sum_p != 0) & (cnt_r != 0)
    rec[ok], prec[ok] = cnt_r[ok] / sum_r[ok], cnt_p[ok] / sum_p[ok]
    return prec, rec


def f_measure(prec: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """``2PR / (P + R)``, 0 where ``P + R = 0``."""
    total = prec + rec
    return np.divide(2 * prec * rec, total, out=np.zeros_like(total), where=total != 0)


def image_f(counts: np.ndarray) -> np.ndarray:
    """Per-threshold F of one image's ``(K, 4)`` counts, with ``eval_cont``'s rules (no GT → F = 0)."""
    cnt_r, sum_r, cnt_p, sum_p = counts.T.astype(np.float64)
    rec = np.where(sum_r == 0, 1.0, np.where(sum_p == 0, 0.0, cnt_r / np.maximum(sum_r, 1)))
    prec = np.where(sum_r == 0, 0.0, np.where(sum_p == 0, 1.0, cnt_p / np.maximum(sum_p, 1)))
    return f_measure(prec, rec)


def average_precision(prec: np.ndarray, rec: np.ndarray) -> float:
    """SEISM's ``general_ap``: mean of the precision interpolated at recall 0, 0.01, …, 1 (÷ 100)."""
    rec_u, first = np.unique(rec, return_index=True)
    if len(rec_u) <= 1:
        return 0.0
    grid = np.linspace(0.0, 1.0, 101)
    grid = grid[(grid >= rec_u[0]) & (grid <= rec_u[-1])]
    return float(np.interp(grid, rec_u, prec[first]).sum() / 100)


def seism_scores(counts: np.ndarray, ois_counts: np.ndarray) -> dict[str, float]:
    """odsF, oisF and AP (fractions) from pooled ``(K, 4)`` counts and the pooled best-threshold counts."""
    prec, rec = precision_recall(*counts.T)
    f = f_measure(prec, rec)
    best = int(np.argmax(f))
    o_prec, o_rec = precision_recall(*ois_counts[:, None])  # general_ois' rules give the same F
    return {"odsf": float(f[best]), "oisf": float(f_measure(o_prec, o_rec)[0]),
            "ap": average_precision(prec, rec), "ods_threshold_index": best}


def _image_job(item: tuple, max_dist: float, thresholds: np.ndarray, matcher: str) -> np.ndarray:
    pred, packed, shape = item
    gt = np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)
    prob = pred.astype(np.float32) / np.float32(255) if pred.dtype == np.uint8 else pred
    return image_counts(prob, gt, max_dist, thresholds, matcher)


class BoundaryMetric(Metric):
    """SEISM's boundary evaluation, streaming: images are kept at ``update`` and matched in a process
    pool of ``workers`` at :meth:`compute` (or every ``max_pending`` images, to bound memory).

    ``pred`` is ``(B, 1, H, W)`` or ``(B, H, W)``: logits (``from_logits=True``), probabilities in [0, 1],
    or the uint8 PNG values. ``target`` is the ground-truth **label map** ``(B, H, W)`` whose region
    borders are the true boundaries (see the module docstring for each dataset). ``valid`` (optional,
    ``(B, H, W)`` bool) marks the image inside its padding: each image is cropped to its bounding box.
    ``workers`` ≥ 1 (1: match in this process); ``max_pending`` ≥ 1 or None (keep every image).
    """

    task = "edge"
    available = ("odsf", "oisf", "ap")

    def __init__(self, names=None, max_dist: float = 0.0075, relabel: bool = False, from_logits: bool = True,
                 quantize: bool = True, thresholds=HED_THRESHOLDS, matcher: str = "cardinality",
                 workers: int = 2, progress: bool = False, max_pending: int | None = 512) -> None:
        if matcher not in MATCHERS:
            raise ValueError(f"unknown matcher '{matcher}' (valid: {', '.join(MATCHERS)})")
        if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
            raise ConfigError(f"edge: workers must be an integer >= 1 (1: match in this process), "
                              f"got {workers!r}")
        if max_pending is not None and (not isinstance(max_pending, numbers.Integral) or max_pending < 1):
            raise ConfigError(f"edge: max_pending must be an integer >= 1 or None, got {max_pending!r}")
        self.max_dist, self.relabel = max_dist, relabel
        self.from_logits, self.quantize = from_logits, quantize
        self.thresholds = np.asarray(thresholds, np.float64)
        self.matcher, self.workers, self.progress, self.max_pending = matcher, workers, progress, max_pending
        self.pending: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]] = []
        super().__init__(names)

    def reset(self) -> None:
        k = len(self.thresholds)
        self.state = {"counts": torch.zeros(k, 4, dtype=torch.int64),
                      "ois_counts": torch.zeros(4, dtype=torch.int64),
                      "images": torch.zeros((), dtype=torch.int64)}
        self.pending = []

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
               wrong: torch.Tensor | None = None) -> None:
        if pred.ndim == target.ndim + 1:
            pred = pred.squeeze(1)
        if pred.shape != target.shape:
            raise PredictionError(f"edge: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                                  "differ")
        pred = pred.detach().cpu()
        if pred.dtype == torch.uint8:  # already the PNG values
            maps = pred.numpy()
        else:
            x = pred.float()
            # the official writer: (255 / (1 + exp(−x))) in float32, truncated by astype(uint8)
            scaled = 255 / (1 + torch.exp(-x)) if self.from_logits else x * 255
            if self.quantize:
                maps = scaled.clamp(0, 255).floor().to(torch.uint8).numpy()
            else:
                maps = (scaled / 255).numpy()
        labels = target.detach().cpu().numpy()
        masks = None if valid is None else valid.detach().cpu().numpy().astype(bool)
        wrongs = None if wrong is None else wrong.detach().cpu().numpy().astype(bool).reshape(maps.shape)
        top = np.array(255 if maps.dtype == np.uint8 else 1, maps.dtype)
        for b in range(maps.shape[0]):
            p, g = maps[b], labels[b]
            w = None if wrongs is None else wrongs[b]
            if masks is not None:
                rows, cols = np.flatnonzero(masks[b].any(1)), np.flatnonzero(masks[b].any(0))
                if not len(rows):
                    continue
                box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
                p, g = p[box], g[box]
                w = None if w is None else w[box]
            bmap = seg2bmap(relabel(g) if self.relabel else g)
            if w is not None and w.any():  # the worst value: a miss on a boundary, a detection elsewhere
                p = np.where(w, np.where(bmap, np.zeros_like(top), top), p)
            self.pending.append((np.ascontiguousarray(p), np.packbits(bmap.ravel()), bmap.shape))
        if self.max_pending is not None and len(self.pending) >= self.max_pending:
            self.evaluate_pending()

    def evaluate_pending(self) -> None:
        """Match the kept images (in parallel) and add their counts to the state."""
        items, self.pending = self.pending, []
        if not items:
            return
        job = partial(_image_job, max_dist=self.max_dist, thresholds=self.thresholds, matcher=self.matcher)
        bar = tqdm(total=len(items), desc="edge odsF", unit="img", disable=not self.progress)
        s = self.state
        with bar:
            if self.workers <= 1 or len(items) == 1:
                results = map(job, items)
                pool = None
            else:
                pool = multiprocessing.Pool(min(self.workers, len(items)))
                results = pool.imap(job, items, chunksize=max(1, min(8, len(items) // (4 * self.workers))))
            try:
                for counts in results:
                    s["counts"] += torch.from_numpy(counts)
                    s["ois_counts"] += torch.from_numpy(counts[int(np.argmax(image_f(counts)))])
                    s["images"] += 1
                    bar.update()
            finally:
                if pool is not None:
                    pool.terminate()
                    pool.join()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        self.evaluate_pending()
        return self.state

    def merge(self, other: Metric) -> Metric:
        if isinstance(other, BoundaryMetric):
            other.evaluate_pending()
        return super().merge(other)

    def _values(self) -> dict[str, float]:
        self.evaluate_pending()
        scores = seism_scores(self.state["counts"].numpy(), self.state["ois_counts"].numpy())
        return {k: 100.0 * scores[k] for k in self.available}
