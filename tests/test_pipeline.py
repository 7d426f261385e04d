"""`densemoe repro --profile`: params.yaml switched between profiles, comments kept, bad input refused."""

import shutil
from pathlib import Path

import pytest
import yaml

from densemoe.cli import main
from densemoe.config import load_params
from densemoe.errors import ConfigError
from densemoe.pipeline import switch_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    return path


def test_switch_to_paper_and_back_is_the_identity(params_file):
    original = params_file.read_text()
    switch_profile(params_file, "paper")
    paper = load_params(params_file)  # passes the pipeline check
    assert paper.profile == "paper"
    assert "mlore_vitb16_pascal_rank_min" in paper.pipeline.train
    assert "single_vitb16_pascal_edge" in paper.pipeline.train and "mlore_vitl16_nyud" in paper.pipeline.train
    assert not any("tiny" in name for name in paper.pipeline.train)
    assert paper.pipeline.reports == paper.profiles["paper"].reports
    text = params_file.read_text()
    assert "# Every knob of the densemoe pipeline" in text  # comments elsewhere are kept
    assert text.count("\nprofile: paper ") == 1 and text.count("\npipeline:") == 1
    switch_profile(params_file, "smoke")
    assert params_file.read_text() == original


def test_repository_pipeline_is_what_repro_writes():
    params = load_params(ROOT / "params.yaml")
    assert params.pipeline == params.pipeline_for(params.profile)


def test_unknown_profile_is_one_line_and_leaves_the_file(params_file, capsys):
    before = params_file.read_text()
    code = main(["repro", "--profile", "papr", "--params", str(params_file), "--no-run"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown profile 'papr'" in err and "did you mean 'paper'" in err
    assert err.count("\n") == 1 and params_file.read_text() == before


def test_a_stale_pipeline_names_the_fix(params_file):
    data = params_file.read_text().replace("profile: smoke", "profile: paper", 1)
    params_file.write_text(data)
    with pytest.raises(ConfigError, match="run `densemoe repro --profile paper`"):
        load_params(params_file)
    switch_profile(params_file, "paper")
    assert load_params(params_file).profile == "paper"


def test_cli_no_run_reports_the_counts(params_file, capsys):
    assert main(["repro", "--profile", "paper", "--params", str(params_file), "--no-run"]) == 0
    out = capsys.readouterr().out
    n = len(yaml.safe_load(params_file.read_text())["pipeline"]["train"])
    assert f"profile paper, {n} experiments to train" in out
