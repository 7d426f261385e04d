import argparse
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from densemoe.data.dataset import MultiTaskDataset
from densemoe.data.synthetic import SYNTH_PRESETS, write_synth_dataset
from densemoe.data.transforms import Finalize
from densemoe.errors import ConfigError, DataError
from densemoe.metrics import build_metrics, evaluate_predictions
from densemoe.metrics.boundary_nms import seg2bmap
from densemoe.metrics.evaluate import (
    add_evaluate_parser,
    edge_ground_truth,
    load_prediction,
    save_predictions,
)
from densemoe.tasks import tasks_for


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name in ("synth-pascal", "synth-nyud"):
        cfg = replace(SYNTH_PRESETS[name], height=40, width=56)
        write_synth_dataset(root, name, cfg, {"test": 2}, seed=3, progress=False)
    return root


def _perfect_predictions(root, dataset, pred_dir):
    """What a perfect model would save: the ground truth in the saved-prediction format."""
    ds = MultiTaskDataset(root, dataset, "test", list(tasks_for(dataset)))
    for i, sid in enumerate(ds.ids):
        s = Finalize()(ds.raw(i))
        arrays = {}
        for task in tasks_for(dataset):
            t = s[task]
            if task in ("semseg", "human_parts"):
                arrays[task] = torch.where(t == 255, torch.zeros_like(t), t).numpy().astype(np.int16)
            elif task == "sal":
                arrays[task] = t.numpy().astype(np.float32)
            elif task == "edge":
                arrays[task] = (seg2bmap(edge_ground_truth(dataset, ds.folder, sid)) * 255).astype(np.uint8)
            else:
                arrays[task] = t.numpy()
        np.savez_compressed(pred_dir / f"{sid}.npz", **arrays)
    return ds


@pytest.mark.parametrize("dataset", ["synth-pascal", "synth-nyud"])
def test_evaluate_end_to_end_on_perfect_predictions(synth_root, tmp_path, dataset):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    ds = _perfect_predictions(synth_root, dataset, pred_dir)
    out = tmp_path / "reports" / "metrics.json"
    metrics = evaluate_predictions(pred_dir, dataset, "test", synth_root, out_json=out, workers=1)
    specs = tasks_for(dataset)
    assert list(metrics) == [f"{t}/{m}" for t, s in specs.items() for m in s.metrics]
    assert json.loads(out.read_text()) == pytest.approx(metrics)
    assert not list(out.parent.glob(".*tmp"))  # written atomically, nothing left behind
    present = {int(v) for i in range(len(ds)) for v in Finalize()(ds.raw(i))["semseg"].unique()} - {255}
    assert metrics["semseg/miou"] == pytest.approx(100 * len(present) / specs["semseg"].channels)
    assert metrics["normals/mean_err"] == pytest.approx(0.0, abs=1e-3)
    assert metrics["edge/odsf"] > 90  # not 100: SEISM's NMS zeroes the outermost pixels
    if dataset == "synth-nyud":
        assert metrics["depth/rmse"] == pytest.approx(0.0, abs=1e-6)
    else:
        assert metrics["sal/maxf"] == pytest.approx(100.0)


def test_missing_prediction_and_edge_ids(synth_root, tmp_path):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    ds = _perfect_predictions(synth_root, "synth-nyud", pred_dir)
    (pred_dir / f"{ds.ids[1]}.npz").unlink()
    with pytest.raises(DataError, match=f"missing prediction .*{ds.ids[1]}.npz"):
        evaluate_predictions(pred_dir, "synth-nyud", "test", synth_root, workers=1)
    with pytest.raises(DataError, match="none of the 1 edge ids"):
        evaluate_predictions(pred_dir, "synth-nyud", "test", synth_root, edge_ids=["nope"], workers=1)
    with pytest.raises(DataError, match="has no 'depth' array"):
        np.savez(pred_dir / f"{ds.ids[0]}.npz", semseg=np.zeros((2, 2)))
        load_prediction(pred_dir, ds.ids[0], ["semseg", "depth"])


