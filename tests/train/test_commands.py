"""`densemoe train --experiment` and `densemoe evaluate --experiment / --checkpoint`, and their errors."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import ROOT, TINY, TINY_MLORE, params_dict, write_params

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


# ----------------------------------------------------------------------------------------------------------
# Faults of `densemoe evaluate --checkpoint / --experiment`: each ends in one line, before any work if it can


EXPERIMENTS = {
    "tiny_pascal": {"model": "mlore_tiny_synth", "dataset": "synth-pascal", "model_args": TINY_MLORE},
    "tiny_nyud": {"model": "mlore_tiny_synth", "dataset": "synth-nyud", "model_args": TINY_MLORE},
    "tiny_fgmoe": {"model": "fgmoe_tiny_synth", "dataset": "synth-nyud",
                   "model_args": dict(TINY, mixer_depth=2)},
    "tiny_semseg": {"model": "mlore_tiny_synth", "dataset": "synth-nyud", "tasks": ["semseg"],
                    "model_args": TINY_MLORE},
}


def _checkpoint(params: Path, name: str, runs: Path, into: str | None = None, nan: bool = False,
                meta: bool = True) -> Path:
    """An untrained checkpoint of experiment ``name`` (as train saves it) in ``runs/<into or name>/``;
    ``nan``: its heads' weights are NaN, so that every output is (as a file written before train refused
    them, or an official one); ``meta`` False: no stored config (as an official or converted file)."""
    from densemoe.models import create_model
    from densemoe.train.checkpoint import save_checkpoint
    from densemoe.train.experiment import resolve_experiment

    exp = resolve_experiment(load_params(params), name, runs=runs)
    torch.manual_seed(0)
    model = create_model(exp.preset, **exp.model_args)
    path = runs / (into or name) / "checkpoint.pt"
    save_checkpoint(path, model, meta={"experiment": name, "config": exp.config()} if meta else {})
    if nan:
        ckpt = torch.load(path, weights_only=True)
        for key, value in ckpt["model"].items():
            if key.startswith("heads.") and value.is_floating_point():
                value.fill_(math.nan)
        torch.save(ckpt, path)
    return path


def _one_line(capsys, *argv) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("densemoe: error: "), err
    return err.strip()


def _strict(text: str) -> dict:
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


NAN_LINE = ("densemoe: error: semseg: 100.0 % of the predicted pixels are NaN/inf (4,096 of 4,096 in batch "
            "1); the model diverged: re-train it (e.g. lower train.lr), or pass --nonfinite-as-wrong "
            "(nonfinite_as_wrong=True) to score them as wrong")


def test_a_diverged_checkpoint_is_one_line_or_scored_as_wrong(synth_root, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", synth_root, EXPERIMENTS)
    runs, out = tmp_path / "runs", tmp_path / "m.json"
    ckpt = _checkpoint(params, "tiny_nyud", runs, nan=True)
    base = ["evaluate", "--params", params, "--workers", "1", "-q"]
    assert _one_line(capsys, *base, "--checkpoint", ckpt, "--out", out) == NAN_LINE  # 4 test images, 32x32
    assert _one_line(capsys, *base, "--experiment", "tiny_nyud", "--runs", runs) == NAN_LINE
    assert not out.exists() and not (runs / "tiny_nyud" / "metrics_test.json").exists()
    code, _, err = run(capsys, *base, "--checkpoint", ckpt, "--out", out, "--nonfinite-as-wrong")
    assert code == 0, err
    metrics = _strict(out.read_text())  # strict JSON: no bare NaN
    assert metrics["semseg/miou"] == 0.0 and metrics["edge/odsf"] == 0.0 and metrics["depth/delta1"] == 0.0
    assert metrics["normals/mean_err"] == 180.0 and metrics["normals/11.25"] == 0.0
    assert metrics["depth/abs_rel"] == pytest.approx(1.0)
    # saved predictions of a diverged model cannot hold NaN as class indices: one line, not a silent argmax
    line = _one_line(capsys, *base, "--checkpoint", ckpt, "--out", out, "--nonfinite-as-wrong",
                     "--save-predictions", tmp_path / "preds")
    assert line.startswith("densemoe: error: semseg of sample 'test_0000") and "cannot hold them" in line


def test_evaluate_experiment_refuses_another_experiments_checkpoint(synth_root, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", synth_root, EXPERIMENTS)
    runs = tmp_path / "runs"
    argv = ["evaluate", "--params", params, "--runs", runs, "-q", "--experiment"]
    ckpt = _checkpoint(params, "tiny_nyud", runs, into="tiny_fgmoe")  # an MLoRE file in the FGMoE run folder
    line = _one_line(capsys, *argv, "tiny_fgmoe")
    assert line.startswith(f"densemoe: error: checkpoint {ckpt} is not the model of experiment 'tiny_fgmoe' "
                           "(checkpoint → experiment: model 'mlore_tiny_synth' → 'fgmoe_tiny_synth'; ")
    assert line.endswith("; re-train it with `densemoe train --experiment tiny_fgmoe --restart`, or evaluate "
                         f"the file on its own with --checkpoint {ckpt} (without --experiment)")
    assert not (runs / "tiny_fgmoe" / "metrics_test.json").exists()
    # a checkpoint without a stored config (official, converted) is compared on its preset and model args
    _checkpoint(params, "tiny_pascal", runs, into="tiny_nyud", meta=False)
    line = _one_line(capsys, *argv, "tiny_nyud")
    assert ("(checkpoint → experiment: model_args.dataset 'synth-pascal' → 'synth-nyud'; model_args.tasks "
            "['semseg', 'human_parts', 'sal', 'normals', 'edge'] → ['semseg', 'depth', 'normals', "
            "'edge'])") in line
    # the same preset and dataset, another model argument (params.yaml edited after training)
    _checkpoint(params, "tiny_nyud", runs)
    edited = dict(EXPERIMENTS, tiny_nyud={**EXPERIMENTS["tiny_nyud"],
                                          "model_args": {**TINY_MLORE, "top_k": 3}})
    write_params(params, synth_root, edited)
    assert "(checkpoint → experiment: model_args.top_k 4 → 3); re-train it with" in _one_line(
        capsys, *argv, "tiny_nyud")


def test_evaluate_experiment_holds_the_run_folder_lock(synth_root, tmp_path, capsys, monkeypatch):
    import socket

    from densemoe.lock import FolderLock, LockedError
    from densemoe.train import commands

    params = write_params(tmp_path / "params.yaml", synth_root, EXPERIMENTS)
    runs = tmp_path / "runs"
    _checkpoint(params, "tiny_semseg", runs)
    run_dir = runs / "tiny_semseg"
    argv = ["evaluate", "--experiment", "tiny_semseg", "--params", params, "--runs", runs, "--workers", "1",
            "-q"]
    with FolderLock(run_dir, "densemoe train --experiment tiny_semseg"):  # a training of the same run
        line = _one_line(capsys, *argv)
    assert line.startswith(f"densemoe: error: {run_dir} is in use by 'densemoe train --experiment "
                           f"tiny_semseg' (pid {os.getpid()} on {socket.gethostname()}, since ")
    assert not (run_dir / "metrics_test.json").exists()
    seen = []
    real = commands.evaluate_checkpoint

    def evaluate_while_a_train_starts(*args, **kwargs):
        with pytest.raises(LockedError, match="is in use by 'densemoe evaluate --experiment tiny_semseg'"):
            FolderLock(run_dir, "densemoe train --experiment tiny_semseg").acquire()
        seen.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(commands, "evaluate_checkpoint", evaluate_while_a_train_starts)
    code, _, err = run(capsys, *argv)
    assert code == 0 and seen == [True], err
    assert "semseg/miou" in _strict((run_dir / "metrics_test.json").read_text())
    FolderLock(run_dir, "next").acquire().release()  # released at the end


@pytest.mark.parametrize(("option", "value"), [("--batch-size", "0"), ("--loader-workers", "-1"),
                                               ("--workers", "0"), ("--device", "gpu"),
                                               ("--batch-size", "two")])
def test_bad_numbers_and_devices_are_argparse_errors(synth_root, tmp_path, capsys, option, value):
    params = write_params(tmp_path / "params.yaml", synth_root, EXPERIMENTS)
    ckpt = _checkpoint(params, "tiny_semseg", tmp_path / "runs")
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--checkpoint", str(ckpt), "--params", str(params), option, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"densemoe evaluate: error: argument {option}: ") and value in last, last
    assert not (ckpt.parent / "metrics_test.json").exists()


def test_broken_checkpoints_and_paths_are_one_line(synth_root, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", synth_root, EXPERIMENTS)
    ckpt = _checkpoint(params, "tiny_semseg", tmp_path / "runs")
    base = ["evaluate", "--params", params, "--workers", "1", "-q"]
    bad = tmp_path / "bad.pt"
    for content in (ckpt.read_bytes()[: ckpt.stat().st_size // 2], bytes(range(256)) * 64):  # cut, garbage
        bad.write_bytes(content)
        line = _one_line(capsys, *base, "--checkpoint", bad)
        assert line.startswith(f"densemoe: error: cannot read checkpoint {bad}: "), line
    assert _one_line(capsys, *base, "--checkpoint", tmp_path).startswith(
        f"densemoe: error: checkpoint {tmp_path} is a folder, not a ")
    assert _one_line(capsys, *base, "--checkpoint", ckpt, "--tasks", "semseg", "depth") == (
        f"densemoe: error: checkpoint {ckpt} predicts semseg, not 'depth'; evaluate only those tasks "
        "(--tasks)")
    ids = tmp_path / "ids.txt"
    assert _one_line(capsys, *base, "--checkpoint", ckpt, "--edge-ids", ids) == (
        "densemoe: error: --edge-ids applies to saved predictions only: evaluate the checkpoint with "
        f"--save-predictions DIR, then run densemoe evaluate --predictions DIR --edge-ids {ids}")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for option, folder in (("--out", afile), ("--save-predictions", afile / "m")):
        assert _one_line(capsys, *base, "--checkpoint", ckpt, option, afile / "m") == (
            f"densemoe: error: {afile} is a file, not a folder; cannot create {folder} (choose another path "
            "or move the file)")
    assert _one_line(capsys, *base, "--checkpoint", ckpt, "--out", tmp_path) == (
        f"densemoe: error: --out {tmp_path} is a folder; name the JSON file to write, e.g. "
        f"{tmp_path / 'metrics.json'}")
    nowhere = tmp_path / "nowhere"
    assert _one_line(capsys, *base, "--experiment", "tiny_semseg", "--runs", nowhere) == (
        f"densemoe: error: checkpoint {nowhere / 'tiny_semseg' / 'checkpoint.pt'} does not exist; train "
        "first (densemoe train --experiment tiny_semseg)")
    assert not nowhere.exists()  # no run folder made just to fail


def test_checkpoint_evaluation_honours_the_saliency_quirk(synth_root, tmp_path, capsys):
    """--sal-double-sigmoid was silently ignored with --checkpoint (the published maxF needs it)."""
    params = write_params(tmp_path / "params.yaml", synth_root, EXPERIMENTS)
    ckpt = _checkpoint(params, "tiny_pascal", tmp_path / "runs")
    maxf = []
    for quirk in ([], ["--sal-double-sigmoid"]):
        out = tmp_path / f"m{len(quirk)}.json"
        code, _, err = run(capsys, "evaluate", "--checkpoint", ckpt, "--params", params, "--tasks", "sal",
                           "--out", out, "-q", *quirk)
        assert code == 0, err
        maxf.append(_strict(out.read_text())["sal/maxf"])
    assert maxf[0] != maxf[1]
