"""Faults on the evaluation paths: NaN/inf predictions, strict metrics JSON, corrupt or foreign prediction
files, and arguments that the metrics cannot use. Each is one line (or an exact score), never a traceback."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from densemoe.atomic import NonFiniteValueError
from densemoe.cli import main
from densemoe.data.dataset import MultiTaskDataset
from densemoe.data.synthetic import SYNTH_PRESETS, write_synth_dataset
from densemoe.data.transforms import Finalize
from densemoe.errors import ConfigError, DataError
from densemoe.metrics import (
    BoundaryMetric,
    NonFinitePredictionError,
    PredictionError,
    SegmentationMetric,
    build_metrics,
    evaluate_predictions,
)
from densemoe.metrics.boundary_nms import seg2bmap
from densemoe.metrics.evaluate import _percent, edge_ground_truth, prediction_arrays, write_metrics
from densemoe.tasks import tasks_for

H, W = 24, 32


def _strict(text: str):
    """``json.loads`` that refuses NaN/Infinity, as jq and most other parsers do."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _one_error_line(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("densemoe: error: "), err
    return err.strip()


# ----------------------------------------------------------------------------------------------------------
# NaN/inf predictions in the meter (the one gate of every evaluation path)


def _segmentation_batch():
    gt = torch.tensor([[[0, 0], [1, 1]]])  # 4 pixels, 2 classes
    logits = torch.nn.functional.one_hot(gt, 2).permute(0, 3, 1, 2).float()
    return gt, logits


def test_nonfinite_prediction_is_one_line_naming_task_and_share():
    specs = tasks_for("synth-nyud", ["semseg"])
    gt, _ = _segmentation_batch()
    meter = build_metrics(specs, "synth-nyud")
    meter.update({"semseg": torch.zeros(1, specs["semseg"].channels, 2, 2)}, {"semseg": gt})  # batch 1: fine
    bad = torch.zeros(1, specs["semseg"].channels, 2, 2)
    bad[0, 3, 0, 0], bad[0, 0, 1, 1] = math.nan, math.inf  # one channel of a pixel is enough
    with pytest.raises(NonFinitePredictionError) as info:
        meter.update({"semseg": bad}, {"semseg": gt})
    assert str(info.value) == (
        "semseg: 50.0 % of the predicted pixels are NaN/inf (2 of 4 in batch 2); the model diverged: "
        "re-train it (e.g. lower train.lr), or pass --nonfinite-as-wrong (nonfinite_as_wrong=True) to score "
        "them as wrong")
    assert isinstance(info.value, PredictionError) and isinstance(info.value, ValueError)


def test_share_is_never_rounded_to_zero_or_all():
    assert [_percent(1, 12288), _percent(12287, 12288), _percent(12288, 12288), _percent(3, 4)] == [
        "< 0.1", "> 99.9", "100.0", "75.0"]


def test_all_nan_model_scores_zero_miou_not_a_number():
    """Before, argmax of NaN logits picked class 0 everywhere, and that scored as a prediction."""
    gt, logits = _segmentation_batch()
    meter = build_metrics({"semseg": replace(tasks_for("synth-nyud")["semseg"], channels=2)}, "synth-nyud",
                          nonfinite_as_wrong=True)
    meter.update({"semseg": torch.full_like(logits, math.nan)}, {"semseg": gt})
    assert meter.compute() == {"semseg/miou": 0.0}


def test_nan_as_wrong_segmentation_is_misclassified_never_another_class():
    gt, logits = _segmentation_batch()
    logits[0, :, 0, 0] = math.nan  # a pixel of class 0
    m = SegmentationMetric("semseg", 2, names=("miou", "pixel_acc"))
    m.update(logits, gt, wrong=~torch.isfinite(logits).all(1))
    # class 0: TP 1, FN 1 (the NaN pixel), FP 0; class 1: TP 2, and no false positive from the NaN pixel
    assert m.per_class_iou().tolist() == [0.5, 1.0]
    assert m.compute() == {"semseg/miou": 75.0, "semseg/pixel_acc": 75.0}


def _worst_equals_nan(task, dataset, pred, target, worst, batch_extra=None, at=(0, 0)):
    """Scores of NaN at pixel ``at`` of ``pred`` (as wrong), and of the explicit worst prediction there."""
    specs = tasks_for(dataset, [task])
    index = (0, slice(None), *at) if pred.ndim == 4 else (0, *at)
    nan, explicit = pred.clone(), pred.clone()
    nan[index] = math.nan
    explicit[index] = worst
    batch = {task: target, **(batch_extra or {})}
    a = build_metrics(specs, dataset, nonfinite_as_wrong=True, edge_workers=1)
    a.update({task: nan}, batch)
    b = build_metrics(specs, dataset, edge_workers=1)
    b.update({task: explicit}, batch)
    return a.compute(), b.compute()


