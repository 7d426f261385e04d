import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.signal import convolve2d
from skimage.morphology import thin as skimage_thin

from densemoe.metrics import BoundaryMetric
from densemoe.metrics.boundary import average_precision, image_f, precision_recall, seism_scores
from densemoe.metrics.boundary_match import (
    HED_THRESHOLDS,
    candidate_pairs,
    image_counts,
    max_matching_size,
    min_cost_matching_size,
)
from densemoe.metrics.boundary_nms import (
    conv_tri,
    edge_nms,
    gradient2,
    nms_edges,
    orientation,
    relabel,
    seg2bmap,
    thin,
)

# --- pixel steps ---------------------------------------------------------------------------------------


def test_hed_thresholds():
    assert len(HED_THRESHOLDS) == 101
    assert HED_THRESHOLDS[:3].tolist() == [0.001, 0.01, 0.02]
    assert HED_THRESHOLDS[-2:].tolist() == [0.99, 0.999]


def test_seg2bmap_by_hand():
    seg = np.array([[1, 1, 2],
                    [1, 1, 2],
                    [3, 3, 3]])
    # interior: differs from E, S or SE; last row: E only; last column: S only; last pixel 0
    assert seg2bmap(seg).astype(int).tolist() == [[0, 1, 0],
                                                  [1, 1, 1],
                                                  [0, 0, 0]]


def test_relabel_splits_diagonal_touches_only():
    seg = np.array([[5, 0], [0, 5]])
    assert len(np.unique(relabel(seg))) == 4  # the two 5s touch diagonally: two regions
    assert seg2bmap(relabel(seg))[0, 0] and seg2bmap(seg)[0, 0]
    blob = np.array([[7, 7], [7, 2]])
    assert len(np.unique(relabel(blob))) == 2


def test_conv_tri_and_gradient_match_their_definitions():
    rng = np.random.default_rng(0)
    img = rng.random((13, 17)).astype(np.float32)
    r = 4
    f = np.array([*range(1, r + 1), r + 1, *range(r, 0, -1)], float) / (r + 1) ** 2
    padded = np.pad(img.astype(float), r, mode="symmetric")  # MATLAB padarray 'symmetric'
    expected = convolve2d(convolve2d(padded, f[None], "valid"), f[:, None], "valid")
    assert np.allclose(conv_tri(img, r), expected, atol=1e-6)
    gx, gy = gradient2(img)
    assert np.allclose(gx, np.gradient(img, axis=1)) and np.allclose(gy, np.gradient(img, axis=0))


@pytest.mark.parametrize("seed", range(6))
def test_thin_equals_skimage_thin(seed):
    rng = np.random.default_rng(seed)
    img = rng.random((31, 29)) < 0.45
    if seed % 2:
        img = ndimage.binary_dilation(img)
    assert np.array_equal(thin(img), skimage_thin(img))


