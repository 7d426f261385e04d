"""The one Dataset class path, exercised on SynthScenes as written to disk."""

from dataclasses import replace

import pytest
import torch

from densemoe.data.dataset import MultiTaskDataset
from densemoe.data.synthetic import SYNTH_PRESETS, render_scene, write_synth_dataset
from densemoe.data.transforms import train_transforms
from densemoe.errors import ConfigError, DataError

TASKS = ("semseg", "human_parts", "sal", "normals", "edge", "depth")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    cfg = replace(SYNTH_PRESETS["synth-pascal"], height=32, width=40)
    write_synth_dataset(root, "synth-pascal", cfg, {"train": 3, "val": 2, "test": 2}, seed=7, progress=False)
    return root, cfg


def test_samples_follow_the_contract(synth_root):
    root, cfg = synth_root
    ds = MultiTaskDataset(root, "synth-pascal", "train", TASKS)
    assert len(ds) == 3
    s = ds.raw(0)
    assert s["image"].shape == (3, 32, 40) and s["normals"].shape == (3, 32, 40)
    assert s["depth"].shape == (1, 32, 40) and s["meta"]["size"] == (32, 40)
    exact = render_scene(__import__("numpy").random.SeedSequence([7, 0, 0]), cfg)
    assert torch.equal(s["semseg"][0].long(), torch.from_numpy(exact["semseg"]).long())
    assert torch.equal(s["depth"][0], torch.from_numpy(exact["depth"]))
    assert torch.allclose(s["normals"].permute(1, 2, 0), torch.from_numpy(exact["normals"]), atol=2 / 255)


def test_transformed_sample(synth_root):
    root, _ = synth_root
    ds = MultiTaskDataset(root, "synth-pascal", "train", TASKS, transform=train_transforms((24, 24)))
    s = ds[1]
    assert s["image"].shape == (3, 24, 24) and s["semseg"].dtype == torch.long and s["edge"].shape == (24, 24)


def test_missing_split_file(synth_root):
    root, _ = synth_root
    with pytest.raises(DataError, match=r"missing split file .*gt_sets/extra.txt for split 'extra'"):
        MultiTaskDataset(root, "synth-pascal", "extra", TASKS)


def test_image_without_its_label(synth_root, tmp_path):
    import shutil

    root, _ = synth_root
    shutil.copytree(root / "synth-pascal", tmp_path / "synth-pascal")
    sid = (tmp_path / "synth-pascal" / "gt_sets" / "val.txt").read_text().split()[0]
    (tmp_path / "synth-pascal" / "semseg" / f"{sid}.png").unlink()
    ds = MultiTaskDataset(tmp_path, "synth-pascal", "val", TASKS)
    with pytest.raises(DataError, match=rf"missing file .*semseg/{sid}.png for sample '{sid}'.*incomplete"):
        ds[0]


def test_unknown_task_and_dataset(synth_root):
    root, _ = synth_root
    with pytest.raises(ConfigError, match="unknown task 'normal' for dataset 'synth-pascal'; did you mean 'normals'"):
        MultiTaskDataset(root, "synth-pascal", "train", ["normal"])
    with pytest.raises(ConfigError, match="unknown dataset 'synth-coco'"):
        MultiTaskDataset(root, "synth-coco", "train", ["semseg"])


def test_missing_dataset_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist; run `densemoe data synth synth-nyud`"):
        MultiTaskDataset(tmp_path, "synth-nyud", "train", ["depth"])
