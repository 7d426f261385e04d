"""SynthScenes: a procedural indoor-scene generator with exact multi-task targets (DESIGN.md §5).

A closed room (floor, four walls, ceiling) holds a few objects of several classes and articulated
"person" figures made of spheres and capsules. A pinhole camera with a random pose and random
intrinsics looks into it; every pixel's nearest hit is found by vectorised analytic ray casting
(:mod:`densemoe.data.synth_geometry`), so all targets are exact and consistent with each other.

Conventions of :func:`render_scene`'s output, for an image of ``H × W`` pixels:

- pixel ``(v, u)`` (row, column) is the ray through image point ``(u, v)``: pixel centres sit at
  integer coordinates and the intrinsics ``[fx, fy, cx, cy]`` use that convention;
- ``depth`` (H, W) float32: metres along the optical axis (z-depth, not ray length), always > 0;
- ``normals`` (H, W, 3) float32: unit vectors in the **camera frame**, x pointing image-right, y
  image-up, z toward the camera, so visible surfaces face the viewer (``n · ray < 0``, mostly
  ``n_z > 0``). Back-projection is ``P = ((u − cx)·d/fx, −(v − cy)·d/fy, −d)``; mirroring the
  image horizontally negates ``n_x``;
- ``semseg`` (H, W) uint8: index into :data:`SYNTH_SEMSEG_CLASSES` (no ignore label);
- ``human_parts`` (H, W) uint8: index into :data:`SYNTH_PART_CLASSES`, > 0 exactly on persons;
- ``sal`` (H, W) uint8 in {0, 1}: 1 on objects and persons, 0 on walls, floor and ceiling;
- ``instances`` (H, W) int32, ids from 1: each wall/floor/ceiling plane, each object and each
  person (all its parts) is one instance;
- ``edge`` (H, W) uint8 in {0, 1}: pixel ``(v, u)`` is 1 iff its instance differs from that of
  its right neighbour ``(v, u+1)`` or its bottom neighbour ``(v+1, u)`` (1 px wide, on the
  top/left side of every boundary);
- ``image`` (H, W, 3) uint8: Lambertian + ambient shading from a point light, random colours per
  object (class is not given away by colour), procedural checker/stripe textures in each
  primitive's local frame, pixel noise; ``intrinsics`` float64 ``[fx, fy, cx, cy]``.
"""

from __future__ import annotations

import colorsys
import json
import math
import multiprocessing
import shutil
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from densemoe.atomic import _disk_full, disk_full_error, publish_dir, remove_stale, stale_patterns, temp_dir
from densemoe.data import synth_geometry as geo
from densemoe.data.synth_geometry import Primitives
from densemoe.lock import FolderLock

__all__ = ["SYNTH_PART_CLASSES", "SYNTH_PRESETS", "SYNTH_SEMSEG_CLASSES", "SynthConfig", "render_scene",
           "write_synth_dataset"]

SYNTH_SEMSEG_CLASSES: tuple[str, ...] = (
    "wall", "floor", "ceiling", "cabinet", "crate", "table", "ball", "barrel", "lamp", "person")
SYNTH_PART_CLASSES: tuple[str, ...] = (
    "background", "head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg")
OBJECT_CLASSES: tuple[str, ...] = SYNTH_SEMSEG_CLASSES[3:9]  # salient, like "person"
_WALL, _FLOOR, _CEILING, _PERSON = 0, 1, 2, SYNTH_SEMSEG_CLASSES.index("person")


@dataclass(frozen=True)
class SynthConfig:
    """Scene statistics of a SynthScenes dataset; ranges are ``(low, high)``, counts inclusive."""

    height: int = 128
    width: int = 128
    objects: tuple[int, int] = (2, 5)
    persons: tuple[int, int] = (1, 3)
    person_prob: float = 0.85  # probability that an image contains persons at all
    object_weights: tuple[float, ...] = (1.0,) * len(OBJECT_CLASSES)  # sampling odds per OBJECT_CLASSES
    fov_deg: tuple[float, float] = (50.0, 75.0)  # horizontal field of view
    cam_height: tuple[float, float] = (1.0, 1.8)  # metres above the floor
    cam_pitch_deg: tuple[float, float] = (-30.0, 5.0)  # negative looks down
    cam_roll_deg: tuple[float, float] = (-4.0, 4.0)
    room_size: tuple[float, float] = (4.0, 8.0)  # floor side lengths, metres
    room_height: tuple[float, float] = (2.5, 3.2)
    noise_std: float = 3.0  # standard deviation of the (uniform) pixel noise, in 8-bit grey levels

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"SynthConfig: image size must be positive, got {self.height}x{self.width}")
        if len(self.object_weights) != len(OBJECT_CLASSES) or sum(self.object_weights) <= 0:
            raise ValueError(f"SynthConfig.object_weights: need {len(OBJECT_CLASSES)} weights for "
                             f"{OBJECT_CLASSES} with a positive sum, got {self.object_weights}")


