"""The one temp-file discipline of densemoe: every file and folder we write appears whole or not at all.

- :func:`atomic_write` writes a temporary sibling ``.<name>.<random>.tmp`` and ``os.replace``-s it into
  place (DESIGN §7); :func:`write_json` is the one JSON writer on top of it, strict (no bare ``NaN``).
- :func:`temp_dir` + :func:`publish_dir` do the same for folders (a generated or extracted dataset).
- Files and folders get the modes the umask gives (``mkstemp``/``mkdtemp`` alone would leave 0600/0700).
- A write that runs out of space is one line, ``no space left on <mount> writing <path>``, whatever layer
  noticed it (torch's writer reports ENOSPC as an opaque "unexpected pos"; the OSError is its context).
- A process killed mid-write leaves its temporary behind; :func:`remove_stale` deletes those at the next
  start of the same command, which holds the folder's lock (``densemoe/lock.py``): no live writer owns them.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from densemoe.errors import DensemoeError

#: The name pattern of :func:`atomic_write`'s temporaries, for :func:`remove_stale`.
TEMP_FILES = ".*.tmp"


class DiskFullError(DensemoeError, OSError):
    """The file system ran out of space (or quota) while writing."""


class NonFiniteValueError(DensemoeError, ValueError):
    """A NaN or infinity on its way into a JSON file (strict parsers reject bare ``NaN``)."""


def umask() -> int:
    """The process's umask (read without changing it where ``/proc`` tells it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _mount_of(path: Path) -> str:
    path = Path(os.path.abspath(path))
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it arose from is ENOSPC/EDQUOT."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(path: str | os.PathLike) -> DiskFullError:
    folder = Path(path).parent
    return DiskFullError(f"no space left on {_mount_of(folder)} writing {path}; free space there (or point "
                         "the output elsewhere) and re-run: the previous file, if any, is kept")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], fsync: bool = False) -> Path:
    """Call ``write(f)`` on a binary temporary file beside ``path`` and rename it to ``path``.

    The file gets mode ``0666 & ~umask``. Running out of space raises :class:`DiskFullError`.
    """
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except Exception as exc:
        if _disk_full(exc):
            raise disk_full_error(path) from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def _non_finite(obj: Any, where: str = "") -> str | None:
    """The key path of the first NaN/inf in ``obj`` (dicts and lists), or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "the value")
    if isinstance(obj, dict):
        items: Iterable = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        if (bad := _non_finite(v, f"{where}.{k}" if where else str(k))) is not None:
            return bad
    return None


def write_json(path: str | os.PathLike, obj: Any, **dumps) -> Path:
    """Write ``obj`` as strict JSON, atomically; a NaN/inf is a :class:`NonFiniteValueError` naming its key
    (``json.dumps`` would write bare ``NaN``, which strict parsers and ``jq`` reject)."""
    bad = _non_finite(obj)
    if bad is not None:
        raise NonFiniteValueError(f"refusing to write a non-finite value ({bad}) into {path}")
    return write_text(path, json.dumps(obj, allow_nan=False, **dumps) + "\n")


def make_dirs(folder: str | os.PathLike) -> Path:
    """``mkdir -p``; a path component that is a file (``--out``/``--runs`` naming a file) is one line."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise DensemoeError(f"{blocker} is a file, not a folder; cannot create {folder} (choose another "
                            "path or move the file)") from exc
    return folder


def temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new empty folder ``<parent>/<prefix><random>`` with the umask's mode (``mkdtemp`` gives 0700)."""
    parent = make_dirs(parent)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def publish_dir(tmp: Path, final: Path) -> Path:
    """Move the complete folder ``tmp`` to ``final``, replacing an old ``final`` only once ``tmp`` is in place
    (a folder cannot be renamed over a non-empty one: the old one is moved aside first, then deleted)."""
    if not final.exists():
        os.replace(tmp, final)
        return final
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, aside / final.name)
    try:
        os.replace(tmp, final)
    except OSError:
        os.replace(aside / final.name, final)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    return final


def stale_patterns(name: str) -> tuple[str, ...]:
    """What an interrupted :func:`publish_dir` of ``<folder>/<name>`` can leave in ``<folder>``."""
    return (f".{name}.old-*",)


def remove_stale(folder: str | os.PathLike, patterns: Iterable[str] = (TEMP_FILES,),
                 recursive: bool = True) -> list[Path]:
    """Delete the files and folders under ``folder`` whose names match ``patterns`` (the temporaries of
    writers that were killed). Call it while holding the folder's lock. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = tuple(patterns)
    removed = []
    entries = folder.rglob(".*") if recursive else folder.glob(".*")
    for path in sorted(entries, key=lambda p: len(p.parts)):
        if not any(fnmatch.fnmatchcase(path.name, p) for p in patterns) or not os.path.lexists(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
