"""Pixel-level steps of SEISM's boundary evaluation: prediction NMS and ground-truth boundary maps.

What SEISM (``prismformore/Boundary-Detection-Evaluation-Tools``, ``specs/ecosystem.md`` §5.1) does per
image, in order, and where each step lives here:

1. ``read_one_cont_png``: the uint8 PNG as single in [0, 1]; orientation from second derivatives of a
   triangle-smoothed (radius 4) copy, ``O = mod(atan(Oyy·sign(−Oxy) / (Oxx + 1e-5)), π)``
   (:func:`orientation`, :func:`conv_tri`, :func:`gradient2`); non-maximum suppression of the *raw*
   map with ``r = 1, s = 5, m = 1.01`` (:func:`edge_nms`); binarisation ``E > t``.
2. ``edgesEvalImg``: ``bwmorph(E1, 'thin', inf)`` and ``bwmorph(seg2bmap(G), 'thin', inf)``
   (:func:`thin`, :func:`seg2bmap`); PASCAL-Context first relabels the ``LabelMap`` into connected
   regions (:func:`relabel`).

All functions are written from the published algorithms and their documentation (convTri, gradient2,
edgesNms, seg2bmap, relabel); none is a copy of the MATLAB/C++ sources. Numerical differences from the
originals are listed in :mod:`densemoe.metrics.boundary`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as _label_regions

#: ``edgesNmsMex(E, O, r, s, m)`` as SEISM calls it: suppression radius, border width, multiplier.
NMS_RADIUS, NMS_BORDER, NMS_MULTIPLIER = 1, 5, 1.01
#: Radius of the triangle filter smoothing the copy the orientation is computed from.
ORIENTATION_SMOOTHING = 4


def conv_tri(image: np.ndarray, r: int) -> np.ndarray:
    """Triangle filter of integer radius ``r`` (Dollár's ``convTri``), symmetric padding, float32.

    The 1-D kernel is ``[1 … r, r+1, r … 1] / (r+1)²``, applied along rows and columns; ``symmetric``
    padding (the edge pixel repeated) is scipy's ``reflect`` mode.
    """
    if r <= 0:
        return image.astype(np.float32, copy=True)
    f = np.concatenate([np.arange(1, r + 1), [r + 1], np.arange(r, 0, -1)]).astype(np.float64) / (r + 1) ** 2
    out = ndimage.correlate1d(image.astype(np.float32), f, axis=0, mode="reflect")
    return ndimage.correlate1d(out, f, axis=1, mode="reflect")


def gradient2(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Gx, Gy)``: MATLAB ``gradient`` with unit spacing (central inside, one-sided at the borders).

    ``Gx`` is the derivative along columns (image x), ``Gy`` along rows; an axis of length 1 has 0.
    """
    grads = []
    for axis in (1, 0):
        if image.shape[axis] < 2:
            grads.append(np.zeros_like(image))
        else:
            grads.append(np.gradient(image, axis=axis).astype(image.dtype, copy=False))
    return grads[0], grads[1]


def orientation(edges: np.ndarray, smoothing: int = ORIENTATION_SMOOTHING) -> np.ndarray:
    """Edge orientation in [0, π) from second derivatives of a triangle-smoothed copy, float32.

    As in SEISM's reader, ``sign(−Oxy)`` is 0 on a perfectly axis-aligned ridge, giving ``O = 0``
    there (a faithful quirk: such ridges are suppressed along the wrong axis). ``0/0`` gives 0.
    """
    ox, oy = gradient2(conv_tri(edges, smoothing))
    oxx, _ = gradient2(ox)
    oxy, oyy = gradient2(oy)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = np.arctan(oyy * np.sign(-oxy) / (oxx + np.float32(1e-5)))
    return np.nan_to_num(np.mod(o, np.float32(np.pi)), nan=0.0).astype(np.float32)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``image`` at float positions (x = column, y = row), clamped to ``[0, size − 1.001]``."""
    h, w = image.shape
    x = np.clip(x, 0, np.float32(w - 1.001))
    y = np.clip(y, 0, np.float32(h - 1.001))
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    dx0, dy0 = x - x0, y - y0
    dx1, dy1 = 1 - dx0, 1 - dy0
    return (image[y0, x0] * dx1 * dy1 + image[y0, x0 + 1] * dx0 * dy1
            + image[y0 + 1, x0] * dx1 * dy0 + image[y0 + 1, x0 + 1] * dx0 * dy0)


def edge_nms(edges: np.ndarray, orient: np.ndarray, r: int = NMS_RADIUS, s: int = NMS_BORDER,
             m: float = NMS_MULTIPLIER) -> np.ndarray:
    """Non-maximum suppression along the edge normal (the algorithm of Dollár's ``edgesNms``), float32.

    A pixel with value ``e`` is zeroed if ``m·e`` is below the bilinearly interpolated map at any
    distance ``d ∈ [−r, r] \\ {0}`` along ``(cos O, sin O)``; then values within ``s`` pixels of the
    image border are scaled by their distance to it divided by ``s`` (0 on the outermost row/column).
    """
    e0 = np.ascontiguousarray(edges, dtype=np.float32)
    if e0.shape[0] < 2 or e0.shape[1] < 2:  # too small to interpolate in; the border scaling zeroes it
        return np.zeros_like(e0)
    out = e0.copy()
    ys, xs = np.nonzero(e0)
    if len(ys):
        e = e0[ys, xs] * np.float32(m)
        o = orient[ys, xs]
        cos_o, sin_o = np.cos(o), np.sin(o)
        fx, fy = xs.astype(np.float32), ys.astype(np.float32)
        keep = np.ones(len(ys), bool)
        for d in range(-r, r + 1):
            if d:
                keep &= ~(e < _bilinear(e0, fx + d * cos_o, fy + d * sin_o))
        out[ys[~keep], xs[~keep]] = 0
    h, w = out.shape
    s = min(s, w // 2, h // 2)
    for i in range(s):
        f = np.float32(i / s)
        out[:, i] *= f
        out[:, w - 1 - i] *= f
    for i in range(s):
        f = np.float32(i / s)
        out[i, :] *= f
        out[h - 1 - i, :] *= f
    return out


def nms_edges(prob: np.ndarray) -> np.ndarray:
    """SEISM's reader without the threshold: orientation from the r=4-smoothed copy, NMS on the raw map."""
    prob = np.asarray(prob, dtype=np.float32)
    return edge_nms(prob, orientation(prob))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Boundary map of a label map (BSDS ``seg2bmap``): 1 where a pixel differs from its east, south or
    south-east neighbour (the boundary sits half a pixel towards the origin); on the last row only the
    east neighbour counts, on the last column only the south one, and the last pixel is 0."""
    seg = np.asarray(seg)
    b = np.zeros(seg.shape, bool)
    if seg.ndim != 2 or min(seg.shape) == 0:
        raise ValueError(f"seg2bmap needs a 2-D label map, got shape {seg.shape}")
    c = seg[:-1, :-1]
    b[:-1, :-1] = (c != seg[:-1, 1:]) | (c != seg[1:, :-1]) | (c != seg[1:, 1:])
    b[-1, :-1] = seg[-1, :-1] != seg[-1, 1:]
    b[:-1, -1] = seg[:-1, -1] != seg[1:, -1]
    b[-1, -1] = False
    return b


def relabel(seg: np.ndarray) -> np.ndarray:
    """Give every 4-connected region of equal labels its own id (SEISM's ``relabel``), int32 from 1.

    SEISM applies it to the PASCAL-Context ``LabelMap`` before :func:`seg2bmap`; it only matters where
    two regions of one label touch diagonally, which then become a boundary.
    """
    seg = np.asarray(seg)
    background = int(seg.min()) - 1  # a value that does not occur: every pixel belongs to a region
    return _label_regions(seg.astype(np.int64), background=background, connectivity=1).astype(np.int32)


# Neighbours x1…x8 of Guo & Hall, counter-clockwise from east, as (row, column) offsets (rows go down).
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _thin_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two sub-iterations, indexed by ``Σ x_k · 2^(k−1)`` (Guo & Hall's A1).

    A pixel is deleted when (G1) its crossing number ``X_H = Σ_i [¬x_{2i−1} ∧ (x_{2i} ∨ x_{2i+1})]`` is 1,
    (G2) ``2 ≤ min(n1, n2) ≤ 3`` with ``n1 = Σ_k x_{2k−1} ∨ x_{2k}``, ``n2 = Σ_k x_{2k} ∨ x_{2k+1}``, and
    (G3) ``(x2 ∨ x3 ∨ ¬x8) ∧ x1 = 0`` in the first, ``(x6 ∨ x7 ∨ ¬x4) ∧ x5 = 0`` in the second sub-iteration.
    """
    codes = np.arange(256)
    x = [None] + [(codes >> k) & 1 for k in range(8)] + [codes & 1]  # x[1..8], x[9] = x1
    xh = sum((1 - x[2 * i - 1]) & (x[2 * i] | x[2 * i + 1]) for i in range(1, 5))
    n1 = sum(x[2 * k - 1] | x[2 * k] for k in range(1, 5))
    n2 = sum(x[2 * k] | x[2 * k + 1] for k in range(1, 5))
    g12 = (xh == 1) & (np.minimum(n1, n2) >= 2) & (np.minimum(n1, n2) <= 3)
    g3 = ((x[2] | x[3] | (1 - x[8])) & x[1]) == 0
    g3p = ((x[6] | x[7] | (1 - x[4])) & x[5]) == 0
    return g12 & g3, g12 & g3p


_THIN_LUTS = _thin_luts()


def thin_flat(pixels: np.ndarray, width: int) -> np.ndarray:
    """Thin a set of foreground pixels given as flat indices into a zero-bordered image of ``width``
    columns (every pixel has all 8 neighbours inside it); returns the remaining flat indices, sorted.

    Sub-iterations delete in parallel until a whole iteration deletes nothing. Only pixels next to a
    deletion are re-examined, which gives the same result as re-examining all of them (the tables look
    at the 3×3 neighbourhood only) at a fraction of the cost on the sparse maps NMS leaves.
    """
    pixels = np.asarray(pixels, dtype=np.int64)
    if len(pixels) == 0:
        return pixels
    image = np.zeros(int(pixels.max()) + width + 2, np.uint8)
    image[pixels] = 1
    slot = np.empty(len(image), np.int64)
    offsets = [dr * width + dc for dr, dc in _NEIGHBOURS]
    # Step k uses table k % 2. After the first two steps every pixel has been examined with both tables,
    # so step k need only re-examine the neighbours of the deletions of steps k−1 and k−2.
    gone_before = [pixels[:0], pixels[:0]]
    step = 0
    while True:
        if step < 2:
            todo = pixels[image[pixels] == 1]
        else:
            if not len(gone_before[0]) and not len(gone_before[1]):
                break
            todo = (np.concatenate(gone_before)[:, None] + np.array(offsets)).ravel()
            todo = todo[image[todo] == 1]
            order = np.arange(len(todo))
            slot[todo] = order  # de-duplicate: keep the last copy of each pixel
            todo = todo[slot[todo] == order]
        code = np.zeros(len(todo), np.uint8)
        for bit, off in enumerate(offsets):
            code |= image[todo + off] << bit
        gone = todo[_THIN_LUTS[step % 2][code]]
        image[gone] = 0
        gone_before = [gone_before[1], gone]
        step += 1
    return pixels[image[pixels] == 1]


def thin(binary: np.ndarray) -> np.ndarray:
    """Thinning to 1-px lines until nothing changes (``bwmorph(·, 'thin', inf)``), zeros outside.

    MATLAB documents ``bwmorph thin`` as Guo & Hall's two-sub-iteration algorithm as given by Lam, Lee &
    Suen (1992, p. 879); :func:`thin_flat` implements it from that description, and the tests check it
    against skimage's ``thin`` (same algorithm, same reference) on random images.
    """
    binary = np.asarray(binary, bool)
    h, w = binary.shape
    padded = np.zeros((h + 2, w + 2), bool)
    padded[1:-1, 1:-1] = binary
    keep = thin_flat(np.flatnonzero(padded), w + 2)
    out = np.zeros(padded.size, bool)
    out[keep] = True
    return out.reshape(h + 2, w + 2)[1:-1, 1:-1]
