"""Shared tiny settings and helpers of the model tests (every model test runs at this size)."""

import importlib.util
from pathlib import Path

import torch

#: Overrides that shrink any preset: a 4-block, 32-wide timm ViT-Tiny on 32×32 images (2×2 tokens), C = 16.
TINY = dict(
    backbone="vit_tiny_patch16_384",
    backbone_args=dict(depth=4, embed_dim=32, num_heads=2),
    img_size=(32, 32),
    channels=16,
)
#: A tiny MLoRE with few, small experts (ranks 2..8) for the numerical tests.
TINY_MLORE = dict(TINY, dataset="synth-pascal", ranks=(2, 3, 4, 5, 6, 8), top_k=4, task_rank=4)


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` (not a package) as a module."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize_bn(model: torch.nn.Module) -> None:
    """Random BN statistics and affine parameters, so eval-mode tests exercise the folds."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
