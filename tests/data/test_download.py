"""download / verify / safe_extract / fetch, for real against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from densemoe.data import nyud
from densemoe.data.download import ArchiveSpec, direct_url, download, fetch, safe_extract, verify
from densemoe.errors import DataError
from fixtures import build_nyud, build_pascal, evil_tar, make_tar


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def payload(n: int = 300_000) -> bytes:
    return np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def assert_clean(root: Path, keep: tuple[str, ...] = ("archives",)) -> None:
    """No dataset folder, temp dir or stray file in ``root`` besides ``keep``; no .part in archives."""
    assert sorted(p.name for p in root.iterdir() if p.name not in keep) == []
    if (root / "archives").exists():
        assert [p.name for p in (root / "archives").iterdir() if p.suffix == ".part"] == []


# --------------------------------------------------------------------------------------- links


def test_direct_url_rewrites_share_links():
    sp = "https://x-my.sharepoint.com/:u:/g/personal/a/TOKEN?e=2Ex4ab"
    assert direct_url(sp) == "https://x-my.sharepoint.com/:u:/g/personal/a/TOKEN?e=2Ex4ab&download=1"
    assert direct_url(sp + "&download=0").endswith("e=2Ex4ab&download=1")
    drive = "https://drive.google.com/file/d/14EAEMXmd3zs2hIMY63UhHPSFPDAkiTzw/view?usp=sharing"
    assert direct_url(drive) == "https://drive.google.com/uc?export=download&id=14EAEMXmd3zs2hIMY63UhHPSFPDAkiTzw"
    assert direct_url("https://drive.google.com/open?id=abc-1") == "https://drive.google.com/uc?export=download&id=abc-1"
    assert direct_url("http://127.0.0.1:1/a.tar.gz") == "http://127.0.0.1:1/a.tar.gz"


# ------------------------------------------------------------------------------------ download


def test_download_streams_and_renames(server, tmp_path):
    body = payload()
    dest = download(server.add("/a.tar.gz", body), tmp_path / "a.tar.gz", progress=False)
    assert dest.read_bytes() == body
    assert not (tmp_path / "a.tar.gz.part").exists()
    assert server.ranges_seen("/a.tar.gz") == []


def test_resume_completes_part_with_range_request(server, tmp_path):
    body = payload()
    half = len(body) // 2
    (tmp_path / "a.tar.gz.part").write_bytes(body[:half])
    dest = download(server.add("/a.tar.gz", body), tmp_path / "a.tar.gz", size=len(body), progress=False)
    assert server.ranges_seen("/a.tar.gz") == [f"bytes={half}-"]
    assert verify(dest, md5(body), len(body)) == md5(body)


def test_server_ignoring_range_restarts_from_scratch(server, tmp_path):
    body = payload()
    (tmp_path / "a.tar.gz.part").write_bytes(b"x" * 1000)  # not even a prefix of the file
    url = server.add("/a.tar.gz", body, ranges=False)
    dest = download(url, tmp_path / "a.tar.gz", progress=False)
    assert server.ranges_seen("/a.tar.gz") == ["bytes=1000-"]
    assert dest.read_bytes() == body


def test_complete_part_with_416_is_accepted(server, tmp_path):
    body = payload(5000)
    (tmp_path / "a.bin.part").write_bytes(body)
    dest = download(server.add("/a.bin", body), tmp_path / "a.bin", size=len(body), progress=False)
    assert dest.read_bytes() == body


def test_cut_connection_keeps_part_then_resumes(server, tmp_path):
    body = payload()
    url = server.add("/a.tar.gz", body, drop_after=100_000)
    with pytest.raises(DataError) as exc:
        download(url, tmp_path / "a.tar.gz", progress=False)
    msg = one_line(exc)
    assert msg.startswith(f"cannot download {url} (connection closed after 100000 of {len(body)} bytes)")
    assert f"by hand into {tmp_path / 'a.tar.gz'}" in msg
    assert (tmp_path / "a.tar.gz.part").stat().st_size == 100_000
    assert not (tmp_path / "a.tar.gz").exists()
    server.routes["/a.tar.gz"].drop_after = None
    dest = download(url, tmp_path / "a.tar.gz", progress=False)
    assert server.ranges_seen("/a.tar.gz") == ["bytes=100000-"]
    assert dest.read_bytes() == body


def test_html_instead_of_archive(server, tmp_path):
    url = server.add("/share", b"<!DOCTYPE html><html><body>Sign in</body></html>", content_type="text/html")
    with pytest.raises(DataError) as exc:
        download(url, tmp_path / "PASCALContext.tar.gz", progress=False)
    msg = one_line(exc)
    assert msg.startswith(f"{url} returned an HTML page instead of the archive PASCALContext.tar.gz")
    assert list(tmp_path.iterdir()) == []


def test_html_sniffed_without_content_type(server, tmp_path):
    url = server.add("/share", b"\n<html><body>quota exceeded</body></html>")
    with pytest.raises(DataError, match="returned an HTML page"):
        download(url, tmp_path / "a.tar.gz", progress=False)


def test_google_drive_confirm_page_is_followed(server, tmp_path):
    body = payload()
    server.add("/download", body)
    page = (
        '<html><form id="download-form" action="{}" method="get">'
        '<input type="hidden" name="id" value="abc"><input type="hidden" name="export" value="download">'
        '<input type="hidden" name="confirm" value="t0k"></form></html>'
    ).format(server.url("/download"))
    url = server.add("/uc", page.encode(), content_type="text/html; charset=utf-8")
    dest = download(url + "?export=download&id=abc", tmp_path / "a.tgz", progress=False)
    assert dest.read_bytes() == body
    confirmed = [p for p, _ in server.requests if p.startswith("/download?")]
    assert len(confirmed) == 1 and "confirm=t0k" in confirmed[0] and "id=abc" in confirmed[0]


def test_google_drive_legacy_confirm_link(server, tmp_path):
    body = payload()
    page = b'<html><a href="/uc?export=download&amp;confirm=Zx9_&amp;id=abc">Download anyway</a></html>'
    url = server.add("/uc", page, content_type="text/html")
    server.add("/uc?id=abc&confirm=Zx9_", body)
    assert download(url + "?id=abc", tmp_path / "a.tgz", progress=False).read_bytes() == body


def test_google_drive_warning_cookie(server, tmp_path):
    body = payload()
    url = server.add("/uc", b"<html>large file</html>", content_type="text/html",
                     headers={"Set-Cookie": "download_warning_13058=CK1; Path=/"})
    server.add("/uc?id=abc&confirm=CK1", body)
    assert download(url + "?id=abc", tmp_path / "a.tgz", progress=False).read_bytes() == body


def test_confirm_is_tried_once(server, tmp_path):
    page = b'<html><a href="/uc?confirm=Zx9_">Download anyway</a></html>'
    url = server.add("/uc", page, content_type="text/html")
    with pytest.raises(DataError, match="returned an HTML page"):
        download(url, tmp_path / "a.tgz", progress=False)
    assert len(server.requests) == 2


def test_network_error_names_url_and_manual_route(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/NYUDv2.tar.gz"
    with pytest.raises(DataError) as exc:
        download(url, tmp_path / "NYUDv2.tar.gz", progress=False, timeout=5)
    msg = one_line(exc)
    assert msg.startswith(f"cannot download {url} (")
    assert msg.endswith(f"or download the file by hand into {tmp_path / 'NYUDv2.tar.gz'}")


def test_http_404(server, tmp_path):
    with pytest.raises(DataError, match=r"cannot download .*/missing.tar.gz \(HTTP 404 Not Found\)"):
        download(server.url("/missing.tar.gz"), tmp_path / "x.tar.gz", progress=False)


# -------------------------------------------------------------------------------------- verify


def test_verify_checksum_mismatch(tmp_path):
    f = tmp_path / "a.tar.gz"
    f.write_bytes(b"hello")
    with pytest.raises(DataError) as exc:
        verify(f, "0" * 32, 5)
    assert one_line(exc) == (
        f"checksum mismatch for {f}: expected md5 {'0' * 32}, got {md5(b'hello')}; "
        "delete it and re-run `densemoe data fetch`"
    )


def test_verify_size_checked_first(tmp_path):
    f = tmp_path / "a.tar.gz"
    f.write_bytes(b"hello")
    with pytest.raises(DataError, match=r"size mismatch for .*a.tar.gz: expected 6 bytes, got 5; delete it"):
        verify(f, md5(b"hello"), 6)


def test_verify_sha256(tmp_path):
    f = tmp_path / "a"
    f.write_bytes(b"hello")
    verify(f, md5(b"hello"), 5, sha256=hashlib.sha256(b"hello").hexdigest())
    with pytest.raises(DataError, match="expected sha256"):
        verify(f, md5(b"hello"), 5, sha256="ab" * 32)


def test_verify_unpinned_logs_md5_to_pin(tmp_path, caplog):
    f = tmp_path / "a.tar.gz"
    f.write_bytes(b"hello")
    with caplog.at_level(logging.WARNING, logger="densemoe.data.download"):
        assert verify(f, None, None) == md5(b"hello")
    assert f"computed md5 {md5(b'hello')}, size 5" in caplog.text
    assert "params.yaml" in caplog.text


# -------------------------------------------------------------------------------- safe_extract


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_safe_extract_tar_formats(tmp_path, mode):
    src = tmp_path / "src" / "NYUDv2"
    (src / "gt_sets").mkdir(parents=True)
    (src / "gt_sets" / "train.txt").write_text("a\n")
    arc = make_tar(src, tmp_path / "a.tar", mode)
    safe_extract(arc, tmp_path / "out")
    assert (tmp_path / "out" / "NYUDv2" / "gt_sets" / "train.txt").read_text() == "a\n"


def test_safe_extract_zip_and_unsafe_zip(tmp_path):
    arc = tmp_path / "a.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("NYUDv2/gt_sets/train.txt", "a\n")
    safe_extract(arc, tmp_path / "out")
    assert (tmp_path / "out" / "NYUDv2" / "gt_sets" / "train.txt").exists()
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(DataError, match=r"unsafe member '\.\./escaped.txt' in .*a.zip: '\.\.' path"):
        safe_extract(arc, tmp_path / "out2")
    assert not (tmp_path / "escaped.txt").exists()


def test_safe_extract_allows_links_inside(tmp_path):
    arc = tmp_path / "a.tar"
    with tarfile.open(arc, "w") as tf:
        link = tarfile.TarInfo("D/sub/link")
        link.type, link.linkname = tarfile.SYMTYPE, "../file.txt"
        tf.addfile(link)
    safe_extract(arc, tmp_path / "out")
    assert os.readlink(tmp_path / "out" / "D" / "sub" / "link") == "../file.txt"


@pytest.mark.parametrize(
    ("kind", "why"),
    [("dotdot", "'..' path"), ("absolute", "absolute path"), ("symlink", "link to '../../outside' outside"),
     ("hardlink", "link to '../outside' outside"), ("device", "device or fifo")],
)
def test_fetch_refuses_unsafe_members(server, tmp_path, kind, why):
    arc, member = evil_tar(tmp_path / "src" / "evil.tar.gz", kind)
    root = tmp_path / "data"
    spec = ArchiveSpec("pascal-context", server.add("/evil.tar.gz", arc.read_bytes()), "PASCALContext.tar.gz")
    with pytest.raises(DataError) as exc:
        fetch(spec, root, progress=False)
    msg = one_line(exc)
    assert msg.startswith(f"unsafe member '{member}' in {root / 'archives' / 'PASCALContext.tar.gz'}: {why}")
    assert_clean(root)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "outside").exists()
    assert not Path("/tmp/densemoe-escaped.txt").exists()


# --------------------------------------------------------------------------------------- fetch


def test_fetch_is_idempotent_and_force_refetches(server, tmp_path, pascal_archive):
    url = server.add("/PASCALContext.tar.gz", pascal_archive)
    spec = ArchiveSpec(
        "pascal-context", url, "PASCALContext.tar.gz", md5(pascal_archive), len(pascal_archive)
    )
    root = tmp_path / "data"
    out = fetch(spec, root, progress=False)
    assert out == root / "PASCALContext" and (out / "JPEGImages" / "2008_000001.jpg").is_file()
    assert_clean(root, keep=("archives", "PASCALContext"))
    assert fetch(spec, root, progress=False) == out
    assert len(server.requests) == 1  # the second fetch neither downloads nor re-extracts
    (out / "marker").write_text("old copy")
    assert fetch(spec, root, progress=False, force=True) == out
    assert len(server.requests) == 2 and not (out / "marker").exists()
    assert_clean(root, keep=("archives", "PASCALContext"))


def test_fetch_reuses_verified_archive(server, tmp_path, pascal_archive):
    root = tmp_path / "data"
    (root / "archives").mkdir(parents=True)
    (root / "archives" / "PASCALContext.tar.gz").write_bytes(pascal_archive)
    spec = ArchiveSpec("pascal-context", server.url("/nowhere"), "PASCALContext.tar.gz", md5(pascal_archive))
    assert fetch(spec, root, progress=False).is_dir()
    assert server.requests == []


def test_fetch_wrong_checksum_leaves_no_dataset(server, tmp_path, pascal_archive):
    url = server.add("/p.tgz", pascal_archive)
    spec = ArchiveSpec("pascal-context", url, "PASCALContext.tar.gz", "f" * 32)
    root = tmp_path / "data"
    with pytest.raises(DataError) as exc:
        fetch(spec, root, progress=False)
    assert one_line(exc).startswith(f"checksum mismatch for {root / 'archives' / 'PASCALContext.tar.gz'}: ")
    assert_clean(root)


def test_fetch_truncated_archive(server, tmp_path, pascal_archive):
    spec = ArchiveSpec("pascal-context", server.add("/p.tgz", pascal_archive[: len(pascal_archive) // 2]),
                       "PASCALContext.tar.gz")
    root = tmp_path / "data"
    with pytest.raises(DataError) as exc:
        fetch(spec, root, progress=False)
    msg = one_line(exc)
    assert msg.startswith(f"truncated or corrupt archive {root / 'archives' / 'PASCALContext.tar.gz'}: ")
    assert msg.endswith("delete it and re-run `densemoe data fetch`")
    assert_clean(root)


def test_fetch_not_an_archive(server, tmp_path):
    spec = ArchiveSpec("nyud-v2", server.add("/n.tgz", b"just some bytes" * 100), "NYUDv2.tar.gz")
    with pytest.raises(DataError, match="truncated or corrupt archive"):
        fetch(spec, tmp_path, progress=False)
    assert_clean(tmp_path)


def test_fetch_html_instead_of_archive(server, tmp_path):
    url = server.add("/share", b"<html>Sign in to SharePoint</html>", content_type="text/html")
    with pytest.raises(DataError, match=r"returned an HTML page instead of the archive NYUDv2\.tar\.gz"):
        fetch(ArchiveSpec("nyud-v2", url, "NYUDv2.tar.gz"), tmp_path, progress=False)
    assert_clean(tmp_path)


def test_fetch_refuses_mtl_pytorch_nyud(server, tmp_path):
    arc = make_tar(build_nyud(tmp_path / "src", "mtl"), tmp_path / "src" / "NYUD_MT.tgz")
    root = tmp_path / "data"
    spec = ArchiveSpec("nyud-v2", server.add("/NYUD_MT.tgz", arc.read_bytes()), "NYUD_MT.tgz")
    with pytest.raises(DataError) as exc:
        fetch(spec, root, progress=False)
    msg = one_line(exc)
    arc_path = root / "archives" / "NYUD_MT.tgz"
    assert msg.startswith(f"the archive {arc_path} holds the MTL-PyTorch NYUD_MT copy")
    assert "(found images/*.jpg, normals/*.npy, edge/*.npy" in msg
    assert "480×640 images" in msg and "448×576" in msg and nyud.SOURCE_URL in msg
    assert_clean(root)


def test_fetch_incomplete_archive(server, tmp_path):
    src = build_pascal(tmp_path / "src")
    for f in (src / "normals_distill").iterdir():  # the DeMT re-upload lacks normals and saliency
        f.unlink()
    (src / "normals_distill").rmdir()
    arc = make_tar(src, tmp_path / "src" / "p.tgz")
    root = tmp_path / "data"
    with pytest.raises(DataError) as exc:
        spec = ArchiveSpec("pascal-context", server.add("/p.tgz", arc.read_bytes()), "p.tgz")
        fetch(spec, root, progress=False)
    assert one_line(exc).startswith(
        f"archive {root / 'archives' / 'p.tgz'} does not hold a complete pascal-context dataset "
        "(missing normals_distill); delete it and check the URL data.archives.pascal-context.url"
    )
    assert_clean(root)


def test_fetch_existing_incomplete_folder_is_not_overwritten(server, tmp_path):
    (tmp_path / "NYUDv2" / "images").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        fetch(ArchiveSpec("nyud-v2", server.url("/x"), "NYUDv2.tar.gz"), tmp_path, progress=False)
    assert f"move {tmp_path / 'NYUDv2'} away" in one_line(exc)
    assert server.requests == []
