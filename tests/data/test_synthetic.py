"""SynthScenes (densemoe.data.synthetic): determinism, exact and consistent targets, on-disk layout."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densemoe.data import synthetic
from densemoe.data.synthetic import (
    SYNTH_PART_CLASSES,
    SYNTH_PRESETS,
    SYNTH_SEMSEG_CLASSES,
    SynthConfig,
    render_scene,
    write_synth_dataset,
)

PERSON = SYNTH_SEMSEG_CLASSES.index("person")
SALIENT = [i for i, c in enumerate(SYNTH_SEMSEG_CLASSES) if c not in ("wall", "floor", "ceiling")]
SPECS = {  # key: (dtype, trailing shape)
    "image": (np.uint8, (3,)), "depth": (np.float32, ()), "normals": (np.float32, (3,)),
    "semseg": (np.uint8, ()), "human_parts": (np.uint8, ()), "sal": (np.uint8, ()),
    "instances": (np.int32, ()), "edge": (np.uint8, ()),
}
TINY = SynthConfig(height=32, width=48)
SPLITS = {"train": 3, "val": 2, "test": 2}
LAYOUT = {"images": ".png", "semseg": ".png", "human_parts": ".png", "sal": ".png", "normals": ".png",
          "depth": ".npy", "edge": ".png", "instances": ".png"}


@pytest.fixture(scope="module")
def scenes() -> list[tuple[str, SynthConfig, int, dict[str, np.ndarray]]]:
    """``(preset, cfg, seed, render)``: four renders of each preset at 128×128 and one at 96×128."""
    cases = [(name, cfg, seed) for name, cfg in SYNTH_PRESETS.items() for seed in range(4)]
    cases += [(name, replace(cfg, height=96, width=128), 7) for name, cfg in SYNTH_PRESETS.items()]
    return [(name, cfg, seed, render_scene(seed, cfg)) for name, cfg, seed in cases]


def backproject(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Camera-frame points (H, W, 3), float64: x right, y up, z toward the camera."""
    fx, fy, cx, cy = intrinsics
    v, u = np.mgrid[0:depth.shape[0], 0:depth.shape[1]]
    d = depth.astype(np.float64)
    return np.stack([(u - cx) / fx * d, -(v - cy) / fy * d, -d], axis=-1)


