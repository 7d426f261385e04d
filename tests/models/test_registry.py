"""Every registered preset builds and runs forward + backward at tiny size (timm's test_models pattern)."""

import pytest
import torch
from model_helpers import TINY

from densemoe.models import create_model, list_models


def test_registry_lists_paper_configs_and_ablations():
    names = list_models()
    for name in (
        "mlore_vitl16_pascal",
        "mlore_vitb16_pascal",
        "mlore_vits16_pascal",
        "mlore_vitl16_nyud",
        "mlore_tiny_synth",
        "baseline_vitb16_pascal",
        "moe_vitb16_pascal",
        "single_vitb16_pascal",
    ):
        assert name in names
    assert list_models("mlore_vitb16_pascal_top*") == [f"mlore_vitb16_pascal_top{k}" for k in (12, 15, 3, 6)]


@pytest.mark.parametrize("name", list_models())
def test_preset_forward_backward(name):
    model = create_model(name, **TINY)
    out = model(torch.randn(2, 3, 32, 32))
    loss = sum(o.mean() for o in out.values()) + sum(model.aux_losses().values())
    loss.backward()
    assert all(o.shape[-2:] == (32, 32) for o in out.values())
    trained = [p for p in model.decoder.parameters() if p.grad is not None]
    assert trained, name
    if name.startswith("single_"):
        assert len(out) == 1