def test_nan_as_wrong_is_the_worst_prediction_of_each_task():
    g = torch.Generator().manual_seed(0)
    # saliency: a salient pixel → logit −∞-like (never positive), at every threshold, maxF and mIoU
    sal = torch.ones(1, 4, 4)
    sal[0, 2:] = 0
    got, want = _worst_equals_nan("sal", "synth-pascal", torch.randn(1, 1, 4, 4, generator=g), sal, -100.0)
    assert got == pytest.approx(want)
    # normals: 180°
    n = torch.nn.functional.normalize(torch.randn(1, 3, 4, 4, generator=g), dim=1)
    got, want = _worst_equals_nan("normals", "synth-nyud", n.clone(), n, -n[0, :, 0, 0])
    assert got == pytest.approx(want) and got["normals/mean_err"] == pytest.approx(180 / 16)
    # depth: a prediction of 0 m (the official floor 1e-9 m)
    d = torch.rand(1, 1, 4, 4, generator=g) + 1
    got, want = _worst_equals_nan("depth", "synth-nyud", d.clone(), d, 0.0)
    assert got == want and got["depth/abs_rel"] == pytest.approx(1 / 16)
    # edge: a boundary pixel → a miss (logit −100 → PNG value 0), any other → a detection (+100 → 255)
    labels = torch.zeros(1, 16, 16, dtype=torch.int64)
    labels[0, :, 8:] = 1
    edge = torch.from_numpy(seg2bmap(labels[0].numpy())).float()[None]
    on = tuple(int(v) for v in edge[0].nonzero()[5])
    for at, worst in ((on, -100.0), ((5, 2), 100.0)):
        got, want = _worst_equals_nan("edge", "synth-nyud", edge * 8 - 4, edge, worst,
                                      {"edge_labels": labels}, at=at)
        assert got == want
        assert got["edge/odsf"] < 100


def test_nan_as_wrong_edge_off_boundary_is_a_detection():
    labels = torch.zeros(1, 16, 16, dtype=torch.int64)
    labels[0, :, 8:] = 1
    edge = torch.from_numpy(seg2bmap(labels[0].numpy())).float()[None]
    m = BoundaryMetric(workers=1, from_logits=False)
    wrong = torch.zeros(1, 16, 16, dtype=torch.bool)
    wrong[0, :, :3] = True  # far from the boundary at column 7/8: the worst is "boundary here"
    m.update(torch.zeros(1, 16, 16).masked_fill(wrong, math.nan), labels, wrong=wrong)
    pending = m.pending[0][0]
    assert pending.dtype == np.uint8 and (pending[:, :3] == 255).all()
    explicit = BoundaryMetric(workers=1, from_logits=False, quantize=True)
    explicit.update(torch.where(wrong, 1.0, 0.0), labels)
    assert np.array_equal(explicit.pending[0][0], pending)
    assert not edge[0, :, :3].any()


def test_boundary_metric_workers_must_be_at_least_one():
    with pytest.raises(ConfigError, match=r"edge: workers must be an integer >= 1 \(1: match in this "
                                          r"process\), got 0"):
        BoundaryMetric(workers=0)
    with pytest.raises(ConfigError, match="edge: max_pending must be an integer >= 1 or None, got 0"):
        BoundaryMetric(max_pending=0)


def test_segmentation_class_out_of_range_names_the_value():
    m = SegmentationMetric("semseg", 21)
    with pytest.raises(PredictionError, match=r"semseg: predicted class 200 is out of range \[0, 21\); "
                                              "predictions must be class indices 0 … 20"):
        m.update(torch.full((1, 2, 2), 200), torch.zeros(1, 2, 2, dtype=torch.int64))
    with pytest.raises(PredictionError, match="expected logits .* or integer classes"):
        m.update(torch.full((1, 2, 2), 3.7), torch.zeros(1, 2, 2, dtype=torch.int64))
    assert m.state["confusion"].sum() == 0  # nothing was counted


def test_a_task_missing_from_the_predictions_is_one_line():
    meter = build_metrics(tasks_for("synth-nyud", ["semseg", "depth"]), "synth-nyud")
    with pytest.raises(PredictionError, match="task 'depth' is missing from the predictions of batch 1"):
        meter.update({"semseg": torch.zeros(1, 2, 2, dtype=torch.int64)},
                     {"semseg": torch.zeros(1, 2, 2, dtype=torch.int64), "depth": torch.ones(1, 1, 2, 2)})


