import math

import pytest
import torch

from densemoe.metrics import DepthMetric


def test_known_rmse_and_relative_errors():
    gt = torch.tensor([[[[1.0, 2.0], [4.0, 0.0]]]])  # the last pixel is invalid
    pred = torch.tensor([[[[2.0, 2.0], [1.0, 9.0]]]])
    m = DepthMetric(names=DepthMetric.available)
    m.update(pred, gt)
    out = m.compute()
    assert out["depth/rmse"] == pytest.approx(math.sqrt((1 + 0 + 9) / 3))
    assert out["depth/abs_rel"] == pytest.approx((1 / 1 + 0 + 3 / 4) / 3)
    assert out["depth/sq_rel"] == pytest.approx((1 / 1 + 0 + 9 / 4) / 3)
    assert out["depth/log_rmse"] == pytest.approx(math.sqrt((math.log(2) ** 2 + math.log(4) ** 2) / 3))
    assert out["depth/delta1"] == pytest.approx(100 / 3)  # only the exact pixel is within 1.25


def test_default_keys_follow_taskspec_and_perfect_is_zero():
    gt = torch.rand(2, 1, 4, 4) * 10 + 0.5
    m = DepthMetric()
    m.update(gt.clone(), gt)
    expected = {"depth/rmse": 0.0, "depth/log_rmse": 0.0, "depth/abs_rel": 0.0, "depth/delta1": 100.0}
    assert m.compute() == expected


def test_invalid_depth_range_and_non_positive_predictions():
    gt = torch.tensor([[[[0.0, 80.0, 90.0, 2.0]]]])  # only 2 m is inside (0, 80)
    pred = torch.tensor([[[[5.0, 5.0, 5.0, -1.0]]]])  # negative → 1e-9
    m = DepthMetric(names=("rmse", "log_rmse"))
    m.update(pred, gt)
    assert int(m.state["count"]) == 1
    out = m.compute()
    assert out["depth/rmse"] == pytest.approx(2.0, rel=1e-6)
    assert out["depth/log_rmse"] == pytest.approx(abs(math.log(2) - math.log(1e-9)))


def test_pooled_over_pixels_not_averaged_over_images_and_merge():
    gt = torch.ones(2, 1, 1, 4)
    pred = gt.clone()
    pred[0, 0, 0, 0] = 3.0  # image 0: one error of 2; image 1: perfect
    whole, a, b = DepthMetric(), DepthMetric(), DepthMetric()
    whole.update(pred, gt)
    a.update(pred[:1], gt[:1])
    b.update(pred[1:], gt[1:])
    assert whole.compute()["depth/rmse"] == pytest.approx(math.sqrt(4 / 8))
    assert a.merge(b).compute() == whole.compute()
