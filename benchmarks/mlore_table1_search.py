"""Which module configuration reproduces MLoRE's Table 1 (params and FLOPs of ONE module)? A search.

Table 1 of the paper (CVPR 2024, arXiv:2403.17749) gives, for a standard MoE and for MLoRE with 5/10/15
experts and [1×1, 1×1] or [3×3, 1×1] expert kernels, the parameters (M) and FLOPs (G) of one module, and
says nothing about how they were counted. This script counts every combination of

- decoder width C ∈ {384, 452, 512, 640, 768, 1024}, token grid ∈ {32×32, 28×36, 16×16, 64×64},
- FLOPs unit ∈ {MACs, 2·MACs} / {1e9, 2^30} (parameters in 1e6),
- MoE: hidden width C, C/2, C/4 (3×3/1×1 → ReLU → 1×1); experts on the shared input or on each task's
  features; all N or only the top-9 computed; with or without T full task-specific experts ("N + T"),
  generic conv (none, expert kernel, 3×3), task projection, output projection, BN, router (6 kinds),
- MLoRE: ranks (the official 16, 24, … prefix; N ranks evenly over 16…128; one fixed rank 16…128 step 8),
  task-specific rank R ∈ {0, 16, 32, 64, 72}, generic conv, plain / re-parameterised / re-parameterised
  with the kernel-merge cost, the same optional parts,

with :func:`densemoe.models.complexity.module_cost` (the per-part formula; the tests check it against
``FlopCounterMode`` on built modules), scores each by the largest relative error over its 12 numbers, and
prints the best per family and the joint best (MoE and MLoRE at the same C, grid and unit). It then fits
each family's rows as a + N·b to show what the constant parts and the per-expert step are made of.

Run: ``python benchmarks/mlore_table1_search.py [--out benchmarks/results/mlore_table1_search_<date>.md]``
(about a minute on one core). Findings: ``benchmarks/results/mlore_table1_search.md``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools

import numpy as np
import pandas as pd

from densemoe.analysis.tables import markdown
from densemoe.models.complexity import ROUTER_KINDS, TABLE1, module_cost

CHANNELS = (384, 452, 512, 640, 768, 1024)
GRIDS = {"32x32": 1024, "28x36": 1008, "16x16": 256, "64x64": 4096}
UNITS = {"MACs/2^30": (1, 2**30), "MACs/1e9": (1, 1e9), "2MACs/2^30": (2, 2**30), "2MACs/1e9": (2, 1e9)}
OFFICIAL_RANKS = tuple(range(16, 400, 8))  # 16, 24, …: the first N are "prefix"
RANK_SCHEMES = ("prefix", "even16-128", *(f"fixed{r}" for r in range(16, 129, 8)))
TASKS = 5
ROWS = [(r.experts, r.kernel) for r in TABLE1]


def rank_sum(scheme: str, n: int) -> int:
    if scheme == "prefix":
        return sum(OFFICIAL_RANKS[:n])
    if scheme == "even16-128":
        return round(np.linspace(16, 128, n).sum())
    return n * int(scheme.removeprefix("fixed"))


def _grid(**options) -> pd.DataFrame:
    keys = list(options)
    return pd.DataFrame(list(itertools.product(*options.values())), columns=keys)


def moe_options(C: int) -> pd.DataFrame:
    return _grid(
        hidden=[C, C // 2, C // 4],
        per_task=[0, 1],
        top9=[0, 1],
        task_experts=[0, 1],
        generic=["none", "k", "3"],
        task_proj=[0, 1],
        task_out=[0, 1],
        bn=[0, 1],
        router=list(ROUTER_KINDS),
    )


def mlore_options() -> pd.DataFrame:
    return _grid(
        ranks=list(RANK_SCHEMES),
        task_rank=[0, 16, 32, 64, 72],
        generic=["none", "k", "3"],
        flops=["plain", "reparam", "reparam+merge"],
        per_task=[0, 1],
        task_proj=[0, 1],
        task_out=[0, 1],
        bn=[0, 1],
        router=list(ROUTER_KINDS),
    )


def _kg(generic: pd.Series, k: int) -> np.ndarray:
    return generic.map({"none": 0, "k": k, "3": 3}).to_numpy()


def count(family: str, opts: pd.DataFrame, C: int, hw: int) -> tuple[np.ndarray, np.ndarray]:
    """Parameters and MACs, shape (configs, 6 rows of Table 1)."""
    P, M = np.zeros((len(opts), len(ROWS))), np.zeros((len(opts), len(ROWS)))
    for (router, *rest), o in opts.groupby(["router", *(["flops"] if family == "mlore" else [])]):
        idx = o.index.to_numpy()
        for j, (n, k) in enumerate(ROWS):
            common = dict(
                hw=hw,
                tasks=TASKS,
                generic_kernel=_kg(o.generic, k),
                task_proj=o.task_proj.to_numpy(),
                task_out=o.task_out.to_numpy(),
                bn=o.bn.to_numpy(),
                router=router,
                per_task=o.per_task.to_numpy(),
            )
            if family == "moe":
                h = o.hidden.to_numpy()
                p, m = module_cost(
                    C,
                    n,
                    k,
                    hidden_sum=n * h,
                    activation=True,
                    task_rank=o.task_experts.to_numpy() * h,
                    computed=np.where(o.top9.to_numpy() == 1, min(9, n) / n, 1.0),
                    **common,
                )
            else:
                flops = rest[0]
                sums = o.ranks.map(lambda s, n=n: rank_sum(s, n)).to_numpy()
                p, m = module_cost(
                    C,
                    n,
                    k,
                    hidden_sum=sums,
                    task_rank=o.task_rank.to_numpy(),
                    reparam=flops != "plain",
                    merge_cost=flops == "reparam+merge",
                    **common,
                )
            P[idx, j], M[idx, j] = p, m
    return P, M


def paper(family: str) -> tuple[np.ndarray, np.ndarray]:
    params = np.array([getattr(r, f"{family}_params") for r in TABLE1])
    gflops = np.array([getattr(r, f"{family}_gflops") for r in TABLE1])
    return params, gflops


def search(top: int = 5, routers: tuple[str, ...] = ROUTER_KINDS) -> dict[str, pd.DataFrame]:
    """Best configurations per family and per (C, grid, unit).

    ``worst_pct``: the largest relative error over the family's 12 numbers, in %; ``beyond_rounding_pct``:
    the largest error left after allowing the paper's rounding (±0.05 M, ±0.005 G), in % of the value;
    ``exact``: how many of the 12 numbers round to the paper's. Ranked by beyond-rounding, then worst.
    """
    found = {"moe": [], "mlore": []}
    for family in found:
        p_paper, f_paper = paper(family)
        for C in CHANNELS:
            opts = moe_options(C) if family == "moe" else mlore_options()
            opts = opts[opts.router.isin(routers)].reset_index(drop=True)
            for grid, hw in GRIDS.items():
                P, M = count(family, opts, C, hw)
                p_abs = np.abs(P / 1e6 - p_paper)
                for unit, (mult, div) in UNITS.items():
                    f_abs = np.abs(M * mult / div - f_paper)
                    worst = np.maximum((p_abs / p_paper).max(1), (f_abs / f_paper).max(1))
                    beyond = np.maximum(
                        (np.maximum(p_abs - 0.05, 0) / p_paper).max(1),
                        (np.maximum(f_abs - 0.005, 0) / f_paper).max(1),
                    )
                    exact = (p_abs <= 0.05 + 1e-9).sum(1) + (f_abs <= 0.005 + 1e-9).sum(1)
                    best = np.lexsort((worst, beyond))[:top]
                    rows = opts.iloc[best].assign(
                        C=C,
                        grid=grid,
                        unit=unit,
                        exact=exact[best],
                        beyond_rounding_pct=100 * beyond[best],
                        worst_pct=100 * worst[best],
                        params_worst_pct=100 * (p_abs / p_paper)[best].max(1),
                        flops_worst_pct=100 * (f_abs / f_paper)[best].max(1),
                    )
                    found[family].append(rows)
    order = ["beyond_rounding_pct", "worst_pct"]
    out = {f: pd.concat(v, ignore_index=True).sort_values(order) for f, v in found.items()}
    key = ["C", "grid", "unit"]
    joint = (
        out["moe"]
        .groupby(key)[order]
        .min()
        .add_prefix("moe_")
        .join(out["mlore"].groupby(key)[order].min().add_prefix("mlore_"))
    )
    joint["worst_pct"] = joint[["moe_worst_pct", "mlore_worst_pct"]].max(axis=1)
    out["joint"] = joint.sort_values("worst_pct").reset_index().round(2)
    return out


def decompose() -> pd.DataFrame:
    """Least-squares a + N·b per family, quantity and kernel; in C² units (C = 384, 32×32, MACs/2^30)."""
    C2, rows = 384**2, []
    for family in ("moe", "mlore"):
        p_paper, f_paper = paper(family)
        for quantity, values, per_c2 in (
            ("params (M)", p_paper, C2 / 1e6),
            ("FLOPs (G)", f_paper, C2 * 1024 / 2**30),
        ):
            for k in (1, 3):
                sel = [j for j, (_, kk) in enumerate(ROWS) if kk == k]
                n = np.array([ROWS[j][0] for j in sel])
                b, a = np.polyfit(n, values[sel], 1)
                rows.append(
                    dict(
                        family=family,
                        quantity=quantity,
                        kernel=f"{k}x{k}",
                        intercept=round(a, 3),
                        per_expert=round(b, 4),
                        intercept_C2=round(a / per_c2, 2),
                        per_expert_C2=round(b / per_c2, 3),
                    )
                )
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the findings as markdown here")
    args = parser.parse_args(argv)
    cols = [
        "C",
        "grid",
        "unit",
        "exact",
        "beyond_rounding_pct",
        "worst_pct",
        "params_worst_pct",
        "flops_worst_pct",
    ]
    parts_ = ["generic", "per_task", "task_proj", "task_out", "bn", "router"]
    moe_cols = [*cols, "hidden", "top9", "task_experts", *parts_]
    mlore_cols = [*cols, "ranks", "task_rank", "flops", *parts_]
    parts = []
    for label, routers in (
        ("all router kinds", ROUTER_KINDS),
        (
            "routers of the paper/code only (no per-pixel 3×3)",
            ("none", "pooled", "pixel1", "official", "densemoe"),
        ),
    ):
        res = search(routers=routers)
        parts += [
            (f"Joint best, {label} (same C, grid, unit)", res["joint"].head(8)),
            (f"Standard MoE, {label}: best 12", res["moe"][moe_cols].head(12).round(2)),
            (f"MLoRE, {label}: best 12", res["mlore"][mlore_cols].head(12).round(2)),
        ]
    parts.append(("Fit a + N·b of the paper's rows (C² units: C = 384, 32×32 grid, MACs/2^30)", decompose()))
    text = "\n\n".join(f"### {title}\n\n{markdown(df)}" for title, df in parts)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(
                f"# Table 1 search output ({datetime.datetime.now(datetime.timezone.utc).date()})\n\n{text}\n"
            )


if __name__ == "__main__":
    main()
