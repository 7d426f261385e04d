"""File readers shared by every dataset layout (SynthScenes, PASCAL-Context MT, NYUD-v2 MT).

A reader takes the dataset folder and a sample id and returns a float32 numpy map: ``(H, W)`` for
label maps, ``(H, W, 3)`` for images and normals. A missing file is a :class:`DataError` naming it.
Encodings follow the ATRC-prepared archives (``specs/mlore.md`` §3): normals PNG ``n = 2·v/255 − 1``,
binary PNGs ``/255``, depth ``.npy`` in metres.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from densemoe.errors import DataError

Reader = Callable[[Path, str], np.ndarray]


def sample_path(root: Path, pattern: str, sample_id: str) -> Path:
    """``root / pattern.format(id=sample_id)``, or a one-line error if that file does not exist."""
    path = root / pattern.format(id=sample_id)
    if not path.is_file():
        raise DataError(
            f"missing file {path} for sample '{sample_id}'; the dataset at {root} is incomplete "
            "(re-run `densemoe data fetch` or regenerate it)"
        )
    return path


def load_png(path: Path) -> np.ndarray:
    """A PNG/JPEG as a numpy array, with a clear error for an unreadable file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); the file is corrupt, re-fetch the dataset") from exc


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read array {path} ({exc}); the file is corrupt, re-fetch the dataset") from exc


def rgb_image(pattern: str) -> Reader:
    """An RGB image as float32 ``(H, W, 3)`` in [0, 255]."""

    def read(root: Path, sample_id: str) -> np.ndarray:
        img = load_png(sample_path(root, pattern, sample_id))
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        return img[..., :3].astype(np.float32)

    return read


def label_png(pattern: str, offset: int = 0, void: int | None = None) -> Reader:
    """A class-index PNG; ``void`` (before ``offset`` is added) becomes 255 (ignore).

    NYUD-v2 stores ``label + 1`` with 0 = void: ``label_png(..., offset=-1, void=0)``.
    """

    def read(root: Path, sample_id: str) -> np.ndarray:
        raw = load_png(sample_path(root, pattern, sample_id)).astype(np.float32)
        out = raw + offset
        if void is not None:
            out[raw == void] = 255
        return out

    return read


def binary_png(pattern: str) -> Reader:
    """A 0/255 (or soft) map: ``v / 255 > 0.5`` as {0, 1}; used for edges and saliency."""

    def read(root: Path, sample_id: str) -> np.ndarray:
        raw = load_png(sample_path(root, pattern, sample_id)).astype(np.float32)
        if raw.ndim == 3:
            raw = raw[..., 0]
        return (raw / 255.0 > 0.5).astype(np.float32)

    return read


def decode_normals(v: np.ndarray) -> np.ndarray:
    """uint8 RGB → camera-frame normals, ``n = 2·v/255 − 1`` (the ATRC encoding)."""
    return (2.0 * v[..., :3].astype(np.float32) / 255.0 - 1.0).astype(np.float32)


def normals_png(pattern: str) -> Reader:
    def read(root: Path, sample_id: str) -> np.ndarray:
        return decode_normals(load_png(sample_path(root, pattern, sample_id)))

    return read


def normals_npy(pattern: str) -> Reader:
    def read(root: Path, sample_id: str) -> np.ndarray:
        return load_npy(sample_path(root, pattern, sample_id)).astype(np.float32)

    return read


def depth_npy(pattern: str) -> Reader:
    """Depth in metres, ``(H, W)``; 0 marks an invalid pixel."""

    def read(root: Path, sample_id: str) -> np.ndarray:
        d = load_npy(sample_path(root, pattern, sample_id)).astype(np.float32)
        return d.reshape(d.shape[-2:]) if d.ndim == 3 else d

    return read
