"""FGMoE (issue #6): shapes, the fine-grained split = the dense MLP, batched experts = a per-expert loop,
top-k routing, the task-conditioned global MoE, the frozen encoder, ablation parameter counts, checkpoints."""

import pytest
import torch
import torch.nn.functional as F
from model_helpers import TINY

from densemoe.errors import ConfigError
from densemoe.models import create_model
from densemoe.models.complexity import param_counts
from densemoe.models.fgmoe import FGMoE
from densemoe.models.fgmoe_decoder import ChannelDeformConv
from densemoe.models.fgmoe_moe import FineGrainedExperts, GlobalMoE, TaskMoE, switch_balance
from densemoe.models.routing import cv_squared, noisy_top_k
from densemoe.tasks import dataset_info

TINY_FG = dict(TINY, dataset="synth-pascal")  # C = 16: rC = 64, N_r = 8 experts of hidden 8


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def loop_reference(experts: FineGrainedExperts, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Σ_s S_s(x) + Σ_i g_i E_i(x) + b_out, one task and one expert at a time, on the routed tokens only."""
    S, h = experts.shared_width, experts.hidden
    out = []
    for t in range(g.shape[0]):
        w = 0 if experts.w_in.shape[0] == 1 else t
        x_t, (w_in, b_in, w_out) = x[w], (experts.w_in[w], experts.b_in[w], experts.w_out[w])
        y = experts.b_out[w].expand(x_t.shape[0], -1)
        if S:
            y = y + F.gelu(x_t @ w_in[:, :S] + b_in[:S]) @ w_out[:S]
        for i in range(experts.routed):
            sel, cols = g[t, :, i] != 0, slice(S + i * h, S + (i + 1) * h)
            e_i = F.gelu(x_t[sel] @ w_in[:, cols] + b_in[cols]) @ w_out[cols]  # E_i on its tokens
            y = y.index_add(0, sel.nonzero()[:, 0], g[t, sel, i, None] * e_i)
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("dataset", ["synth-pascal", "synth-nyud"])
def test_outputs_at_input_resolution_with_task_channels(dataset):
    model = create_model("fgmoe", **{**TINY_FG, "dataset": dataset})
    out = model(torch.randn(2, 3, 32, 32))
    assert list(out) == list(dataset_info(dataset).tasks)
    assert {t: o.shape[1] for t, o in out.items()} == {t: s.channels for t, s in model.tasks.items()}
    assert out.get("sal") is None or out["sal"].shape[1] == 2  # saliency is a two-class head
    assert all(o.shape[-2:] == (32, 32) for o in out.values())
    out = model.eval()(torch.randn(1, 3, 64, 48))  # another input size
    assert all(o.shape[-2:] == (64, 48) for o in out.values())


def test_fine_grained_split_is_the_dense_mlp():
    C, H, N = 16, 64, 8
    experts = FineGrainedExperts(1, C, routed=N, hidden=H // N)
    dense = torch.nn.Sequential(torch.nn.Linear(C, H), torch.nn.GELU(), torch.nn.Linear(H, C))
    assert numel(experts) == numel(dense)  # [A] "maintaining parameter efficiency"
    with torch.no_grad():
        dense[0].weight.copy_(experts.w_in[0].T), dense[0].bias.copy_(experts.b_in[0])
        dense[2].weight.copy_(experts.w_out[0].T), dense[2].bias.copy_(experts.b_out[0])
    x = torch.randn(1, 10, C)
    torch.testing.assert_close(experts(x, torch.ones(1, 10, N), N), dense(x))  # every gate 1 = dense MLP
    model = create_model("fgmoe", **TINY_FG, shared_experts=0)
    moe, T = model.decoder.task_moe, len(model.tasks)
    assert numel(moe.experts) == T * numel(dense)  # per task, N_s = 0: exactly the dense MLP
    assert moe.router.numel() == T * C * N  # the routers are the only extra parameters


@pytest.mark.parametrize("dispatch", ["dense", "sparse"])
def test_batched_experts_equal_a_per_expert_loop(dispatch):
    task = FineGrainedExperts(3, 8, routed=6, hidden=4, shared=1, shared_hidden=4)  # 3 tasks' own pools
    pool = FineGrainedExperts(1, 8, routed=6, hidden=4, shared=1, shared_hidden=4)  # one pool, 3 gatings
    for experts, x in ((task, torch.randn(3, 20, 8)), (pool, torch.randn(1, 20, 8))):
        logits = torch.randn(3, 20, 6, requires_grad=True)
        g = noisy_top_k(logits, None, 2)  # (T, M, N), 2 non-zero gates per token
        got = experts(x, g, 2, dispatch)
        want = loop_reference(experts, x, g)
        torch.testing.assert_close(got, want)
        grads = torch.autograd.grad(got.square().sum(), [logits, *experts.parameters()], retain_graph=True)
        ref = torch.autograd.grad(want.square().sum(), [logits, *experts.parameters()])
        for a, b in zip(grads, ref, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("pre_softmax", [False, True])
def test_top_k_routing_per_token_and_task(pre_softmax):
    moe = TaskMoE(3, 8, hidden=4, routed=6, top_k=2, shared=1, shared_hidden=4, pre_softmax_topk=pre_softmax)
    x = torch.randn(3, 50, 8)
    moe(x)
    g, logits = moe.last_gates, torch.bmm(moe.norm(x), moe.router)  # (T, M, N)
    kept = g > 0
    assert (kept.sum(-1) == 2).all()  # exactly k experts per token and task
    assert torch.equal(kept, logits >= logits.topk(2, dim=-1).values[..., -1:])  # the k largest logits
    if pre_softmax:
        torch.testing.assert_close(g.sum(-1), torch.ones(3, 50))
    else:
        torch.testing.assert_close(g[kept], logits.softmax(-1)[kept])
    glob = GlobalMoE(3, 8, hidden=4, experts=5, top_k=3, embed_dim=4)
    glob(torch.randn(1, 50, 8))
    assert glob.last_gates.shape == (3, 50, 5) and ((glob.last_gates > 0).sum(-1) == 3).all()


def test_global_moe_runs_once_per_task_with_the_task_embedding():
    moe = GlobalMoE(3, 8, hidden=4, experts=6, top_k=2, embed_dim=4)
    x = torch.randn(1, 40, 8)
    out = moe(x)  # (T, M, C), the tasks batched
    for t in range(3):
        torch.testing.assert_close(out[t], moe(x, [t])[0])  # = the MoE run for task t alone
    assert not torch.allclose(out[0], out[1])  # the same input, a different mixture per task
    blind = GlobalMoE(3, 8, hidden=4, experts=6, top_k=2, embed_dim=0)  # ablation: no task embedding
    out = blind(x)
    torch.testing.assert_close(out[0], out[1])


def test_decoder_adds_the_global_output_to_each_task_moe():
    model = create_model("fgmoe", **TINY_FG)
    seen = {}

    def keep(name):
        return lambda module, args, out: seen.setdefault(name, []).append(out) and None

    model.decoder.task_moe.register_forward_hook(keep("task"))
    model.decoder.global_moe.register_forward_hook(keep("g"))
    model.decoder.register_forward_hook(keep("z"))
    model(torch.randn(2, 3, 32, 32))
    assert len(seen["g"]) == 1 and seen["g"][0].shape[0] == len(model.tasks)  # once, for all T tasks
    seen = {k: v[0] for k, v in seen.items()}
    B, T, C, H, W = seen["z"].shape
    z = seen["z"].permute(1, 0, 3, 4, 2).reshape(T, B * H * W, C)
    torch.testing.assert_close(z, seen["task"] + seen["g"])  # Z_t = y_t ⊕ G_t [F]


def test_frozen_encoder_gets_no_gradient_and_stays_in_eval_mode():
    model = create_model("fgmoe", **TINY_FG).train()
    assert not any(m.training for m in model.backbone.modules())
    assert all(m.training for m in model.decoder.modules())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.backbone(x)[-1], model.backbone(x)[-1])  # no drop-path
    out = model(x)
    (sum(o.square().mean() for o in out.values()) + sum(model.aux_losses().values())).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in [*model.decoder.parameters(), *model.heads.parameters()])
    counts = param_counts(model)
    assert counts["trainable"] == pytest.approx(counts["decoder"])
    assert counts["trainable"] < counts["total"]
    full = create_model("fgmoe", **TINY_FG, finetune="full").train()  # ablation: everything trained
    assert full.backbone.training and param_counts(full)["trainable"] == counts["total"]


def _params(name: str) -> dict[str, float]:
    with torch.device("meta"):
        model = create_model(name, **TINY)  # C = 16, T = 5, rC = 64
    return dict(param_counts(model), experts=numel(model.decoder.task_moe.experts) / 1e6)


def test_each_ablation_changes_the_parameter_count_in_the_expected_direction():
    base = _params("fgmoe_tiny_synth")
    router = 5 * 16 / 1e6  # one router column per expert and task: C parameters
    for suffix in ("no_shared", "no_global", "no_task_embed"):
        assert _params(f"fgmoe_tiny_synth_{suffix}")["total"] < base["total"], suffix
    for suffix, experts in (("coarse", 4), ("experts16", 16), ("experts32", 32), ("dense_mlp", 0)):
        p = _params(f"fgmoe_tiny_synth_{suffix}")  # the same expert parameters, only the routers differ
        assert p["experts"] == pytest.approx(base["experts"])
        assert p["total"] - base["total"] == pytest.approx((experts - 8) * router), suffix
    for suffix in ("top1", "top4", "top8", "switch_lb", "no_lb", "mixer_relative"):
        assert _params(f"fgmoe_tiny_synth_{suffix}") == pytest.approx(base), suffix
    full = _params("fgmoe_tiny_synth_full_ft")
    assert full["total"] == pytest.approx(base["total"]) and full["trainable"] == pytest.approx(full["total"])


#: Measured with this code (inferred architecture; the paper gives no counts): millions, trainable / total.
PRESET_PARAMS_M = {
    "fgmoe_vitb16_pascal": (12.670, 99.103),
    "fgmoe_vitl16_pascal": (14.220, 318.367),
    "fgmoe_vitl16_nyud": (12.900, 317.031),
}


@pytest.mark.parametrize("name", list(PRESET_PARAMS_M))
def test_preset_trainable_and_total_parameters(name):
    with torch.device("meta"):
        counts = param_counts(create_model(name))
    assert (counts["trainable"], counts["total"]) == pytest.approx(PRESET_PARAMS_M[name], abs=1e-3)
    assert counts["trainable"] == pytest.approx(counts["decoder"])


def test_aux_losses_are_weighted_balance_terms():
    model = create_model("fgmoe", **TINY_FG, load_balance_weight=3e-4)
    model(torch.randn(2, 3, 32, 32))
    aux, moes = model.aux_losses(), model.decoder.routers()
    assert set(aux) == {"load_balance_intra_task", "load_balance_global"}
    for key, moe in moes.items():
        want = 3e-4 * sum(cv_squared(g) for g in moe.last_gates)  # one cv² per task router
        torch.testing.assert_close(aux[f"load_balance_{key}"], want)
    stats = model.routing_stats()  # MLoRE's form (B, T, N): each image's mean gate per expert
    assert stats["intra_task"].shape == (2, 5, 8) and stats["global"].shape == (2, 5, 8)
    B, T, N = stats["intra_task"].shape
    torch.testing.assert_close(
        stats["intra_task"], moes["intra_task"].last_gates.view(T, B, -1, N).mean(2).transpose(0, 1)
    )
    assert create_model("fgmoe", **TINY_FG, load_balance_weight=0.0).aux_losses() == {}
    g = torch.tensor([[0.6, 0.0], [0.0, 0.7]])
    p = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    torch.testing.assert_close(switch_balance(g, p), torch.tensor(1.0))  # balanced: f = P = 1/2


def test_sparse_dispatch_model_equals_dense():
    dense = create_model("fgmoe", **TINY_FG).eval()
    sparse = create_model("fgmoe", **TINY_FG, dispatch="sparse").eval()
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for (t, a), b in zip(dense(x).items(), sparse(x).values(), strict=True):
        torch.testing.assert_close(a, b, msg=t)


def test_deformable_conv_with_zero_offsets_is_a_grouped_1x1_conv():
    conv = ChannelDeformConv(2, 4, offsets="relative")
    torch.nn.init.zeros_(conv.offset_out.weight), torch.nn.init.zeros_(conv.offset_out.bias)
    x = torch.randn(1, 8, 5, 6)
    want = F.conv2d(x, conv.deform.weight, conv.deform.bias, groups=2)
    torch.testing.assert_close(conv(x), want)


def test_strict_checkpoint_round_trip():
    model = create_model("fgmoe_tiny_synth", **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    want = model(x)
    again = FGMoE(**model.model_args).eval()  # rebuilt from the stored constructor args
    again.load_state_dict(model.state_dict())
    for t, out in again(x).items():
        torch.testing.assert_close(out, want[t])
    with pytest.raises(ConfigError, match="missing keys"):
        create_model("fgmoe_tiny_synth", **TINY).load_state_dict(
            create_model("fgmoe_tiny_synth_no_global", **TINY).state_dict()
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(top_k=9), "top_k"),
        (dict(routed_experts=0), "routed_experts"),
        (dict(routed_experts=7), "split"),
        (dict(global_top_k=9), "global_top_k"),
        (dict(finetune="lora"), "unknown FGMoE finetune"),
        (dict(dispatch="gather"), "unknown FGMoE dispatch"),
        (dict(granularity=2), "unknown FGMoE argument"),
        (dict(tasks=["depth"]), "depth"),
    ],
)
def test_bad_input_is_a_one_line_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        create_model("fgmoe", **{**TINY_FG, **kwargs})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("fgmoe_vitb16_pascal_nope")


def test_fewer_trainable_parameters_than_mlore():
    with torch.device("meta"):
        fgmoe = param_counts(create_model("fgmoe_vitl16_pascal"))
        mlore = param_counts(create_model("mlore_vitl16_pascal"))
    assert mlore["trainable"] == mlore["total"]  # MLoRE fine-tunes everything
    assert fgmoe["trainable"] < mlore["decoder"] / 5 and fgmoe["total"] < mlore["total"]


@pytest.mark.parametrize("dispatch", ["dense", "sparse"])
def test_bf16_autocast_forward_backward(dispatch):
    model = create_model("fgmoe", **TINY_FG, dispatch=dispatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the deformable conv runs in float32 inside
        out = model(torch.randn(2, 3, 32, 32))
        loss = sum(o.float().mean() for o in out.values()) + sum(model.aux_losses().values())
    loss.backward()
    assert torch.isfinite(loss) and model.heads["semseg"][0].weight.grad is not None
