"""FGMoE's experts and routers (spec §1.4 a–d): fine-grained intra-task experts, shared experts, global MoE.

Paper: Xu, Ye, Su, "Multi-Task Dense Prediction Fine-Tuning with Mixture of Fine-Grained Experts",
ACM MM 2025, arXiv:2507.19077 — no public code; the model file ``fgmoe.py`` lists the sources line by line.
[A] = abstract, [F] = Figure-1 caption, everything else here is ``inferred:`` (``specs/fgmoe.md`` §1.4).

One building block serves both MoEs: :class:`FineGrainedExperts`, G independent "sliced" MLPs
C → H → C. [A] "intra-task experts that partition along intermediate hidden dimensions of MLPs": the hidden
units of a dense MLP are cut into N equal slices, expert E_i owns rows i of W_in, entries i of b_in and
columns i of W_out, so the N routed experts hold exactly the dense MLP's parameters (its output bias b_out is
applied once, outside the gates) and with every gate = 1 the layer *is* the dense MLP. Shared experts
(always on, gate 1) are further slices of the same matrices, stored first: hidden = [S·h_s | N·h].

Two exact ways to compute the routed part, no Python loop over experts in either:

- ``dispatch="dense"`` (default): every expert runs, the gates (zero outside the top-k) scale each expert's
  hidden slice; one batched matmul per layer. FLOPs of the dense MLP, autograd-friendly, works on ``meta``.
- ``dispatch="sparse"``: token-choice dispatch; the (token, expert) pairs are sorted by expert, padded to the
  largest expert load (no token is dropped) and run as one ``bmm`` over experts; FLOPs ∝ k/N of dense.

Symbols: ``x`` tokens (G, M, C) with M = B·h·w pixels, ``g`` gates (T, M, N), ``h`` one expert's hidden size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from densemoe.models.routing import cv_squared, noisy_top_k

DISPATCH = ("dense", "sparse")
LOAD_BALANCE = ("cv2", "switch")


def activation(x: torch.Tensor) -> torch.Tensor:
    """inferred: GELU, the activation of the authors' DeGMix channel MLP (spec §1.3)."""
    return F.gelu(x)


