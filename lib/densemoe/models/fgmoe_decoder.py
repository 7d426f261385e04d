"""FGMoE's non-MoE decoder parts [F]: the Feature Aggregator, the per-task Deformable Mixers, the task heads.

Figure 1 of arXiv:2507.19077 names a "Feature Aggregator" (with "Up" and "Concat") and per-task "Deformable
Mixers"; their insides are unknown. inferred: they are the ones of the authors' public DeGMix ViT head
(``yangyangxu0/DeGMix``, ``src/model/heads/demt_vit_head.py``: ``FeatConv``, ``DefMixer``, ``ChlSpl``,
``Offset``; read, not copied; ``specs/fgmoe.md`` §1.3), re-written for T tasks at once: the per-task
layers run as grouped convs on tasks stacked along the channels, ``(B, T*C, h, w)`` (as in ``heads.py``).
The deformable convolution is ``torchvision.ops.DeformConv2d``, as DeGMix uses torchvision's op too.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d

from densemoe.models.heads import TaskConv
from densemoe.tasks import TaskSpec

OFFSETS = ("degmix", "relative")
_KERNEL = 3  # DeGMix's offset branch predicts a 3×3 kernel's worth (2·9) of offset features


def conv_bn_relu(c_in: int, c_out: int, kernel_size: int = 3) -> list[nn.Module]:
    """k×k conv (no bias) → BN → ReLU, DeGMix's ConvBNReLU."""
    conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False)
    return [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class FeatureAggregator(nn.Module):
    """[F] "Feature Aggregator": per tap two 3×3 conv-BN-ReLU D→w→w, "Up" (×``scale`` bilinear), "Concat",
    then two 3×3 conv-BN-ReLU L·w→C→C. inferred: DeGMix's FeatConv sizes, w = 128 and C = 256 = 2w.
    """

    def __init__(self, in_channels: Sequence[int], width: int, channels: int, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.reduce = nn.ModuleList(
            nn.Sequential(*conv_bn_relu(d, width), *conv_bn_relu(width, width)) for d in in_channels
        )
        self.fuse = nn.Sequential(
            *conv_bn_relu(len(in_channels) * width, channels), *conv_bn_relu(channels, channels)
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        up = [
            F.interpolate(r(f), scale_factor=self.scale, mode="bilinear", align_corners=False)
            for r, f in zip(self.reduce, feats, strict=True)
        ]  # L × (B, w, s*h, s*w)
        return self.fuse(torch.cat(up, dim=1))  # X: (B, C, s*h, s*w)


def sampling_grid(h: int, w: int, device=None, dtype=None) -> torch.Tensor:
    """DeGMix ``Offset._get_p``'s p_0 + p_n: absolute 1-based pixel rows/cols plus the 3×3 kernel offsets,
    as (2·9, h, w) = [rows of the 9 taps ; cols of the 9 taps]."""
    r = torch.arange(-(_KERNEL // 2), _KERNEL // 2 + 1, device=device, dtype=dtype)
    pn_r, pn_c = torch.meshgrid(r, r, indexing="ij")  # (3, 3)
    rows = torch.arange(1, h + 1, device=device, dtype=dtype).view(1, h, 1).expand(1, h, w)
    cols = torch.arange(1, w + 1, device=device, dtype=dtype).view(1, 1, w).expand(1, h, w)
    return torch.cat([rows + pn_r.reshape(-1, 1, 1), cols + pn_c.reshape(-1, 1, 1)])  # (18, h, w)


class ChannelDeformConv(nn.Module):
    """T per-task "channel-split" deformable 1×1 convs (DeGMix ``ChlSpl``): each input channel is sampled at
    its own predicted offset (offset groups = channels), then mixed by a 1×1 weight.

    Offsets: a 3×3 conv C→18 (weights zero-initialised), then a 3×3 conv 18→2C in two groups. ``offsets=
    "degmix"`` feeds that second conv the sampling positions p = p_0 + p_n + Δ (absolute pixel coordinates,
    so offsets depend on the position and the map size), as DeGMix's code does; ``"relative"`` feeds it Δ
    only (the usual deformable-conv practice). DeGMix's unused fixed-shift buffer and its no-op
    gradient-scaling hook are not reproduced.
    """

    def __init__(self, tasks: int, channels: int, offsets: str = "degmix"):
        super().__init__()
        self.tasks, self.offsets = tasks, offsets
        k2 = 2 * _KERNEL * _KERNEL
        self.offset_in = TaskConv(tasks, channels, k2, 3)  # Offset.p_conv
        nn.init.zeros_(self.offset_in.weight)
        self.offset_out = nn.Conv2d(tasks * k2, tasks * 2 * channels, 3, padding=1, groups=2 * tasks)  # .opt
        self.deform = DeformConv2d(tasks * channels, tasks * channels, 1, groups=tasks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, h, w = x.shape  # (B, T*C, h, w)
        d = self.offset_in(x).float()  # Δ, (B, T*18, h, w)
        with _full_precision(x.device.type):  # bf16 would cost ±0.5 px at absolute positions ~128;
            if self.offsets == "degmix":  # and torchvision's CPU kernel has no bf16
                grid = sampling_grid(h, w, x.device, torch.float32)
                d = (d.view(B, self.tasks, -1, h, w) + grid).view(B, -1, h, w)  # p = p_0 + p_n + Δ
            offsets = self.offset_out(d)  # (B, 2*T*C, h, w): one (Δy, Δx) per input channel
            return self.deform(x.float(), offsets)


def _full_precision(device_type: str):
    """Autocast switched off (float32) where it could be on; a no-op elsewhere (e.g. the meta device)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


class MixerStage(nn.Module):
    """One DeGMix DefMixer stage, per task: x ← BN(GELU(1×1 conv x)); x ← x + BN(GELU(deform(x)))."""

    def __init__(self, tasks: int, channels: int, offsets: str):
        super().__init__()
        self.proj = TaskConv(tasks, channels, channels)
        self.norm = nn.BatchNorm2d(tasks * channels)
        self.deform = ChannelDeformConv(tasks, channels, offsets)
        self.deform_norm = nn.BatchNorm2d(tasks * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.gelu(self.proj(x)))  # (B, T*C, h, w); a (B, C, h, w) input is shared by all tasks
        return x + self.deform_norm(F.gelu(self.deform(x)))


class DeformableMixers(nn.Module):
    """[F] the per-task "Deformable Mixers": X (B, C, h, w) → X_t stacked (B, T*C, h, w); DeGMix depth 2."""

    def __init__(self, tasks: int, channels: int, depth: int = 2, offsets: str = "degmix"):
        super().__init__()
        self.stages = nn.Sequential(*(MixerStage(tasks, channels, offsets) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


class BottleneckHead(nn.Sequential):
    """Per-task head (DeGMix ``bottleneck`` + ``final_logits``): 3×3 conv-BN-ReLU C→c, then 1×1 c→K_t.

    inferred: [F] only says the sum "produces each task's prediction"; DeGMix uses c = D/8.
    """

    def __init__(self, channels: int, hidden: int, out_channels: int):
        super().__init__(*conv_bn_relu(channels, hidden), nn.Conv2d(hidden, out_channels, 1))


def build_bottleneck_heads(tasks: dict[str, TaskSpec], channels: int, hidden: int) -> nn.ModuleDict:
    """One :class:`BottleneckHead` per task, predicting ``TaskSpec.channels`` maps."""
    return nn.ModuleDict({n: BottleneckHead(channels, hidden, s.channels) for n, s in tasks.items()})