def test_saved_predictions_keep_nan_pixels_nan():
    x = {"sal": torch.randn(1, 4, 4), "normals": torch.randn(3, 4, 4), "depth": torch.rand(1, 4, 4),
         "edge": torch.randn(1, 4, 4)}
    for t in x.values():
        t[..., 1, 2] = math.inf  # σ(inf) would be a confident 1, not a NaN
    arrays = prediction_arrays(x, name="a")
    assert arrays["edge"].dtype == np.float32  # the uint8 PNG values cannot hold NaN
    for task, a in arrays.items():
        others = np.delete(a.reshape(-1, 16), 6, axis=1)  # pixel (1, 2) is flat index 6
        assert np.isnan(a[..., 1, 2]).all() and np.isfinite(others).all(), task
    logits = torch.zeros(4, 2, 2)
    logits[0, 0, 0] = math.nan
    with pytest.raises(PredictionError, match="semseg of sample 'a': 1 pixels are NaN/inf and a saved class"):
        prediction_arrays({"semseg": logits}, name="a")


# ----------------------------------------------------------------------------------------------------------
# Strict metrics JSON


def test_metrics_json_is_strict_and_a_nan_metric_is_one_line(tmp_path):
    out = tmp_path / "m.json"
    write_metrics(out, {"semseg/miou": np.float32(50.0), "depth/rmse": torch.tensor(0.25)})
    assert _strict(out.read_text()) == {"depth/rmse": 0.25, "semseg/miou": 50.0}
    with pytest.raises(NonFiniteValueError) as info:
        write_metrics(tmp_path / "nan.json", {"semseg/miou": 50.0, "normals/mean_err": math.nan,
                                              "normals/rmse": math.nan})
    assert str(info.value) == (
        f"metric normals/mean_err is nan (and 1 more): its task had no valid ground-truth pixel in the "
        f"evaluated images; {tmp_path / 'nan.json'} was not written (strict JSON has no NaN/Infinity): check "
        "the split's normals labels, or leave normals out (--tasks)")
    with pytest.raises(NonFiniteValueError, match="metric depth/rmse is inf: its errors overflowed"):
        write_metrics(tmp_path / "inf.json", {"depth/rmse": math.inf})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # nothing else, not even a temporary


def test_the_meter_of_a_split_without_valid_pixels_is_not_written(tmp_path):
    meter = build_metrics(tasks_for("synth-nyud", ["normals"]), "synth-nyud")
    meter.update({"normals": torch.randn(1, 3, 2, 2)}, {"normals": torch.zeros(1, 3, 2, 2)})  # all invalid
    metrics = meter.compute()
    assert math.isnan(metrics["normals/mean_err"])
    with pytest.raises(NonFiniteValueError, match="metric normals/mean_err is nan .and 5 more."):
        write_metrics(tmp_path / "m.json", metrics)


# ----------------------------------------------------------------------------------------------------------
# Saved predictions: corrupt files, foreign arrays


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_data")
    for name in ("synth-nyud", "synth-pascal"):
        cfg = replace(SYNTH_PRESETS[name], height=H, width=W)
        write_synth_dataset(root, name, cfg, {"test": 2}, seed=1, progress=False)
    return root


def _perfect(root, dataset, pred_dir):
    """The ground truth in the saved-prediction format; returns the sample ids."""
    pred_dir.mkdir(exist_ok=True)
    ds = MultiTaskDataset(root, dataset, "test", list(tasks_for(dataset)))
    for i, sid in enumerate(ds.ids):
        s = Finalize()(ds.raw(i))
        arrays = {}
        for task in tasks_for(dataset):
            t = s[task]
            if task in ("semseg", "human_parts"):
                arrays[task] = torch.where(t == 255, torch.zeros_like(t), t).numpy().astype(np.int16)
            elif task == "edge":
                arrays[task] = (seg2bmap(edge_ground_truth(dataset, ds.folder, sid)) * 255).astype(np.uint8)
            else:
                arrays[task] = t.numpy().astype(np.float32)
        np.savez_compressed(pred_dir / f"{sid}.npz", **arrays)
    return ds.ids


def _evaluate(capsys, data, pred_dir, *extra, dataset="synth-nyud"):
    out = pred_dir.parent / "m.json"
    return _one_error_line(capsys, ["evaluate", "--predictions", pred_dir, "--dataset", dataset, "--root",
                                    data, "--out", out, "--workers", "1", "-q", *extra])


