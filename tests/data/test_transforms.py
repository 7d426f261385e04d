import math

import pytest
import torch

from densemoe.data.color import hsv_to_rgb, rgb_to_hsv
from densemoe.data.transforms import (
    Finalize,
    PadToSize,
    PhotoMetricDistortion,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    eval_transforms,
    train_transforms,
)


def coded_sample(h=24, w=32):
    """Maps whose values encode the pixel position, so misaligned transforms show."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                          indexing="ij")
    normals = torch.stack([torch.full_like(x, 0.6), torch.zeros_like(x), torch.full_like(x, 0.8)])
    return {
        "image": torch.stack([x * 4, y * 4, torch.full_like(x, 128.0)]),
        "semseg": ((x + 3 * y) % 7)[None],
        "human_parts": (x % 3)[None],
        "sal": (x > w / 2).float()[None],
        "edge": (x == 5).float()[None],
        "normals": normals,
        "depth": (1.0 + y / 10)[None],
        "meta": {"name": "s"},
    }


def check_aligned(s):
    x, y = s["image"][0] / 4, s["image"][1] / 4
    assert torch.equal(s["semseg"][0], (x + 3 * y) % 7)
    assert torch.equal(s["depth"][0], 1.0 + y / 10)
    assert torch.equal(s["edge"][0], (x == 5).float())


def test_crop_and_flip_keep_every_map_aligned():
    gen = torch.Generator().manual_seed(0)
    crop, flip = RandomCrop((16, 16), cat_max_ratio=1.0, generator=gen), RandomHorizontalFlip(1.0, gen)
    for _ in range(5):
        s = flip(crop(coded_sample()))
        assert s["image"].shape == (3, 16, 16) and s["semseg"].shape == (1, 16, 16)
        check_aligned(s)
        # the flip mirrors x (image code decreases left to right) and negates n_x only
        assert (s["image"][0, :, 1:] < s["image"][0, :, :-1]).all()
        assert torch.allclose(s["normals"][:, 0, 0], torch.tensor([-0.6, 0.0, 0.8]))


def test_crop_respects_cat_max_ratio():
    s = coded_sample()
    s["semseg"] = torch.zeros(1, 24, 32)
    s["semseg"][0, :, 28:] = 1  # class 1 only in the last 4 columns
    gen = torch.Generator().manual_seed(1)
    crop = RandomCrop((8, 8), cat_max_ratio=0.75, generator=gen)
    hits = sum(int((crop(s)["semseg"] == 1).any()) for _ in range(20))
    assert hits >= 15  # without re-drawing only ~ 4/25 of the crops would see both classes


def test_random_scale_divides_depth_and_uses_nearest_for_labels():
    gen = torch.Generator().manual_seed(3)
    s = coded_sample()
    s["depth"] = torch.full((1, 24, 32), 4.0)
    out = RandomScale(0.5, 2.0, gen)(s)
    h, w = out["image"].shape[-2:]
    scale = h / 24
    assert math.isclose(w / 32, scale, rel_tol=0.05)
    assert torch.allclose(out["depth"], torch.full_like(out["depth"], 4.0 / scale), rtol=0.03)
    assert set(out["semseg"].unique().tolist()) <= set(range(7))
    assert set(out["sal"].unique().tolist()) <= {0.0, 1.0}


def test_pad_values_and_centering():
    out = PadToSize((30, 36))(coded_sample())
    assert out["image"].shape == (3, 30, 36)
    assert (out["semseg"][0, :3] == 255).all() and (out["semseg"][0, 27:] == 255).all()
    assert (out["edge"][0, :, :2] == 255).all() and (out["depth"][0, :3] == 0).all()
    assert (out["normals"][:, :3] == 0).all() and (out["image"][:, :3] == 0).all()
    assert torch.equal(out["semseg"][0, 3:27, 2:34], coded_sample()["semseg"][0])


def test_finalize_dtypes_and_parts_ignore():
    s = coded_sample()
    s["human_parts"] = torch.zeros(1, 24, 32)
    out = Finalize()(s)
    assert out["semseg"].dtype == torch.long and out["semseg"].shape == (24, 32)
    assert (out["human_parts"] == 255).all()  # no person → ignored, as the official code does
    assert out["sal"].shape == (24, 32) and out["normals"].shape == (3, 24, 32)
    assert out["depth"].shape == (1, 24, 32)


def test_photometric_changes_only_the_image_and_stays_in_range():
    gen = torch.Generator().manual_seed(5)
    s = coded_sample()
    s["image"] = torch.rand(3, 24, 32) * 255
    changed = 0
    for _ in range(10):
        out = PhotoMetricDistortion(gen)(s)
        assert out["image"].min() >= 0 and out["image"].max() <= 255
        assert torch.equal(out["semseg"], s["semseg"]) and torch.equal(out["normals"], s["normals"])
        changed += int(not torch.equal(out["image"], s["image"]))
    assert changed >= 8  # each of 4 steps fires with p = 0.5


def test_hsv_round_trip():
    rgb = torch.rand(3, 8, 8)
    assert torch.allclose(hsv_to_rgb(*rgb_to_hsv(rgb)), rgb, atol=1e-5)
    h, s, v = rgb_to_hsv(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1))
    assert h.item() == 0 and s.item() == 1 and v.item() == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_train_pipeline_contract_and_determinism(seed):
    def run():
        gen = torch.Generator().manual_seed(seed)
        return train_transforms((20, 20), generator=gen)(coded_sample())

    a, b = run(), run()
    assert a["image"].shape == (3, 20, 20) and a["semseg"].dtype == torch.long
    assert a["edge"].shape == (20, 20) and a["depth"].shape == (1, 20, 20)
    for k in ("image", "semseg", "normals", "depth"):
        assert torch.equal(a[k], b[k])


def test_eval_pipeline_only_normalises_and_pads():
    out = eval_transforms((24, 40), mean=(0, 0, 0), std=(1, 1, 1))(coded_sample())
    assert out["image"].shape == (3, 24, 40)
    assert torch.allclose(out["image"][:, :, 4:36], coded_sample()["image"] / 255.0)
