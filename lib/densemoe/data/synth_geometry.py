"""The 3D side of SynthScenes: primitives, the shapes built from them, and analytic ray casting.

Every primitive is a shape in its own local frame: a centre ``c`` (world), a rotation ``R`` whose
columns are the local axes in world coordinates, and the half-extents ``h`` of its local bounding
box. The shape is defined on local coordinates ``q = Rᵀ (p − c)``:

- ``PLANE``:    the plane ``q_y = 0`` with normal ``+y`` (the room's walls, floor and ceiling);
- ``SPHERE``:   ``|q| = h_x``;
- ``BOX``:      ``|q_i| ≤ h_i``;
- ``CYLINDER``: ``q_x² + q_z² ≤ h_x²``, ``|q_y| ≤ h_y`` (capped, axis = local y);
- ``CAPSULE``:  points within ``h_x`` of the segment ``|q_y| ≤ h_y − h_x`` on the local y axis.

Rays are ``o + t·d`` with ``d`` scaled so that its component along the camera's viewing axis is 1,
so the ray parameter ``t`` of a hit *is* its z-depth. The camera must lie outside every primitive
except the planes (SynthScenes places objects away from it), so the nearest root with ``t > 0`` is
the visible surface. :func:`cast` intersects each primitive only with the rays inside its projected
bounding rectangle (:func:`screen_rects`), one numpy pass per primitive.

Shapes (furniture, balls, lamps, articulated people) are lists of parts in an object frame with
the origin on the floor and y up; :data:`OBJECT_SHAPES` and :func:`person_shape` sample them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PLANE, SPHERE, BOX, CYLINDER, CAPSULE = range(5)
HEAD, TORSO, UPPER_ARM, LOWER_ARM, UPPER_LEG, LOWER_LEG = range(1, 7)  # person parts, 0 = not a person
_NEAR = 1e-3  # m; bounding-box corners closer than this to the camera plane disable culling
_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)  # (8, 3)


@dataclass
class Primitives:
    """``P`` primitives as arrays: ``kind`` (P,), ``center`` (P, 3), ``rot`` (P, 3, 3), ``half`` (P, 3)."""

    kind: np.ndarray
    center: np.ndarray
    rot: np.ndarray
    half: np.ndarray


def rot_y(angle: float) -> np.ndarray:
    """Rotation by ``angle`` radians about the world's vertical (y) axis, (3, 3)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def frame_from_axis(axis) -> np.ndarray:
    """A right-handed rotation (3, 3) whose local y axis (column 1) is ``axis`` normalised."""
    ax, ay, az = (float(a) for a in axis)
    norm = math.sqrt(ax * ax + ay * ay + az * az)
    ax, ay, az = ax / norm, ay / norm, az / norm
    hx, hz = (1.0, 0.0) if abs(ax) < 0.9 else (0.0, 1.0)  # a helper axis not parallel to y
    xx, xy, xz = ay * hz, az * hx - ax * hz, -ay * hx     # x = y × helper
    norm = math.sqrt(xx * xx + xy * xy + xz * xz)
    xx, xy, xz = xx / norm, xy / norm, xz / norm
    zx, zy, zz = xy * az - xz * ay, xz * ax - xx * az, xx * ay - xy * ax  # z = x × y
    return np.array([[xx, ax, zx], [xy, ay, zy], [xz, az, zz]])


# --- shapes: templates in an object frame (origin on the floor, y up) as lists of parts
# (kind, center, rot, half, part label, colour slot) --------------------------------------------------

def _part(kind, center, half, rot=None, part=0, slot=0) -> tuple:
    rot = np.eye(3) if rot is None else rot
    return kind, np.asarray(center, np.float64), rot, np.asarray(half, np.float64), part, slot


def _capsule(a, b, radius, part, slot) -> tuple:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    half = (radius, math.dist(a, b) / 2 + radius, radius)
    return _part(CAPSULE, (a + b) / 2, half, frame_from_axis(b - a), part, slot)


def _cabinet(rng) -> list[tuple]:
    w, d, h = rng.uniform(0.5, 1.2), rng.uniform(0.35, 0.6), rng.uniform(1.0, 2.0)  # tall
    return [_part(BOX, (0, h / 2, 0), (w / 2, h / 2, d / 2))]


def _crate(rng) -> list[tuple]:
    half = rng.uniform(0.15, 0.35) * rng.uniform(0.85, 1.15, 3)  # roughly cubic
    return [_part(BOX, (0, half[1], 0), half)]


