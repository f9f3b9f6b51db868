"""Model catalog, downloads with checksums (against a local HTTP server), cache, model cards."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from functools import partial
from pathlib import Path

import pytest

from GraTaSegmenterLib.slicer_support import catalog as cat

RESOURCES = Path(__file__).resolve().parents[1] / "GraTaSegmenter" / "Resources" / "Models"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    (root / "model.bin").write_bytes(b"weights" * 1000)
    handler = partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hashlib.sha256(b"weights" * 1000).hexdigest()
    httpd.shutdown()


def entry(url, sha, **kw):
    values = dict(id="m1", name="M", kind="download", description="", source_domain="X", input_size=(8, 8),
                  file="model.bin", url=url, sha256=sha)
    values.update(kw)
    return cat.ModelEntry(**values)


def test_the_shipped_catalog_is_valid_and_has_a_bundled_default():
    entries = cat.load_catalog(RESOURCES / "catalog.json", RESOURCES / "catalog.schema.json")
    assert entries[0].kind == "bundled"
    assert "Source domain" in entries[0].tooltip()
    # one authors' checkpoint per source domain of the paper's fundus benchmark (their run.sh)
    reference = [e for e in entries if e.kind == "reference"]
    assert [e.source_domain for e in reference] == ["RIM-ONE r3", "REFUGE (training set)", "ORIGA",
                                                    "REFUGE (validation set)", "Drishti-GS"]
    for e, folder in zip(reference, ("RIM_ONE_r3", "REFUGE", "ORIGA", "REFUGE_Valid", "Drishti_GS")):
        assert e.homepage == "https://github.com/Chen-Ziyang/GraTa" and e.url.startswith("https://drive.google.com/")
        assert f"models/{folder}/last-Res_Unet.pth" in e.tooltip() and e.input_size == (512, 512)


def test_catalog_problems_are_listed(tmp_path):
    bad = {"version": 1, "models": [
        {"id": "a", "name": "A", "kind": "download", "description": "", "source_domain": "S", "input_size": None,
         "file": "a.bin", "url": "https://x/a.bin"},
        {"id": "a", "name": "B", "kind": "teleport", "description": "", "source_domain": "S", "input_size": None,
         "file": "../b.bin"}]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(cat.CatalogError) as info:
        cat.load_catalog(path, RESOURCES / "catalog.schema.json")
    text = str(info.value)
    assert "sha256" in text and "teleport" in text and "b.bin" in text
    # without the schema the semantic checks still catch them
    with pytest.raises(cat.CatalogError, match="duplicate model id"):
        cat.load_catalog(path)


def test_download_verifies_the_checksum_and_reports_progress(server, tmp_path):
    url, sha = server
    seen = []
    path = cat.download_file(f"{url}/model.bin", tmp_path / "d" / "model.bin", sha,
                             progress=lambda done, total: seen.append((done, total)), chunk_size=1000)
    assert path.read_bytes() == b"weights" * 1000
    assert seen[0] == (0, 7000) and seen[-1] == (7000, 7000) and len(seen) > 3
    assert not list(tmp_path.rglob("*.part"))


def test_a_wrong_checksum_leaves_nothing_behind(server, tmp_path):
    url, _ = server
    with pytest.raises(cat.ChecksumError, match="not the published one"):
        cat.download_file(f"{url}/model.bin", tmp_path / "model.bin", "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_unreachable_host_and_cancel_are_download_errors(server, tmp_path):
    url, sha = server
    with pytest.raises(cat.DownloadError, match="404|Not Found"):
        cat.download_file(f"{url}/nope.bin", tmp_path / "x.bin", sha)
    with pytest.raises(cat.DownloadError, match="could not download"):
        cat.download_file("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", sha, timeout=2)
    with pytest.raises(cat.DownloadCancelled):
        cat.download_file(f"{url}/model.bin", tmp_path / "x.bin", sha, progress=lambda d, t: d < 2000,
                          chunk_size=1000)
    with pytest.raises(cat.DownloadError, match="unverified"):
        cat.download_file(f"{url}/model.bin", tmp_path / "x.bin", None)
    assert list(tmp_path.iterdir()) == []


def test_cache_downloads_once_then_serves_offline_and_clears(server, tmp_path):
    url, sha = server
    cache = cat.ModelCache(tmp_path / "cache")
    e = entry(f"{url}/model.bin", sha)
    assert not cache.is_cached(e) and cache.size_bytes() == 0
    path = cache.fetch(e)
    assert path == tmp_path / "cache" / "m1" / "model.bin" and cache.is_cached(e, verify=True)
    offline = entry("http://127.0.0.1:9/model.bin", sha)
    assert cache.fetch(offline) == path  # no network needed any more
    assert cache.size_bytes() == 7000
    assert cache.clear() == 7000 and not cache.is_cached(e)


def test_resolve_model_for_each_kind(tmp_path):
    bundled_dir = tmp_path / "weights"
    bundled_dir.mkdir()
    (bundled_dir / "b.safetensors").write_bytes(b"x")
    cache = cat.ModelCache(tmp_path / "cache")
    b = entry(None, None, kind="bundled", file="b.safetensors")
    assert cat.resolve_model(b, bundled_dir=bundled_dir, cache=cache) == bundled_dir / "b.safetensors"
    with pytest.raises(cat.ChecksumError):
        cat.resolve_model(entry(None, "1" * 64, kind="bundled", file="b.safetensors"), bundled_dir=bundled_dir,
                          cache=cache)
    r = entry("https://github.com/Chen-Ziyang/GraTa", None, kind="reference", file="last-Res_Unet.pth")
    with pytest.raises(cat.DownloadError, match="select the downloaded checkpoint"):
        cat.resolve_model(r, bundled_dir=bundled_dir, cache=cache)
    user = tmp_path / "mine.pth"
    user.write_bytes(b"x")
    assert cat.resolve_model(r, bundled_dir=bundled_dir, cache=cache, user_file=user) == user


def test_model_card_is_read_from_a_model_file_without_torch(tmp_path):
    from conftest import fundus_card
    from GraTaSegmenterLib.models import build_network, save_model

    card = fundus_card()
    path = save_model(build_network(card), card, tmp_path / "m.safetensors")
    read = cat.read_safetensors_card(path)
    assert read["name"] == "tiny fundus unet"
    text = cat.card_text(read)
    assert "optic disc (label 1)" in text and "optic cup (label 2)" in text and "32x32" in text
    (tmp_path / "junk.pth").write_bytes(b"PK\x03\x04 not a safetensors file")
    assert cat.read_safetensors_card(tmp_path / "junk.pth") is None
    assert cat.read_safetensors_card(tmp_path / "missing") is None
