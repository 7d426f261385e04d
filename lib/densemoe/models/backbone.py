"""Backbones through timm: a ViT with tapped blocks (MLoRE §3.1), or a timm CNN's feature maps.

We re-implement no ViT. ``timm.create_model`` builds it (weights, drop-path, pos-embed resampling) and
``forward_intermediates`` gives the taps. What the official MLoRE code does differently from a stock timm
ViT, and how we get the same computation (``specs/mlore.md`` §1.1):

- **No class token at run time.** The official ViT keeps the class-token slot of the positional embedding
  only so the ImageNet weights load, and adds ``pos_embed[:, 1:]`` to the patch tokens. We let timm build
  and load the model *with* its class token (so timm's own loader and pos-embed resampling work), then drop
  the token and the slot (:func:`_drop_class_token`). The parameter count is 1 slot (D values) below the
  official one, which still stores slot 0.
- **Pos-embed resized to the input grid.** ``img_size`` is the training input size; timm resamples the
  pretrained 24×24 grid bicubically when it loads. ``dynamic_img_size`` resamples again at run time for any
  other input size (the official model cannot run at another size).
- **Taps.** Three un-normed block outputs (1-based blocks d/4, d/2, 3d/4: 6/12/18 for ViT-L, 3/6/9 for S/B)
  plus the final block after the final LayerNorm — the ``(final, intermediates)`` pair that one
  ``forward_intermediates`` call returns.
- **Drop-path 0.15**, rising linearly over the blocks (timm's rule and the official ``drop_path_rate``).

``pretrained`` is ``False`` (random init), ``True`` (timm's default weights, the AugReg ``*_patch16_384``
checkpoints; needs the network or the HF cache), or a path to a local weights file, which timm loads
through ``pretrained_cfg_overlay=dict(file=...)``. Both are checked before timm runs (``weights.py``): a node
without internet gets one line naming the offline routes at once, not the hub's retries and traceback.
Mean/std and input size are read from the timm model's ``pretrained_cfg`` (note: the official pipeline
normalises with ImageNet mean/std although the AugReg weights were trained with 0.5/0.5, spec §1.1; that
choice belongs to the data transforms).
"""

from __future__ import annotations

import difflib
import os

import timm
import torch
from torch import nn

from densemoe.errors import ConfigError
from densemoe.models.weights import ensure_pretrained_available, pretrained_errors

#: Drop-path rate of the official configs (``utils/common_config.py``, spec §1.1).
DROP_PATH_RATE = 0.15


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown backbone '{name}'{hint} (any timm model name, e.g. vit_base_patch16_384)")


def _pretrained_kwargs(pretrained: bool | str | os.PathLike) -> dict:
    if isinstance(pretrained, bool):
        return dict(pretrained=pretrained)
    path = os.fspath(pretrained)
    if not os.path.exists(path):
        raise ConfigError(
            f"backbone weights file not found: {path}; fix model_args.pretrained (a .safetensors or .pth "
            "file), or use pretrained: true with the Hugging Face cache"
        )
    if not os.path.isfile(path):
        raise ConfigError(f"backbone weights path {path} is not a file; give a .safetensors or .pth file")
    return dict(pretrained=True, pretrained_cfg_overlay=dict(file=path))


def _create_timm(name: str, pretrained: bool | str | os.PathLike, **kwargs) -> nn.Module:
    """``timm.create_model`` with the weights checked first (``weights.py``): no network, no weights file or
    an unusable one is a one-line :class:`ConfigError` at once, not the hub's ~50 s of retries."""
    for key, value in _pretrained_kwargs(pretrained).items():
        kwargs[key] = {**kwargs.get(key, {}), **value} if key == "pretrained_cfg_overlay" else value
    if pretrained is True:
        ensure_pretrained_available(name, kwargs.get("cache_dir"), kwargs.get("pretrained_cfg_overlay"))
    with pretrained_errors(name, pretrained, kwargs.get("cache_dir")):
        return timm.create_model(name, **kwargs)


