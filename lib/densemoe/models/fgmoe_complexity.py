"""Trainable vs total parameters and FLOPs of FGMoE next to MLoRE (issue #6: the abstract's "fewer
parameters" claim, measured on our inferred architecture).

Counted with :mod:`densemoe.models.complexity` (``param_counts``, ``flop_count`` on the ``meta`` device,
batch 1, the dataset's input size); FLOPs in the MLoRE paper's unit, multiply-accumulates / 2^30:

- ``flop_count`` does not see ``torchvision::deform_conv2d``; each deformable conv is added analytically:
  its 1×1 mixing (T·C·C MACs per pixel) plus 4 bilinear taps per sampled channel (4·T·C per pixel).
- FGMoE's routed experts run in ``dispatch="dense"`` (every expert computed, gates zero outside the top-k);
  ``gflops_active`` counts only the selected experts: k per token and task in the task MoEs; in the global
  MoE, W_out of k_g experts per task and W_in of at most min(N_g, T·k_g) experts per token (W_in is shared
  by the tasks, so with T·k_g ≥ N_g nothing is saved there).
- MLoRE rows are re-parameterised (as the paper counts them).
"""

from __future__ import annotations

import torch

from densemoe.models.complexity import GIBI, flop_count, param_counts
from densemoe.models.fgmoe import FGMoE
from densemoe.models.registry import create_model

FGMOE = ("fgmoe_vitb16_pascal", "fgmoe_vitl16_pascal", "fgmoe_vitl16_nyud", "fgmoe_tiny_synth")
MLORE = ("mlore_vitb16_pascal", "mlore_vitl16_pascal", "mlore_vitl16_nyud", "mlore_tiny_synth")
ABLATIONS = ("coarse", "dense_mlp", "no_shared", "no_global", "full_ft", "experts16", "top4")


def fgmoe_extra_macs(model: FGMoE) -> tuple[float, float]:
    """(deformable-conv MACs flop_count misses, routed-expert MACs that sparse dispatch skips)."""
    cfg, T = model.cfg, len(model.tasks)
    H, W = (s // 4 for s in model.img_size)  # the decoder runs at 1/4 of the input
    C, pixels = cfg.channels, H * W
    deform = cfg.mixer_depth * pixels * (T * C * C + 4 * T * C)
    skipped = 0.0
    if cfg.routed_experts > 1:  # W_in and W_out of the N_r − k unselected experts, per task and pixel
        skipped += T * pixels * 2 * C * (cfg.hidden // cfg.routed_experts) * (cfg.routed_experts - cfg.top_k)
    if cfg.global_experts:
        h = cfg.global_hidden or cfg.hidden // cfg.global_experts
        skipped += T * pixels * C * h * (cfg.global_experts - cfg.global_top_k)  # W_out per task
        skipped += pixels * C * h * max(0, cfg.global_experts - T * cfg.global_top_k)  # W_in, shared
    return deform, skipped


def row(name: str) -> dict:
    with torch.device("meta"):
        model = create_model(name)
        p = param_counts(model)
        fgmoe = isinstance(model, FGMoE)
        macs = flop_count(model, reparameterize=not fgmoe) / 2
    deform, skipped = fgmoe_extra_macs(model) if fgmoe else (0.0, 0.0)
    return dict(
        preset=name,
        finetune=model.cfg.finetune if fgmoe else "full",
        total_m=round(p["total"], 2),
        backbone_m=round(p["backbone"], 2),
        decoder_m=round(p["decoder"], 2),
        trainable_m=round(p["trainable"], 2),
        trainable_pct=round(100 * p["trainable"] / p["total"], 1),
        gflops=round((macs + deform) / GIBI, 1),
        gflops_active=round((macs + deform - skipped) / GIBI, 1),
    )


def decoder_rows(names=None) -> list[dict]:
    """:func:`row` of each preset: by default FGMoE and MLoRE side by side, then the FGMoE ablations."""
    if names is None:
        names = [n for pair in zip(FGMOE, MLORE, strict=True) for n in pair]
        names += [f"fgmoe_vitb16_pascal_{a}" for a in ABLATIONS]
    return [row(n) for n in names]
