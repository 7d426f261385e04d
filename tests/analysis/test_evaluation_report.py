import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from densemoe.analysis import evaluation
from densemoe.analysis.ablations import METRICS_FILE
from densemoe.config import ExperimentParams, load_params
from densemoe.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TWO_TASK = "two_task_tiny_synth_pascal"  # semseg + normals: one higher-better, one lower-better task


def _write(metrics_dir: Path, experiment: str, metrics: dict) -> None:
    folder = metrics_dir / experiment
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS_FILE).write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def single(params):
    """The smoke single-task baselines of synth-pascal (from the smoke tables of params.yaml)."""
    mapping, sources = evaluation.single_task_baselines(params, "smoke", "synth-pascal")
    assert mapping == {t: f"single_tiny_synth_pascal_{t}" for t in ("semseg", "human_parts", "sal", "normals",
                                                                    "edge")}
    assert "table2" in sources
    return mapping


@pytest.fixture(scope="module")
def two_task(params):
    """params.yaml plus a 2-task experiment on synth-pascal (smoke profile)."""
    exp = ExperimentParams(model="mlore_tiny_synth", dataset="synth-pascal", tasks=("semseg", "normals"))
    return dataclasses.replace(params, experiments={**params.experiments, TWO_TASK: exp})


def test_delta_m_of_a_two_task_model_by_hand(two_task, single, tmp_path):
    # semseg mIoU 30 vs 25: +20 %; normals mErr 36 vs 40 (lower is better): +10 %; Δm = 15 %.
    _write(tmp_path, single["semseg"], {"semseg/miou": 25.0})
    _write(tmp_path, single["normals"], {"normals/mean_err": 40.0, "normals/11.25": 10.0})
    _write(tmp_path, TWO_TASK, {"semseg/miou": 30.0, "normals/mean_err": 36.0, "normals/11.25": 12.0})
    df, notes = evaluation.delta_m_frame(two_task, tmp_path, "smoke")
    row = df.set_index("experiment").loc[TWO_TASK]
    assert row["Δm %"] == pytest.approx(15.0)
    assert row["semseg/miou gain %"] == pytest.approx(20.0)
    assert row["normals/mean_err gain %"] == pytest.approx(10.0)
    assert pd.isna(row["sal/maxf gain %"])
    assert list(df["experiment"]) == [TWO_TASK]  # the other multi-task experiments are not evaluated
    assert any("mlore_tiny_synth_pascal" in n and "Not yet evaluated" in n for n in notes)


def test_lower_is_better_metric_that_got_worse_is_a_loss(two_task, single, tmp_path):
    # semseg 25 vs 25: 0 %; normals 42 vs 40: -5 %; Δm = -2.5 %.
    _write(tmp_path, single["semseg"], {"semseg/miou": 25.0})
    _write(tmp_path, single["normals"], {"normals/mean_err": 40.0})
    _write(tmp_path, TWO_TASK, {"semseg/miou": 25.0, "normals/mean_err": 42.0})
    df, _ = evaluation.delta_m_frame(two_task, tmp_path, "smoke")
    assert df["normals/mean_err gain %"].iloc[0] == pytest.approx(-5.0)
    assert df["Δm %"].iloc[0] == pytest.approx(-2.5)


def test_five_task_delta_m_and_a_missing_baseline(params, single, tmp_path):
    # Every task +10 % better than its baseline (normals: 45 vs 50), except sal: 40 vs 50 = -20 %.
    base = {"semseg/miou": 50.0, "human_parts/miou": 50.0, "sal/maxf": 50.0, "normals/mean_err": 50.0,
            "edge/odsf": 50.0}
    for task, exp in single.items():
        key = next(k for k in base if k.startswith(task + "/"))
        _write(tmp_path, exp, {key: base[key]})
    ours = {"semseg/miou": 55.0, "human_parts/miou": 55.0, "sal/maxf": 40.0, "normals/mean_err": 45.0,
            "edge/odsf": 55.0}
    _write(tmp_path, "mlore_tiny_synth_pascal", ours)
    df, _ = evaluation.delta_m_frame(params, tmp_path, "smoke")
    assert df["Δm %"].iloc[0] == pytest.approx(4.0)  # (4 · 10 − 20) / 5
    (tmp_path / single["sal"] / METRICS_FILE).unlink()
    df, notes = evaluation.delta_m_frame(params, tmp_path, "smoke")
    assert pd.isna(df["Δm %"].iloc[0]) and df["edge/odsf gain %"].iloc[0] == pytest.approx(10.0)
    assert "synth-pascal: Δm left empty where a task lacks its baseline: the baselines of sal are not yet " \
           "evaluated." in notes
    assert single["sal"] in notes[-1] and "Not yet evaluated" in notes[-1]


