"""Writing a run's outputs atomically.

Each input's outputs are written into a temporary sibling folder inside the
output folder (``OUTDIR/.<name>.partial-<pid>-XXXX``) and renamed to
``OUTDIR/<name>`` only when every file is complete. On any error or a cancel
the temporary folder is removed, so an output folder either holds a complete
result or nothing. Running out of disk space becomes :class:`DiskFull`, an
existing result :class:`OutputExists` (unless overwriting was asked for).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import GraTaError

LOW_SPACE_BYTES = 1 << 20


class OutputExists(GraTaError):
    """The result folder of an input exists already and --overwrite was not given."""


class DiskFull(GraTaError, OSError):
    """The output folder's disk (or quota) is full."""


def file_names(nifti: bool) -> dict[str, str]:
    """The file of each output kind inside an input's result folder."""
    volume = ".nii.gz" if nifti else ".nrrd"
    return {
        "labelmap": "labelmap" + volume,
        "segmentation": "segmentation.seg.nrrd",
        "steps": "steps.jsonl",
        "plot": "adaptation.png",
        "overlay": "overlay.png",
        "probabilities": "probabilities" + volume,
        "uncertainty": "uncertainty" + volume,
        "postprocessing": "postprocessing.json",
    }


def _disk_full(directory: Path, exc: OSError) -> bool:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(directory).free < LOW_SPACE_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def disk_errors(directory: Path) -> Iterator[None]:
    """Turn a failed write into a :class:`GraTaError` that says what to do."""
    try:
        yield
    except GraTaError:
        raise
    except OSError as exc:
        if _disk_full(directory, exc):
            raise DiskFull(f"the disk holding {directory} is full; free some space or choose an output "
                           f"folder on another disk (-o)") from None
        raise DiskFull(f"cannot write into {directory} ({exc.strerror or exc}); check that the folder is "
                       f"writable and has free space, or choose another output folder (-o)") from None


def check_target(outdir: Path, name: str, overwrite: bool) -> Path:
    """The final result folder of an input; refuse an existing one unless overwriting."""
    target = outdir / name
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise OutputExists(f"{target} exists already; choose another output folder (-o) or pass "
                           f"--overwrite to replace it")
    if target.exists() and not target.is_dir():
        raise OutputExists(f"{target} exists and is not a folder; remove it or choose another output folder")
    if target.is_dir() and not is_complete_result(target):
        # --overwrite replaces our results, never a folder of the user's that happens to have the name
        raise OutputExists(f"{target} exists and is not a GraTaSegmenter result (it lacks the result files), so "
                           f"--overwrite does not replace it; move it away or choose another output folder (-o)")
    return target


def is_complete_result(folder: Path) -> bool:
    """A result folder as a run commits it: the labelmap, segmentation, steps and plot files are there
    (a folder only ever appears complete, so these mark one of ours)."""
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    return {"segmentation.seg.nrrd", "steps.jsonl", "adaptation.png"} <= names and \
        bool(names & {"labelmap.nrrd", "labelmap.nii.gz"})


_STAGING = re.compile(r"^\..+\.(partial|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or cannot tell: treat as alive
    return True


def remove_stale_staging(outdir: Path) -> list[str]:
    """Remove staging folders of earlier runs that were killed before they could clean up
    (e.g. SIGKILL while writing): only folders named as :class:`StagedFolder` names them, and
    only when the process that made them is gone. Returns the names removed."""
    removed = []
    if not outdir.is_dir():
        return removed
    for entry in outdir.iterdir():
        match = _STAGING.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry.name)
    return removed


class StagedFolder:
    """A temporary folder that becomes ``outdir/name`` on :meth:`commit`.

    Use as a context manager: leaving the block without committing (an
    exception, a cancel) removes the temporary folder and everything in it.
    """

    def __init__(self, outdir: Path, name: str, overwrite: bool = False):
        self.outdir = Path(outdir)
        self.name = name
        self.overwrite = overwrite
        self.target = check_target(self.outdir, name, overwrite)
        with disk_errors(self.outdir):
            self.outdir.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-{os.getpid()}-", dir=self.outdir))
        self.committed = False

    def path(self, filename: str) -> Path:
        return self.tmp / filename

    def commit(self) -> Path:
        """Move the complete result into place (replacing an old one when overwriting)."""
        check_target(self.outdir, self.name, self.overwrite)
        old = None
        umask = os.umask(0)
        os.umask(umask)
        with disk_errors(self.outdir):
            os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp's 0700 is for the staging only
            if self.target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.name}.old-{os.getpid()}-", dir=self.outdir))
                os.replace(self.target, old / "result")
            os.replace(self.tmp, self.target)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "StagedFolder":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.discard()


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line; a non-finite number becomes null, as in the events."""
    from .events import json_safe

    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")


def write_json(path: Path, value: Any) -> None:
    from .events import json_safe

    with open(path, "w", encoding="utf-8") as f:
        json.dump(json_safe(value), f, indent=1, allow_nan=False)
        f.write("\n")
