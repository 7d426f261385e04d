"""``params.yaml`` → typed dataclasses.

Every knob of the pipeline lives in ``params.yaml`` (DESIGN §7). :func:`from_dict` builds a dataclass
tree from the parsed YAML and rejects, in one line each, an unknown key (naming it, its place and the
valid keys), a value of the wrong type (``lr: 1e-4`` is a *string* to PyYAML: write ``1.0e-4``), and an
unknown dataset or profile name.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from densemoe.errors import ConfigError, unknown

T = TypeVar("T")


@dataclass(frozen=True)
class SynthParams:
    """How many SynthScenes images of which size to generate (``data.synth.<name>``)."""

    height: int = 128
    width: int = 128
    train: int = 400
    val: int = 100
    test: int = 100
    workers: int = 2


@dataclass(frozen=True)
class ArchiveParams:
    """A real dataset archive (``data.archives.<name>``): where it is and how to verify it.

    ``md5``/``size`` are null until the first real download pins them (specs/ecosystem.md §4.1).
    """

    url: str
    archive: str
    md5: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class AugmentParams:
    """Training augmentation (specs/mlore.md §2, "from ATRC"); ``crop: null`` = the dataset's size."""

    scale_min: float = 0.5
    scale_max: float = 2.0
    crop: tuple[int, int] | None = None
    cat_max_ratio: float = 0.75
    flip: bool = True
    photometric: bool = True


@dataclass(frozen=True)
class DataParams:
    root: str = "data"
    synth: dict[str, SynthParams] = field(default_factory=dict)
    archives: dict[str, ArchiveParams] = field(default_factory=dict)
    augment: AugmentParams = field(default_factory=AugmentParams)


@dataclass(frozen=True)
class ProfileParams:
    """A profile (DESIGN §6): which datasets it uses and on what device."""

    datasets: tuple[str, ...]
    device: str = "cpu"
    description: str = ""


@dataclass(frozen=True)
class Params:
    seed: int = 0
    profile: str = "smoke"
    data: DataParams = field(default_factory=DataParams)
    profiles: dict[str, ProfileParams] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from densemoe.tasks import DATASETS

        if self.profiles and self.profile not in self.profiles:
            raise unknown("profile", self.profile, self.profiles, where=" in params.yaml 'profile'")
        names = [*self.data.synth, *self.data.archives]
        for spec in self.profiles.values():
            names += list(spec.datasets)
        for name in names:
            if name not in DATASETS:
                raise unknown("dataset", name, DATASETS, where=" in params.yaml")

    @property
    def active(self) -> ProfileParams:
        return self.profiles[self.profile]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against (and converted to) the annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is not Ellipsis and len(value) != 2:
            raise ConfigError(f"{where} must be a list of 2 values, got {value!r}")
        item = args[0]
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    hint = " (write floats as 1.0e-4: PyYAML reads 1e-4 as a string)" if tp is float else ""
    raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}{hint}")


def from_dict(cls: type[T], data: Any, where: str = "params") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are one-line errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise unknown("key", key, fields, where=f" in {where}")
    kwargs = {}
    for name in fields:
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}")
        elif (fields[name].default, fields[name].default_factory) == (dataclasses.MISSING,) * 2:
            raise ConfigError(f"{where}.{name} is required but missing")
    return cls(**kwargs)


def find_root(start: str | Path | None = None) -> Path:
    """The repository root: the first folder upwards holding ``params.yaml`` and ``pyproject.toml``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "pyproject.toml").is_file():
            return folder
    raise ConfigError(f"no params.yaml found in {here} or above; run from the densemoe repository")


def load_params(path: str | Path | None = None) -> Params:
    """Read and validate ``params.yaml`` (default: the repository's)."""
    path = Path(path) if path is not None else find_root() / "params.yaml"
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist; pass --params PATH or run from the repository")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    return from_dict(Params, data)


def data_root(params: Params, base: str | Path | None = None, profile: str | None = None) -> Path:
    """Where the datasets of a profile live: ``<data.root>/<profile>`` (``data/smoke``, ``data/paper``),
    with ``data.root`` resolved against the repository root (or ``base``)."""
    root = Path(params.data.root)
    root = root if root.is_absolute() else Path(base or find_root()) / root
    return root / (profile or params.profile)


def archive_dir(params: Params, base: str | Path | None = None) -> Path:
    """Where downloaded archives are kept, shared by all profiles: ``<data.root>/archives`` (data.dvc)."""
    return data_root(params, base, profile="archives")
