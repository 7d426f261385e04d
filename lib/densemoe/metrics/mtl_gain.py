r"""Multi-task gain Δm against single-task baselines (Vandenhende et al., TPAMI 2021, Eq. 10).

.. math::

    \Delta_m = \frac{100}{T} \sum_{t=1}^{T} (-1)^{l_t} \, \frac{M_{mt,t} - M_{st,t}}{M_{st,t}},
    \qquad l_t = 0 \text{ if higher is better, else } 1,

with ``M_t`` each task's *headline* metric (:attr:`~densemoe.tasks.TaskSpec.headline`: semseg/human_parts
mIoU, sal maxF, normals mErr, edge odsF, depth RMSE) and ``l_t`` from ``TaskSpec.higher_is_better``. As
MTL-PyTorch's ``calculate_multi_task_performance`` (``evaluation/evaluate_utils.py``), but reported in %
and with saliency by maxF, as the ViT-era papers' tables (``specs/ecosystem.md`` §6). Positive Δm means
the multi-task model beats the single-task models on average.

The baselines ``M_st,t`` are the metrics JSON files of single-task models of the same backbone and
dataset (one file per task, as ``densemoe evaluate`` writes them: a flat ``{"semseg/miou": …}``).
InvPT, TaskPrompter and MLoRE ship no Δm code and no single-task numbers (``specs/mlore.md`` §4, §8).

Worked example (semseg 80 vs 78 mIoU: +2.564 %; normals 14.0° vs 14.5° mErr, lower is better: +3.448 %):

>>> from densemoe.tasks import TASKS
>>> mt = {"semseg/miou": 80.0, "normals/mean_err": 14.0}
>>> st = {"semseg/miou": 78.0, "normals/mean_err": 14.5}
>>> terms = delta_m_terms(mt, st, [TASKS["semseg"], TASKS["normals"]])
>>> {t: round(v, 3) for t, v in terms.items()}
{'semseg': 2.564, 'normals': 3.448}
>>> round(delta_m(mt, st, [TASKS["semseg"], TASKS["normals"]]), 3)
3.006
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from densemoe.errors import ConfigError, DataError
from densemoe.tasks import TASKS, TaskSpec

KEY = "mtl/delta_m"


def _specs(tasks: Iterable[TaskSpec | str] | Mapping[str, TaskSpec]) -> list[TaskSpec]:
    items = tasks.values() if isinstance(tasks, Mapping) else tasks
    return [TASKS[t] if isinstance(t, str) else t for t in items]


def delta_m_terms(multi: Mapping[str, float], single: Mapping[str, float],
                  tasks: Iterable[TaskSpec | str] | Mapping[str, TaskSpec]) -> dict[str, float]:
    """Each task's signed relative gain in %, ``(−1)^{l_t} · 100 · (M_mt − M_st) / M_st``."""
    terms = {}
    for spec in _specs(tasks):
        key = spec.headline
        for name, metrics in (("multi-task", multi), ("single-task", single)):
            if key not in metrics:
                have = ", ".join(sorted(metrics))
                raise ConfigError(f"the {name} metrics have no '{key}' (they have: {have})")
        m_mt, m_st = float(multi[key]), float(single[key])
        if m_st == 0 or not math.isfinite(m_st) or not math.isfinite(m_mt):
            raise ConfigError(f"cannot compute Δm: {key} is {m_mt} (multi-task) vs {m_st} (single-task)")
        sign = 1.0 if spec.higher_is_better else -1.0
        terms[spec.name] = sign * 100.0 * (m_mt - m_st) / m_st
    if not terms:
        raise ConfigError("cannot compute Δm over no tasks")
    return terms


def delta_m(multi: Mapping[str, float], single: Mapping[str, float],
            tasks: Iterable[TaskSpec | str] | Mapping[str, TaskSpec]) -> float:
    """Δm in % (the mean of :func:`delta_m_terms`)."""
    terms = delta_m_terms(multi, single, tasks)
    return sum(terms.values()) / len(terms)


def read_metrics(path: str | Path, role: str = "metrics") -> dict[str, float]:
    """A flat metrics JSON; a missing or malformed file is a :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{role} file {path} does not exist; run `densemoe evaluate` for that model first")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{role} file {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{role} file {path} must hold a flat object {{\"<task>/<metric>\": value}}")
    return data


def delta_m_from_files(
    multi_task: str | Path, single_task: Mapping[str, str | Path],
    tasks: Iterable[TaskSpec | str] | Mapping[str, TaskSpec] | None = None,
) -> dict[str, float]:
    """Δm of a multi-task metrics file against one single-task metrics file per task.

    ``single_task`` maps each task to its baseline file; ``tasks`` defaults to its keys. Returns
    ``{"mtl/delta_m": Δm, "mtl/delta_m/<task>": term, …}``.
    """
    specs = _specs(tasks if tasks is not None else list(single_task))
    multi = read_metrics(multi_task, "multi-task metrics")
    single: dict[str, float] = {}
    for spec in specs:
        if spec.name not in single_task:
            raise ConfigError(f"no single-task baseline file given for task '{spec.name}'")
        baseline = read_metrics(single_task[spec.name], f"single-task baseline ({spec.name})")
        if spec.headline not in baseline:
            raise DataError(f"single-task baseline {single_task[spec.name]} has no '{spec.headline}'")
        single[spec.headline] = baseline[spec.headline]
    terms = delta_m_terms(multi, single, specs)
    return {KEY: sum(terms.values()) / len(terms), **{f"{KEY}/{t}": v for t, v in terms.items()}}