def test_nan_in_saved_predictions_gives_the_same_line(data, tmp_path, capsys):
    pred_dir = tmp_path / "pred"
    ids = _perfect(data, "synth-nyud", pred_dir)
    path = pred_dir / f"{ids[1]}.npz"
    arrays = dict(np.load(path))
    arrays["depth"][0, :6, :] = math.nan  # 6 rows of 24
    np.savez(path, **arrays)
    line = _evaluate(capsys, data, pred_dir)
    assert line == (f"densemoe: error: depth: 25.0 % of the predicted pixels are NaN/inf (192 of 768 in "
                    f"prediction {path}); the model diverged: re-train it (e.g. lower train.lr), or pass "
                    "--nonfinite-as-wrong (nonfinite_as_wrong=True) to score them as wrong")
    assert not (tmp_path / "m.json").exists()
    # as wrong: the NaN pixels are predictions of 0 m, so depth/delta1 drops by their share of the split
    metrics = evaluate_predictions(pred_dir, "synth-nyud", "test", data, ["depth"], workers=1,
                                   nonfinite_as_wrong=True)
    ds = MultiTaskDataset(data, "synth-nyud", "test", ["depth"])
    gts = [Finalize()(ds.raw(i))["depth"] for i in range(2)]
    valid = [(g > 0) & (g < 80) for g in gts]
    lost = int(valid[1][0, :6].sum())
    assert metrics["depth/delta1"] == pytest.approx(100 * (1 - lost / sum(int(v.sum()) for v in valid)))
    assert metrics["depth/abs_rel"] == pytest.approx(lost / sum(int(v.sum()) for v in valid), rel=1e-6)


