"""Typed, validated adaptation parameters, and the command line they become.

:class:`AdaptParameters` is what the panel's Adaptation section holds. It
validates itself (:meth:`AdaptParameters.problems`), round-trips through the
plain string dictionary that ``qt.QSettings`` stores (so the user's choices
persist between sessions, and a damaged or old setting falls back to its
default instead of breaking the panel), and :func:`adapt_command` turns it
into the exact argument list of ``GraTaSegmenterLib.cli adapt``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import choices
from ..choices import DEVICES, LOSSES, METHODS, MODES, PRECISIONS

# The same losses, each list led by its default for the panel's combo boxes.
AUX_LOSSES = LOSSES
PSEUDO_LOSSES = ("consis",) + tuple(name for name in LOSSES if name != "consis")
#: the allowed values of each text parameter, for every front-end (the Slicer panel's combo
#: boxes, the web page's selects) and for :meth:`AdaptParameters.problems`
CHOICES = {"method": METHODS, "aux_loss": AUX_LOSSES, "pseudo_loss": PSEUDO_LOSSES, "mode": MODES,
           "device": DEVICES, "precision": PRECISIONS}
MAX_STEPS = 1000
MAX_SEED = 2**31 - 1

METHOD_DESCRIPTIONS = {
    "grata": "GraTa: aligns the gradients of an auxiliary and a pseudo loss, with a dynamic learning rate",
    "tent": "TENT: minimises the prediction entropy (batch-norm affine parameters)",
    "bn": "BN: re-estimates batch-norm statistics on the image, no gradient step",
    "none": "No adaptation: the source model as it is",
}


class ParameterError(ValueError):
    """Parameters that cannot be run; the message lists every problem."""


@dataclass(frozen=True)
class AdaptParameters:
    method: str = choices.DEFAULT_METHOD
    steps: int = choices.DEFAULT_STEPS
    learning_rate: float = choices.DEFAULT_LR
    aux_loss: str = choices.DEFAULT_AUX_LOSS
    pseudo_loss: str = choices.DEFAULT_PSEUDO_LOSS
    mode: str = choices.DEFAULT_MODE
    device: str = choices.DEFAULT_DEVICE
    precision: str = choices.DEFAULT_PRECISION  # bf16 where the device has it (several times faster in 3D)
    seed: int = choices.DEFAULT_SEED
    uncertainty: bool = False
    postprocess: bool = True  # the model card's anatomical rules

    def problems(self) -> list[str]:
        """Everything wrong, in words the user can act on (empty when valid)."""
        out = []
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                out.append(f"{name.replace('_', ' ')} must be one of {', '.join(allowed)}, not {value!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or not 1 <= self.steps <= MAX_STEPS:
            out.append(f"steps must be a whole number from 1 to {MAX_STEPS}, not {self.steps!r}")
        lr = self.learning_rate
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or not 0 < lr <= 1:
            out.append(f"learning rate must be a number in (0, 1], not {lr!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            out.append(f"seed must be a whole number from 0 to {MAX_SEED}, not {self.seed!r}")
        if self.method == "grata" and self.aux_loss == self.pseudo_loss:
            out.append("GraTa needs two different losses (auxiliary and pseudo); choose another one for one of them")
        return out

    def validated(self) -> "AdaptParameters":
        problems = self.problems()
        if problems:
            raise ParameterError("; ".join(problems))
        return self

    @property
    def uses_gradients(self) -> bool:
        return self.method in ("grata", "tent")

    # -- persistence (qt.QSettings stores strings) --------------------------
    def to_settings(self) -> dict[str, str]:
        return {k: (("true" if v else "false") if isinstance(v, bool) else repr(v) if isinstance(v, float) else str(v))
                for k, v in asdict(self).items()}

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> "AdaptParameters":
        """Read what :meth:`to_settings` wrote; a value that is missing, unreadable
        or invalid keeps its default (settings must never break the panel)."""
        result = cls()
        for f in fields(cls):
            if f.name not in values or values[f.name] is None:
                continue
            raw = values[f.name]
            try:
                if f.type in ("bool", bool):
                    value = raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes", "on")
                elif f.type in ("int", int):
                    value = int(str(raw).strip())
                elif f.type in ("float", float):
                    value = float(str(raw).strip())
                else:
                    value = str(raw)
            except ValueError:
                continue
            candidate = replace(result, **{f.name: value})
            if len(candidate.problems()) <= len(result.problems()):
                result = candidate
        return result


def adapt_command(python: Sequence[str], input_path: str | os.PathLike, output_dir: str | os.PathLike,
                  model_path: str | os.PathLike, params: AdaptParameters, *,
                  save_state: str | os.PathLike | None = None, load_state: str | os.PathLike | None = None,
                  events: bool = True, overwrite: bool = True) -> list[str]:
    """The argument list that runs one adaptation in a child process.

    ``python`` is the interpreter command, e.g. ``[sys.executable]`` or
    ``["/path/to/PythonSlicer"]``. Paths are made absolute so that the working
    directory of the child does not matter.
    """
    params.validated()
    if not python:
        raise ParameterError("no Python interpreter to run the engine with")
    cmd = [*map(str, python), "-m", "GraTaSegmenterLib.cli", "adapt", str(Path(input_path).absolute()),
           "-o", str(Path(output_dir).absolute()), "--model", str(Path(model_path).absolute()),
           "--method", params.method, "--steps", str(params.steps), "--lr", repr(float(params.learning_rate)),
           "--aux-loss", params.aux_loss, "--pseudo-loss", params.pseudo_loss, "--mode", params.mode,
           "--device", params.device, "--precision", params.precision, "--seed", str(params.seed)]
    if save_state is not None:
        cmd += ["--save-state", str(Path(save_state).absolute())]
    if load_state is not None:
        cmd += ["--load-state", str(Path(load_state).absolute())]
    if params.uncertainty:
        cmd.append("--uncertainty")
    if not params.postprocess:
        cmd.append("--no-postprocess")
    if events:
        cmd.append("--events")
    if overwrite:
        cmd.append("--overwrite")
    return cmd


def engine_environment(base: Mapping[str, str], library_parent: str | os.PathLike) -> dict[str, str]:
    """Environment of the child: ``library_parent`` (the folder that holds
    ``GraTaSegmenterLib``) first on ``PYTHONPATH``, unbuffered output so events
    arrive as they are written, and UTF-8 I/O."""
    env = dict(base)
    parent = str(Path(library_parent).absolute())
    old = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != parent]
    env["PYTHONPATH"] = os.pathsep.join([parent, *old])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env
