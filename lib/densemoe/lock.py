"""One lock per folder that a command writes: a run folder, or a dataset being generated or fetched.

``with FolderLock(folder, "train"):`` holds ``<folder>/.densemoe.lock``, or fails at once with one line
naming the holder (command, pid, host and since when) and how to go on. The lock is a ``flock`` on that file,
so the kernel drops it when its process dies, even by ``kill -9``; the JSON inside (pid, host, since,
command) is for the message. A file left by a dead holder is taken over with a warning. While the lock is
held, the temporaries that killed writers left in the folder are stale by construction, and the caller
removes them (``densemoe/atomic.py`` :func:`~densemoe.atomic.remove_stale`).

``flock`` also works across the hosts of a cluster on NFSv4 and Lustre mounts (where the node holding it
dies, the server releases it when the lease expires).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path

from densemoe.atomic import make_dirs
from densemoe.errors import DensemoeError

log = logging.getLogger("densemoe")
LOCK_NAME = ".densemoe.lock"


class LockedError(DensemoeError, RuntimeError):
    """Another live process holds the folder's lock."""


def _holder(text: str) -> dict:
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict) -> str:
    if not info:
        return "another process"
    return (f"'{info.get('command', '?')}' (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"since {info.get('since', '?')})")


class FolderLock:
    """An exclusive, non-blocking lock on ``folder`` for ``command`` (a word for the message: ``train``)."""

    def __init__(self, folder: str | os.PathLike, command: str,
                 path: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder)
        self.path = Path(path) if path is not None else self.folder / LOCK_NAME
        self.command = command
        self.fd: int | None = None
        self.taken_over: dict | None = None

    def acquire(self) -> FolderLock:
        make_dirs(self.path.parent)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise LockedError(
                    f"{self.folder} is in use by {_describe(_holder(text))}; wait for it to finish, or stop "
                    f"it, then re-run (a process that died leaves no lock: it is taken over)") from None
            # The holder before us may have unlinked the file between our open and our flock: retry on the
            # path's current file, so that two processes can never hold locks on two different files.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if old:
            self.taken_over = old
            log.warning("densemoe: took over the lock of %s left by %s, which is no longer running",
                        self.folder, _describe(old))
        info = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "argv": sys.argv[1:]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # unlink before unlocking: a waiter then re-checks the path (acquire)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
