"""Checkpoints: weights-only, atomic, rebuilt from preset + args and loaded strictly; RNG round trip."""

import random

import numpy as np
import pytest
import torch
from train_helpers import TINY_MLORE

from densemoe.errors import ConfigError, DataError
from densemoe.models import create_model
from densemoe.train.checkpoint import build_model, load_checkpoint, rng_state, save_checkpoint, set_rng_state


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("mlore_tiny_synth", img_size=(32, 32), **TINY_MLORE).eval()


def test_round_trip_rebuilds_the_same_model(model, tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", model, iteration=7, meta={"experiment": "x"})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["preset"] == "mlore_tiny_synth" and raw["iteration"] == 7
    rebuilt = build_model(path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), rebuilt(x)
    assert all(torch.equal(a[t], b[t]) for t in a)


def test_mismatched_weights_are_a_one_line_error_listing_keys(model, tmp_path):
    save_checkpoint(tmp_path / "ckpt.pt", model)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    ckpt["model"]["extra.weight"] = torch.zeros(1)
    dropped = sorted(ckpt["model"])[0]
    del ckpt["model"][dropped]
    match = rf"missing keys \['{dropped}'\], unexpected keys \['extra.weight'\]"
    with pytest.raises(ConfigError, match=match):
        build_model(ckpt)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(DataError, match="does not exist; train first"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(DataError, match="is not a densemoe checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
