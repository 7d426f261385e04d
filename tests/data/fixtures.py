"""Tiny copies of the real dataset archives, in their exact official layouts (numbers only).

Every file is generated here: random images, label maps with known values, PASCAL-Part ``anno``
structs and PASCAL-Context ``LabelMap``s written with ``scipy.io.savemat``, split lists. Folder names,
extensions and encodings follow ``specs/mlore.md`` §3 and ``specs/ecosystem.md`` §4.2. The planted
values and what they must decode to are module constants the tests compare against.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

H, W = 24, 32  # PASCAL fixture size
NH, NW = 12, 16  # ATRC NYUDv2 fixture size (the real one is 448×576)

PASCAL_SPLITS = {"train": ["2008_000001"], "val": ["2008_000002", "2008_000003"]}
NYUD_SPLITS = {"train": ["img_0001", "img_0002"], "val": ["img_0003"]}

# PASCAL-Context LabelMap ids: 284 person and 427 tvmonitor keep normals, 2 aeroplane does not.
PERSON_CTX, TV_CTX, PLANE_CTX, WALL_CTX = 284, 427, 2, 440
NORMALS_V = (255, 0, 128)  # uint8 RGB → (1, −1, 1/255)


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _jpg(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)


def _splits(folder: Path, splits: dict[str, list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (folder / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def _struct(fields: list[str], rows: list[tuple]) -> np.ndarray:
    """A MATLAB 1×n struct array for ``savemat``."""
    arr = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f, v in zip(fields, row, strict=True):
            arr[f][0, i] = v
    return arr


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def _part_mat(path: Path, objects: list[tuple[str, int, np.ndarray, list[tuple[str, np.ndarray]]]]) -> None:
    """A PASCAL-Part file: ``anno = {imname, objects(class, class_ind, mask, parts(part_name, mask))}``."""
    rows = [
        (cls, np.array([[ind]], np.uint8), mask,
         _struct(["part_name", "mask"], parts) if parts else np.zeros((0, 0)))
        for cls, ind, mask, parts in objects
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = _struct(["class", "class_ind", "mask", "parts"], rows)
    scipy.io.savemat(str(path), {"anno": {"imname": path.stem, "objects": objs}})


#: Person parts of sample 2008_000001: (part name, rows, cols) and the merged id each must become.
PERSON_PARTS = [
    ("hair", (4, 6), (0, 16), 1), ("nose", (6, 8), (0, 16), 1), ("neck", (8, 9), (0, 16), 2),
    ("torso", (9, 12), (0, 16), 2), ("luarm", (12, 14), (0, 4), 3), ("rlarm", (12, 14), (4, 8), 4),
    ("rhand", (14, 15), (0, 16), 4), ("luleg", (15, 18), (0, 16), 5), ("llleg", (18, 21), (0, 16), 6),
    ("rfoot", (21, 24), (0, 16), 6),
]


def expected_parts() -> np.ndarray:
    out = np.zeros((H, W), np.float32)
    for _, (r0, r1), (c0, c1), pid in PERSON_PARTS:
        out[r0:r1, c0:c1] = pid
    return out


def pascal_label_map(sample_id: str) -> np.ndarray:
    lab = np.full((H, W), PLANE_CTX, np.uint16)
    if sample_id == "2008_000001":
        lab[:, :16] = PERSON_CTX
        lab[:6, 16:] = TV_CTX
    else:
        lab[:] = WALL_CTX
        lab[8:14, 10:20] = PLANE_CTX
    return lab


def pascal_semseg(sample_id: str) -> np.ndarray:
    seg = np.zeros((H, W), np.uint8)
    seg[:, :16] = 15
    seg[0, :] = 255
    seg[-1, :] = int(sample_id[-1])  # tells the VOC12 file (1) from the pascal-context fallback (2, 3)
    return seg


def sal_raw() -> np.ndarray:
    """Column bands 0, 127, 128, 255 → binary 0, 0, 1, 1 (threshold v/255 > 0.5)."""
    return np.repeat(np.array([0, 127, 128, 255], np.uint8), W // 4)[None, :].repeat(H, 0)


def build_pascal(root: Path, rng: np.random.Generator | None = None) -> Path:
    """``<root>/PASCALContext`` with the ATRC layout; returns that folder."""
    rng = rng or np.random.default_rng(0)
    d = root / "PASCALContext"
    _splits(d / "ImageSets" / "Context", PASCAL_SPLITS)
    for sid in [i for ids in PASCAL_SPLITS.values() for i in ids]:
        _jpg(d / "JPEGImages" / f"{sid}.jpg", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        sub = "VOC12" if sid.endswith("1") else "pascal-context"
        _png(d / "semseg" / sub / f"{sid}.png", pascal_semseg(sid))
        _png(d / "sal_distill" / f"{sid}.png", sal_raw())
        normals = np.broadcast_to(np.array(NORMALS_V, np.uint8), (H, W, 3)).copy()
        _png(d / "normals_distill" / f"{sid}.png", normals)
        (d / "pascal-context" / "trainval").mkdir(parents=True, exist_ok=True)
        label_mat = d / "pascal-context" / "trainval" / f"{sid}.mat"
        scipy.io.savemat(str(label_mat), {"LabelMap": pascal_label_map(sid)})
        dog_head = [("head", _box(0, 4, 16, 32))]  # parts of a non-person object: ignored
        if sid == "2008_000001":
            parts = [(n, _box(*r, *c)) for n, r, c, _ in PERSON_PARTS]
            objects = [("dog", 12, _box(0, 4, 16, 32), dog_head), ("person", 15, _box(4, 24, 0, 16), parts),
                       ("person", 15, _box(0, 4, 0, 8), [])]
        elif sid == "2008_000002":
            objects = [("cat", 8, _box(0, 10, 0, 10), [("head", _box(0, 5, 0, 5))])]
        else:
            objects = [("person", 15, _box(0, 10, 0, 10), [])]
        _part_mat(d / "human_parts" / f"{sid}.mat", objects)
    return d


# NYUD: stored values → decoded values
NYUD_SEG = (0, 1, 40)  # → 255, 0, 39
NYUD_DEPTH = (0.0, 2.5)
NYUD_NORMALS_V = (0, 255, 128)


def build_nyud(root: Path, variant: str = "atrc", size: tuple[int, int] = (NH, NW),
               rng: np.random.Generator | None = None) -> Path:
    """``<root>/NYUDv2`` (``variant="atrc"``) or ``<root>/NYUD_MT`` (``"mtl"``: jpg, npy, 480×640).

    Full-size variants get one image per split, of a constant colour, to stay small.
    """
    rng = rng or np.random.default_rng(0)
    mtl = variant == "mtl"
    h, w = (480, 640) if mtl else size
    small = h * w <= 4096
    d = root / ("NYUD_MT" if mtl else "NYUDv2")
    splits = NYUD_SPLITS if small else {k: v[:1] for k, v in NYUD_SPLITS.items()}
    _splits(d / "gt_sets", splits)
    for sid in [i for ids in splits.values() for i in ids]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if small else np.full((h, w, 3), 90, np.uint8)
        (_jpg if mtl else _png)(d / "images" / f"{sid}.{'jpg' if mtl else 'png'}", img)
        seg = np.zeros((h, w), np.uint8)
        seg[:, w // 3:] = NYUD_SEG[1]
        seg[:, 2 * w // 3:] = NYUD_SEG[2]
        _png(d / "segmentation" / f"{sid}.png", seg)
        depth = np.full((h, w), NYUD_DEPTH[1], np.float32)
        depth[0] = NYUD_DEPTH[0]
        (d / "depth").mkdir(exist_ok=True)
        np.save(d / "depth" / f"{sid}.npy", depth)
        edge = np.zeros((h, w), np.uint8)
        edge[:, w // 2] = 255
        normals = np.broadcast_to(np.array(NYUD_NORMALS_V, np.uint8), (h, w, 3)).copy()
        if mtl:
            (d / "normals").mkdir(exist_ok=True)
            (d / "edge").mkdir(exist_ok=True)
            np.save(d / "normals" / f"{sid}.npy", 2 * normals.astype(np.float32) / 255 - 1)
            np.save(d / "edge" / f"{sid}.npy", edge.astype(np.float32) / 255)
        else:
            _png(d / "normals" / f"{sid}.png", normals)
            _png(d / "edge" / f"{sid}.png", edge)
    return d


def make_tar(folder: Path, out: Path, mode: str = "w:gz") -> Path:
    """Pack ``folder`` as ``<folder.name>/...`` (how ``PASCALContext.tar.gz`` is laid out)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, mode) as tf:
        tf.add(folder, arcname=folder.name)
    return out


def evil_tar(out: Path, kind: str) -> tuple[Path, str]:
    """A tar.gz holding one harmless file and one unsafe member; returns (path, unsafe member name)."""
    names = {"dotdot": "PASCALContext/../../escaped.txt", "absolute": "/tmp/densemoe-escaped.txt",
             "symlink": "PASCALContext/link", "hardlink": "PASCALContext/hard", "device": "PASCALContext/dev"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tf:
        ok = tarfile.TarInfo("PASCALContext/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        bad = tarfile.TarInfo(names[kind])
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "../../outside"
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "../outside"
        elif kind == "device":
            bad.type, bad.devmajor, bad.devminor = tarfile.CHRTYPE, 1, 3
        else:
            bad.size = 4
        tf.addfile(bad, io.BytesIO(b"evil") if bad.size else None)
    return out, names[kind]
