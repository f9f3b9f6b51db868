"""The --events stream parser and the progress it drives (Slicer-free)."""

from __future__ import annotations

import json

from GraTaSegmenterLib.slicer_support.events import EventParser, RunProgress, format_seconds, parse_line


def line(**obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


def test_events_are_parsed_only_when_their_line_is_complete():
    p = EventParser()
    data = line(event="start", time=0.0, total_steps=3) + line(event="step", time=1.0, global_step=1)
    events = []
    for i in range(len(data)):  # one byte at a time: the worst a pipe can do
        events += p.feed(data[i:i + 1])
    assert [e.kind for e in events] == ["start", "step"]
    assert events[0].get("total_steps") == 3


def test_a_multibyte_character_split_between_chunks_is_decoded():
    p = EventParser()
    data = line(event="error", time=0, message="entrée ümlaut")
    cut = data.index("é".encode()) + 1
    assert p.feed(data[:cut]) == []
    (event,) = p.feed(data[cut:])
    assert event.get("message") == "entrée ümlaut"


def test_non_event_lines_become_log_events_and_blank_lines_vanish():
    p = EventParser()
    events = p.feed(b"Warning: something\n\n{not json\n" + line(foo=1))
    assert [e.kind for e in events] == ["log", "log", "log"]
    assert events[0].get("message") == "Warning: something"


def test_close_flushes_a_last_line_without_newline():
    p = EventParser()
    assert p.feed(b'{"event": "done", "time": 2, "seconds": 2.5}') == []
    (event,) = p.close()
    assert event.kind == "done"
    assert parse_line("   ") is None


def test_progress_counts_steps_estimates_time_left_and_collects_plot_points():
    prog = RunProgress()
    assert prog.fraction == 0.0 and prog.seconds_left() is None
    prog.update(parse_line(json.dumps({"event": "start", "time": 0, "version": 1, "total_steps": 4,
                                       "steps_per_input": 4, "inputs": ["a.nrrd"], "device": "cpu"})))
    for step in (1, 2):
        prog.update(parse_line(json.dumps({"event": "step", "time": step, "global_step": step, "total_steps": 4,
                                           "cosine": 0.5 * step, "lr": 1e-4, "seconds": 2.0})))
    assert prog.fraction == 0.5
    assert prog.seconds_left() == 4.0
    assert prog.plot_steps == [1, 2] and prog.plot_cosine == [0.5, 1.0] and prog.plot_lr == [1e-4, 1e-4]
    assert "Step 2/4" in prog.status_text() and "4 s left" in prog.status_text()
    prog.update(parse_line(json.dumps({"event": "output", "time": 3, "input_index": 0, "input": "a.nrrd",
                                       "paths": {"segmentation": "/o/a.seg.nrrd"}})))
    prog.update(parse_line(json.dumps({"event": "done", "time": 4, "outputs": [], "seconds": 8})))
    assert prog.done and prog.fraction == 1.0 and prog.seconds_left() == 0.0
    assert prog.outputs[0]["segmentation"] == "/o/a.seg.nrrd"


def test_a_step_without_cosine_plots_a_gap_not_a_crash():
    prog = RunProgress()
    prog.update(parse_line(json.dumps({"event": "step", "global_step": 1, "cosine": None, "lr": "nan"})))
    assert prog.plot_cosine == [None] and prog.plot_lr == [None]


def test_error_event_is_kept_for_the_message():
    prog = RunProgress()
    prog.update(parse_line(json.dumps({"event": "error", "message": "bad image", "kind": "InputError"})))
    assert prog.error == {"message": "bad image", "kind": "InputError", "input": None}
    assert prog.status_text() == "InputError: bad image"


def test_format_seconds():
    assert format_seconds(5.4) == "5 s"
    assert format_seconds(125) == "2 min 05 s"
    assert format_seconds(3 * 3600 + 60) == "3 h 01 min"
    assert format_seconds(None) == "?"


def test_post_processing_reports_reach_the_panel():
    progress = RunProgress()
    line = json.dumps({"event": "postprocess", "time": 1.0, "input_index": 0, "input": "eye.png",
                       "segments": [{"segment": "optic disc", "text": "optic disc: 14 islands removed"},
                                    {"segment": "optic cup", "text": "optic cup: unchanged"}]})
    progress.update(parse_line(line))
    assert progress.postprocess == ["optic disc: 14 islands removed", "optic cup: unchanged"]
