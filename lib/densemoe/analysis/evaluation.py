"""Per-task test metrics of every evaluated experiment of a profile, and Δm against single-task baselines.

What ``notebooks/03_evaluate.ipynb`` shows. :func:`metrics_frame` reads each experiment's metrics JSON
(``<metrics_dir>/<experiment>/metrics_test.json``, written by the ``train`` stage of ``dvc.yaml``): one row
per evaluated experiment of the profile, every metric of its tasks (``densemoe.tasks.TASKS``), rows grouped
by dataset. :func:`delta_m_frame` gives each multi-task experiment's Δm and the per-task relative gain of the
headline metric (``densemoe.metrics.mtl_gain``, Vandenhende et al. Eq. 10: positive = better than the
single-task model, whether the metric is higher- or lower-better). The single-task baselines of a dataset are
the ``single_task`` experiments of the profile's tables whose rows use that dataset (``params.yaml
tables``). Experiments not evaluated yet, and datasets without baselines, are named in the notes, never an
error, so the notebook renders before (or without) training.

>>> from densemoe.config import load_params
>>> frames = render(load_params(), "reports/runs", "reports/evaluate", "smoke")   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from densemoe.analysis.ablations import read_run_metrics, schedule
from densemoe.analysis.data_summary import save
from densemoe.analysis.tables import write_table
from densemoe.config import Params, ProfileParams, find_root
from densemoe.errors import ConfigError
from densemoe.metrics.mtl_gain import delta_m, delta_m_terms
from densemoe.tasks import TASKS, tasks_for

ID_COLUMNS = ("dataset", "experiment", "model", "tasks")
DELTA_M_COLUMN = "Δm %"
GAIN = "gain %"
DIGITS = 2


def get_profile(params: Params, profile: str | None = None) -> tuple[str, ProfileParams]:
    """The profile ``profile`` (default: the active one); a one-line error listing the profiles otherwise."""
    name = profile or params.profile
    return name, params.profile_params(name)


def profile_experiments(params: Params, profile: str) -> list[str]:
    """The experiments run under ``profile``, grouped by dataset (the profile's order), then as listed."""
    datasets = list(params.profiles[profile].datasets)
    names = [n for n in params.experiments if params.experiment_profile(n) == profile]

    def rank(name: str) -> int:
        dataset = params.experiments[name].dataset
        return datasets.index(dataset) if dataset in datasets else len(datasets)

    return sorted(names, key=rank)  # stable: params.yaml order within a dataset


def experiment_tasks(params: Params, name: str) -> list[str]:
    """The tasks an experiment trains (its ``tasks``, or all of its dataset's)."""
    exp = params.experiments[name]
    return list(tasks_for(exp.dataset, exp.tasks))


def metric_columns(params: Params, names: list[str]) -> list[str]:
    """Every metric key of the experiments' tasks, by first appearance (from params.yaml, not the files)."""
    keys = [f"{t}/{m}" for n in names for t in experiment_tasks(params, n) for m in TASKS[t].metrics]
    return list(dict.fromkeys(keys))


def single_task_baselines(params: Params, profile: str, dataset: str) -> tuple[dict[str, str], list[str]]:
    """``{task: experiment}`` of the tables of ``profile`` whose rows use ``dataset``, and those tables."""
    mapping: dict[str, str] = {}
    sources: list[str] = []
    for table_id, table in params.tables_of(profile).items():
        rows = {params.experiments[r.experiment].dataset for r in table.rows}
        if dataset not in rows or not table.single_task:
            continue
        for task, exp in table.single_task.items():
            if mapping.setdefault(task, exp) != exp:
                raise ConfigError(
                    f"tables {', '.join(sources)} and {table_id} name different single-task baselines for "
                    f"'{task}' on {dataset} in profile {profile} ({mapping[task]} vs {exp}); make them agree "
                    "in params.yaml"
                )
        sources.append(table_id)
    return mapping, sources


def _caveat(spec: ProfileParams) -> list[str]:
    """The profile's caveat (``profiles.<p>.note``), or for SynthScenes that the numbers are synthetic."""
    caveat = spec.note
    synth = [d for d in spec.datasets if d.startswith("synth-")]
    if caveat:
        return [f"**{caveat}**"]
    if synth:
        return [f"**Synthetic-data numbers**: SynthScenes ({', '.join(synth)}), not the papers' "
                "PASCAL-Context / NYUD-v2; compare experiments with each other, not with published values."]
    return []


def _profile_notes(params: Params, profile: str, spec: ProfileParams, names: list[str]) -> list[str]:
    """What the numbers are: the caveat, profile, split and schedule."""
    notes = _caveat(spec)
    described = f": {spec.description}" if spec.description else ""
    notes.append(f"Profile {profile}{described}. Metrics on the test split (`metrics_test.json`).")
    if names:
        notes.append(f"Schedule: {schedule(params, names)}.")
    return notes


def _not_evaluated(names: list[str]) -> list[str]:
    return [f"Not yet evaluated (no metrics file; run `dvc repro`): {', '.join(names)}."] if names else []


def metrics_frame(params: Params, metrics_dir: str | Path,
                  profile: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per evaluated experiment of ``profile`` (dataset, experiment, model preset, tasks, then every
    metric of the profile's tasks; empty where the experiment lacks the task) and the notes."""
    profile, spec = get_profile(params, profile)
    names = profile_experiments(params, profile)
    keys = metric_columns(params, names)
    rows, missing = [], []
    for name in names:
        metrics = read_run_metrics(metrics_dir, name)
        if metrics is None:
            missing.append(name)
            continue
        exp, tasks = params.experiments[name], experiment_tasks(params, name)
        rec = {"dataset": exp.dataset, "experiment": name, "model": exp.model, "tasks": ", ".join(tasks)}
        for key in keys:
            rec[key] = metrics.get(key) if key.split("/")[0] in tasks else None
        rows.append(rec)
    df = pd.DataFrame(rows, columns=[*ID_COLUMNS, *keys])
    df[keys] = df[keys].astype(float).round(DIGITS)
    evaluated = [n for n in names if n not in missing]
    notes = _profile_notes(params, profile, spec, evaluated)
    tasks = dict.fromkeys(k.split("/")[0] for k in keys)
    heads = ", ".join(f"{TASKS[t].headline} {'↑' if TASKS[t].higher_is_better else '↓'}" for t in tasks)
    notes.append(f"Headline metric of each task (used for Δm; ↑ higher / ↓ lower is better): {heads}.")
    return df, notes + _not_evaluated(missing)


def delta_m_frame(params: Params, metrics_dir: str | Path,
                  profile: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Per evaluated multi-task experiment of ``profile``: Δm (%) against the single-task baselines of its
    dataset and each task's signed relative gain (%) of its headline metric, and the notes. Δm is left empty
    (and the notes say why) where a baseline is missing or not yet evaluated."""
    profile, spec = get_profile(params, profile)
    names = [n for n in profile_experiments(params, profile) if len(experiment_tasks(params, n)) > 1]
    tasks = list(dict.fromkeys(t for n in names for t in experiment_tasks(params, n)))
    gains = {t: f"{TASKS[t].headline} {GAIN}" for t in tasks}
    rows, missing, notes = [], [], _caveat(spec)
    baselines: dict[str, dict[str, float]] = {}
    for dataset in dict.fromkeys(params.experiments[n].dataset for n in names):
        mapping, sources = single_task_baselines(params, profile, dataset)
        baselines[dataset] = {}
        for task, exp in mapping.items():
            value = (read_run_metrics(metrics_dir, exp) or {}).get(TASKS[task].headline)
            if value is None:
                missing.append(exp)
            else:
                baselines[dataset][task] = value
        if not mapping:
            notes.append(f"{dataset}: no single-task baselines in the tables of profile {profile} "
                         "(add `single_task` to a table whose rows use it); Δm left empty.")
            continue
        pairs = ", ".join(f"{t} ← {e}" for t, e in mapping.items())
        notes.append(f"{dataset}: single-task baselines (from {', '.join(sources)}): {pairs}.")
        used = dict.fromkeys(t for n in names if params.experiments[n].dataset == dataset
                             for t in experiment_tasks(params, n))
        unmapped = [t for t in used if t not in mapping]
        pending = [t for t in used if t in mapping and t not in baselines[dataset]]
        if unmapped or pending:
            why = [f"no single-task baseline in the tables for {', '.join(unmapped)}"] if unmapped else []
            why += [f"the baselines of {', '.join(pending)} are not yet evaluated"] if pending else []
            notes.append(f"{dataset}: Δm left empty where a task lacks its baseline: {'; '.join(why)}.")
    for name in names:
        metrics = read_run_metrics(metrics_dir, name)
        if metrics is None:
            missing.append(name)
            continue
        exp, own = params.experiments[name], experiment_tasks(params, name)
        single = baselines[exp.dataset]
        rec: dict[str, object] = {"dataset": exp.dataset, "experiment": name, "model": exp.model,
                                  DELTA_M_COLUMN: None, **dict.fromkeys(gains.values())}
        rows.append(rec)
        lacking = [TASKS[t].headline for t in own if t in single and TASKS[t].headline not in metrics]
        if lacking:
            notes.append(f"{name}: its metrics lack {', '.join(lacking)}; Δm left empty.")
        have = [t for t in own if t in single and TASKS[t].headline not in lacking]
        if not have:
            continue
        try:
            terms = delta_m_terms(metrics, {TASKS[t].headline: single[t] for t in have}, have)
        except ConfigError as exc:  # a zero or non-finite value: say so, keep the other rows
            notes.append(f"{name}: {exc}; Δm left empty.")
            continue
        for task, term in terms.items():
            rec[gains[task]] = term
        if len(have) == len(own):
            rec[DELTA_M_COLUMN] = delta_m(metrics, {TASKS[t].headline: single[t] for t in own}, own)
    df = pd.DataFrame(rows, columns=["dataset", "experiment", "model", DELTA_M_COLUMN, *gains.values()])
    numeric = [DELTA_M_COLUMN, *gains.values()]
    df[numeric] = df[numeric].astype(float).round(DIGITS)
    notes.append(f"{GAIN} = ±(ours − single-task) / single-task · 100 on each task's headline metric, "
                 "signed so that positive means better than the single-task model (for lower-is-better "
                 "metrics such as normals/mean_err the sign is reversed). Δm = their mean over the model's "
                 "tasks (Vandenhende et al. 2021, Eq. 10).")
    return df, notes + _not_evaluated(list(dict.fromkeys(missing)))


def gain_figure(delta: pd.DataFrame, title: str = "", max_bars: int = 10) -> Figure:
    """Each task's relative gain (%) over its single-task baseline and Δm, per experiment: grouped bars (one
    group per experiment) for up to ``max_bars`` experiments, else an annotated experiment × task heatmap
    (readable for the dozens of ablation runs); a placeholder saying so when no gain is known yet."""
    gain_cols = [c for c in delta.columns if c.endswith(f" {GAIN}")]
    wide = delta.set_index("experiment")[[*gain_cols, DELTA_M_COLUMN]].dropna(how="all")
    wide = wide.dropna(axis=1, how="all")
    wide.columns = [c.removesuffix(f" {GAIN}").replace(DELTA_M_COLUMN, "Δm (mean)") for c in wide.columns]
    n = len(wide)
    title = title or "relative gain over single-task baselines (positive = better)"
    if n == 0:
        fig, ax = plt.subplots(figsize=(6.0, 2.5))
        ax.text(0.5, 0.5, "no multi-task experiment with evaluated single-task baselines yet",
                ha="center", va="center", fontsize=9, transform=ax.transAxes)
        ax.set_axis_off()
    elif n <= max_bars:
        long = wide.reset_index().melt(id_vars="experiment", var_name="task", value_name="gain").dropna()
        hues = list(wide.columns)
        palette = dict(zip(hues, sns.color_palette("tab10", len(hues)), strict=True)) | {"Δm (mean)": "0.3"}
        fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * n + 2.5), 3.8))
        sns.barplot(long, x="experiment", y="gain", hue="task", hue_order=hues, ax=ax, palette=palette)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set(xlabel="", ylabel="relative gain over single-task (%)")
        ax.tick_params(axis="x", labelrotation=25)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        ax.legend(fontsize=7, title="task (headline metric)", title_fontsize=7,
                  bbox_to_anchor=(1.01, 1), loc="upper left")
    else:
        fig, ax = plt.subplots(figsize=(1.1 * len(wide.columns) + 4.0, 0.28 * n + 1.6))
        vmax = max(1.0, float(wide.abs().stack().quantile(0.95)))  # a few outliers must not wash out the rest
        sns.heatmap(wide, ax=ax, cmap="RdBu", center=0, vmin=-vmax, vmax=vmax, annot=True, fmt=".1f",
                    annot_kws={"fontsize": 6}, cbar_kws={"label": "relative gain over single-task (%)"})
        ax.set(xlabel="task (headline metric)", ylabel="")
        ax.tick_params(labelsize=7)
        ax.tick_params(axis="x", labelrotation=25)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def render(params: Params, metrics_dir: str | Path, out_dir: str | Path,
           profile: str | None = None) -> dict[str, pd.DataFrame]:
    """Write ``out_dir/metrics.{md,csv,tex}``, ``out_dir/delta_m.{md,csv,tex}`` and ``out_dir/delta_m.png``
    for ``profile`` (default: the active one); relative paths are taken from the repository root."""
    profile, spec = get_profile(params, profile)
    root = find_root()
    metrics_dir, out_dir = root / metrics_dir, root / out_dir
    synthetic = ", synthetic SynthScenes data" if any(d.startswith("synth-") for d in spec.datasets) else ""
    metrics, notes = metrics_frame(params, metrics_dir, profile)
    write_table(metrics, out_dir, "metrics", notes=notes,
                title=f"Test metrics per experiment (profile {profile}{synthetic})")
    delta, notes = delta_m_frame(params, metrics_dir, profile)
    title = f"Δm and per-task gain over single-task baselines (profile {profile}{synthetic})"
    write_table(delta, out_dir, "delta_m", title=title, notes=notes)
    fig = gain_figure(delta, title=f"Relative gain over single-task baselines, headline metrics "
                                   f"(profile {profile}{synthetic})")
    save(fig, out_dir / "delta_m.png")
    plt.close(fig)
    return {"metrics": metrics, "delta_m": delta}
