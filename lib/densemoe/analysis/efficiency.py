"""Efficiency of MLoRE (Yang et al., CVPR 2024, arXiv:2403.17749): parameters and FLOPs, re-parameterised
inference speed, and the parameters of the module as the number of experts grows (Fig. 3, right).

Used by ``notebooks/06_efficiency.ipynb``; nothing here trains.

- Complexity tables (Tables 1, 2, 5, 7 and FGMoE vs MLoRE): counted and written by
  :func:`densemoe.models.complexity.render_all`; :func:`complexity_rows` measures the rows it renders: the
  paper-size rows (ViT-S/B/L, built on the ``meta`` device, ≈ 10 s on 2 cores) if asked, and always
  :data:`TINY_ROWS`, Table 2's components at the CPU smoke size (no paper numbers).
- Speed (§3.3, Eq. 3–7): :func:`reparam_speed` times eval forwards of a preset before and after
  :meth:`MLoRE.reparameterize`, the whole model and its MLoRE modules alone, and checks that both give the
  same outputs. Random weights: the cost does not depend on them. Wall-clock times of *this* machine.
- Fig. 3 (right): :func:`experts_params` counts the parameters of the decoder's MLoRE modules for N experts,
  MLoRE (low-rank experts, ranks spread lo..hi as the ``experts{N}`` ablation presets, k = round(0.6 N))
  against the standard MoE (N full 3×3|ReLU|1×1 experts, ``moe.py``), built on the ``meta`` device.

>>> rows = complexity_rows(paper_size=False)                                     # doctest: +SKIP
>>> frame, info = reparam_speed("mlore_tiny_synth", batch=2, repeats=3)         # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from torch import nn

from densemoe.models.complexity import PAPER_ROWS, PaperRow, measure
from densemoe.models.presets import BASES, spread_ranks
from densemoe.models.registry import create_model

#: Table 2's components at the CPU smoke size (``tiny_synth``): our counts only, the paper has none.
TINY_ROWS = (
    PaperRow("Tiny", "Baseline", "baseline_tiny_synth", None, None, "plain"),
    PaperRow("Tiny", "+ MoE", "moe_tiny_synth", None, None, "active_k"),
    PaperRow("Tiny", "+ LoRE", "mlore_tiny_synth_lore", None, None),
    PaperRow("Tiny", "+ GC", "mlore_tiny_synth_lore_gc", None, None),
    PaperRow("Tiny", "+ SPE", "mlore_tiny_synth", None, None),
)

#: The numbers of experts N of Fig. 3 (right).
EXPERTS = (0, 5, 10, 15, 20, 25, 30)
MLORE, MOE = "MLoRE (low-rank experts)", "standard MoE"


def complexity_rows(paper_size: bool = True) -> list[dict]:
    """:func:`~densemoe.models.complexity.measure` of the paper's rows (if ``paper_size``), then the tiny
    ones; pass them to :func:`~densemoe.models.complexity.render_all`."""
    return [measure(r) for r in (*(PAPER_ROWS if paper_size else ()), *TINY_ROWS)]


# ---------------------------------------------------------------------------------------------------------
# Re-parameterised inference speed
# ---------------------------------------------------------------------------------------------------------


def timed_together(
    fns: Sequence[Callable[[], object]], device: str = "cpu", warmup: int = 1, repeats: int = 5
) -> list[float]:
    """Median seconds of each of ``fns`` after ``warmup`` calls, the functions called in turn (a, b, a, b, …)
    so that a change of load on a shared machine slows all of them alike. CUDA synchronised around calls."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(warmup + repeats):
        for fn, out in zip(fns, times, strict=True):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                out.append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def timed(fn: Callable[[], object], device: str = "cpu", warmup: int = 1, repeats: int = 5) -> float:
    """Median seconds of ``fn()`` after ``warmup`` calls (CUDA synchronised around each call)."""
    return timed_together([fn], device, warmup, repeats)[0]


