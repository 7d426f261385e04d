"""``params.yaml`` → typed dataclasses.

Every knob of the pipeline lives in ``params.yaml`` (DESIGN §7). :func:`from_dict` builds a dataclass
tree from the parsed YAML and rejects, in one line each, an unknown key (naming it, its place and the
valid keys), a value of the wrong type (``lr: 1e-4`` is a *string* to PyYAML: write ``1.0e-4``), and an
unknown dataset or profile name.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from densemoe.errors import ConfigError, unknown
from densemoe.validate import Range, bounded, check_device, field_range

T = TypeVar("T")


@dataclass(frozen=True)
class SynthParams:
    """How many SynthScenes images of which size to generate (``data.synth.<name>``)."""

    height: int = bounded(128, ge=8)
    width: int = bounded(128, ge=8)
    train: int = bounded(400, ge=1)
    val: int = bounded(100, ge=1)
    test: int = bounded(100, ge=1)
    workers: int = bounded(2, ge=0)  # processes rendering images (0 or 1: in this process)


@dataclass(frozen=True)
class ArchiveParams:
    """A real dataset archive (``data.archives.<name>``): where it is and how to verify it.

    ``md5``/``size`` are null until the first real download pins them (specs/ecosystem.md §4.1).
    """

    url: str
    archive: str
    md5: str | None = None
    size: int | None = bounded(None, ge=1)

    def __post_init__(self) -> None:
        if self.md5 is not None and not MD5.fullmatch(self.md5):
            raise ConfigError(f"data.archives md5 must be 32 hex digits, got {self.md5!r}")
        if not re.match(r"https?://", self.url):
            raise ConfigError(f"data.archives url must start with http:// or https://, got {self.url!r}")
        if not self.archive or Path(self.archive).name != self.archive:
            raise ConfigError(f"data.archives archive must be a file name (no folders), got {self.archive!r}")


@dataclass(frozen=True)
class AugmentParams:
    """Training augmentation (specs/mlore.md §2, "from ATRC"); ``crop: null`` = the dataset's size."""

    scale_min: float = bounded(0.5, gt=0)
    scale_max: float = bounded(2.0, gt=0)
    crop: tuple[int, int] | None = None
    cat_max_ratio: float = bounded(0.75, gt=0, le=1)
    flip: bool = True
    photometric: bool = True

    def __post_init__(self) -> None:
        if self.scale_max < self.scale_min:
            raise ConfigError(
                f"data.augment.scale_max ({self.scale_max}) must be >= scale_min ({self.scale_min})")
        if self.crop is not None and min(self.crop) < 8:
            raise ConfigError(f"data.augment.crop must be at least 8x8 pixels, got {list(self.crop)}")


@dataclass(frozen=True)
class DownloadParams:
    """How long ``densemoe data fetch`` waits (``data.download``), as curl's ``--speed-time`` and
    ``--speed-limit``: the download ends when the last ``stall_timeout`` seconds brought fewer than
    ``min_rate`` bytes per second (a silent server, or one that trickles), or after ``deadline`` seconds in
    all (0 = none). The bytes so far are kept, and the next fetch resumes them."""

    stall_timeout: float = bounded(60.0, gt=0)
    min_rate: float = bounded(1024.0, ge=0)
    deadline: float = bounded(0.0, ge=0)


@dataclass(frozen=True)
class DataParams:
    root: str = "data"
    synth: dict[str, SynthParams] = field(default_factory=dict)
    archives: dict[str, ArchiveParams] = field(default_factory=dict)
    augment: AugmentParams = field(default_factory=AugmentParams)
    download: DownloadParams = field(default_factory=DownloadParams)


AMP_MODES = ("none", "bf16", "fp16")
SPLITS = ("train", "val", "test")
MD5 = re.compile(r"[0-9a-fA-F]{32}")
LOSS_WEIGHT = Range(ge=0)


def check_ranges(obj: Any, where: str) -> None:
    """Every :func:`~densemoe.validate.bounded` field of dataclass ``obj`` within its range."""
    for f in dataclasses.fields(obj):
        if (rng := field_range(f)) is not None:
            rng.check(getattr(obj, f.name), f"{where}.{f.name}")


