"""Download, verify and extract the real dataset archives (DESIGN §8).

``fetch(spec, data_root)`` is what ``densemoe data fetch NAME`` runs: the archive is streamed to
``<data_root>/archives/<archive>.part`` (resumed with an HTTP ``Range`` request when a ``.part`` is
there), renamed once complete, checked against the size and md5 pinned in ``params.yaml``, extracted
into a temporary folder inside ``data_root`` (refusing members that would land outside it), checked
against the dataset's layout and only then renamed to ``<data_root>/<folder>``. Any failure leaves
no half-written dataset folder behind; only a ``.part`` is kept, so that the next run resumes.

The published links are a SharePoint share link and Google-Drive ids (``specs/ecosystem.md`` §4.1):
:func:`direct_url` turns them into download links and :func:`download` follows Drive's "can't scan
this file for viruses" confirmation page. Their checksums are not published: with ``md5: null`` the
computed md5 and size are logged so that they can be pinned after the first download.
"""

from __future__ import annotations

import hashlib
import html
import logging
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from http.cookiejar import CookieJar
from pathlib import Path, PurePosixPath
from urllib import error, parse, request

from tqdm import tqdm

from densemoe.data.dataset import Layout, check_layout, get_layout
from densemoe.errors import DataError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveSpec:
    """One real dataset archive: ``name`` is the dataset (``pascal-context``, ``nyud-v2``)."""

    name: str
    url: str
    archive: str
    md5: str | None = None
    size: int | None = None
    sha256: str | None = None


def direct_url(url: str) -> str:
    """A share link → its direct download: SharePoint ``download=1``; Drive ``uc?export=download``."""
    parts = parse.urlsplit(url)
    host = parts.hostname or ""
    if host.endswith("sharepoint.com"):
        query = [(k, v) for k, v in parse.parse_qsl(parts.query) if k != "download"] + [("download", "1")]
        return parse.urlunsplit(parts._replace(query=parse.urlencode(query)))
    if host in ("drive.google.com", "docs.google.com"):
        m = re.search(r"/file/d/([\w-]+)", parts.path)
        file_id = m.group(1) if m else dict(parse.parse_qsl(parts.query)).get("id")
        if file_id:
            return f"https://drive.google.com/uc?export=download&id={file_id}"
    return url


def _confirm_url(page: str, base: str, jar: CookieJar) -> str | None:
    """The link behind Google Drive's virus-scan warning page, or None if ``page`` is not one."""
    form = re.search(r'<form\b[^>]*\bid="download-form"[^>]*>', page)
    action = re.search(r'\baction="([^"]+)"', form.group(0)) if form else None
    if action:
        fields = []
        for tag in re.findall(r"<input\b[^>]*>", page[form.end():]):
            attrs = dict(re.findall(r'\b(type|name|value)="([^"]*)"', tag))
            if attrs.get("type") == "hidden" and "name" in attrs:
                fields.append((attrs["name"], html.unescape(attrs.get("value", ""))))
        target = parse.urljoin(base, html.unescape(action.group(1)))
        return f"{target}?{parse.urlencode(fields)}"
    token = next((c.value for c in jar if c.name.startswith("download_warning")), None)
    m = re.search(r"confirm=([\w-]+)", page)
    token = token or (m.group(1) if m else None)
    if token:
        return f"{base}{'&' if '?' in base else '?'}confirm={token}"
    return None


def _is_html(resp, head: bytes) -> bool:
    ctype = resp.headers.get("Content-Type", "")
    return "text/html" in ctype or head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html"))


def _fail(url: str, dest: Path, why: object) -> DataError:
    return DataError(
        f"cannot download {url} ({why}); check the network and re-run (a partial download resumes), "
        f"or download the file by hand into {dest}"
    )


