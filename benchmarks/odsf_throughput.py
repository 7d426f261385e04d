"""Throughput of the SEISM-style boundary evaluation (odsF) on synthetic 512×512 maps.

Target (issue 4): 2,498 images (PASCAL-Context's ``test_new``) of 512×512 on 2 cores in ≤ 10 min.
The ground truth is a random Voronoi label map; the prediction looks like a trained edge detector's:
blurred true boundaries (shifted by up to 2 px, random strength), weaker blurred false boundaries, and
faint background noise, quantised to uint8 as the official PNGs. Run a subset and extrapolate:

    python benchmarks/odsf_throughput.py --images 200 --workers 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from scipy import ndimage

from densemoe.metrics.boundary import BoundaryMetric
from densemoe.metrics.boundary_nms import seg2bmap


def voronoi(rng: np.random.Generator, size: int, regions: int) -> np.ndarray:
    seeds = rng.uniform(0, size, (regions, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    return d.argmin(-1).astype(np.int32)


def synthetic_pair(seed: int, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 prediction, int32 label map)`` for one image."""
    rng = np.random.default_rng(seed)
    labels = voronoi(rng, size, int(rng.integers(8, 30)))
    true = seg2bmap(labels).astype(np.float32)
    true = np.roll(true, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    false = seg2bmap(voronoi(rng, size, int(rng.integers(4, 20)))).astype(np.float32)
    strength = ndimage.zoom(rng.uniform(0.3, 1.0, (8, 8)), size / 8, order=1)[:size, :size]
    p = 2.5 * ndimage.gaussian_filter(true, 1.2) * strength + 1.5 * ndimage.gaussian_filter(false, 1.5) * 0.3
    p += rng.uniform(0, 0.03, p.shape) ** 2 * 10
    return np.floor(np.clip(p, 0, 1) * 255).astype(np.uint8), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2498)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--target", type=int, default=2498, help="image count to extrapolate to")
    args = parser.parse_args()
    t0 = time.perf_counter()
    pairs = [synthetic_pair(i, args.size) for i in range(args.images)]
    t_data = time.perf_counter() - t0
    metric = BoundaryMetric(max_dist=0.0075, relabel=True, workers=args.workers, progress=True,
                            max_pending=None)
    t0 = time.perf_counter()
    for pred, labels in pairs:
        metric.update(torch.from_numpy(pred)[None], torch.from_numpy(labels)[None])
    t_update = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = metric.compute()
    t_eval = time.perf_counter() - t0
    total = t_update + t_eval
    per_image = total / args.images
    print(f"cpus available: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()}")
    print(f"synthetic data: {t_data:.1f} s (not counted)")
    print(f"{args.images} images of {args.size}x{args.size}, {args.workers} workers: update {t_update:.1f} s "
          f"+ evaluation {t_eval:.1f} s = {total:.1f} s ({per_image * 1000:.0f} ms/image wall)")
    print(f"extrapolated to {args.target} images: {per_image * args.target / 60:.1f} min")
    print({k: round(v, 2) for k, v in scores.items()})


if __name__ == "__main__":
    main()