class FineGrainedExperts(nn.Module):
    """G sliced MLPs C→H→C, H = S·h_s (shared, always on) + N·h (routed), one per group (task or pool).

    ``forward(x, g)``: x (G, M, C), g (T, M, N) gates of the routed experts with G = T, or G = 1 and any T
    (one pool read with T different gatings: the global MoE). Returns (T, M, C) =
    b_out + Σ_s S_s(x) + Σ_i g_i E_i(x), E_i(x) = W_out,i act(W_in,i x + b_in,i).
    """

    def __init__(
        self, groups: int, channels: int, routed: int, hidden: int, shared: int = 0, shared_hidden: int = 0
    ):
        super().__init__()
        self.routed, self.hidden = routed, hidden
        self.shared_width = shared * shared_hidden  # S·h_s hidden units, stored first
        width = self.shared_width + routed * hidden
        self.w_in = nn.Parameter(torch.empty(groups, channels, width))  # (G, C, H): x @ W_in
        self.b_in = nn.Parameter(torch.empty(groups, width))
        self.w_out = nn.Parameter(torch.empty(groups, width, channels))  # (G, H, C)
        self.b_out = nn.Parameter(torch.empty(groups, channels))
        with torch.no_grad():  # nn.Linear's default init of the whole dense MLP (fan-in C, then H)
            for p, fan_in in ((self.w_in, channels), (self.b_in, channels), (self.w_out, width)):
                p.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
            self.b_out.uniform_(-1 / math.sqrt(width), 1 / math.sqrt(width))

    def forward(self, x: torch.Tensor, g: torch.Tensor | None, top_k: int = 0, dispatch: str = "dense"):
        S = self.shared_width
        out = self.b_out[:, None, :]  # (G, 1, C)
        if S:
            shared = activation(torch.baddbmm(self.b_in[:, None, :S], x, self.w_in[:, :, :S]))  # (G, M, S)
            out = out + torch.bmm(shared, self.w_out[:, :S])  # (G, M, C)
        if self.routed and g is not None:
            routed = self._sparse(x, g, top_k) if dispatch == "sparse" else self._dense(x, g)
            out = out + routed  # (T, M, C)
        return out.expand(g.shape[0] if g is not None else x.shape[0], x.shape[1], -1)

    def _dense(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        S, N, h = self.shared_width, self.routed, self.hidden
        hid = activation(torch.baddbmm(self.b_in[:, None, S:], x, self.w_in[:, :, S:]))  # (G, M, N*h)
        hid = hid.unflatten(-1, (N, h)) * g[..., None]  # (T, M, N, h): g_i on expert i's slice
        return torch.matmul(hid.flatten(-2), self.w_out[:, S:])  # (T, M, C)

    def _sparse(self, x: torch.Tensor, g: torch.Tensor, top_k: int) -> torch.Tensor:
        S, N, h = self.shared_width, self.routed, self.hidden
        G, M, C = x.shape
        T = g.shape[0]
        weight, expert = g.topk(top_k, dim=-1)  # (T, M, k): the selected experts and their gates
        task = torch.arange(T, device=x.device).view(T, 1, 1).expand_as(expert)
        token = torch.arange(M, device=x.device).view(1, M, 1).expand_as(expert)
        owner = task if G > 1 else torch.zeros_like(task)  # which weight set (and input) a pair uses
        group = (owner * N + expert).reshape(-1)  # (P,), P = T*M*k pairs
        order = group.argsort(stable=True)
        group = group[order]
        counts = torch.bincount(group, minlength=G * N)
        slot = torch.arange(group.numel(), device=x.device) - (counts.cumsum(0) - counts)[group]
        buf = x.new_zeros(G * N, int(counts.max()), C)  # (G*N, capacity, C), capacity = largest load
        buf[group, slot] = x[owner.reshape(-1)[order], token.reshape(-1)[order]]
        w_in = self.w_in[:, :, S:].reshape(G, C, N, h).transpose(1, 2).reshape(G * N, C, h)
        b_in = self.b_in[:, S:].reshape(G * N, 1, h)
        w_out = self.w_out[:, S:].reshape(G * N, h, C)
        y = torch.bmm(activation(torch.baddbmm(b_in, buf, w_in)), w_out)  # (G*N, capacity, C)
        y = y[group, slot] * weight.reshape(-1)[order, None]  # (P, C), g_i E_i(x) per pair
        dest = (task * M + token).reshape(-1)[order]
        return y.new_zeros(T * M, C).index_add(0, dest, y).view(T, M, C)


class TaskLayerNorm(nn.Module):
    """T LayerNorms over the channels of (T, M, C) tokens. inferred: pre-norm, as DeGMix's channel MLP."""

    def __init__(self, tasks: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(tasks, 1, channels))
        self.bias = nn.Parameter(torch.zeros(tasks, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


def gate(logits, noise_logits, top_k: int, pre_softmax_topk: bool, noisy: bool):
    """Top-k gates (…, N) and the full softmax probabilities (for the Switch loss) from router logits.

    Reuses MLoRE's :func:`noisy_top_k`; here per token. inferred: softmax then top-k without renormalising
    (DeepSeekMoE's and MLoRE-PASCAL's choice), ``pre_softmax_topk=True`` renormalises; noise off by default.
    """
    noise = noise_logits if noisy else None
    return noisy_top_k(logits, noise, top_k, pre_softmax_topk, softplus_noise=True), logits.softmax(-1)


def switch_balance(gates: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer loss N·Σ_i f_i P_i of one router (≥ 1, = 1 when balanced), gates/probs (M, N).

    f_i: share of the top-k assignments that go to expert i (not differentiable); P_i: mean probability.
    """
    chosen = (gates > 0).float()
    f = chosen.sum(0) / chosen.sum().clamp(min=1)
    return gates.shape[-1] * (f * probs.mean(0)).sum()


def balance_terms(gates: torch.Tensor, probs: torch.Tensor, kind: str) -> torch.Tensor:
    """Σ over the T routers (tasks) of cv²(importance) (MLoRE's) or of the Switch loss; gates (T, M, N)."""
    if kind == "switch":
        return sum(switch_balance(g, p) for g, p in zip(gates, probs, strict=True))
    return sum(cv_squared(g) for g in gates)


class _Routed(nn.Module):
    """Common state of the two MoEs: gating options and the last forward's gates (T, M, N)."""

    def __init__(self, top_k: int, pre_softmax_topk: bool, noisy_gating: bool, dispatch: str):
        super().__init__()
        self.top_k, self.pre_softmax_topk, self.noisy_gating = top_k, pre_softmax_topk, noisy_gating
        self.dispatch = dispatch
        self.last_gates: torch.Tensor | None = None
        self.last_probs: torch.Tensor | None = None

    def _gate(self, logits, noise_logits):
        noisy = self.noisy_gating and self.training
        g, p = gate(logits, noise_logits, self.top_k, self.pre_softmax_topk, noisy)
        self.last_gates, self.last_probs = g, p
        return g


class TaskMoE(_Routed):
    """The T task-specific MoEs [F] after the deformable mixers: for task t and token x (Eq. b of spec §1.4)

    y_t = x + b_t + Σ_s S_{t,s}(x̂) + Σ_{i∈TopK} g_{t,i}(x̂) E_{t,i}(x̂),   x̂ = LN_t(x),  g_t = softmax(x̂ W_r^t)

    with N_r fine-grained experts (hidden h = r·C/N_r) and N_s shared experts per task. inferred: a
    residual pre-norm block; routers are bias-free linear maps C→N_r (DeepSeekMoE); N_r = 1 means the
    dense MLP (gate 1, no router).
    """

    def __init__(
        self,
        tasks: int,
        channels: int,
        hidden: int,
        routed: int,
        top_k: int,
        shared: int = 0,
        shared_hidden: int = 0,
        pre_softmax_topk: bool = False,
        noisy_gating: bool = False,
        dispatch: str = "dense",
    ):
        super().__init__(top_k, pre_softmax_topk, noisy_gating, dispatch)
        self.norm = TaskLayerNorm(tasks, channels)
        self.experts = FineGrainedExperts(tasks, channels, routed, hidden, shared, shared_hidden)
        self.router = None  # W_r^t, (T, C, N_r)
        if routed > 1:
            bound = 1 / math.sqrt(channels)  # nn.Linear's default
            self.router = nn.Parameter(torch.empty(tasks, channels, routed).uniform_(-bound, bound))
            if noisy_gating:  # Shazeer et al.: noise std softplus(x W_noise); zero-init = std log 2
                self.noise = nn.Parameter(torch.zeros(tasks, channels, routed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (T, M, C) task tokens → y (T, M, C)."""
        xn = self.norm(x)
        if self.router is None:
            g = xn.new_ones(*xn.shape[:2], 1)  # the dense MLP: one expert, gate 1
            self.last_gates = self.last_probs = g
        else:
            noise = torch.bmm(xn, self.noise) if self.noisy_gating and self.training else None
            g = self._gate(torch.bmm(xn, self.router), noise)  # (T, M, N_r)
        return x + self.experts(xn, g, self.top_k, self.dispatch)


class GlobalMoE(_Routed):
    """The Global MoE [F]: one pool of N_g experts for all tasks, routed by the feature *and* the task [A].

    G_t(x) = Σ_{j∈TopK} g^G_{t,j} F_j(x̂),  g^G_t = softmax(W_g [x̂ ; e_t]) = softmax(x̂ W_x + e_t W_e)

    run once per task on the shared aggregated feature (inferred: M3ViT's task-conditioned gate; a learned
    task embedding e_t of size d_e; ``embed_dim=0`` drops it, so every task gets the same mixture). The pool's
    first layer does not depend on the task, so it is computed once and only the gating is repeated.
    """

    def __init__(
        self,
        tasks: int,
        channels: int,
        hidden: int,
        experts: int,
        top_k: int,
        embed_dim: int = 64,
        shared: int = 0,
        pre_softmax_topk: bool = False,
        noisy_gating: bool = False,
        dispatch: str = "dense",
    ):
        super().__init__(top_k, pre_softmax_topk, noisy_gating, dispatch)
        self.tasks = tasks
        self.norm = nn.LayerNorm(channels)
        self.experts = FineGrainedExperts(1, channels, experts, hidden, shared, hidden)
        bound = 1 / math.sqrt(channels)
        self.router = nn.Parameter(torch.empty(channels, experts).uniform_(-bound, bound))  # W_x
        self.task_embedding = self.task_router = None
        if embed_dim:
            self.task_embedding = nn.Parameter(torch.randn(tasks, embed_dim))  # e_t (nn.Embedding init)
            b = 1 / math.sqrt(embed_dim)
            self.task_router = nn.Parameter(torch.empty(embed_dim, experts).uniform_(-b, b))  # W_e
        if noisy_gating:
            self.noise = nn.Parameter(torch.zeros(channels, experts))

    def logits(self, xn: torch.Tensor, tasks: list[int]) -> torch.Tensor:
        """Router logits (len(tasks), M, N_g) for normed tokens xn (1, M, C)."""
        z = (xn @ self.router).expand(len(tasks), -1, -1)  # x̂ W_x, (T, M, N_g)
        if self.task_embedding is not None:
            z = z + (self.task_embedding[tasks] @ self.task_router)[:, None, :]  # + e_t W_e
        return z

    def forward(self, x: torch.Tensor, tasks: list[int] | None = None) -> torch.Tensor:
        """x (1, M, C) shared tokens → G (T, M, C), one mixture per task (all tasks, or those listed)."""
        tasks = list(range(self.tasks)) if tasks is None else tasks
        xn = self.norm(x)
        noise = (xn @ self.noise).expand(len(tasks), -1, -1) if self.noisy_gating and self.training else None
        g = self._gate(self.logits(xn, tasks), noise)  # (T, M, N_g)
        return self.experts(xn, g, self.top_k, self.dispatch)
