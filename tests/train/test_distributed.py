"""DDP on the CPU: the same `densemoe train` command under torchrun, 2 processes, gloo."""

import csv
import json
import os
import subprocess
import sys

import pytest
from train_helpers import write_params

from densemoe.train import load_checkpoint
from densemoe.train.commands import evaluate_checkpoint


def test_two_process_gloo_run_writes_once_and_merges_metrics(synth_root, tmp_path):
    # train.nproc_per_node: 2 makes the plain command (the dvc stage's) re-launch itself under torchrun
    params = write_params(tmp_path / "params.yaml", synth_root, iterations=3, log_every=1, eval_every=2,
                          val_batch_size=1, nproc_per_node=2)
    runs, report = tmp_path / "runs", tmp_path / "report"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    cmd = [sys.executable, "-m", "densemoe.cli", "train", "--experiment", "tiny_pascal",
           "--params", str(params), "--runs", str(runs), "--report", str(report)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("launching: ") == 1 and "--nproc_per_node=2" in done.stdout
    assert done.stdout.count(f"wrote {runs / 'tiny_pascal'}") == 1  # rank 0 alone reports and writes
    assert sorted(p.name for p in report.iterdir()) == ["metrics_val.json", "routing.json"]
    run = runs / "tiny_pascal"
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["iteration"] == 3 and ckpt["meta"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert [int(r["iteration"]) for r in csv.DictReader((run / "history.csv").open())] == [1, 2, 3]
    assert [int(r["iteration"]) for r in csv.DictReader((run / "evals.csv").open())] == [2, 3]
    assert json.loads((run / "routing" / "iter_000003.json").read_text())["images"] == 8  # 4 per rank
    # each rank evaluated half of the val split (with rank 0's BN statistics); merged, they equal one
    # process on all of it (batches of 1, so that no batch composition changes the arithmetic)
    merged = json.loads((run / "metrics.json").read_text())
    single = evaluate_checkpoint(run / "checkpoint.pt", synth_root / "smoke", split="val", device="cpu",
                                 edge_workers=1, batch_size=1)
    assert merged == pytest.approx(single, rel=1e-9, abs=1e-9)
