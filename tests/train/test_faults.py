"""Fault injection on `densemoe train`: concurrent runs, kills at random points, signals, non-finite values,
edited configurations, bad labels, errors inside DataLoader workers, a full disk and file modes.

Each test asserts what the user sees (one line, the exit status) and what is on disk afterwards (nothing
half-written, no orphaned temporary, the checkpoint resumable to the weights of an uninterrupted run).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import make_params, write_params

from densemoe.cli import main
from densemoe.errors import ConfigError
from densemoe.lock import LOCK_NAME, FolderLock, LockedError
from densemoe.train import TrainingError, load_checkpoint, resolve_experiment, train


def _exp(synth_root, tmp_path, name="tiny_pascal", **train_kw):
    return resolve_experiment(make_params(synth_root, **train_kw), name, runs=tmp_path / "runs")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.startswith("densemoe: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name != LOCK_NAME]


# ----------------------------------------------------------------------------------------------------------
# 1. Two processes on one run folder


def test_a_second_train_of_one_run_fails_at_once_naming_the_holder(synth_root, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", synth_root, iterations=2)
    run_dir = tmp_path / "runs" / "tiny_pascal"
    with FolderLock(run_dir, "densemoe train --experiment tiny_pascal"):
        start = time.monotonic()
        code, _, err = run_cli(capsys, "train", "--experiment", "tiny_pascal", "--params", params,
                               "--runs", tmp_path / "runs", "-q")
        assert time.monotonic() - start < 20
    assert code == 2
    line = one_line(err)
    assert f"{run_dir} is in use by 'densemoe train --experiment tiny_pascal' (pid {os.getpid()} on " in line
    assert "since 20" in line  # an ISO date
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "history.csv").exists()


def test_two_concurrent_processes_one_wins_and_the_run_is_intact(synth_root, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", synth_root, iterations=400, log_every=1)
    runs = tmp_path / "runs"
    first = subprocess.Popen(_train_cmd(params, runs), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=ONE_THREAD)
    history = runs / "tiny_pascal" / "history.csv"
    deadline = time.monotonic() + 90
    while not history.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    code, _, err = run_cli(capsys, *_train_cmd(params, runs)[3:])  # the same command, while the first trains
    first.send_signal(signal.SIGTERM)
    _, err1 = first.communicate(timeout=120)
    assert code == 2 and f"(pid {first.pid} on " in one_line(err)
    assert first.returncode == 143, err1
    rows = history.read_text().splitlines()
    saved = load_checkpoint(runs / "tiny_pascal" / "checkpoint.pt")["iteration"]
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, saved + 1))  # one writer, in order
    assert not (runs / "tiny_pascal" / LOCK_NAME).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(synth_root, tmp_path, caplog):
    exp = _exp(synth_root, tmp_path, iterations=2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    exp.run_dir.mkdir(parents=True)
    (exp.run_dir / LOCK_NAME).write_text(json.dumps(
        {"command": "densemoe train --experiment tiny_pascal", "pid": dead.pid, "host": "node7",
         "since": "2026-12-01T10:00:00+00:00"}))
    with caplog.at_level("WARNING", logger="densemoe"):
        train(exp, progress=False)
    assert f"took over the lock of {exp.run_dir} left by 'densemoe train --experiment tiny_pascal' (pid " \
           f"{dead.pid} on node7, since 2026-12-01T10:00:00+00:00)" in caplog.text
    assert load_checkpoint(exp.run_dir / "checkpoint.pt")["iteration"] == 2
    assert not (exp.run_dir / LOCK_NAME).exists()


def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path):
    """flock: the kernel releases the lock of a process killed by SIGKILL."""
    code = (f"from densemoe.lock import FolderLock; import time; FolderLock({str(tmp_path)!r}, 'x')"
            ".acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockedError, match=f"pid {holder.pid}"):
        FolderLock(tmp_path, "y").acquire()
    holder.kill()
    holder.wait()
    with FolderLock(tmp_path, "y") as lock:
        assert lock.taken_over["pid"] == holder.pid


# ----------------------------------------------------------------------------------------------------------
# 3. Non-finite values never reach a checkpoint


def _nan_gradient_at(n_call: int, monkeypatch):
    """A loss whose value stays finite but whose gradient is NaN at its ``n_call``-th call."""
    from densemoe.train import losses

    calls = {"n": 0}
    real = losses.LOSSES["balanced_bce"]

    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * float("nan")

    def flaky(pred, target, edge_w):
        calls["n"] += 1
        return real(NanGrad.apply(pred) if calls["n"] == n_call else pred, target, edge_w)

    monkeypatch.setitem(losses.LOSSES, "balanced_bce", flaky)


@pytest.mark.parametrize("grad_clip", [0.0, 10.0])
def test_a_nan_gradient_stops_before_the_step_and_the_checkpoint_stays_finite(
        synth_root, tmp_path, monkeypatch, grad_clip):
    _nan_gradient_at(4, monkeypatch)
    exp = _exp(synth_root, tmp_path, iterations=6, checkpoint_every=2, grad_clip=grad_clip)
    with pytest.raises(TrainingError) as info:
        train(exp, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "the gradient norm is nan at iteration 4" in message and "(iteration 2) is kept" in message
    ckpt = load_checkpoint(exp.run_dir / "checkpoint.pt")
    assert ckpt["iteration"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    assert all(torch.isfinite(v).all() for s in ckpt["optimizer"]["state"].values() for v in s.values())


def test_a_save_refuses_non_finite_weights(synth_root, tmp_path, monkeypatch):
    """Weights that became NaN without a NaN gradient (here: an optimizer that writes NaN) are not saved."""
    exp = _exp(synth_root, tmp_path, iterations=6, checkpoint_every=2)
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def bad_step(self, *a, **k):
        calls["n"] += 1
        out = real_step(self, *a, **k)
        if calls["n"] == 4:  # after the step of iteration 4, before its checkpoint
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", bad_step)
    with pytest.raises(TrainingError, match=r"the model weight '.+' is non-finite before saving iteration 4; "
                                            r"stopped, the last good checkpoint .+ \(iteration 2\) is kept"):
        train(exp, progress=False)
    ckpt = load_checkpoint(exp.run_dir / "checkpoint.pt")
    assert ckpt["iteration"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_save_checkpoint_itself_refuses_nan(tmp_path):
    from densemoe.models import create_model
    from densemoe.train.checkpoint import NonFiniteStateError, save_checkpoint

    model = create_model("mlore_tiny_synth", dataset="synth-nyud", img_size=(32, 32),
                         backbone_args=dict(depth=4, embed_dim=32, num_heads=2), channels=16,
                         ranks=[2, 3, 4, 5, 6, 8], top_k=4, task_rank=4)
    next(model.parameters()).data[0] = float("inf")
    with pytest.raises(NonFiniteStateError, match="is NaN/inf; not writing the checkpoint"):
        save_checkpoint(tmp_path / "c.pt", model)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------
# 4. Orphaned temporaries, kills at random points, SIGTERM/SIGINT


def test_stale_temporaries_are_removed_at_the_next_start(synth_root, tmp_path):
    exp = _exp(synth_root, tmp_path, iterations=2)
    (exp.run_dir / "evals").mkdir(parents=True)
    stale = [exp.run_dir / ".checkpoint.pt.k2j3h4.tmp", exp.run_dir / "evals" / ".iter_000002.json.a1b2.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    train(exp, progress=False)
    assert temporaries(exp.run_dir) == []
    assert load_checkpoint(exp.run_dir / "checkpoint.pt")["iteration"] == 2


def test_restart_removes_stale_temporaries_too(synth_root, tmp_path):
    exp = _exp(synth_root, tmp_path, iterations=2)
    train(exp, progress=False)
    (exp.run_dir / ".checkpoint.pt.zz.tmp").write_bytes(b"x")
    train(exp, progress=False, restart=True)
    assert temporaries(exp.run_dir) == []


#: Subprocesses train on one thread, as the tests' own process (tests/conftest.py), so their weights compare.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train_cmd(params: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "densemoe.cli", "train", "--experiment", "tiny_pascal", "--params",
            str(params), "--runs", str(runs), "-q"]


def test_killed_at_random_points_then_resumed_ends_with_the_uninterrupted_weights(synth_root, tmp_path):
    """SIGKILL at random moments (checkpoints are written every iteration, so many kills land mid-write),
    then the same command: no temporary is left and the weights equal an uninterrupted run's."""
    kw = dict(iterations=8, checkpoint_every=1, log_every=1)
    straight = _exp(synth_root, tmp_path / "a", **kw)
    train(straight, progress=False)
    params = write_params(tmp_path / "params.yaml", synth_root, **kw)
    runs = tmp_path / "b" / "runs"
    rng = random.Random(0)
    for _ in range(4):
        proc = subprocess.Popen(_train_cmd(params, runs), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=ONE_THREAD)
        time.sleep(rng.uniform(4.0, 9.0))  # start-up (imports) takes a few seconds on 2 cores
        proc.kill()
        proc.wait()
    done = subprocess.run(_train_cmd(params, runs), capture_output=True, text=True, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    run = runs / "tiny_pascal"
    assert temporaries(run) == []
    same_weights(straight.run_dir / "checkpoint.pt", run / "checkpoint.pt")


@pytest.mark.parametrize(("signum", "status", "workers", "group"), [
    (signal.SIGTERM, 143, 0, False), (signal.SIGINT, 130, 0, False),
    (signal.SIGTERM, 143, 2, True),  # a scheduler's SIGTERM to the job's process group, loader workers too
    (signal.SIGINT, 130, 2, True),  # a terminal's Ctrl-C
])
def test_a_signal_saves_at_the_end_of_the_iteration_and_exits_with_one_line(
        synth_root, tmp_path, signum, status, workers, group):
    kw = dict(iterations=40, checkpoint_every=0, log_every=1, workers=workers)
    params = write_params(tmp_path / "params.yaml", synth_root, **kw)
    runs = tmp_path / "runs"
    history = runs / "tiny_pascal" / "history.csv"
    proc = subprocess.Popen(_train_cmd(params, runs), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ONE_THREAD, start_new_session=True)
    deadline = time.monotonic() + 90
    while (not history.exists() or len(history.read_text().splitlines()) < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    lines = [line for line in err.splitlines() if line.startswith("densemoe: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    saved = load_checkpoint(runs / "tiny_pascal" / "checkpoint.pt")["iteration"]
    assert f"stopped by {signal.Signals(signum).name} after iteration {saved}; the checkpoint" in lines[0]
    assert 2 <= saved < 40
    assert temporaries(runs / "tiny_pascal") == []
    # the same command resumes, to the weights of a run that was never stopped
    resumed = subprocess.run(_train_cmd(params, runs), capture_output=True, text=True, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    straight = _exp(synth_root, tmp_path / "a", **kw)
    train(straight, progress=False)
    same_weights(straight.run_dir / "checkpoint.pt", runs / "tiny_pascal" / "checkpoint.pt")


# ----------------------------------------------------------------------------------------------------------
# 6. Resume after a config edit


def test_resume_after_an_edit_other_than_the_length_is_one_line_naming_the_keys(synth_root, tmp_path):
    train(_exp(synth_root, tmp_path, iterations=3), progress=False)
    edited = _exp(synth_root, tmp_path, iterations=5, lr=2.0e-3, batch_size=2)
    with pytest.raises(ConfigError) as info:
        train(edited, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "the configuration changed since" in message
    assert "train.batch_size 4 → 2; train.lr 0.001 → 0.002" in message and "iterations" not in message
    assert "re-run with --restart" in message
    assert load_checkpoint(edited.run_dir / "checkpoint.pt")["iteration"] == 3  # untouched
    train(edited, progress=False, restart=True)
    assert load_checkpoint(edited.run_dir / "checkpoint.pt")["iteration"] == 5


def test_a_longer_schedule_continues_the_poly_lr_on_the_new_length(synth_root, tmp_path):
    train(_exp(synth_root, tmp_path, iterations=4, log_every=1), progress=False)
    longer = _exp(synth_root, tmp_path, iterations=8, log_every=1)
    train(longer, progress=False)
    rows = (longer.run_dir / "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    lrs = {int(r.split(",")[0]): float(r.split(",")[header.index("lr")]) for r in rows[1:]}
    lr0 = longer.train.lr
    assert lrs[4] == pytest.approx(lr0 * (1 - 3 / 4) ** 0.9, rel=1e-4)  # the old schedule
    for t in range(5, 9):  # iteration t runs at lr(t - 1) of the 8-iteration schedule, never at lr 0
        assert lrs[t] == pytest.approx(lr0 * (1 - (t - 1) / 8) ** 0.9, rel=1e-4), t
    assert load_checkpoint(longer.run_dir / "checkpoint.pt")["iteration"] == 8


def test_a_schedule_shorter_than_the_checkpoint_is_refused(synth_root, tmp_path):
    train(_exp(synth_root, tmp_path, iterations=4), progress=False)
    with pytest.raises(ConfigError, match="is at iteration 4, beyond train.iterations 2; re-run with --rest"):
        train(_exp(synth_root, tmp_path, iterations=2), progress=False)


# ----------------------------------------------------------------------------------------------------------
# 7. Validation before the work starts


@pytest.mark.parametrize(("train_kw", "message"), [
    (dict(poly_power=-0.9), "params.profiles.smoke.train.poly_power must be at least 0, got -0.9"),
    (dict(workers=-1), "train.workers must be at least 0, got -1"),
    (dict(lr=-1.0e-3), "train.lr must be greater than 0, got -0.001"),
    (dict(batch_size=0), "train.batch_size must be at least 1, got 0"),
    (dict(device="gpu"), "unknown device 'gpu' in train.device (valid: auto, cpu, cuda, cuda:N, mps)"),
    (dict(grad_clip=-1.0), "train.grad_clip must be at least 0, got -1.0"),
    (dict(edge_w=1.5), "train.edge_w must be less than 1, got 1.5"),
    (dict(eval_split="tset"), "unknown split 'tset' in train.eval_split; did you mean 'test'?"),
    (dict(loss_weights={"semseg": -1.0}), "train.loss_weights.semseg must be at least 0, got -1.0"),
    (dict(lr=float("nan")), "train.lr must be a finite number, got nan"),
])
def test_bad_numbers_are_one_line_before_any_work(synth_root, tmp_path, capsys, train_kw, message):
    params = write_params(tmp_path / "params.yaml", synth_root, **train_kw)
    code, _, err = run_cli(capsys, "train", "--experiment", "tiny_pascal", "--params", params,
                           "--runs", tmp_path / "runs", "-q")
    assert code == 2
    assert message in one_line(err)
    assert not (tmp_path / "runs").exists()


def test_cuda_without_a_gpu_is_one_line(synth_root, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    params = write_params(tmp_path / "params.yaml", synth_root, device="cuda:1")
    code, _, err = run_cli(capsys, "train", "--experiment", "tiny_pascal", "--params", params,
                           "--runs", tmp_path / "runs", "-q")
    assert code == 2 and "device cuda:1 asked for, but no GPU is visible" in one_line(err)


def test_runs_pointing_at_a_file_is_one_line(synth_root, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", synth_root, iterations=1)
    afile = tmp_path / "runs"
    afile.write_text("not a folder")
    code, _, err = run_cli(capsys, "train", "--experiment", "tiny_pascal", "--params", params,
                           "--runs", afile)
    assert code == 2 and f"{afile} is a file, not a folder" in one_line(err)


def _corrupt_copy(synth_root: Path, tmp_path: Path, edit) -> Path:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root / "smoke", root / "smoke")
    edit(root / "smoke" / "synth-pascal")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_label_is_one_line_naming_the_sample_with_or_without_loader_workers(
        synth_root, tmp_path, capsys, workers):
    def edit(folder: Path) -> None:
        path = folder / "semseg" / "train_000003.png"
        label = np.asarray(Image.open(path)).copy()
        label[0, 0] = 200
        Image.fromarray(label).save(path)

    root = _corrupt_copy(synth_root, tmp_path, edit)
    params = write_params(tmp_path / "params.yaml", root.parent / "nope", workers=workers, iterations=8)
    code, _, err = run_cli(capsys, "train", "--experiment", "tiny_pascal", "--params", params,
                           "--runs", tmp_path / "runs", "--root", root / "smoke", "-q")
    assert code == 2
    line = one_line(err)
    assert "semseg label of sample 'train_000003' holds 200 (1 pixels; allowed: 0..9, or 255 = ignore" in line
    assert "DataLoader worker" not in line


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_read_by_a_worker_is_the_same_one_line(synth_root, tmp_path, capsys, workers):
    def edit(folder: Path) -> None:
        (folder / "images" / "train_000005.png").write_bytes(b"\x89PNG garbage")

    root = _corrupt_copy(synth_root, tmp_path, edit)
    params = write_params(tmp_path / "params.yaml", root.parent / "nope", workers=workers, iterations=8)
    code, _, err = run_cli(capsys, "train", "--experiment", "tiny_pascal", "--params", params,
                           "--runs", tmp_path / "runs", "--root", root / "smoke", "-q")
    assert code == 2
    assert "cannot read image" in one_line(err) and "train_000005.png" in err


def test_duplicate_keys_in_params_are_rejected(synth_root, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", synth_root)
    twice = "experiments:\n  tiny_nyud: {model: x, dataset: y}\n"
    text = params.read_text().replace("experiments:\n", twice, 1)
    params.write_text(text)
    code, _, err = run_cli(capsys, "data", "check", "synth-pascal", "--params", params)
    assert code == 2 and "key 'tiny_nyud' is given twice (first on line" in one_line(err)


# ----------------------------------------------------------------------------------------------------------
# Disk full, file modes


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(synth_root, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    argv = ["train", "--experiment", "tiny_pascal", "--runs", runs, "-q", "--params"]
    assert run_cli(capsys, *argv, write_params(tmp_path / "a.yaml", synth_root, iterations=4))[0] == 0
    longer = write_params(tmp_path / "b.yaml", synth_root, iterations=6)
    import io

    from densemoe import atomic

    real = atomic.os.fdopen

    class Full(io.FileIO):
        def write(self, b):
            raise OSError(28, "No space left on device")

    def fdopen(fd, mode="r", *a, **k):
        return Full(fd, "wb") if "w" in mode else real(fd, mode, *a, **k)

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)
    before = (runs / "tiny_pascal" / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(capsys, *argv, longer)
    assert code == 2
    assert "no space left on " in one_line(err) and "writing " in err
    assert temporaries(runs / "tiny_pascal") == []
    assert (runs / "tiny_pascal" / "checkpoint.pt").read_bytes() == before


def test_a_real_small_disk_is_one_line(synth_root, tmp_path, capsys):
    """A 1 MiB tmpfs as the run folder (where this machine lets the tests mount one; else skipped)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        params = write_params(tmp_path / "params.yaml", synth_root, iterations=2)
        code, _, err = run_cli(capsys, "train", "--experiment", "tiny_pascal", "--params", params,
                               "--runs", mnt, "-q")
        assert code == 2
        assert f"no space left on {mnt} writing {mnt / 'tiny_pascal'}" in one_line(err)
        assert temporaries(mnt / "tiny_pascal") == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_run_files_honour_the_umask(synth_root, tmp_path):
    old = os.umask(0o022)
    try:
        exp = _exp(synth_root, tmp_path, iterations=2)
        train(exp, progress=False)
    finally:
        os.umask(old)
    for path in [exp.run_dir / n for n in ("checkpoint.pt", "config.yaml", "history.csv", "metrics.json")]:
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert (exp.run_dir / "evals").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(("name", "content", "message"), [
    ("checkpoint.pt", b"PK\x03\x04 truncated", "cannot read checkpoint"),
    ("history.csv", b"iteration,loss\n1,0.5\nabc,0.4\n", "cannot read the run log"),
])
def test_a_damaged_run_file_is_one_line_naming_restart(synth_root, tmp_path, capsys, name, content, message):
    params = write_params(tmp_path / "params.yaml", synth_root, iterations=2)
    argv = ["train", "--experiment", "tiny_pascal", "--params", params, "--runs", tmp_path / "runs", "-q"]
    assert run_cli(capsys, *argv)[0] == 0
    (tmp_path / "runs" / "tiny_pascal" / name).write_bytes(content)
    longer = write_params(tmp_path / "params.yaml", synth_root, iterations=3)
    code, _, err = run_cli(capsys, *argv[:4], longer, *argv[5:])
    assert code == 2 and message in one_line(err) and "re-run with --restart" in err
    assert run_cli(capsys, *argv[:4], longer, *argv[5:], "--restart")[0] == 0
