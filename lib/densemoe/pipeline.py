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

from densemoe.atomic import atomic_write
from densemoe.config import Params, PipelineParams, find_root, from_dict, load_params, parse_yaml
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


#: The top-level ``pipeline:`` section with the comment lines right above it, up to the next top-level key.
PIPELINE_SECTION = re.compile(r"^(?:#[^\n]*\n)*pipeline:.*?(?=^[A-Za-z_]|\Z)", flags=re.M | re.S)


def switch_profile(path: str | Path, profile: str) -> tuple[Params, bool]:
    """Rewrite ``profile`` and ``pipeline`` of the params file ``path`` for ``profile``; the new parameters
    and whether the file changed. The new text is checked in full before it replaces the file."""
    path = Path(path)
    old = path.read_text()
    pipeline = load_params(path, check_pipeline=False).pipeline_for(profile)  # unknown profile: one line
    if not pipeline.train:
        raise ConfigError(f"profile '{profile}' has no table rows; add rows to params.yaml tables")
    text, n = re.subn(r"^profile:[^\n#]*", f"profile: {profile}            ", old, count=1, flags=re.M)
    if n == 0:
        text = f"profile: {profile}\n" + text
    block = pipeline_text(pipeline)
    text, n = PIPELINE_SECTION.subn(lambda _: block, text, count=1)
    if n == 0:
        text = text.rstrip("\n") + "\n\n" + block
    params = from_dict(Params, parse_yaml(text))
    if params.profile != profile or params.pipeline != pipeline:
        raise ConfigError(f"could not rewrite {path}: edit its profile and pipeline by hand")
    params.check_pipeline()
    if text != old:
        atomic_write(path, lambda f: f.write(text.encode()))
    return params, text != old


def cmd_repro(args: argparse.Namespace) -> None:
    path = Path(args.params) if args.params else find_root() / "params.yaml"
    params, changed = switch_profile(path, args.profile)
    print(f"params.yaml: profile {params.profile}, {len(params.pipeline.train)} experiments to train, "
          f"{len(params.pipeline.reports)} with per-run reports" + ("" if changed else " (unchanged)"))
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