def _table(rng) -> list[tuple]:
    w, d, h, top = rng.uniform(0.8, 1.6), rng.uniform(0.5, 1.0), rng.uniform(0.65, 0.8), 0.025
    slot = int(rng.integers(0, 2))  # legs share the top's colour or not
    legs = [_part(BOX, (sx * (w / 2 - 0.06), (h - 2 * top) / 2, sz * (d / 2 - 0.06)),
                  (0.03, (h - 2 * top) / 2, 0.03), slot=slot) for sx in (-1, 1) for sz in (-1, 1)]
    return [_part(BOX, (0, h - top, 0), (w / 2, top, d / 2)), *legs]


def _ball(rng) -> list[tuple]:
    r = rng.uniform(0.12, 0.35)
    return [_part(SPHERE, (0, r, 0), (r, r, r), frame_from_axis(rng.normal(size=3)))]


def _barrel(rng) -> list[tuple]:
    r, hh = rng.uniform(0.2, 0.35), rng.uniform(0.25, 0.55)
    return [_part(CYLINDER, (0, hh, 0), (r, hh, r))]


def _lamp(rng) -> list[tuple]:
    h, r, hh = rng.uniform(1.2, 1.7), rng.uniform(0.12, 0.22), rng.uniform(0.08, 0.15)
    base = rng.uniform(0.12, 0.2)
    return [_part(CYLINDER, (0, 0.015, 0), (base, 0.015, base), slot=1),
            _part(CYLINDER, (0, h / 2, 0), (0.015, h / 2, 0.015), slot=1),
            _part(CYLINDER, (0, h + hh * 0.5, 0), (r, hh, r))]


OBJECT_SHAPES = {"cabinet": _cabinet, "crate": _crate, "table": _table, "ball": _ball, "barrel": _barrel,
                 "lamp": _lamp}


def _limb(side: float, pitch: float, spread: float) -> np.ndarray:
    """Unit limb direction: hanging down, swung forward by ``pitch`` and sideways by ``spread``."""
    return np.array([side * np.sin(spread), -np.cos(spread) * np.cos(pitch), np.cos(spread) * np.sin(pitch)])


def person_shape(rng) -> list[tuple]:
    """An articulated figure facing +z, standing on the floor; slots: skin, shirt, trousers, shoes."""
    deg = np.deg2rad
    sleeve = int(rng.integers(0, 2))  # forearms bare (skin) or in sleeves
    parts = [_capsule((0, 1.04, 0), (0, 1.39, 0), 0.15, TORSO, 1),
             _part(SPHERE, (0, 1.64, 0.01), (0.11,) * 3, frame_from_axis((0, 1, 0)), HEAD, 0)]
    for side in (-1.0, 1.0):  # shoulder swing and spread, elbow bend; hip swing and spread, knee bend
        pitch, spread = deg(rng.uniform(-40, 100)), deg(rng.uniform(5, 70))
        shoulder = np.array([0.2 * side, 1.42, 0])
        elbow = shoulder + 0.30 * _limb(side, pitch, spread)
        hand = elbow + 0.33 * _limb(side, pitch + deg(rng.uniform(0, 110)), spread)
        pitch, spread = deg(rng.uniform(-25, 45)), deg(rng.uniform(0, 12))
        hip = np.array([0.09 * side, 0.94, 0])
        knee = hip + 0.44 * _limb(side, pitch, spread)
        ankle = knee + 0.42 * _limb(side, pitch - deg(rng.uniform(0, 70)), spread)
        toe = ankle + np.array([0, -0.02, 0.15])
        parts += [_capsule(shoulder, elbow, 0.05, UPPER_ARM, 1),
                  _capsule(elbow, hand, 0.04, LOWER_ARM, sleeve),
                  _capsule(hip, knee, 0.075, UPPER_LEG, 2), _capsule(knee, ankle, 0.055, LOWER_LEG, 2),
                  _capsule(ankle - np.array([0, 0, 0.03]), toe, 0.045, LOWER_LEG, 3)]  # foot
    scale = rng.uniform(0.85, 1.1)  # 1.5–1.9 m tall
    parts = [(k, c * scale, rot, h * scale, p, s) for k, c, rot, h, p, s in parts]
    lowest = min(c[1] - abs(rot[1, 1]) * (h[1] - h[0]) - h[0] for _, c, rot, h, _, _ in parts)
    return [(k, c - (0, lowest, 0), rot, h, p, s) for k, c, rot, h, p, s in parts]  # feet on the floor


def footprint(parts: list[tuple]) -> float:
    """Radius of a vertical cylinder around the template's origin that contains it."""
    return max(math.hypot(c[0], c[2]) + math.hypot(*h) for _, c, _, h, _, _ in parts)


