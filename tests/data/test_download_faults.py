"""Faults in download / verify / extract / fetch, injected with the real HTTP server on 127.0.0.1.

Every fault must end in one line (DataError, DiskFullError or LockedError), never lose the verified
archive, never leave half-written data under a final name, and keep the ``.part`` for the resume.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import densemoe.data.download as dl
from densemoe.atomic import DiskFullError
from densemoe.data.download import ArchiveSpec, download, fetch
from densemoe.errors import DataError
from densemoe.lock import FolderLock, LockedError

FAST = {"stall_timeout": 0.3, "min_rate": 1024.0}  # the tests' data.download


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def payload(n: int = 300_000) -> bytes:
    return np.random.default_rng(2).integers(0, 256, n, dtype=np.uint8).tobytes()


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def pascal_spec(server, body: bytes, **route) -> ArchiveSpec:
    url = server.add("/PASCALContext.tar.gz", body, **route)
    return ArchiveSpec("pascal-context", url, "PASCALContext.tar.gz", md5(body), len(body))


def leftovers(root: Path) -> list[str]:
    """Temporary folders of a fetch in ``root`` (none may survive a fetch, failed or not)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".fetch-") or ".old-" in p.name)


# ------------------------------------------------------------- the verified archive is never lost


@pytest.fixture
def fetched(server, tmp_path, pascal_archive):
    """A fetched pascal-context (archive verified, dataset in place, a marker in it)."""
    spec = pascal_spec(server, pascal_archive)
    root = tmp_path / "data"
    out = fetch(spec, root, progress=False)
    (out / "marker").write_text("old copy")
    return spec, root, root / "archives" / "PASCALContext.tar.gz"


def test_force_keeps_verified_archive_when_server_fails(server, fetched, pascal_archive):
    spec, root, archive = fetched
    server.routes["/PASCALContext.tar.gz"].status = 500
    with pytest.raises(DataError) as exc:
        fetch(spec, root, progress=False, force=True)
    assert one_line(exc).startswith(f"cannot download {spec.url} (HTTP 500 ")
    assert archive.read_bytes() == pascal_archive
    assert (root / "PASCALContext" / "marker").read_text() == "old copy"
    assert not archive.with_name(archive.name + ".part").exists() and leftovers(root) == []


def test_force_keeps_verified_archive_when_offline_then_resumes(server, fetched, pascal_archive):
    spec, root, archive = fetched
    part = archive.with_name(archive.name + ".part")
    server.routes["/PASCALContext.tar.gz"].drop_after = 1000
    with pytest.raises(DataError) as exc:
        fetch(spec, root, progress=False, force=True)
    assert f"connection closed after 1000 of {len(pascal_archive)} bytes" in one_line(exc)
    assert archive.read_bytes() == pascal_archive and part.read_bytes() == pascal_archive[:1000]
    assert (root / "PASCALContext" / "marker").exists()
    server.routes["/PASCALContext.tar.gz"].drop_after = None
    fetch(spec, root, progress=False, force=True)
    assert server.ranges_seen("/PASCALContext.tar.gz") == ["bytes=1000-"]
    assert archive.read_bytes() == pascal_archive and not part.exists()
    assert not (root / "PASCALContext" / "marker").exists() and leftovers(root) == []


