import math

import pytest
import torch

from densemoe.metrics import NormalsMetric
from densemoe.metrics.normals import angular_error


def _field(vectors) -> torch.Tensor:
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, -1)


def test_known_angles_and_scale_invariance():
    gt = _field([[0, 0, 1], [0, 0, 1], [1, 0, 0], [0, 1, 0]])
    pred = _field([[0, 0, 5], [1, 0, 1], [0, 1, 0], [0, -2, 0]])  # 0°, 45°, 90°, 180°
    assert angular_error(pred, gt).flatten().tolist() == pytest.approx([0, 45, 90, 180], abs=1e-9)
    m = NormalsMetric()
    m.update(pred, gt)
    out = m.compute()
    assert out["normals/mean_err"] == pytest.approx((0 + 45 + 90 + 180) / 4)
    assert out["normals/rmse"] == pytest.approx(math.sqrt((45**2 + 90**2 + 180**2) / 4))
    assert out["normals/11.25"] == 25.0 and out["normals/22.5"] == 25.0 and out["normals/30"] == 25.0
    assert out["normals/median_err"] == pytest.approx(45, abs=1e-3)  # the 2nd of 4 sorted values
    assert list(out) == ["normals/mean_err", "normals/median_err", "normals/rmse", "normals/11.25",
                         "normals/22.5", "normals/30"]


def test_perfect_prediction_and_invalid_pixels():
    gt = torch.nn.functional.normalize(torch.randn(2, 3, 4, 4), dim=1)
    gt[:, :, 0, :] = 0  # zero vector = invalid
    pred = gt * 3.0
    pred[:, :, 0, :] = torch.tensor([1.0, 0, 0]).view(1, 3, 1)  # would be 90° off if counted
    m = NormalsMetric(names=("mean_err",))
    m.update(pred, gt)
    assert int(m.state["count"]) == 2 * 3 * 4
    assert m.compute()["normals/mean_err"] == pytest.approx(0.0, abs=1e-4)


def test_two_halves_merged_equal_one_pass():
    g = torch.Generator().manual_seed(1)
    gt = torch.nn.functional.normalize(torch.randn(4, 3, 6, 6, generator=g), dim=1)
    pred = torch.randn(4, 3, 6, 6, generator=g)
    whole, a, b = NormalsMetric(), NormalsMetric(), NormalsMetric()
    whole.update(pred, gt)
    a.update(pred[:1], gt[:1])
    b.update(pred[1:], gt[1:])
    merged = a.merge(b).compute()
    assert merged == pytest.approx(whole.compute())
    errs = angular_error(pred, gt).flatten().sort().values
    assert merged["normals/median_err"] == pytest.approx(errs[(errs.numel() + 1) // 2 - 1].item(), abs=1e-3)
