"""The ``--events`` stream of ``GraTaSegmenterLib.cli adapt``, read as it arrives.

The command line writes one JSON object per line on stdout, each with an
``"event"`` (``start``, ``estimate``, ``step``, ``output``, ``done``, ``error``) and a
``"time"``. A pipe delivers arbitrary chunks, so :class:`EventParser` keeps
the unfinished tail of the last line until its newline arrives, and decodes
UTF-8 incrementally (a multi-byte character may be split between chunks).
Lines that are not event objects (a stray ``print``, a warning) become
``log`` events instead of errors: the run goes on and the line is shown.

:class:`RunProgress` folds the events into what the panel shows: the
fraction done, the time left, the plot series (cosine similarity and
learning rate against the global step) and the outputs.
"""

from __future__ import annotations

import codecs
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..cost import SLOW_SECONDS, format_duration

PROTOCOL_VERSION = 1
EVENT_KINDS = ("start", "estimate", "step", "postprocess", "output", "done", "error")
LOG = "log"


@dataclass(frozen=True)
class Event:
    """One line of the stream. ``kind`` is the ``"event"`` field, or ``"log"``
    for a line that is not an event object (then ``data == {"message": line}``)."""

    kind: str
    data: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def parse_line(line: str) -> Event | None:
    """Parse one complete line; ``None`` for a blank line."""
    text = line.strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("event"), str):
            return Event(obj["event"], obj)
    return Event(LOG, {"message": text})


class EventParser:
    """Line-buffered, incremental parser: ``feed`` chunks, get complete events.

    >>> p = EventParser()
    >>> p.feed(b'{"event": "st')
    []
    >>> [e.kind for e in p.feed(b'art", "time": 0}\\n')]
    ['start']
    """

    def __init__(self, max_line: int = 1 << 20):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._max_line = max_line

    def feed(self, chunk: bytes | str) -> list[Event]:
        text = self._decoder.decode(chunk) if isinstance(chunk, (bytes, bytearray)) else chunk
        self._buffer += text
        events = []
        while True:
            newline = self._buffer.find("\n")
            if newline < 0:
                break
            line, self._buffer = self._buffer[:newline], self._buffer[newline + 1:]
            event = parse_line(line)
            if event is not None:
                events.append(event)
        if len(self._buffer) > self._max_line:  # a runaway line without newline: show it, do not grow forever
            events.append(Event(LOG, {"message": self._buffer[:200] + " ... (line too long, cut)"}))
            self._buffer = ""
        return events

    def close(self) -> list[Event]:
        """Flush: the last line may lack its newline when the process ends."""
        self._buffer += self._decoder.decode(b"", final=True)
        line, self._buffer = self._buffer, ""
        event = parse_line(line)
        return [event] if event is not None else []

    @property
    def pending(self) -> str:
        """The unfinished last line (for diagnostics)."""
        return self._buffer


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass
class RunProgress:
    """What the events of one run say so far (see the module docstring)."""

    total_steps: int = 0
    global_step: int = 0
    steps_per_input: int = 0
    inputs: list[str] = field(default_factory=list)
    device: str = ""
    model_name: str = ""
    method: str = ""
    plot_steps: list[int] = field(default_factory=list)
    plot_cosine: list[float | None] = field(default_factory=list)
    plot_lr: list[float | None] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    started: bool = False
    done: bool = False
    seconds: float | None = None
    error: dict[str, Any] | None = None
    version: int | None = None
    postprocess: list[str] = field(default_factory=list)  # what the card's rules did, one text per segment
    estimate_seconds: float | None = None  # the engine's estimate for the run, from its first volume
    prediction_seconds: float | None = None  # the part of it that is one volume's prediction after its steps

    def update(self, event: Event) -> None:
        kind = event.kind
        if kind == "start":
            self.started = True
            self.version = event.get("version")
            self.total_steps = int(event.get("total_steps") or 0)
            self.steps_per_input = int(event.get("steps_per_input") or 0)
            self.inputs = list(event.get("inputs") or [])
            self.device = str(event.get("device") or "")
            self.model_name = str(event.get("model_name") or "")
            self.method = str(event.get("method") or "")
        elif kind == "step":
            step = int(event.get("global_step") or (self.global_step + 1))
            self.global_step = max(self.global_step, step)
            if event.get("total_steps"):
                self.total_steps = int(event.get("total_steps"))
            self.plot_steps.append(step)
            self.plot_cosine.append(_number(event.get("cosine")))
            self.plot_lr.append(_number(event.get("lr")))
            seconds = _number(event.get("seconds"))
            if seconds is not None and seconds >= 0:
                self.step_seconds.append(seconds)
        elif kind == "estimate":
            seconds = _number(event.get("seconds"))
            if seconds is not None and self.estimate_seconds is None:
                # the first volume's estimate, for all of them (the volumes of one run are alike)
                self.estimate_seconds = seconds * max(1, len(self.inputs))
            prediction = _number(event.get("prediction_seconds"))
            if prediction is not None and prediction >= 0 and self.prediction_seconds is None:
                self.prediction_seconds = prediction
        elif kind == "postprocess":
            self.postprocess.extend(str(s.get("text", "")) for s in event.get("segments") or []
                                    if isinstance(s, dict))
        elif kind == "output":
            self.outputs.append(dict(event.get("paths") or {}, input=event.get("input"),
                                     input_index=event.get("input_index")))
        elif kind == "done":
            self.done = True
            self.seconds = _number(event.get("seconds"))
        elif kind == "error":
            self.error = {"message": str(event.get("message") or "unknown error"),
                          "kind": str(event.get("kind") or "Error"), "input": event.get("input")}

    @property
    def fraction(self) -> float:
        """Share of the steps done, in [0, 1]; 1 when done."""
        if self.done:
            return 1.0
        if self.total_steps <= 0:
            return 0.0
        return min(1.0, self.global_step / self.total_steps)

    def seconds_left(self) -> float | None:
        """Estimated time left: the steps to come at the mean of the recent step times, and, for a
        model whose whole-volume prediction was estimated (nnU-Net, MONAI), the predictions of the
        volumes not yet written; None before the first step."""
        if self.done:
            return 0.0
        if not self.step_seconds or self.total_steps <= 0:
            return None
        recent = self.step_seconds[-10:]
        left = max(0, self.total_steps - self.global_step) * (sum(recent) / len(recent))
        if self.prediction_seconds is not None:
            left += max(0, max(1, len(self.inputs)) - len(self.outputs)) * self.prediction_seconds
        return left

    def status_text(self) -> str:
        if self.error:
            return f"{self.error['kind']}: {self.error['message']}"
        if self.done:
            return "Done" + (f" in {format_seconds(self.seconds)}" if self.seconds is not None else "")
        if not self.started:
            return "Starting (loading the model)..."
        text = f"Step {self.global_step}/{self.total_steps}"
        left = self.seconds_left()
        if left is not None:
            text += f", {format_seconds(left)} left"
        elif self.estimate_seconds is not None:
            text += f", about {format_duration(self.estimate_seconds)} in all (estimated)"
        return text

    def slow_warning(self) -> str | None:
        """A warning for a run estimated to take minutes on a CPU, with what to do; else None."""
        if self.estimate_seconds is None or self.estimate_seconds < SLOW_SECONDS or not self.device.startswith("cpu"):
            return None
        return (f"This run will take about {format_duration(self.estimate_seconds)} on the CPU (no GPU is in use). "
                f"Cancel stops it and leaves the scene as it was; fewer steps, or a computer with a CUDA GPU, "
                f"make it faster.")


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