def test_corrupt_prediction_files_are_one_line_naming_the_file(data, tmp_path, capsys):
    pred_dir = tmp_path / "pred"
    ids = _perfect(data, "synth-nyud", pred_dir)
    path = pred_dir / f"{ids[0]}.npz"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated: zipfile.BadZipFile, which escaped before
    assert _evaluate(capsys, data, pred_dir) == (
        f"densemoe: error: cannot read prediction {path} (BadZipFile: File is not a zip file); it must be an "
        "intact .npz archive of plain arrays: save it again (save_predictions)")
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)  # garbage behind a zip signature
    assert f"cannot read prediction {path} (BadZipFile" in _evaluate(capsys, data, pred_dir)
    path.write_bytes(bytes(range(256)) * 8)  # garbage
    assert f"cannot read prediction {path} (ValueError: " in _evaluate(capsys, data, pred_dir)
    np.save(pred_dir / "x.npy", np.zeros(3))
    path.write_bytes((pred_dir / "x.npy").read_bytes())  # a .npy array, not an archive
    assert _evaluate(capsys, data, pred_dir) == (
        f"densemoe: error: cannot read prediction {path}: it holds a single ndarray, not an .npz archive of "
        "one array per task; save it with np.savez(<id>.npz, semseg=...)")
    # an archive whose member is corrupt (zlib.error / BadZipFile on reading the array)
    blob = bytearray(good)
    blob[len(blob) // 3 : len(blob) // 3 + 64] = bytes(64)
    path.write_bytes(bytes(blob))
    assert f"cannot read prediction {path} (" in _evaluate(capsys, data, pred_dir)
    path.unlink()
    path.mkdir()
    assert _evaluate(capsys, data, pred_dir) == (
        f"densemoe: error: prediction {path} for sample '{ids[0]}' is a folder, not a file; save one "
        "<sample id>.npz per sample")


@pytest.mark.parametrize(("task", "array", "message"), [
    ("semseg", lambda a: np.full_like(a, 200),
     "'semseg' holds class 200, outside 0 … {last} ({n} classes); save class indices (the argmax of the "
     "logits)"),
    ("semseg", lambda a: np.full_like(a, -1), "'semseg' holds class -1, outside 0 …"),
    ("semseg", lambda a: a.astype(np.float32) + 0.5,  # silently truncated to classes before
     "'semseg' must be an (H, W) integer class map, got a float32 array of shape (24, 32); save predictions "
     "in the format of densemoe.metrics.evaluate"),
    ("semseg", lambda a: np.zeros((5, *a.shape), np.float32),
     "'semseg' must be an (H, W) integer class map, got a float32 array of shape (5, 24, 32)"),
    ("normals", lambda a: a[0],
     "'normals' must be a (3, H, W) float array, got a float32 array of shape (24, 32)"),
    ("normals", lambda a: np.moveaxis(a, 0, -1), "'normals' must be a (3, H, W) float array"),
    ("depth", lambda a: a[:, :-2],
     "'depth' is 22x32 but the sample is 24x32; save predictions at the original image size (padding "
     "removed)"),
    ("depth", lambda a: a.astype(np.int32),
     "'depth' must be an (H, W) float depth map in metres, got a int32"),
    ("edge", lambda a: a.astype(np.int16), "'edge' must be an (H, W) uint8 map"),
    ("edge", lambda a: a.astype(np.float32) * 4 - 2,  # logits, not probabilities
     "'edge' holds values in [-2, 1018], not probabilities in [0, 1]; save σ(logit) (or the softmax), not "
     "logits"),
])
def test_foreign_prediction_arrays_are_one_line_naming_the_file(data, tmp_path, capsys, task, array, message):
    pred_dir = tmp_path / "pred"
    ids = _perfect(data, "synth-nyud", pred_dir)
    path = pred_dir / f"{ids[1]}.npz"
    arrays = dict(np.load(path))
    arrays[task] = array(arrays[task])
    np.savez(path, **arrays)
    n = tasks_for("synth-nyud")["semseg"].channels
    line = _evaluate(capsys, data, pred_dir)
    assert line.startswith(f"densemoe: error: prediction {path}: " + message.format(last=n - 1, n=n)), line


def test_saliency_logits_are_not_probabilities(data, tmp_path, capsys):
    pred_dir = tmp_path / "pred"
    ids = _perfect(data, "synth-pascal", pred_dir)
    path = pred_dir / f"{ids[0]}.npz"
    arrays = dict(np.load(path))
    arrays["sal"] = arrays["sal"] * 6 - 3
    np.savez(path, **arrays)
    assert _evaluate(capsys, data, pred_dir, dataset="synth-pascal") == (
        f"densemoe: error: prediction {path}: 'sal' holds values in [-3, 3], not probabilities in [0, 1]; "
        "save σ(logit) (or the softmax), not logits")


def test_wrong_folders_and_files_are_one_line(data, tmp_path, capsys):
    pred_dir = tmp_path / "pred"
    _perfect(data, "synth-nyud", pred_dir)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _one_error_line(capsys, ["evaluate", "--predictions", afile, "--dataset", "synth-nyud", "--root",
                                    data, "--out", tmp_path / "m.json", "-q"]) == (
        f"densemoe: error: prediction folder {afile} is a file, not a folder; pass the folder of "
        "<sample id>.npz files")
    assert _evaluate(capsys, data, pred_dir, "--edge-ids", tmp_path) == (
        f"densemoe: error: edge id list {tmp_path} is a folder, not a file; pass a text file with one sample "
        "id per line")
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"\xff\xfe\x00\x80 not text")
    assert _evaluate(capsys, data, pred_dir, "--edge-ids", ids) == (
        f"densemoe: error: edge id list {ids} is not UTF-8 text (invalid start byte at byte 0); pass a text "
        "file with one sample id per line")
    out = afile / "m.json"  # --out whose parent is a file: checked before any work
    common = ["evaluate", "--predictions", pred_dir, "--dataset", "synth-nyud", "--root", data, "-q"]
    assert _one_error_line(capsys, [*common, "--out", out]) == (
        f"densemoe: error: {afile} is a file, not a folder; cannot create {afile} (choose another path or "
        "move the file)")
    assert _one_error_line(capsys, [*common, "--out", tmp_path]) == (
        f"densemoe: error: --out {tmp_path} is a folder; name the JSON file to write, e.g. "
        f"{tmp_path / 'metrics.json'}")


def test_workers_zero_is_an_argparse_error(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--predictions", str(tmp_path), "--dataset", "synth-nyud", "--root", str(data),
              "--out", str(tmp_path / "m.json"), "--workers", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.splitlines()[-1].startswith("densemoe evaluate: error: argument --workers: must be ")
    assert err.splitlines()[-1].endswith("1, got 0") and "Traceback" not in err


def test_perfect_predictions_still_score_perfectly(data, tmp_path):
    pred_dir = tmp_path / "pred"
    _perfect(data, "synth-nyud", pred_dir)
    out = tmp_path / "m.json"
    metrics = evaluate_predictions(pred_dir, "synth-nyud", "test", data, out_json=out, workers=1)
    assert metrics["normals/mean_err"] == pytest.approx(0.0, abs=1e-3)
    assert metrics["depth/rmse"] == pytest.approx(0.0, abs=1e-6)
    assert _strict(out.read_text()) == pytest.approx(metrics)
    with pytest.raises(DataError, match="none of the 1 edge ids"):
        evaluate_predictions(pred_dir, "synth-nyud", "test", data, edge_ids=["nope"], workers=1)
