"""The official training and test transforms, applied identically to every target.

Order and constants follow the official code (``specs/mlore.md`` §2, "from ATRC"):
random scale s ∈ [0.5, 2] (depth ÷ s) → random crop with ``cat_max_ratio`` 0.75 → horizontal flip
(negating the normals' x component) → photometric distortion (mmseg-style, no channel swap) →
ImageNet normalisation → centre pad (image 0, labels 255, depth 0, normals 0) → ignore regions.
The test transform is normalise → centre pad → ignore regions.

Samples between transforms are dicts of float tensors shaped (C, H, W) (see ``data/dataset.py``);
:class:`Finalize` gives the DESIGN §4 contract: ``semseg``/``human_parts`` (H, W) long, ``sal``/``edge``
(H, W) float, ``normals`` (3, H, W), ``depth`` (1, H, W). Randomness draws from torch's global RNG, which
DataLoader seeds per worker, or from a ``torch.Generator`` given to the transform.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from densemoe.data.color import hsv_to_rgb, rgb_to_hsv

Sample = dict
PAD_VALUE = {"image": 0.0, "semseg": 255.0, "human_parts": 255.0, "sal": 255.0, "edge": 255.0,
             "depth": 0.0, "normals": 0.0}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _maps(sample: Sample) -> list[str]:
    return [k for k in sample if k != "meta"]


def _uniform(lo: float, hi: float, gen: torch.Generator | None) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def _coin(gen: torch.Generator | None, p: float = 0.5) -> bool:
    return torch.rand((), generator=gen).item() < p


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample


class RandomScale:
    """Rescale by s ~ U[lo, hi]: image bilinear, labels nearest, depth values divided by s."""

    def __init__(self, lo: float = 0.5, hi: float = 2.0, generator: torch.Generator | None = None) -> None:
        self.lo, self.hi, self.gen = lo, hi, generator

    def __call__(self, sample: Sample) -> Sample:
        s = _uniform(self.lo, self.hi, self.gen)
        h, w = sample["image"].shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        out = dict(sample)
        for k in _maps(sample):
            x = sample[k][None]  # (1, C, H, W)
            if k == "image":
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            else:
                x = F.interpolate(x, size=size, mode="nearest")
            out[k] = x[0] / s if k == "depth" else x[0]
        return out


class RandomCrop:
    """Crop to ``size`` (or the whole image where it is smaller), re-drawn up to 10 times until the
    semseg crop has ≥ 2 labelled classes and the largest covers < ``cat_max_ratio`` of them (mmseg)."""

    def __init__(self, size: tuple[int, int], cat_max_ratio: float = 0.75,
                 generator: torch.Generator | None = None) -> None:
        self.size, self.cat_max_ratio, self.gen = size, cat_max_ratio, generator

    def _draw(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        top = int(torch.randint(h - ch + 1, (), generator=self.gen))
        left = int(torch.randint(w - cw + 1, (), generator=self.gen))
        return top, left, ch, cw

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[-2:]
        box = self._draw(h, w)
        if self.cat_max_ratio < 1.0 and "semseg" in sample:
            for _ in range(10):
                top, left, ch, cw = box
                crop = sample["semseg"][0, top : top + ch, left : left + cw]
                counts = torch.unique(crop[crop != 255], return_counts=True)[1]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = self._draw(h, w)
        top, left, ch, cw = box
        return {k: (v if k == "meta" else v[:, top : top + ch, left : left + cw]) for k, v in sample.items()}


class RandomHorizontalFlip:
    """Mirror every map with probability ``p``; the normals' x component changes sign."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p, self.gen = p, generator

    def __call__(self, sample: Sample) -> Sample:
        if not _coin(self.gen, self.p):
            return sample
        out = {k: (v if k == "meta" else v.flip(-1)) for k, v in sample.items()}
        if "normals" in out:
            out["normals"] = out["normals"] * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
        return out


class PhotoMetricDistortion:
    """mmseg's photometric distortion on the [0, 255] image, each step with p = 0.5: brightness ±32,
    contrast ×[0.5, 1.5] (first or last, p = 0.5), saturation ×[0.5, 1.5] and hue ±18 (OpenCV units,
    i.e. ±36°) in HSV. Values are clipped to [0, 255] and truncated as the uint8 original does; the HSV
    round trip is in float, where OpenCV quantises to uint8 (a sub-level difference)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.gen = generator

    def _contrast(self, img: torch.Tensor) -> torch.Tensor:
        if _coin(self.gen):
            img = (img * _uniform(0.5, 1.5, self.gen)).clamp(0, 255).floor()
        return img

    def __call__(self, sample: Sample) -> Sample:
        img = sample["image"]
        if _coin(self.gen):
            img = (img + _uniform(-32, 32, self.gen)).clamp(0, 255).floor()
        contrast_first = _coin(self.gen)
        if contrast_first:
            img = self._contrast(img)
        do_sat, do_hue = _coin(self.gen), _coin(self.gen)
        if do_sat or do_hue:
            h, s, v = rgb_to_hsv(img / 255.0)
            if do_sat:
                s = (s * _uniform(0.5, 1.5, self.gen)).clamp(0, 1)
            if do_hue:
                h = (h + 2.0 * int(torch.randint(-18, 19, (), generator=self.gen))) % 360.0
            img = (hsv_to_rgb(h, s, v) * 255.0).clamp(0, 255).floor()
        if not contrast_first:
            img = self._contrast(img)
        return {**sample, "image": img}


class Normalize:
    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, sample: Sample) -> Sample:
        return {**sample, "image": (sample["image"] / 255.0 - self.mean) / self.std}


class PadToSize:
    """Centre-pad every map to ``size`` with :data:`PAD_VALUE` (image 0 = the mean after normalising)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[-2:]
        dh, dw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if dh == 0 and dw == 0:
            return sample
        pad = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
        return {k: (v if k == "meta" else F.pad(v, pad, value=PAD_VALUE.get(k, 0.0)))
                for k, v in sample.items()}


class Finalize:
    """Ignore regions and the DESIGN §4 dtypes: a human-parts map that is all 0 or 255 (no person)
    becomes all 255; label maps lose their channel axis and become long."""

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        if "human_parts" in out:
            parts = out["human_parts"]
            if bool(((parts == 0) | (parts == 255)).all()):
                out["human_parts"] = torch.full_like(parts, 255.0)
        for k in ("semseg", "human_parts"):
            if k in out:
                out[k] = out[k][0].round().long()
        for k in ("sal", "edge"):
            if k in out:
                out[k] = out[k][0]
        return out


def train_transforms(
    size: tuple[int, int], scale: tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
    flip: bool = True, photometric: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD, generator: torch.Generator | None = None,
) -> Compose:
    """The official training pipeline at crop ``size`` (512×512 PASCAL, 448×576 NYUD)."""
    steps: list[Callable[[Sample], Sample]] = []
    if not math.isclose(scale[0], 1.0) or not math.isclose(scale[1], 1.0):
        steps.append(RandomScale(*scale, generator=generator))
    steps.append(RandomCrop(size, cat_max_ratio, generator=generator))
    if flip:
        steps.append(RandomHorizontalFlip(generator=generator))
    if photometric:
        steps.append(PhotoMetricDistortion(generator=generator))
    steps += [Normalize(mean, std), PadToSize(size), Finalize()]
    return Compose(steps)


def eval_transforms(size: tuple[int, int], mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> Compose:
    """The official test pipeline: no resizing, no flip, no test-time augmentation."""
    return Compose([Normalize(mean, std), PadToSize(size), Finalize()])
