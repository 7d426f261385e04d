"""The fast training path equals the per-expert-loop reference (benchmarks/mlore_reference.py)."""

import copy

import pytest
import torch
from model_helpers import TINY_MLORE, load_benchmark, randomize_bn

from densemoe.models import create_model

ref = load_benchmark("mlore_reference")

VARIANTS = {
    "code": {},
    "pre_softmax": dict(pre_softmax_topk=True, softplus_noise=True),
    "paper": dict(nonlinear="paper", task_expert_gate=False),
    "router_basic": dict(router="basic"),
    "router_static": dict(router="static", generic=4),
}


def _pair(**kwargs):
    fast = create_model("mlore", **{**TINY_MLORE, **kwargs}).double()
    randomize_bn(fast)
    return fast, copy.deepcopy(fast)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_fast_equals_reference(variant, train):
    fast, slow = _pair(**VARIANTS[variant])
    fast.train(train), slow.train(train)
    image = torch.randn(3, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    out_fast = fast(image)
    torch.manual_seed(1)
    with ref.reference_blocks(slow):
        out_slow = slow(image)
    for task in out_fast:
        torch.testing.assert_close(out_fast[task], out_slow[task], rtol=1e-9, atol=1e-9)
    for (name, a), (_, b) in zip(fast.routing_stats().items(), slow.routing_stats().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    if train:  # gradients agree too, including the stop-gradient of the generic path
        sum(o.square().mean() for o in out_fast.values()).backward()
        sum(o.square().mean() for o in out_slow.values()).backward()
        for (name, p), q in zip(fast.named_parameters(), slow.parameters(), strict=True):
            if p.grad is not None or q.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-9, msg=name)
