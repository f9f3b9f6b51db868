"""Sample data: the phantom fundus crops registered with Slicer's SampleData.

The images are ``GraTaSegmenterLib/samples/phantom_<centre>_<i>.png``. Their
manifest, ``samples/index.json``, lists each file with its SHA-256 and centre
(and, when present, its reference mask ``label`` with ``label_sha256``), so
SampleData verifies what it loads. Write or refresh the manifest with::

    python -m GraTaSegmenterLib.slicer_support.samples GraTaSegmenter/GraTaSegmenterLib/samples

Manifest format (a list, or an object with a ``samples`` list)::

    {"samples": [{"file": "phantom_B_0.png", "sha256": "...", "centre": "B",
                  "label": "phantom_B_0_label.png", "label_sha256": "..."}]}
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .catalog import file_sha256, is_sha256

MANIFEST = "index.json"
CATEGORY = "GraTaSegmenter (fundus phantom)"
_IMAGE = re.compile(r"^phantom_(?P<centre>[A-Za-z0-9]+)_(?P<index>\d+)\.png$")
_LABEL_SUFFIXES = ("_label.png", "_mask.png")


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Sample:
    file: str
    sha256: str
    centre: str
    label: str | None = None
    label_sha256: str | None = None

    @property
    def name(self) -> str:
        return Path(self.file).stem.replace("phantom_", "Fundus phantom ").replace("_", " #", 1)


def load_manifest(path: str | os.PathLike) -> list[Sample]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read the sample manifest {path}: {exc}") from None
    items = data.get("samples") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ManifestError(f"{path.name}: expected a list of samples")
    samples, problems = [], []
    for i, item in enumerate(items):
        try:
            sample = Sample(file=str(item["file"]), sha256=str(item["sha256"]).lower(), centre=str(item["centre"]),
                            label=item.get("label"), label_sha256=(item.get("label_sha256") or None))
        except (KeyError, TypeError, AttributeError):
            problems.append(f"entry {i} needs file, sha256 and centre")
            continue
        if Path(sample.file).name != sample.file:
            problems.append(f"entry {i}: file must be a plain name, not {sample.file!r}")
        if not is_sha256(sample.sha256):
            problems.append(f"entry {i} ({sample.file}): sha256 must be 64 hex digits")
        if sample.label is not None and (Path(sample.label).name != sample.label or not is_sha256(sample.label_sha256)):
            problems.append(f"entry {i} ({sample.file}): label needs a plain name and its sha256")
        samples.append(sample)
    if problems:
        raise ManifestError(f"{path.name}: " + "; ".join(problems))
    return samples


def scan(folder: str | os.PathLike) -> list[Sample]:
    """Samples found in a folder (``phantom_<centre>_<i>.png`` plus an optional
    ``phantom_<centre>_<i>_label.png`` / ``_mask.png``), with checksums."""
    folder = Path(folder)
    samples = []
    for path in sorted(folder.glob("phantom_*.png"), key=lambda p: _sort_key(p.name)):
        m = _IMAGE.match(path.name)
        if not m:
            continue
        label = next((folder / (path.stem + s) for s in _LABEL_SUFFIXES if (folder / (path.stem + s)).is_file()), None)
        samples.append(Sample(file=path.name, sha256=file_sha256(path), centre=m["centre"],
                              label=label.name if label else None,
                              label_sha256=file_sha256(label) if label else None))
    return samples


def _sort_key(name: str) -> tuple:
    m = _IMAGE.match(name)
    return (m["centre"], int(m["index"])) if m else ("~", 0)


def write_manifest(folder: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    folder = Path(folder)
    path = Path(path) if path else folder / MANIFEST
    samples = [{k: v for k, v in asdict(s).items() if v is not None} for s in scan(folder)]
    path.write_text(json.dumps({"samples": samples}, indent=2) + "\n", encoding="utf-8")
    return path


def verify(sample: Sample, folder: str | os.PathLike) -> list[str]:
    """Problems of the files of one sample (missing, checksum mismatch)."""
    problems = []
    for name, digest in ((sample.file, sample.sha256), (sample.label, sample.label_sha256)):
        if name is None:
            continue
        p = Path(folder) / name
        if not p.is_file():
            problems.append(f"{name} is missing")
        elif file_sha256(p) != digest:
            problems.append(f"{name} does not match its checksum")
    return problems


def sample_data_sources(samples: list[Sample], folder: str | os.PathLike,
                        thumbnail: str | None = None) -> list[dict[str, Any]]:
    """Keyword arguments for ``SampleData.SampleDataLogic.registerCustomSampleDataSource``,
    one dict per sample: file URLs and ``SHA256:`` checksums, loaded as a vector volume
    (the RGB fundus photo); its reference mask, when there is one, is fetched and
    verified too but not loaded (the module's self-test loads it as a labelmap)."""
    folder = Path(folder).absolute()
    sources = []
    for s in samples:
        uris = [(folder / s.file).as_uri()]
        files = [s.file]
        nodes = [Path(s.file).stem]
        checksums = [f"SHA256:{s.sha256}"]
        load_files = [True]
        if s.label:
            uris.append((folder / s.label).as_uri())
            files.append(s.label)
            nodes.append(Path(s.label).stem)
            checksums.append(f"SHA256:{s.label_sha256}")
            load_files.append(False)  # downloaded and verified; the module test loads it as a labelmap
        sources.append({"category": CATEGORY, "sampleName": s.name, "uris": uris, "fileNames": files,
                        "nodeNames": nodes, "checksums": checksums, "loadFiles": load_files,
                        "loadFileTypes": ["VolumeFile"] * len(uris), "thumbnailFileName": thumbnail})
    return sources


if __name__ == "__main__":  # python -m GraTaSegmenterLib.slicer_support.samples FOLDER
    target = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent / "samples")
    written = write_manifest(target)
    print(f"wrote {written} ({len(load_manifest(written))} samples)")
