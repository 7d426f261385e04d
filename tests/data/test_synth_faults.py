"""`densemoe data synth` under faults: a concurrent run, a kill mid-generation, file modes, a full disk."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from densemoe.cli import main
from densemoe.lock import FolderLock

ROOT = Path(__file__).resolve().parents[2]


def params_file(tmp_path: Path, images: int = 3, root: Path | None = None) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for spec in data["data"]["synth"].values():
        spec.update(height=24, width=32, train=images, val=2, test=2, workers=1)
    data["data"]["root"] = str(root or tmp_path / "data")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def synth(capsys, params: Path, *extra) -> tuple[int, str]:
    code = main(["data", "synth", "synth-pascal", "--params", str(params), "-q", *extra])
    return code, capsys.readouterr().err


def test_a_second_synth_of_one_dataset_fails_at_once(tmp_path, capsys):
    params = params_file(tmp_path)
    data = tmp_path / "data" / "smoke"
    with FolderLock(data / "synth-pascal", "densemoe data synth synth-pascal",
                    path=data / ".synth-pascal.lock"):
        code, err = synth(capsys, params)
    assert code == 2 and err.count("\n") == 1
    holder = f"'densemoe data synth synth-pascal' (pid {os.getpid()}"
    assert f"{data / 'synth-pascal'} is in use by {holder}" in err
    assert not (data / "synth-pascal").exists()


def test_a_killed_synth_leaves_nothing_the_next_run_does_not_remove(tmp_path, capsys):
    params = params_file(tmp_path, images=4000)
    data = tmp_path / "data" / "smoke"
    cmd = [sys.executable, "-m", "densemoe.cli", "data", "synth", "synth-pascal", "--params", str(params)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60

    def started() -> bool:
        return any(any((p / "images").glob("*.png")) for p in data.glob(".synth-pascal.tmp-*"))

    while time.monotonic() < deadline and not started():
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert list(data.glob(".synth-pascal.tmp-*")), "the kill should have left a temporary folder"
    assert not (data / "synth-pascal").exists()  # never a half-written dataset under its name
    code, err = synth(capsys, params_file(tmp_path, images=3))
    assert code == 0, err
    assert sorted(p.name for p in data.iterdir() if p.name.startswith(".synth-pascal")) == []
    assert (data / "synth-pascal" / "meta.json").is_file()


def test_dataset_modes_follow_the_umask(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert synth(capsys, params_file(tmp_path))[0] == 0
    finally:
        os.umask(old)
    folder = tmp_path / "data" / "smoke" / "synth-pascal"
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "images").stat().st_mode & 0o777 == 0o755
    assert (folder / "meta.json").stat().st_mode & 0o777 == 0o644
    assert (folder / "images" / "train_000000.png").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_during_generation_is_one_line(tmp_path, capsys):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, err = synth(capsys, params_file(tmp_path, images=400, root=mnt))
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"no space left on {mnt} writing {mnt / 'smoke' / 'synth-pascal'}" in err
        assert not (mnt / "smoke" / "synth-pascal").exists()
        assert [p.name for p in (mnt / "smoke").iterdir()] == []  # the temporary folder is gone too
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
