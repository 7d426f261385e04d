"""Per-task layers: task-grouped convs, the per-task multi-scale fusion and the conv heads.

Tasks are kept stacked along the channels, ``(B, T*C, h, w)`` (a free view of ``(B, T, C, h, w)``), so
that T per-task convs run as one grouped conv (:class:`TaskConv`), and per-task BatchNorms are one
``BatchNorm2d(T*C)`` (BN is per channel, so its statistics are exactly those of T separate BNs).

Sources: ``specs/mlore.md`` §1.8 (multi-scale fusion), §1.9 (conv heads), §1.10 (initialisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from densemoe.tasks import TaskSpec


class TaskConv(nn.Conv2d):
    """T per-task k×k convs C_in→C_out with bias, as one grouped conv.

    Input ``(B, T*C_in, h, w)`` (task t owns channels ``t*C_in:(t+1)*C_in``) or ``(B, C_in, h, w)`` shared
    by every task (then one dense conv with the T weights stacked: the same result without copying the
    input T times). Output ``(B, T*C_out, h, w)``. The weight ``(T*C_out, C_in, k, k)`` has the fan-in and
    hence the default init of one task's conv.
    """

    def __init__(self, tasks: int, c_in: int, c_out: int, kernel_size: int = 1, bias: bool = True):
        super().__init__(
            tasks * c_in, tasks * c_out, kernel_size, padding=kernel_size // 2, groups=tasks, bias=bias
        )
        self.tasks, self.c_in, self.c_out = tasks, c_in, c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = 1 if x.shape[1] == self.c_in else self.tasks
        return F.conv2d(x, self.weight, self.bias, padding=self.padding, groups=groups)

    def task_weight(self) -> torch.Tensor:
        """The weight as ``(T, C_out, C_in, k, k)``."""
        return self.weight.view(self.tasks, self.c_out, self.c_in, *self.kernel_size)


class ScaleFusion(nn.Module):
    """Per-task fusion of the L scales (spec §1.8): softmax pixel weights over scales, then a weighted sum.

    ``S_t = softmax_l(conv3x3(GELU(BN(conv1x1(cat_l B_{l,t})))))``, ``O_t = Σ_l S_t[l] ⊙ B_{l,t}``.
    """

    def __init__(self, tasks: int, channels: int, scales: int):
        super().__init__()
        self.tasks, self.channels, self.scales = tasks, channels, scales
        self.reduce = TaskConv(tasks, scales * channels, channels, 1)
        self.norm = nn.BatchNorm2d(tasks * channels)
        self.mask = TaskConv(tasks, channels, scales, 3)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(feats, dim=2)  # (B, T, L, C, h, w)
        B, T, L, C, h, w = x.shape
        logits = self.mask(F.gelu(self.norm(self.reduce(x.view(B, T * L * C, h, w)))))  # (B, T*L, h, w)
        weights = logits.view(B, T, L, 1, h, w).softmax(dim=2)
        return (weights * x).sum(dim=2)  # (B, T, C, h, w)


class SumFusion(nn.Module):
    """Sum of the scales (the baseline's fusion; inferred, see ``baseline.py``)."""

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(feats, dim=0).sum(dim=0)  # (B, T, C, h, w)


class ConvHead(nn.Module):
    """The official ``conv`` head (spec §1.9): 3×3 conv C→C, BN, GELU, 1×1 conv C→K."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.pred = nn.Conv2d(channels, out_channels, 1)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)  # spec §1.10
        nn.init.normal_(self.pred.bias, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(F.gelu(self.norm(self.proj(x))))


def build_heads(tasks: dict[str, TaskSpec], channels: int) -> nn.ModuleDict:
    """One :class:`ConvHead` per task, predicting ``TaskSpec.channels`` maps."""
    return nn.ModuleDict({name: ConvHead(channels, spec.channels) for name, spec in tasks.items()})
