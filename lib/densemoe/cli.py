"""``densemoe`` command line: the entry points ``dvc.yaml`` calls where no notebook is needed.

Every user-fixable problem prints one line, ``densemoe: error: <problem and fix>``, and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from densemoe import __version__
from densemoe.config import Params, archive_dir, data_root, load_params
from densemoe.errors import DensemoeError, unknown

log = logging.getLogger("densemoe")


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and not os.environ.get("CI")


def _synth(params: Params, name: str, root: Path, progress: bool) -> Path:
    from densemoe.data.synthetic import SYNTH_PRESETS, write_synth_dataset

    if name not in params.data.synth:
        raise unknown("synthetic dataset", name, params.data.synth, where=" in params.yaml data.synth")
    sp = params.data.synth[name]
    cfg = replace(SYNTH_PRESETS[name], height=sp.height, width=sp.width)
    splits = {"train": sp.train, "val": sp.val, "test": sp.test}
    out = write_synth_dataset(
        root, name, cfg, splits, seed=params.seed, progress=progress, workers=sp.workers
    )
    print(f"{name}: {sp.train}/{sp.val}/{sp.test} train/val/test images of {sp.height}x{sp.width} in {out}")
    return out


def _fetch(params: Params, name: str, root: Path, progress: bool, force: bool = False) -> Path:
    from densemoe.data.download import ArchiveSpec, fetch

    if name not in params.data.archives:
        raise unknown("dataset archive", name, params.data.archives, where=" in params.yaml data.archives")
    a = params.data.archives[name]
    spec = ArchiveSpec(name=name, url=a.url, archive=a.archive, md5=a.md5, size=a.size)
    dl = params.data.download
    out = fetch(spec, root, archive_dir=archive_dir(params), progress=progress, force=force,
                stall_timeout=dl.stall_timeout, min_rate=dl.min_rate, deadline=dl.deadline)
    print(f"{name}: ready in {out}")
    return out


def _root(args: argparse.Namespace, params: Params) -> Path:
    """``--root``, else the data folder of the profile that uses the named dataset (``data/<profile>``)."""
    if args.root:
        return Path(args.root)
    name = getattr(args, "name", None)
    return data_root(params, profile=params.dataset_profile(name) if name else None)


def cmd_data_synth(args: argparse.Namespace) -> None:
    """Generate a SynthScenes dataset (train/val/test) under the profile's data folder."""
    params = load_params(args.params)
    _synth(params, args.name, _root(args, params), _progress(args))


def cmd_data_fetch(args: argparse.Namespace) -> None:
    """Download, verify and extract a real dataset archive named in ``params.yaml``."""
    params = load_params(args.params)
    _fetch(params, args.name, _root(args, params), _progress(args), args.force)


def cmd_data_prepare(args: argparse.Namespace) -> None:
    """Make every dataset of the active profile ready (the ``data`` stage of ``dvc.yaml``)."""
    params = load_params(args.params)
    root = _root(args, params)
    for name in params.active.datasets:
        if name.startswith("synth-"):
            _synth(params, name, root, _progress(args))
        else:
            _fetch(params, name, root, _progress(args))


def cmd_data_check(args: argparse.Namespace) -> None:
    """Check that a dataset is in place and readable; print its split sizes."""
    from densemoe.data.dataset import MultiTaskDataset
    from densemoe.tasks import dataset_info

    params = load_params(args.params)
    root = _root(args, params)
    info = dataset_info(args.name)
    for split in ("train", "val", "test"):
        ds = MultiTaskDataset(root, args.name, split, info.tasks)
        sample = ds.raw(0)
        print(
            f"{args.name} {split}: {len(ds)} samples, first {sample['meta']['name']} {sample['meta']['size']}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="densemoe",
        description="Multi-task dense prediction with mixture-of-experts decoders (MLoRE, FGMoE).",
    )
    parser.add_argument("--version", action="version", version=f"densemoe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default=None, help="params file (default: the repository's params.yaml)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("--root", default=None, help="data folder (default: data.root of params.yaml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="generate, download and check datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = data_sub.add_parser(
        "synth", parents=[common], help="generate a SynthScenes dataset (synth-pascal, synth-nyud)"
    )
    synth.set_defaults(func=cmd_data_synth)
    fetch = data_sub.add_parser(
        "fetch", parents=[common], help="download + verify + extract a real dataset (pascal-context, nyud-v2)"
    )
    fetch.add_argument("--force", action="store_true", help="re-download and re-extract")
    fetch.set_defaults(func=cmd_data_fetch)
    check = data_sub.add_parser(
        "check", parents=[common], help="check a dataset is in place and print its split sizes"
    )
    check.set_defaults(func=cmd_data_check)
    for p in (synth, fetch, check):
        p.add_argument("name", help="dataset name")
    prepare = data_sub.add_parser(
        "prepare", parents=[common], help="make every dataset of the active profile ready"
    )
    prepare.set_defaults(func=cmd_data_prepare)

    from densemoe.metrics.evaluate import add_evaluate_parser

    add_evaluate_parser(sub, parents=[common])

    from densemoe.models.official import add_convert_parser

    add_convert_parser(sub)
    from densemoe.models.weights import add_weights_parser

    add_weights_parser(sub)
    from densemoe.train.commands import add_train_parser

    add_train_parser(sub, parents=[common])
    from densemoe.pipeline import add_repro_parser

    add_repro_parser(sub, parents=[common])
    from densemoe.analysis.report_index import add_index_parser

    add_index_parser(sub, parents=[common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure ends in one line on stderr (:func:`report_failure`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for a re-launch under torchrun
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        args.func(args)
    except BaseException as exc:  # the one error path of the command line
        if isinstance(exc, SystemExit):
            raise
        return report_failure(exc, verbose=args.verbose)
    return 0


def report_failure(exc: BaseException, verbose: bool = False) -> int:
    """Print the one line for ``exc`` and return the exit status.

    - :class:`DensemoeError` (bad input, a held lock, disk full, a diverged run): its message; status 2, or
      the error's own ``exit_code`` (130/143 for a run stopped by SIGINT/SIGTERM after saving).
    - Ctrl-C outside training: status 130; what was being written was a temporary, and is gone.
    - ``OSError`` (permissions, a read-only or full disk, a path that is a file): the path and the reason; 2.
    - anything else is a bug of ours: one line naming it and ``-v`` for the traceback; status 1.
    """
    if isinstance(exc, DensemoeError):
        if verbose and exc.worker_traceback:
            print(exc.worker_traceback, file=sys.stderr)
        print(f"densemoe: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    if isinstance(exc, KeyboardInterrupt):
        print("densemoe: interrupted; nothing half-written was kept, re-run the same command",
              file=sys.stderr)
        return 130
    if isinstance(exc, OSError):
        from densemoe.atomic import _disk_full, disk_full_error

        where = exc.filename or "a file"
        if _disk_full(exc):
            print(f"densemoe: error: {disk_full_error(where)}", file=sys.stderr)
        else:
            print(f"densemoe: error: cannot use {where}: {exc.strerror or exc}; check the path and its "
                  "permissions, then re-run", file=sys.stderr)
        return 2
    if verbose:
        import traceback

        traceback.print_exception(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    print(f"densemoe: internal error: {type(exc).__name__}: {first} (a bug in densemoe: re-run with -v for "
          "the traceback and report it)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
