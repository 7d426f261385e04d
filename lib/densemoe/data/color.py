"""RGB ↔ HSV on (3, H, W) tensors in [0, 1]; hue in degrees [0, 360) (OpenCV's 8-bit hue × 2)."""

from __future__ import annotations

import torch


def rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(3, H, W) RGB → hue (degrees), saturation, value, each (H, W)."""
    r, g, b = rgb
    v, argmax = rgb.max(0)
    delta = v - rgb.min(0).values
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    d = delta.clamp_min(1e-12)
    h = torch.stack([((g - b) / d) % 6.0, (b - r) / d + 2.0, (r - g) / d + 4.0])  # (3, H, W)
    h = h.gather(0, argmax[None])[0] * 60.0
    return torch.where(delta > 0, h, torch.zeros_like(h)) % 360.0, s, v


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hue (degrees), saturation, value (H, W) → (3, H, W) RGB."""
    c = v * s
    hp = (h % 360.0) / 60.0
    x = c * (1 - (hp % 2 - 1).abs())
    zero = torch.zeros_like(c)
    sector = hp.floor().long().clamp(0, 5)
    table = torch.stack([
        torch.stack([c, x, zero]), torch.stack([x, c, zero]), torch.stack([zero, c, x]),
        torch.stack([zero, x, c]), torch.stack([x, zero, c]), torch.stack([c, zero, x]),
    ])  # (6, 3, H, W)
    rgb = table.gather(0, sector[None, None].expand(1, 3, *sector.shape))[0]
    return rgb + (v - c)
