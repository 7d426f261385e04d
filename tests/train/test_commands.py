"""`densemoe train --experiment` and `densemoe evaluate --experiment / --checkpoint`, and their errors."""

import json

import pytest
import yaml
from train_helpers import ROOT, params_dict, write_params

from densemoe.cli import main
from densemoe.config import Params, from_dict, load_params
from densemoe.errors import ConfigError


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_evaluate_by_experiment_and_by_checkpoint(synth_root, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", synth_root, iterations=2, eval_split="test")
    runs = tmp_path / "runs"
    report = tmp_path / "reports" / "tiny_nyud"
    code, out, err = run(capsys, "train", "--experiment", "tiny_nyud", "--params", params, "--runs", runs,
                         "-q", "--report", report)
    assert code == 0, err
    assert "depth/rmse" in out and f"wrote {runs / 'tiny_nyud'}" in out
    assert sorted(p.name for p in report.iterdir()) == ["metrics_test.json", "routing.json"]  # split: test
    routing = json.loads((report / "routing.json").read_text())
    assert routing["iteration"] == 2 and routing["images"] == 4 and len(routing["blocks"]) == 8
    code, out, err = run(capsys, "evaluate", "--experiment", "tiny_nyud", "--params", params, "--runs", runs,
                         "--workers", "1", "-q")
    assert code == 0, err
    test_metrics = json.loads((runs / "tiny_nyud" / "metrics_test.json").read_text())
    assert {"semseg/miou", "depth/rmse", "normals/mean_err", "edge/odsf"} <= set(test_metrics)
    # the training's final evaluation (the pipeline's report) is the test evaluation of its checkpoint
    assert json.loads((report / "metrics_test.json").read_text()) == pytest.approx(test_metrics)
    out_json, preds = tmp_path / "m.json", tmp_path / "preds"
    code, _, err = run(capsys, "evaluate", "--checkpoint", runs / "tiny_nyud" / "checkpoint.pt",
                       "--params", params, "--split", "test", "--out", out_json, "--workers", "1",
                       "--save-predictions", preds, "-q")
    assert code == 0, err
    assert json.loads(out_json.read_text()) == pytest.approx(test_metrics)
    assert len(list(preds.glob("*.npz"))) == 4


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--experiment", "tiny_pascl"],
     "unknown experiment 'tiny_pascl' in params.yaml experiments; did you mean 'tiny_pascal'?"),
    (["evaluate", "--experiment", "tiny_nyud"], "does not exist; train first"),
    (["evaluate", "--dataset", "synth-nyud"], "densemoe evaluate needs --predictions, --out"),
])
def test_cli_errors_are_one_line(synth_root, tmp_path, capsys, argv, message):
    params = write_params(tmp_path / "params.yaml", synth_root)
    runs = ["--runs", tmp_path] if "--experiment" in argv else []
    code, _, err = run(capsys, *argv, "--params", params, *runs)
    assert code == 2 and message in err and err.count("\n") == 1


def test_repository_experiments_resolve():
    params = load_params(ROOT / "params.yaml")
    assert params.train_params("mlore_vitl16_pascal").edge_w == 0.925
    assert params.train_params("mlore_vitl16_nyud").lr == 1.0e-5
    assert params.experiment_profile("mlore_tiny_synth_nyud") == "smoke"
    assert params.train_params("mlore_tiny_synth_pascal").device == "cpu"
    paper = params.profiles["paper"].train
    assert (paper.iterations, paper.batch_size, paper.lr, paper.weight_decay, paper.grad_clip) == (
        40000, 2, 2.0e-5, 1.0e-6, 10.0)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["experiments"].update({"Bad-Name": {"model": "m", "dataset": "synth-nyud"}}),
     "experiment name 'Bad-Name' may only use a-z, 0-9 and _"),
    (lambda d: d["experiments"]["tiny_nyud"].update(lr=1.0),
     "unknown key 'lr' in params.experiments.tiny_nyud"),
    (lambda d: d["experiments"]["tiny_nyud"].update(train={"lrr": 1.0}),
     "unknown key 'lrr' in params.experiments.tiny_nyud.train; did you mean 'lr'?"),
    (lambda d: d["experiments"]["tiny_nyud"].update(train={"lr": "1e-4"}),
     "params.experiments.tiny_nyud.train.lr must be float, got '1e-4'"),
    (lambda d: d["experiments"]["tiny_nyud"].update(tasks=["sal"]), "task 'sal' is not labelled in dataset"),
    (lambda d: d["profiles"]["smoke"]["train"].update(amp="fp8"), "unknown amp mode 'fp8'"),
])
def test_experiment_config_errors(synth_root, edit, message):
    data = params_dict(synth_root)
    edit(data)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        from_dict(Params, yaml.safe_load(yaml.safe_dump(data)))


def test_nproc_per_node_relaunches_the_same_command_under_torchrun():
    import sys

    from densemoe.train.commands import torchrun_command

    argv = ["train", "--experiment", "mlore_vitl16_pascal", "-q", "--report", "reports/runs/x"]
    assert torchrun_command(2, argv) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc_per_node=2", "-m", "densemoe.cli", *argv]
    with pytest.raises(ConfigError, match="train.nproc_per_node must be at least 1"):
        from densemoe.config import TrainParams
        TrainParams(nproc_per_node=0)