def screen_rects(prims: Primitives, origin: np.ndarray, cam_rot: np.ndarray,
                 intrinsics: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel rectangles ``[v0, v1, u0, u1)`` (P, 4) that contain each primitive's projection.

    Conservative: the 8 corners of each local bounding box are projected and their hull's bounding
    rectangle padded by one pixel. Planes, and boxes that cross the camera plane, get the whole image;
    boxes entirely behind the camera get an empty rectangle.
    """
    fx, fy, cx, cy = intrinsics
    local = _CORNERS[None] * prims.half[:, None, :]                                  # (P, 8, 3)
    world = prims.center[:, None, :] + local @ prims.rot.transpose(0, 2, 1)          # (P, 8, 3)
    cam = (world - origin) @ cam_rot                                                 # (P, 8, 3) camera frame
    z = -cam[..., 2]                                                                 # (P, 8) depth
    with np.errstate(divide="ignore", invalid="ignore"):
        u = cx + fx * cam[..., 0] / z
        v = cy - fy * cam[..., 1] / z
    u0 = np.floor(u.min(1)) - 1
    u1 = np.ceil(u.max(1)) + 2
    v0 = np.floor(v.min(1)) - 1
    v1 = np.ceil(v.max(1)) + 2
    rects = np.stack([np.clip(v0, 0, height), np.clip(v1, 0, height),
                      np.clip(u0, 0, width), np.clip(u1, 0, width)], axis=1)
    is_plane = prims.kind == PLANE
    rects[is_plane | (z <= _NEAR).any(1)] = (0, height, 0, width)
    rects[~is_plane & (z <= _NEAR).all(1)] = 0
    return rects.astype(np.int64)


def cast(prims: Primitives, rects: np.ndarray, origin: np.ndarray, dirs: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit per pixel: ``(t, pid)``, each (H, W); ``t`` float32 (inf = no hit), ``pid`` int32.

    ``dirs`` (3, H, W) float32 are the world ray directions, ``rects`` come from :func:`screen_rects`.
    One loop over primitives; each intersects only the rays inside its rectangle.
    """
    _, height, width = dirs.shape
    depth = np.full((height, width), np.inf, np.float32)
    pid = np.zeros((height, width), np.int32)
    rot_t = prims.rot.transpose(0, 2, 1).astype(np.float32)                         # (P, 3, 3) world→local
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k, (v0, v1, u0, u1) in enumerate(rects.tolist()):
            if v0 >= v1 or u0 >= u1:
                continue
            d = rot_t[k] @ dirs[:, v0:v1, u0:u1].reshape(3, -1)                      # (3, n) local rays
            o = (prims.rot[k].T @ (origin - prims.center[k])).tolist()              # local origin
            t = _INTERSECT[int(prims.kind[k])](o, d, prims.half[k].tolist()).reshape(v1 - v0, u1 - u0)
            closer = t < depth[v0:v1, u0:u1]
            np.copyto(depth[v0:v1, u0:u1], t, where=closer)
            np.copyto(pid[v0:v1, u0:u1], k, where=closer)
    return depth, pid


def surface(prims: Primitives, pid: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit world normals (3, N) and local coordinates ``q`` (3, N) of hits ``points`` (3, N) on ``pid``."""
    n_prims = len(prims.kind)
    table = np.concatenate([prims.rot.reshape(n_prims, 9), prims.center, prims.half], axis=1)
    g = np.take(table.T.astype(np.float32), pid, axis=1)                              # (15, N): R, c, h
    rot, dp, half = g[:9], points - g[9:12], g[12:15]                                  # rot[3 i + j] = R_ij
    q = np.stack([rot[i] * dp[0] + rot[3 + i] * dp[1] + rot[6 + i] * dp[2] for i in range(3)])  # Rᵀ (p − c)
    n_local = np.zeros_like(q)
    n_local[1] = 1.0                                                                   # a plane's normal
    kinds = np.take(prims.kind, pid)
    for kind, normal_fn in _NORMAL.items():
        idx = np.flatnonzero(kinds == kind)
        if idx.size:
            n_local[:, idx] = normal_fn(np.take(q, idx, axis=1), np.take(half, idx, axis=1))
    n = np.stack([rot[3 * i] * n_local[0] + rot[3 * i + 1] * n_local[1] + rot[3 * i + 2] * n_local[2]
                  for i in range(3)])                                                  # R n_local
    n /= np.sqrt((n * n).sum(0))
    return n, q


# --- ray–primitive intersections in local coordinates: o is a 3-list, d is (3, n) float32 -------------

def _near_root(a, b, c) -> np.ndarray:
    """Smaller root of ``a t² + 2 b t + c = 0`` where it is real and positive, else inf."""
    disc = b * b - a * c
    t = (-b - np.sqrt(disc)) / a
    return np.where((disc >= 0) & (t > 0), t, np.inf)


def _hit_plane(o, d, h) -> np.ndarray:
    t = -o[1] / d[1]
    return np.where(t > 0, t, np.inf)


def _hit_sphere(o, d, h, dd=None) -> np.ndarray:
    if dd is None:
        dd = (d * d).sum(0)
    b = o[0] * d[0] + o[1] * d[1] + o[2] * d[2]
    return _near_root(dd, b, o[0] ** 2 + o[1] ** 2 + o[2] ** 2 - h[0] ** 2)


def _hit_box(o, d, h) -> np.ndarray:
    inv = 1.0 / d                                                                    # (3, n)
    lo = np.array([-h[i] - o[i] for i in range(3)], np.float32)[:, None] * inv
    hi = np.array([h[i] - o[i] for i in range(3)], np.float32)[:, None] * inv
    t_in = np.minimum(lo, hi).max(0)
    t_out = np.maximum(lo, hi).min(0)
    return np.where((t_in <= t_out) & (t_in > 0), t_in, np.inf)


def _hit_tube(o, d, radius: float, half_len: float) -> np.ndarray:
    """Open tube around the local y axis, ``|y| ≤ half_len``: the entering root only."""
    a = d[0] * d[0] + d[2] * d[2]
    b = o[0] * d[0] + o[2] * d[2]
    t = _near_root(a, b, o[0] ** 2 + o[2] ** 2 - radius ** 2)
    return np.where(np.abs(o[1] + t * d[1]) <= half_len, t, np.inf)


def _hit_cylinder(o, d, h) -> np.ndarray:
    t = _hit_tube(o, d, h[0], h[1])
    if abs(o[1]) > h[1]:  # the camera is beyond a cap's plane: that cap may be the first hit
        t_cap = (np.copysign(h[1], o[1]) - o[1]) / d[1]
        x, z = o[0] + t_cap * d[0], o[2] + t_cap * d[2]
        t = np.where((t_cap > 0) & (x * x + z * z <= h[0] ** 2) & (t_cap < t), t_cap, t)
    return t


def _hit_capsule(o, d, h) -> np.ndarray:
    """Where the ray enters the infinite tube decides: the body if ``|y| ≤ L``, else the end sphere on
    that side (a ray that misses the tube misses the capsule), as in Quilez's capsule intersector."""
    r, half_len = h[0], h[1] - h[0]
    a = d[0] * d[0] + d[2] * d[2]
    b = o[0] * d[0] + o[2] * d[2]
    c = o[0] ** 2 + o[2] ** 2 - r * r
    t_tube = (-b - np.sqrt(b * b - a * c)) / a                                        # nan: tube missed
    y = o[1] + t_tube * d[1]
    end = np.copysign(half_len, np.where(np.isnan(y), o[1], y))                       # ±L; nan: ray ∥ axis
    oc_y = o[1] - end                                                                  # to that end's centre
    b_end = b + oc_y * d[1]
    dd = a + d[1] * d[1]
    t_end = _near_root(dd, b_end, c + oc_y * oc_y)
    return np.where((np.abs(y) <= half_len) & (t_tube > 0), t_tube, t_end)


_INTERSECT = {PLANE: _hit_plane, SPHERE: _hit_sphere, BOX: _hit_box,
              CYLINDER: _hit_cylinder, CAPSULE: _hit_capsule}


# --- local normals (unnormalised) from local hit points q (3, m) and half-extents h (3, m); a plane's is +y

def _normal_sphere(q, h) -> np.ndarray:
    return q


def _normal_box(q, h) -> np.ndarray:
    r = np.abs(q) / h                                                                  # 1 on the hit face
    on_x = (r[0] >= r[1]) & (r[0] >= r[2])
    on_y = ~on_x & (r[1] >= r[2])
    return np.sign(q) * np.stack([on_x, on_y, ~on_x & ~on_y])


def _normal_cylinder(q, h) -> np.ndarray:
    on_cap = (h[1] - np.abs(q[1])) < (h[0] - np.hypot(q[0], q[2]))                    # nearer the cap's plane
    side = ~on_cap
    return np.stack([q[0] * side, np.sign(q[1]) * on_cap, q[2] * side])


def _normal_capsule(q, h) -> np.ndarray:
    half_len = h[1] - h[0]
    return np.stack([q[0], q[1] - np.clip(q[1], -half_len, half_len), q[2]])  # q − nearest point on the axis


_NORMAL = {SPHERE: _normal_sphere, BOX: _normal_box,
           CYLINDER: _normal_cylinder, CAPSULE: _normal_capsule}
