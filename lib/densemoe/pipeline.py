"""``densemoe repro --profile NAME``: switch the pipeline to a profile, then run ``dvc repro``.

``dvc.yaml`` iterates the top-level ``pipeline`` lists of ``params.yaml`` (DVC cannot index ``profiles`` by
``${profile}``), and :meth:`densemoe.config.Params.check_pipeline` refuses a ``pipeline`` that does not
match ``profile``. This command keeps the two in step: it rewrites the ``profile:`` line and the
``pipeline:`` section of ``params.yaml`` (the rest of the file, comments included, is kept byte for byte;
the write is atomic) from :meth:`~densemoe.config.Params.pipeline_for`, then runs ``dvc repro``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from densemoe.atomic import atomic_write
from densemoe.config import PipelineParams, find_root, load_params
from densemoe.errors import ConfigError

HEADER = """# What `dvc repro` runs for the active profile, written by `densemoe repro --profile NAME` from
# the profile's tables and reports (DVC cannot index `profiles` by `${profile}`: dvc.yaml iterates these).
"""


def pipeline_text(pipeline: PipelineParams) -> str:
    """The ``pipeline:`` section of ``params.yaml`` for ``pipeline`` (block lists, one name a line)."""
    lines = [HEADER.rstrip("\n"), "pipeline:"]
    for key in ("train", "reports"):
        lines.append(f"  {key}:")
        lines += [f"    - {name}" for name in getattr(pipeline, key)]
    return "\n".join(lines) + "\n"


def _section(text: str, key: str) -> tuple[int, int] | None:
    """(start, end) of the top-level ``key:`` section of a YAML text, its leading comments included."""
    m = re.search(rf"^{key}:.*$", text, flags=re.M)
    if m is None:
        return None
    start = m.start()
    while True:  # take the comment lines right above it along
        prev = text.rfind("\n", 0, max(start - 1, 0))
        line = text[prev + 1 : start - 1] if start > 0 else ""
        if start > 0 and line.startswith("#"):
            start = prev + 1
        else:
            break
    nxt = re.search(r"^(?=[A-Za-z_])", text[m.end() :], flags=re.M)
    end = m.end() + nxt.start() if nxt else len(text)
    return start, end


def switch_profile(path: str | Path, profile: str) -> tuple[str, str]:
    """Rewrite ``profile`` and ``pipeline`` of the params file ``path`` for ``profile``; (old, new) text."""
    path = Path(path)
    old = path.read_text()
    params = load_params(path, check_pipeline=False)
    pipeline = params.pipeline_for(profile)  # one-line error for an unknown profile
    if not pipeline.train:
        raise ConfigError(f"profile '{profile}' has no table rows; add rows to params.yaml tables")
    text, n = re.subn(r"^profile:[^\n#]*", f"profile: {profile}            ", old, count=1, flags=re.M)
    if n == 0:
        text = f"profile: {profile}\n" + text
    span = _section(text, "pipeline")
    block = pipeline_text(pipeline)
    text = (text[: span[0]] + block + text[span[1] :]) if span else text.rstrip("\n") + "\n\n" + block
    data = yaml.safe_load(text)
    if data.get("profile") != profile or tuple(data["pipeline"]["train"]) != pipeline.train:
        raise ConfigError(f"could not rewrite {path}: edit its profile and pipeline by hand")
    if text != old:
        atomic_write(path, lambda f: f.write(text.encode()))
    load_params(path)  # the rewritten file passes every check
    return old, text


def cmd_repro(args: argparse.Namespace) -> None:
    path = Path(args.params) if args.params else find_root() / "params.yaml"
    old, new = switch_profile(path, args.profile)
    params = load_params(path)
    print(f"params.yaml: profile {params.profile}, {len(params.pipeline.train)} experiments to train, "
          f"{len(params.pipeline.reports)} with per-run reports" + ("" if old != new else " (unchanged)"))
    if args.no_run:
        return
    dvc = shutil.which("dvc")
    if dvc is None:
        raise ConfigError("dvc is not installed; `pip install -e .` installs it, or run `dvc repro` yourself")
    sys.exit(subprocess.call([dvc, "repro", *args.dvc_args], cwd=path.parent))


def add_repro_parser(subparsers, parents=()) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "repro", parents=list(parents), help="switch params.yaml to a profile, then run dvc repro",
        description="Set params.yaml `profile` and `pipeline` (the experiments of that profile's tables, and "
                    "the runs that get per-run reports), then run `dvc repro` with any further arguments. "
                    "`densemoe repro --profile paper` runs the paper's setting (GPU); `--profile smoke` "
                    "switches back.")
    parser.add_argument("--profile", required=True, help="a key of profiles in params.yaml (smoke, paper)")
    parser.add_argument("--no-run", action="store_true", help="only rewrite params.yaml")
    parser.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed to dvc repro (e.g. -s tables)")
    parser.set_defaults(func=cmd_repro)
    return parser
