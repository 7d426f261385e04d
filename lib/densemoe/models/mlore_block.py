"""The MLoRE module (§3.3, Eq. 2): generic path, shared low-rank experts with routers, task-specific experts.

Paper: Yang et al., "Multi-Task Dense Prediction via Mixture of Low-Rank Experts", CVPR 2024,
arXiv:2403.17749. Implements §3.3 (Eq. 2) as the official code runs it (``specs/mlore.md`` §1.3–1.7);
where the paper reads differently (§1.13) a :class:`MLoReConfig` flag names both behaviours.

This is the fast training path: all T tasks are stacked — along the channels ``(B, T*C, h, w)`` for the
per-task parts (one grouped conv), along the batch ``(B*T, C, h, w)`` for the shared ones (experts, generic
conv) — and the N shared experts run as one 3×3 conv C→Σr_n and one 1×1 conv Σr_n→C with each sample's
gates applied between them. There is no Python loop over experts, samples or tasks. ``benchmarks/
mlore_reference.py`` computes the same block with the per-expert loops of the official code.

Symbols: ``x_t`` is X^t (the task features after f_{t,1×1}), ``g`` is g^t (routing weights, (B, T, N)),
``gate`` is the code's scalar on the task-specific path, ``C`` the decoder width, ``T`` tasks, ``N`` experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from densemoe.models.heads import TaskConv
from densemoe.models.routing import ROUTERS, Routers, noisy_top_k

#: r_n = 16, 24, …, 128 (15 experts): official PASCAL configs, the paper's "16/128" row of Table 3.
RANKS_16_128 = tuple(range(16, 129, 8))


@dataclass(frozen=True)
class MLoReConfig:
    """Hyper-parameters of one MLoRE module (defaults: the official PASCAL ViT-B config, spec §1.11)."""

    channels: int = (
        640  # C (`final_embed_dim`): 452 L / 640 B / 192 S / 768 NYUD-L; the paper's text says 384 (L)
    )
    ranks: tuple[int, ...] = RANKS_16_128  # r_n of the N = len(ranks) shared experts (§3.3, Table 3)
    top_k: int = 9  # k, experts kept per image and task (official `topk`; Fig. 3, Table 11)
    task_rank: int = 64  # R of f_se^t (`spe_rank`: 72 L, 64 B, 32 S, 16 NYUD-L); 0 = no task path (Table 2)
    generic: str | int | None = "conv"  # f_g: "conv" = 3×3 C→C; int = low-rank rank (Table 9); None = none
    expert_kernel: int = 3  # kernel of W_lreb (code passes 3; Table 1 also counts 1×1 experts)
    expert_activation: str | None = None  # None: linear experts (MLoRE); "relu": standard MoE (moe.py)
    router: str = "basic+pos"  # Table 4: basic+pos, basic, pos, static (w/o sample-dep)
    pre_softmax_topk: bool = False  # code: False on PASCAL (no renormalising), True on NYUD; see routing.py
    softplus_noise: bool = False  # code: noise std = raw s; paper's recipe (Shazeer et al.): softplus(s)
    noisy_gating: bool = True  # ℓ̃ = ℓ + ε ⊙ s in training (App. A.2)
    task_expert_gate: bool = True  # code: f_se^t is scaled by the router's extra output; paper: no gate
    stop_generic_grad: bool = True  # §3.3 "we stop the gradients of this path": f_g reads x_t.detach()
    nonlinear: str = "code"  # "code": BN→GELU→Linear closes every module; "paper": GELU→BN→Linear between
    modules_per_scale: int = 2  # stacked MLoRE modules per scale (App. A.1, Table 8)
    load_balance_weight: float = 1e-4  # λ_lb (3e-4 L, 1e-4 B/S, 5e-4 NYUD-L); 0 = w/o LB loss (Table 12)

    @property
    def experts(self) -> int:
        return len(self.ranks)


def _init_low_rank(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """spec §1.10: W and M get PyTorch's default kaiming-uniform (a=√5), biases zero (M is not zeroed)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        nn.init.zeros_(bias)