def test_cli_parser_help_and_run(synth_root, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="densemoe")
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "--predictions" in text and "checkpoint" in text and "--edge-ids" in text
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    _perfect_predictions(synth_root, "synth-nyud", pred_dir)
    out = tmp_path / "m.json"
    args = parser.parse_args(["evaluate", "--predictions", str(pred_dir), "--dataset", "synth-nyud", "--root",
                              str(synth_root), "--tasks", "semseg", "depth", "--out", str(out), "-q",
                              "--workers", "1"])
    args.func(args)
    expected = {"semseg/miou", "depth/rmse", "depth/log_rmse", "depth/abs_rel", "depth/delta1"}
    assert set(json.loads(out.read_text())) == expected


def test_parent_parser_options_are_not_duplicated():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root")
    common.add_argument("-q", "--quiet", action="store_true")
    parser = argparse.ArgumentParser()
    add_evaluate_parser(parser.add_subparsers(), parents=[common])  # would raise on a conflict


def test_build_metrics_in_the_loop_with_padding():
    specs = tasks_for("synth-pascal")
    meter = build_metrics(specs, "synth-pascal", edge_workers=1)
    g = torch.Generator().manual_seed(0)
    b, h, w = 2, 96, 128  # matching radius 0.0075 × 160 = 1.2 px
    semseg = torch.randint(0, specs["semseg"].channels, (b, h // 16, w // 16), generator=g)
    semseg = semseg.repeat_interleave(16, 1).repeat_interleave(16, 2)
    edge = torch.from_numpy(np.stack([seg2bmap(s.numpy()) for s in semseg])).float()
    batch = {"semseg": semseg, "human_parts": torch.randint(0, 7, (b, h, w), generator=g),
             "sal": (torch.rand(b, h, w, generator=g) > 0.5).float(),
             "normals": torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1),
             "edge": edge}
    preds = {"semseg": torch.randn(b, specs["semseg"].channels, h, w, generator=g),
             "human_parts": torch.randn(b, 7, h, w, generator=g), "sal": torch.randn(b, 1, h, w, generator=g),
             "normals": torch.randn(b, 3, h, w, generator=g), "edge": (edge[:, None] * 8 - 4).clone()}
    for k in ("semseg", "human_parts", "sal", "edge"):
        batch[k][:, :2] = 255  # padding rows
    meter.update(preds, batch)
    half_a, half_b = (build_metrics(specs, "synth-pascal", edge_workers=1) for _ in range(2))
    half_a.update({k: v[:1] for k, v in preds.items()}, {k: v[:1] for k, v in batch.items()})
    half_b.update({k: v[1:] for k, v in preds.items()}, {k: v[1:] for k, v in batch.items()})
    out = meter.compute()
    assert set(out) == {f"{t}/{m}" for t, s in specs.items() for m in s.metrics}
    assert half_a.merge(half_b).compute() == pytest.approx(out)
    assert out["edge/odsf"] > 90  # the GT is seg2bmap of the edge map, half a pixel from its lines
    with pytest.raises(ConfigError, match="unknown metric option 'edge_wrokers'"):
        build_metrics(specs, "synth-pascal", edge_wrokers=1)


def test_save_predictions_crops_the_centre_padding(tmp_path):
    outputs = {"semseg": torch.randn(1, 4, 10, 12), "edge": torch.randn(1, 1, 10, 12),
               "depth": torch.rand(1, 1, 10, 12), "normals": torch.randn(1, 3, 10, 12),
               "sal": torch.randn(1, 1, 10, 12)}
    save_predictions(tmp_path, outputs, ["a"], [(7, 9)])
    got = load_prediction(tmp_path, "a", outputs)
    top, left = 3 // 2, 3 // 2
    assert got["semseg"].shape == (7, 9) and got["normals"].shape == (3, 7, 9)
    expected = outputs["semseg"][0].argmax(0)[top : top + 7, left : left + 9].numpy()
    assert np.array_equal(got["semseg"], expected)
    assert got["edge"].dtype == np.uint8