@dataclass(frozen=True)
class TrainParams:
    """The training recipe (``specs/mlore.md`` §2): a profile's defaults, overridden per experiment.

    Defaults are the official code's: Adam (betas 0.9/0.999, eps 1e-8) with L2 ``weight_decay`` 1e-6 on
    every parameter (``decay_norms_and_biases: false`` exempts norms, biases and embeddings), poly
    schedule ``lr·(1 − t/iterations)^0.9`` stepped per iteration, global-norm clipping at 10, 40k
    iterations of batch 2 per process (2 GPUs in the paper), evaluation and checkpoint every 2k.
    ``loss_weights`` overrides the per-task λ_t of ``train/losses.py``; ``edge_w`` null = the dataset's
    (PASCAL 0.95, NYUD 0.88; 0.925 for PASCAL ViT-L).
    """

    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    iterations: int = bounded(40000, ge=1)
    batch_size: int = bounded(2, ge=1)  # per process
    val_batch_size: int = bounded(6, ge=1)
    workers: int = bounded(2, ge=0)  # data-loader processes per training process
    lr: float = bounded(2.0e-5, gt=0)
    weight_decay: float = bounded(1.0e-6, ge=0)
    decay_norms_and_biases: bool = True  # the official single parameter group
    poly_power: float = bounded(0.9, ge=0)  # 0 = constant lr; < 0 would divide by zero at t = T
    grad_clip: float = bounded(10.0, ge=0)  # 0 = off
    loss_weights: dict[str, float] = field(default_factory=dict)
    edge_w: float | None = bounded(None, gt=0, lt=1)
    eval_every: int = bounded(2000, ge=0)  # 0 = only at the end
    checkpoint_every: int = bounded(2000, ge=0)  # 0 = only at the end (and after each evaluation)
    log_every: int = bounded(20, ge=1)
    eval_split: str = "val"
    edge_workers: int = bounded(2, ge=1)  # processes matching boundaries at evaluation
    amp: str = "none"  # none | bf16 | fp16 (fp16 adds a GradScaler)
    channels_last: bool = False
    sync_bn: bool = True  # SyncBatchNorm under torchrun on GPUs, as the official code
    find_unused_parameters: bool = False  # DDP; set true for models that skip parameters in forward
    nproc_per_node: int = bounded(1, ge=1)  # processes (GPUs) per run: > 1 re-launches under torchrun

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise unknown("amp mode", self.amp, AMP_MODES, where=" in train.amp")
        check_device(self.device, "train.device")
        check_ranges(self, "train")
        if self.eval_split not in SPLITS:
            raise unknown("split", self.eval_split, SPLITS, where=" in train.eval_split")
        for task, weight in self.loss_weights.items():
            LOSS_WEIGHT.check(weight, f"train.loss_weights.{task}")


@dataclass(frozen=True)
class ProfileParams:
    """A profile (DESIGN §6): which datasets it uses, on what device, and its training defaults."""

    datasets: tuple[str, ...]
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_device(self.device, "profiles.<name>.device")
    description: str = ""
    train: TrainParams = field(default_factory=TrainParams)
    #: A caveat printed under every table and in reports/README.md (the smoke profile: synthetic numbers).
    note: str = ""
    #: Values of the ``{variables}`` in the tables' experiment names (``{pascal}`` → ``tiny_synth_pascal``).
    names: dict[str, str] = field(default_factory=dict)
    #: Experiments that also get the per-run notebooks (02 training report, 05 expert usage).
    reports: tuple[str, ...] = ()


EXPERIMENT_NAME = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class ExperimentParams:
    """One experiment (DESIGN §3): a registered model preset, its overrides, the data and the schedule.

    ``model`` is a preset name (``densemoe.models.list_models()``); ``model_args`` override the preset
    (``pretrained: true`` for the paper's ImageNet weights); ``tasks`` null = all tasks of ``dataset``;
    ``train`` overrides keys of the profile's ``train`` defaults; ``profile`` null = the profile whose
    datasets include ``dataset`` (its training defaults and data folder apply).
    """

    model: str
    dataset: str
    tasks: tuple[str, ...] | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    profile: str | None = None


@dataclass(frozen=True)
class TableRow:
    """One row of a paper table: its label in the paper, our experiment, the paper's published numbers
    (flat ``<task>/<metric>`` keys, ``mtl/delta_m``; transcribed, never computed from)."""

    label: str
    experiment: str
    paper: dict[str, float] = field(default_factory=dict)


TEMPLATE_FIELD = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class TableParams:
    """A paper table reproduced by the pipeline (``tables.<id>``, DESIGN §3): rows of experiments, the
    single-task baseline experiment of each task for Δm, and where the paper's numbers come from.

    Experiment names may hold ``{variables}`` filled from the profile's ``names``
    (``mlore_{pascal}_rank_min`` → ``mlore_tiny_synth_pascal_rank_min`` in the smoke profile,
    ``mlore_vitb16_pascal_rank_min`` in the paper one): one table serves every profile that defines its
    variables. ``metrics`` lists the columns when the paper publishes no numbers (FGMoE's ablations);
    otherwise the columns are the paper's keys.
    """

    title: str
    source: str
    rows: tuple[TableRow, ...]
    single_task: dict[str, str] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    note: str = ""

    def variables(self) -> set[str]:
        names = [row.experiment for row in self.rows] + list(self.single_task.values())
        return {v for name in names for v in TEMPLATE_FIELD.findall(name)}

    def resolve(self, names: dict[str, str]) -> TableParams:
        """The table with its experiment names filled from ``names`` (a profile's ``names``)."""
        rows = tuple(dataclasses.replace(r, experiment=r.experiment.format_map(names)) for r in self.rows)
        single = {t: e.format_map(names) for t, e in self.single_task.items()}
        return dataclasses.replace(self, rows=rows, single_task=single)


