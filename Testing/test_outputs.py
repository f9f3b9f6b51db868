"""Atomic result folders and write-error translation."""

from __future__ import annotations

import errno

import pytest

from GraTaSegmenterLib.outputs import DiskFull, OutputExists, StagedFolder, disk_errors


def test_commit_moves_the_complete_folder_into_place(tmp_path):
    with StagedFolder(tmp_path, "eye") as folder:
        folder.path("a.txt").write_text("a")
        assert not (tmp_path / "eye").exists()
        final = folder.commit()
    assert final == tmp_path / "eye" and (final / "a.txt").read_text(encoding="utf-8") == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["eye"]


def test_an_error_removes_the_temporary_folder(tmp_path):
    with pytest.raises(RuntimeError):
        with StagedFolder(tmp_path, "eye") as folder:
            folder.path("a.txt").write_text("a")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


RESULT_FILES = ("labelmap.nrrd", "segmentation.seg.nrrd", "steps.jsonl", "adaptation.png")


def test_existing_result_refused_then_replaced_with_overwrite(tmp_path):
    (tmp_path / "eye").mkdir()
    for name in RESULT_FILES:
        (tmp_path / "eye" / name).write_text("old")
    with pytest.raises(OutputExists):
        StagedFolder(tmp_path, "eye")
    with StagedFolder(tmp_path, "eye", overwrite=True) as folder:
        folder.path("new.txt").write_text("new")
        folder.commit()
    assert sorted(p.name for p in (tmp_path / "eye").iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["eye"]


def test_overwrite_never_replaces_a_folder_that_is_not_a_result(tmp_path):
    (tmp_path / "eye").mkdir()
    (tmp_path / "eye" / "my notes.txt").write_text("mine")
    with pytest.raises(OutputExists, match="not a GraTaSegmenter result"):
        StagedFolder(tmp_path, "eye", overwrite=True)
    assert (tmp_path / "eye" / "my notes.txt").read_text() == "mine"


def test_committed_result_folder_follows_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        with StagedFolder(tmp_path, "eye") as folder:
            folder.path("a.txt").write_text("x")
            final = folder.commit()
    finally:
        os.umask(old)
    assert stat.S_IMODE(final.stat().st_mode) == 0o755


def test_enospc_becomes_disk_full(tmp_path):
    with pytest.raises(DiskFull, match="is full"):
        with disk_errors(tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device")


def test_stale_staging_of_a_killed_run_is_removed_and_nothing_else(tmp_path):
    import os
    import subprocess
    import sys

    from GraTaSegmenterLib.outputs import remove_stale_staging

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited
    live = str(os.getppid())
    names = {f".eye.partial-{dead}-abc123": True, f".eye.old-{dead}-x_9": True,
             f".eye.partial-{live}-abc123": False, f".eye.partial-{os.getpid()}-mine": False,
             ".eye.partial-notapid-abc": False, "eye.partial-1-abc": False, "my results": False}
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "labelmap.nrrd").write_text("x")
    removed = remove_stale_staging(tmp_path)
    assert sorted(removed) == sorted(n for n, stale in names.items() if stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, stale in names.items() if not stale)


def test_staging_folders_carry_the_owner_pid(tmp_path):
    import os

    with StagedFolder(tmp_path, "eye") as folder:
        assert folder.tmp.name.startswith(f".eye.partial-{os.getpid()}-")


_RACER = r"""
import sys
from pathlib import Path
from GraTaSegmenterLib import outputs
from GraTaSegmenterLib.outputs import StagedFolder
outdir, tag, plain = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "plain"
if plain:
    outputs._RENAMEAT2 = None
for i in range(int(sys.argv[4])):
    with StagedFolder(outdir, "eye", overwrite=True) as folder:
        for name in ("labelmap.nrrd", "segmentation.seg.nrrd", "steps.jsonl", "adaptation.png"):
            folder.path(name).write_text(f"{tag} {i}")
        folder.commit()
"""


@pytest.mark.parametrize("renames", ["renameat2", "plain"])
def test_two_runs_overwriting_one_result_both_succeed_and_leave_one_complete_result(tmp_path, renames):
    """Two runs with --overwrite on the same output folder: each commit succeeds, and the
    folder is at every moment a complete result (never missing, never half of each)."""
    import subprocess
    import sys

    from GraTaSegmenterLib import outputs

    if renames == "renameat2" and outputs._RENAMEAT2 is None:
        pytest.skip("no renameat2 here")
    (tmp_path / "eye").mkdir()
    for name in RESULT_FILES:
        (tmp_path / "eye" / name).write_text("first")
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path), tag, renames, "150"],
                               stderr=subprocess.PIPE, text=True) for tag in "AB"]
    seen_missing = 0
    while any(r.poll() is None for r in racers):
        if renames == "renameat2" and not all((tmp_path / "eye" / name).is_file() for name in RESULT_FILES):
            seen_missing += 1  # each name looked up at one moment: the folder there then
    errors = [r.stderr.read() for r in racers]
    assert [r.returncode for r in racers] == [0, 0], errors
    assert seen_missing == 0  # one swap: never a moment without a complete result
    contents = {(tmp_path / "eye" / name).read_text() for name in RESULT_FILES}
    assert contents in ({"A 149"}, {"B 149"})  # the last commit of one run, whole
    assert [p.name for p in tmp_path.iterdir()] == ["eye"]  # no staging or old folder left
