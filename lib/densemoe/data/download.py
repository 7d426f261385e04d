"""Download, verify and extract the real dataset archives (DESIGN §8).

``fetch(spec, data_root)`` is what ``densemoe data fetch NAME`` runs, holding the lock
``<data_root>/.<folder>.lock`` for all of its work (and ``.<archive>.lock`` in the archive folder, which
profiles share, while it downloads, verifies and extracts the archive), so two fetches of one dataset
never interleave: the second fails at once with one line naming the first. It first deletes what a
killed fetch left in ``data_root`` (``.fetch-<folder>-*``, ``.<folder>.old-*``), then streams the
archive to ``<archives>/<archive>.part`` (resumed with an HTTP ``Range`` request when a ``.part`` is
there), checks the complete ``.part`` against the size and md5 pinned in ``params.yaml`` and only then
renames it to the archive's name: a download that fails the check is deleted (the next run downloads
afresh), and with ``force`` the verified archive is replaced only by a verified new one. The archive is
extracted into a temporary folder inside ``data_root`` (refusing members that would land outside it),
checked against the dataset's layout and only then published as ``<data_root>/<folder>``
(``densemoe/atomic.py``).

A download that stalls ends as curl's ``--speed-time``/``--speed-limit`` would: when the last
``stall_timeout`` seconds brought fewer than ``min_rate`` bytes/s (no byte at all included: the socket
timeout is bounded by ``stall_timeout``), or after ``deadline`` seconds in all (0 = none). Every failure
is one line (:class:`~densemoe.errors.DataError`, or :class:`~densemoe.atomic.DiskFullError` when the disk
is full), and leaves no half-written file or folder under a final name; only the ``.part`` is kept, so
that the next run resumes.

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
import math
import os
import re
import shutil
import tarfile
import time
import zipfile
import zlib
from collections import deque
from dataclasses import dataclass
from http.client import HTTPException
from http.cookiejar import CookieJar
from pathlib import Path, PurePosixPath
from urllib import error, parse, request

from tqdm import tqdm

from densemoe.atomic import (
    _disk_full,
    disk_full_error,
    make_dirs,
    publish_dir,
    remove_stale,
    stale_patterns,
    temp_dir,
)
from densemoe.data.dataset import Layout, check_layout, get_layout
from densemoe.errors import DataError, DensemoeError
from densemoe.lock import FolderLock

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SNIFF = 512  # bytes read before deciding whether a body is an HTML page


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


class _Stalled(Exception):
    """The download is too slow, silent or late (:class:`_Watch`); ``why`` and ``fix`` are for the message."""

    def __init__(self, why: str, fix: str) -> None:
        super().__init__(why)
        self.why, self.fix = why, fix


class _Watch:
    """curl's ``--speed-time``/``--speed-limit`` and a total deadline, checked at every read."""

    def __init__(self, stall_timeout: float, min_rate: float, deadline: float) -> None:
        if not stall_timeout > 0 or not min_rate >= 0 or not deadline >= 0:
            raise ValueError(f"need stall_timeout > 0, min_rate >= 0, deadline >= 0; got {stall_timeout}, "
                             f"{min_rate}, {deadline}")
        self.stall_timeout, self.min_rate, self.deadline = stall_timeout, min_rate, deadline
        self.started = time.monotonic()
        self.timeout, self.until_deadline, self.answered = stall_timeout, False, False
        self.connected()

    def connected(self, answered: bool = False) -> None:
        """A new response: the ``stall_timeout`` window starts again."""
        self.answered = answered
        self.since = time.monotonic()
        self.recent: deque[tuple[float, int]] = deque()
        self.in_window = 0

    def late(self) -> _Stalled:
        return _Stalled(f"not complete after the {self.deadline:g} s of data.download.deadline",
                        "to allow more time, raise data.download.deadline in params.yaml, 0 = no limit")

    def silent(self) -> _Stalled:
        """The socket timed out: no answer to the request, or no byte of the body."""
        if self.until_deadline or self.expired():
            return self.late()
        return _Stalled(f"no {'byte' if self.answered else 'answer'} for {self.timeout:g} s",
                        "for a slow server, raise data.download.stall_timeout in params.yaml")

    def expired(self) -> bool:
        return bool(self.deadline) and time.monotonic() - self.started >= self.deadline

    def socket_timeout(self, timeout: float | None) -> float:
        """The socket timeout for the next request: ``stall_timeout``, or less if the deadline is nearer."""
        t = self.stall_timeout if timeout is None else min(timeout, self.stall_timeout)
        left = self.deadline - (time.monotonic() - self.started) if self.deadline else math.inf
        if left <= 0:
            raise self.late()
        self.timeout, self.until_deadline, self.answered = min(t, left), left <= t, False
        return self.timeout

    def got(self, n: int) -> None:
        """``n`` more bytes arrived (and are stored): raise :class:`_Stalled` if too slow or too late."""
        now = time.monotonic()
        self.recent.append((now, n))
        self.in_window += n
        while self.recent[0][0] < now - self.stall_timeout:
            self.in_window -= self.recent.popleft()[1]
        if self.deadline and now - self.started >= self.deadline:
            raise self.late()
        if now - self.since >= self.stall_timeout and self.in_window < self.min_rate * self.stall_timeout:
            raise _Stalled(
                f"{self.in_window} bytes in the last {self.stall_timeout:g} s, below data.download.min_rate "
                f"{self.min_rate:g} B/s",
                "for a slow link, raise data.download.stall_timeout or lower data.download.min_rate in "
                "params.yaml",
            )


