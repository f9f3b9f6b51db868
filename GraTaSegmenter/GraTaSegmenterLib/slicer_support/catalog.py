"""The model catalog, downloads with checksums, and the download cache.

The catalog (``Resources/Models/catalog.json``, checked against
``catalog.schema.json``) lists the models the panel offers. Each entry has a
``kind``:

* ``bundled`` -- ships with the extension (``file`` inside
  ``GraTaSegmenterLib/models/weights``); works offline;
* ``reference`` -- a checkpoint of the GraTa authors' code, published on
  their page (``url``); the user downloads it there and points the panel at
  the file (licence and hosting are theirs, so it is not fetched for them);
* ``download`` -- fetched from ``url`` into the cache on first use and
  verified against ``sha256`` before use.

Downloads go to ``<cache>/<id>/<file>`` through a ``.part`` file that is
renamed into place only after the SHA-256 matches, so an interrupted or
tampered download is never used.

The model card of a project model file (``.safetensors``) is read from the
file header with the standard library only: no torch in the Slicer process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .schema import validate

KINDS = ("bundled", "reference", "download")
_SHA256_HEX = set("0123456789abcdef")


class CatalogError(ValueError):
    """The catalog file is not valid."""


class DownloadError(RuntimeError):
    """A download failed; the message says why and what to do."""


class ChecksumError(DownloadError):
    """The downloaded file is not the published one."""


class DownloadCancelled(DownloadError):
    """The user cancelled the download."""


@dataclass(frozen=True)
class ModelEntry:
    id: str
    name: str
    kind: str
    description: str
    source_domain: str
    input_size: tuple[int, ...] | None
    file: str
    url: str | None = None
    sha256: str | None = None
    homepage: str | None = None
    license: str | None = None

    def tooltip(self) -> str:
        size = "x".join(map(str, self.input_size)) if self.input_size else "any"
        lines = [self.name, self.description, f"Source domain: {self.source_domain}", f"Input size: {size}"]
        if self.kind == "reference":
            lines.append(f"Download the file '{self.file}' from {self.url} and select it below.")
        elif self.kind == "download":
            lines.append(f"Downloaded on first use from {self.url} (SHA-256 {self.sha256[:12]}...)")
        if self.license:
            lines.append(f"License: {self.license}")
        return "\n".join(line for line in lines if line)


def load_catalog(path: str | os.PathLike, schema_path: str | os.PathLike | None = None) -> list[ModelEntry]:
    """Read and check a catalog; raises :class:`CatalogError` listing every problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"cannot read the model catalog {path}: {exc}") from None
    problems = []
    if schema_path is not None:
        schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
        problems += validate(data, schema)
    if problems:
        raise CatalogError(f"the model catalog {path.name} is invalid: " + "; ".join(problems))
    entries = [_entry(m) for m in data.get("models", [])]
    problems += catalog_problems(entries)
    if problems:
        raise CatalogError(f"the model catalog {path.name} is invalid: " + "; ".join(problems))
    return entries


def _entry(m: dict[str, Any]) -> ModelEntry:
    size = m.get("input_size")
    return ModelEntry(id=m["id"], name=m["name"], kind=m["kind"], description=m.get("description", ""),
                      source_domain=m.get("source_domain", ""), input_size=tuple(size) if size else None,
                      file=m["file"], url=m.get("url"), sha256=(m.get("sha256") or None),
                      homepage=m.get("homepage"), license=m.get("license"))


def catalog_problems(entries: Iterable[ModelEntry]) -> list[str]:
    """Checks a schema cannot express: unique ids, what each kind needs."""
    problems, seen = [], set()
    for e in entries:
        if e.id in seen:
            problems.append(f"duplicate model id '{e.id}'")
        seen.add(e.id)
        if e.kind not in KINDS:
            problems.append(f"{e.id}: kind must be one of {KINDS}")
        if e.kind in ("download", "reference") and not e.url:
            problems.append(f"{e.id}: a {e.kind} model needs a url")
        if e.kind == "download" and not is_sha256(e.sha256):
            problems.append(f"{e.id}: a download model needs its sha256 (64 hex digits)")
        if e.sha256 is not None and not is_sha256(e.sha256):
            problems.append(f"{e.id}: sha256 must be 64 lowercase hex digits")
        if Path(e.file).name != e.file or e.file in ("", ".", ".."):
            problems.append(f"{e.id}: file must be a plain file name, not a path")
    return problems


def is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _SHA256_HEX


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# -- downloads ---------------------------------------------------------------

ProgressCallback = Callable[[int, int | None], bool | None]
"""``progress(bytes_done, bytes_total_or_None)``; return False to cancel."""


