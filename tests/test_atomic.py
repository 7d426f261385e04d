"""The shared fault mechanisms: atomic writes (modes, full disk, strict JSON), folder publishing, stale
temporaries, the folder lock, the validation layer and the one error path of the command line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from densemoe.atomic import (
    DiskFullError,
    NonFiniteValueError,
    atomic_write,
    make_dirs,
    publish_dir,
    remove_stale,
    temp_dir,
    write_json,
)
from densemoe.cli import report_failure
from densemoe.errors import DataError, DensemoeError
from densemoe.lock import LOCK_NAME, FolderLock, LockedError
from densemoe.validate import Range, arg_int, check_device


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_write_honours_the_umask(tmp_path, umask022):
    path = atomic_write(tmp_path / "a" / "f.bin", lambda f: f.write(b"x"))
    assert path.stat().st_mode & 0o777 == 0o644
    os.umask(0o077)
    assert atomic_write(tmp_path / "g.bin", lambda f: f.write(b"x")).stat().st_mode & 0o777 == 0o600


def test_temp_dir_honours_the_umask_and_publish_replaces_a_folder(tmp_path, umask022):
    final = tmp_path / "ds"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = temp_dir(tmp_path, ".ds.tmp-")
    assert tmp.stat().st_mode & 0o777 == 0o755
    (tmp / "new.txt").write_text("new")
    publish_dir(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no aside folder left
    assert final.stat().st_mode & 0o777 == 0o755


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text() == "old" and sorted(tmp_path.iterdir()) == [path]


def test_enospc_is_one_line_even_through_torch_save(tmp_path, monkeypatch):
    """torch.save reports a full disk as RuntimeError('unexpected pos ...') whose context is the ENOSPC."""
    import io

    from densemoe import atomic

    class Full(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    real = atomic.os.fdopen
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode="r", *a, **k: Full(fd, "wb") if "w" in mode
                        else real(fd, mode, *a, **k))
    with pytest.raises(DiskFullError) as info:
        atomic_write(tmp_path / "c.pt", lambda f: torch.save({"w": torch.zeros(100_000)}, f))
    message = str(info.value)
    assert message.startswith("no space left on /") and f"writing {tmp_path / 'c.pt'}" in message
    assert list(tmp_path.iterdir()) == []


def test_write_json_is_strict(tmp_path):
    write_json(tmp_path / "ok.json", {"a": 1.5, "b": [1, 2.0], "c": {"d": None}})
    assert json.loads((tmp_path / "ok.json").read_text()) == {"a": 1.5, "b": [1, 2.0], "c": {"d": None}}
    for bad, key in (({"semseg/miou": float("nan")}, "semseg/miou"), ({"x": [1.0, float("inf")]}, "x.1"),
                     ({"b": {"c": float("-inf")}}, "b.c")):
        with pytest.raises(NonFiniteValueError, match=rf"non-finite value \({key}\)"):
            write_json(tmp_path / "bad.json", bad)
    assert not (tmp_path / "bad.json").exists()


def test_make_dirs_names_the_file_in_the_way(tmp_path):
    (tmp_path / "runs").write_text("a file")
    with pytest.raises(DensemoeError, match=f"{tmp_path / 'runs'} is a file, not a folder"):
        make_dirs(tmp_path / "runs" / "exp" / "evals")


def test_remove_stale_matches_only_its_patterns(tmp_path):
    (tmp_path / "evals").mkdir()
    stale = [tmp_path / ".checkpoint.pt.abc.tmp", tmp_path / "evals" / ".iter_000002.json.x.tmp"]
    keep = [tmp_path / "checkpoint.pt", tmp_path / ".hidden", tmp_path / "a.tmp", tmp_path / LOCK_NAME]
    for p in stale + keep:
        p.write_text("x")
    assert sorted(remove_stale(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep)
    (tmp_path / ".synth-pascal.tmp-k2").mkdir()
    (tmp_path / ".synth-pascal.tmp-k2" / "f").write_text("x")
    removed = remove_stale(tmp_path, [".synth-pascal.tmp-*"], recursive=False)
    assert removed == [tmp_path / ".synth-pascal.tmp-k2"]


def test_lock_names_the_holder_and_is_released(tmp_path):
    with FolderLock(tmp_path, "densemoe train --experiment x"):
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "densemoe train --experiment x"
        with pytest.raises(LockedError) as err:
            FolderLock(tmp_path, "densemoe evaluate").acquire()
        holder = f"'densemoe train --experiment x' (pid {os.getpid()} on "
        assert f"{tmp_path} is in use by {holder}" in str(err.value)
    assert not (tmp_path / LOCK_NAME).exists()
    with FolderLock(tmp_path, "again") as lock:
        assert lock.taken_over is None  # released cleanly: no warning next time


def test_lock_is_held_across_processes(tmp_path):
    code = f"from densemoe.lock import FolderLock; FolderLock({str(tmp_path)!r}, 'child').acquire()"
    with FolderLock(tmp_path, "parent"):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and "is in use by 'parent'" in done.stderr


def test_ranges_and_devices():
    assert Range(ge=1).problem(0) == "must be at least 1"
    assert Range(gt=0, le=1).problem(1.5) == "must be at most 1"
    assert Range(gt=0).problem(float("inf")) == "must be a finite number"
    assert Range(gt=0).problem(0.5) is None
    for ok in ("auto", "cpu", "cuda", "cuda:3", "mps"):
        assert check_device(ok) == ok
    for bad in ("gpu", "cuda:x", "CPU", ""):
        with pytest.raises(DensemoeError, match="unknown device"):
            check_device(bad)
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 1, got 0"):
        arg_int(ge=1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="must be an integer, got 'x'"):
        arg_int(ge=1)("x")


class _Bad(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise DataError(f"cannot read image /data/x/{i}.png (truncated); the file is corrupt, re-fetch it")


def test_an_error_in_a_dataloader_worker_keeps_its_one_line():
    with pytest.raises(DataError) as info:
        next(iter(DataLoader(_Bad(), batch_size=2, num_workers=1)))
    assert str(info.value) == "cannot read image /data/x/0.png (truncated); the file is corrupt, re-fetch it"
    assert "Traceback" in info.value.worker_traceback


def test_report_failure_is_one_line_for_every_kind(capsys):
    cases = [
        (DataError("bad file x"), 2, "densemoe: error: bad file x"),
        (KeyboardInterrupt(), 130, "densemoe: interrupted; nothing half-written was kept"),
        (PermissionError(errno.EACCES, "Permission denied", "/ro/out.json"), 2,
         "densemoe: error: cannot use /ro/out.json: Permission denied"),
        (OSError(errno.ENOSPC, "No space left on device", "/tmp/x.pt"), 2,
         "densemoe: error: no space left on /"),
        (ZeroDivisionError("float division by zero"), 1,
         "densemoe: internal error: ZeroDivisionError: float division by zero (a bug in densemoe"),
    ]
    for exc, status, start in cases:
        assert report_failure(exc) == status
        err = capsys.readouterr().err
        assert err.startswith(start) and err.count("\n") == 1, err
