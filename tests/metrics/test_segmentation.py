import pytest
import torch

from densemoe.errors import ConfigError
from densemoe.metrics import SegmentationMetric


def _onehot_logits(labels: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, n).permute(0, 3, 1, 2).float()


def test_hand_computed_4x4_confusion_matrix():
    # 16 pixels, 4 classes; rows = GT, cols = prediction:
    # GT 0: 3 px, predicted 0,0,1   GT 1: 5 px, predicted 1,1,1,1,2   GT 2: 4 px, predicted 2,2,0,0
    # GT 3: 4 px, predicted 3,1,2,3
    gt = [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    pr = [0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 0, 0, 3, 1, 2, 3]
    m = SegmentationMetric("semseg", 4)
    m.update(torch.tensor(pr).view(1, 4, 4), torch.tensor(gt).view(1, 4, 4))
    # TP/FP/FN per class: 0: 2/2/1, 1: 4/2/1, 2: 2/2/2, 3: 2/0/2
    iou = [2 / 5, 4 / 7, 2 / 6, 2 / 4]
    assert m.per_class_iou().tolist() == pytest.approx(iou)
    assert m.compute() == {"semseg/miou": pytest.approx(100 * sum(iou) / 4)}
    assert m.state["confusion"][:4].tolist() == [[2, 1, 0, 0], [0, 4, 1, 0], [2, 0, 2, 0], [0, 1, 1, 2]]


def test_perfect_prediction_is_100_and_logits_equal_labels():
    gt = torch.randint(0, 5, (2, 8, 8))
    gt[0, 0, :5] = torch.arange(5)  # every class occurs
    a, b = SegmentationMetric("semseg", 5), SegmentationMetric("semseg", 5)
    a.update(_onehot_logits(gt, 5), gt)
    b.update(gt.clone(), gt)
    assert a.compute() == {"semseg/miou": 100.0} == b.compute()


def test_absent_class_scores_zero_and_counts_in_the_mean():
    gt = torch.tensor([[[0, 0], [1, 1]]])
    m = SegmentationMetric("human_parts", 3)
    m.update(gt.clone(), gt)
    assert m.compute()["human_parts/miou"] == pytest.approx(200 / 3)  # classes 0, 1 perfect, 2 absent → 0


def test_ignore_value_is_never_counted():
    gt = torch.tensor([[[0, 255], [1, 255]]])
    pred = torch.tensor([[[0, 1], [1, 0]]])
    m = SegmentationMetric("semseg", 2)
    m.update(pred, gt)
    assert m.state["confusion"].sum() == 2
    assert m.compute()["semseg/miou"] == 100.0


def test_out_of_range_label_is_a_false_positive_only():
    m = SegmentationMetric("semseg", 2)
    m.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 7]]]))
    assert m.per_class_iou().tolist() == [1.0, 0.0]  # class 1: TP 0, FP 1, FN 0


def test_two_halves_merged_equal_one_pass():
    g = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 4, (6, 5, 7), generator=g)
    gt[gt == 3] = 255
    logits = torch.randn(6, 4, 5, 7, generator=g)
    whole, a, b = (SegmentationMetric("semseg", 4) for _ in range(3))
    whole.update(logits, gt)
    a.update(logits[:2], gt[:2])
    b.update(logits[2:], gt[2:])
    assert a.merge(b).compute() == whole.compute()
    assert torch.equal(a.state_tensors()["confusion"], whole.state_tensors()["confusion"])
    whole.reset()
    assert whole.state["confusion"].sum() == 0


def test_names_are_validated():
    with pytest.raises(ConfigError, match="unknown semseg metric 'iou'"):
        SegmentationMetric("semseg", 3, names=("iou",))
