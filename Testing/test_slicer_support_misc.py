"""Sample manifest, JSON-schema validator, run workspace and continual state (Slicer-free)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from GraTaSegmenterLib.slicer_support import samples
from GraTaSegmenterLib.slicer_support.schema import validate
from GraTaSegmenterLib.slicer_support.workspace import ContinualState, RunWorkspace


def _png(path: Path, payload: bytes) -> str:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + payload)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_is_written_from_the_files_and_read_back(tmp_path):
    a = _png(tmp_path / "phantom_B_0.png", b"b0")
    _png(tmp_path / "phantom_B_0_label.png", b"b0-label")
    _png(tmp_path / "phantom_C_10.png", b"c10")
    _png(tmp_path / "phantom_C_2.png", b"c2")
    (tmp_path / "notes.png").write_bytes(b"ignored")
    written = samples.write_manifest(tmp_path)
    loaded = samples.load_manifest(written)
    assert [s.file for s in loaded] == ["phantom_B_0.png", "phantom_C_2.png", "phantom_C_10.png"]
    assert loaded[0].sha256 == a and loaded[0].centre == "B" and loaded[0].label == "phantom_B_0_label.png"
    assert all(samples.verify(s, tmp_path) == [] for s in loaded)
    (tmp_path / "phantom_C_2.png").write_bytes(b"changed")
    assert samples.verify(loaded[1], tmp_path) == ["phantom_C_2.png does not match its checksum"]


def test_sample_data_sources_use_file_urls_and_sha256_checksums(tmp_path):
    digest = _png(tmp_path / "phantom_D_1.png", b"d1")
    manifest = tmp_path / "index.json"
    manifest.write_text(json.dumps([{"file": "phantom_D_1.png", "sha256": digest, "centre": "D"}]))
    (source,) = samples.sample_data_sources(samples.load_manifest(manifest), tmp_path)
    assert source["uris"] == [(tmp_path / "phantom_D_1.png").as_uri()]
    assert source["checksums"] == [f"SHA256:{digest}"] and source["fileNames"] == ["phantom_D_1.png"]
    assert source["nodeNames"] == ["phantom_D_1"] and source["sampleName"] == "Fundus phantom D #1"
    assert source["loadFileTypes"] == ["VolumeFile"] and source["loadFiles"] == [True]


# Keyword parameters of SampleData.SampleDataLogic.registerCustomSampleDataSource, read from the
# Slicer sources at tags v5.10.0 and v5.12.3 (Modules/Scripted/SampleData/SampleData.py); the same in both.
REGISTER_CUSTOM_SAMPLE_KWARGS = {"category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader",
                                 "thumbnailFileName", "loadFileTypes", "loadFiles", "loadFileProperties",
                                 "checksums", "loadFileType"}


def test_sample_data_sources_fit_slicers_register_call_with_the_label_verified_but_not_loaded(tmp_path):
    image, label = _png(tmp_path / "phantom_C_1.png", b"c1"), _png(tmp_path / "phantom_C_1_label.png", b"l1")
    manifest = tmp_path / "index.json"
    manifest.write_text(json.dumps([{"file": "phantom_C_1.png", "sha256": image, "centre": "C",
                                     "label": "phantom_C_1_label.png", "label_sha256": label}]))
    (source,) = samples.sample_data_sources(samples.load_manifest(manifest), tmp_path, thumbnail="t.png")
    assert set(source) <= REGISTER_CUSTOM_SAMPLE_KWARGS and "loadFileType" not in source  # deprecated there
    lists = ("uris", "fileNames", "nodeNames", "checksums", "loadFiles", "loadFileTypes")
    assert {len(source[k]) for k in lists} == {2}  # SampleDataSource refuses lists of unequal length
    assert source["loadFiles"] == [True, False] and source["checksums"][1] == f"SHA256:{label}"


def test_a_bad_manifest_lists_its_problems(tmp_path):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"samples": [{"file": "../x.png", "sha256": "abc", "centre": "A"}, {"file": "y"}]}))
    with pytest.raises(samples.ManifestError) as info:
        samples.load_manifest(path)
    assert "plain name" in str(info.value) and "64 hex" in str(info.value) and "entry 1" in str(info.value)


def test_the_schema_validator_checks_what_our_schemas_use():
    schema = {"type": "object", "required": ["a"], "additionalProperties": False,
              "properties": {"a": {"type": "integer", "minimum": 1}, "b": {"$ref": "#/definitions/s"}},
              "definitions": {"s": {"type": ["string", "null"], "pattern": "^x"}}}
    assert validate({"a": 1, "b": "xy"}, schema) == []
    assert validate({"a": 1, "b": None}, schema) == []
    problems = validate({"a": 0, "b": "y", "c": 1}, schema)
    assert len(problems) == 3
    assert validate({"a": True}, schema) != []  # a bool is not an integer
    with pytest.raises(NotImplementedError):
        validate({}, {"dependentSchemas": {}})


def test_a_workspace_is_removed_with_everything_in_it(tmp_path):
    with RunWorkspace(tmp_path) as ws:
        ws.output_dir.mkdir()
        (ws.output_dir / "x.seg.nrrd").write_bytes(b"x")
        ws.input_path.write_bytes(b"nrrd")
        root = ws.root
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_continual_state_is_replaced_only_on_success_and_forgotten_on_reset(tmp_path):
    state = ContinualState(tmp_path)
    assert state.load_path() is None and not state.active
    assert not state.commit() and list(tmp_path.iterdir()) == []  # after an episodic run: no folder made
    state.pending_path.write_bytes(b"after case 1")
    assert state.commit() and state.load_path().read_bytes() == b"after case 1"
    state.pending_path.write_bytes(b"half-written by a cancelled run")
    state.discard_pending()
    assert state.load_path().read_bytes() == b"after case 1" and not state.commit()
    state.reset()
    assert state.load_path() is None and list(tmp_path.iterdir()) == [] and state.runs == 0


def test_continual_state_restarts_when_the_model_or_method_changes(tmp_path):
    state = ContinualState(tmp_path)
    assert not state.follow(("/m/a.safetensors", "grata"))  # nothing to forget yet
    state.pending_path.write_bytes(b"grata on a")
    state.commit()
    assert not state.follow(("/m/a.safetensors", "grata")) and state.active  # same model and method: continue
    assert state.follow(("/m/a.safetensors", "tent")) and not state.active  # another method: from the source
    state.pending_path.write_bytes(b"tent on a")
    state.commit()
    assert state.follow(("/m/b.safetensors", "tent")) and state.load_path() is None
