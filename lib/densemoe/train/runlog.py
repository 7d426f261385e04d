"""The files of a run folder ``runs/<experiment>/`` (written by rank 0 only, each atomically).

- ``config.yaml``: the resolved configuration.
- ``checkpoint.pt``: the latest checkpoint (``train/checkpoint.py``).
- ``history.csv``: one row per ``log_every`` iterations: ``iteration, epoch, lr, loss, loss/<task>…,
  aux/<name>…, grad_norm, sec_per_it`` (means over the rows' iterations; DVC ``plots:``, x = iteration).
- ``metrics.json``: the latest evaluation, flat ``<task>/<metric>`` keys (DVC ``metrics:``).
- ``evals.csv``: every evaluation, one row each (DVC ``plots:``); ``evals/iter_<k>.json`` the same as JSON.
- ``routing/iter_<k>.json``: routing statistics of each evaluation (``train/evaluation.py``).

On resume, rows logged after the checkpoint's iteration are dropped, so the files continue seamlessly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from densemoe.atomic import write_json, write_text
from densemoe.errors import DataError
from densemoe.metrics.evaluate import write_metrics


class RunLog:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.checkpoint = self.folder / "checkpoint.pt"
        self.history = self.folder / "history.csv"
        self.evals = self.folder / "evals.csv"
        self.metrics = self.folder / "metrics.json"

    def write_config(self, config: Mapping[str, Any]) -> None:
        write_text(self.folder / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False))

    def clear(self) -> None:
        """Remove what a previous run wrote (``--restart``)."""
        for path in (self.checkpoint, self.history, self.evals, self.metrics, self.folder / "config.yaml"):
            path.unlink(missing_ok=True)
        for sub in ("evals", "routing"):
            for path in (self.folder / sub).glob("iter_*.json"):
                path.unlink()

    def truncate(self, iteration: int) -> None:
        """Drop the rows of iterations after ``iteration`` (what a resumed run will log again)."""
        for path in (self.history, self.evals):
            if not path.is_file():
                continue
            rows = _read_rows(path)
            keep = [r for r in rows if int(float(r["iteration"])) <= iteration]
            if len(keep) != len(rows):
                self._write_rows(path, keep, list(rows[0]) if rows else [])

    @staticmethod
    def _write_rows(path: Path, rows: list[dict], fields: list[str]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, buf.getvalue())

    def _append(self, path: Path, row: Mapping[str, Any]) -> None:
        rows, fields = [], list(row)
        if path.is_file():
            rows = _read_rows(path)
            old = list(rows[0]) if rows else []
            fields = old + [k for k in row if k not in old]
        self._write_rows(path, [*rows, {k: _fmt(v) for k, v in row.items()}], fields)

    def log(self, row: Mapping[str, Any]) -> None:
        self._append(self.history, row)

    def log_eval(self, iteration: int, metrics: Mapping[str, float], routing: Mapping[str, Any]) -> None:
        write_metrics(self.metrics, metrics)
        name = f"iter_{iteration:06d}.json"
        write_json(self.folder / "evals" / name, {"iteration": iteration, **metrics}, indent=2)
        write_json(self.folder / "routing" / name, {"iteration": iteration, **routing})
        self._append(self.evals, {"iteration": iteration, **metrics})


def _read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a log CSV; one line naming the file if it was edited into something unreadable."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            int(float(r["iteration"]))
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"cannot read the run log {path} ({type(exc).__name__}: {exc}); re-run with "
                        "--restart to train afresh") from exc
    return rows


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v