SYNTH_PRESETS: dict[str, SynthConfig] = {
    # PASCAL-like: people in most images, a few objects, varied viewpoints and lenses.
    "synth-pascal": SynthConfig(objects=(1, 4), persons=(1, 3), person_prob=0.9),
    # NYUD-like: furniture-filled rooms from a hand-held Kinect height and its ~58° lens, people rare.
    "synth-nyud": SynthConfig(objects=(5, 10), persons=(1, 1), person_prob=0.1,
                              object_weights=(3.0, 2.0, 3.0, 0.5, 1.0, 1.0),
                              fov_deg=(54.0, 62.0), cam_height=(1.1, 1.7), cam_pitch_deg=(-35.0, 0.0)),
}


@dataclass
class _Scene:
    """Primitives with per-primitive attributes, added one shape (a list of parts) at a time."""

    shapes: list[tuple] = field(default_factory=list)

    def add(self, parts: list[tuple], pose, yaw: float, instance, cls, colours: list, tex) -> None:
        """Add ``parts`` (from :mod:`synth_geometry`) turned by ``yaw`` and moved to ``pose`` (3,);
        ``instance``, ``cls`` and ``tex`` are one value for all parts or one per part."""
        kind, center, rot, half, part, slot = (np.array(col) for col in zip(*parts, strict=True))
        ry, n = geo.rot_y(yaw), len(kind)
        self.shapes.append((kind, center @ ry.T + pose, ry @ rot, half, np.broadcast_to(instance, n),
                            np.broadcast_to(cls, n), part, np.asarray(colours)[slot],
                            np.broadcast_to(np.asarray(tex, np.float64), (n, 8))))

    def arrays(self) -> tuple[Primitives, dict[str, np.ndarray]]:
        cols = [np.concatenate(col) for col in zip(*self.shapes, strict=True)]
        prims = Primitives(cols[0], cols[1], cols[2], cols[3])
        attrs = {"instance": cols[4].astype(np.int32), "cls": cols[5].astype(np.uint8),
                 "part": cols[6].astype(np.uint8), "colour": cols[7].astype(np.float32),
                 "tex": cols[8].astype(np.float32)}
        return prims, attrs


@dataclass
class _Camera:
    origin: np.ndarray      # (3,) world position
    rot: np.ndarray         # (3, 3) camera→world, columns = camera x (right), y (up), z (backward)
    intrinsics: np.ndarray  # (4,) fx, fy, cx, cy


# --- scene sampling ---------------------------------------------------------------------------------

def _colour(rng, skin: bool = False) -> tuple[float, float, float]:
    if skin and rng.random() < 0.7:
        return colorsys.hsv_to_rgb(rng.uniform(0.02, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    return colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.9), rng.uniform(0.25, 1.0))


def _texture(rng) -> list[float]:
    """``[checker amp, checker freq, stripe amp, stripe freq, stripe dir (3), phase]`` per instance."""
    direction = rng.normal(size=3)
    direction /= math.hypot(*direction)
    checker = rng.uniform(0.08, 0.3) if rng.random() < 0.4 else 0.0
    stripes = rng.uniform(0.05, 0.25) if rng.random() < 0.4 else 0.0
    return [checker, rng.uniform(2.0, 8.0), stripes, rng.uniform(6.0, 40.0), *direction, rng.uniform(0, 6.3)]


def _add_room(scene: _Scene, rng, size: np.ndarray) -> None:
    """Six planes enclosing ``[0, X] × [0, Y] × [0, Z]``, normals pointing inward; instances 1..6."""
    x, y, z = size
    wall_colour, share = _colour(rng), rng.random() < 0.7
    planes = [((x / 2, 0, z / 2), (0, 1, 0), _FLOOR), ((x / 2, y, z / 2), (0, -1, 0), _CEILING),
              ((0, y / 2, z / 2), (1, 0, 0), _WALL), ((x, y / 2, z / 2), (-1, 0, 0), _WALL),
              ((x / 2, y / 2, 0), (0, 0, 1), _WALL), ((x / 2, y / 2, z), (0, 0, -1), _WALL)]
    parts = [(geo.PLANE, c, geo.frame_from_axis(n), (1.0,) * 3, 0, i) for i, (c, n, _) in enumerate(planes)]
    classes = [cls for *_, cls in planes]
    colours = [wall_colour if cls == _WALL and share else _colour(rng) for cls in classes]
    scene.add(parts, np.zeros(3), 0.0, np.arange(1, 7), classes, colours, [_texture(rng) for _ in planes])


