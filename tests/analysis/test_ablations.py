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
    table = params.table("table2")
    assert [r.label for r in table.rows] == ["Baseline", "+ MoE", "Baseline + LoRE", "+ GC", "+ SPE"]
    assert table.rows[-1].paper["semseg/miou"] == 79.26 and table.rows[0].paper["mtl/delta_m"] == -3.41
    assert set(table.single_task) == {"semseg", "human_parts", "sal", "normals", "edge"}
    assert set(params.table_experiments()) <= set(params.pipeline.train)


def test_one_table_serves_both_profiles(params):
    smoke, paper = params.table("table3", "smoke"), params.table("table3", "paper")
    assert [r.experiment for r in smoke.rows] == [
        "mlore_tiny_synth_pascal_rank_min", "mlore_tiny_synth_pascal", "mlore_tiny_synth_pascal_rank_max"]
    assert [r.experiment for r in paper.rows] == [
        "mlore_vitb16_pascal_rank_min", "mlore_vitb16_pascal", "mlore_vitb16_pascal_rank_max"]
    assert paper.single_task["edge"] == "single_vitb16_pascal_edge"
    assert params.experiment_profile(paper.rows[0].experiment) == "paper"
    assert params.table("table13", "paper").rows[3].experiment == "mlore_vitl16_nyud"


def test_every_paper_table_is_declared(params):
    ids = set(params.tables_of("smoke"))
    assert {f"table{i}" for i in (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)} <= ids
    assert {"fgmoe_experts", "fgmoe_components"} <= ids
    assert params.table("table12").rows[1].paper["mtl/delta_m"] == -1.40  # transcription spot checks
    assert params.table("table11").rows[0].paper["edge/odsf"] == 74.25
    assert params.table("table6").rows[0].paper["depth/rmse"] == 0.5076


def test_missing_metrics_leave_empty_cells_and_a_note(params, tmp_path):
    df, notes = ablations.table_frame(params, "table2", tmp_path)
    assert df["semseg/miou ours"].isna().all()
    assert df["semseg/miou paper"].iloc[0] == 77.38
    assert "Not yet evaluated" in notes[-1] and "baseline_tiny_synth_pascal" in notes[-1]


def test_ours_beside_paper_with_delta_m(params, tmp_path):
    table = params.table("table2")
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
    assert next(iter(frames)) == "table2" and "fgmoe_components" in frames
    for ext in ("md", "csv", "tex"):
        assert (tmp_path / "out" / f"table2.{ext}").is_file()
    assert "Synthetic-data numbers" in (tmp_path / "out" / "table2.md").read_text()


def test_unknown_table(params):
    with pytest.raises(ConfigError, match="unknown table 'table99'"):
        params.table("table99")


def test_table_without_paper_numbers_uses_its_metrics(params, tmp_path):
    _write(tmp_path, "fgmoe_tiny_synth_pascal", {"semseg/miou": 40.0, "edge/odsf": 30.0})
    df, notes = ablations.table_frame(params, "fgmoe_components", tmp_path)
    assert "semseg/miou ours" in df and "mtl/delta_m ours" in df
    assert df["semseg/miou ours"].iloc[0] == 40.0 and df["semseg/miou paper"].isna().all()


def test_table_with_a_variable_the_profile_lacks(tmp_path):
    def edit(d):
        d["tables"]["table2"]["rows"][0]["experiment"] = "baseline_{pascl}"
        d["profiles"]["paper"]["names"]["pascl"] = "vitb16_pascal"

    with pytest.raises(ConfigError, match=r"table 'table2' needs \{pascl\}, which profile 'smoke' does not "
                                          r"define; add it to profiles.smoke.names"):
        load_params(_params_file(tmp_path, edit))


