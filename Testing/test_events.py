"""The event schema (docs/events.md) and its validator."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from GraTaSegmenterLib.events import SCHEMA, EventWriter, validate

DOC = Path(__file__).resolve().parents[1] / "docs" / "events.md"


def test_every_example_in_the_docs_validates():
    text = DOC.read_text(encoding="utf-8")
    examples = [json.loads(line) for line in re.findall(r"^(\{\"event\".*\})$", text, flags=re.M)]
    assert {e["event"] for e in examples} == set(SCHEMA)
    for e in examples:
        assert validate(e) == [], e


def test_documented_fields_match_the_schema():
    text = DOC.read_text(encoding="utf-8")
    for event, fields in SCHEMA.items():
        for name in fields:
            assert f"`{name}`" in text, (event, name)


def test_writer_adds_time_and_flushes_one_line_per_event():
    stream = io.StringIO()
    emit = EventWriter(stream, check=True)
    emit("done", outputs=2, seconds=1.5)
    emit("error", message="x is constant; choose another image", kind="InputError", input=None)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["event"] == "done" and isinstance(first["time"], float)


def test_non_finite_numbers_become_null():
    stream = io.StringIO()
    EventWriter(stream)("step", input_index=0, input="a.png", step=1, global_step=1, total_steps=1,
                        cosine=float("nan"), lr=0.0, aux_loss=float("inf"), pseudo_loss=None, loss=None,
                        seconds=0.1, applied=False, skipped="non-finite loss")
    obj = json.loads(stream.getvalue())
    assert obj["cosine"] is None and obj["aux_loss"] is None and validate(obj) == []


@pytest.mark.parametrize("bad,problem", [
    ({"event": "done", "time": 1.0, "outputs": 1}, "missing field 'seconds'"),
    ({"event": "done", "time": 1.0, "outputs": True, "seconds": 1}, "'outputs' has type bool"),
    ({"event": "done", "time": 1.0, "outputs": 1, "seconds": 1, "extra": 0}, "unexpected fields"),
    ({"event": "nope", "time": 1.0}, "unknown event"),
    ({"event": "output", "time": 1.0, "input_index": 0, "input": "a", "paths": {"labelmap": "x"}}, "paths lacks"),
    ({"event": "error", "message": "m", "kind": "InputError", "input": None}, "time must be"),
])
def test_validator_rejects(bad, problem):
    assert any(problem in p for p in validate(bad)), validate(bad)


def test_writer_refuses_invalid_events_when_checking():
    with pytest.raises(ValueError):
        EventWriter(io.StringIO(), check=True)("done", outputs=1)
