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
import ctypes
import errno
import json
import os
import re
import shutil
import stat
import sys
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
    try:
        kind = target.stat().st_mode  # one look: another run may be swapping the folder
    except (FileNotFoundError, NotADirectoryError):
        kind = None
    if (kind is not None or target.is_symlink()) and not overwrite:
        raise OutputExists(f"{target} exists already; choose another output folder (-o) or pass "
                           f"--overwrite to replace it")
    if kind is not None and not stat.S_ISDIR(kind):
        raise OutputExists(f"{target} exists and is not a folder; remove it or choose another output folder")
    # --overwrite replaces our results, never a folder of the user's that happens to have the name.
    # Asked three times: another run may be swapping its result in at this moment (a user's
    # folder never becomes ours).
    if not any(not target.is_dir() or is_complete_result(target) for _ in range(3)):
        raise OutputExists(f"{target} exists and is not a GraTaSegmenter result (it lacks the result files), so "
                           f"--overwrite does not replace it; move it away or choose another output folder (-o)")
    return target


_RESULT_MARKS = ("segmentation.seg.nrrd", "steps.jsonl", "adaptation.png")


def is_complete_result(folder: Path) -> bool:
    """A result folder as a run commits it: the labelmap, segmentation, steps and plot files are there
    (a folder only ever appears complete, so these mark one of ours). Each file is looked up by its
    path, never by listing the folder: a listing begun just before another run swaps its result in
    would read the old folder as it is being removed."""
    return all((folder / mark).is_file() for mark in _RESULT_MARKS) and \
        any((folder / labelmap).is_file() for labelmap in ("labelmap.nrrd", "labelmap.nii.gz"))


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


class _NameTaken(Exception):
    """A concurrent run put a folder at the target name between our check and our rename."""


def _load_renameat2():
    """libc's ``renameat2`` (Linux 3.15+, glibc 2.28+), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """Rename with ``flags``; False when the target is in the way (NOREPLACE) or gone
    (EXCHANGE), an OSError for any other failure."""
    global _RENAMEAT2
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EEXIST, errno.ENOTEMPTY) and flags == _RENAME_NOREPLACE:
        return False
    if code == errno.ENOENT and flags == _RENAME_EXCHANGE:
        return False
    if code in (errno.ENOSYS, errno.EINVAL):  # kernel or file system without it: plain renames from now on
        _RENAMEAT2 = None
        raise _NameTaken()
    raise OSError(code, os.strerror(code), str(target))


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
        """Move the complete result into place, replacing an old result when overwriting.

        Atomic with respect to other runs and to signals: where the kernel can (Linux
        ``renameat2``) the staged folder is renamed without replacing, and an existing result
        is swapped with it in one step, so ``outdir/name`` is at every moment either the old
        complete result or the new one, and two runs overwriting the same folder both
        succeed. Elsewhere the old result is moved aside first, retried if another run took
        the name in between."""
        umask = os.umask(0)
        os.umask(umask)
        with disk_errors(self.outdir):
            os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp's 0700 is for the staging only
            for _attempt in range(100):
                check_target(self.outdir, self.name, self.overwrite)
                try:
                    old = self._swap_into_place()
                except _NameTaken:
                    if not self.overwrite:
                        check_target(self.outdir, self.name, self.overwrite)  # raises OutputExists
                    continue  # the result another run just committed: replace it in turn
                break
            else:
                raise OutputExists(f"{self.target} keeps being replaced by another run; run one at a time")
        self.committed = True
        if old is not None and (old.is_symlink() or old.is_file()):
            old.unlink()  # a dangling link that --overwrite replaced
        elif old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def _swap_into_place(self) -> Path | None:
        """One attempt at the rename; returns the folder now holding the replaced result (to
        remove), None when there was none; raises :class:`_NameTaken` when the name was
        taken under our feet."""
        if _RENAMEAT2 is not None:
            if _renameat2(self.tmp, self.target, _RENAME_NOREPLACE):
                return None
            if self.overwrite and _renameat2(self.tmp, self.target, _RENAME_EXCHANGE):
                return self.tmp  # the swap left the old result where the staging was
            raise _NameTaken()
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.name}.old-{os.getpid()}-", dir=self.outdir))
            try:
                os.replace(self.target, old / "result")
            except FileNotFoundError:  # another run moved it away first
                os.rmdir(old)
                old = None
        try:
            os.replace(self.tmp, self.target)
        except OSError as exc:
            if old is not None:
                with contextlib.suppress(OSError):  # the old result back, unless another run's is there now
                    os.rename(old / "result", self.target)
                shutil.rmtree(old, ignore_errors=True)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.EACCES) and self.target.exists():
                raise _NameTaken() from None
            raise
        return old

    def discard(self) -> None:
        """Remove the staged files. A writer thread that a cancel left running may still be
        creating files in the folder: it is renamed first (to a name the stale-staging clean-up
        also knows), so that new files can no longer appear in what is being removed."""
        if self.committed:
            return
        doomed = self.tmp.with_name(self.tmp.name + "_discarded")
        try:
            os.rename(self.tmp, doomed)
        except OSError:
            doomed = self.tmp
        shutil.rmtree(doomed, ignore_errors=True)

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