def _sample_camera(rng, cfg: SynthConfig, room: np.ndarray) -> _Camera:
    pos = np.array([rng.uniform(0.4, room[0] - 0.4), min(rng.uniform(*cfg.cam_height), room[1] - 0.3),
                    rng.uniform(0.4, room[2] - 0.4)])
    yaw = np.arctan2(pos[0] - room[0] / 2, pos[2] - room[2] / 2)  # facing the room's centre, then jittered
    yaw += np.deg2rad(rng.uniform(-40, 40))
    pitch, roll = np.deg2rad(rng.uniform(*cfg.cam_pitch_deg)), np.deg2rad(rng.uniform(*cfg.cam_roll_deg))
    cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    tilt = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rot = geo.rot_y(yaw) @ tilt @ np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])  # yaw · pitch · roll
    fx = cfg.width / 2 / np.tan(np.deg2rad(rng.uniform(*cfg.fov_deg)) / 2)
    cx = (cfg.width - 1) / 2 + rng.uniform(-0.02, 0.02) * cfg.width
    cy = (cfg.height - 1) / 2 + rng.uniform(-0.02, 0.02) * cfg.height
    return _Camera(pos, rot, np.array([fx, fx, cx, cy]))


def _place(rng, radius: float, room: np.ndarray, cam: _Camera, taken: list) -> tuple[float, float] | None:
    """A free floor position ``(x, z)`` for a footprint of ``radius``, mostly in front of the camera."""
    forward, margin = math.atan2(-cam.rot[0, 2], -cam.rot[2, 2]), radius + 0.05
    lo, hi = (margin, margin), (room[0] - margin, room[2] - margin)
    for _ in range(20):
        if rng.random() < 0.85:  # along a ray on the floor inside the view, up to the walls
            phi = forward + rng.uniform(-0.6, 0.6)
            step = (math.sin(phi), math.cos(phi))
            reach = min(((hi[i] if step[i] > 0 else lo[i]) - cam.origin[2 * i]) / step[i] for i in range(2))
            dist = rng.uniform(radius + 0.8, max(reach, radius + 0.8))
            x, z = cam.origin[0] + dist * step[0], cam.origin[2] + dist * step[1]
        else:
            x, z = rng.uniform(0, room[0]), rng.uniform(0, room[2])
        inside = lo[0] < x < hi[0] and lo[1] < z < hi[1]
        if inside and all(math.hypot(x - px, z - pz) > margin + r for px, pz, r in taken):
            taken.append((x, z, radius))
            return x, z
    return None


def _build_scene(rng, cfg: SynthConfig) -> tuple[Primitives, dict[str, np.ndarray], _Camera, np.ndarray]:
    room = np.array([rng.uniform(*cfg.room_size), rng.uniform(*cfg.room_height), rng.uniform(*cfg.room_size)])
    scene = _Scene()
    _add_room(scene, rng, room)
    cam = _sample_camera(rng, cfg, room)
    n_persons = int(rng.integers(cfg.persons[0], cfg.persons[1] + 1)) if rng.random() < cfg.person_prob else 0
    weights = np.asarray(cfg.object_weights) / np.sum(cfg.object_weights)
    names = ["person"] * n_persons + list(rng.choice(OBJECT_CLASSES, p=weights,
                                                     size=rng.integers(cfg.objects[0], cfg.objects[1] + 1)))
    taken = [(cam.origin[0], cam.origin[2], 0.4)]
    for name in names:
        parts = geo.person_shape(rng) if name == "person" else geo.OBJECT_SHAPES[name](rng)
        pos = _place(rng, geo.footprint(parts), room, cam, taken)
        if pos is None:
            continue
        yaw, inst, cls = rng.uniform(0, 2 * np.pi), len(taken) + 5, SYNTH_SEMSEG_CLASSES.index(name)
        colours = [_colour(rng, skin=slot == 0 and cls == _PERSON) for slot in range(4)]
        scene.add(parts, np.array([pos[0], 0.0, pos[1]]), yaw, inst, cls, colours, _texture(rng))
    light = np.array([rng.uniform(0.15, 0.85) * room[0], room[1] - rng.uniform(0.1, 0.5),
                      rng.uniform(0.15, 0.85) * room[2]])
    return *scene.arrays(), cam, light


# --- rendering --------------------------------------------------------------------------------------

