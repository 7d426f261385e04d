"""The generic ours-vs-paper table renderer: relative differences, markdown, CSV, LaTeX."""

import math

import pandas as pd
import pytest

from densemoe.analysis.tables import latex, markdown, ours_vs_paper, rel_diff, write_table


def test_rel_diff_and_missing_values():
    assert rel_diff(101, 100) == 1.0
    assert rel_diff(99.5, 100) == -0.5
    assert rel_diff(1, None) is None and rel_diff(None, 1) is None and rel_diff(1, 0) is None
    assert rel_diff(1, math.nan) is None


def test_ours_vs_paper_columns_and_rounding():
    rows = [dict(name="a", g=390.54, pg=391), dict(name="b", g=10.0, pg=None)]
    df = ours_vs_paper(rows, {"FLOPs (G)": ("g", "pg")}, keep=["name"], digits={"FLOPs (G)": 1})
    assert list(df.columns) == ["name", "FLOPs (G) paper", "FLOPs (G) ours", "FLOPs (G) Δ %"]
    assert df["FLOPs (G) ours"].tolist() == [390.5, 10.0]
    assert df["FLOPs (G) Δ %"].iloc[0] == pytest.approx(-0.12)
    assert pd.isna(df["FLOPs (G) Δ %"].iloc[1])


def test_markdown_latex_and_files(tmp_path):
    df = pd.DataFrame({"row": ["x_1", "y"], "FLOPs Δ %": [1.5, None]})
    md = markdown(df)
    assert md.splitlines()[:2] == ["| row | FLOPs Δ % |", "|---|---:|"]
    assert "| y |  |" in md
    tex = latex(df, caption="50% of A & B", label="tab:t")
    assert r"x\_1" in tex and r"50\% of A \& B" in tex and r"$\Delta$ \%" in tex and r"\toprule" in tex
    paths = write_table(df, tmp_path, "t", title="T", notes=["a note"])
    assert [p.name for p in paths] == ["t.md", "t.csv", "t.tex"]
    assert (tmp_path / "t.md").read_text().startswith("# T\n\n| row |") and "- a note" in paths[0].read_text()
    assert pd.read_csv(tmp_path / "t.csv").shape == (2, 2)
    assert [p.name for p in write_table(df, tmp_path, "u", tex=False)] == ["u.md", "u.csv"]
