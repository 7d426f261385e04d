"""The timm backbone: local weights file, no class token, pos-embed on the input grid, taps, drop-path."""

import pytest
import timm
import torch
import torch.nn.functional as F

from densemoe.errors import ConfigError
from densemoe.models.backbone import DROP_PATH_RATE, ViTBackbone, create_backbone

SMALL = dict(depth=4, embed_dim=32, num_heads=2)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """An ImageNet-layout checkpoint (class token, 24×24 grid) written locally: nothing is downloaded."""
    vit = timm.create_model("vit_tiny_patch16_384", num_classes=0, **SMALL)
    path = tmp_path_factory.mktemp("w") / "vit.pth"
    torch.save(vit.state_dict(), path)
    return path, vit.state_dict()


def test_local_weights_loaded_and_pos_embed_resized(weights_file):
    path, sd = weights_file
    bb = ViTBackbone("vit_tiny_patch16_384", (64, 96), pretrained=str(path), **SMALL)
    vit = bb.vit
    torch.testing.assert_close(vit.blocks[2].attn.qkv.weight, sd["blocks.2.attn.qkv.weight"])
    assert vit.cls_token is None and vit.num_prefix_tokens == 0
    grid = sd["pos_embed"][:, 1:].reshape(1, 24, 24, -1).permute(0, 3, 1, 2)  # slot 0 (class token) dropped
    want = (
        F.interpolate(grid, size=(4, 6), mode="bicubic", antialias=True)
        .permute(0, 2, 3, 1)
        .reshape(1, 24, -1)
    )
    torch.testing.assert_close(vit.pos_embed, want)
    assert vit.pretrained_cfg["file"] == str(path)


def test_taps_are_unnormed_blocks_then_normed_final():
    bb = ViTBackbone("vit_tiny_patch16_384", (32, 48), **SMALL).eval()
    assert bb.taps == (1, 2, 3) and bb.channels == [32] * 4 and bb.reduction == 16
    image = torch.randn(2, 3, 32, 48)
    maps = bb(image)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 2, 3)] * 4
    vit = bb.vit
    x = vit.patch_embed(image).reshape(2, 6, 32) + vit.pos_embed  # no class token at run time
    outs = []
    for blk in vit.blocks:
        x = blk(x)
        outs.append(x)
    want = [outs[0], outs[1], outs[2], vit.norm(outs[3])]
    for got, ref in zip(maps, want, strict=True):
        torch.testing.assert_close(got, ref.transpose(1, 2).reshape(2, 32, 2, 3))


def test_drop_path_and_other_resolutions():
    bb = ViTBackbone("vit_tiny_patch16_384", (32, 32), **SMALL)
    assert bb.vit.blocks[-1].drop_path1.drop_prob == pytest.approx(DROP_PATH_RATE)
    assert bb.vit.blocks[0].drop_path1.__class__.__name__ == "Identity"  # rate rises linearly from 0
    assert [tuple(m.shape[-2:]) for m in bb.eval()(torch.randn(1, 3, 64, 48))] == [(4, 3)] * 4


def test_cnn_features_resampled_to_stride_16():
    bb = create_backbone("resnet18", (64, 64))
    maps = bb(torch.randn(1, 3, 64, 64))
    assert bb.channels == [64, 128, 256, 512] and [m.shape[-1] for m in maps] == [4] * 4


def test_bad_backbone_input(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'vit_base_patch16_384'"):
        create_backbone("vit_base_patch16_348", (32, 32))
    with pytest.raises(ConfigError, match="not found"):
        create_backbone("vit_tiny_patch16_384", (32, 32), pretrained=str(tmp_path / "missing.pth"))
