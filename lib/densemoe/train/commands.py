"""``densemoe train --experiment NAME`` and ``densemoe evaluate --experiment NAME / --checkpoint CKPT``.

One process: ``densemoe train --experiment mlore_tiny_synth_pascal``. Several GPUs, the same command
under torchrun: ``torchrun --nproc_per_node=2 -m densemoe.cli train --experiment mlore_vitb16_pascal``.
Re-running a command resumes from ``runs/<name>/checkpoint.pt``; ``--restart`` starts afresh.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from densemoe.errors import ConfigError


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and not os.environ.get("CI")


def cmd_train(args: argparse.Namespace) -> None:
    """Train (or resume) one experiment of ``params.yaml``."""
    from densemoe.config import load_params
    from densemoe.train.experiment import resolve_experiment
    from densemoe.train.trainer import train

    params = load_params(args.params)
    exp = resolve_experiment(params, args.experiment, runs=args.runs, root=args.root)
    if exp.train.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        import sys

        command = torchrun_command(exp.train.nproc_per_node, getattr(args, "argv", sys.argv[1:]))
        print("launching:", " ".join(command), flush=True)
        raise SystemExit(run_forwarding_signals(command))
    metrics = train(exp, progress=_progress(args), restart=args.restart)
    if int(os.environ.get("RANK", "0")) == 0:
        for key, value in metrics.items():
            print(f"{key:<22s} {value:.4f}")
        print(f"wrote {exp.run_dir}")
        if args.report is not None:
            for path in write_report(exp.run_dir, args.report, exp.train.eval_split, metrics):
                print(f"wrote {path}")


def run_forwarding_signals(command: list[str]) -> int:
    """Run ``command`` and return its exit status; a SIGTERM sent to this process (by DVC, a scheduler) is
    passed on, so the ranks save and stop (``train/signals.py``). SIGINT is not passed on: a terminal's
    Ctrl-C already reaches the whole process group, and a second one would stop the ranks at once."""
    import signal
    import subprocess

    proc = subprocess.Popen(command)
    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda s, f: proc.send_signal(s)),
           signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        return proc.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The same ``densemoe`` command under torchrun with ``nproc`` processes on this machine
    (``train.nproc_per_node``, so that ``dvc repro`` runs the paper profile on several GPUs)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "densemoe.cli", *argv]


def write_report(run_dir: str | Path, report: str | Path, split: str, metrics: dict) -> list[Path]:
    """Copy a finished run's final evaluation into ``report`` (committed by the pipeline, small):
    ``metrics_<split>.json`` (flat metrics) and ``routing.json`` (its routing statistics)."""
    from densemoe.atomic import atomic_write
    from densemoe.metrics.evaluate import write_metrics

    report = Path(report)
    out = [report / f"metrics_{split}.json"]
    write_metrics(out[0], metrics)
    last = sorted((Path(run_dir) / "routing").glob("iter_*.json"))[-1:]
    if last:  # unrouted models write empty ``blocks``
        text = last[0].read_bytes()
        out.append(atomic_write(report / "routing.json", lambda f: f.write(text)))
    return out


def add_train_parser(subparsers, parents: Iterable[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``densemoe train`` (``parents`` supply ``--params``, ``--root`` and ``-q``)."""
    parser = subparsers.add_parser(
        "train", parents=list(parents), help="train (or resume) an experiment of params.yaml",
        description="Train an experiment of params.yaml with the papers' recipe into runs/<name>/ "
                    "(config.yaml, checkpoint.pt, history.csv, metrics.json, evals/, routing/). Re-running "
                    "resumes from the last checkpoint. Several GPUs: the same command under "
                    "`torchrun --nproc_per_node=N -m densemoe.cli train ...`.")
    parser.add_argument("--experiment", required=True, metavar="NAME",
                        help="a key of experiments in params.yaml")
    parser.add_argument("--runs", default=None, metavar="DIR",
                        help="folder of run folders (default: <repo>/runs)")
    parser.add_argument("--restart", action="store_true", help="discard the run folder's checkpoint and logs")
    parser.add_argument("--report", default=None, metavar="DIR",
                        help="also write the final evaluation to DIR/metrics_<eval_split>.json and its "
                             "routing statistics to DIR/routing.json (the pipeline's reports/runs/<name>)")
    parser.set_defaults(func=cmd_train)
    return parser


# ----------------------------------------------------------------------------------------------------------
# Checkpoint evaluation


def open_checkpoint(path: str | Path, preset: str | None = None,
                    overrides: dict | None = None) -> tuple[Any, dict, dict]:
    """(model, training config, model args) of a densemoe checkpoint, or of an official MLoRE
    ``checkpoint.pth.tar`` recognised by its key layout and converted strictly (``models/official.py``).
    A missing, truncated or foreign file, or a folder, is a one-line :class:`~densemoe.errors.DataError`."""
    from densemoe.errors import DataError
    from densemoe.train.checkpoint import build_model, load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except DataError as exc:
        from densemoe.models.official import is_official_mlore, load_official_model, read_official_checkpoint

        try:
            sd = read_official_checkpoint(path)
        except DataError:
            sd = None
        if sd is None or not is_official_mlore(sd):
            raise exc from None
        model = load_official_model(path, preset, state_dict=sd, **(overrides or {}))
        return model, {}, dict(model.model_args)
    return build_model(ckpt), ckpt.get("meta", {}).get("config", {}), ckpt["model_args"]


