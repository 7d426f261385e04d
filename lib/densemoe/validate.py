"""The one validation layer for numbers and device names, shared by ``params.yaml`` and the command line.

A config field declares its range with :func:`bounded` (``lr: float = bounded(2.0e-5, gt=0)``) and
:func:`densemoe.config.from_dict` checks it, naming the key's place; a command-line option uses
:func:`arg_int`/:func:`arg_float` as its argparse ``type``; both say
``<where> must be greater than 0, got -1``.
Device names are checked by :func:`check_device` before any work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from densemoe.errors import ConfigError

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


@dataclasses.dataclass(frozen=True)
class Range:
    """``ge <= x``, ``gt < x``, ``x <= le``, ``x < lt`` (None: unbounded); floats must also be finite."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or None."""
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        for bound, op, ok in ((self.ge, "at least", lambda v, b: v >= b),
                              (self.gt, "greater than", lambda v, b: v > b),
                              (self.le, "at most", lambda v, b: v <= b),
                              (self.lt, "less than", lambda v, b: v < b)):
            if bound is not None and not ok(value, bound):
                return f"must be {op} {_num(bound)}"
        return None

    def check(self, value: Any, where: str) -> Any:
        if value is not None and (problem := self.problem(value)) is not None:
            raise ConfigError(f"{where} {problem}, got {value!r}")
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def bounded(default: Any = dataclasses.MISSING, **bounds: float) -> Any:
    """A dataclass field whose value :func:`densemoe.config.from_dict` checks against ``Range(**bounds)``."""
    return dataclasses.field(default=default, metadata={"range": Range(**bounds)})


def field_range(f: dataclasses.Field) -> Range | None:
    return f.metadata.get("range")


def check_device(name: str, where: str = "train.device") -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; anything else is a one-line error."""
    if not isinstance(name, str) or not DEVICE.fullmatch(name):
        raise ConfigError(f"unknown device '{name}' in {where} (valid: auto, cpu, cuda, cuda:N, mps)")
    return name


def _arg(convert: Callable[[str], Any], kind: str, bounds: dict) -> Callable[[str], Any]:
    rng = Range(**bounds)

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        if (problem := rng.problem(value)) is not None:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    parse.__name__ = kind  # argparse names the type in its own messages
    return parse


def arg_int(**bounds: float) -> Callable[[str], int]:
    """An argparse ``type``: an integer within ``bounds`` (``arg_int(ge=1)``)."""
    return _arg(int, "an integer", bounds)


def arg_float(**bounds: float) -> Callable[[str], float]:
    """An argparse ``type``: a finite float within ``bounds``."""
    return _arg(float, "a number", bounds)


def arg_device(text: str) -> str:
    """An argparse ``type`` for ``--device``."""
    try:
        return check_device(text, "--device")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
