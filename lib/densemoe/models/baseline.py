"""The baseline of MLoRE's ablations (Table 2 row 1, Table 13): per-task linear projections of the taps.

Paper: Yang et al., CVPR 2024, arXiv:2403.17749, §4.2: "the backbone features from the 3rd, 6th, 9th and
12th layers are utilized as the multi-scale features, each of which is followed by a linear layer to
project the channel dimension to the output channels for each task". No code was released for it.

inferred: the per-task scales are *summed* (no fusion layer) and go through the same ×4 upsampling and
conv heads as MLoRE. This is the reading that reproduces the paper's own counts for ViT-B on PASCAL
(Table 2: 115 M parameters, 391 G FLOPs in the paper's unit; see ``complexity.py``); adding MLoRE's
fusion layer would give ~123 M.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from densemoe.models.heads import SumFusion, TaskConv


class BaselineDecoder(nn.Module):
    """Per tap and task a 1×1 linear D→C (one dense conv D→T·C per tap), summed over taps."""

    def __init__(self, tasks: int, channels: int, in_channels: Sequence[int]):
        super().__init__()
        self.tasks = tasks
        self.project = nn.ModuleList(TaskConv(tasks, d, channels) for d in in_channels)
        self.fusion = SumFusion()

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        outs = []
        for proj, f in zip(self.project, feats, strict=True):
            x = proj(f)  # (B, T*C, h, w)
            B, _, h, w = x.shape
            outs.append(x.view(B, self.tasks, -1, h, w))
        return self.fusion(outs)  # (B, T, C, h, w)