def fused_features(model: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """The inputs of the MLoRE modules, (B, C, h, w) per scale: backbone taps after the 1×1 fuse, detached."""
    with torch.no_grad():
        return [fuse(t).detach() for fuse, t in zip(model.decoder.fuse, model.backbone(image), strict=True)]


def blocks_only(model: nn.Module, feats: list[torch.Tensor], train: bool) -> Callable[[], None]:
    """A function running the MLoRE modules alone on fixed ``feats`` (:func:`fused_features`); with
    ``train`` it also back-propagates a scalar."""
    blocks = [list(s) for s in model.decoder.scales]

    def run() -> None:
        total = 0
        for scale, x in zip(blocks, feats, strict=True):
            for block in scale:
                x = block(x)
            total = total + x.float().mean()
        if train:
            total.backward()

    return run


def machine_info() -> dict:
    """The CPU model (``/proc/cpuinfo``, else ``platform``), logical cores, torch threads and version."""
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in info.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__)


def output_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest |a − b| over every task's output, and that divided by the largest |a|."""
    diff = max((a[t] - b[t]).abs().max().item() for t in a)
    scale = max(a[t].abs().max().item() for t in a)
    return dict(max_abs_diff=diff, max_rel_diff=diff / scale if scale else diff)


def reparam_speed(
    preset: str = "mlore_tiny_synth",
    batch: int = 8,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = 1,
    seed: int = 0,
    **overrides,
) -> tuple[pd.DataFrame, dict]:
    """CPU inference time of ``preset`` (random weights, eval, no grad) before and after re-parameterisation.

    Returns a frame (measurement, plain_ms, reparam_ms, speedup; the whole model and the MLoRE modules alone,
    medians of ``repeats`` after ``warmup``, plain and merged called in turn) and ``info``: the setting,
    :func:`machine_info` and :func:`output_diff` of the two models' outputs. ``threads`` sets torch's
    threads while timing (1 by default: on 2 shared cores 2 threads spin-wait); ``overrides`` go to
    ``create_model``.
    """
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = create_model(preset, **overrides).eval()
        merged = model.reparameterize()
        image = torch.randn(batch, 3, *model.img_size)
        feats = fused_features(model, image)
        with torch.no_grad():
            diff = output_diff(model(image), merged(image))
            times = {
                "inference, whole model": timed_together(
                    [lambda m=m: m(image) for m in (model, merged)], "cpu", warmup, repeats
                ),
                "inference, MLoRE modules alone": timed_together(
                    [blocks_only(m, feats, False) for m in (model, merged)], "cpu", warmup, repeats
                ),
            }
        info = dict(
            preset=preset,
            batch=batch,
            height=model.img_size[0],
            width=model.img_size[1],
            modules=sum(1 for _ in model.named_blocks()),
            repeats=repeats,
            warmup=warmup,
            **machine_info(),
            **diff,
        )
    finally:
        torch.set_num_threads(saved)
    frame = pd.DataFrame(
        dict(measurement=k, plain_ms=round(p * 1e3, 1), reparam_ms=round(r * 1e3, 1), speedup=round(p / r, 2))
        for k, (p, r) in times.items()
    )
    return frame, info


def speed_notes(info: dict) -> list[str]:
    """The notes of the speed table: setting, machine, agreement of the outputs."""
    return [
        f"Measured on this machine's CPU: {info['cpu']} ({info['cores']} logical cores), "
        f"torch {info['torch']} with {info['threads']} thread(s); wall-clock medians of {info['repeats']} "
        f"runs after {info['warmup']} warm-up, plain and re-parameterised called in turn. Timings vary "
        "between machines and runs; compare the ratios.",
        f"{info['preset']}, random weights, eval mode, batch {info['batch']} of "
        f"{info['height']}×{info['width']}; "
        f"'MLoRE modules alone': the {info['modules']} modules on fixed fused backbone features.",
        "re-parameterised: every module's linear paths merged into one 3×3 conv per task and image "
        "(MLoRE §3.3, Eq. 3–7).",
        f"Outputs agree: max |plain − re-parameterised| = {info['max_abs_diff']:.2e} "
        f"({info['max_rel_diff']:.2e} of the largest output).",
    ]


