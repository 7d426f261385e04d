"""Pixel correspondence between a predicted and a ground-truth boundary map, and one image's counts.

The BSDS ``correspondPixels`` (used by SEISM through ``edgesEvalImg``) solves a min-cost assignment with
Goldberg's CSA: a predicted and a ground-truth pixel may be matched when their Euclidean distance is at
most ``r = maxDist × image diagonal``, at the cost of that distance, and a pixel left unmatched costs
``outlierCost = 100·r``. SEISM keeps only the *number* of matched pixels (``cntR`` = matched GT pixels =
``cntP`` = matched predicted pixels, with one ground truth), and that number is the size of a maximum
matching: leaving a pair unmatched costs ``2·outlierCost = 200·r`` while a match costs at most ``r``, so
the min-cost assignment can be smaller than a maximum matching only if an augmenting path runs through
≥ 200 matched pairs. Two solvers are offered:

- ``"cardinality"`` (default): the size of a maximum matching, as a unit-capacity maximum flow with
  ``scipy.sparse.csgraph.maximum_flow(method="dinic")``. (``maximum_bipartite_matching`` would be the
  obvious call, but its Hopcroft–Karp search takes exponential time on ladder-shaped graphs — scipy
  issue #26147 — which is what a predicted boundary running beside the true one produces; it took
  25 s on one 512×512 map here. ``min_weight_full_bipartite_matching`` runs the same check first.)
- ``"min_cost"``: the assignment itself, with its outlier costs, solved exactly per connected component
  with ``scipy.optimize.linear_sum_assignment`` (pair weight ``d − 2·outlierCost``, 0 for "unmatched");
  dense per component, so slow on big maps: it is the reference the tests compare ``"cardinality"`` with.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, maximum_flow

from densemoe.metrics.boundary_nms import nms_edges, thin_flat

#: The 101 "HED" thresholds of SEISM's ``parameters/HED.txt``: 0.001, 0.01, 0.02, …, 0.99, 0.999.
HED_THRESHOLDS = np.array([0.001, *(np.arange(1, 100) / 100), 0.999])
#: ``correspondPixels``' default cost of an unmatched pixel, as a multiple of the matching radius.
OUTLIER_COST = 100.0
MATCHERS = ("cardinality", "min_cost")


def match_radius(shape: tuple[int, int], max_dist: float) -> float:
    """The matching radius in pixels: ``max_dist`` × the image diagonal."""
    return float(max_dist) * float(np.hypot(*shape))


def disc_offsets(radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dr, dc, d)``: the integer pixel offsets with Euclidean length ``d ≤ radius``."""
    r = int(np.floor(radius))
    dr, dc = np.mgrid[-r : r + 1, -r : r + 1]
    d = np.hypot(dr, dc).ravel()
    keep = d <= radius
    return dr.ravel()[keep], dc.ravel()[keep], d[keep]


def candidate_pairs(pred_flat: np.ndarray, gt_flat: np.ndarray, width: int, border: int,
                    radius: float) -> csr_matrix:
    """Admissible pairs as a ``(len(pred_flat), len(gt_flat))`` CSR matrix of distance + 1.

    Pixels are flat indices into an image framed by ``border ≥ radius`` zero pixels on every side, with
    ``width`` columns including the frame. The distance is stored + 1 so that coincident pixels
    (distance 0) stay explicit entries.
    """
    shape = (len(pred_flat), len(gt_flat))
    if not len(pred_flat) or not len(gt_flat):
        return csr_matrix(shape)
    if border < radius:
        raise ValueError(f"the frame ({border} px) must be at least the matching radius ({radius:.2f} px)")
    gt_index = np.full(int(max(pred_flat.max(), gt_flat.max())) + border * (width + 1) + 1, -1, np.int64)
    gt_index[gt_flat] = np.arange(len(gt_flat))
    rows, cols, dist = [], [], []
    for dr, dc, d in zip(*disc_offsets(radius), strict=True):
        j = gt_index[pred_flat + (dr * width + dc)]
        hit = np.flatnonzero(j >= 0)
        rows.append(hit)
        cols.append(j[hit])
        dist.append(np.full(len(hit), d + 1.0))
    return csr_matrix((np.concatenate(dist), (np.concatenate(rows), np.concatenate(cols))), shape=shape)