@pytest.mark.parametrize("fault", ["flipped byte", "extra bytes"])
def test_corrupt_download_is_deleted_and_rerun_downloads_afresh(server, tmp_path, pascal_archive, fault):
    bad = bytearray(pascal_archive)
    if fault == "flipped byte":
        bad[len(bad) // 2] ^= 0xFF
    else:
        bad += b"\0" * 100
    spec = pascal_spec(server, bytes(bad))
    spec = ArchiveSpec(spec.name, spec.url, spec.archive, md5(pascal_archive), len(pascal_archive))
    root = tmp_path / "data"
    archive = root / "archives" / "PASCALContext.tar.gz"
    with pytest.raises(DataError) as exc:
        fetch(spec, root, progress=False)
    msg = one_line(exc)
    kind = "checksum" if fault == "flipped byte" else "size"
    assert msg.startswith(f"{kind} mismatch for {archive}: expected ")
    assert "the download was deleted: re-run `densemoe data fetch` to download it afresh" in msg
    assert sorted(p.name for p in archive.parent.iterdir()) == []  # nothing under the complete name
    assert sorted(p.name for p in root.iterdir()) == ["archives"]
    server.routes["/PASCALContext.tar.gz"].body = pascal_archive
    assert fetch(spec, root, progress=False).is_dir()
    assert len(server.requests) == 2 and server.ranges_seen("/PASCALContext.tar.gz") == []
    assert archive.read_bytes() == pascal_archive


def test_short_content_length_with_pinned_size_resumes(server, tmp_path):
    body = payload()
    url = server.add("/a.bin", body, length=1000)  # the server announces (and sends) only 1000 bytes
    dest, part = tmp_path / "a.bin", tmp_path / "a.bin.part"
    with pytest.raises(DataError) as exc:
        download(url, dest, size=len(body), md5=md5(body), progress=False, **FAST)
    assert f"(connection closed after 1000 of {len(body)} bytes)" in one_line(exc)
    assert not dest.exists() and part.read_bytes() == body[:1000]
    server.routes["/a.bin"].length = None
    assert download(url, dest, size=len(body), md5=md5(body), progress=False, **FAST).read_bytes() == body
    assert server.ranges_seen("/a.bin") == ["bytes=1000-"]


def test_long_content_length_is_a_cut_connection(server, tmp_path):
    body = payload(5000)
    url = server.add("/a.bin", body, length=6000)
    with pytest.raises(DataError) as exc:
        download(url, tmp_path / "a.bin", progress=False, **FAST)
    msg = one_line(exc)
    assert "(connection closed after 5000 of 6000 bytes)" in msg
    assert f"the 5000 bytes so far in {tmp_path / 'a.bin.part'} resume" in msg
    assert not (tmp_path / "a.bin").exists()


def test_http_500_on_resume_keeps_part(server, tmp_path):
    body = payload()
    part = tmp_path / "a.bin.part"
    part.write_bytes(body[:1000])
    url = server.add("/a.bin", body, range_status=500)
    with pytest.raises(DataError) as exc:
        download(url, tmp_path / "a.bin", size=len(body), progress=False, **FAST)
    msg = one_line(exc)
    assert msg.startswith(f"cannot download {url} (HTTP 500 ")
    assert f"the 1000 bytes so far in {part} resume" in msg
    assert part.read_bytes() == body[:1000] and not (tmp_path / "a.bin").exists()
    server.routes["/a.bin"].range_status = None
    assert download(url, tmp_path / "a.bin", size=len(body), progress=False, **FAST).read_bytes() == body


def test_server_failing_once_then_ok(server, tmp_path):
    body = payload(5000)
    url = server.add("/a.bin", body, fail=1, fail_status=503)
    with pytest.raises(DataError, match=r"\(HTTP 503 "):
        download(url, tmp_path / "a.bin", progress=False, **FAST)
    assert download(url, tmp_path / "a.bin", progress=False, **FAST).read_bytes() == body


@pytest.mark.parametrize("shift", [-100, 100])
def test_range_answer_from_wrong_byte_restarts(server, tmp_path, shift):
    body = payload()
    (tmp_path / "a.bin.part").write_bytes(body[:1000])
    url = server.add("/a.bin", body, range_shift=shift)
    dest = download(url, tmp_path / "a.bin", size=len(body), md5=md5(body), progress=False, **FAST)
    assert dest.read_bytes() == body
    assert [h.get("Range") for _, h in server.requests] == ["bytes=1000-", None]


def test_complete_part_with_416_and_no_pinned_size_is_kept(server, tmp_path):
    body = payload(5000)
    (tmp_path / "a.bin.part").write_bytes(body)
    dest = download(server.add("/a.bin", body), tmp_path / "a.bin", progress=False, **FAST)
    assert dest.read_bytes() == body and len(server.requests) == 1


# ------------------------------------------------------------------------------ stalls and deadline


def test_trickle_ends_after_stall_timeout_then_resumes(server, tmp_path, pascal_archive):
    spec = pascal_spec(server, pascal_archive, trickle=0.05)  # 20 B/s
    root = tmp_path / "data"
    part = root / "archives" / "PASCALContext.tar.gz.part"
    t0 = time.monotonic()
    with pytest.raises(DataError) as exc:
        fetch(spec, root, progress=False, **FAST)
    elapsed = time.monotonic() - t0
    msg = one_line(exc)
    assert 0.3 <= elapsed < 3.0
    n = part.stat().st_size
    assert 0 < n < 40 and part.read_bytes() == pascal_archive[:n]
    assert msg.startswith(f"cannot download {spec.url} (")
    assert " bytes in the last 0.3 s, below data.download.min_rate 1024 B/s)" in msg
    assert f"the {n} bytes so far are kept in {part}: re-run to resume" in msg
    assert "raise data.download.stall_timeout or lower data.download.min_rate in params.yaml" in msg
    assert sorted(p.name for p in root.iterdir()) == ["archives"]
    server.routes["/PASCALContext.tar.gz"].trickle = None
    assert fetch(spec, root, progress=False, **FAST).is_dir()
    assert server.ranges_seen("/PASCALContext.tar.gz") == [f"bytes={n}-"]


@pytest.mark.parametrize("min_rate", [1024.0, 0.0])
def test_silent_server_ends_after_stall_timeout_then_resumes(server, tmp_path, min_rate):
    body = payload()
    url = server.add("/a.bin", body, stall_after=1000)
    part = tmp_path / "a.bin.part"
    t0 = time.monotonic()
    with pytest.raises(DataError) as exc:
        download(url, tmp_path / "a.bin", size=len(body), progress=False, stall_timeout=0.3,
                 min_rate=min_rate)
    assert time.monotonic() - t0 < 3.0
    assert one_line(exc) == (
        f"cannot download {url} (no byte for 0.3 s); the 1000 bytes so far are kept in {part}: re-run to "
        "resume (for a slow server, raise data.download.stall_timeout in params.yaml)"
    )
    assert part.read_bytes() == body[:1000]
    server.routes["/a.bin"].stall_after = None
    assert download(url, tmp_path / "a.bin", size=len(body), progress=False, **FAST).read_bytes() == body
    assert server.ranges_seen("/a.bin") == ["bytes=1000-"]


def test_server_that_never_answers(server, tmp_path):
    url = server.add("/a.bin", b"x", delay=10)
    t0 = time.monotonic()
    with pytest.raises(DataError) as exc:
        download(url, tmp_path / "a.bin", progress=False, **FAST)
    assert time.monotonic() - t0 < 3.0
    msg = one_line(exc)
    assert msg.startswith(f"cannot download {url} (no answer for 0.3 s); nothing came: re-run (for a slow")
    assert list(tmp_path.iterdir()) == []


def test_deadline_ends_a_steady_download_then_resumes(server, tmp_path):
    body = payload(20_000)
    url = server.add("/a.bin", body, trickle=0.005)  # steady but slow: min_rate is off, the deadline ends it
    part = tmp_path / "a.bin.part"
    t0 = time.monotonic()
    with pytest.raises(DataError) as exc:
        download(url, tmp_path / "a.bin", progress=False, stall_timeout=0.3, min_rate=0, deadline=0.4)
    assert 0.4 <= time.monotonic() - t0 < 3.0
    n = part.stat().st_size
    assert one_line(exc) == (
        f"cannot download {url} (not complete after the 0.4 s of data.download.deadline); the {n} bytes so "
        f"far are kept in {part}: re-run to resume (to allow more time, raise data.download.deadline in "
        "params.yaml, 0 = no limit)"
    )
    assert 0 < n < len(body) and part.read_bytes() == body[:n]
    server.routes["/a.bin"].trickle = None
    assert download(url, tmp_path / "a.bin", progress=False, **FAST).read_bytes() == body
    assert server.ranges_seen("/a.bin") == [f"bytes={n}-"]


def test_fetch_passes_deadline_on(server, tmp_path, pascal_archive):
    spec = pascal_spec(server, pascal_archive, trickle=0.005)
    with pytest.raises(DataError, match=r"not complete after the 0\.2 s of data\.download\.deadline"):
        fetch(spec, tmp_path / "data", progress=False, stall_timeout=5, min_rate=0, deadline=0.2)


# ------------------------------------------------------------------------------ lock and temp folders


def test_fetch_refuses_while_the_dataset_is_locked(server, tmp_path, pascal_archive):
    spec = pascal_spec(server, pascal_archive)
    root = tmp_path / "data"
    with FolderLock(root, "data fetch pascal-context", path=root / ".PASCALContext.lock"):
        with pytest.raises(LockedError) as exc:
            fetch(spec, root, progress=False)
        assert one_line(exc).startswith(f"{root} is in use by 'data fetch pascal-context' (pid {os.getpid()}")
    assert server.requests == [] and not (root / "PASCALContext").exists()
    assert fetch(spec, root, progress=False).is_dir()


def test_fetch_refuses_while_the_shared_archive_is_locked(server, tmp_path, pascal_archive):
    spec = pascal_spec(server, pascal_archive)
    archives = tmp_path / "archives"  # shared by the profiles' data roots, as data/archives is
    with FolderLock(archives, "data fetch pascal-context", path=archives / ".PASCALContext.tar.gz.lock"):
        with pytest.raises(LockedError, match=f"^{archives} is in use by 'data fetch pascal-context'"):
            fetch(spec, tmp_path / "paper", archive_dir=archives, progress=False)
    assert server.requests == []
    assert fetch(spec, tmp_path / "paper", archive_dir=archives, progress=False).is_dir()


def test_lock_is_held_during_the_download(server, tmp_path, pascal_archive):
    spec = pascal_spec(server, pascal_archive, stall_after=1000)
    root = tmp_path / "data"
    part = root / "archives" / "PASCALContext.tar.gz.part"
    errors: list[BaseException] = []

    def first() -> None:
        try:
            fetch(spec, root, progress=False, stall_timeout=1.0)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        for _ in range(200):
            if part.exists():
                break
            time.sleep(0.01)
        assert part.exists()
        with pytest.raises(LockedError, match="in use by 'data fetch pascal-context'"):
            fetch(spec, root, progress=False, **FAST)
    finally:
        thread.join(5)
    assert len(errors) == 1 and "no byte for 1 s" in str(errors[0])
    assert len(server.requests) == 1


def test_stale_temp_folders_are_removed_and_part_resumed(server, tmp_path, pascal_archive, caplog):
    spec = pascal_spec(server, pascal_archive)
    root = tmp_path / "data"
    for stale in (".fetch-PASCALContext-k1ll3d", ".fetch-PASCALContext-abc.old", ".PASCALContext.old-x9"):
        (root / stale / "PASCALContext").mkdir(parents=True)
        (root / stale / "PASCALContext" / "junk").write_text("half")
    (root / ".fetch-NYUDv2-other").mkdir()  # another dataset's: not ours to remove
    (root / "archives").mkdir()
    (root / "archives" / "PASCALContext.tar.gz.part").write_bytes(pascal_archive[:1000])
    with caplog.at_level(logging.INFO, logger="densemoe.data.download"):
        assert fetch(spec, root, progress=False).is_dir()
    assert sorted(p.name for p in root.iterdir()) == [".fetch-NYUDv2-other", "PASCALContext", "archives"]
    assert "removed what an interrupted fetch of pascal-context left" in caplog.text
    assert ".fetch-PASCALContext-k1ll3d" in caplog.text
    assert server.ranges_seen("/PASCALContext.tar.gz") == ["bytes=1000-"]  # the .part is not stale


def flat_tar(folder: Path) -> bytes:
    """``folder``'s contents at the top of the archive (no single top folder)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for child in sorted(folder.iterdir()):
            tf.add(child, arcname=child.name)
    return buf.getvalue()


def test_dataset_folder_mode_follows_umask(server, tmp_path):
    from fixtures import build_pascal

    body = flat_tar(build_pascal(tmp_path / "src"))
    spec = pascal_spec(server, body)
    old = os.umask(0o022)
    try:
        out = fetch(spec, tmp_path / "data", progress=False)
    finally:
        os.umask(old)
    assert (out / "JPEGImages").is_dir()
    assert out.stat().st_mode & 0o777 == 0o755


# -------------------------------------------------------------------------------------- disk full


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            self._f.write(data[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def test_disk_full_while_downloading_keeps_the_verified_archive(server, fetched, pascal_archive, monkeypatch):
    spec, root, archive = fetched
    real_open = open

    def full_open(path, mode="r", *args, **kw):
        f = real_open(path, mode, *args, **kw)
        return _FullDisk(f, 1000) if "w" in mode or "+" in mode else f

    monkeypatch.setattr(dl, "open", full_open, raising=False)
    with pytest.raises(DiskFullError) as exc:
        fetch(spec, root, progress=False, force=True)
    part = archive.with_name(archive.name + ".part")
    msg = one_line(exc)
    assert msg.startswith("no space left on ") and f" writing {part}; free space there" in msg
    assert archive.read_bytes() == pascal_archive and part.read_bytes() == pascal_archive[:1000]
    assert (root / "PASCALContext" / "marker").exists() and leftovers(root) == []
    monkeypatch.undo()
    fetch(spec, root, progress=False, force=True)
    assert server.ranges_seen("/PASCALContext.tar.gz") == ["bytes=1000-"]


@pytest.mark.parametrize(
    ("err", "expected"),
    [(OSError(errno.ENOSPC, "No space left on device"), DiskFullError),
     (PermissionError(errno.EACCES, "Permission denied"), DataError)],
)
def test_os_error_while_extracting_is_one_line(server, fetched, monkeypatch, err, expected):
    spec, root, archive = fetched

    def failing_extract(arc: Path, dest: Path) -> None:
        (dest / "PASCALContext").mkdir()
        (dest / "PASCALContext" / "half").write_bytes(b"x")
        raise err

    monkeypatch.setattr(dl, "safe_extract", failing_extract)
    with pytest.raises(expected) as exc:
        fetch(spec, root, progress=False, force=True)
    msg = one_line(exc)
    if expected is DiskFullError:
        assert "no space left on " in msg and f" writing {root / 'PASCALContext'}; free space there" in msg
    else:
        assert msg.startswith(f"cannot extract {archive} into {root / 'PASCALContext'} (")
        assert "re-run `densemoe data fetch pascal-context`" in msg
    assert (root / "PASCALContext" / "marker").exists() and leftovers(root) == []