def _oblique_line(h=100, w=120, slope=1.8, offset=-40.0, shift=0):
    """Label map split by x = (y - offset) / slope + shift (steep, oblique)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - shift > (yy - offset) / slope).astype(np.int32)


def test_nms_thins_a_blurred_oblique_ridge_and_keeps_binary_lines():
    line = seg2bmap(_oblique_line()).astype(np.float32)
    blurred = ndimage.gaussian_filter(line, 1.5)
    blurred /= blurred.max()
    out = nms_edges(blurred)
    rows = (out[10:-10] > 0.05).sum(1)
    assert rows.max() <= 3 and rows.min() >= 1  # a 1–2 px ridge left on every row
    kept = nms_edges(line)  # values ≤ 1 never beat 1.01·1: a binary line survives (inside the border)
    assert np.array_equal(kept[5:-5, 5:-5] > 0, line[5:-5, 5:-5] > 0)
    assert (kept[0] == 0).all() and (kept[:, -1] == 0).all()  # border suppression


def test_axis_aligned_ridge_quirk_is_faithful():
    ridge = np.zeros((40, 40), np.float32)
    ridge[18:23, :] = [[0.3], [0.7], [1.0], [0.7], [0.3]]  # horizontal ridge: sign(−Oxy) = 0 → O = 0
    assert np.allclose(orientation(ridge)[10:30, 10:30], 0)
    assert (edge_nms(ridge, orientation(ridge))[18:23, 20] > 0).all()  # suppressed along x: not thinned


# --- matching ---------------------------------------------------------------------------------------------


def test_matching_by_hand():
    # GT pixels at columns 2, 3, 4 of row 2; predictions at (2, 3) and (5, 3); radius 1.5:
    # (2,3) can match any of the three, (5,3) none (distance 3) → 1 match
    width, border = 10, 3
    flat = lambda r, c: (np.asarray(r) + border) * width + np.asarray(c) + border  # noqa: E731
    gt = flat([2, 2, 2], [2, 3, 4])
    pred = flat([2, 5], [3, 3])
    pairs = candidate_pairs(pred, gt, width, border, 1.5)
    assert pairs.toarray().tolist() == [[2.0, 1.0, 2.0], [0, 0, 0]]  # distance + 1
    assert max_matching_size(pairs) == 1 == min_cost_matching_size(pairs, 1.5)


@pytest.mark.parametrize("seed", range(4))
def test_cardinality_equals_min_cost_assignment(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (6, 6)).repeat(6, 0).repeat(6, 1)
    gt = seg2bmap(labels)
    prob = np.clip(ndimage.gaussian_filter(np.roll(gt, 1, 1).astype(np.float32), 1) * 3
                   + rng.random(gt.shape) * 0.3, 0, 1)
    thresholds = HED_THRESHOLDS[::10]
    a = image_counts(prob, gt, 0.04, thresholds, "cardinality")
    b = image_counts(prob, gt, 0.04, thresholds, "min_cost")
    assert np.array_equal(a, b) and a[:, 0].max() > 0


def test_perfect_prediction_scores_one():
    yy, xx = np.mgrid[0:64, 0:80]
    labels = (((yy - 30) / 18.0) ** 2 + ((xx - 41) / 25.0) ** 2 < 1).astype(int)  # away from the border
    counts = image_counts(seg2bmap(labels).astype(np.float32), seg2bmap(labels), 0.0075)
    assert (counts[:, 0] == counts[:, 1]).all() and (counts[:, 2] == counts[:, 3]).all()
    m = BoundaryMetric(workers=1, from_logits=False)
    m.update(torch.from_numpy(seg2bmap(labels)).float()[None], torch.from_numpy(labels)[None])
    # SEISM's general_ap needs two distinct recall values; a binary map has one, so its AP is 0
    assert m.compute() == {"edge/odsf": 100.0, "edge/oisf": 100.0, "edge/ap": 0.0}


@pytest.mark.parametrize("blur", [False, True])
def test_shifted_oblique_edge_matched_at_1px_not_3px(blur):
    gt_labels = _oblique_line()  # 100×120: PASCAL maxDist 0.0075 → 1.17 px

    def score(shift):
        pred = seg2bmap(_oblique_line(shift=shift)).astype(np.float32)
        if blur:
            pred = ndimage.gaussian_filter(pred, 1.0)
            pred = 0.9 * pred / pred.max()
        m = BoundaryMetric(workers=1, from_logits=False, max_dist=0.0075)
        m.update(torch.from_numpy(pred)[None], torch.from_numpy(gt_labels)[None])
        return m.compute()["edge/odsf"]

    assert score(0) > 97
    assert score(1) > 95
    assert score(3) < 5


# --- pooling: ODS, OIS, AP ---------------------------------------------------------------------------------


def test_seism_special_cases():
    prec, rec = precision_recall([0, 0, 3, 0], [0, 5, 5, 5], [0, 0, 3, 0], [4, 0, 6, 2])
    # no GT → P 0, R 1; no prediction → P 1, R 0; normal; predictions but none matched → 0, 0
    assert prec.tolist() == [0.0, 1.0, 0.5, 0.0] and rec.tolist() == [1.0, 0.0, 0.6, 0.0]
    assert image_f(np.array([[0, 0, 0, 4], [2, 4, 2, 2]])).tolist() == pytest.approx([0.0, 2 / 3])


def test_ods_ois_ap_by_hand():
    # Two images, three thresholds; columns cntR, sumR, cntP, sumP.
    img1 = np.array([[8, 10, 8, 16], [6, 10, 6, 8], [2, 10, 2, 2]])
    img2 = np.array([[4, 10, 4, 20], [4, 10, 4, 5], [3, 10, 3, 3]])
    pooled = img1 + img2  # R = .6, .5, .25; P = 12/36, 10/13, 5/5
    f = [2 * p * r / (p + r) for p, r in [(1 / 3, 0.6), (10 / 13, 0.5), (1.0, 0.25)]]
    ois = img1[np.argmax(image_f(img1))] + img2[np.argmax(image_f(img2))]  # both images: 2nd threshold
    scores = seism_scores(pooled, ois)
    assert scores["odsf"] == pytest.approx(max(f)) and scores["ods_threshold_index"] == 1
    assert scores["oisf"] == pytest.approx(f[1])
    # AP: precision interpolated on recall ∈ [.25, .6] at 0.25, 0.26, …, 0.60, summed / 100
    grid = np.arange(25, 61) / 100
    expected = np.interp(grid, [0.25, 0.5, 0.6], [1.0, 10 / 13, 1 / 3]).sum() / 100
    assert scores["ap"] == pytest.approx(expected)
    assert average_precision(np.array([1.0, 1.0]), np.array([0.5, 0.5])) == 0.0  # one recall value


# --- the metric ------------------------------------------------------------------------------------------


def _random_batch(seed, n=3, size=(40, 48)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, (n, size[0] // 8, size[1] // 8)).repeat(8, 1).repeat(8, 2)
    logits = np.stack([ndimage.gaussian_filter(seg2bmap(l).astype(float), 1) * 12 - 4 for l in labels])
    logits += rng.normal(0, 1, logits.shape)
    return torch.from_numpy(logits).float()[:, None], torch.from_numpy(labels)


def test_two_halves_merged_equal_one_pass_and_pool_equals_serial():
    logits, labels = _random_batch(0, n=4)
    whole = BoundaryMetric(workers=2)
    whole.update(logits, labels)
    a, b = BoundaryMetric(workers=1), BoundaryMetric(workers=1)
    a.update(logits[:1], labels[:1])
    b.update(logits[1:], labels[1:])
    assert a.merge(b).compute() == whole.compute()
    assert int(whole.state_tensors()["images"]) == 4 and not whole.pending
    whole.reset()
    assert int(whole.state["images"]) == 0


def test_valid_mask_crops_the_padding_and_quantisation():
    logits, labels = _random_batch(1, n=1)
    plain = BoundaryMetric(workers=1)
    plain.update(logits, labels)
    padded_logits = torch.nn.functional.pad(logits, (3, 5, 2, 2), value=9.0)  # strong "edges" in the padding
    padded_labels = torch.nn.functional.pad(labels, (3, 5, 2, 2), value=99)
    valid = torch.nn.functional.pad(torch.ones_like(labels, dtype=torch.bool), (3, 5, 2, 2))
    cropped = BoundaryMetric(workers=1)
    cropped.update(padded_logits, padded_labels, valid)
    # what is kept is the official PNG of the unpadded image: floor(255 / (1 + exp(−x)))
    assert np.array_equal(cropped.pending[0][0], plain_png(logits[0, 0]))
    assert cropped.compute() == plain.compute()


def plain_png(x: torch.Tensor) -> np.ndarray:
    return np.floor(255 / (1 + np.exp(-x.numpy().astype(np.float32)))).astype(np.uint8)


def test_uint8_predictions_are_read_as_png_values():
    logits, labels = _random_batch(2, n=1)
    a, b = BoundaryMetric(workers=1), BoundaryMetric(workers=1)
    a.update(logits, labels)
    b.update(torch.from_numpy(plain_png(logits[0, 0]))[None], labels)
    assert a.compute() == b.compute()