def _range_start(resp) -> int | None:
    m = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def _open(opener, url: str, offset: int, timeout: float):
    req = request.Request(url, headers={"User-Agent": "densemoe", "Accept-Encoding": "identity"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        return opener.open(req, timeout=timeout)
    except error.HTTPError as exc:
        if exc.code == 416 and offset:
            exc.close()
            return None  # the .part already holds every byte, or is longer than the file
        raise


def download(
    url: str, dest: Path, *, size: int | None = None, progress: bool = True, timeout: float = 60.0
) -> Path:
    """Stream ``url`` to ``dest`` (resumable through ``dest.part``); returns ``dest``."""
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    jar = CookieJar()
    opener = request.build_opener(request.HTTPCookieProcessor(jar))
    target, confirmed = direct_url(url), False
    try:
        while True:
            offset = part.stat().st_size if part.exists() else 0
            resp = _open(opener, target, offset, timeout)
            if resp is None:  # 416: complete if the size agrees, else start again
                if size is not None and offset == size:
                    break
                part.unlink()
                continue
            with resp:
                if offset and (resp.status != 206 or _range_start(resp) != offset):
                    log.info("%s ignores Range requests; downloading %s from the start", target, dest.name)
                    offset = 0
                head = resp.read(CHUNK)
                if offset == 0 and _is_html(resp, head):
                    page = (head + resp.read(CHUNK)).decode("utf-8", "replace")
                    nxt = None if confirmed else _confirm_url(page, resp.geturl(), jar)
                    if nxt is None:
                        raise DataError(
                            f"{url} returned an HTML page instead of the archive {dest.name} (a login, "
                            f"quota or share page?); download it in a browser into {dest}"
                        )
                    target, confirmed = nxt, True
                    continue
                length = resp.headers.get("Content-Length")
                total = offset + int(length) if length else size
                _stream(resp, head, part, offset, total, dest.name, progress)
            break
    except DataError:
        raise
    except error.HTTPError as exc:
        raise _fail(url, dest, f"HTTP {exc.code} {exc.reason}") from exc
    except (error.URLError, HTTPException, OSError, ValueError) as exc:
        raise _fail(url, dest, getattr(exc, "reason", None) or exc) from exc
    os.replace(part, dest)
    return dest


def _stream(
    resp, head: bytes, part: Path, offset: int, total: int | None, label: str, progress: bool
) -> None:
    with open(part, "r+b" if offset else "wb") as f, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
        disable=not progress, leave=False,
    ) as bar:
        f.seek(offset)
        f.truncate()
        chunk, written = head, offset
        while chunk:
            f.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
            chunk = resp.read(CHUNK)
    if total is not None and written < total:
        raise OSError(f"connection closed after {written} of {total} bytes")


def file_digest(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, md5: str | None, size: int | None = None, *, sha256: str | None = None) -> str:
    """Check ``path``'s size, then md5 (and sha256 if given); returns the md5."""
    path = Path(path)
    again = "delete it and re-run `densemoe data fetch`"
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DataError(f"size mismatch for {path}: expected {size} bytes, got {actual}; {again}")
    digest = file_digest(path, "md5")
    if md5 is None:
        log.warning(
            "no md5 pinned for %s; computed md5 %s, size %d: pin them under data.archives in params.yaml",
            path.name, digest, actual,
        )
    elif digest != md5.lower():
        raise DataError(f"checksum mismatch for {path}: expected md5 {md5}, got {digest}; {again}")
    if sha256 is not None and (got := file_digest(path, "sha256")) != sha256.lower():
        raise DataError(f"checksum mismatch for {path}: expected sha256 {sha256}, got {got}; {again}")
    return digest


def _check_member(archive: Path, m: tarfile.TarInfo) -> tarfile.TarInfo:
    name = PurePosixPath(m.name)
    where = f"unsafe member '{m.name}' in {archive}"
    if name.is_absolute() or re.match(r"^[A-Za-z]:", m.name):
        raise DataError(f"{where}: absolute path; the archive is not a dataset archive, delete it")
    if ".." in name.parts:
        raise DataError(f"{where}: '..' path; the archive is not a dataset archive, delete it")
    if m.ischr() or m.isblk() or m.isfifo():
        raise DataError(f"{where}: device or fifo; the archive is not a dataset archive, delete it")
    if m.issym() or m.islnk():
        base = name.parent if m.issym() else PurePosixPath()
        link = PurePosixPath(m.linkname)
        depth = 0
        for p in (base / link).parts:
            depth += -1 if p == ".." else (p not in (".", ""))
            if depth < 0:
                break
        if link.is_absolute() or depth < 0:
            raise DataError(f"{where}: link to '{m.linkname}' outside the archive; delete it")
    return m


_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar (plain/gz/bz2/xz) or zip archive into ``dest``, refusing unsafe members.

    On error ``dest`` may hold part of the archive; :func:`fetch` extracts into a temporary folder.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with open(archive, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if is_zip:
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                for info in infos:
                    _check_member(archive, tarfile.TarInfo(info.filename))
                zf.extractall(dest, members=infos)
            return
        with tarfile.open(archive, "r:*") as tf:
            members = (_check_member(archive, m) for m in tf)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(dest, members=members, **kwargs)
    except DataError:
        raise
    except getattr(tarfile, "FilterError", ()) as exc:  # what the "data" filter refuses beyond our checks
        raise DataError(f"unsafe member '{exc.tarinfo.name}' in {archive}: {exc}; delete it") from exc
    except (*_CORRUPT, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno:
            raise  # a real I/O error (disk full, permissions); gzip/bz2 data errors carry no errno
        raise DataError(
            f"truncated or corrupt archive {archive}: {exc}; delete it and re-run `densemoe data fetch`"
        ) from exc


def _locate(tmp: Path, folder: str) -> Path:
    """The extracted dataset folder: ``<folder>``, else the archive's single top folder, else ``tmp``."""
    if (tmp / folder).is_dir():
        return tmp / folder
    tops = [p for p in tmp.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else tmp


def _check_extracted(spec: ArchiveSpec, layout: Layout, archive: Path, extracted: Path) -> None:
    """``check_layout`` on the extraction, with messages that name the archive, not the temp folder."""
    missing = [r for r in layout.required if not (extracted / r).exists()]
    if missing:
        raise DataError(
            f"archive {archive} does not hold a complete {layout.name} dataset "
            f"(missing {', '.join(missing)}); delete it and check the URL data.archives.{spec.name}.url "
            "in params.yaml"
        )
    try:
        check_layout(layout, extracted)
    except DataError as exc:
        raise DataError(str(exc).replace(str(extracted), f"the archive {archive}")) from exc


def fetch(
    spec: ArchiveSpec, data_root: str | Path, *, archive_dir: str | Path | None = None,
    progress: bool = True, force: bool = False,
) -> Path:
    """Download, verify, extract and check ``spec``; returns ``<data_root>/<layout.folder>``.

    The archive is kept in ``archive_dir`` (default ``<data_root>/archives``; the CLI uses
    ``data/archives``, which ``data.dvc`` records). Idempotent: an existing complete dataset folder
    is returned as is, unless ``force``.
    """
    layout = get_layout(spec.name)
    root = Path(data_root)
    final = root / layout.folder
    if final.exists() and not force:
        try:
            check_layout(layout, final)
        except DataError as exc:
            hint = f"or move {final} away and re-run `densemoe data fetch {spec.name}`"
            raise DataError(f"{exc} ({hint})") from exc
        log.info("%s is already in place in %s", spec.name, final)
        return final
    archive = Path(archive_dir or root / "archives") / spec.archive
    if force:
        archive.unlink(missing_ok=True)
    if not archive.exists():
        download(spec.url, archive, size=spec.size, progress=progress)
    verify(archive, spec.md5, spec.size, sha256=spec.sha256)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".fetch-{layout.folder}-", dir=root))
    old = tmp.with_name(tmp.name + ".old")
    try:
        safe_extract(archive, tmp)
        extracted = _locate(tmp, layout.folder)
        _check_extracted(spec, layout, archive, extracted)
        if final.exists():  # force: move the old copy away only once the new one is complete
            os.replace(final, old)
        try:
            os.replace(extracted, final)
        except OSError:
            if old.exists():
                os.replace(old, final)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    log.info("%s extracted into %s", spec.name, final)
    return final
