import pytest
import torch

from densemoe.metrics import SaliencyMetric
from densemoe.metrics.saliency import MAXF_THRESHOLDS


def _f(p, r, b2=0.3):
    return (1 + b2) * p * r / (b2 * p + r)


def _batch(probs, gt):
    pred = torch.tensor(probs, dtype=torch.float32).view(1, 1, 1, -1)
    return pred, torch.tensor(gt, dtype=torch.float32).view(1, 1, -1)


def test_official_thresholds():
    assert len(MAXF_THRESHOLDS) == 19
    assert MAXF_THRESHOLDS[0].item() == pytest.approx(0.05)
    assert MAXF_THRESHOLDS[-1].item() == pytest.approx(0.95)


def test_pr_curve_by_hand():
    # p = 0.78, 0.62, 0.33, 0.02 with GT 1, 0, 1, 0, thresholded p >= t:
    # t <= 0.30: {.78, .62, .33}: P = 2/3, R = 1;  0.35..0.60: {.78, .62}: P = R = 1/2;
    # 0.65..0.75: {.78}: P = 1, R = 1/2;  t >= 0.80: nothing (F = 0)
    pred, gt = _batch([0.78, 0.62, 0.33, 0.02], [1, 0, 1, 0])
    m = SaliencyMetric(from_logits=False)
    m.update(pred, gt)
    assert m.state["true_pos"].tolist() == [2] * 6 + [1] * 9 + [0] * 4
    assert m.state["pred_pos"].tolist() == [3] * 6 + [2] * 6 + [1] * 3 + [0] * 4
    out = m.compute()
    assert out["sal/maxf"] == pytest.approx(100 * max(_f(2 / 3, 1), _f(0.5, 0.5), _f(1, 0.5)))
    assert out["sal/maxf"] == pytest.approx(81.25)
    # mIoU (p > t at linspace(0.2, 0.9, 15)): best is t <= 0.30 with IoU 2/3
    assert out["sal/miou"] == pytest.approx(200 / 3)


def test_double_sigmoid_quirk():
    # σ(p) = .686, .650, .582, .505: t <= .5 all positive (P = 1/2, R = 1); t = .55 {.686, .65, .58}
    # (P = 2/3, R = 1); t = .6, .65 {.686, .65} (P = R = 1/2); t >= .7 nothing.
    pred, gt = _batch([0.78, 0.62, 0.33, 0.02], [1, 0, 1, 0])
    m = SaliencyMetric(from_logits=False, double_sigmoid=True)
    m.update(pred, gt)
    assert m.compute()["sal/maxf"] == pytest.approx(100 * _f(2 / 3, 1))
    assert m.state["pred_pos"][MAXF_THRESHOLDS >= 0.75].sum() == 0  # σ(p) ≤ 0.731 never reaches 0.75


def test_logits_ignore_and_empty_images():
    probs = torch.tensor([0.78, 0.62, 0.33, 0.02, 0.99, 0.99])
    gt = torch.tensor([1.0, 0, 1, 0, 255, 255])
    m = SaliencyMetric()
    m.update(torch.logit(probs).view(1, 1, 1, 6), gt.view(1, 1, 6))
    assert m.compute()["sal/maxf"] == pytest.approx(81.25, abs=1e-4)
    # a second image with no salient pixel and nothing predicted has IoU 1 at every threshold
    m.update(torch.full((1, 1, 1, 3), -9.0), torch.zeros(1, 1, 3))
    assert m.compute()["sal/miou"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    m.update(torch.zeros(1, 1, 1, 2), torch.full((1, 1, 2), 255.0))  # fully ignored: skipped
    assert int(m.state["images"]) == 2


def test_two_halves_merged_equal_one_pass():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 1, 6, 6, generator=g)
    gt = (torch.rand(5, 6, 6, generator=g) > 0.5).float()
    gt[:, 0] = 255
    whole, a, b = SaliencyMetric(), SaliencyMetric(), SaliencyMetric()
    whole.update(logits, gt)
    a.update(logits[:3], gt[:3])
    b.update(logits[3:], gt[3:])
    assert a.merge(b).compute() == pytest.approx(whole.compute())


def test_two_class_head_uses_softmax_of_class_one():
    probs = torch.tensor([0.78, 0.62, 0.33, 0.02])
    logits = torch.stack([torch.zeros(4), torch.logit(probs)]).view(1, 2, 1, 4)  # softmax[1] = σ(l1 − l0)
    m = SaliencyMetric()
    m.update(logits, torch.tensor([1.0, 0, 1, 0]).view(1, 1, 4))
    assert m.compute()["sal/maxf"] == pytest.approx(81.25, abs=1e-4)
