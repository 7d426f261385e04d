"""The official losses (specs/mlore.md §2) against direct formulas on hand-made batches."""

import math

import pytest
import torch
import torch.nn.functional as F

from densemoe.errors import ConfigError
from densemoe.tasks import tasks_for
from densemoe.train.losses import (
    LOSS_WEIGHTS,
    MultiTaskLoss,
    balanced_bce,
    balanced_cross_entropy,
    cross_entropy,
    default_edge_w,
    masked_l1,
    normalized_l1,
)

g = torch.Generator().manual_seed(0)


def test_cross_entropy_ignores_255_and_averages_over_valid_pixels():
    pred = torch.randn(2, 4, 3, 5, generator=g)
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    target[0, 0] = 255
    valid = target != 255
    logp = F.log_softmax(pred, 1)
    expected = -logp.permute(0, 2, 3, 1)[valid].gather(1, target[valid][:, None]).mean()
    assert torch.allclose(cross_entropy(pred, target), expected)
    assert cross_entropy(pred, torch.full_like(target, 255)).item() == 0.0  # no person: 0, not NaN


def test_balanced_cross_entropy_weights_classes_by_the_other_class_frequency():
    pred = torch.randn(1, 2, 2, 4, generator=g)
    target = torch.tensor([[[1, 0, 0, 0], [0, 0, 255, 1]]])
    # 7 valid pixels: 2 positive, 5 negative → w_pos = 5/7, w_neg = 2/7; weighted sum / 7
    ce = F.cross_entropy(pred, torch.where(target == 255, 0, target), reduction="none")
    w = torch.where(target == 1, 5 / 7, 2 / 7) * (target != 255)
    assert torch.allclose(balanced_cross_entropy(pred, target), (ce * w).sum() / 7)


def test_normalized_l1_normalises_the_prediction_and_skips_zero_vectors():
    target = F.normalize(torch.randn(1, 3, 2, 2, generator=g), dim=1)
    target[0, :, 0, 0] = 0  # invalid
    pred = 5 * target + 0.1  # any scale
    n = F.normalize(pred, dim=1)
    expected = (n - target).abs().sum(1)[0].flatten()[1:].sum() / 3
    assert torch.allclose(normalized_l1(pred, target), expected)


def test_balanced_bce_uses_edge_w_over_non_ignored_pixels():
    z = torch.tensor([[[[2.0, -1.0, 0.5]]]])
    y = torch.tensor([[[1.0, 0.0, 255.0]]])
    w = 0.95
    expected = (-w * math.log(torch.sigmoid(torch.tensor(2.0)).item())
                - (1 - w) * math.log(1 - torch.sigmoid(torch.tensor(-1.0)).item())) / 2
    assert balanced_bce(z, y, edge_w=w).item() == pytest.approx(expected, rel=1e-6)
    assert (default_edge_w("nyud-v2"), default_edge_w("synth-pascal")) == (0.88, 0.95)


def test_masked_l1_skips_zero_depth():
    target = torch.tensor([[[[0.0, 2.0], [3.0, 0.0]]]])
    pred = torch.tensor([[[[9.0, 1.0], [3.5, 9.0]]]])
    assert masked_l1(pred, target).item() == pytest.approx(0.75)


def test_multitask_loss_weights_and_overrides():
    tasks = tasks_for("synth-nyud")
    preds = {"semseg": torch.randn(1, tasks["semseg"].channels, 4, 4, generator=g),
             "depth": torch.rand(1, 1, 4, 4, generator=g), "normals": torch.randn(1, 3, 4, 4, generator=g),
             "edge": torch.randn(1, 1, 4, 4, generator=g)}
    batch = {"semseg": torch.randint(0, 3, (1, 4, 4), generator=g),
             "depth": torch.rand(1, 1, 4, 4, generator=g),
             "normals": F.normalize(torch.randn(1, 3, 4, 4, generator=g), dim=1),
             "edge": torch.randint(0, 2, (1, 4, 4), generator=g).float()}
    crit = MultiTaskLoss(tasks, edge_w=0.88)
    total, parts = crit(preds, batch)
    assert set(parts) == set(tasks)
    assert crit.weights == {t: LOSS_WEIGHTS[t] for t in tasks}
    assert torch.allclose(total, sum(LOSS_WEIGHTS[t] * parts[t] for t in tasks))
    assert torch.allclose(parts["edge"], balanced_bce(preds["edge"], batch["edge"], 0.88))
    total2, _ = MultiTaskLoss(tasks, {"edge": 0.0}, edge_w=0.88)(preds, batch)
    assert torch.allclose(total2, total - 50.0 * parts["edge"])
    with pytest.raises(ConfigError, match="unknown task 'sal' in train.loss_weights"):
        MultiTaskLoss(tasks, {"sal": 1.0})