class LowRankConv(nn.Sequential):
    """A k×k conv C→r with bias, then a 1×1 conv r→C with bias (a low-rank generic path, Table 9)."""

    def __init__(self, channels: int, rank: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(channels, rank, kernel_size, padding=kernel_size // 2), nn.Conv2d(rank, channels, 1)
        )
        for conv in self:
            _init_low_rank(conv.weight, conv.bias)


class SharedExperts(nn.Module):
    """f_lre: N experts E_n = M_n ∘ (act) ∘ W_n, shared by all tasks; returns Σ_n g_n E_n(x) (Eq. 1).

    W_n (k×k, C→r_n) are the row blocks of one ``down`` conv C→Σr; M_n (1×1, r_n→C) are the column blocks of
    one ``up`` matrix C×Σr. Since the gates are per image, Σ_n g_n M_n h_n = M (g ⊙ h): the gates scale h's
    channels between the two convs, and the M biases combine into g @ b_M.
    """

    def __init__(
        self, channels: int, ranks: tuple[int, ...], kernel_size: int = 3, activation: str | None = None
    ):
        super().__init__()
        self.ranks, self.kernel_size, self.activation = tuple(ranks), kernel_size, activation
        total = sum(ranks)
        self.down_weight = nn.Parameter(torch.empty(total, channels, kernel_size, kernel_size))  # W_lreb
        self.down_bias = nn.Parameter(torch.zeros(total))  # b_lreb
        self.up_weight = nn.Parameter(torch.empty(channels, total))  # W_lrea, (C, Σr)
        self.up_bias = nn.Parameter(torch.zeros(len(ranks), channels))  # b_lrea, (N, C)
        nn.init.kaiming_uniform_(self.down_weight, a=math.sqrt(5))  # fan-in C·k², as one expert's W
        with torch.no_grad():  # kaiming-uniform (a=√5) with fan-in r_n, as one expert's M: U(±1/√r_n)
            for w, r in zip(self.up_weight.split(self.ranks, dim=1), self.ranks, strict=True):
                w.uniform_(-1 / math.sqrt(r), 1 / math.sqrt(r))
        owner = [n for n, r in enumerate(ranks) for _ in range(r)]  # expert n of each of the Σr channels
        self.register_buffer("expert_of_channel", torch.tensor(owner, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """x (M, C, h, w), g (M, N) → (M, C, h, w)."""
        h = F.conv2d(x, self.down_weight, self.down_bias, padding=self.kernel_size // 2)  # (M, Σr, h, w)
        if self.activation == "relu":
            h = F.relu(h)
        h = h * g[:, self.expert_of_channel, None, None]  # g_n on expert n's r_n channels
        out = F.conv2d(h, self.up_weight[:, :, None, None])  # (M, C, h, w)
        return out + (g @ self.up_bias)[:, :, None, None]


class TaskExperts(nn.Module):
    """f_se^t: per task a low-rank expert, k×k conv C→R then 1×1 R→C, as two grouped convs."""

    def __init__(self, tasks: int, channels: int, rank: int):
        super().__init__()
        self.down = TaskConv(tasks, channels, rank, 3)  # W_seb^t
        self.up = TaskConv(tasks, rank, channels, 1)  # W_sea^t
        for conv in (self.down, self.up):
            _init_low_rank(conv.weight, conv.bias)

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x_t))  # (B, T*C, h, w)


class TaskNonLinear(nn.Module):
    """The paper's non-linear block between stacked modules (App. A.1): GELU → BN → Linear, per task."""

    def __init__(self, tasks: int, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(tasks * channels)
        self.linear = TaskConv(tasks, channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(F.gelu(x)))


class MLoReBlock(nn.Module):
    """One MLoRE module for all T tasks: (B, C, h, w) (shared input) or (B, T*C, h, w) → (B, T*C, h, w).

    ``nonlinear="code"`` ends the module with Q_t(GELU(BN_t(S^t))) as the official ``MOEBlock`` does;
    ``"paper"`` returns S^t of Eq. (2) and the decoder places :class:`TaskNonLinear` between modules.
    """

    def __init__(self, cfg: MLoReConfig, tasks: int, grid: tuple[int, int]):
        super().__init__()
        if cfg.router not in ROUTERS:
            from densemoe.errors import unknown

            raise unknown("router", cfg.router, ROUTERS)
        C, n = cfg.channels, cfg.experts
        self.cfg, self.tasks = cfg, tasks
        self.task_proj = TaskConv(tasks, C, C)  # f_{t,1×1}: X → X^t
        self.generic = None  # f_g, shared by all tasks
        if cfg.generic == "conv":
            self.generic = nn.Conv2d(C, C, 3, padding=1)
        elif cfg.generic is not None:
            self.generic = LowRankConv(C, int(cfg.generic))
        self.shared_experts = (
            SharedExperts(C, cfg.ranks, cfg.expert_kernel, cfg.expert_activation) if n else None
        )
        self.expert_norm = nn.BatchNorm2d(tasks * C) if n else None  # bn_all_t on Σ_n g_n E_n
        self.routers = Routers(tasks, C, n, grid, cfg.router) if (n or cfg.task_expert_gate) else None
        self.task_experts = TaskExperts(tasks, C, cfg.task_rank) if cfg.task_rank else None  # f_se^t
        if cfg.nonlinear == "code":
            self.out_norm = nn.BatchNorm2d(tasks * C)  # bn_t
            self.task_out = TaskConv(tasks, C, C)  # Q_t
        self.last_routing: torch.Tensor | None = None  # g of the last forward, (B, T, N)

    def route(self, x_t: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Routing weights g (B, T, N) (noisy in training) and the task-expert gate (B, T) or None."""
        if self.routers is None:
            return None, None
        B, _, h, w = x_t.shape
        logits, noise, gate = self.routers(x_t.reshape(B, self.tasks, -1, h, w))
        g = None
        if self.cfg.experts:
            noise = noise if (self.training and self.cfg.noisy_gating) else None
            g = noisy_top_k(logits, noise, self.cfg.top_k, self.cfg.pre_softmax_topk, self.cfg.softplus_noise)
        return g, (gate if self.cfg.task_expert_gate else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, C = self.tasks, self.cfg.channels
        x_t = self.task_proj(x)  # (B, T*C, h, w)
        B, _, h, w = x_t.shape
        g, gate = self.route(x_t)
        self.last_routing = g
        f_g = f_lre = f_se = 0
        if self.generic is not None:
            x_in = x_t.detach() if self.cfg.stop_generic_grad else x_t
            f_g = self.generic(x_in.reshape(B * T, C, h, w)).reshape(B, T * C, h, w)
        if self.shared_experts is not None:
            e = self.shared_experts(x_t.reshape(B * T, C, h, w), g.view(B * T, -1))  # (B*T, C, h, w)
            f_lre = self.expert_norm(e.reshape(B, T * C, h, w))
        if self.task_experts is not None:
            f_se = self.task_experts(x_t)
            if gate is not None:
                f_se = (f_se.reshape(B, T, C, h, w) * gate.view(B, T, 1, 1, 1)).reshape(B, T * C, h, w)
        s = f_g + f_lre + f_se  # Eq. (2): S^t = f_g(X^t) + f_sr^t(f_lre(X^t)) + f_se^t(X^t)
        if self.cfg.nonlinear == "code":
            s = self.task_out(F.gelu(self.out_norm(s)))  # spec §1.7
        return s