def download_file(url: str, destination: str | os.PathLike, sha256: str, *,
                  progress: ProgressCallback | None = None, timeout: float = 30.0,
                  chunk_size: int = 1 << 16) -> Path:
    """Download ``url`` to ``destination``, verifying its SHA-256.

    The data goes to ``destination + ".part"``; only a complete file whose
    checksum matches is renamed to ``destination``. On any failure the part
    file is removed and a :class:`DownloadError` (or subclass) is raised.
    """
    if not is_sha256(sha256):
        raise DownloadError(f"no valid SHA-256 to verify {url} against; refusing to download it unverified")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256()
    done = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "GraTaSegmenter"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress is not None and progress(0, total) is False:
                raise DownloadCancelled("download cancelled")
            while True:
                block = response.read(chunk_size)
                if not block:
                    break
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress is not None and progress(done, total) is False:
                    raise DownloadCancelled("download cancelled")
        if total is not None and done != total:
            raise DownloadError(f"the download of {url} stopped after {done} of {total} bytes; try again")
        actual = digest.hexdigest()
        if actual != sha256:
            raise ChecksumError(f"the file downloaded from {url} is not the published one (SHA-256 {actual}, "
                                f"expected {sha256}); it was deleted. Try again later or report it.")
        os.replace(part, destination)
        return destination
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        reason = f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) \
            else getattr(exc, "reason", exc)
        raise DownloadError(f"could not download {url}: {reason}. Check the network connection "
                            f"(or download the file yourself and select it as 'any model file').") from None


class ModelCache:
    """The folder downloaded models are kept in (``<root>/<entry id>/<file>``)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, entry: ModelEntry) -> Path:
        return self.root / entry.id / entry.file

    def is_cached(self, entry: ModelEntry, verify: bool = False) -> bool:
        path = self.path(entry)
        if not path.is_file():
            return False
        return not verify or (entry.sha256 is not None and file_sha256(path) == entry.sha256)

    def fetch(self, entry: ModelEntry, progress: ProgressCallback | None = None, timeout: float = 30.0) -> Path:
        """The cached file of a ``download`` entry, downloading it first if needed."""
        if entry.kind != "download":
            raise DownloadError(f"{entry.name} is not a downloadable model")
        if self.is_cached(entry):
            return self.path(entry)
        return download_file(entry.url, self.path(entry), entry.sha256, progress=progress, timeout=timeout)

    def size_bytes(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def clear(self) -> int:
        """Remove every cached model; returns the bytes freed."""
        freed = self.size_bytes()
        if self.root.is_dir():
            shutil.rmtree(self.root, ignore_errors=True)
        return freed


def resolve_model(entry: ModelEntry, *, bundled_dir: str | os.PathLike, cache: ModelCache,
                  user_file: str | os.PathLike | None = None, progress: ProgressCallback | None = None) -> Path:
    """The model file to run for a catalog entry (downloading if needed)."""
    if entry.kind == "bundled":
        path = Path(bundled_dir) / entry.file
        if not path.is_file():
            raise DownloadError(f"the bundled model {path} is missing; reinstall the GraTaSegmenter extension")
        if entry.sha256 and file_sha256(path) != entry.sha256:
            raise ChecksumError(f"the bundled model {path} is damaged (checksum mismatch); reinstall the extension")
        return path
    if entry.kind == "reference":
        if not user_file or not Path(user_file).is_file():
            raise DownloadError(f"select the downloaded checkpoint '{entry.file}' (published at {entry.url})")
        return Path(user_file)
    return cache.fetch(entry, progress=progress)


# -- model cards ---------------------------------------------------------------

def read_safetensors_card(path: str | os.PathLike) -> dict[str, Any] | None:
    """The model card stored in a project model file's header, or None (for
    other files, e.g. reference ``.pth`` checkpoints). Standard library only."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            n = int.from_bytes(head, "little")
            if not 2 <= n < 100_000_000:
                return None
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or "card" not in meta:
        return None
    try:
        card = json.loads(meta["card"])
    except (TypeError, json.JSONDecodeError):
        return None
    return card if isinstance(card, dict) else None


def card_text(card: dict[str, Any]) -> str:
    """A few readable lines about a model card (for the info box and tooltips)."""
    size = card.get("input_size")
    lines = [str(card.get("name", "")), str(card.get("description", ""))]
    lines.append(f"{card.get('architecture', '?')}, {card.get('spatial_dims', '?')}D, "
                 f"{card.get('input_channels', '?')} channel(s), input "
                 f"{'x'.join(map(str, size)) if size else 'any size'}, {card.get('output', '?')} output")
    classes = card.get("classes") or []
    if classes:
        lines.append("Segments: " + ", ".join(f"{c.get('name')} (label {c.get('label')})" for c in classes))
    for key, value in sorted((card.get("provenance") or {}).items()):
        lines.append(f"{key}: {value}")
    return "\n".join(line for line in lines if line.strip())