def test_dataset_without_baselines_leaves_delta_m_empty(params, tmp_path):
    _write(tmp_path, "mlore_tiny_synth_nyud", {"semseg/miou": 20.0, "depth/rmse": 1.5})
    df, notes = evaluation.delta_m_frame(params, tmp_path, "smoke")
    assert list(df["experiment"]) == ["mlore_tiny_synth_nyud"] and pd.isna(df["Δm %"].iloc[0])
    assert any(n.startswith("synth-nyud: no single-task baselines") for n in notes)


def test_metrics_frame_rows_columns_and_missing_note(params, single, tmp_path):
    _write(tmp_path, "mlore_tiny_synth_nyud", {"semseg/miou": 20.0, "depth/rmse": 1.5})
    _write(tmp_path, single["sal"], {"sal/maxf": 61.234, "sal/miou": 40.0})
    df, notes = evaluation.metrics_frame(params, tmp_path, "smoke")
    assert list(df.columns[:4]) == ["dataset", "experiment", "model", "tasks"]
    assert {"semseg/miou", "normals/11.25", "edge/ap", "depth/delta1"} <= set(df.columns)
    # grouped by dataset in the profile's order (synth-pascal before synth-nyud)
    assert list(df["experiment"]) == [single["sal"], "mlore_tiny_synth_nyud"]
    assert df["sal/maxf"].iloc[0] == 61.23 and pd.isna(df["semseg/miou"].iloc[0])
    assert df["depth/rmse"].iloc[1] == 1.5 and df["model"].iloc[1] == "mlore_tiny_synth"
    missing = notes[-1]
    assert missing.startswith("Not yet evaluated") and "baseline_tiny_synth_pascal" in missing
    assert "mlore_tiny_synth_nyud" not in missing
    assert any("Synthetic-data numbers" in n for n in notes)


def test_no_metrics_at_all_is_notes_not_an_error(params, tmp_path):
    df, notes = evaluation.metrics_frame(params, tmp_path / "none", "smoke")
    assert df.empty and "semseg/miou" in df.columns
    assert "mlore_tiny_synth_nyud" in notes[-1]


def test_unknown_profile_is_one_line(params, tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'smok'.*did you mean 'smoke'") as err:
        evaluation.render(params, tmp_path, tmp_path / "out", "smok")
    assert "\n" not in str(err.value)


def test_render_writes_tables_and_figure(two_task, single, tmp_path):
    _write(tmp_path, single["semseg"], {"semseg/miou": 25.0})
    _write(tmp_path, single["normals"], {"normals/mean_err": 40.0})
    _write(tmp_path, TWO_TASK, {"semseg/miou": 30.0, "normals/mean_err": 36.0})
    out = tmp_path / "out"
    frames = evaluation.render(two_task, tmp_path, out, "smoke")
    assert set(frames) == {"metrics", "delta_m"}
    for name in ("metrics", "delta_m"):
        for ext in ("md", "csv", "tex"):
            assert (out / f"{name}.{ext}").is_file()
    assert (out / "delta_m.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "delta_m.md").read_text()
    assert "profile smoke" in md and "Synthetic-data numbers" in md and "| 15 |" in md
    assert pd.read_csv(out / "delta_m.csv")["Δm %"].tolist() == [15.0]


def test_render_before_any_training_writes_a_placeholder_figure(params, tmp_path):
    evaluation.render(params, tmp_path / "none", tmp_path / "out", "smoke")
    assert (tmp_path / "out" / "delta_m.png").is_file()
    assert "Not yet evaluated" in (tmp_path / "out" / "delta_m.md").read_text()


def test_a_zero_baseline_is_a_note_not_a_crash(two_task, single, tmp_path):
    _write(tmp_path, single["semseg"], {"semseg/miou": 0.0})
    _write(tmp_path, single["normals"], {"normals/mean_err": 40.0})
    _write(tmp_path, TWO_TASK, {"semseg/miou": 30.0, "normals/mean_err": 36.0})
    df, notes = evaluation.delta_m_frame(two_task, tmp_path, "smoke")
    assert pd.isna(df["Δm %"].iloc[0])
    assert any(n.startswith(f"{TWO_TASK}: cannot compute Δm: semseg/miou") for n in notes)


def test_tables_disagreeing_on_a_baseline_is_one_line(params):
    table = params.tables["table3"]
    other = {**table.single_task, "semseg": "single_tiny_synth_pascal_sal"}
    clash = dataclasses.replace(table, single_task=other)
    bad = dataclasses.replace(params, tables={**params.tables, "table3": clash})
    with pytest.raises(ConfigError, match="name different single-task baselines for 'semseg'") as err:
        evaluation.delta_m_frame(bad, "none", "smoke")
    assert "\n" not in str(err.value)
