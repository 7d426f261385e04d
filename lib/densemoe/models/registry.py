"""Model registry, after timm's (``timm/models/_registry.py``, ``_factory.py``).

``@register_model`` files a function under its own name; ``create_model(name, **kwargs)`` calls it, with
the caller's keywords overriding the preset's and ``None`` values dropped (so callers can pass optional
settings blindly). Renamed presets keep an alias that warns (``FutureWarning``).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable

from torch import nn

from densemoe.errors import unknown

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under ``fn.__name__`` (warns if the name is taken)."""
    name = fn.__name__
    if name in _MODELS:
        warnings.warn(f"model '{name}' registered twice; the later one wins", stacklevel=2)
    _MODELS[name] = fn
    return fn


def register_alias(old: str, new: str) -> None:
    """Keep ``old`` working as ``new``, with a ``FutureWarning`` when used."""
    _ALIASES[old] = new


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell wildcard, sorted (aliases excluded)."""
    _ensure_presets()
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def is_model(name: str) -> bool:
    _ensure_presets()
    return name in _MODELS or name in _ALIASES


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; keyword arguments override the preset (``None`` = not given)."""
    _ensure_presets()
    if name in _ALIASES:
        warnings.warn(f"model '{name}' was renamed '{_ALIASES[name]}'", FutureWarning, stacklevel=2)
        name = _ALIASES[name]
    if name not in _MODELS:
        raise unknown("model", name, _MODELS)
    model = _MODELS[name](**{k: v for k, v in kwargs.items() if v is not None})
    model.preset = name
    return model


def _ensure_presets() -> None:
    from densemoe.models import presets  # noqa: F401  (registers on import)