def _ray_dirs(cam: _Camera, height: int, width: int) -> np.ndarray:
    """World ray directions (3, H, W) float32 with unit component along the viewing axis."""
    fx, fy, cx, cy = cam.intrinsics
    x = ((np.arange(width) - cx) / fx).astype(np.float32)[None, :]                     # (1, W) camera x
    y = (-(np.arange(height) - cy) / fy).astype(np.float32)[:, None]                   # (H, 1) camera y
    r = cam.rot.astype(np.float32)
    return np.stack([r[i, 0] * x + r[i, 1] * y - r[i, 2] for i in range(3)])          # R (x, y, −1)


def _shade(rng, cfg: SynthConfig, attrs: dict, light: np.ndarray, pid, q, normals, points) -> np.ndarray:
    """Textured Lambertian + ambient colour of each hit (3, N arrays in), plus pixel noise: (N, 3) uint8."""
    tex = np.take(attrs["tex"], pid, axis=0).T                                          # (8, N)
    cells = np.floor(q[0] * tex[1]) + np.floor(q[1] * tex[1]) + np.floor(q[2] * tex[1])
    checker = 2 * (cells - 2 * np.floor(cells / 2)) - 1                                  # ±1
    stripes = np.sin((q[0] * tex[4] + q[1] * tex[5] + q[2] * tex[6]) * tex[3] + tex[7])
    to_light = light.astype(np.float32)[:, None] - points                              # (3, N)
    dist2 = (to_light * to_light).sum(0)
    cosine = np.maximum((normals * to_light).sum(0), 0) / np.sqrt(dist2)
    ambient, exposure = rng.uniform(0.2, 0.45), rng.uniform(0.85, 1.2)
    light_rgb = rng.uniform(0.9, 1.1, 3).astype(np.float32) * np.float32(255 * exposure)
    pattern = 1 + tex[0] * checker + tex[2] * stripes
    gain = (ambient + (1 - ambient) * 1.3 * cosine / (1 + 0.03 * dist2)) * pattern   # (N,)
    rgb = np.take(attrs["colour"], pid, axis=0) * gain[:, None] * light_rgb              # (N, 3)
    rgb += (rng.random(rgb.shape, dtype=np.float32) - 0.5) * np.float32(cfg.noise_std * 12 ** 0.5)  # uniform
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _edges(instances: np.ndarray) -> np.ndarray:
    """1 where a pixel's instance differs from its right or bottom neighbour, (H, W) uint8."""
    edge = np.zeros(instances.shape, bool)
    edge[:, :-1] |= instances[:, :-1] != instances[:, 1:]
    edge[:-1, :] |= instances[:-1, :] != instances[1:, :]
    return edge.astype(np.uint8)


def render_scene(seed: int | np.random.SeedSequence, cfg: SynthConfig) -> dict[str, np.ndarray]:
    """Render one random scene; the result depends only on ``seed`` and ``cfg`` (see the module doc)."""
    rng = np.random.default_rng(seed)
    prims, attrs, cam, light = _build_scene(rng, cfg)
    h, w = cfg.height, cfg.width
    dirs = _ray_dirs(cam, h, w)                                                          # (3, H, W)
    rects = geo.screen_rects(prims, cam.origin, cam.rot, cam.intrinsics, h, w)
    depth, pid = geo.cast(prims, rects, cam.origin, dirs)                                # (H, W) each
    pid = pid.ravel()
    points = cam.origin.astype(np.float32)[:, None] + depth.reshape(1, -1) * dirs.reshape(3, -1)  # (3, N)
    n_world, q = geo.surface(prims, pid, points)                                         # (3, N) each
    instances = np.take(attrs["instance"], pid).reshape(h, w)
    semseg = np.take(attrs["cls"], pid).reshape(h, w)
    return {
        "image": _shade(rng, cfg, attrs, light, pid, q, n_world, points).reshape(h, w, 3),
        "depth": depth,
        "normals": (n_world.T @ cam.rot.astype(np.float32)).reshape(h, w, 3),          # Rᵀ n, camera frame
        "semseg": semseg,
        "human_parts": np.take(attrs["part"], pid).reshape(h, w),
        "sal": (semseg > _CEILING).astype(np.uint8),
        "instances": instances,
        "edge": _edges(instances),
        "intrinsics": cam.intrinsics.astype(np.float64),
    }


# --- dataset writing --------------------------------------------------------------------------------

_VERSION = 1  # bump whenever render_scene's output changes, so that cached datasets are regenerated
_FOLDERS = ("images", "semseg", "human_parts", "sal", "normals", "depth", "edge", "instances", "gt_sets")


