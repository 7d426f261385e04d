"""Shared fixture of the trainer tests: a tiny SynthScenes copy (32×32)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from train_helpers import SIZE

from densemoe.data.synthetic import SYNTH_PRESETS, write_synth_dataset


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    for name in ("synth-pascal", "synth-nyud"):
        cfg = replace(SYNTH_PRESETS[name], height=SIZE, width=SIZE)
        write_synth_dataset(root / "smoke", name, cfg, {"train": 16, "val": 8, "test": 4}, seed=0,
                            progress=False)
    return root
