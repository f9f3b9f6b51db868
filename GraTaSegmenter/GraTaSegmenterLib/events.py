"""The event stream of ``grata-segmenter adapt --events``: the contract with the Slicer module.

One JSON object per line on stdout, flushed per line; nothing else is written
to stdout. Every object has ``event`` (its type) and ``time`` (unix seconds).
:data:`SCHEMA` lists the fields of each event type with their JSON types;
:func:`validate` checks an object against it (used by the tests and usable by
any reader). docs/events.md documents the same schema with examples.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Callable, TextIO

VERSION = 1

NUMBER = (int, float)
NULLABLE_NUMBER = (int, float, type(None))
NULLABLE_STR = (str, type(None))

#: event type -> {field: allowed Python types after json.loads}
SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "start": {"version": (int,), "inputs": (list,), "output_dir": (str,), "model": (str,),
              "model_name": (str,), "method": (str,), "mode": (str,), "device": (str,),
              "steps_per_input": (int,), "total_steps": (int,)},
    "step": {"input_index": (int,), "input": (str,), "step": (int,), "global_step": (int,),
             "total_steps": (int,), "cosine": NULLABLE_NUMBER, "lr": NULLABLE_NUMBER,
             "aux_loss": NULLABLE_NUMBER, "pseudo_loss": NULLABLE_NUMBER, "loss": NULLABLE_NUMBER,
             "seconds": NUMBER, "applied": (bool,), "skipped": NULLABLE_STR},
    "estimate": {"input_index": (int,), "input": (str,), "seconds": NUMBER, "forward_seconds": NUMBER,
                 "prediction_seconds": NUMBER, "device": (str,)},
    "postprocess": {"input_index": (int,), "input": (str,), "segments": (list,)},
    "output": {"input_index": (int,), "input": (str,), "paths": (dict,)},
    "done": {"outputs": (int,), "seconds": NUMBER},
    "error": {"message": (str,), "kind": (str,), "input": NULLABLE_STR},
}
REQUIRED_PATHS = ("labelmap", "segmentation", "steps", "plot")
OPTIONAL_PATHS = ("overlay", "probabilities", "uncertainty", "postprocessing", "state")
MODES = ("episodic", "continual")


def validate(obj: Any) -> list[str]:
    """The problems of one decoded event (empty when it follows the schema)."""
    if not isinstance(obj, dict):
        return ["an event is a JSON object"]
    kind = obj.get("event")
    if kind not in SCHEMA:
        return [f"unknown event {kind!r}"]
    problems = []
    if not isinstance(obj.get("time"), NUMBER) or isinstance(obj.get("time"), bool):
        problems.append("time must be a number (unix seconds)")
    fields = SCHEMA[kind]
    for name, types in fields.items():
        if name not in obj:
            problems.append(f"{kind}: missing field {name!r}")
            continue
        value = obj[name]
        # bool is an int in Python; only fields typed bool accept it.
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            problems.append(f"{kind}: field {name!r} has type {type(value).__name__}")
    extra = set(obj) - set(fields) - {"event", "time"}
    if extra:
        problems.append(f"{kind}: unexpected fields {sorted(extra)}")
    if kind == "start" and not problems:
        if obj["version"] != VERSION:
            problems.append(f"start: version must be {VERSION}")
        if obj["mode"] not in MODES:
            problems.append(f"start: mode must be one of {MODES}")
        if not all(isinstance(p, str) for p in obj["inputs"]):
            problems.append("start: inputs must be strings")
    if kind == "step" and not problems:
        if obj["step"] < 1 or obj["global_step"] < 1 or obj["input_index"] < 0:
            problems.append("step: step and global_step count from 1, input_index from 0")
    if kind == "output" and isinstance(obj.get("paths"), dict):
        paths = obj["paths"]
        missing = [k for k in REQUIRED_PATHS if k not in paths]
        unknown = [k for k in paths if k not in REQUIRED_PATHS + OPTIONAL_PATHS]
        if missing:
            problems.append(f"output: paths lacks {missing}")
        if unknown:
            problems.append(f"output: unknown paths {unknown}")
        if not all(isinstance(v, str) for v in paths.values()):
            problems.append("output: paths must be strings")
    return problems


def json_safe(value: Any) -> Any:
    """JSON has no NaN or Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class EventWriter:
    """Writes events as JSON lines to a stream (stdout by default), one flush per line."""

    def __init__(self, stream: TextIO | None = None, check: bool = False):
        self.stream = stream if stream is not None else sys.stdout
        self.check = check

    def __call__(self, event: str, **fields: Any) -> dict[str, Any]:
        obj = {"event": event, "time": time.time(), **json_safe(fields)}
        if self.check:
            problems = validate(obj)
            if problems:
                raise ValueError("invalid event: " + "; ".join(problems))
        self.stream.write(json.dumps(obj, allow_nan=False) + "\n")
        self.stream.flush()
        return obj


def no_events(event: str, **fields: Any) -> None:
    """The event sink of a run without ``--events``."""


EventSink = Callable[..., Any]