@dataclass(frozen=True)
class PipelineParams:
    """What ``dvc repro`` runs for the active profile (``dvc.yaml`` iterates these lists; DVC cannot index
    ``profiles`` by ``${profile}``): ``train`` every experiment of the profile's tables, ``reports`` those
    that also get the per-run notebooks. ``densemoe repro --profile NAME`` writes both from the profile."""

    train: tuple[str, ...] = ()
    reports: tuple[str, ...] = ()


@dataclass(frozen=True)
class Params:
    seed: int = bounded(0, ge=0)
    profile: str = "smoke"
    data: DataParams = field(default_factory=DataParams)
    profiles: dict[str, ProfileParams] = field(default_factory=dict)
    experiments: dict[str, ExperimentParams] = field(default_factory=dict)
    tables: dict[str, TableParams] = field(default_factory=dict)
    pipeline: PipelineParams = field(default_factory=PipelineParams)

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
        for name in self.experiments:
            self._check_experiment(name)
        for profile, spec in self.profiles.items():
            self.tables_of(profile)  # every name a profile fills in must be an experiment
            for name in spec.reports:
                self.experiment(name)

    def profile_params(self, profile: str | None = None) -> ProfileParams:
        """``profiles.<profile>`` (default: the active one); else a one-line error naming the profiles."""
        profile = profile or self.profile
        if profile not in self.profiles:
            raise unknown("profile", profile, self.profiles, where=" in params.yaml profiles")
        return self.profiles[profile]

    def table(self, table_id: str, profile: str | None = None) -> TableParams:
        """``tables.<table_id>`` with the names of ``profile`` (default: active) filled in; a one-line
        error if the table is unknown, or names a variable or an experiment the profile lacks."""
        if table_id not in self.tables:
            raise unknown("table", table_id, self.tables, where=" in params.yaml tables")
        profile = profile or self.profile
        names = self.profile_params(profile).names
        table, where = self.tables[table_id], f" in params.tables.{table_id}"
        missing = sorted(table.variables() - set(names))
        if missing:
            raise ConfigError(f"table '{table_id}' needs {', '.join(f'{{{m}}}' for m in missing)}, which "
                              f"profile '{profile}' does not define; add it to profiles.{profile}.names")
        resolved = table.resolve(names)
        from densemoe.tasks import TASKS

        for row in resolved.rows:
            if row.experiment not in self.experiments:
                raise unknown("experiment", row.experiment, self.experiments,
                              where=f"{where} row '{row.label}' (profile {profile})")
        for task, exp in resolved.single_task.items():
            if task not in TASKS:
                raise unknown("task", task, TASKS, where=f"{where}.single_task")
            if exp not in self.experiments:
                raise unknown("experiment", exp, self.experiments,
                              where=f"{where}.single_task.{task} (profile {profile})")
        return resolved

    def tables_of(self, profile: str | None = None) -> dict[str, TableParams]:
        """Every table with the names of ``profile`` (default: active) filled in (each profile renders every
        table, so a misspelt variable is an error rather than a table that silently goes missing)."""
        return {tid: self.table(tid, profile) for tid in self.tables}

    def table_experiments(self, profile: str | None = None) -> list[str]:
        """Experiments (rows, then single-task baselines) of the tables of ``profile`` (default: active)."""
        names: list[str] = []
        for table in self.tables_of(profile).values():
            names += [row.experiment for row in table.rows] + list(table.single_task.values())
        return list(dict.fromkeys(names))

    def pipeline_for(self, profile: str) -> PipelineParams:
        """What ``pipeline`` must hold to run ``profile``: its tables' experiments and its report runs."""
        reports = self.profile_params(profile).reports
        return PipelineParams(tuple(dict.fromkeys([*self.table_experiments(profile), *reports])), reports)

    def check_pipeline(self) -> None:
        """``pipeline`` (what ``dvc repro`` runs) covers the active profile's tables and runs under it
        (:func:`load_params` checks it; ``densemoe repro`` loads without the check to rewrite it)."""
        fix = f"run `densemoe repro --profile {self.profile}`, which sets pipeline for it"
        for name in (*self.pipeline.train, *self.pipeline.reports):
            self.experiment(name)
            if self.profiles and self.experiment_profile(name) != self.profile:
                raise ConfigError(
                    f"params.yaml pipeline lists '{name}' of profile '{self.experiment_profile(name)}', "
                    f"but profile is '{self.profile}'; {fix}"
                )
        missing = [n for n in self.table_experiments() if n not in self.pipeline.train]
        missing += [n for n in self.pipeline.reports if n not in self.pipeline.train]
        missing = list(dict.fromkeys(missing))
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ConfigError(
                f"params.yaml pipeline.train lacks {', '.join(missing[:3])}{more}, needed by the tables or "
                f"reports of profile '{self.profile}'; {fix}"
            )

    def _check_experiment(self, name: str) -> None:
        from densemoe.tasks import DATASETS, tasks_for

        where = f"params.experiments.{name}"
        if not EXPERIMENT_NAME.fullmatch(name):
            raise ConfigError(f"experiment name '{name}' may only use a-z, 0-9 and _ (DVC stage names)")
        exp = self.experiments[name]
        if exp.dataset not in DATASETS:
            raise unknown("dataset", exp.dataset, DATASETS, where=f" in {where}.dataset")
        tasks_for(exp.dataset, exp.tasks)
        if exp.profile is not None and exp.profile not in self.profiles:
            raise unknown("profile", exp.profile, self.profiles, where=f" in {where}.profile")
        self.experiment_profile(name)
        from_dict(TrainParams, exp.train, f"{where}.train")  # keys and types

    @property
    def active(self) -> ProfileParams:
        return self.profiles[self.profile]

    def experiment(self, name: str) -> ExperimentParams:
        """The experiment ``name``; a one-line error listing the valid names otherwise."""
        if name not in self.experiments:
            raise unknown("experiment", name, self.experiments, where=" in params.yaml experiments")
        return self.experiments[name]

    def dataset_profile(self, dataset: str) -> str | None:
        """The profile whose data folder holds ``dataset``: the active one if it lists it, else the first."""
        if not self.profiles or dataset in self.active.datasets:
            return self.profile
        return next((p for p, spec in self.profiles.items() if dataset in spec.datasets), None)

    def experiment_profile(self, name: str) -> str:
        """The profile an experiment runs under: its own, or the first whose datasets include its dataset."""
        exp = self.experiment(name)
        if exp.profile is not None:
            return exp.profile
        profile = self.dataset_profile(exp.dataset)
        if profile is None:
            raise ConfigError(
                f"experiment '{name}': dataset '{exp.dataset}' is in no profile's datasets; set its profile"
            )
        return profile

    def train_params(self, name: str) -> TrainParams:
        """The profile's training defaults with the experiment's ``train`` overrides applied."""
        exp = self.experiment(name)
        profile = self.profiles.get(self.experiment_profile(name))
        base = dataclasses.asdict(profile.train) if profile is not None else {}
        return from_dict(TrainParams, {**base, **exp.train}, f"params.experiments.{name}.train")


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
            if (rng := field_range(fields[name])) is not None:
                rng.check(kwargs[name], f"{where}.{name}")
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


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last
    one silently, so an edit to the first copy of an experiment would do nothing)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{key_node.start_mark.name} line {line}: key '{key}' is given twice "
                                  f"(first on line {seen[key]}); keep one of them")
            seen[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text_or_file: Any) -> Any:
    """Parse YAML with :class:`_StrictLoader` (safe, and a duplicate key is an error)."""
    return yaml.load(text_or_file, Loader=_StrictLoader)  # a SafeLoader subclass


def read_yaml(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return parse_yaml(f)


def load_params(path: str | Path | None = None, check_pipeline: bool = True) -> Params:
    """Read and validate ``params.yaml`` (default: the repository's); ``check_pipeline`` also checks
    that ``pipeline`` suits the active profile (:meth:`Params.check_pipeline`)."""
    path = Path(path) if path is not None else find_root() / "params.yaml"
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist; pass --params PATH or run from the repository")
    try:
        data = read_yaml(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read params file {path}: {exc}") from exc
    params = from_dict(Params, data)
    if check_pipeline:
        params.check_pipeline()
    return params


def data_root(params: Params, base: str | Path | None = None, profile: str | None = None) -> Path:
    """Where the datasets of a profile live: ``<data.root>/<profile>`` (``data/smoke``, ``data/paper``),
    with ``data.root`` resolved against the repository root (or ``base``)."""
    root = Path(params.data.root)
    root = root if root.is_absolute() else Path(base or find_root()) / root
    return root / (profile or params.profile)


def archive_dir(params: Params, base: str | Path | None = None) -> Path:
    """Where downloaded archives are kept, shared by all profiles: ``<data.root>/archives`` (data.dvc)."""
    return data_root(params, base, profile="archives")