def evaluate_checkpoint(checkpoint: str | Path, root: str | Path, split: str = "test",
                        dataset: str | None = None, tasks: list[str] | None = None,
                        out: str | Path | None = None, batch_size: int = 6,
                        workers: int = 0, device: str = "auto", amp: str = "none", edge_workers: int = 2,
                        progress: bool = False, save_dir: str | Path | None = None,
                        crop: tuple[int, int] | None = None, preset: str | None = None,
                        opened: tuple[Any, dict, dict] | None = None, *, nonfinite_as_wrong: bool = False,
                        sal_double_sigmoid: bool = False) -> dict[str, Any]:
    """Rebuild a checkpoint's model (strictly), evaluate it on ``split`` and write ``out`` (flat JSON).

    ``dataset``, ``tasks`` and ``crop`` default to what the checkpoint was trained on; ``tasks`` must be
    among the ones the model predicts. An official MLoRE ``checkpoint.pth.tar`` is accepted too
    (recognised by its key layout; ``preset`` names its release). ``opened`` is :func:`open_checkpoint`'s
    result when the caller has already read the file. ``batch_size`` (≥ 1), ``workers`` (loader processes,
    ≥ 0), ``edge_workers`` (≥ 1) and ``device`` are checked, and ``out``/``save_dir`` made writable, before
    any work. NaN/inf outputs are an error unless ``nonfinite_as_wrong`` (:mod:`densemoe.metrics.evaluate`).
    """
    from densemoe.atomic import make_dirs
    from densemoe.metrics.evaluate import prepare_output, write_metrics
    from densemoe.tasks import tasks_for
    from densemoe.train.distributed import DistInfo, pick_device
    from densemoe.train.evaluation import evaluate
    from densemoe.train.experiment import eval_loader
    from densemoe.validate import Range, check_device

    Range(ge=1).check(batch_size, "batch_size")
    Range(ge=0).check(workers, "workers (data-loader processes)")
    Range(ge=1).check(edge_workers, "edge_workers")
    check_device(device, "device")
    if out is not None:
        prepare_output(out)
    if save_dir is not None:
        make_dirs(save_dir)
    model, config, args = opened or open_checkpoint(checkpoint, preset)
    dataset = dataset or config.get("dataset") or args.get("dataset")
    if dataset is None:
        raise ConfigError(f"checkpoint {checkpoint} does not name its dataset; pass --dataset")
    predicted = list(args.get("tasks") or [])
    extra = [t for t in tasks or () if predicted and t not in predicted]
    if extra:
        raise ConfigError(f"checkpoint {checkpoint} predicts {', '.join(predicted)}, not '{extra[0]}'; "
                          "evaluate only those tasks (--tasks)")
    crop = tuple(crop or config.get("crop") or args.get("img_size"))
    specs = tasks_for(dataset, tasks or args.get("tasks"))
    dev = pick_device(device)
    model = model.to(dev)
    loader = eval_loader(dataset, Path(root), split, list(specs), crop, batch_size, workers)
    metrics, _ = evaluate(model, loader, specs, dataset, DistInfo(device=dev), amp,
                          edge_workers=edge_workers, progress=progress, save_dir=save_dir,
                          nonfinite_as_wrong=nonfinite_as_wrong, sal_double_sigmoid=sal_double_sigmoid)
    if out is not None:
        write_metrics(out, metrics)
    return metrics


#: What makes a checkpoint the model of an experiment: the keys of ``Experiment.config()`` compared.
IDENTITY = ("model", "model_args", "dataset", "tasks", "crop")


def checkpoint_mismatch(exp: Any, opened: tuple[Any, dict, dict]) -> list[str]:
    """How the opened checkpoint (:func:`open_checkpoint`) differs from experiment ``exp`` in what makes
    its model (``IDENTITY``: preset, model args such as dataset, tasks and img_size, dataset, tasks, crop),
    as ``key checkpoint → experiment`` items; empty when it is the experiment's model.

    A checkpoint of ``densemoe train`` is compared on the configuration it stores, as train does on resume
    (the training recipe, ``train.*``, may change between runs and is not compared); one without it (an
    official or converted file) on its preset and the model args that the experiment sets.
    """
    from densemoe.train.experiment import _plain
    from densemoe.train.trainer import config_changes

    model, config, model_args = opened
    want = exp.config()
    if config:
        return config_changes({k: config.get(k) for k in IDENTITY}, {k: want.get(k) for k in IDENTITY})
    diffs = []
    have = getattr(model, "preset", None)
    if have != exp.preset:
        diffs.append(f"model {have!r} → {exp.preset!r}")
    stored = _plain(dict(model_args))
    for key, value in want["model_args"].items():
        if stored.get(key) != value:
            diffs.append(f"model_args.{key} {stored.get(key)!r} → {value!r}")
    return diffs


