"""Training: the papers' recipe for any registered model (``specs/mlore.md`` §2).

>>> from densemoe.config import load_params
>>> from densemoe.train import resolve_experiment, train
>>> exp = resolve_experiment(load_params(), "mlore_tiny_synth_pascal")   # doctest: +SKIP
>>> metrics = train(exp)            # runs/mlore_tiny_synth_pascal/, resumes if re-run  # doctest: +SKIP

Modules: :mod:`.losses` (official losses and weights), :mod:`.experiment` (params → run, resumable
loaders), :mod:`.trainer` (the loop), :mod:`.evaluation` (metrics + routing statistics),
:mod:`.checkpoint` (atomic, strict, rebuildable), :mod:`.distributed` (torchrun/DDP), :mod:`.runlog`
(the run folder's files) and :mod:`.commands` (``densemoe train`` and checkpoint evaluation).
"""

from densemoe.train.checkpoint import build_model, load_checkpoint, save_checkpoint
from densemoe.train.evaluation import evaluate
from densemoe.train.experiment import Experiment, resolve_experiment
from densemoe.train.losses import LOSS_WEIGHTS, MultiTaskLoss
from densemoe.train.trainer import Trainer, TrainingError, train

__all__ = [
    "LOSS_WEIGHTS", "Experiment", "MultiTaskLoss", "Trainer", "TrainingError", "build_model", "evaluate",
    "load_checkpoint", "resolve_experiment", "save_checkpoint", "train",
]
