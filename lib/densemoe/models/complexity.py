"""Parameters and FLOPs, counted the way the MLoRE paper counts them, and the paper-vs-ours tables.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products) on
a model built on the ``meta`` device, so ViT-L at 512×512 needs no memory. FlopCounterMode reports 2 FLOPs
per multiply-accumulate. **The paper's "FLOPs (G)" are MACs of the re-parameterised model divided by 2^30**
(``specs/mlore.md`` §1.15; e.g. ViT-L PASCAL: 613.9e9 MACs / 2^30 = 571.7, paper 571), so
:func:`paper_gflops` = counted FLOPs / 2 / 2^30. How each row is counted (``mode``):

- ``reparam``: MLoRE after :meth:`MLoRE.reparameterize` (Tables 2, 5, 7: all the LoRE rows share one
  number because every path merges into one 3×3 conv);
- ``plain``: the model as trained (the baseline has nothing to merge);
- ``active_k``: the standard MoE with only its k = 9 active experts computed (its ReLU experts cannot be
  merged; counted by building it with N = k experts). This reading reproduces the paper's 1834 G.

Timm's fused attention is switched off while counting, so attention runs as two matmuls and is counted
(``scaled_dot_product_attention`` on CPU/meta would not be).
"""

from __future__ import annotations

import csv
import datetime
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from densemoe.models.registry import create_model

GIBI = 2**30


def param_counts(model: torch.nn.Module) -> dict[str, float]:
    """Millions of parameters: total, backbone, decoder (decoder and heads), trainable."""

    def count(params) -> float:
        return sum(p.numel() for p in params) / 1e6

    total = count(model.parameters())
    backbone = count(model.backbone.parameters())
    trainable = count(p for p in model.parameters() if p.requires_grad)
    return dict(total=total, backbone=backbone, decoder=total - backbone, trainable=trainable)


def flop_count(model: torch.nn.Module, batch: int = 1, reparameterize: bool = True) -> int:
    """FLOPs (2 per MAC) of one eval forward at the model's ``img_size``; re-parameterised if asked."""
    model = model.eval()
    if reparameterize and any(True for _ in model.named_blocks()):
        model = model.reparameterize()
    device = next(model.parameters()).device
    attn = [m for m in model.modules() if hasattr(m, "fused_attn")]
    saved = [m.fused_attn for m in attn]
    for m in attn:
        m.fused_attn = False
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(batch, 3, *model.img_size, device=device))
    finally:
        for m, s in zip(attn, saved, strict=True):
            m.fused_attn = s
    return counter.get_total_flops()


def paper_gflops(flops: int) -> float:
    """The paper's unit: multiply-accumulates / 2^30."""
    return flops / 2 / GIBI


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table with its FLOPs (G) and parameters (M), and how we count it."""

    table: str
    row: str
    preset: str
    paper_gflops: float | None
    paper_params: float | None
    mode: str = "reparam"  # reparam | plain | active_k
    kwargs: tuple = ()


PAPER_ROWS = (
    PaperRow("Table 2", "Baseline", "baseline_vitb16_pascal", 391, 115, "plain"),
    PaperRow("Table 2", "+ MoE", "moe_vitb16_pascal", 1834, 676, "active_k"),
    PaperRow("Table 2", "+ LoRE", "mlore_vitb16_pascal_lore", 568, 213),
    PaperRow("Table 2", "+ GC", "mlore_vitb16_pascal_lore_gc", 568, 243),
    PaperRow("Table 2", "+ SPE", "mlore_vitb16_pascal", 568, 259),
    PaperRow("Table 5", "Ours (ViT-L)", "mlore_vitl16_pascal", 571, 407),
    PaperRow("Table 7", "ours (ViT-S)", "mlore_vits16_pascal", 72, 44),
)


def measure(row: PaperRow) -> dict:
    """Our parameters and FLOPs for ``row`` (built on the meta device)."""
    kwargs = dict(row.kwargs)
    with torch.device("meta"):
        model = create_model(row.preset, **kwargs)
        params = param_counts(model)
        counted = model
        if row.mode == "active_k":  # only the k active experts run (the paper's count, see module doc)
            counted = create_model(row.preset, **kwargs, experts=model.cfg.top_k)
        plain = flop_count(counted, reparameterize=False)
        merged = flop_count(counted, reparameterize=True) if row.mode == "reparam" else plain
    ours = paper_gflops(merged)
    out = dict(
        table=row.table,
        row=row.row,
        preset=row.preset,
        mode=row.mode,
        paper_gflops=row.paper_gflops,
        gflops=round(ours, 1),
        gflops_rel_diff=_rel(ours, row.paper_gflops),
        paper_params=row.paper_params,
        params=round(params["total"], 2),
        params_rel_diff=_rel(params["total"], row.paper_params),
        backbone_params=round(params["backbone"], 2),
        decoder_params=round(params["decoder"], 2),
        gmacs_plain=round(plain / 2e9, 1),
        gmacs_counted=round(merged / 2e9, 1),
    )
    return out


def _rel(ours: float, paper: float | None) -> float | None:
    return None if paper is None else round((ours - paper) / paper * 100, 2)


def render(rows: list[dict], out_dir: str | Path, name: str = "complexity") -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.csv`` under ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Parameters and FLOPs: paper vs densemoe",
        "",
        f"Rendered by `densemoe.models.complexity` on {datetime.date.today().isoformat()}. "
        "FLOPs in the paper's unit: multiply-accumulates / 2^30, counted with torch.utils.flop_counter "
        "on the meta device, batch 1, the dataset's input size. "
        "`mode`: reparam = re-parameterised MLoRE (Eq. 3-7); plain = as trained; "
        "active_k = standard MoE with only its k = 9 active experts computed. `gmacs_plain` is the un-merged "
        "model in 1e9 MACs. Relative differences in %.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, csv_path


def main(argv=None) -> None:
    """``python -m densemoe.models.complexity [OUT_DIR]``: measure :data:`PAPER_ROWS` and render them."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    rows = [measure(r) for r in PAPER_ROWS]
    for path in render(rows, argv[0] if argv else "reports/complexity"):
        print(path)


if __name__ == "__main__":
    main()