def cmd_evaluate_checkpoint(args: argparse.Namespace) -> None:
    """``densemoe evaluate --experiment NAME`` (its run's checkpoint) or ``--checkpoint CKPT``.

    With ``--experiment`` the run folder's lock is held throughout (``densemoe/lock.py``: a ``train`` or
    another ``evaluate`` of the same run is a one-line error naming it), and the checkpoint must be the
    experiment's model (:func:`checkpoint_mismatch`), since its metrics are written as the experiment's.
    """
    from contextlib import nullcontext

    from densemoe.atomic import remove_stale
    from densemoe.config import data_root, load_params
    from densemoe.errors import DataError
    from densemoe.lock import FolderLock

    params = load_params(args.params)
    checkpoint, root, dataset, out = args.checkpoint, args.root, args.dataset, args.out
    exp = None
    if args.experiment is not None:
        from densemoe.train.experiment import resolve_experiment

        exp = resolve_experiment(params, args.experiment, runs=args.runs, root=root)
        checkpoint = checkpoint or exp.run_dir / "checkpoint.pt"
        if args.checkpoint is None and not exp.run_dir.exists():  # no lock folder to make for nothing
            raise DataError(f"checkpoint {checkpoint} does not exist; train first "
                            f"(densemoe train --experiment {exp.name})")
        root, dataset = exp.data_root, dataset or exp.dataset
        out = out or exp.run_dir / f"metrics_{args.split}.json"
    lock = nullcontext() if exp is None else FolderLock(exp.run_dir,
                                                        f"densemoe evaluate --experiment {exp.name}")
    with lock:
        if exp is not None:
            remove_stale(exp.run_dir, recursive=False)  # temporaries of killed writers, stale under the lock
        opened = open_checkpoint(checkpoint, args.preset)  # read once, for the defaults and the evaluation
        if exp is not None:
            diffs = checkpoint_mismatch(exp, opened)
            if diffs:
                more = f"; and {len(diffs) - 6} more" if len(diffs) > 6 else ""
                raise ConfigError(
                    f"checkpoint {checkpoint} is not the model of experiment '{exp.name}' (checkpoint → "
                    f"experiment: {'; '.join(diffs[:6])}{more}); re-train it with `densemoe train "
                    f"--experiment {exp.name} --restart`, or evaluate the file on its own with --checkpoint "
                    f"{checkpoint} (without --experiment)")
        else:
            _, config, model_args = opened
            if root is None:
                named = dataset or model_args.get("dataset")
                root = data_root(params, profile=config.get("profile") or params.dataset_profile(named))
            if out is None:
                out = Path(checkpoint).parent / f"metrics_{args.split}.json"
        metrics = evaluate_checkpoint(
            checkpoint, root, args.split, dataset, args.tasks, out, batch_size=args.batch_size,
            workers=args.loader_workers, device=args.device, edge_workers=args.workers,
            progress=_progress(args), save_dir=args.save_predictions, preset=args.preset, opened=opened,
            nonfinite_as_wrong=getattr(args, "nonfinite_as_wrong", False),
            sal_double_sigmoid=getattr(args, "sal_double_sigmoid", False))
    for key, value in metrics.items():
        print(f"{key:<22s} {value:.4f}")
    print(f"wrote {out}")


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``densemoe evaluate`` gains for evaluating a checkpoint (numbers and the device are
    checked by argparse: one usage line and one error line, exit status 2)."""
    from densemoe.validate import arg_device, arg_int

    parser.add_argument("--experiment", default=None, metavar="NAME",
                        help="evaluate the checkpoint of runs/NAME (dataset and data from params.yaml)")
    parser.add_argument("--checkpoint", default=None, metavar="CKPT",
                        help="evaluate this checkpoint (rebuilt from its preset and args, loaded strictly); "
                             "an official MLoRE checkpoint.pth.tar is recognised and converted")
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help="with an official MLoRE checkpoint: the preset it was trained as, e.g. "
                             "mlore_vitl16_pascal")
    parser.add_argument("--runs", default=None, metavar="DIR",
                        help="folder of run folders (default: <repo>/runs)")
    parser.add_argument("--save-predictions", default=None, metavar="DIR",
                        help="with a checkpoint: also write <id>.npz predictions (saved-prediction format)")
    parser.add_argument("--batch-size", type=arg_int(ge=1), default=6,
                        help="with a checkpoint: images per batch (default 6)")
    parser.add_argument("--loader-workers", type=arg_int(ge=0), default=0,
                        help="with a checkpoint: data-loader processes (default 0)")
    parser.add_argument("--device", type=arg_device, default="auto",
                        help="with a checkpoint: auto, cpu, cuda, cuda:N or mps (default auto)")
