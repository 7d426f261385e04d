"""User-facing errors: one line that names the problem and the fix.

The CLI prints ``densemoe: error: <message>`` for any :class:`DensemoeError` and exits with status 2,
never a stack trace; library callers can catch the specific subclasses.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DensemoeError(Exception):
    """Base class of the errors a user can fix (bad input, missing files, wrong configuration)."""


class ConfigError(DensemoeError, ValueError):
    """An unknown or ill-typed key, task, dataset, model or parameter."""


class DataError(DensemoeError, OSError):
    """A missing, corrupt or foreign dataset file or archive."""


def unknown(kind: str, name: object, valid: Iterable[str], where: str = "") -> ConfigError:
    """``unknown <kind> '<name>'<where>; did you mean ...? valid: a, b, c``."""
    valid = sorted(str(v) for v in valid)
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown {kind} '{name}'{where}{hint} (valid: {', '.join(valid)})")
