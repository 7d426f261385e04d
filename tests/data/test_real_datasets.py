"""PASCAL-Context MT and NYUD-v2 MT: fetched from 127.0.0.1 and decoded through MultiTaskDataset.

The fixtures (``fixtures.py``) plant known values in the exact official layouts; these tests check
that they come out as the official loaders would produce them (void → 255, ``label − 1``, normals
``2v/255 − 1`` masked outside the NYU∩Context classes, person parts merged, edges from ``LabelMap``).
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from fixtures import (
    NH,
    NORMALS_V,
    NW,
    NYUD_NORMALS_V,
    PLANE_CTX,
    H,
    W,
    build_nyud,
    build_pascal,
    expected_parts,
    pascal_label_map,
)

from densemoe.data import pascal
from densemoe.data.dataset import MultiTaskDataset
from densemoe.data.download import ArchiveSpec, fetch
from densemoe.errors import DataError

PASCAL_TASKS = ["semseg", "human_parts", "sal", "normals", "edge"]
NYUD_TASKS = ["semseg", "depth", "normals", "edge"]


def decoded(v: tuple[int, int, int]) -> torch.Tensor:
    return 2 * torch.tensor(v, dtype=torch.float32) / 255 - 1


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pascal")
    build_pascal(root)
    return root


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyud")
    build_nyud(root)
    return root


# ---------------------------------------------------------------------------------- PASCAL


def check_pascal_train(ds: MultiTaskDataset) -> None:
    s = ds[0]
    assert s["meta"] == {"name": "2008_000001", "size": (H, W), "dataset": "pascal-context"}
    assert s["image"].shape == (3, H, W)
    seg = s["semseg"][0]
    assert (seg[0] == 255).all() and (seg[1:-1, :16] == 15).all() and (seg[1:-1, 16:] == 0).all()
    assert (seg[-1] == 1).all()  # read from semseg/VOC12
    assert torch.equal(s["human_parts"][0], torch.from_numpy(expected_parts()))
    assert torch.equal(s["sal"][0, 0], torch.tensor([0.0] * 16 + [1.0] * 16))
    n = s["normals"]
    valid = torch.zeros(H, W, dtype=torch.bool)
    valid[:, :16] = True  # person (284)
    valid[:6, 16:] = True  # tvmonitor (427), added by hand in the official list
    assert torch.allclose(n[:, valid].T, decoded(NORMALS_V).expand(int(valid.sum()), 3))
    assert (n[:, ~valid] == 0).all()  # aeroplane (2) is not an NYU class
    edge = s["edge"][0]
    assert torch.equal(edge, torch.from_numpy(pascal.edges_from_label_map(pascal_label_map("2008_000001"))))
    assert set(edge.unique().tolist()) == {0.0, 1.0}
    cols = edge[8:-8].nonzero()[:, 1]  # the person | aeroplane boundary, thinned to one pixel per row
    assert len(cols) == H - 16 and set(cols.tolist()) <= {15, 16}


def test_pascal_fetch_end_to_end(server, tmp_path, pascal_archive):
    url = server.add("/PASCALContext.tar.gz", pascal_archive)
    spec = ArchiveSpec("pascal-context", url, "PASCALContext.tar.gz", hashlib.md5(pascal_archive).hexdigest(),
                       len(pascal_archive))
    root = tmp_path / "data"
    fetch(spec, root, progress=False)
    check_pascal_train(MultiTaskDataset(root, "pascal-context", "train", PASCAL_TASKS))
    test = MultiTaskDataset(root, "pascal-context", "test", PASCAL_TASKS)
    assert test.ids == ["2008_000002", "2008_000003"]  # "test" is the val split


def test_pascal_values(pascal_root):
    check_pascal_train(MultiTaskDataset(pascal_root, "pascal-context", "train", PASCAL_TASKS))


def test_pascal_val_fallbacks_and_no_person(pascal_root):
    ds = MultiTaskDataset(pascal_root, "pascal-context", "test", PASCAL_TASKS)
    cat_only, person_without_parts = ds[0], ds[1]
    assert (cat_only["semseg"][0, -1] == 2).all()  # read from semseg/pascal-context
    assert (cat_only["human_parts"] == 255).all() and cat_only["human_parts"].shape == (1, H, W)
    assert (person_without_parts["human_parts"] == 255).all()
    n = cat_only["normals"]
    plane = torch.from_numpy(pascal_label_map("2008_000002") == PLANE_CTX)
    assert (n[:, plane] == 0).all() and (n[:, ~plane] != 0).all()  # wall (440) keeps its normals


def test_pascal_label_map_helper(pascal_root):
    lab = pascal.label_map(pascal_root / "PASCALContext", "2008_000002")
    assert lab.dtype == np.int32 and np.array_equal(lab, pascal_label_map("2008_000002"))


def test_edges_match_official_recipe():
    """Pinned output of ``thin(|cv2.Laplacian(LabelMap, cv2.CV_64F)| > 0)`` (OpenCV 5.0, skimage 0.26)."""
    lab = np.full((7, 8), 440, np.uint16)
    lab[2:5, 3:7] = 2
    lab[:, 0] = 284
    expected = np.array([
        [0, 0, 0, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 1, 1, 1, 0, 0],
        [0, 0, 1, 0, 0, 0, 1, 0],
        [0, 1, 0, 1, 0, 0, 1, 0],
        [1, 0, 0, 0, 1, 1, 0, 0],
        [1, 0, 0, 0, 0, 0, 0, 0],
    ], dtype=np.float32)
    assert np.array_equal(pascal.edges_from_label_map(lab), expected)


def test_normals_valid_classes_transcription():
    ids = pascal.NORMALS_VALID_CLASSES
    assert len(ids) == len(set(ids.tolist())) == 170
    assert {284, 427, 440, 158, 68} <= set(ids.tolist())  # person, tv, wall, floor, ceiling
    assert PLANE_CTX not in ids


def test_pascal_missing_parts_mat(tmp_path):
    folder = build_pascal(tmp_path)
    (folder / "human_parts" / "2008_000001.mat").unlink()
    ds = MultiTaskDataset(tmp_path, "pascal-context", "train", ["human_parts"])
    with pytest.raises(DataError, match=r"missing file .*human_parts/2008_000001\.mat for sample '2008_"):
        ds[0]


def test_pascal_missing_semseg_names_both_paths(tmp_path):
    folder = build_pascal(tmp_path)
    (folder / "semseg" / "VOC12" / "2008_000001.png").unlink()
    ds = MultiTaskDataset(tmp_path, "pascal-context", "train", ["semseg", "sal"])
    with pytest.raises(DataError, match=r"VOC12/2008_000001.png or .*pascal-context/2008_000001.png"):
        ds[0]


def test_pascal_corrupt_mat(tmp_path):
    folder = build_pascal(tmp_path)
    (folder / "pascal-context" / "trainval" / "2008_000001.mat").write_bytes(b"not a mat file")
    ds = MultiTaskDataset(tmp_path, "pascal-context", "train", ["edge"])
    with pytest.raises(DataError, match=r"cannot read .mat file .*2008_000001.mat"):
        ds[0]


# ------------------------------------------------------------------------------------ NYUD


def check_nyud(ds: MultiTaskDataset, name: str) -> None:
    s = ds[0]
    assert s["meta"] == {"name": name, "size": (NH, NW), "dataset": "nyud-v2"}
    seg = s["semseg"][0]
    assert (seg[:, : NW // 3] == 255).all()  # 0 = void
    assert (seg[:, NW // 3 : 2 * NW // 3] == 0).all()  # 1 → class 0
    assert (seg[:, 2 * NW // 3 :] == 39).all()  # 40 → class 39
    assert (s["depth"][0, 0] == 0).all() and (s["depth"][0, 1:] == 2.5).all()
    assert torch.allclose(s["normals"].permute(1, 2, 0), decoded(NYUD_NORMALS_V).expand(NH, NW, 3))
    edge = torch.zeros(NH, NW)
    edge[:, NW // 2] = 1
    assert torch.equal(s["edge"][0], edge)


def test_nyud_fetch_end_to_end(server, tmp_path, nyud_archive):
    url = server.add("/NYUDv2.tar.gz", nyud_archive)
    root = tmp_path / "data"
    spec = ArchiveSpec("nyud-v2", url, "NYUDv2.tar.gz", hashlib.md5(nyud_archive).hexdigest())
    fetch(spec, root, progress=False)
    check_nyud(MultiTaskDataset(root, "nyud-v2", "train", NYUD_TASKS), "img_0001")
    check_nyud(MultiTaskDataset(root, "nyud-v2", "test", NYUD_TASKS), "img_0003")


def test_nyud_values(nyud_root):
    ds = MultiTaskDataset(nyud_root, "nyud-v2", "train", NYUD_TASKS)
    assert ds.ids == ["img_0001", "img_0002"]
    check_nyud(ds, "img_0001")


def test_nyud_mtl_pytorch_variant_refused(tmp_path):
    build_nyud(tmp_path, "mtl").rename(tmp_path / "NYUDv2")
    with pytest.raises(DataError) as exc:
        MultiTaskDataset(tmp_path, "nyud-v2", "train", NYUD_TASKS)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tmp_path / 'NYUDv2'} holds the MTL-PyTorch NYUD_MT copy of NYUD-v2 "
                          "(found images/*.jpg, normals/*.npy, edge/*.npy, 480×640 images)")
    assert "ATRC NYUDv2" in msg and "448×576" in msg and "densemoe data fetch nyud-v2" in msg


def test_nyud_larger_than_atrc_refused(tmp_path):
    build_nyud(tmp_path, size=(480, 640))
    with pytest.raises(DataError, match=r"holds 480×640 images \(e.g. img_000\d.png\), larger than 448×576"):
        MultiTaskDataset(tmp_path, "nyud-v2", "train", NYUD_TASKS)


def test_nyud_atrc_size_accepted(tmp_path):
    build_nyud(tmp_path, size=(448, 576))
    ds = MultiTaskDataset(tmp_path, "nyud-v2", "test", ["semseg", "edge"])
    assert ds[0]["meta"]["size"] == (448, 576)


# ------------------------------------------------------------------------------ bad inputs


def test_missing_dataset_dir(tmp_path):
    with pytest.raises(DataError) as exc:
        MultiTaskDataset(tmp_path, "nyud-v2", "train", NYUD_TASKS)
    assert str(exc.value).startswith(f"dataset folder {tmp_path / 'NYUDv2'} does not exist; run `densemoe")


def test_missing_split_file(tmp_path):
    build_pascal(tmp_path)
    (tmp_path / "PASCALContext" / "ImageSets" / "Context" / "val.txt").unlink()
    with pytest.raises(DataError, match=r"missing split file .*ImageSets/Context/val.txt for split 'test'"):
        MultiTaskDataset(tmp_path, "pascal-context", "test", PASCAL_TASKS)


def test_image_without_label(tmp_path):
    folder = build_nyud(tmp_path)
    (folder / "segmentation" / "img_0001.png").unlink()
    ds = MultiTaskDataset(tmp_path, "nyud-v2", "train", NYUD_TASKS)
    with pytest.raises(DataError) as exc:
        ds[0]
    missing = folder / "segmentation" / "img_0001.png"
    assert str(exc.value).startswith(f"missing file {missing} for sample 'img_0001'")
    assert len(ds.raw(1)) == 6  # the other sample is fine


def test_label_size_mismatch(tmp_path):
    folder = build_nyud(tmp_path)
    shutil.copy(folder / "depth" / "img_0001.npy", tmp_path / "keep.npy")
    np.save(folder / "depth" / "img_0001.npy", np.ones((NH + 1, NW), np.float32))
    with pytest.raises(DataError, match=r"depth label of 'img_0001' is \(13, 16\) but its image is \(12, 16"):
        MultiTaskDataset(tmp_path, "nyud-v2", "train", ["depth"])[0]
