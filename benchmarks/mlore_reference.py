"""The plain MLoRE module, with the loops of the official code: the reference for the fast training path.

Same math and same parameters as ``densemoe.models.mlore_block.MLoReBlock.forward``, computed the way the
official ``MOEBlock`` does (``specs/mlore.md`` §1.3–1.5, §1.14): a Python loop over tasks, each task
running its own router, a loop over the N shared experts (one 3×3 conv C→r_n and one 1×1 conv r_n→C each,
all computed), a per-sample loop for top-k masking, and the router's content branch convolved at every
pixel before pooling. It reads the fast block's stacked weights by slicing, so both paths share one state
dict. ``tests/models/test_fast_path.py`` asserts equal outputs; ``mlore_speed.py`` times both.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F


def _slice(t: torch.Tensor | None, i: int, n: int) -> torch.Tensor | None:
    return None if t is None else t[i * n : (i + 1) * n]


def _task_conv(conv, x: torch.Tensor, t: int) -> torch.Tensor:
    """Task t's conv of a TaskConv, on task t's input (B, C_in, h, w)."""
    return F.conv2d(
        x, _slice(conv.weight, t, conv.c_out), _slice(conv.bias, t, conv.c_out), padding=conv.padding
    )


def _bn(bn, x: torch.Tensor, t: int, c: int, training: bool) -> torch.Tensor:
    return F.batch_norm(
        x,
        _slice(bn.running_mean, t, c),
        _slice(bn.running_var, t, c),
        _slice(bn.weight, t, c),
        _slice(bn.bias, t, c),
        training,
        bn.momentum,
        bn.eps,
    )


def _router(r, u: torch.Tensor, t: int):
    feats = []
    if hasattr(r, "basic_in"):
        a = _task_conv(r.basic_in, u, t).permute(0, 2, 3, 1)  # (B, h, w, C/4)
        a = F.layer_norm(a, a.shape[-1:], r.basic_norm.weight[t], r.basic_norm.bias[t], r.basic_norm.eps)
        a = _task_conv(r.basic_out, F.gelu(a).permute(0, 3, 1, 2), t)  # conv at every pixel, then pool
        feats.append(a.mean(dim=(2, 3)))
    if hasattr(r, "spatial_weight"):
        B, C, h, w = u.shape
        p = F.linear(u.reshape(B, C, h * w), r._spatial(h, w)[t : t + 1], r.spatial_bias[t : t + 1])[..., 0]
        p = F.gelu(F.layer_norm(p, (C,), r.pos_norm.weight[t], r.pos_norm.bias[t], r.pos_norm.eps))
        feats.append(_task_conv(r.pos_out, p[:, :, None, None], t)[:, :, 0, 0])
    if r.kind == "static":
        feats.append(r.static_input[t].expand(u.shape[0], -1))
    z = _task_conv(r.predict, torch.cat(feats, dim=1)[:, :, None, None], t)[:, :, 0, 0]
    n = r.experts
    return z[:, :n], z[:, n : 2 * n], z[:, 2 * n]


def _top_k_loop(logits: torch.Tensor, k: int, pre_softmax: bool) -> torch.Tensor:
    n = logits.shape[1]
    logits = logits.clone()
    if pre_softmax:
        for b in range(logits.shape[0]):  # per sample, as the official code
            logits[b, logits[b].argsort()[: n - k]] = float("-inf")
        return logits.softmax(dim=1)
    w = logits.softmax(dim=1).clone()
    for b in range(w.shape[0]):
        w[b, w[b].argsort()[: n - k]] = 0.0
    return w


def reference_forward(block, x: torch.Tensor) -> torch.Tensor:
    """``MLoReBlock.forward`` with loops over tasks, experts and samples; same in/out shapes."""
    cfg, T, C = block.cfg, block.tasks, block.cfg.channels
    se = block.shared_experts
    eps = None
    if se is not None and block.training and cfg.noisy_gating:
        eps = torch.randn(x.shape[0], T, cfg.experts, dtype=x.dtype)  # drawn as the fast path draws it
    outs, routing = [], []
    for t in range(T):
        x_in = x if x.shape[1] == C else x[:, t * C : (t + 1) * C]  # shared input, or task t's
        u = _task_conv(block.task_proj, x_in, t)  # X^t (B, C, h, w)
        s = 0
        if block.routers is not None:
            logits, noise, gate = _router(block.routers, u, t)
        if se is not None:
            if eps is not None:
                noise = F.softplus(noise) if cfg.softplus_noise else noise
                logits = logits + eps[:, t] * noise
            w = _top_k_loop(logits, min(cfg.top_k, cfg.experts), cfg.pre_softmax_topk)  # (B, N)
            routing.append(w)
            total, start = 0, 0
            for n, r in enumerate(se.ranks):  # every expert is computed
                h = F.conv2d(
                    u,
                    se.down_weight[start : start + r],
                    se.down_bias[start : start + r],
                    padding=se.kernel_size // 2,
                )
                h = F.relu(h) if se.activation == "relu" else h
                e = F.conv2d(h, se.up_weight[:, start : start + r, None, None], se.up_bias[n])
                total = total + w[:, n, None, None, None] * e
                start += r
            s = s + _bn(block.expert_norm, total, t, C, block.training)
        if block.task_experts is not None:
            te = block.task_experts
            spe = _task_conv(te.up, _task_conv(te.down, u, t), t)
            s = s + (spe * gate[:, None, None, None] if cfg.task_expert_gate else spe)
        if block.generic is not None:
            s = s + block.generic(u.detach() if cfg.stop_generic_grad else u)
        if cfg.nonlinear == "code":
            s = _task_conv(block.task_out, F.gelu(_bn(block.out_norm, s, t, C, block.training)), t)
        outs.append(s)
    block.last_routing = torch.stack(routing, dim=1) if routing else None
    return torch.cat(outs, dim=1)  # (B, T*C, h, w)


@contextlib.contextmanager
def reference_blocks(model):
    """Within the context every MLoRE module of ``model`` runs :func:`reference_forward`."""
    blocks = [b for _, b in model.named_blocks()]
    for b in blocks:
        b.forward = types.MethodType(reference_forward, b)
    try:
        yield model
    finally:
        for b in blocks:
            del b.forward
