"""MLoRE as the official code runs it: parameter counts, routing, load balancing, stop-gradient, bad input."""

import pytest
import torch
from model_helpers import TINY_MLORE

from densemoe.errors import ConfigError
from densemoe.models import create_model
from densemoe.models.mlore_block import MLoReBlock, MLoReConfig
from densemoe.models.routing import cv_squared, noisy_top_k

#: specs/mlore.md §1.11: parameters of the four shipped configs, counted on the official code.
SPEC_PARAMS_M = {
    "mlore_vitl16_pascal": 407.69,
    "mlore_vitb16_pascal": 259.13,
    "mlore_vits16_pascal": 42.18,
    "mlore_vitl16_nyud": 551.63,
}


@pytest.mark.parametrize("name", list(SPEC_PARAMS_M))
def test_shipped_config_parameter_counts(name):
    with torch.device("meta"):  # no memory, no weights
        model = create_model(name)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(SPEC_PARAMS_M[name], rel=1e-3)


def test_outputs_at_input_resolution_and_channels():
    model = create_model("mlore", **TINY_MLORE)
    out = model(torch.randn(2, 3, 32, 32))
    assert list(out) == ["semseg", "human_parts", "sal", "normals", "edge"]
    assert {t: o.shape[1] for t, o in out.items()} == {t: s.channels for t, s in model.tasks.items()}
    assert all(o.shape[-2:] == (32, 32) for o in out.values())
    out = model.eval()(torch.randn(1, 3, 64, 48))  # another grid: pos-embed and position router resized
    assert all(o.shape[-2:] == (64, 48) for o in out.values())


@pytest.mark.parametrize("pre_softmax", [False, True])
def test_noisy_top_k(pre_softmax):
    logits = torch.randn(4, 5, 15)
    w = noisy_top_k(logits, None, 9, pre_softmax_topk=pre_softmax)
    assert ((w > 0).sum(-1) == 9).all()
    kept = w > 0
    assert torch.equal(kept, logits >= logits.topk(9, dim=-1).values[..., -1:])
    sums = w.sum(-1)
    if pre_softmax:  # NYUD: masked logits, then softmax: the kept weights sum to 1
        torch.testing.assert_close(sums, torch.ones_like(sums))
        torch.testing.assert_close(w[kept], logits.masked_fill(~kept, -1e10).softmax(-1)[kept])
    else:  # PASCAL: softmax over all 15, then the 6 smallest are zeroed, no renormalising
        assert (sums < 1).all()
        torch.testing.assert_close(w[kept], logits.softmax(-1)[kept])
    noisy = noisy_top_k(logits, torch.ones_like(logits), 9, pre_softmax_topk=pre_softmax)
    assert not torch.equal(noisy, w)


def test_load_balance_loss_and_routing_stats():
    model = create_model("mlore", **TINY_MLORE, load_balance_weight=3e-4)
    model(torch.randn(2, 3, 32, 32))
    stats = model.routing_stats()
    assert len(stats) == 8 and all(g.shape == (2, 5, 6) for g in stats.values())
    want = 3e-4 * sum(cv_squared(g) for g in stats.values())
    torch.testing.assert_close(model.aux_losses()["load_balance"], want)
    g = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]])
    imp = g.mean(0)
    torch.testing.assert_close(cv_squared(g), imp.var() / imp.mean() ** 2)  # unbiased std (E−1)
    assert create_model("mlore", **TINY_MLORE, load_balance_weight=0.0).aux_losses() == {}


def test_generic_path_stops_the_gradient():
    cfg = MLoReConfig(channels=8, ranks=(), top_k=0, task_rank=0, task_expert_gate=False)
    block = MLoReBlock(cfg, tasks=2, grid=(3, 3))
    block(torch.randn(2, 8, 3, 3)).square().sum().backward()
    assert block.task_proj.weight.grad is None  # no gradient through f_g into X^t (§3.3)
    assert block.generic.weight.grad.abs().sum() > 0  # f_g itself is trained by every task


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(tasks=["depth"]), "not labelled in dataset 'synth-pascal'"),
        (dict(tasks=["semsegg"]), "did you mean 'semseg'"),
        (dict(router="fancy"), "unknown router"),
        (dict(decoder="mlp"), "unknown decoder"),
        (dict(chanels=8), "did you mean 'channels'"),
        (dict(img_size=(40, 32)), "not divisible by the patch size 16"),
        (dict(backbone="vit_tiny_patch16_348"), "unknown backbone"),
    ],
)
def test_bad_input_is_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        create_model("mlore", **{**TINY_MLORE, **kwargs})
    assert "\n" not in str(err.value)


def test_bad_input_at_run_time_and_load():
    with pytest.raises(ConfigError, match="did you mean 'mlore_vitl16_pascal'"):
        create_model("mlore_vitl16_pascl")
    model = create_model("mlore", **TINY_MLORE)
    with pytest.raises(ConfigError, match="not divisible by the patch size"):
        model(torch.randn(1, 3, 40, 32))
    sd = model.state_dict()
    sd["extra.weight"] = sd.pop("heads.edge.pred.bias")
    with pytest.raises(
        ConfigError, match=r"missing keys \['heads.edge.pred.bias'\], unexpected keys \['extra"
    ):
        model.load_state_dict(sd)


def test_deprecated_alias_warns():
    with pytest.warns(FutureWarning, match="renamed 'mlore_vits16_pascal'"), torch.device("meta"):
        create_model("mlore_vits_pascal")


def test_channels_last_gives_the_same_outputs():
    model = create_model("mlore", **TINY_MLORE).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    for task in ref:
        torch.testing.assert_close(out[task], ref[task], rtol=1e-5, atol=1e-6)
