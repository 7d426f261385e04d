"""SIGINT/SIGTERM during training: finish the iteration, save a checkpoint, exit 130/143 with one line.

A cluster scheduler (SLURM before the time limit, a pre-emption) sends SIGTERM, a user presses Ctrl-C.
:class:`StopSignals` turns the first of either into a request that the training loop honours at its next
safe point, the end of an iteration; a second signal acts at once, as the default would (the checkpoint
being written is a temporary until renamed, so nothing half-written is ever kept). Under torchrun every
rank folds the request into the loss all-reduce it already does (``Trainer.step``), so all ranks stop after
the same iteration even when only one of them received the signal.

DataLoader workers leave the decision to the main process (:func:`worker_ignores_signals`): they ignore
SIGINT (a terminal's Ctrl-C reaches the whole process group), and on SIGTERM they exit quietly (status 0,
which torch's SIGCHLD handler does not turn into an error in the middle of a step or a save; a SIGTERM
is also how the DataLoader and multiprocessing end their workers). The main process, which got the same
SIGTERM, then sees its loader fail at the next batch, and the trainer saves the last completed iteration.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from densemoe.errors import DensemoeError

#: Exit status of a process stopped by signal ``s`` (the shell's 128 + s).
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(DensemoeError):
    """Training stopped on a signal after saving; re-running the command resumes."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = EXIT_CODES.get(signum, 128 + int(signum))


class StopSignals:
    """``with StopSignals(say) as stop:`` … ``if stop.signum: …``; restores the old handlers on exit.

    Outside the main thread (a notebook's worker thread) signals cannot be caught, and it does nothing.
    """

    def __init__(self, say=None) -> None:
        self.signum: int | None = None
        self.say = say
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for s, old in self._old.items():  # a second signal acts at once
            signal.signal(s, old)
        if self.say is not None:
            self.say(f"received {signal.Signals(signum).name}: stopping after this iteration and saving a "
                     "checkpoint (send it again to stop at once)")

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in EXIT_CODES}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    os._exit(0)


def worker_ignores_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the main process alone decides when to stop (module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)
