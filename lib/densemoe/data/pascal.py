"""PASCAL-Context MT, as prepared by ATRC (``PASCALContext.tar.gz``): layout and label decoding.

Five tasks on the 4,998 / 5,105 train/val images of PASCAL-Context (``specs/mlore.md`` §3.2):

- ``semseg``: ``semseg/VOC12/<id>.png``, falling back to ``semseg/pascal-context/<id>.png``;
  21 classes (VOC 20 + background), 255 = ignore.
- ``human_parts``: ``human_parts/<id>.mat``, a PASCAL-Part ``anno`` struct. The parts of every
  person (VOC class 15) are merged into 6 parts + background; an image with no person part is all
  255 (the official ``AddIgnoreRegions`` turns an all-background map into ignore).
- ``sal``: ``sal_distill/<id>.png``, ``v/255 > 0.5``.
- ``normals``: ``normals_distill/<id>.png``, ``2v/255 − 1``, kept only on pixels whose
  PASCAL-Context class (``LabelMap``) is one NYUD also labels; every other pixel is 0 (invalid).
- ``edge``: from ``pascal-context/trainval/<id>.mat`` ``LabelMap``: Laplacian ≠ 0, then thinned.
  The same ``LabelMap`` is the ground truth of the boundary evaluation (:func:`label_map`).

The decoding follows the official loader, ``YuqiYang213/MLoRE`` ``data/pascal_context.py`` (from
MTI-Net, ``SimonVandenhende/Multi-Task-Learning-PyTorch`` ``data/pascal_context.py``). Unlike it,
we keep no per-split object-category cache in the dataset folder: each ``.mat`` is read on demand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from scipy import ndimage
from skimage.morphology import thin

from densemoe.data import io
from densemoe.data.dataset import Layout
from densemoe.errors import DataError

#: Where the archive is published (MLoRE README; ``specs/mlore.md`` §3.1).
SOURCE_URL = (
    "https://hkustconnect-my.sharepoint.com/:u:/g/personal/hyeae_connect_ust_hk/"
    "ER57KyZdEdxPtgMCai7ioV0BXCmAhYzwFftCwkTiMmuM7w?e=2Ex4ab"
)

#: ``VOC_CATEGORY_NAMES`` of MLoRE ``data/pascal_context.py``: the 21 semseg classes.
SEMSEG_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

#: The PASCAL-Part object class whose parts are the ``human_parts`` task (``human_parts_category``).
PERSON_CLASS = 15

#: The 7 ``human_parts`` classes (background + 6 parts).
PART_CLASSES = ("background", "head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg")

#: PASCAL-Part person part names → merged part id: ``HUMAN_PART[6]`` of MLoRE
#: ``data/pascal_context.py`` (identical in MTL-PyTorch ``data/pascal_context.py``), grouped by id.
_PART_GROUPS = {
    1: ("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose"),
    2: ("neck", "torso"),
    3: ("luarm", "ruarm"),
    4: ("llarm", "rlarm", "lhand", "rhand"),
    5: ("luleg", "ruleg"),
    6: ("llleg", "rlleg", "lfoot", "rfoot"),
}
PERSON_PARTS: dict[str, int] = {name: pid for pid, names in _PART_GROUPS.items() for name in names}

#: PASCAL-Context ``LabelMap`` ids (459-class labels) on which the distilled normals are kept: every
#: key of MLoRE ``data/db_info/nyu_classes.json`` that is also a key of ``context_classes.json``,
#: except "unknown", mapped through ``context_classes.json``, plus ``tvmonitor`` (427), as
#: ``normals_valid_classes`` in ``data/pascal_context.py``. 170 ids (MLoRE HEAD 5817007).
NORMALS_VALID_CLASSES = np.array([
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50, 51,
    53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104, 105, 107,
    111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172, 174, 181, 183,
    184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228, 230, 232, 233, 238, 239,
    242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287,
    288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345,
    349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405, 407, 408,
    411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457,
])

IMAGE = "JPEGImages/{id}.jpg"
LABEL_MAP = "pascal-context/trainval/{id}.mat"
HUMAN_PARTS = "human_parts/{id}.mat"
SEMSEG = ("semseg/VOC12/{id}.png", "semseg/pascal-context/{id}.png")


def _loadmat(path: Path) -> dict:
    try:
        return scipy.io.loadmat(str(path))
    except (OSError, ValueError, TypeError, NotImplementedError, scipy.io.matlab.MatReadError) as exc:
        raise DataError(f"cannot read .mat file {path} ({exc}); the file is corrupt, re-fetch it") from exc


def label_map(folder: Path, sample_id: str) -> np.ndarray:
    """The PASCAL-Context ``LabelMap`` (459-class ids, int32, ``(H, W)``) of a sample.

    It is the source of the ``edge`` targets and the boundary-evaluation ground truth.
    """
    path = io.sample_path(Path(folder), LABEL_MAP, sample_id)
    mat = _loadmat(path)
    if "LabelMap" not in mat:
        raise DataError(f"{path} has no 'LabelMap' variable; it is not a PASCAL-Context label file")
    return np.asarray(mat["LabelMap"]).astype(np.int32)


def edges_from_label_map(labels: np.ndarray) -> np.ndarray:
    """Boundaries of a label map, as the official ``_load_edge``: ``thin(|Laplacian| > 0)``, float {0, 1}.

    ``cv2.Laplacian`` with its default 3×3 aperture (ksize=1) and ``BORDER_REFLECT_101`` border is the
    4-neighbour kernel below with scipy's ``mirror`` mode.
    """
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
    lap = ndimage.convolve(labels.astype(np.float64), kernel, mode="mirror")
    return thin(np.abs(lap) > 0).astype(np.float32)


def _image_shape(folder: Path, sample_id: str) -> tuple[int, int]:
    path = io.sample_path(folder, IMAGE, sample_id)
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as exc:
        raise DataError(f"cannot read image {path} ({exc}); the file is corrupt, re-fetch it") from exc


def _field(record: np.void, index: int) -> np.ndarray:
    return np.asarray(record[index])


def parse_human_parts(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Merge the person parts of a PASCAL-Part ``.mat`` into a 7-class map (float32, 255 = ignore).

    The struct is read by position, as the official loader does: ``anno = (imname, objects)``,
    ``object = (class, class_ind, mask, parts)``, ``part = (part_name, mask)``. Persons count when
    their mask is non-empty (``area_thres=0``); later parts overwrite earlier ones; a map without any
    part pixel is all 255. ``shape`` is used when the image has no person at all.
    """
    mat = _loadmat(path)
    try:
        objects = np.asarray(mat["anno"][0][0][1]).ravel()
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DataError(f"{path} has no PASCAL-Part 'anno.objects' struct ({exc}); not a parts file") from exc
    persons = [o for o in objects if int(_field(o, 1).ravel()[0]) == PERSON_CLASS]
    target = None
    if any(_field(o, 2).sum() > 0 for o in persons):
        for obj in persons:
            parts = _field(obj, 3).ravel()
            if parts.size == 0:
                continue
            if target is None:
                target = np.zeros(_field(obj, 2).shape, dtype=np.float32)
            for part in parts:
                name = str(_field(part, 0).ravel()[0])
                if name not in PERSON_PARTS:
                    valid = ", ".join(sorted(PERSON_PARTS))
                    raise DataError(f"unknown person part '{name}' in {path}; expected one of {valid}")
                target[_field(part, 1).astype(bool)] = PERSON_PARTS[name]
    if target is None or not target.any():
        return np.full(target.shape if target is not None else shape, 255, dtype=np.float32)
    return target


