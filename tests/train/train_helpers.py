"""Helpers of the trainer tests (a module of its own name: ``conftest`` is ambiguous across test folders)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from densemoe.config import Params, from_dict

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32
#: Overrides that shrink any MLoRE-family preset (as tests/models/model_helpers.py): 2×2 tokens, C = 16.
TINY = dict(backbone_args=dict(depth=4, embed_dim=32, num_heads=2), channels=16)
TINY_MLORE = dict(TINY, ranks=[2, 3, 4, 5, 6, 8], top_k=4, task_rank=4)
#: A recipe of a few iterations (eval/checkpoint cadence set per test).
TRAIN = dict(device="cpu", iterations=6, batch_size=4, val_batch_size=8, workers=0, lr=1.0e-3,
             eval_every=0, checkpoint_every=0, log_every=2, edge_workers=1, eval_split="val")


def params_dict(synth_root: Path, experiments: dict | None = None, **train) -> dict:
    """The repository's params.yaml, shrunk: data under ``synth_root/smoke``, 32×32, tiny experiments."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["data"]["root"] = str(synth_root)
    for spec in data["data"]["synth"].values():
        spec.update(height=SIZE, width=SIZE)
    data["profiles"]["smoke"]["train"].update({**TRAIN, **train})
    data["experiments"] = experiments or {
        "tiny_pascal": {"model": "mlore_tiny_synth", "dataset": "synth-pascal", "model_args": TINY_MLORE},
        "tiny_nyud": {"model": "mlore_tiny_synth", "dataset": "synth-nyud", "model_args": TINY_MLORE},
    }
    data.pop("tables", None)  # the repository's tables, pipeline and reports name experiments replaced above
    data.pop("pipeline", None)
    for profile in data["profiles"].values():
        profile.pop("reports", None)
    return copy.deepcopy(data)


def make_params(synth_root: Path, experiments: dict | None = None, **train) -> Params:
    return from_dict(Params, params_dict(synth_root, experiments, **train))


def write_params(path: Path, synth_root: Path, experiments: dict | None = None, **train) -> Path:
    path.write_text(yaml.safe_dump(params_dict(synth_root, experiments, **train)))
    return path