def _drop_class_token(vit: nn.Module) -> None:
    """Remove the class token and its pos-embed slot, as the official forward never uses them."""
    if getattr(vit, "cls_token", None) is None:
        return
    vit.pos_embed = nn.Parameter(vit.pos_embed.data[:, vit.num_prefix_tokens :].clone())  # (1, h*w, D)
    vit.cls_token = None
    vit.num_prefix_tokens = 0
    vit.has_class_token = False


class ViTBackbone(nn.Module):
    """A timm ViT returning ``len(taps) + 1`` maps (B, D, H/p, W/p): the taps, then the normed final block.

    ``taps`` are 1-based block indices of the un-normed intermediate taps (default d/4, d/2, 3d/4).
    """

    def __init__(
        self,
        name: str,
        img_size: tuple[int, int],
        pretrained: bool | str = False,
        drop_path_rate: float = DROP_PATH_RATE,
        taps: tuple[int, ...] | None = None,
        **timm_kwargs,
    ):
        super().__init__()
        _check_name(name)
        self.vit = _create_timm(
            name,
            pretrained,
            num_classes=0,
            global_pool="",
            img_size=tuple(img_size),
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            **timm_kwargs,
        )
        if not hasattr(self.vit, "forward_intermediates") or not hasattr(self.vit, "blocks"):
            raise ConfigError(f"backbone '{name}' is not a plain ViT; use a CNN name for feature maps")
        _drop_class_token(self.vit)
        depth = len(self.vit.blocks)
        self.taps = tuple(taps) if taps is not None else (depth // 4, depth // 2, 3 * depth // 4)
        if not all(1 <= b <= depth for b in self.taps):
            raise ConfigError(f"backbone taps {self.taps} out of range 1..{depth} for '{name}'")
        self.patch_size = self.vit.patch_embed.patch_size[0]
        self.reduction = self.patch_size
        self.channels = [self.vit.embed_dim] * (len(self.taps) + 1)
        self.pretrained_cfg = dict(self.vit.pretrained_cfg)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        final, taps = self.vit.forward_intermediates(
            image, indices=[b - 1 for b in self.taps], norm=False, output_fmt="NCHW"
        )  # final (B, h*w, D) normed; taps: list of (B, D, h, w) un-normed
        B, _, h, w = taps[0].shape
        final = final.transpose(1, 2).reshape(B, -1, h, w).contiguous()  # (B, D, h, w)
        return [*taps, final]


class CNNBackbone(nn.Module):
    """A timm CNN's feature maps, all resized (bilinear) to one ``stride`` (Table 14's HRNet-18 row).

    inferred: the paper does not say how MLoRE consumes HRNet's four resolutions; we resample every map to
    stride 16 so the decoder runs at the same 1/16 grid (and the same ×4 fusion upsampling) as with a ViT.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool | str = False,
        out_indices=(1, 2, 3, 4),
        stride: int = 16,
        **timm_kwargs,
    ):
        super().__init__()
        _check_name(name)
        self.net = _create_timm(
            name,
            pretrained,
            features_only=True,
            out_indices=tuple(out_indices),
            **timm_kwargs,
        )
        self.channels = list(self.net.feature_info.channels())
        self.patch_size = max(self.net.feature_info.reduction())
        self.reduction = stride
        self.pretrained_cfg = dict(self.net.pretrained_cfg)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        size = (image.shape[-2] // self.reduction, image.shape[-1] // self.reduction)
        maps = self.net(image)
        return [nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]


def create_backbone(
    name: str,
    img_size: tuple[int, int],
    pretrained: bool | str = False,
    drop_path_rate: float = DROP_PATH_RATE,
    **kwargs,
) -> nn.Module:
    """A ViT (timm names containing ``vit``) or a CNN feature backbone (no drop-path), by timm name."""
    _check_name(name)
    if "vit" in name:
        return ViTBackbone(name, img_size, pretrained=pretrained, drop_path_rate=drop_path_rate, **kwargs)
    return CNNBackbone(name, pretrained=pretrained, **kwargs)
