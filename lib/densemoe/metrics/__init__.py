"""Metrics of the papers' evaluation protocol (``specs/mlore.md`` §4, ``specs/ecosystem.md`` §5–6).

Every metric streams (LibMTL's ``AbsMetric``; STYLE §2.5): ``update(pred, target, wrong=None)`` with a
batch of model outputs at input resolution and the targets of the sample contract (DESIGN §4), ``compute()``
→ ``{"<task>/<metric>": value}`` with the keys of :class:`~densemoe.tasks.TaskSpec` ``metrics``, and
``reset()``. All state is a dict of sums (:meth:`Metric.state_tensors`), so two meters that saw two
halves of a split merge into the meter of the whole split (:meth:`Metric.merge`), and distributed
evaluation all-reduces them (:func:`all_reduce_`). Every metric is pooled over the dataset, never a mean
of per-image scores, except where the protocol says otherwise (saliency mIoU, boundary OIS).

``wrong`` (``(B, H, W)`` bool) marks pixels to score as wrong whatever their prediction holds; each metric
documents what "wrong" means for it. The meter of :mod:`.evaluate` refuses NaN/inf predictions
(:class:`NonFinitePredictionError`) or, on request, passes them there. A prediction a metric cannot score
(a shape that does not fit, a class out of range) is a :class:`PredictionError`.

Modules: :mod:`.segmentation` (mIoU), :mod:`.saliency` (maxF, mIoU), :mod:`.normals` (angle errors),
:mod:`.depth` (RMSE & co.), :mod:`.boundary` (SEISM odsF/oisF/AP), :mod:`.mtl_gain` (Δm) and
:mod:`.evaluate` (one meter for all tasks, and ``densemoe evaluate`` on saved predictions).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch

from densemoe.errors import ConfigError, DensemoeError


class PredictionError(DensemoeError, ValueError):
    """A prediction the metrics cannot score: a shape that does not fit, a class out of range, NaN/inf."""


class NonFinitePredictionError(PredictionError):
    """Predicted values that are NaN or infinite (a diverged model), refused unless scored as wrong."""


class Metric(ABC):
    """Base of the streaming metrics: named outputs, summable state, merge and reset.

    Subclasses set ``task`` and ``available`` (every metric name they can report), fill
    ``self.state`` with zero tensors in :meth:`reset`, add to it in :meth:`update`, and turn it into
    numbers in :meth:`compute`. ``names`` picks and orders what :meth:`compute` reports; it defaults to
    the task's :class:`~densemoe.tasks.TaskSpec` ``metrics``.
    """

    task: str = ""
    available: tuple[str, ...] = ()

    def __init__(self, names: Iterable[str] | None = None) -> None:
        if names is None:
            from densemoe.tasks import TASKS

            names = TASKS[self.task].metrics
        self.names = tuple(names)
        bad = [n for n in self.names if n not in self.available]
        if bad:
            raise ConfigError(
                f"unknown {self.task} metric '{bad[0]}' (valid: {', '.join(self.available)})"
            )
        self.state: dict[str, torch.Tensor] = {}
        self.reset()

    @abstractmethod
    def update(self, pred: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor | None = None) -> None:
        """Add one batch to the state; ``wrong`` (``(B, H, W)`` bool) pixels count as wrong predictions."""

    def compute(self) -> dict[str, float]:
        values = self._values()
        return {f"{self.task}/{n}": float(values[n]) for n in self.names}

    @abstractmethod
    def _values(self) -> dict[str, float]:
        """Every available metric from the current state (before picking ``names``)."""

    @abstractmethod
    def reset(self) -> None:
        """Empty the state."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The sums this metric is computed from (CPU tensors); summing them across meters merges."""
        return self.state

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the state, e.g. with the all-reduced sums of every process."""
        if set(state) != set(self.state):
            raise ValueError(f"{self.task} state has keys {sorted(self.state)}, got {sorted(state)}")
        self.state = {k: v.detach().to("cpu", self.state[k].dtype).clone() for k, v in state.items()}

    def merge(self, other: Metric) -> Metric:
        """Add ``other``'s sums to this meter (both must be the same kind of metric); returns self."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        mine = self.state_tensors()
        for k, v in other.state_tensors().items():
            mine[k] += v
        return self


def all_reduce_(metric: Metric, device: torch.device | str | None = None) -> None:
    """Sum a metric's state over all processes of ``torch.distributed`` (a no-op when not initialised).

    ``device`` is where the reduction runs (``"cuda"`` for the NCCL backend; CPU by default).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    state = {}
    for k, v in metric.state_tensors().items():
        buf = v.to(device or "cpu")
        dist.all_reduce(buf)
        state[k] = buf
    metric.load_state_tensors(state)


# The metric modules import Metric from here, so they are imported after it is defined.
from densemoe.metrics.boundary import BoundaryMetric  # noqa: E402
from densemoe.metrics.depth import DepthMetric  # noqa: E402
from densemoe.metrics.evaluate import MultiTaskMetrics, build_metrics, evaluate_predictions  # noqa: E402
from densemoe.metrics.mtl_gain import delta_m, delta_m_from_files  # noqa: E402
from densemoe.metrics.normals import NormalsMetric  # noqa: E402
from densemoe.metrics.saliency import SaliencyMetric  # noqa: E402
from densemoe.metrics.segmentation import SegmentationMetric  # noqa: E402

__all__ = [
    "BoundaryMetric", "DepthMetric", "Metric", "MultiTaskMetrics", "NonFinitePredictionError",
    "NormalsMetric", "PredictionError", "SaliencyMetric", "SegmentationMetric", "all_reduce_",
    "build_metrics", "delta_m", "delta_m_from_files", "evaluate_predictions",
]