def same_in_3x3(a: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """(H-2, W-2) bool: every pixel of the 3×3 neighbourhood equals the centre (within ``tol``)."""
    h, w = a.shape[:2]
    centre, ok = a[1:-1, 1:-1], np.ones((h - 2, w - 2), bool)
    for dv in range(3):
        for du in range(3):
            diff = np.abs(a[dv:h - 2 + dv, du:w - 2 + du].astype(np.float64) - centre)
            ok &= (diff.max(-1) if diff.ndim == 3 else diff) <= tol
    return ok


def test_same_seed_is_byte_identical_and_seeds_differ():
    cfg = SYNTH_PRESETS["synth-pascal"]
    a, b, c = render_scene(3, cfg), render_scene(3, cfg), render_scene(4, cfg)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key
    assert not np.array_equal(a["image"], c["image"]) and not np.array_equal(a["depth"], c["depth"])
    seq = render_scene(np.random.SeedSequence([0, 1, 2]), cfg)
    assert np.array_equal(seq["image"], render_scene(np.random.SeedSequence([0, 1, 2]), cfg)["image"])


def test_shapes_dtypes_and_ranges(scenes):
    for out in [*(sc[-1] for sc in scenes), render_scene(1, replace(TINY, height=512, width=512))]:
        assert set(out) == {*SPECS, "intrinsics"}
        h, w = out["depth"].shape
        for key, (dtype, tail) in SPECS.items():
            assert out[key].dtype == dtype and out[key].shape == (h, w, *tail), key
        assert out["intrinsics"].dtype == np.float64 and out["intrinsics"].shape == (4,)
        assert np.all(np.isfinite(out["depth"])) and out["depth"].min() > 0
        assert np.allclose(np.linalg.norm(out["normals"], axis=-1), 1, atol=1e-5)
        assert out["semseg"].max() < len(SYNTH_SEMSEG_CLASSES)
        assert out["human_parts"].max() < len(SYNTH_PART_CLASSES)
        assert set(np.unique(out["sal"])) <= {0, 1} and set(np.unique(out["edge"])) <= {0, 1}
        assert out["instances"].min() >= 1


def test_normals_face_the_camera(scenes):
    for *_, out in scenes:
        rays = backproject(out["depth"], out["intrinsics"])
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
        assert np.all((out["normals"] * rays).sum(-1) < 1e-3)  # n · view_dir ≤ 0 up to rounding
        assert np.mean(out["normals"][..., 2] > 0) > 0.5  # mostly toward the camera


def test_normals_match_depth_on_planar_surfaces(scenes):
    for name, _, _, out in scenes:
        p = backproject(out["depth"], out["intrinsics"])
        du, dv = p[1:-1, 2:] - p[1:-1, :-2], p[2:, 1:-1] - p[:-2, 1:-1]  # image-right, image-down
        n_fd = np.cross(dv, du)  # sign: toward the camera, like the stored normals
        n_fd /= np.linalg.norm(n_fd, axis=-1, keepdims=True)
        inv = 1.0 / out["depth"].astype(np.float64)  # affine in (u, v) exactly on a plane
        flat = (np.abs(inv[1:-1, 2:] - 2 * inv[1:-1, 1:-1] + inv[1:-1, :-2]) < 1e-4 * inv[1:-1, 1:-1]) & (
            np.abs(inv[2:, 1:-1] - 2 * inv[1:-1, 1:-1] + inv[:-2, 1:-1]) < 1e-4 * inv[1:-1, 1:-1])
        planar = same_in_3x3(out["instances"]) & same_in_3x3(out["normals"], 1e-6) & flat
        assert planar.mean() > 0.3, name
        cos = (n_fd * out["normals"][1:-1, 1:-1]).sum(-1)[planar]
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 1.0, name


def test_room_planes_from_depth_are_exact(scenes):
    """Back-projected room planes are flat, match the stored normals, meet at right angles, and put the
    camera at its true height: depth and intrinsics are exact, not just locally smooth."""
    for name, cfg, seed, out in scenes:
        p, sem = backproject(out["depth"], out["intrinsics"]), out["semseg"]
        planes = {}
        for i in np.unique(out["instances"][sem <= 2]):
            mask = out["instances"] == i
            if mask.sum() < 50:
                continue
            pts = p[mask]
            centre = pts.mean(0)
            normal = np.linalg.svd(pts - centre, full_matrices=False)[2][-1]
            normal *= np.sign(normal @ out["normals"][mask][0])
            assert np.abs((pts - centre) @ normal).max() < 1e-4 * np.abs(centre[2]), name  # flat
            assert (out["normals"][mask] @ normal).min() > np.cos(np.radians(0.05)), name
            planes[i] = (int(sem[mask][0]), normal, centre @ normal)
        _, _, cam, _ = synthetic._build_scene(np.random.default_rng(seed), cfg)  # the true camera height
        for c, n, offset in planes.values():
            if c == SYNTH_SEMSEG_CLASSES.index("floor"):
                assert abs(-offset - cam.origin[1]) < 1e-4 * cam.origin[1], name
                for c2, n2, _ in planes.values():
                    assert abs(n2 @ n) < 1e-3 if c2 == 0 else abs(n2 @ n) > 1 - 1e-6, name  # walls ⊥ floor


def test_spheres_from_depth_and_normals(scenes):
    """Heads and balls are spheres: every back-projected point p_i equals c + r·n_i for one centre c
    and radius r, which checks depth and normals on curved surfaces too."""
    head, ball, fitted = SYNTH_PART_CLASSES.index("head"), SYNTH_SEMSEG_CLASSES.index("ball"), 0
    for name, _, _, out in scenes:
        p = backproject(out["depth"], out["intrinsics"])
        for i in np.unique(out["instances"]):
            inst = out["instances"] == i
            mask = inst & ((out["human_parts"] == head) | (out["semseg"] == ball))
            if mask.sum() < 20:
                continue
            n = out["normals"][mask].astype(np.float64)                               # (m, 3)
            lhs = np.concatenate([np.tile(np.eye(3), (len(n), 1)), n.reshape(-1, 1)], axis=1)  # (3m, 4)
            (cx, cy, cz, r), *_ = np.linalg.lstsq(lhs, p[mask].reshape(-1), rcond=None)
            residual = np.abs(lhs @ (cx, cy, cz, r) - p[mask].reshape(-1)).max()
            assert residual < 1e-4 * out["depth"][mask].max(), name
            assert 0.09 < r < 0.36, name  # head radius 0.11 m × 0.85–1.1, balls 0.12–0.35 m
            fitted += 1
    assert fitted >= 4


def test_edge_is_recomputed_from_instances(scenes):
    for *_, out in scenes:
        changes_right = np.pad(np.diff(out["instances"], axis=1) != 0, ((0, 0), (0, 1)))
        changes_below = np.pad(np.diff(out["instances"], axis=0) != 0, ((0, 1), (0, 0)))
        assert np.array_equal(out["edge"], (changes_right | changes_below).astype(np.uint8))
        assert out["edge"].any()


def test_labels_are_consistent_with_instances(scenes):
    for *_, out in scenes:
        inst, sem = out["instances"], out["semseg"]
        for i in np.unique(inst):
            assert len(np.unique(sem[inst == i])) == 1
        assert np.array_equal(out["sal"] == 1, np.isin(sem, SALIENT))
        assert np.array_equal(out["human_parts"] > 0, sem == PERSON)


def test_presets_change_scene_statistics():
    def person_images(name: str) -> int:
        return sum((render_scene(s, SYNTH_PRESETS[name])["semseg"] == PERSON).any() for s in range(12))

    assert person_images("synth-pascal") >= 9 and person_images("synth-nyud") <= 3
    with pytest.raises(ValueError, match="object_weights"):
        SynthConfig(object_weights=(1.0,))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_write_synth_dataset_layout_and_encodings(tmp_path):
    out = write_synth_dataset(tmp_path, "synth-tiny", TINY, SPLITS, seed=5, progress=False)
    assert out == tmp_path / "synth-tiny" and sorted(p.name for p in tmp_path.iterdir()) == ["synth-tiny"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["generator"] == "SynthScenes" and meta["version"] == 1 and meta["seed"] == 5
    assert meta["splits"] == SPLITS and meta["semseg_classes"] == list(SYNTH_SEMSEG_CLASSES)
    assert meta["part_classes"] == list(SYNTH_PART_CLASSES) and meta["config"]["width"] == 48
    for s, (split, n) in enumerate(SPLITS.items()):
        ids = (out / "gt_sets" / f"{split}.txt").read_text().split()
        assert ids == [f"{split}_{i:06d}" for i in range(n)]
        for i, sid in enumerate(ids):
            for folder, ext in LAYOUT.items():
                assert (out / folder / f"{sid}{ext}").is_file()
            ref = render_scene(np.random.SeedSequence([5, s, i]), TINY)
            assert np.allclose(meta["intrinsics"][sid], ref["intrinsics"])
            png = {k: np.asarray(Image.open(out / k / f"{sid}.png")) for k in LAYOUT if LAYOUT[k] == ".png"}
            expected = {"images": ref["image"], "semseg": ref["semseg"], "human_parts": ref["human_parts"],
                        "sal": ref["sal"] * 255, "edge": ref["edge"] * 255, "instances": ref["instances"]}
            for key, value in expected.items():
                assert png[key].shape == value.shape and np.array_equal(png[key], value), key
            assert png["instances"].dtype == np.uint16 and png["normals"].dtype == np.uint8
            decoded = 2 * png["normals"].astype(np.float64) / 255 - 1  # the ATRC decoding
            assert np.abs(decoded - ref["normals"]).max() <= 1 / 255 + 1e-6  # rounded, not truncated
            assert np.array_equal(np.load(out / "depth" / f"{sid}.npy"), ref["depth"])


def test_write_synth_dataset_is_cached_and_worker_independent(tmp_path):
    one = write_synth_dataset(tmp_path / "a", "synth-tiny", TINY, SPLITS, progress=False)
    stamp = {p: p.stat().st_mtime_ns for p in one.rglob("*")}
    assert write_synth_dataset(tmp_path / "a", "synth-tiny", TINY, SPLITS, progress=False) == one
    assert {p: p.stat().st_mtime_ns for p in one.rglob("*")} == stamp  # a no-op
    two = write_synth_dataset(tmp_path / "b", "synth-tiny", TINY, SPLITS, progress=False, workers=2)
    assert _files(one) == _files(two)
    other = write_synth_dataset(tmp_path / "a", "synth-tiny", TINY, SPLITS, seed=1, progress=False)
    assert json.loads((other / "meta.json").read_text())["seed"] == 1  # a different meta is replaced
    assert _files(other) != _files(two)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["synth-tiny"]  # no temporary leftovers


def test_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    real, calls = synthetic._write_sample, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated interruption")
        return real(*args)

    monkeypatch.setattr(synthetic, "_write_sample", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        write_synth_dataset(tmp_path, "synth-tiny", TINY, SPLITS, progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "_write_sample", real)
    old = _files(write_synth_dataset(tmp_path, "synth-tiny", TINY, SPLITS, progress=False))
    calls.clear()
    monkeypatch.setattr(synthetic, "_write_sample", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        write_synth_dataset(tmp_path, "synth-tiny", TINY, SPLITS, seed=9, progress=False)
    assert _files(tmp_path / "synth-tiny") == old and len(list(tmp_path.iterdir())) == 1  # old copy intact