def _resume(part: Path) -> str:
    n = part.stat().st_size if part.exists() else 0
    return f"the {n} bytes so far are kept in {part}: re-run to resume" if n else "nothing came: re-run"


def _fail(url: str, dest: Path, why: object) -> DataError:
    part = dest.with_suffix(dest.suffix + ".part")
    n = part.stat().st_size if part.exists() else 0
    resumes = f"the {n} bytes so far in {part} resume" if n else "a partial download resumes"
    return DataError(
        f"cannot download {url} ({why}); check the network and re-run ({resumes}), "
        f"or download the file by hand into {dest}"
    )


def _range_start(resp) -> int | None:
    m = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def _open(opener, url: str, offset: int, timeout: float):
    """``(response, None)``; on 416 to a Range request ``(None, the file's size if the server says it)``."""
    req = request.Request(url, headers={"User-Agent": "densemoe", "Accept-Encoding": "identity"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        return opener.open(req, timeout=timeout), None
    except error.HTTPError as exc:
        if exc.code == 416 and offset:
            m = re.match(r"bytes\s+\*/(\d+)", (exc.headers or {}).get("Content-Range", ""))
            exc.close()
            return None, int(m.group(1)) if m else None  # the .part holds every byte, or is too long
        raise


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)


def download(
    url: str, dest: Path, *, size: int | None = None, md5: str | None = None, sha256: str | None = None,
    progress: bool = True, timeout: float | None = None, stall_timeout: float = 60.0,
    min_rate: float = 1024.0, deadline: float = 0.0,
) -> Path:
    """Stream ``url`` to ``dest`` through ``dest.part`` (resumed when there); returns ``dest``.

    The complete ``.part`` is checked (size, md5, sha256 where given, as :func:`verify`) and only then
    renamed to ``dest``; one that fails the check is deleted. The download ends when the last
    ``stall_timeout`` seconds brought fewer than ``min_rate`` bytes/s, when no byte came for
    ``stall_timeout`` seconds (or ``timeout``, if smaller), or ``deadline`` seconds after the start
    (0 = none); the ``.part`` is then kept for the next run to resume.
    """
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    watch = _Watch(stall_timeout, min_rate, deadline)
    jar = CookieJar()
    opener = request.build_opener(request.HTTPCookieProcessor(jar))
    target, confirmed, afresh = direct_url(url), False, False
    try:
        make_dirs(dest.parent)
        while True:
            offset = part.stat().st_size if part.exists() and not afresh else 0
            resp, full = _open(opener, target, offset, watch.socket_timeout(timeout))
            if resp is None:  # 416: complete if the size agrees, else start again
                if (size if size is not None else full) == offset:
                    break
                log.info("%s is longer than the file at %s; downloading it from the start", part, target)
                part.unlink()
                continue
            watch.connected(answered=True)
            with resp:
                start = _range_start(resp)
                if resp.status == 206 and start != offset:
                    if not offset:
                        raise OSError(f"the server answered a request for the whole file with bytes from "
                                      f"{start}")
                    log.warning("%s answered a Range request for byte %d with bytes from %s; downloading %s "
                                "from the start", target, offset, start, dest.name)
                    afresh = True
                    continue
                if offset and resp.status != 206:
                    log.info("%s ignores Range requests; downloading %s from the start", target, dest.name)
                    offset = 0
                total = size if size is not None else (None if resp.length is None else offset + resp.length)
                page = _stream(resp, part, offset, total, watch, dest.name, progress)
                if page is not None:
                    text = page.decode("utf-8", "replace")
                    nxt = None if confirmed else _confirm_url(text, resp.geturl(), jar)
                    if nxt is None:
                        raise DataError(
                            f"{url} returned an HTML page instead of the archive {dest.name} (a login, "
                            f"quota or share page?); download it in a browser into {dest}"
                        )
                    target, confirmed = nxt, True
                    continue
            break
        problem, _ = _mismatch(part, md5, size, sha256, dest)
        if problem:
            part.unlink()
            raise DataError(f"{problem}; the download was deleted: re-run `densemoe data fetch` to download "
                            "it afresh, or correct the value pinned in params.yaml if the file changed")
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.replace(part, dest)
    except DensemoeError:
        raise
    except _Stalled as exc:
        raise DataError(f"cannot download {url} ({exc.why}); {_resume(part)} ({exc.fix})") from None
    except error.HTTPError as exc:
        raise _fail(url, dest, f"HTTP {exc.code} {exc.reason}") from exc
    except (error.URLError, HTTPException, OSError, ValueError) as exc:
        if _disk_full(exc):
            raise disk_full_error(part) from exc
        if _is_timeout(exc):
            stall = watch.silent()
            raise DataError(f"cannot download {url} ({stall.why}); {_resume(part)} ({stall.fix})") from exc
        raise _fail(url, dest, getattr(exc, "reason", None) or exc) from exc
    return dest


class _PartFile:
    """The ``.part`` from byte ``offset`` on, opened at the first write (an HTML page never touches it)."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path, self.offset, self.written = path, offset, offset
        self.f = None

    def write(self, data: bytes) -> None:
        if self.f is None:
            self.f = open(self.path, "r+b" if self.offset else "wb")  # closed in __exit__
            self.f.seek(self.offset)
            self.f.truncate()
        self.f.write(data)
        self.written += len(data)

    def __enter__(self) -> _PartFile:
        return self

    def __exit__(self, *exc) -> None:
        if self.f is not None:
            self.f.close()


def _read_into(resp, buf: bytearray, limit: int, watch: _Watch) -> None:
    while len(buf) < limit and (chunk := resp.read1(limit - len(buf))):
        buf += chunk
        watch.got(len(chunk))


def _stream(
    resp, part: Path, offset: int, total: int | None, watch: _Watch, label: str, progress: bool
) -> bytes | None:
    """Write ``resp``'s body into ``part`` from byte ``offset``; return it instead if it is an HTML page.

    Reads return what the socket has (``read1``), so that :class:`_Watch` sees a trickle as it comes.
    """
    head = bytearray()
    if offset == 0 and "text/html" in resp.headers.get("Content-Type", ""):
        _read_into(resp, head, 2 * CHUNK, watch)
        return bytes(head)
    with _PartFile(part, offset) as f, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
        disable=not progress, leave=False,
    ) as bar:
        if offset == 0:  # sniff the first bytes: a share or login page served as octet-stream
            try:
                _read_into(resp, head, SNIFF, watch)
            except BaseException:
                if head and not _is_html(resp, bytes(head)):
                    f.write(bytes(head))  # what came before a stall is kept for the resume
                raise
            if _is_html(resp, bytes(head)):
                _read_into(resp, head, CHUNK, watch)
                return bytes(head)
        chunk = bytes(head)
        f.write(chunk)  # also creates the .part of an empty file
        bar.update(len(chunk))
        while chunk := resp.read1(CHUNK):
            f.write(chunk)
            bar.update(len(chunk))
            watch.got(len(chunk))
        written = f.written
    if total is not None and written < total:
        raise OSError(f"connection closed after {written} of {total} bytes")
    return None


def file_digest(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(
    path: Path, md5: str | None, size: int | None, sha256: str | None, label: Path
) -> tuple[str | None, str]:
    """(what is wrong with ``path``, named ``label`` in the message, or None; its md5); logs the md5 if
    none is pinned."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size mismatch for {label}: expected {size} bytes, got {actual}", ""
    digest = file_digest(path, "md5")
    if md5 is None:
        log.warning(
            "no md5 pinned for %s; computed md5 %s, size %d: pin them under data.archives in params.yaml",
            label.name, digest, actual,
        )
    elif digest != md5.lower():
        return f"checksum mismatch for {label}: expected md5 {md5}, got {digest}", digest
    if sha256 is not None and (got := file_digest(path, "sha256")) != sha256.lower():
        return f"checksum mismatch for {label}: expected sha256 {sha256}, got {got}", digest
    return None, digest


def verify(path: Path, md5: str | None, size: int | None = None, *, sha256: str | None = None) -> str:
    """Check ``path``'s size, then md5 (and sha256 if given); returns the md5."""
    path = Path(path)
    problem, digest = _mismatch(path, md5, size, sha256, path)
    if problem:
        raise DataError(f"{problem}; delete it and re-run `densemoe data fetch`")
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
    progress: bool = True, force: bool = False, stall_timeout: float = 60.0, min_rate: float = 1024.0,
    deadline: float = 0.0,
) -> Path:
    """Download, verify, extract and check ``spec``; returns ``<data_root>/<layout.folder>``.

    The archive is kept in ``archive_dir`` (default ``<data_root>/archives``; the CLI uses
    ``data/archives``, which ``data.dvc`` records). Idempotent: an existing complete dataset folder
    is returned as is, unless ``force``, which downloads the archive again (the one there is replaced
    only by a verified new one) and re-extracts it. ``stall_timeout``, ``min_rate`` and ``deadline``
    (``data.download`` in params.yaml) are :func:`download`'s. Raises
    :class:`~densemoe.lock.LockedError` while another fetch of the dataset runs.
    """
    layout = get_layout(spec.name)
    root = Path(data_root)
    final = root / layout.folder
    with FolderLock(root, f"data fetch {spec.name}", path=root / f".{layout.folder}.lock"):
        patterns = [f".fetch-{layout.folder}-*", *stale_patterns(layout.folder)]
        stale = remove_stale(root, patterns, recursive=False)  # no live fetch owns them: we hold the lock
        if stale:
            log.info("removed what an interrupted fetch of %s left in %s: %s", spec.name, root,
                     ", ".join(p.name for p in stale))
        if final.exists() and not force:
            try:
                check_layout(layout, final)
            except DataError as exc:
                hint = f"or move {final} away and re-run `densemoe data fetch {spec.name}`"
                raise DataError(f"{exc} ({hint})") from exc
            log.info("%s is already in place in %s", spec.name, final)
            return final
        archive = Path(archive_dir or root / "archives") / spec.archive
        # profiles share the archive folder: a fetch of the same archive into another data root is refused too
        archive_lock = archive.parent / f".{archive.name}.lock"
        with FolderLock(archive.parent, f"data fetch {spec.name}", path=archive_lock):
            if force or not archive.exists():
                download(spec.url, archive, size=spec.size, md5=spec.md5, sha256=spec.sha256,
                         progress=progress, stall_timeout=stall_timeout, min_rate=min_rate, deadline=deadline)
            else:
                verify(archive, spec.md5, spec.size, sha256=spec.sha256)
            _extract(spec, layout, archive, root, final)
    log.info("%s extracted into %s", spec.name, final)
    return final


def _extract(spec: ArchiveSpec, layout: Layout, archive: Path, root: Path, final: Path) -> None:
    """Extract ``archive`` into a temporary folder of ``root``, check it, publish it as ``final``."""
    tmp = None
    try:
        tmp = temp_dir(root, f".fetch-{layout.folder}-")
        safe_extract(archive, tmp)
        extracted = _locate(tmp, layout.folder)
        _check_extracted(spec, layout, archive, extracted)
        publish_dir(extracted, final)  # with force, the old folder goes only once the new one is in place
    except DensemoeError:
        raise
    except OSError as exc:
        if _disk_full(exc):
            raise disk_full_error(final) from exc
        raise DataError(f"cannot extract {archive} into {final} ({exc}); fix that and re-run "
                        f"`densemoe data fetch {spec.name}`") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