def _human_parts(folder: Path, sample_id: str) -> np.ndarray:
    path = io.sample_path(folder, HUMAN_PARTS, sample_id)  # a missing .mat is an error, as officially
    return parse_human_parts(path, _image_shape(folder, sample_id))


def _semseg(folder: Path, sample_id: str) -> np.ndarray:
    for pattern in SEMSEG:
        path = folder / pattern.format(id=sample_id)
        if path.is_file():
            return io.load_png(path).astype(np.float32)
    tried = " or ".join(str(folder / p.format(id=sample_id)) for p in SEMSEG)
    raise DataError(
        f"missing file {tried} for sample '{sample_id}'; the dataset at {folder} is incomplete "
        "(re-run `densemoe data fetch pascal-context`)"
    )


def _normals(folder: Path, sample_id: str) -> np.ndarray:
    normals = io.normals_png("normals_distill/{id}.png")(folder, sample_id)
    labels = label_map(folder, sample_id)
    if labels.shape != normals.shape[:2]:
        raise DataError(
            f"LabelMap of '{sample_id}' is {labels.shape} but its normals are {normals.shape[:2]}; "
            f"the dataset at {folder} is corrupt"
        )
    normals[~np.isin(labels, NORMALS_VALID_CLASSES)] = 0.0
    return normals


def _edge(folder: Path, sample_id: str) -> np.ndarray:
    return edges_from_label_map(label_map(folder, sample_id))


PASCAL_LAYOUT = Layout(
    name="pascal-context",
    folder="PASCALContext",
    image=io.rgb_image(IMAGE),
    targets={
        "semseg": _semseg,
        "human_parts": _human_parts,
        "sal": io.binary_png("sal_distill/{id}.png"),
        "normals": _normals,
        "edge": _edge,
    },
    splits="ImageSets/Context/{split}.txt",
    split_alias={"test": "val"},
    required=(
        "JPEGImages", "ImageSets/Context", "semseg", "human_parts", "sal_distill", "normals_distill",
        "pascal-context/trainval",
    ),
)
