import json
from pathlib import Path

import pytest
import yaml

from densemoe.analysis import ablations
from densemoe.config import load_params
from densemoe.errors import ConfigError
from densemoe.metrics.mtl_gain import delta_m
from densemoe.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]


def _write(metrics_dir: Path, experiment: str, metrics: dict) -> None:
    folder = metrics_dir / experiment
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ablations.METRICS_FILE).write_text(json.dumps(metrics))


def _params_file(tmp_path, edit):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def test_table2_is_declared_with_paper_numbers(params):
    table = params.tables["table2"]
    assert [r.label for r in table.rows] == ["Baseline", "+ MoE", "Baseline + LoRE", "+ GC", "+ SPE"]
    assert table.rows[-1].paper["semseg/miou"] == 79.26 and table.rows[0].paper["mtl/delta_m"] == -3.41
    assert set(table.single_task) == {"semseg", "human_parts", "sal", "normals", "edge"}
    assert set(params.table_experiments()) <= set(params.pipeline)


def test_missing_metrics_leave_empty_cells_and_a_note(params, tmp_path):
    df, notes = ablations.table_frame(params, "table2", tmp_path)
    assert df["semseg/miou ours"].isna().all()
    assert df["semseg/miou paper"].iloc[0] == 77.38
    assert "Not yet evaluated" in notes[-1] and "baseline_tiny_synth_pascal" in notes[-1]


def test_ours_beside_paper_with_delta_m(params, tmp_path):
    table = params.tables["table2"]
    single = {TASKS[t].headline: 50.0 for t in table.single_task}
    for task, exp in table.single_task.items():
        _write(tmp_path, exp, {TASKS[task].headline: 50.0})
    ours = {k: 55.0 for k in single}
    for row in table.rows:
        _write(tmp_path, row.experiment, ours)
    df, notes = ablations.table_frame(params, "table2", tmp_path)
    expected = delta_m(ours, single, list(table.single_task))  # +10 % on 4 tasks, -10 % on normals
    assert expected == pytest.approx(6.0)
    assert df["mtl/delta_m ours"].iloc[0] == pytest.approx(expected)
    assert df["semseg/miou Δ %"].iloc[0] == pytest.approx((55.0 - 77.38) / 77.38 * 100, abs=0.01)
    assert df["row"].iloc[-1] == ablations.SINGLE_LABEL and df["semseg/miou ours"].iloc[-1] == 50.0
    assert not any("Not yet evaluated" in n for n in notes)


def test_render_writes_md_csv_tex(params, tmp_path):
    frames = ablations.render_tables(params, tmp_path / "none", tmp_path / "out", "smoke")
    assert list(frames) == ["table2"]
    for ext in ("md", "csv", "tex"):
        assert (tmp_path / "out" / f"table2.{ext}").is_file()
    assert "synthetic-data numbers" in (tmp_path / "out" / "table2.md").read_text()


def test_unknown_table(params):
    with pytest.raises(ConfigError, match="unknown table 'table99'"):
        ablations.get_table(params, "table99")


def test_table_naming_a_missing_experiment_is_one_line(tmp_path):
    def edit(d):
        d["tables"]["table2"]["rows"][1]["experiment"] = "moe_tiny_synth_pascl"

    match = "unknown experiment 'moe_tiny_synth_pascl' in params.tables.table2"
    with pytest.raises(ConfigError, match=match):
        load_params(_params_file(tmp_path, edit))


def test_pipeline_must_cover_the_tables(tmp_path):
    path = _params_file(tmp_path, lambda d: d["pipeline"].remove("moe_tiny_synth_pascal"))
    with pytest.raises(ConfigError, match="pipeline lacks moe_tiny_synth_pascal.*add them to pipeline"):
        load_params(path)


def test_pipeline_holds_only_the_active_profile(tmp_path):
    path = _params_file(tmp_path, lambda d: d["pipeline"].append("mlore_vitl16_pascal"))
    with pytest.raises(ConfigError, match="'mlore_vitl16_pascal' of profile 'paper', but profile is 'smoke'"):
        load_params(path)


def test_ordering_note_compares_delta_m_ranks(params, tmp_path):
    table = params.tables["table2"]
    for task, exp in table.single_task.items():
        _write(tmp_path, exp, {TASKS[task].headline: 50.0})
    for i, row in enumerate(table.rows):  # ours: later rows better, as in the paper except + MoE
        _write(tmp_path, row.experiment, {TASKS[t].headline: 50.0 + i for t in table.single_task})
    _, notes = ablations.table_frame(params, "table2", tmp_path)
    line = next(n for n in notes if n.startswith("Rows by Δm"))
    assert "Paper: + SPE > + GC > + MoE > Baseline + LoRE > Baseline." in line
    assert "Ours: + SPE > + GC > Baseline + LoRE > + MoE > Baseline" in line and "different order" in line


def test_empty_pipeline_with_tables_is_an_error(tmp_path):
    path = _params_file(tmp_path, lambda d: d.update(pipeline=[]))
    with pytest.raises(ConfigError, match="pipeline lacks baseline_tiny_synth_pascal"):
        load_params(path)
