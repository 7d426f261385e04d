"""The training loop of the papers' recipe (``specs/mlore.md`` §2), for any registered model.

Like LibMTL's trainer (STYLE §2.1) it imports no particular model: it builds one by name with
``create_model`` and relies only on the contract of DESIGN §4 — ``model(image) → {task: pred}``,
``model.aux_losses()`` (load balancing, weight included) and ``model.routing_stats()``.

Per iteration t (iterations are the unit, not epochs): forward under optional autocast, the losses of
``train/losses.py`` plus the aux losses, backward (through a GradScaler for fp16), global-norm clipping
at 10, Adam with L2 weight decay 1e-6, and the poly learning rate lr·(1 − t/T)^0.9.

Non-finite values never reach a checkpoint: a NaN/inf loss stops the run before the backward pass, a
NaN/inf gradient before the optimizer step (with or without clipping; under fp16 the GradScaler skips
such steps itself), and every save first checks the weights and the optimizer state. Each stops with one
line naming the iteration and what was non-finite; the last checkpoint, which passed that check, is kept.

Every ``eval_every`` iterations and at the end: metrics and routing statistics of the evaluation split;
every ``checkpoint_every``, after each evaluation and at the end: an atomic checkpoint. Re-running the
same command resumes from ``runs/<name>/checkpoint.pt``; on the CPU the resumed run ends with the very
weights of an uninterrupted one (model, optimizer, scheduler, scaler and RNG states are restored, and
the data order and augmentation are functions of the iteration, ``train/experiment.py``). A checkpoint
resumes only the configuration it was trained with, except for the schedule's length ``train.iterations``
(the poly schedule then continues on the new length); any other change is a one-line error naming the
changed keys, with ``--restart`` as the fix. SIGINT/SIGTERM save at the end of the iteration and exit
130/143 (``train/signals.py``). The run folder is locked while a process trains in it (``densemoe/lock.py``).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from densemoe.atomic import remove_stale
from densemoe.errors import ConfigError, DataError, DensemoeError
from densemoe.lock import FolderLock
from densemoe.train import distributed
from densemoe.train.checkpoint import (
    first_non_finite,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from densemoe.train.evaluation import autocast, evaluate, to_device
from densemoe.train.experiment import Experiment, TrainBatches, eval_loader
from densemoe.train.losses import MultiTaskLoss
from densemoe.train.runlog import RunLog
from densemoe.train.signals import Interrupted, StopSignals

log = logging.getLogger("densemoe")
NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token")
#: The configuration keys a checkpoint may resume under changed: the schedule's length.
RESUMABLE_CHANGES = ("train.iterations",)


class TrainingError(DensemoeError, RuntimeError):
    """A run that cannot go on: a non-finite loss, or out of memory."""


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the legacy global RNG, as the official set_seed, for libraries)
    torch.manual_seed(seed)


def param_groups(model: nn.Module, weight_decay: float, decay_norms_and_biases: bool = True) -> list[dict]:
    """The trainable parameters (``requires_grad``) in one group, or two with norms/biases undecayed."""
    params = [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]
    if decay_norms_and_biases:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    skip = [p.ndim <= 1 or n.endswith(".bias") or any(k in n for k in NO_DECAY_NAMES) for n, p in params]
    decay = [p for (_, p), s in zip(params, skip, strict=True) if not s]
    no_decay = [p for (_, p), s in zip(params, skip, strict=True) if s]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def poly_schedule(optimizer: torch.optim.Optimizer, iterations: int, power: float = 0.9):
    """lr_t = lr_0 · (1 − t/T)^power, stepped every iteration (min lr 0)."""
    def factor(t: int) -> float:
        return max(0.0, 1.0 - t / iterations) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or any(
        s in text for s in ("out of memory", "can't allocate memory"))


class Trainer:
    """One run of an :class:`Experiment`; :meth:`run` trains (or resumes) and returns the final metrics.

    ``callback(iteration, row)`` is called on every rank after each iteration (a notebook's live plot;
    tests interrupt runs with it). ``progress`` None = on unless quiet/CI, rank 0 only.
    """

    def __init__(self, exp: Experiment, progress: bool | None = None,
                 callback: Callable[[int, dict], None] | None = None) -> None:
        from densemoe.models import create_model

        self.exp, self.t, self.callback = exp, exp.train, callback
        self.bar: tqdm | None = None
        self.info = distributed.setup(self.t.device)
        self.progress = (not os.environ.get("CI")) if progress is None else progress
        self.progress = self.progress and self.info.is_main
        self.runlog = RunLog(exp.run_dir)
        seed_everything(exp.seed)
        model = create_model(exp.preset, **exp.model_args).to(self.info.device)
        if self.t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model, notes = distributed.wrap(model, self.info, self.t.sync_bn, self.t.find_unused_parameters)
        for note in notes:
            self.say(note)
        groups = param_groups(model, self.t.weight_decay, self.t.decay_norms_and_biases)
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = torch.optim.Adam(groups, lr=self.t.lr, betas=(0.9, 0.999), eps=1e-8)
        self.scheduler = poly_schedule(self.optimizer, self.t.iterations, self.t.poly_power)
        self.scaler = torch.amp.GradScaler(self.info.device.type, enabled=self.t.amp == "fp16")
        self.criterion = MultiTaskLoss(exp.tasks, self.t.loss_weights, exp.edge_w)
        self.iteration = 0
        self.saved_at: int | None = None
        self.stop = StopSignals(self.say)
        self.stop_requested = 0

    def say(self, message: str) -> None:
        if not self.info.is_main:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(message)
        else:
            log.info(message)

    # ------------------------------------------------------------------------------------------------
    # Checkpoints

    def save(self) -> None:
        """A checkpoint of the current iteration, if its weights and optimizer state are finite (checked on
        every rank, which hold the same values, so that all of them stop together)."""
        bad = first_non_finite(self.model, self.optimizer)
        if bad is not None:
            self.diverged(bad, float("nan"), before="saving")
        if self.info.is_main:
            save_checkpoint(self.runlog.checkpoint, self.model, optimizer=self.optimizer,
                            scheduler=self.scheduler, scaler=self.scaler, iteration=self.iteration,
                            meta={"experiment": self.exp.name, "config": self.exp.config(),
                                  "world_size": self.info.world_size}, check_finite=False)
        self.saved_at = self.iteration
        distributed.barrier(self.info)

    def resume(self, restart: bool = False) -> None:
        """Continue from ``checkpoint.pt`` if there is one (or start afresh with ``restart``)."""
        if restart and self.info.is_main:
            self.runlog.clear()
        distributed.barrier(self.info)
        if not self.runlog.checkpoint.is_file():
            if self.info.is_main:
                self.runlog.write_config(self.exp.config())
            return
        try:
            ckpt = load_checkpoint(self.runlog.checkpoint)
        except DataError as exc:
            raise DataError(f"{exc}; re-run with --restart to train afresh") from exc
        self.check_resumable(ckpt)
        load_weights(self.model, ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if (bad := first_non_finite(self.model, self.optimizer)) is not None:  # written by another tool
            raise DataError(f"{self.runlog.checkpoint}: {bad} is NaN/inf; re-run with --restart to train "
                            "afresh")
        set_rng_state(ckpt["rng"])
        self.iteration = self.saved_at = int(ckpt["iteration"])
        # The optimizer's stored lr is the old schedule's; continue the poly schedule of this length.
        for group, lr_at in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas, strict=True):
            group["lr"] = group["initial_lr"] * lr_at(self.iteration)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        if self.info.is_main:
            self.runlog.truncate(self.iteration)
            self.runlog.write_config(self.exp.config())
        self.say(f"{self.exp.name}: resuming from {self.runlog.checkpoint} at iteration {self.iteration}")

    def check_resumable(self, ckpt: dict) -> None:
        """A one-line error unless ``ckpt`` was trained with this configuration, up to its length."""
        where = self.runlog.checkpoint
        changed = config_changes(ckpt.get("meta", {}).get("config", {}), self.exp.config())
        blocking = [c for c in changed if c.split(" ", 1)[0] not in RESUMABLE_CHANGES]
        fix = "re-run with --restart to train afresh (the run's files are replaced), or undo the edit"
        if blocking:
            raise ConfigError(f"{self.exp.name}: the configuration changed since {where} was saved: "
                              f"{'; '.join(blocking)}; {fix}")
        done = int(ckpt["iteration"])
        if done > self.t.iterations:
            raise ConfigError(f"{self.exp.name}: {where} is at iteration {done}, beyond train.iterations "
                              f"{self.t.iterations}; {fix}")
        if changed:
            self.say(f"{self.exp.name}: {changed[0]}: the poly schedule continues on the new length")

    # ------------------------------------------------------------------------------------------------
    # The loop

    def step(self, batch: dict) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """One optimisation step; returns (loss values, their names, grad norm)."""
        batch = to_device(batch, self.info.device, self.t.channels_last)
        with autocast(self.info.device, self.t.amp):
            preds = self.model(batch["image"])
        total, losses = self.criterion(preds, batch)
        aux = unwrap(self.model).aux_losses() if hasattr(unwrap(self.model), "aux_losses") else {}
        total = total + sum(a.float() for a in aux.values())
        names = ["loss", *(f"loss/{k}" for k in losses), *(f"aux/{k}" for k in aux)]
        values = torch.stack([total, *losses.values(), *aux.values()]).detach().float()
        stop = torch.tensor([float(self.stop.signum or 0)], device=values.device)  # signals.py: all ranks
        reduced = distributed.all_reduce_sum(self.info, torch.cat([values, stop]))
        values, self.stop_requested = reduced[:-1] / self.info.world_size, int(reduced[-1].item())
        finite = torch.isfinite(values).tolist()
        if not all(finite):
            bad = next((i for i, ok in enumerate(finite) if not ok and i), 0)
            kind, _, name = names[bad].partition("/")
            what = {"loss": f"the loss of task '{name}'", "aux": f"the auxiliary loss '{name}'"}[kind]
            self.diverged(what if name else "the total loss", values[bad].item())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        if self.t.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.t.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if not self.scaler.is_enabled() and not bool(torch.isfinite(norm)):  # fp16: the scaler skips it
            self.diverged("the gradient norm", norm.item())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():  # fp16: the scaler skips the steps whose gradients overflowed
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()
        return values, names, norm.detach().float()

    def diverged(self, what: str, value: float, before: str = "") -> None:
        """Stop on a non-finite ``what``; the checkpoint on disk passed :func:`first_non_finite`."""
        kept = (f"the last good checkpoint {self.runlog.checkpoint} (iteration {self.saved_at}) is kept"
                if self.saved_at is not None else "no checkpoint was written yet")
        at = f"before saving iteration {self.iteration}" if before else f"at iteration {self.iteration + 1}"
        is_ = "is non-finite" if before else f"is {value}"
        raise TrainingError(f"{self.exp.name}: {what} {is_} {at}; stopped, {kept}; lower train.lr, set "
                            "train.grad_clip, or use train.amp: none")

    def oom(self, exc: BaseException, during: str) -> TrainingError:
        t = self.t
        lower = "train.val_batch_size" if during == "evaluation" else "train.batch_size"
        return TrainingError(
            f"{self.exp.name}: out of memory during {during} at iteration {self.iteration} (batch_size "
            f"{t.batch_size}, val_batch_size {t.val_batch_size} per process, crop {self.exp.crop[0]}x"
            f"{self.exp.crop[1]}, amp {t.amp}); lower {lower}, or set train.amp: bf16 (fp16 on older GPUs)")

    def evaluate(self) -> dict[str, float]:
        distributed.broadcast_buffers(self.model, self.info)
        loader = eval_loader(self.exp, split=self.t.eval_split, batch_size=self.t.val_batch_size,
                             workers=self.t.workers, rank=self.info.rank, world=self.info.world_size)
        try:
            metrics, routing = evaluate(self.model, loader, self.exp.tasks, self.exp.dataset, self.info,
                                        self.t.amp, self.t.channels_last, self.t.edge_workers, self.progress)
        except RuntimeError as exc:
            if _is_oom(exc):
                raise self.oom(exc, "evaluation") from exc
            raise
        if self.info.is_main:
            self.runlog.log_eval(self.iteration, metrics, routing)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            self.say(f"{self.exp.name}: iteration {self.iteration}: {shown}")
        return metrics

    def run(self, restart: bool = False) -> dict[str, float]:
        """Train to ``train.iterations`` (resuming if possible); the metrics of the final evaluation."""
        with self.stop:
            return self._run(restart)

    def _run(self, restart: bool) -> dict[str, float]:
        self.resume(restart)
        T = self.t.iterations
        if self.iteration >= T:
            done = self.runlog.folder / "evals" / f"iter_{self.iteration:06d}.json"
            self.say(f"{self.exp.name}: already trained to iteration {self.iteration} ({self.runlog.folder})")
            if done.is_file():
                return {k: v for k, v in json.loads(done.read_text()).items() if k != "iteration"}
            return self.evaluate()
        batches = TrainBatches(self.exp, self.info.rank, self.info.world_size)
        self.model.train()
        sums: dict[str, float] = {}
        count, tic, metrics = 0, time.perf_counter(), {}
        self.bar = tqdm(total=T, initial=self.iteration, desc=self.exp.name, unit="it",
                        disable=not self.progress, dynamic_ncols=True)
        with self.bar:
            for epoch, batch in self.until_stopped(batches(self.iteration)):
                lr = self.optimizer.param_groups[0]["lr"]
                try:
                    values, names, norm = self.step(batch)
                except RuntimeError as exc:
                    if _is_oom(exc):
                        raise self.oom(exc, "training") from exc
                    raise
                self.iteration += 1
                for n, v in zip([*names, "grad_norm"], [*values.tolist(), float(norm)], strict=True):
                    sums[n] = sums.get(n, 0.0) + v
                count += 1
                self.bar.update()
                self.bar.set_postfix(loss=f"{sums['loss'] / count:.4g}", lr=f"{lr:.3g}", refresh=False)
                means = {k: s / count for k, s in sums.items()}
                row = {"iteration": self.iteration, "epoch": epoch, "lr": lr, **means}
                if self.iteration % self.t.log_every == 0 or self.iteration == T:
                    row["sec_per_it"] = (time.perf_counter() - tic) / count
                    if self.info.is_main:
                        self.runlog.log(row)
                        if self.bar.disable:
                            log.info("%s: it %d/%d loss %.4g lr %.3g %.3f s/it", self.exp.name,
                                     self.iteration, T, row["loss"], lr, row["sec_per_it"])
                    sums, count, tic = {}, 0, time.perf_counter()
                evaluated = False
                if self.iteration == T or (self.t.eval_every and self.iteration % self.t.eval_every == 0):
                    metrics, evaluated = self.evaluate(), True
                if self.iteration == T or evaluated or (
                        self.t.checkpoint_every and self.iteration % self.t.checkpoint_every == 0):
                    self.save()
                if self.callback is not None:
                    self.callback(self.iteration, row)
                if self.iteration >= T:
                    break
                if self.stop_requested:
                    self.interrupt()
        self.bar = None
        return metrics

    def until_stopped(self, batches):
        """``batches``, except that a loader that fails after a stop signal (its workers got the signal too,
        ``train/signals.py``) ends the run as the signal would, at the last completed iteration."""
        while True:
            try:
                item = next(batches)
            except Exception:
                if self.stop.signum:
                    self.interrupt()
                raise
            yield item

    def interrupt(self) -> None:
        """Save at this safe point (the end of an iteration) and stop with the signal's exit status."""
        if self.saved_at != self.iteration:
            self.save()
        name = signal_name(self.stop.signum or self.stop_requested)
        raise Interrupted(f"{self.exp.name}: stopped by {name} after iteration {self.iteration}; the "
                          f"checkpoint {self.runlog.checkpoint} is saved, re-run the same command to resume",
                          self.stop.signum or self.stop_requested)


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``"<key> <old> → <new>"`` for every key of two resolved configurations that differs (nested keys
    dotted; where the run and its data live does not count)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b and key not in ("run_dir", "data_root"):
            out.append(f"{prefix}{key} {a!r} → {b!r}")
    return out


def train(exp: Experiment, progress: bool | None = None, restart: bool = False,
          callback: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Train (or resume) ``exp``; returns the final metrics. Joins/leaves the torchrun group if any.

    The main process holds the run folder's lock throughout, and first removes the temporaries that a
    killed run left there (a checkpoint being written is ``.checkpoint.pt.<random>.tmp``)."""
    owns = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    main = int(os.environ.get("RANK", "0")) == 0
    lock = FolderLock(exp.run_dir, f"densemoe train --experiment {exp.name}") if main else nullcontext()
    try:
        with lock:
            if main:
                for path in remove_stale(exp.run_dir):
                    log.info("%s: removed %s, left by an interrupted run", exp.name, path)
            return Trainer(exp, progress, callback).run(restart)
    finally:
        if owns:
            distributed.teardown()
