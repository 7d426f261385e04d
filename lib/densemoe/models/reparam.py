"""Re-parameterised inference (MLoRE §3.3, Eq. 3–7): each module becomes one 3×3 conv per task and image.

Paper: Yang et al., CVPR 2024, arXiv:2403.17749, §3.3 "Re-parameterization during inference". The paths of
Eq. (2) are linear, so for task t and image b

    W_r = W_g + 𝔅(γ/σ) Σ_n g_n W_lreb^n W_lrea^n + gate · W_seb^t W_sea^t                 Eq. (3), (5)
    b_r = b_g + γ/σ (Σ_n g_n (b_lreb^n W_lrea^n + b_lrea^n) − μ) + β
              + gate · (b_seb^t W_sea^t + b_sea^t)                                      Eq. (4), (6)
    S^t = X^t ⊛ W_r + b_r                                                               Eq. (7)

where (γ, σ, μ, β) are ``bn_all_t``'s affine weights and *running* statistics — so this holds in eval mode
only — and ``gate`` is the code's scalar on the task-specific path (1 with ``task_expert_gate=False``).
As in the official ``MLoRE_repara`` (``specs/mlore.md`` §1.12) every expert pair is merged once into a
C×C kernel; unlike it, the per-image kernels are formed for the whole batch at once (an einsum over the
gates) and applied as one grouped conv with B·T groups, with no Python loop over samples.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from densemoe.errors import ConfigError
from densemoe.models.mlore_block import LowRankConv, MLoReBlock


def _merge(up: torch.Tensor, up_bias: torch.Tensor, down: torch.Tensor, down_bias: torch.Tensor, k: int):
    """1×1 ``up`` (C, r) after k×k ``down`` (r, C, kd, kd) → one k×k kernel (C, C, k, k) and bias (C,)."""
    kd = down.shape[-1]
    weight = (up @ down.reshape(down.shape[0], -1)).view(up.shape[0], down.shape[1], kd, kd)
    pad = (k - kd) // 2
    return F.pad(weight, (pad,) * 4), up_bias + up @ down_bias


class ReparamMLoReBlock(nn.Module):
    """The eval-only form of an :class:`MLoReBlock` (same inputs, outputs and ``last_routing``)."""

    def __init__(self, block: MLoReBlock):
        super().__init__()
        cfg, T, C = block.cfg, block.tasks, block.cfg.channels
        if cfg.expert_activation is not None:
            raise ConfigError("a standard-MoE module (ReLU experts) cannot be re-parameterised")
        self.cfg, self.tasks, self.k = cfg, T, 3
        self.task_proj, self.routers = block.task_proj, block.routers
        if cfg.nonlinear == "code":
            self.out_norm, self.task_out = block.out_norm, block.task_out
        self.shared_experts = None
        self.last_routing: torch.Tensor | None = None
        k = self.k
        with torch.no_grad():
            like = dict(device=block.task_proj.weight.device, dtype=block.task_proj.weight.dtype)
            weight, bias = torch.zeros(C, C, k, k, **like), torch.zeros(C, **like)  # W_g, b_g
            if isinstance(block.generic, nn.Conv2d):
                weight, bias = block.generic.weight.clone(), block.generic.bias.clone()
            elif isinstance(block.generic, LowRankConv):
                down, up = block.generic
                weight, bias = _merge(up.weight[:, :, 0, 0], up.bias, down.weight, down.bias, k)
            self.register_buffer("generic_weight", weight)  # (C, C, k, k)
            self.register_buffer("generic_bias", bias)
            if cfg.experts:
                se, bn = block.shared_experts, block.expert_norm
                pairs = [
                    _merge(up, ub, down, db, k)
                    for up, ub, down, db in zip(
                        se.up_weight.split(se.ranks, 1),
                        se.up_bias,
                        se.down_weight.split(se.ranks),
                        se.down_bias.split(se.ranks),
                        strict=True,
                    )
                ]
                self.register_buffer("expert_weight", torch.stack([w for w, _ in pairs]))  # (N, C, C, k, k)
                self.register_buffer("expert_bias", torch.stack([b for _, b in pairs]))  # (N, C)
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # γ/σ, (T*C,)
                self.register_buffer("bn_scale", scale.view(T, C))
                self.register_buffer("bn_shift", (bn.bias - bn.running_mean * scale).view(T, C))  # β − μγ/σ
            if cfg.task_rank:
                te = block.task_experts
                up, down = te.up.task_weight()[..., 0, 0], te.down.task_weight()  # (T, C, R), (T, R, C, 3, 3)
                pairs = [
                    _merge(up[t], te.up.bias.view(T, C)[t], down[t], te.down.bias.view(T, -1)[t], k)
                    for t in range(T)
                ]
                self.register_buffer("task_weight", torch.stack([w for w, _ in pairs]))  # (T, C, C, k, k)
                self.register_buffer("task_bias", torch.stack([b for _, b in pairs]))  # (T, C)

    route = MLoReBlock.route

    def kernels(self, g: torch.Tensor | None, gate: torch.Tensor | None, batch: int):
        """W_r (B, T, C, C, k, k) and b_r (B, T, C) of Eq. (5)–(6)."""
        T, C, k = self.tasks, self.cfg.channels, self.k
        weight = self.generic_weight.expand(batch, T, C, C, k, k)
        bias = self.generic_bias.expand(batch, T, C)
        if g is not None:
            w_lre = torch.einsum("btn,nocyx->btocyx", g, self.expert_weight)  # Σ_n g_n W_lreb^n W_lrea^n
            weight = weight + self.bn_scale[None, :, :, None, None, None] * w_lre  # Eq. (3)
            bias = bias + self.bn_scale * (g @ self.expert_bias) + self.bn_shift  # Eq. (4)
        if self.cfg.task_rank:
            gain = (
                gate if gate is not None else torch.ones(batch, T, dtype=weight.dtype, device=weight.device)
            )
            weight = weight + gain[:, :, None, None, None, None] * self.task_weight  # Eq. (5)
            bias = bias + gain[:, :, None] * self.task_bias  # Eq. (6)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise ConfigError(
                "a re-parameterised MLoRE module runs in eval mode only (its BN folds use running "
                "statistics); train the plain model and call reparameterize() again"
            )
        T, C, k = self.tasks, self.cfg.channels, self.k
        x_t = self.task_proj(x)  # (B, T*C, h, w)
        B, _, h, w = x_t.shape
        g, gate = self.route(x_t)
        self.last_routing = g
        weight, bias = self.kernels(g, gate, B)
        s = F.conv2d(
            x_t.reshape(1, B * T * C, h, w),
            weight.reshape(B * T * C, C, k, k),
            bias.reshape(-1),
            padding=k // 2,
            groups=B * T,
        ).view(B, T * C, h, w)  # Eq. (7)
        if self.cfg.nonlinear == "code":
            s = self.task_out(F.gelu(self.out_norm(s)))
        return s


def reparameterize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) whose MLoRE modules are :class:`ReparamMLoReBlock`."""
    if model.training:
        raise ConfigError(
            "reparameterize() needs eval mode (BN folds use running statistics): call model.eval()"
        )
    if any(b.cfg.expert_activation is not None for _, b in model.named_blocks()):
        raise ConfigError("a standard-MoE model (ReLU experts) cannot be re-parameterised")
    for _, block in model.named_blocks():
        block.last_routing = None  # may hold the autograd graph of the last training step
    new = copy.deepcopy(model)
    for scale in getattr(new.decoder, "scales", []):
        for m, block in enumerate(scale):
            if isinstance(block, MLoReBlock):
                scale[m] = ReparamMLoReBlock(block)
    return new.eval()
