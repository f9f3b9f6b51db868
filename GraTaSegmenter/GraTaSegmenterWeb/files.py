"""Where the page's files come from and go to.

The page is served to a browser that may be on another machine, so nothing it
sends is trusted as a path: a file offered for opening must lie inside the
``--data`` folder (after symbolic links are resolved), an uploaded file keeps
only its base name, and a name to save under is one plain file name in the
chosen folder. Saving never overwrites silently: files are written under a
temporary name and then *linked* to their final name, which fails when the
name exists (no window between a check and the write); replacing needs the
caller's explicit ``overwrite``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable

from GraTaSegmenterLib.imageio import SUPPORTED, suffix_of

SEGMENTATION_SUFFIX = ".seg.nrrd"
LABELMAP_SUFFIX = ".labelmap.nrrd"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")
MAX_LISTED = 2000
#: what an uploaded model archive may unpack to: a full-size nnU-Net model folder with five folds
#: and their optimiser states is about 3 GiB
MODEL_ARCHIVE_BYTES = 16 << 30
MODEL_ARCHIVE_MEMBERS = 20000


class FileRefused(ValueError):
    """A path or name the page may not use; the message says why and what to do."""


class NameTaken(FileRefused):
    """The file to save exists; choose another name or confirm replacing it."""


def inside(folder: Path, relative: str) -> Path:
    """``folder / relative`` resolved, refused when it leads outside ``folder``."""
    root = folder.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise FileRefused(f"{relative} is outside the data folder; choose a file inside {root}")
    return target


def is_result(name: str) -> bool:
    """A segmentation or labelmap this page saved (not an image to adapt)."""
    return name.lower().endswith((SEGMENTATION_SUFFIX, LABELMAP_SUFFIX))


def data_entries(folder: Path | None) -> list[str]:
    """What the page offers to open from ``folder``: image files of a supported
    format and folders holding DICOM files, as paths relative to it, sorted
    (results saved by the page are left out)."""
    if folder is None or not folder.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if any(f.lower().endswith(".dcm") for f in filenames) and here != folder:
            found.append(here.relative_to(folder).as_posix() + "/")
        for name in sorted(filenames):
            if not name.startswith(".") and suffix_of(name) in SUPPORTED and not is_result(name):
                found.append((here / name).relative_to(folder).as_posix())
        if len(found) >= MAX_LISTED:
            break
    return sorted(found)[:MAX_LISTED]


MODEL_SUFFIXES = (".safetensors", ".pth", ".pt")


def model_entries(folder: Path | None) -> list[str]:
    """Model files in ``folder`` (top level and one below), and model folders (nnU-Net model folders,
    MONAI bundles) up to three levels below, ending in "/", relative to it."""
    from GraTaSegmenterLib import model_folders

    if folder is None or not folder.is_dir():
        return []
    found = [p.relative_to(folder).as_posix() for pattern in ("*", "*/*") for p in folder.glob(pattern)
             if p.is_file() and p.name.lower().endswith(MODEL_SUFFIXES) and not p.name.startswith(".")]
    root_depth = len(folder.parts)
    for dirpath, dirnames, _files in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if here != folder and model_folders.kind(here) is not None:
            found.append(here.relative_to(folder).as_posix() + "/")
            dirnames[:] = []  # its fold_N folders are the same model, listed by the folder
        elif len(here.parts) - root_depth >= 3:
            dirnames[:] = []
    return sorted(found)[:MAX_LISTED]


def plain_name(name: str) -> str:
    """A user-given file name, refused unless it is one safe name (no folders, no control
    characters, not hidden)."""
    base = str(name).strip()
    if not base or base in (".", "..") or base.startswith(".") or _UNSAFE.search(base):
        raise FileRefused(f"{name!r} is not a usable file name; use letters, digits, spaces, '-', '_' and '.' "
                          f"(no folders, not starting with '.')")
    return base


def save_names(name: str) -> tuple[str, str]:
    """The segmentation and labelmap file names for a name given on the page."""
    base = plain_name(name)
    for suffix in (SEGMENTATION_SUFFIX, LABELMAP_SUFFIX, ".nrrd"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    if not base:
        raise FileRefused(f"{name!r} has no name before its suffix")
    return base + SEGMENTATION_SUFFIX, base + LABELMAP_SUFFIX


def store_uploads(files: Iterable[tuple[str, bytes]], folder: Path) -> Path:
    """Write uploaded files (name, content) into a new folder under ``folder``: one
    file is returned as that file, several as their folder (a DICOM series)."""
    files = list(files)
    if not files:
        raise FileRefused("no file was uploaded")
    target = Path(tempfile.mkdtemp(prefix="upload-", dir=folder))
    paths = []
    for name, content in files:
        path = target / plain_name(Path(str(name).replace("\\", "/")).name)  # a browser may send a path
        if path.exists():
            raise FileRefused(f"two uploaded files are named {path.name}; upload a folder's files once each")
        path.write_bytes(content)
        paths.append(path)
    return paths[0] if len(paths) == 1 else target


def unpack_model_archive(archive: Path, folder: Path) -> Path:
    """A model folder uploaded as one ``.zip`` (a browser uploads files, not folders): an nnU-Net
    model folder (with one or more of its folds) or a MONAI bundle, unpacked into a new folder under ``folder``.
    Nothing lands outside that folder: absolute names, ``..`` and links are refused, and so is an
    archive that unpacks to more than :data:`MODEL_ARCHIVE_BYTES` (counted while unpacking, not from
    the archive's own claims). Returns the model folder inside (the shallowest; several at that
    depth are refused); on any refusal nothing of the archive is left."""
    target = Path(tempfile.mkdtemp(prefix="model-", dir=folder))
    try:
        _unpack(archive, target)
        return _model_folder_in(target, archive.name)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def _unpack(archive: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            if len(members) > MODEL_ARCHIVE_MEMBERS:
                raise FileRefused(f"{archive.name} holds {len(members)} files; a model folder has far fewer. "
                                  f"Zip the model folder alone")
            unpacked = 0
            for member in members:
                name = member.filename.replace("\\", "/")
                parts = [part for part in name.split("/") if part not in ("", ".")]
                if not parts or parts[0] == "__MACOSX":  # macOS's resource forks: not the model's
                    continue
                if name.startswith("/") or ".." in parts or ":" in parts[0]:
                    raise FileRefused(f"{archive.name} holds {member.filename!r}, which would be unpacked outside "
                                      f"its folder; zip the model folder itself")
                if stat.S_ISLNK(member.external_attr >> 16):
                    raise FileRefused(f"{archive.name} holds a link ({member.filename}); zip the model's files, "
                                      f"not links to them")
                destination = target.joinpath(*parts)
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                if member.flag_bits & 0x1:
                    raise FileRefused(f"{archive.name} is encrypted; zip the model folder without a password")
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as source, open(destination, "xb") as out:  # "x": names once each
                    while chunk := source.read(1 << 20):
                        unpacked += len(chunk)
                        if unpacked > MODEL_ARCHIVE_BYTES:
                            raise FileRefused(f"{archive.name} unpacks to more than "
                                              f"{MODEL_ARCHIVE_BYTES >> 30} GiB; that is no model folder. Zip "
                                              f"the model folder alone (one fold is enough to adapt)")
                        out.write(chunk)
    except FileExistsError:
        raise FileRefused(f"{archive.name} holds two files of one name; zip the model folder again") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise FileRefused(f"{archive.name} is not a zip archive that can be read ({exc}); zip the model folder "
                          f"again") from None


def _model_folder_in(target: Path, name: str) -> Path:
    from GraTaSegmenterLib import model_folders

    level = [target]
    for _ in range(4):  # the archive's top, or the folders it holds (Dataset.../nnUNetTrainer__...)
        found = [d for d in level if model_folders.kind(d) is not None]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise FileRefused(f"{name} holds several models ({', '.join(sorted(d.name for d in found))}); "
                              f"zip one model folder")
        level = sorted(child for d in level for child in d.iterdir() if child.is_dir())
    raise FileRefused(f"{name} holds no nnU-Net model folder (dataset.json, plans.json, fold_N) and no MONAI "
                      f"bundle (configs/inference.json or .yaml); zip the model folder itself")


def commit_files(written: dict[Path, Path], overwrite: bool) -> list[Path]:
    """Move each temporary file to its final path (same folder). Without
    ``overwrite`` a final path that exists is never replaced: :class:`NameTaken`
    is raised before anything is moved and the temporary files are removed."""
    done: list[Path] = []
    try:
        if not overwrite:
            taken = [final.name for final in written.values() if os.path.lexists(final)]
            if taken:
                raise NameTaken(f"{', '.join(taken)} exists in {next(iter(written.values())).parent}; choose "
                                f"another name, or confirm that it is to be replaced")
        for temporary, final in written.items():
            if overwrite:
                os.replace(temporary, final)
            else:
                try:
                    os.link(temporary, final)  # fails if the name appeared meanwhile
                except FileExistsError:
                    raise NameTaken(f"{final.name} appeared in {final.parent} while saving; nothing of it was "
                                    f"replaced, choose another name") from None
                except OSError:  # no hard links there (some network or FAT file systems)
                    if os.path.lexists(final):
                        raise NameTaken(f"{final.name} exists in {final.parent}; choose another name") from None
                    os.replace(temporary, final)
            done.append(final)
    except BaseException:
        for final in done if not overwrite else []:
            final.unlink(missing_ok=True)
        raise
    finally:
        for temporary in written:
            temporary.unlink(missing_ok=True)
    return done