def speed_figure(frame: pd.DataFrame, info: dict) -> Figure:
    """Bars: ms per forward, plain vs re-parameterised, for each measurement of :func:`reparam_speed`."""
    long = frame.melt("measurement", ["plain_ms", "reparam_ms"], var_name="model", value_name="ms")
    long["model"] = long["model"].map({"plain_ms": "plain", "reparam_ms": "re-parameterised"})
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    sns.barplot(long, x="measurement", y="ms", hue="model", ax=ax)
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set(xlabel="", ylabel="ms per forward (median)")
    ax.set_title(
        f"{info['preset']}, batch {info['batch']}: re-parameterisation speed-up\nmeasured on this "
        f"machine's CPU ({info['cpu']}, {info['threads']} torch thread(s))",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------
# Fig. 3 (right): parameters of the MLoRE modules vs the number of experts
# ---------------------------------------------------------------------------------------------------------


def module_params(model: nn.Module) -> tuple[int, int]:
    """(number of MLoRE modules, their parameters) of a model's decoder (fuse, fusion and heads excluded)."""
    blocks = [b for _, b in model.named_blocks()]
    return len(blocks), sum(p.numel() for b in blocks for p in b.parameters())


def experts_params(
    base: str = "vitb16_pascal", experts: Sequence[int] = EXPERTS, **overrides
) -> pd.DataFrame:
    """Fig. 3 (right): the decoder's MLoRE-module parameters for each N in ``experts``, MLoRE vs standard MoE.

    MLoRE: ``mlore_<base>`` with N experts of ranks spread over the base's lo..hi (as the ``experts{N}``
    presets, Table 10) and k = round(0.6 N); MoE: ``moe_<base>`` with N full experts (hidden width C, ReLU;
    no generic or task-specific path, as Table 2 '+MoE'). Built on the meta device; ``overrides`` go to
    both presets. Columns: experts, method, top_k, modules, params (exact), params_m (M), per_module_m.
    """
    lo, hi = BASES[base][2]
    rows = []
    for n in experts:
        k = round(0.6 * n)
        for method, name, args in (
            (MLORE, f"mlore_{base}", dict(ranks=spread_ranks(n, lo, hi))),
            (MOE, f"moe_{base}", dict(experts=n)),
        ):
            with torch.device("meta"):
                model = create_model(name, top_k=k, **args, **overrides)
            count, params = module_params(model)
            rows.append(
                dict(
                    base=base,
                    channels=model.cfg.channels,
                    experts=n,
                    method=method,
                    top_k=k,
                    modules=count,
                    params=params,
                    params_m=round(params / 1e6, 2),
                    per_module_m=round(params / count / 1e6, 2),
                )
            )
    return pd.DataFrame(rows)


def experts_notes(frame: pd.DataFrame) -> list[str]:
    """The notes of the Fig. 3 (right) table: what is counted and how each curve is built."""
    base, C, modules = frame["base"].iloc[0], frame["channels"].iloc[0], frame["modules"].iloc[0]
    lo, hi = BASES[base][2]
    return [
        f"Setting: {base} (C = {C}); counted: the decoder's {modules} MLoRE modules only (not the backbone, "
        "the 1×1 fuse convs, the scale fusion or the heads), parameters as trained (before merging).",
        f"MLoRE: N low-rank experts with ranks spread evenly over {lo}..{hi} (the `experts{{N}}` presets), "
        "k = round(0.6 N), plus the generic conv and the task-specific experts; inferred for N ≠ 15.",
        "standard MoE: N experts 3×3 C→C, ReLU, 1×1 C→C, no generic or task-specific path (Table 2 '+MoE'); "
        "at N = 0 it is therefore the smaller of the two.",
        "The paper plots this curve without numbers; Table 1 gives per-module counts of another setting "
        "(`table1.md`). per_module_m = params_m / modules.",
    ]


def experts_figure(frame: pd.DataFrame, title: str = "") -> Figure:
    """Line plot of :func:`experts_params`: parameters (M) of the MLoRE modules vs N, one line per method."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sns.lineplot(
        frame, x="experts", y="params_m", hue="method", style="method", markers=True, dashes=False, ax=ax
    )
    base, C, modules = frame["base"].iloc[0], frame["channels"].iloc[0], frame["modules"].iloc[0]
    ax.set(
        xlabel="number of experts N",
        ylabel=f"parameters of the {modules} MLoRE modules (M)",
        xticks=sorted(frame["experts"].unique()),
    )
    ax.set_title(
        title or f"MLoRE Fig. 3 (right): module parameters vs number of experts\n{base}, C = {C}", fontsize=10
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
