"""MLoRE's overall framework (§3.1, App. A.1) and the model every decoder of this family plugs into.

Paper: Yang et al., "Multi-Task Dense Prediction via Mixture of Low-Rank Experts", CVPR 2024,
arXiv:2403.17749 — §3.1 (multi-scale ViT features, two stacked modules per scale), App. A.1 (stacking).
The module itself (§3.3, Eq. 2) is in ``mlore_block.py``; routing in ``routing.py``; Eq. (3)–(7) in
``reparam.py``. Follows the official code (``specs/mlore.md`` §1.2, §1.8, §1.9):

    tokens of tap l (B, D, h, w) → fuse_l (1×1 D→C, shared by tasks) → module_{l,1} → module_{l,2}
    → per-task fusion of the L scales → ×4 bilinear (1/16 → 1/4) → conv head → bilinear to input size

The ablation rows of the paper are arguments of :class:`MLoRE`, not classes: ``decoder="baseline"``
(Table 2 row 1, ``baseline.py``), standard-MoE experts (``moe.py``), and every :class:`MLoReConfig` field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields

import torch
import torch.nn.functional as F
from torch import nn

from densemoe.errors import ConfigError, unknown
from densemoe.models.backbone import DROP_PATH_RATE, create_backbone
from densemoe.models.heads import ScaleFusion, build_heads
from densemoe.models.mlore_block import MLoReBlock, MLoReConfig, TaskNonLinear
from densemoe.models.routing import cv_squared
from densemoe.models.strict import StrictLoading
from densemoe.tasks import TaskSpec, dataset_info, tasks_for

DECODERS = ("mlore", "baseline")


class MLoReDecoder(nn.Module):
    """Per scale a shared 1×1 fuse D→C and ``modules_per_scale`` stacked MLoRE modules; then fusion."""

    def __init__(self, cfg: MLoReConfig, tasks: int, in_channels: Sequence[int], grid: tuple[int, int]):
        super().__init__()
        self.cfg, self.tasks = cfg, tasks
        self.fuse = nn.ModuleList(nn.Conv2d(d, cfg.channels, 1) for d in in_channels)  # fea_fuse_l
        self.scales = nn.ModuleList(
            nn.ModuleList(MLoReBlock(cfg, tasks, grid) for _ in range(cfg.modules_per_scale))
            for _ in in_channels
        )
        if cfg.nonlinear == "paper":  # App. A.1: GELU-BN-Linear between the stacked modules
            self.between = nn.ModuleList(
                nn.ModuleList(TaskNonLinear(tasks, cfg.channels) for _ in range(cfg.modules_per_scale - 1))
                for _ in in_channels
            )
        self.fusion = ScaleFusion(tasks, cfg.channels, len(in_channels))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        outs = []
        for l, f in enumerate(feats):
            x = self.fuse[l](f)  # (B, C, h, w), the same input for every task
            for m, block in enumerate(self.scales[l]):
                if m and self.cfg.nonlinear == "paper":
                    x = self.between[l][m - 1](x)
                x = block(x)  # (B, T*C, h, w)
            B, _, h, w = x.shape
            outs.append(x.view(B, self.tasks, -1, h, w))
        return self.fusion(outs)  # (B, T, C, h, w)

    def named_blocks(self):
        for l, blocks in enumerate(self.scales):
            for m, block in enumerate(blocks):
                yield f"scale{l + 1}.module{m + 1}", block


def resolve_tasks(tasks, dataset: str) -> dict[str, TaskSpec]:
    """``tasks``: None (all of ``dataset``), task names, or TaskSpecs / a name→TaskSpec mapping."""
    if isinstance(tasks, Mapping):
        tasks = list(tasks.values())
    if tasks is not None and all(isinstance(t, TaskSpec) for t in tasks):
        return {t.name: t for t in tasks}
    if isinstance(tasks, str):
        tasks = [tasks]
    return tasks_for(dataset, tasks)


class MLoRE(StrictLoading):
    """Backbone → decoder → per-task heads; ``forward(image)`` gives ``{task: (B, K_t, H, W)}``.

    Args: ``tasks`` (names, TaskSpecs or None = all of ``dataset``), ``dataset`` (sets classes and the
    default ``img_size``, the training input size that fixes the pos-embed grid and the position router),
    ``backbone`` (timm name) with ``pretrained`` (bool or weights file), ``backbone_args`` (timm kwargs,
    e.g. a smaller ``depth``), ``taps`` (1-based blocks), ``decoder`` ("mlore" or "baseline"), and the
    :class:`MLoReConfig` fields as keywords.
    """

    def __init__(
        self,
        tasks=None,
        dataset: str = "pascal-context",
        backbone: str = "vit_base_patch16_384",
        img_size: tuple[int, int] | None = None,
        pretrained: bool | str = False,
        backbone_args: dict | None = None,
        drop_path_rate: float = DROP_PATH_RATE,
        taps: tuple[int, ...] | None = None,
        decoder: str = "mlore",
        **block_args,
    ):
        super().__init__()
        valid = {f.name for f in fields(MLoReConfig)}
        for key in block_args:
            if key not in valid:
                raise unknown(
                    "model argument",
                    key,
                    valid
                    | {
                        "tasks",
                        "dataset",
                        "backbone",
                        "img_size",
                        "pretrained",
                        "backbone_args",
                        "taps",
                        "decoder",
                    },
                )
        if decoder not in DECODERS:
            raise unknown("decoder", decoder, DECODERS)
        self.cfg = MLoReConfig(**block_args)
        self.tasks = resolve_tasks(tasks, dataset)
        self.img_size = tuple(img_size or dataset_info(dataset).train_size)
        bb_args = dict(backbone_args or {})
        if taps is not None:
            bb_args["taps"] = tuple(taps)
        self.backbone = create_backbone(backbone, self.img_size, pretrained, drop_path_rate, **bb_args)
        self.patch_size = self.backbone.patch_size
        self._check_size(self.img_size)
        grid = (self.img_size[0] // self.backbone.reduction, self.img_size[1] // self.backbone.reduction)
        T, C = len(self.tasks), self.cfg.channels
        if decoder == "baseline":
            from densemoe.models.baseline import BaselineDecoder

            self.decoder = BaselineDecoder(T, C, self.backbone.channels)
        else:
            self.decoder = MLoReDecoder(self.cfg, T, self.backbone.channels, grid)
        self.heads = build_heads(self.tasks, C)
        self.pretrained_cfg = self.backbone.pretrained_cfg
        self.model_args = dict(
            tasks=list(self.tasks),
            dataset=dataset,
            backbone=backbone,
            img_size=self.img_size,
            backbone_args=backbone_args,
            drop_path_rate=drop_path_rate,
            taps=taps,
            decoder=decoder,
            **{k: v for k, v in asdict(self.cfg).items() if k in block_args},
        )

    def _check_size(self, size: tuple[int, int]) -> None:
        p = max(self.patch_size, self.backbone.reduction)
        if size[0] % p or size[1] % p:
            raise ConfigError(f"input size {size[0]}x{size[1]} is not divisible by the patch size {p}")

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        H, W = image.shape[-2:]
        self._check_size((H, W))
        x = self.decoder(self.backbone(image))  # (B, T, C, h, w)
        B, T, C, h, w = x.shape
        scale = self.backbone.reduction // 4  # 1/16 → 1/4 of the input (spec §1.8)
        x = F.interpolate(x.view(B, T * C, h, w), scale_factor=scale, mode="bilinear", align_corners=False)
        x = x.view(B, T, C, h * scale, w * scale)
        return {
            name: F.interpolate(head(x[:, t]), size=(H, W), mode="bilinear", align_corners=False)
            for t, (name, head) in enumerate(self.heads.items())
        }

    def named_blocks(self):
        """(name, MLoReBlock) pairs, e.g. ``scale1.module2``; none for the baseline."""
        yield from getattr(self.decoder, "named_blocks", lambda: ())()

    def routing_stats(self) -> dict[str, torch.Tensor]:
        """Per block, the routing weights g of the last forward, detached: (B, T, N), tasks in order."""
        return {n: b.last_routing.detach() for n, b in self.named_blocks() if b.last_routing is not None}

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """``{"load_balance": λ_lb · Σ_blocks CV²(g)}`` of the last forward (spec §1.6), weight included."""
        gs = [b.last_routing for _, b in self.named_blocks() if b.last_routing is not None]
        if not gs or self.cfg.load_balance_weight == 0:
            return {}
        return {"load_balance": self.cfg.load_balance_weight * torch.stack([cv_squared(g) for g in gs]).sum()}

    def reparameterize(self) -> MLoRE:
        """An equivalent eval-mode model whose modules each run one 3×3 conv per task and image (Eq. 3–7)."""
        from densemoe.models.reparam import reparameterize

        return reparameterize(self)
