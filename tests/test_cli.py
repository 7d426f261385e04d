import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from densemoe.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tiny_params(tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for spec in data["data"]["synth"].values():
        spec.update(height=24, width=32, train=3, val=2, test=2, workers=1)
    data["data"]["root"] = str(tmp_path / "data")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_help_runs_as_a_program():
    done = subprocess.run([sys.executable, "-m", "densemoe.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "data" in done.stdout


def test_synth_then_check(tmp_path, capsys):
    params = str(tiny_params(tmp_path))
    code, out, _ = run(capsys, "data", "synth", "synth-nyud", "--params", params, "-q")
    assert code == 0 and "3/2/2 train/val/test images of 24x32" in out
    assert (tmp_path / "data" / "smoke" / "synth-nyud" / "gt_sets" / "train.txt").is_file()
    code, out, _ = run(capsys, "data", "check", "synth-nyud", "--params", params)
    assert code == 0 and "synth-nyud test: 2 samples" in out


def test_prepare_makes_every_dataset_of_the_profile(tmp_path, capsys):
    code, _, _ = run(capsys, "data", "prepare", "--params", str(tiny_params(tmp_path)), "-q")
    assert code == 0
    assert {p.name for p in (tmp_path / "data" / "smoke").iterdir()} >= {"synth-pascal", "synth-nyud"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["data", "synth", "synth-pascl"],
            "unknown synthetic dataset 'synth-pascl' in params.yaml data.synth; did you mean 'synth-pascal'?",
        ),
        (["data", "fetch", "nyud"], "unknown dataset archive 'nyud'"),
        (
            ["data", "check", "synth-pascal", "--root", "/nonexistent"],
            "dataset folder /nonexistent/synth-pascal does not exist; run `densemoe data synth synth-pascal`",
        ),
        (["data", "check", "imagenet"], "unknown dataset 'imagenet'"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("densemoe: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_params_file(capsys):
    code, _, err = run(capsys, "data", "synth", "synth-pascal", "--params", "/nope/params.yaml")
    assert code == 2 and "params file /nope/params.yaml does not exist" in err


def test_a_dataset_lives_in_the_folder_of_the_profile_that_uses_it(tmp_path, capsys):
    code, _, err = run(capsys, "data", "check", "nyud-v2", "--params", str(tiny_params(tmp_path)))
    assert code == 2  # nothing fetched: the message names data/paper, where `densemoe train` will look
    assert "data/paper/NYUDv2 does not exist; run `densemoe data fetch nyud-v2`" in err
