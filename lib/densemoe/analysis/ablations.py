"""Paper tables of experiments, ours beside the paper's: ``tables.<id>`` of ``params.yaml`` rendered.

A table (``densemoe.config.TableParams``) lists rows, each an experiment with the paper's published numbers,
and the single-task baseline experiment of each task. :func:`table_frame` reads each experiment's metrics
JSON (``<metrics_dir>/<experiment>/metrics_test.json``, written by the ``train`` stage of ``dvc.yaml``),
computes Δm against the single-task baselines (``densemoe.metrics.mtl_gain``, Vandenhende et al. Eq. 10) and
places, per metric, the paper's value, ours and the relative difference (``densemoe.analysis.tables``).
A missing metrics file leaves that row's cells empty and is listed in the table's notes, so a table renders
before (or without) training: the notebook ``04_ablations`` relies on this under nbval.

>>> from densemoe.config import load_params
>>> df, notes = table_frame(load_params(), "table2", "reports/runs")   # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from densemoe.analysis.tables import ours_vs_paper, write_table
from densemoe.config import Params, TableParams, find_root
from densemoe.errors import ConfigError
from densemoe.metrics.mtl_gain import KEY as DELTA_M
from densemoe.metrics.mtl_gain import delta_m
from densemoe.tasks import TASKS

METRICS_FILE = "metrics_test.json"
SINGLE_LABEL = "Single-task baselines (Δm reference)"


def metrics_path(metrics_dir: str | Path, experiment: str) -> Path:
    """Where the ``train`` stage writes an experiment's test-split metrics."""
    return Path(metrics_dir) / experiment / METRICS_FILE


def read_run_metrics(metrics_dir: str | Path, experiment: str) -> dict[str, float] | None:
    """The experiment's flat metrics, or None if it has not been evaluated yet."""
    path = metrics_path(metrics_dir, experiment)
    return json.loads(path.read_text()) if path.is_file() else None


def table_metrics(table: TableParams) -> list[str]:
    """The metric keys of a table: its ``metrics``, else every key the paper gives, in the rows' order (Δm
    last, and added whenever the table has single-task baselines)."""
    keys = list(table.metrics) or list(dict.fromkeys(k for row in table.rows for k in row.paper))
    return [k for k in keys if k != DELTA_M] + ([DELTA_M] if DELTA_M in keys or table.single_task else [])


def single_task_metrics(table: TableParams, metrics_dir: str | Path) -> tuple[dict[str, float], list[str]]:
    """Each task's headline metric from its single-task baseline, and the baselines not yet evaluated."""
    single, missing = {}, []
    for task, exp in table.single_task.items():
        metrics = read_run_metrics(metrics_dir, exp)
        key = TASKS[task].headline
        if metrics is None or key not in metrics:
            missing.append(exp)
        else:
            single[key] = metrics[key]
    return single, missing


def schedule(params: Params, names: list[str]) -> str:
    """How the experiments ``names`` were trained, from ``params.yaml`` (so it cannot go stale):
    ``"50 iterations of batch 4, lr 0.001"``, several recipes joined by "; "."""
    recipes = {(t.iterations, t.batch_size, t.lr) for t in map(params.train_params, names)}
    return "; ".join(f"{it} iterations of batch {bs}, lr {lr:g}" for it, bs, lr in sorted(recipes))


def _schedule(params: Params, table: TableParams, profile: str) -> str:
    """One line saying how our rows were trained."""
    names = [row.experiment for row in table.rows] + list(table.single_task.values())
    return f"Our schedule (profile {profile}): {schedule(params, names)}."


def _ordering(df: pd.DataFrame, n_rows: int) -> list[str]:
    """The rows ranked by Δm, the paper's and ours, and whether they agree (the claim is the order)."""
    paper, ours = f"{DELTA_M} paper", f"{DELTA_M} ours"
    rows = df.iloc[:n_rows]
    if ours not in df or rows[ours].isna().any() or rows[paper].isna().any():
        return []

    def rank(col: str) -> str:
        return " > ".join(rows.sort_values(col, ascending=False)["row"])

    same = "the same order" if rank(paper) == rank(ours) else "a different order from the paper's"
    return [f"Rows by Δm, best first. Paper: {rank(paper)}. Ours: {rank(ours)} ({same})."]


