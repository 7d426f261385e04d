"""reports/README.md: the index of tables and figures, and the results summary read from the tables."""

from pathlib import Path

import pandas as pd

from densemoe.analysis import report_index
from densemoe.config import load_params

ROOT = Path(__file__).resolve().parents[2]


def _table_csv(folder: Path, table_id: str, paper: list[float], ours: list[float], labels: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"row": [*labels, "Single-task baselines (Δm reference)"],
                       "mtl/delta_m paper": [*paper, None], "mtl/delta_m ours": [*ours, 50.0]})
    df.to_csv(folder / f"{table_id}.csv", index=False)
    (folder / f"{table_id}.md").write_text(f"# Title of {table_id}\n\n| row |\n")


def test_index_lists_tables_figures_and_the_synthetic_note(tmp_path):
    params = load_params(ROOT / "params.yaml")
    labels = [r.label for r in params.table("table3").rows]  # 16/16, 16/128, 128/128
    _table_csv(tmp_path / "tables", "table3", [-0.77, -0.58, -1.07], [1.0, 3.0, 2.0], labels)
    (tmp_path / "tables" / "fig3_left.png").write_bytes(b"png")
    (tmp_path / "expert_usage" / "run").mkdir(parents=True)
    (tmp_path / "expert_usage" / "run" / "activation.png").write_bytes(b"png")
    text = report_index.write_index(params, tmp_path, "smoke").read_text()
    assert text.startswith("# Reports (profile `smoke`)")
    assert "**Synthetic-data numbers" in text
    assert "- table: [tables/table3.md](tables/table3.md): Title of table3" in text
    assert "- figure: [tables/fig3_left.png](tables/fig3_left.png)" in text
    assert "- figure: [expert_usage/run/activation.png](expert_usage/run/activation.png)" in text
    summary = report_index.results_summary(params, tmp_path / "tables", "smoke").set_index("table")
    # paper order 16/128 > 16/16 > 128/128; ours 16/128 > 128/128 > 16/16: best rows agree, order does not
    assert summary.loc["table3", "paper's best (Δm)"] == summary.loc["table3", "our best (Δm)"] == "16/128"
    assert summary.loc["table3", "same order as the paper"] == "no"
    assert summary.loc["table3", "rank correlation"] == 0.5


def test_paper_profile_has_no_synthetic_note(tmp_path):
    params = load_params(ROOT / "params.yaml")
    text = report_index.write_index(params, tmp_path, "paper").read_text()
    assert "Profile `paper`" in text and "Synthetic" not in text


def test_index_cli_unknown_profile_is_one_line(capsys):
    from densemoe.cli import main

    assert main(["index", "--profile", "papr"]) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'papr'" in err and "did you mean 'paper'" in err and err.count("\n") == 1