def max_matching_size(pairs: csr_matrix) -> int:
    """Size of a maximum matching of the bipartite graph whose biadjacency matrix is ``pairs``."""
    pairs = pairs[np.diff(pairs.indptr) > 0]  # unmatchable rows only cost time
    n1, n2 = pairs.shape
    if pairs.nnz == 0:
        return 0
    # Unit-capacity network: source 0 → rows 1..n1 → columns n1+1..n1+n2 → sink n1+n2+1.
    sink = n1 + n2 + 1
    column_ends = n1 + pairs.nnz + np.arange(1, n2 + 1)  # one sink edge per column; the sink has none
    indptr = np.concatenate([[0], n1 + pairs.indptr, column_ends, column_ends[-1:]])
    indices = np.concatenate([np.arange(1, n1 + 1), pairs.indices + n1 + 1, np.full(n2, sink)])
    graph = csr_matrix((np.ones(len(indices), np.int32), indices, indptr), shape=(sink + 1, sink + 1))
    return int(maximum_flow(graph, 0, sink, method="dinic").flow_value)


def min_cost_matching_size(pairs: csr_matrix, radius: float) -> int:
    """Matches of the min-cost assignment with outlier cost ``100·radius`` (exact, dense per component)."""
    coo = pairs.tocoo()
    if coo.nnz == 0:
        return 0
    i, j, d = coo.row, coo.col, coo.data - 1.0
    n1, n2 = pairs.shape
    graph = coo_matrix((np.ones(len(i)), (i, n1 + j)), shape=(n1 + n2, n1 + n2))
    _, comp = connected_components(graph, directed=False)
    matched = 0
    for c in np.unique(comp[i]):
        sel = comp[i] == c
        ri, ci = np.unique(i[sel], return_inverse=True), np.unique(j[sel], return_inverse=True)
        weight = np.zeros((len(ri[0]), len(ci[0])))
        weight[ri[1], ci[1]] = d[sel] - 2 * OUTLIER_COST * radius  # 0 = "both left unmatched"
        r, k = linear_sum_assignment(weight)
        matched += int((weight[r, k] < 0).sum())
    return matched


def count_matches(pairs: csr_matrix, radius: float, matcher: str = "cardinality") -> int:
    """How many predicted pixels are matched to GT pixels, given the admissible pairs (distance + 1)."""
    if matcher == "cardinality":
        return max_matching_size(pairs)
    if matcher == "min_cost":
        return min_cost_matching_size(pairs, radius)
    raise ValueError(f"unknown matcher '{matcher}' (valid: {', '.join(MATCHERS)})")


def image_counts(prob: np.ndarray, gt_boundary: np.ndarray, max_dist: float,
                 thresholds: np.ndarray = HED_THRESHOLDS, matcher: str = "cardinality") -> np.ndarray:
    """SEISM's per-image counts at every threshold, ``(K, 4)`` int64 columns ``cntR, sumR, cntP, sumP``.

    ``prob`` is the edge probability map in [0, 1] (float, as read from the uint8 PNG); ``gt_boundary``
    is ``seg2bmap`` of the ground-truth label map (thinned here). Steps: NMS; for each increasing ``t``:
    ``thin(E > t)`` (compared in float64, as MATLAB compares single with double), matched to the
    thinned GT within ``max_dist × diagonal``. Pixels are handled as flat indices into the image with
    a one-pixel zero border, so thinning and matching only touch foreground pixels.
    """
    prob = np.asarray(prob, dtype=np.float32)
    gt_boundary = np.asarray(gt_boundary, dtype=bool)
    if prob.ndim != 2 or prob.shape != gt_boundary.shape:
        raise ValueError(f"prediction {prob.shape} and ground truth {gt_boundary.shape} must be equal 2-D")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if len(thresholds) == 0 or np.any(np.diff(thresholds) <= 0):
        raise ValueError("thresholds must be strictly increasing")
    radius = match_radius(prob.shape, max_dist)
    border = max(1, int(np.ceil(radius)))
    width = prob.shape[1] + 2 * border

    def flat(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return (rows + border) * width + cols + border

    gt_flat = thin_flat(flat(*np.nonzero(gt_boundary)), width)
    counts = np.zeros((len(thresholds), 4), np.int64)
    counts[:, 1] = len(gt_flat)
    edges = nms_edges(prob)
    # Every binary map E > t lies inside E > min(t): find the admissible pairs once, then select rows.
    rows, cols = np.nonzero(edges.astype(np.float64) > thresholds[0])
    values = edges[rows, cols].astype(np.float64)
    support = flat(rows, cols)  # increasing
    pairs = candidate_pairs(support, gt_flat, width, border, radius)
    last_size, matched, n_pred = -1, 0, 0
    for k, t in enumerate(thresholds):
        foreground = support[values > t]
        if len(foreground) == 0:
            break  # the higher thresholds are empty too
        if len(foreground) != last_size:  # nested sets: same size means same set, same counts
            kept = thin_flat(foreground, width)
            matched = count_matches(pairs[np.searchsorted(support, kept)], radius, matcher)
            n_pred, last_size = len(kept), len(foreground)
        counts[k] = (matched, len(gt_flat), matched, n_pred)
    return counts
