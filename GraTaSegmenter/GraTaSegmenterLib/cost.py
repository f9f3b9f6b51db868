"""How long will adapting and predicting one volume take? An estimate from one timed forward pass.

A 3D model on a CPU can take many minutes per volume (an nnU-Net 3d_fullres network: about 9 s
per forward pass of a 128^3 window on two cores, over two minutes per GraTa step), so the engine
says so before the work starts: it times one forward pass of one window with the method's own
prediction, then counts the passes the run will make:

* a step, in forward passes: TENT's is one forward and backward pass (:data:`TRAIN_PASS`
  forward passes); GraTa's is two of those (the auxiliary and the pseudo loss) plus one
  forward pass per consistency view (the pseudo-label); ``none`` and ``bn`` take no step;
* the choice of the windows to adapt on: one pass per window when there is more than one;
* the prediction: one pass per window, mirror and fold, as the model predicts.

:data:`TRAIN_PASS` and the view count were measured, not assumed:
``benchmarks/step_cost.py`` on the phantom nnU-Net model (20 x 80 x 80 windows, one CPU thread)
gave forward 0.25 s, TENT step 2.7 forward passes, GraTa step 12.9 (this model of it: 12.4).
Other losses than GraTa's defaults cost about the same. On an H200 (``benchmarks/gpu_figures.py``) a
TENT step was 2.0-2.8 passes and a GraTa step 6.7-16.3 (fewer with the views batched). The estimate
is meant to tell seconds from minutes from hours, not to time a run to the second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch-free at import: the Slicer process reads SLOW_SECONDS and format_duration
    import torch

#: a forward and a backward pass, in forward passes (measured: benchmarks/step_cost.py)
TRAIN_PASS = 2.7
#: runs longer than this on a CPU are announced with a warning in the front-ends
SLOW_SECONDS = 120.0


def step_passes(method: str, views: int) -> float:
    """Forward passes one step of ``method`` costs, with ``views`` consistency views."""
    if method in ("none", "bn"):
        return 0.0
    if method == "tent":
        return TRAIN_PASS
    return 2 * TRAIN_PASS + views  # grata and its ablations


@dataclass(frozen=True)
class Estimate:
    """The expected duration of one volume, and what it was computed from."""

    forward_seconds: float
    steps: int
    passes_per_step: float
    selection_passes: int
    prediction_passes: int
    #: a forward pass of what the steps run on, where it is not a whole window (a crop, where memory
    #: is short): timed too, as a CPU's time does not follow the voxels (on this machine's CPU a
    #: 16 x 64 x 64 crop took 0.38 s against 0.35 s for its 20 x 80 x 80 window)
    step_forward_seconds: float | None = None

    @property
    def prediction_seconds(self) -> float:
        """The whole-volume prediction after the steps (often the larger part, with mirroring)."""
        return self.forward_seconds * self.prediction_passes

    @property
    def seconds(self) -> float:
        step = self.forward_seconds if self.step_forward_seconds is None else self.step_forward_seconds
        return (step * self.steps * self.passes_per_step
                + self.forward_seconds * (self.selection_passes + self.prediction_passes))

    def text(self) -> str:
        parts = [f"a forward pass of one window takes {self.forward_seconds:.2f} s"]
        if self.steps and self.step_forward_seconds is not None:
            parts.append(f"of the steps' crop {self.step_forward_seconds:.2f} s")
        if self.steps:
            parts.append(f"{self.steps} step{'s' if self.steps != 1 else ''} of about "
                         f"{self.passes_per_step:.0f} passes each")
        parts.append(f"prediction {self.prediction_passes} pass{'es' if self.prediction_passes != 1 else ''}")
        return f"about {format_duration(self.seconds)} ({'; '.join(parts)})"


def timed_forward(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Seconds of one ``forward(x)`` (waiting for the device to finish)."""
    import torch

    start = time.perf_counter()
    out = forward(x)
    if out.is_cuda:
        torch.cuda.synchronize(out.device)
    return time.perf_counter() - start


def format_duration(seconds: float) -> str:
    """``"40 s"``, ``"3 min"``, ``"1 h 20 min"``: as precise as an estimate deserves."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