def test_table_naming_a_missing_experiment_is_one_line(tmp_path):
    def edit(d):
        d["tables"]["table2"]["rows"][1]["experiment"] = "moe_tiny_synth_pascl"

    match = "unknown experiment 'moe_tiny_synth_pascl' in params.tables.table2 row '\\+ MoE'"
    with pytest.raises(ConfigError, match=match):
        load_params(_params_file(tmp_path, edit))


def test_pipeline_must_cover_the_tables(tmp_path):
    path = _params_file(tmp_path, lambda d: d["pipeline"]["train"].remove("moe_tiny_synth_pascal"))
    match = "pipeline.train lacks moe_tiny_synth_pascal.*densemoe repro --profile"
    with pytest.raises(ConfigError, match=match):
        load_params(path)


def test_pipeline_holds_only_the_active_profile(tmp_path):
    path = _params_file(tmp_path, lambda d: d["pipeline"]["train"].append("mlore_vitl16_pascal"))
    with pytest.raises(ConfigError, match="'mlore_vitl16_pascal' of profile 'paper', but profile is 'smoke'"):
        load_params(path)


def test_ordering_note_compares_delta_m_ranks(params, tmp_path):
    table = params.table("table2")
    for task, exp in table.single_task.items():
        _write(tmp_path, exp, {TASKS[task].headline: 50.0})
    for i, row in enumerate(table.rows):  # ours: later rows better, as in the paper except + MoE
        _write(tmp_path, row.experiment, {TASKS[t].headline: 50.0 + i for t in table.single_task})
    _, notes = ablations.table_frame(params, "table2", tmp_path)
    line = next(n for n in notes if n.startswith("Rows by Δm"))
    assert "Paper: + SPE > + GC > + MoE > Baseline + LoRE > Baseline." in line
    assert "Ours: + SPE > + GC > Baseline + LoRE > + MoE > Baseline" in line and "different order" in line


def test_empty_pipeline_with_tables_is_an_error(tmp_path):
    path = _params_file(tmp_path, lambda d: d.update(pipeline={}))
    match = r"pipeline.train lacks \S+, \S+, \S+ and 44 more, needed by the tables"
    with pytest.raises(ConfigError, match=match):
        load_params(path)


def test_sweep_figure_and_row_routing(params, tmp_path):
    table = params.table("table2")
    block = {"selected": [[1.0, 0.0], [1.0, 1.0]], "mean_weight": [[0.5, 0.5], [0.5, 0.5]]}
    routing = {"iteration": 1, "tasks": ["semseg", "edge"], "blocks": {"b0": block}}
    folder = tmp_path / table.rows[3].experiment
    folder.mkdir()
    (folder / "routing.json").write_text(json.dumps(routing))
    got = ablations.row_routing(params, "table2", ["Baseline + LoRE", "+ GC"], tmp_path)
    assert list(got) == [f"+ GC ({table.rows[3].experiment})"]  # the untrained row is left out
    with pytest.raises(ConfigError, match="table 'table2' has no row '\\+ GCC'"):
        ablations.row_routing(params, "table2", ["+ GCC"], tmp_path)
    frames = ablations.render_tables(params, tmp_path, tmp_path / "out", "smoke")
    fig = ablations.sweep_figure(frames, {"table10": "experts N", "table11": "top-k"})
    assert [ax.get_xlabel() for ax in fig.axes] == ["experts N", "top-k"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "5", "10", "15", "20"]


def test_sharing_note_says_whether_the_generic_path_raises_sharing():
    import pandas as pd

    shares = pd.DataFrame({"run": ["a", "a", "b", "b"], "tasks": [1, 2, 1, 2],
                           "share %": [80.0, 20.0, 90.0, 10.0]})
    note = ablations.sharing_note(shares, "a", "b")
    assert note.startswith("Experts activated by all 2 tasks: 20.0 % without the generic path (a), 10.0 %")
    assert "does not rise with the generic path" in note
    assert "rises with the generic path, the direction" in ablations.sharing_note(shares, "b", "a")
