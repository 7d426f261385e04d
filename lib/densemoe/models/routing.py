"""Task-specific routers f_sr^t, noisy top-k gating and the CV² load-balancing loss (MLoRE §3.3, App. A.2).

Follows the official code (``specs/mlore.md`` §1.4–1.6); the paper's readings are flags:

- The router's one output is ``2N+1`` numbers per image and task, named here: the gate logits ℓ, the noise
  scales s (training only) and ``gate``, the scalar that multiplies the task-specific expert (code only;
  the paper has no such gate, issue #2).
- Noise: ℓ̃ = ℓ + ε ⊙ s with the raw s (code); ``softplus_noise=True`` uses softplus(s) (Shazeer et al.,
  the paper's cited recipe).
- Top-k: ``pre_softmax_topk=False`` (PASCAL configs) takes softmax over all N then zeroes the N−k smallest,
  *without* renormalising; ``True`` (NYUD config) masks the N−k smallest logits, then softmax (sums to 1).
  Vectorised with ``topk``/``scatter`` (the official code loops over samples).
- The position-aware branch's spatial Linear(h·w→1) is tied to the construction grid in the official code.
  At another grid we resize its weight map bilinearly and rescale it by h0·w0/(h·w) so that it keeps the
  same total weight (a learned weighted *sum* over pixels stays comparable in scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from densemoe.models.heads import TaskConv

ROUTERS = ("basic+pos", "basic", "pos", "static")


class TaskLayerNorm(nn.Module):
    """T LayerNorms over dim 2 of ``(B, T, C, ...)``, eps 1e-5 (the router's ``nn.LayerNorm`` default)."""

    def __init__(self, tasks: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(tasks, channels))
        self.bias = nn.Parameter(torch.zeros(tasks, channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.movedim(2, -1), x.shape[2:3], eps=self.eps)  # (B, T, ..., C)
        shape = (self.weight.shape[0],) + (1,) * (x.dim() - 3) + (self.weight.shape[1],)
        return (x * self.weight.view(shape) + self.bias.view(shape)).movedim(-1, 2)


class Routers(nn.Module):
    """The T routers of one block, from the task features U = X^t (B, T, C, h, w).

    ``kind``: ``basic+pos`` (paper and code), ``basic`` (content branch only), ``pos`` (position branch only)
    — Table 4's first three rows — or ``static``: a learned per-task input vector instead of the sample
    features (Table 4, "w/o sample-dep"; inferred: the paper says only "the input is the learnable
    parameters", we feed a learned C/4 vector to the prediction layer).
    """

    def __init__(
        self, tasks: int, channels: int, experts: int, grid: tuple[int, int], kind: str = "basic+pos"
    ):
        super().__init__()
        c4 = channels // 4
        self.kind, self.experts, self.grid = kind, experts, tuple(grid)
        width = 0
        if kind in ("basic+pos", "basic"):  # two 1x1 convs C→C/4→C/4, LN+GELU between, global pool
            self.basic_in = TaskConv(tasks, channels, c4)
            self.basic_norm = TaskLayerNorm(tasks, c4)
            self.basic_out = TaskConv(tasks, c4, c4)
            width += c4
        if kind in ("basic+pos", "pos"):  # Linear(h*w → 1) per channel, LN over C, GELU, 1x1 C→C/4
            self.spatial_weight = nn.Parameter(torch.empty(tasks, grid[0] * grid[1]))
            self.spatial_bias = nn.Parameter(torch.zeros(tasks))
            nn.init.trunc_normal_(self.spatial_weight, std=0.02)  # spec §1.10: Linear layers
            self.pos_norm = TaskLayerNorm(tasks, channels)
            self.pos_out = TaskConv(tasks, channels, c4)
            width += c4
        if kind == "static":
            self.static_input = nn.Parameter(torch.empty(tasks, c4))
            nn.init.trunc_normal_(self.static_input, std=0.02)
            width = c4
        self.predict = TaskConv(tasks, width, 2 * experts + 1)  # -> [ℓ (N), s (N), gate (1)]

    def _spatial(self, h: int, w: int) -> torch.Tensor:
        weight = self.spatial_weight  # (T, h0*w0)
        if (h, w) != self.grid:
            h0, w0 = self.grid
            weight = F.interpolate(
                weight.view(-1, 1, h0, w0), size=(h, w), mode="bilinear", align_corners=False
            )
            weight = weight.view(-1, h * w) * (h0 * w0 / (h * w))
        return weight  # (T, h*w)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns logits ℓ (B, T, N), noise scales s (B, T, N), task-expert gate (B, T)."""
        B, T, C, h, w = u.shape
        feats = []
        if hasattr(self, "basic_in"):
            a = self.basic_in(u.view(B, T * C, h, w)).view(B, T, -1, h, w)  # (B, T, C/4, h, w)
            a = F.gelu(self.basic_norm(a)).mean(dim=(3, 4))  # pooled before basic_out: both are linear
            feats.append(self.basic_out(a.reshape(B, -1, 1, 1)).view(B, T, -1))  # (B, T, C/4)
        if hasattr(self, "spatial_weight"):
            p = torch.einsum("btcp,tp->btc", u.reshape(B, T, C, h * w), self._spatial(h, w))
            p = F.gelu(self.pos_norm(p + self.spatial_bias.view(1, T, 1)))  # (B, T, C)
            feats.append(self.pos_out(p.reshape(B, T * C, 1, 1)).view(B, T, -1))  # (B, T, C/4)
        if self.kind == "static":
            feats.append(self.static_input.unsqueeze(0).expand(B, -1, -1))  # (B, T, C/4)
        z = self.predict(torch.cat(feats, dim=2).reshape(B, -1, 1, 1)).view(B, T, -1)  # (B, T, 2N+1)
        n = self.experts
        return z[..., :n], z[..., n : 2 * n], z[..., 2 * n]


def noisy_top_k(
    logits: torch.Tensor,
    noise_scale: torch.Tensor | None,
    k: int,
    pre_softmax_topk: bool = False,
    softplus_noise: bool = False,
) -> torch.Tensor:
    """Routing weights w (…, N) from logits ℓ; noise is added when ``noise_scale`` is given (training).

    Keeps the k largest; see the module docstring for the two ``pre_softmax_topk`` variants.
    """
    if noise_scale is not None:
        std = F.softplus(noise_scale) if softplus_noise else noise_scale
        logits = logits + torch.randn_like(logits) * std  # ℓ̃ = ℓ + ε ⊙ s
    n = logits.shape[-1]
    if k >= n:
        return logits.softmax(dim=-1)
    dropped = logits.topk(n - k, dim=-1, largest=False).indices  # (…, N-k)
    if pre_softmax_topk:
        return logits.scatter(-1, dropped, float("-inf")).softmax(dim=-1)
    return logits.softmax(dim=-1).scatter(-1, dropped, 0.0)


def cv_squared(weights: torch.Tensor) -> torch.Tensor:
    """CV² of the expert importance (spec §1.6): rows (T·B) averaged, then (std/mean)², unbiased std."""
    importance = weights.reshape(-1, weights.shape[-1]).float().mean(dim=0)  # (N,)
    if importance.numel() < 2:
        return importance.sum() * 0
    return importance.var() / (importance.mean() ** 2 + 1e-10)