def table_frame(params: Params, table_id: str, metrics_dir: str | Path,
                profile: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The table ``table_id`` with the experiments of ``profile`` (default: active) as a DataFrame (row,
    experiment, then paper / ours / Δ % per metric) and its notes (source, what our numbers are, Δm
    definition, what is missing)."""
    profile = profile or params.profile
    table = params.table(table_id, profile)
    keys = table_metrics(table)
    single, missing = single_task_metrics(table, metrics_dir)
    tasks = [t for t in table.single_task if TASKS[t].headline in keys]
    rows = []
    for row in table.rows:
        ours = read_run_metrics(metrics_dir, row.experiment)
        if ours is None:
            missing.append(row.experiment)
            ours = {}
        elif tasks and len(single) == len(table.single_task):
            ours = {**ours, DELTA_M: delta_m(ours, single, tasks)}
        rec = {"row": row.label, "experiment": row.experiment}
        for k in keys:
            rec[f"ours:{k}"], rec[f"paper:{k}"] = ours.get(k), row.paper.get(k)
        rows.append(rec)
    if table.single_task:
        rec = {"row": SINGLE_LABEL, "experiment": "single_task: " + ", ".join(table.single_task)}
        for k in keys:
            rec[f"ours:{k}"], rec[f"paper:{k}"] = single.get(k), None
        rows.append(rec)
    metrics = {k: (f"ours:{k}", f"paper:{k}") for k in keys}
    df = ours_vs_paper(rows, metrics, keep=("row", "experiment"), digits=dict.fromkeys(keys, 2))
    caveat = params.profile_params(profile).note
    notes = [f"Paper: {table.source}.", *(x for x in (table.note, caveat) if x)]
    notes.append(_schedule(params, table, profile))
    delta = (" Δm (mtl/delta_m) in %, against the single-task baselines of the last row (Vandenhende et al. "
             "2021, Eq. 10; the paper's own baselines are unpublished).")
    notes.append("Δ % = (ours − paper) / paper · 100." + (delta if table.single_task else ""))
    notes += _ordering(df, len(table.rows))
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        notes.append(f"Not yet evaluated (empty cells; run `dvc repro`): {names}.")
    return df, notes


def render_tables(params: Params, metrics_dir: str | Path, out_dir: str | Path,
                  profile: str | None = None) -> dict[str, pd.DataFrame]:
    """Render every table of ``profile`` (default: the active one) into ``out_dir/<id>.{md,csv,tex}``."""
    root = find_root()
    metrics_dir, out_dir = root / metrics_dir, root / out_dir
    profile = profile or params.profile
    frames = {}
    for table_id, table in params.tables_of(profile).items():
        df, notes = table_frame(params, table_id, metrics_dir, profile)
        write_table(df, out_dir, table_id, title=f"{table.title} (profile {profile})", notes=notes)
        frames[table_id] = df
    return frames


def sweep_figure(frames: dict[str, pd.DataFrame], sweeps: dict[str, str], title: str = "") -> Figure:
    """MLoRE Fig. 3 (left): Δm along each swept table (``{table_id: x label}``; the rows' labels are the x
    values, e.g. Table 10's N and Table 11's k), the paper's on the left axis and ours on the right one (the
    two can differ by orders of magnitude: compare the shapes)."""
    shown = {t: x for t, x in sweeps.items() if t in frames}
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(4.6 * max(len(shown), 1), 3.0), squeeze=False)
    for ax, (table_id, xlabel) in zip(axes.flat, shown.items(), strict=False):
        df = frames[table_id]
        df = df[df["row"] != SINGLE_LABEL]
        x = [str(v).replace("k=", "") for v in df["row"]]
        lines = []
        paper, ours = f"{DELTA_M} paper", f"{DELTA_M} ours"
        if paper in df and df[paper].notna().any():
            lines += ax.plot(x, df[paper].astype(float), "o--", color="tab:blue", label="paper (left axis)")
        ax.set(xlabel=xlabel, title=table_id)
        ax.set_ylabel("Δm (%), paper", color="tab:blue")
        if ours in df and df[ours].notna().any():
            right = ax.twinx()
            lines += right.plot(x, df[ours].astype(float), "s-", color="tab:orange",
                                label="ours (right axis)")
            right.set_ylabel("Δm (%), ours", color="tab:orange")
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7)
    fig.suptitle(title or "MLoRE Fig. 3 (left): MTL gain Δm against N and top-k", fontsize=10)
    fig.tight_layout()
    return fig


def sharing_note(shares: pd.DataFrame, without: str, with_: str) -> str:
    """One sentence on Fig. 4(b): the share of experts activated by all tasks without and with the generic
    path, and whether it rises with it (the direction the issue expects from the paper's argument)."""
    top = shares[shares["tasks"] == shares["tasks"].max()].set_index("run")["share %"]
    a, b = float(top[without]), float(top[with_])
    verdict = ("rises with the generic path, the direction of the paper's argument" if b > a else
               "does not rise with the generic path: this run disagrees with the paper's argument")
    n = int(shares["tasks"].max())
    return (f"Experts activated by all {n} tasks: {a:.1f} % without the generic path ({without}), "
            f"{b:.1f} % with it ({with_}); the share {verdict}.")


def row_routing(params: Params, table_id: str, labels: list[str], metrics_dir: str | Path,
                profile: str | None = None) -> dict[str, dict]:
    """``{label: routing statistics}`` of the table rows named ``labels`` (``<metrics_dir>/<experiment>/
    routing.json``, written by the train stage); rows not yet trained are left out."""
    table = params.table(table_id, profile or params.profile)
    by_label = {row.label: row.experiment for row in table.rows}
    unknown_rows = [label for label in labels if label not in by_label]
    if unknown_rows:
        raise ConfigError(f"table '{table_id}' has no row {', '.join(map(repr, unknown_rows))} (rows: "
                          f"{', '.join(map(repr, by_label))})")
    out = {}
    for label in labels:
        path = Path(metrics_dir) / by_label[label] / "routing.json"
        if path.is_file():
            out[f"{label} ({by_label[label]})"] = json.loads(path.read_text())
    return out
