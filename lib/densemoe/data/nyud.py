"""NYUD-v2 MT, as prepared by ATRC (``NYUDv2.tar.gz``): layout, label decoding and variant check.

Four tasks on the 795 / 654 train/val(test) images (``specs/mlore.md`` §3.3), as decoded by
``YuqiYang213/MLoRE`` ``data/nyud.py`` ("changed for using ATRC data"):

- ``semseg``: ``segmentation/<id>.png`` holds ``label + 1`` with 0 = void → ``label − 1``, void → 255;
  40 classes.
- ``depth``: ``depth/<id>.npy``, metres; 0 = invalid.
- ``normals``: ``normals/<id>.png``, ``2v/255 − 1``.
- ``edge``: ``edge/<id>.png``, 0/255 (also the SEISM ground truth).

Two incompatible copies of NYUD-MT circulate (``specs/ecosystem.md`` §4.2): the ATRC one above,
pre-cropped to 448×576 with PNG images, normals and edges; and MTL-PyTorch's ``NYUD_MT``, 480×640
with JPEG images and ``.npy`` normals and edges. The MLoRE pipeline needs the first (it pads but
never crops, and its router expects exactly 28×36 tokens), so :func:`verify` refuses the second.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from densemoe.data import io
from densemoe.data.dataset import Layout
from densemoe.errors import DataError

#: Where the archive is published (MLoRE README; ``specs/mlore.md`` §3.1).
SOURCE_URL = (
    "https://hkustconnect-my.sharepoint.com/:u:/g/personal/hyeae_connect_ust_hk/"
    "EZ-2tWIDYSFKk7SCcHRimskBhgecungms4WFa_L-255GrQ?e=6jAt4c"
)

#: Height × width of the ATRC images; the official pipeline pads up to it and never crops.
ATRC_SIZE = (448, 576)

_EXPECTED = (
    "the ATRC NYUDv2 copy used by InvPT/TaskPrompter/MLoRE (448×576 images/*.png, normals/*.png, "
    f"edge/*.png); download NYUDv2.tar.gz from {SOURCE_URL} and run `densemoe data fetch nyud-v2`"
)


def _suffixes(folder: Path, limit: int = 64) -> set[str]:
    """File extensions among the first ``limit`` entries of ``folder`` (cheap on a 1,449-file dir)."""
    found: set[str] = set()
    if folder.is_dir():
        with os.scandir(folder) as it:
            for i, entry in enumerate(it):
                if i >= limit:
                    break
                if entry.is_file():
                    found.add(Path(entry.name).suffix.lower())
    return found


def _first_image(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_file() and Path(entry.name).suffix.lower() in (".png", ".jpg", ".jpeg"):
                return Path(entry.path)
    return None


def _size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as exc:
        raise DataError(f"cannot read image {path} ({exc}); the file is corrupt, re-fetch it") from exc


def verify(folder: Path) -> None:
    """Refuse the MTL-PyTorch ``NYUD_MT`` copy, or images larger than 448×576, with a one-line error."""
    folder = Path(folder)
    found = []
    for sub, foreign in (("images", {".jpg", ".jpeg"}), ("normals", {".npy"}), ("edge", {".npy"})):
        bad = sorted(_suffixes(folder / sub) & foreign)
        found += [f"{sub}/*{ext}" for ext in bad]
    first = _first_image(folder / "images")
    h, w = _size(first) if first is not None else (0, 0)
    if found:
        size = f", {h}×{w} images" if first is not None else ""
        raise DataError(
            f"{folder} holds the MTL-PyTorch NYUD_MT copy of NYUD-v2 (found {', '.join(found)}{size}); "
            f"densemoe needs {_EXPECTED}"
        )
    if h > ATRC_SIZE[0] or w > ATRC_SIZE[1]:
        raise DataError(
            f"{folder} holds {h}×{w} images (e.g. {first.name}), larger than 448×576, so it is not the "
            f"ATRC copy of NYUD-v2; densemoe needs {_EXPECTED}"
        )


NYUD_LAYOUT = Layout(
    name="nyud-v2",
    folder="NYUDv2",
    image=io.rgb_image("images/{id}.png"),
    targets={
        "semseg": io.label_png("segmentation/{id}.png", offset=-1, void=0),
        "depth": io.depth_npy("depth/{id}.npy"),
        "normals": io.normals_png("normals/{id}.png"),
        "edge": io.binary_png("edge/{id}.png"),
    },
    splits="gt_sets/{split}.txt",
    split_alias={"test": "val"},
    required=("images", "segmentation", "depth", "normals", "edge", "gt_sets"),
    verify=verify,
)
