"""Checkpoints that rebuild their model (nanoGPT's ``model_args``; STYLE §4.5) and load strictly.

A checkpoint is one ``torch.save`` dict of plain data, so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``:

``format`` (1), ``preset`` (registry name) and ``model_args`` (constructor keywords, from the model's own
``model_args``), ``model`` (state dict without any DDP ``module.`` prefix), ``optimizer``, ``scheduler``,
``scaler``, ``rng`` (python, numpy and torch CPU/CUDA states), ``iteration`` (completed iterations) and
``meta`` (experiment name, resolved config). :func:`build_model` rebuilds the model with
``create_model(preset, **model_args)`` and loads the weights strictly: a missing or unexpected key is a
one-line error that lists them. Writes are atomic (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from densemoe.atomic import atomic_write
from densemoe.errors import ConfigError, DataError, DensemoeError

FORMAT = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP (or ``torch.compile``) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def rng_state() -> dict[str, Any]:
    """Every RNG the training touches, as weights-only-loadable data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002  (the global one)
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (CUDA states only where this machine has as many devices)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def model_spec(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(preset, constructor args) of a model built by ``create_model``."""
    model = unwrap(model)
    preset = getattr(model, "preset", None)
    args = getattr(model, "model_args", None)
    if preset is None or args is None:
        raise ConfigError(
            f"{type(model).__name__} has no 'preset'/'model_args'; build it with densemoe.models.create_model"
        )
    return preset, dict(args)


class NonFiniteStateError(DensemoeError, ValueError):
    """A checkpoint would hold NaN/inf weights or optimizer state."""


def first_non_finite(model: nn.Module, optimizer=None) -> str | None:
    """The first floating-point model weight/buffer or optimizer state holding NaN/inf, named; or None."""
    for name, t in unwrap(model).state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"the model weight '{name}'"
    if optimizer is not None:
        names = {id(p): n for n, p in unwrap(model).named_parameters()}
        for p, state in optimizer.state.items():
            for key, t in state.items():
                if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return f"the optimizer state '{key}' of '{names.get(id(p), '?')}'"
    return None


def save_checkpoint(path: str | Path, model: nn.Module, *, optimizer=None, scheduler=None, scaler=None,
                    iteration: int = 0, meta: dict[str, Any] | None = None,
                    check_finite: bool = True) -> Path:
    """Write a checkpoint atomically (module docstring); returns its path.

    A checkpoint never holds non-finite weights or optimizer state: ``check_finite`` (the default) raises
    :class:`NonFiniteStateError` instead of writing one; pass False only after checking it yourself.
    """
    if check_finite and (bad := first_non_finite(model, optimizer)) is not None:
        raise NonFiniteStateError(f"{bad} is NaN/inf; not writing the checkpoint {path} (the file already "
                                  "there, if any, is kept)")
    preset, args = model_spec(model)
    state = {
        "format": FORMAT,
        "preset": preset,
        "model_args": args,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "iteration": int(iteration),
        "meta": meta or {},
    }
    return atomic_write(path, lambda f: torch.save(state, f), fsync=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; one-line errors for a missing or foreign file."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"checkpoint {path} is a folder, not a checkpoint file; name the .pt file inside it")
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist; train first (densemoe train --experiment NAME)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, foreign or pickled-object files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read checkpoint {path}: {first}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "preset" not in ckpt:
        raise DataError(f"{path} is not a densemoe checkpoint (format {FORMAT} with preset and model_args)")
    return ckpt


def build_model(ckpt: dict[str, Any] | str | Path, map_location: str | torch.device = "cpu",
                **overrides) -> nn.Module:
    """Rebuild the checkpoint's model from its preset and args, and load its weights strictly."""
    from densemoe.models import create_model

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt, map_location)
    model = create_model(ckpt["preset"], **{**ckpt["model_args"], **overrides})
    load_weights(model, ckpt["model"])
    return model


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict ``load_state_dict`` whose mismatch is one line listing the keys (for any model class)."""
    from densemoe.models.strict import key_mismatch

    model = unwrap(model)
    if (error := key_mismatch(model.state_dict(), state)) is not None:
        raise error
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise ConfigError(f"checkpoint does not match the model: {'; '.join(lines[:5]) or exc}") from exc