def _save_png(path: Path, array: np.ndarray) -> None:
    """Fast PNG: zlib level 1 with the Z_RLE strategy (``compress_type=3``), smaller and faster than the
    default strategy on these images."""
    Image.fromarray(array).save(path, compress_level=1, compress_type=3)


def _write_sample(folder: str, cfg: SynthConfig, job: tuple[int, int, str, int]) -> tuple[str, list[float]]:
    """Render image ``i`` of the ``split_index``-th split and write its files under ``folder``."""
    seed, split_index, split, i = job
    out = render_scene(np.random.SeedSequence([seed, split_index, i]), cfg)
    root, sid = Path(folder), f"{split}_{i:06d}"
    _save_png(root / "images" / f"{sid}.png", out["image"])
    _save_png(root / "semseg" / f"{sid}.png", out["semseg"])
    _save_png(root / "human_parts" / f"{sid}.png", out["human_parts"])
    _save_png(root / "sal" / f"{sid}.png", out["sal"] * np.uint8(255))
    _save_png(root / "edge" / f"{sid}.png", out["edge"] * np.uint8(255))
    _save_png(root / "normals" / f"{sid}.png", np.rint((out["normals"] + 1) * 127.5).astype(np.uint8))
    _save_png(root / "instances" / f"{sid}.png", out["instances"].astype(np.uint16))
    np.save(root / "depth" / f"{sid}.npy", out["depth"])
    return sid, out["intrinsics"].tolist()


def _same_meta(path: Path, meta: dict) -> bool:
    """Whether ``path`` holds ``meta`` (plus intrinsics), splits in the same order (the order sets seeds)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    old.pop("intrinsics", None)
    return old == json.loads(json.dumps(meta)) and list(old["splits"]) == list(meta["splits"])


def write_synth_dataset(root: str | Path, name: str, cfg: SynthConfig, splits: dict[str, int], seed: int = 0,
                        progress: bool = True, workers: int = 1) -> Path:
    """Write ``root/name`` in the shared multi-task layout and return that path.

    Image ``i`` of the ``s``-th split is rendered from ``SeedSequence([seed, s, i])``, so the files do not
    depend on ``workers``. Everything is written to a temporary sibling folder that replaces ``root/name``
    only once complete (``densemoe/atomic.py``). An existing ``root/name`` whose ``meta.json`` matches is
    returned as is. The work holds the lock ``root/.<name>.lock``; under it, the temporary folders of a
    generation that was killed are removed first.
    """
    out = Path(root) / name
    meta = {"generator": "SynthScenes", "version": _VERSION, "name": name, "seed": seed,
            "config": asdict(cfg), "splits": dict(splits), "semseg_classes": list(SYNTH_SEMSEG_CLASSES),
            "part_classes": list(SYNTH_PART_CLASSES)}
    with FolderLock(out, f"densemoe data synth {name}", path=out.parent / f".{name}.lock"):
        remove_stale(out.parent, (f".{name}.tmp-*", *stale_patterns(name)), recursive=False)
        if _same_meta(out / "meta.json", meta):
            return out
        tmp = temp_dir(out.parent, prefix=f".{name}.tmp-")
        try:
            for sub in _FOLDERS:
                (tmp / sub).mkdir()
            jobs = [(seed, s, split, i) for s, (split, n) in enumerate(splits.items()) for i in range(n)]
            intrinsics = _run_jobs(partial(_write_sample, str(tmp), cfg), jobs, workers, progress, name)
            for split, n in splits.items():
                (tmp / "gt_sets" / f"{split}.txt").write_text("".join(f"{split}_{i:06d}\n" for i in range(n)))
            (tmp / "meta.json").write_text(json.dumps({**meta, "intrinsics": intrinsics}, indent=1))
            publish_dir(tmp, out)
        except Exception as exc:
            if _disk_full(exc):
                raise disk_full_error(out) from exc
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _run_jobs(fn, jobs: list, workers: int, progress: bool, name: str) -> dict[str, list[float]]:
    """Apply ``fn`` to every job, in-process or in a pool, with a progress bar; ``{id: intrinsics}``."""
    results = {}
    with tqdm(total=len(jobs), desc=f"SynthScenes {name}", unit="img", disable=not progress) as bar:
        if workers <= 1:
            for job in jobs:
                sid, k = fn(job)
                results[sid] = k
                bar.update()
            return results
        chunk = max(1, min(32, len(jobs) // (4 * workers)))
        with multiprocessing.Pool(workers) as pool:
            for sid, k in pool.imap(fn, jobs, chunksize=chunk):
                results[sid] = k
                bar.update()
    return results
