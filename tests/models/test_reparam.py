"""Eq. (3)–(7): the re-parameterised model equals the plain one in eval mode (max relative diff ≤ 1e-5)."""

import pytest
import torch
from model_helpers import TINY_MLORE, randomize_bn

from densemoe.errors import ConfigError
from densemoe.models import create_model
from densemoe.models.reparam import ReparamMLoReBlock

VARIANTS = {
    "code": {},
    "pre_softmax": dict(pre_softmax_topk=True),
    "paper": dict(nonlinear="paper", task_expert_gate=False),
    "lore": dict(generic=None, task_rank=0),
    "generic_low_rank": dict(generic=5),
    "experts0": dict(ranks=(), top_k=0),
    "expert_kernel1": dict(expert_kernel=1),
    "router_pos": dict(router="pos"),
}


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reparam_equals_plain(variant):
    model = create_model("mlore", **{**TINY_MLORE, **VARIANTS[variant]})
    randomize_bn(model)
    model.eval()
    fast = model.reparameterize()
    assert sum(isinstance(b, ReparamMLoReBlock) for _, b in fast.named_blocks()) == 8
    image = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        plain, merged = model(image), fast(image)
    for task in plain:
        assert _max_rel(merged[task], plain[task]) <= 1e-5, task
    for name, g in model.routing_stats().items():
        torch.testing.assert_close(fast.routing_stats()[name], g)


def test_reparam_refuses_train_mode_and_relu_experts():
    model = create_model("mlore", **TINY_MLORE)
    with pytest.raises(ConfigError, match="eval mode"):
        model.reparameterize()
    fast = model.eval().reparameterize()
    fast.train()
    with pytest.raises(ConfigError, match="eval mode"):
        fast(torch.randn(1, 3, 32, 32))
    moe = create_model("moe", **{**TINY_MLORE, "ranks": None}, experts=3).eval()
    with pytest.raises(ConfigError, match="ReLU"):
        moe.reparameterize()
