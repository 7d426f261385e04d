"""User-facing errors: one line that names the problem and the fix.

The CLI prints ``densemoe: error: <message>`` for any :class:`DensemoeError` and exits with status 2,
never a stack trace; library callers can catch the specific subclasses.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class DensemoeError(Exception):
    """Base class of the errors a user can fix (bad input, missing files, wrong configuration).

    Raised inside a DataLoader worker, the error reaches the main process as ``type(exc)(message)`` where
    torch's message is ``Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...``; the
    constructor keeps the original one line (the worker's traceback stays in :attr:`worker_traceback`), so a
    bad file read by a worker prints the same line as with ``workers: 0``.
    """

    def __init__(self, *args: object) -> None:
        self.worker_traceback: str | None = None
        if len(args) == 1 and isinstance(args[0], str) and (line := _worker_line(args[0])) is not None:
            self.worker_traceback = args[0]
            args = (line,)
        super().__init__(*args)


WORKER_HEADER = re.compile(r"^Caught \w+ in (DataLoader worker process \d+|[^.\n]+)\.\nOriginal Traceback")


def _worker_line(message: str) -> str | None:
    """The original message inside torch's ``ExceptionWrapper`` text, or None if ``message`` is not one."""
    if not WORKER_HEADER.match(message):
        return None
    last = message.rstrip().splitlines()[-1]  # "densemoe.errors.DataError: <the one line>"
    return last.split(": ", 1)[1] if ": " in last else last


class ConfigError(DensemoeError, ValueError):
    """An unknown or ill-typed key, task, dataset, model or parameter."""


class DataError(DensemoeError, OSError):
    """A missing, corrupt or foreign dataset file or archive."""


#: At most this many valid names are listed in an "unknown ..." message.
MAX_LISTED = 12


def unknown(kind: str, name: object, valid: Iterable[str], where: str = "") -> ConfigError:
    """``unknown <kind> '<name>'<where>; did you mean ...? valid: a, b, c``."""
    valid = sorted(str(v) for v in valid)
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    if len(valid) > MAX_LISTED:  # a long list (experiments, models) would bury the line: the nearest few
        near = difflib.get_close_matches(str(name), valid, n=MAX_LISTED, cutoff=0.0)
        listed = f"closest of {len(valid)}: {', '.join(near)}"
        return ConfigError(f"unknown {kind} '{name}'{where}{hint} ({listed})")
    return ConfigError(f"unknown {kind} '{name}'{where}{hint} (valid: {', '.join(valid)})")
