"""One user's scene and run, without any page (tested without a browser).

A :class:`WebSession` owns trame-slicer's :class:`~trame_slicer.core.SlicerApp`
(Slicer's MRML scene with the Volumes, Segmentations and Terminologies logics
and the segment editor) and does what the page's buttons ask:

* :meth:`open_image` reads the file with the engine's own reader (pictures,
  volumes, DICOM folders take one path, so the geometry is the command line's)
  and shows it; the engine later reads the very same file;
* :meth:`start` runs ``grata-segmenter adapt --events`` in a child process through
  :class:`~GraTaSegmenterLib.slicer_support.process.AdaptRun` and the same
  parameters and command line as the Slicer panel; :meth:`poll` (called from the
  page's timer) drains its events; a successful run replaces the segments, a
  failed or cancelled one leaves the scene as it was;
* corrections are made with trame-slicer's segment editor on the session's
  segmentation node; :attr:`corrected` tells whether they differ from what
  the last run (or the last save) gave, and a new run or a new image asks for
  ``confirm`` before throwing them away;
* :meth:`save` writes the segmentation with the command line's writer
  (``.seg.nrrd`` with names, colours, terminology and the input's geometry)
  and a labelmap, into the data folder or for a download.

Errors the user can act on are :class:`SessionError`; the scene keeps what it had.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import reference as vtkReference, vtkStringArray

import slicer
from GraTaSegmenterLib import imageio, model_folders
from GraTaSegmenterLib.errors import GraTaError
from GraTaSegmenterLib.slicer_support import catalog, terminology
from GraTaSegmenterLib.slicer_support.events import Event
from GraTaSegmenterLib.slicer_support.parameters import AdaptParameters, ParameterError, adapt_command, \
    engine_environment
from GraTaSegmenterLib.slicer_support.process import AdaptRun, RunState, python_command
from GraTaSegmenterLib.slicer_support.workspace import ContinualState, RunWorkspace
from GraTaSegmenterMRML import scene as mrml

from . import files

PACKAGE_PARENT = Path(__file__).resolve().parents[1]        # the folder that holds GraTaSegmenterLib
MODULE_RESOURCES = PACKAGE_PARENT / "Resources"
BUNDLED_MODELS = PACKAGE_PARENT / "GraTaSegmenterLib" / "models" / "weights"
TERM_FILE = MODULE_RESOURCES / "Terminology" / "SegmentationCategoryTypeModifier-GraTaSegmenter.term.json"
MODEL_FILE = "file"  # the model choice "a model file" (uploaded or in the data folder)


class SessionError(RuntimeError):
    """What went wrong, in words the user can act on; ``details`` go to the log panel."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class NeedsConfirmation(SessionError):
    """The action would throw away corrections that were not saved: ask, then call again with ``confirm``."""


@dataclass
class OpenedImage:
    path: Path            # what the engine reads (the user's file, or its upload)
    name: str             # for node and file names
    reference: sitk.Image  # geometry of every result (the engine's reading; pixels not kept)
    spatial_shape: tuple[int, ...]
    channels: int
    volume_node: object

    @property
    def is_volume(self) -> bool:
        return len(self.spatial_shape) == 3 and self.spatial_shape[0] > 1


@dataclass(frozen=True)
class SavedClass:
    """A segment as the writer of ``.seg.nrrd`` files takes it (see ``imageio.write_seg_nrrd``)."""

    name: str
    label: int
    color: tuple[float, float, float]
    category: object = None
    type: object = None
    anatomic_region: object = None


class WebSession:
    def __init__(self, slicer_app, *, data_dir: str | os.PathLike | None = None,
                 work_dir: str | os.PathLike | None = None, python: list[str] | None = None,
                 env: dict | None = None):
        self.app = slicer_app
        self.scene = slicer_app.scene
        self.data_dir = Path(data_dir).resolve() if data_dir else None
        self.work = Path(tempfile.mkdtemp(prefix="GraTaSegmenter-web-", dir=work_dir))
        self.python = python or python_command()
        self.env = engine_environment(env if env is not None else os.environ, PACKAGE_PARENT)
        self.catalog = catalog.load_catalog(MODULE_RESOURCES / "Models" / "catalog.json",
                                            MODULE_RESOURCES / "Models" / "catalog.schema.json")
        self.cache = catalog.ModelCache(self.work / "models")
        self.terms = terminology.load_terms(TERM_FILE)
        self.app.terminologies_logic.LoadTerminologyFromFile(str(TERM_FILE))
        self.continual = ContinualState(self.work)
        if self.app.segmentation_editor.undo_stack is None:  # the page's segment editor brings its own
            from undo_stack import UndoStack

            self.app.segmentation_editor.set_undo_stack(UndoStack(undo_limit=20))
        self.image: OpenedImage | None = None
        self.segmentation = None
        self.uncertainty = None
        self.run: AdaptRun | None = None
        self.workspace: RunWorkspace | None = None
        self.last_failure: str | None = None
        self.log_lines: list[str] = []
        self._baseline: str | None = None  # fingerprint of the segments as the last run or save left them
        self._opened = 0

    # -- log ---------------------------------------------------------------------------
    def log(self, text: str) -> None:
        self.log_lines.append(text)
        del self.log_lines[:-500]

    # -- models ------------------------------------------------------------------------------
    def model_choices(self) -> list[dict]:
        """The catalog's runnable entries (bundled first), then 'a model file'."""
        entries = [{"value": e.id, "title": e.name} for e in self.catalog if e.kind in ("bundled", "download")]
        return entries + [{"value": MODEL_FILE, "title": "A model file (.safetensors, a reference .pth) or an nnU-Net "
                                                         "model folder or MONAI bundle (in the data folder, or "
                                                         "uploaded as .zip)"}]

    @property
    def default_model(self) -> str:
        return next(e.id for e in self.catalog if e.kind == "bundled")

    def model_path(self, model_id: str, model_file: str | os.PathLike | None = None) -> Path:
        if model_id == MODEL_FILE:
            if not model_file or not (Path(model_file).is_file() or model_folders.kind(model_file)):
                raise SessionError("Choose a model file first (upload it, or pick it or a model folder from the data "
                                   "folder).")
            return Path(model_file)
        entry = next((e for e in self.catalog if e.id == model_id), None)
        if entry is None:
            raise SessionError(f"Unknown model {model_id!r}; choose one from the list.")
        try:
            return catalog.resolve_model(entry, bundled_dir=BUNDLED_MODELS, cache=self.cache, user_file=model_file)
        except (catalog.DownloadError, OSError) as exc:
            raise SessionError(f"The model {entry.name} is not available: {exc}") from None

    def model_card_text(self, model_id: str, model_file: str | os.PathLike | None = None) -> str:
        """What the page shows of the chosen model before a run, read from its files without
        running them (a model folder's JSON, a model file's card); '' when nothing is chosen."""
        if model_id == MODEL_FILE:
            if not model_file:
                return ""
            path = Path(model_file)
            if model_folders.kind(path):
                return model_folders.card_text(path)
            card = catalog.read_safetensors_card(path) if path.is_file() else None
            return catalog.card_text(card) if card else f"{path.name}: checked when the run starts"
        entry = next((e for e in self.catalog if e.id == model_id), None)
        if entry is None:
            return ""
        card = catalog.read_safetensors_card(BUNDLED_MODELS / entry.file) if entry.kind == "bundled" else None
        return entry.tooltip() + ("\n\nModel card:\n" + catalog.card_text(card) if card else "")

    # -- files -------------------------------------------------------------------------------
    def data_entries(self) -> list[str]:
        return files.data_entries(self.data_dir)

    def data_path(self, relative: str) -> Path:
        if self.data_dir is None:
            raise SessionError("This server has no data folder (start it with --data DIR).")
        try:
            return files.inside(self.data_dir, relative)
        except files.FileRefused as exc:
            raise SessionError(str(exc)) from None

    def model_file(self, chosen: str | None) -> Path | None:
        """The model file the page names: relative to the data folder, or an upload of this
        session; any other path is refused (the page is a client and names no server file)."""
        if not chosen:
            return None
        if not Path(chosen).is_absolute():
            return self.data_path(chosen)
        path, uploads = Path(chosen).resolve(), (self.work / "uploads").resolve()
        if uploads not in path.parents:
            raise SessionError(f"{Path(chosen).name} is neither in the data folder nor uploaded; choose the model "
                               f"file again")
        return path

    def store_uploads(self, uploads: list[tuple[str, bytes]]) -> Path:
        folder = self.work / "uploads"
        folder.mkdir(exist_ok=True)
        try:
            return files.store_uploads(uploads, folder)
        except files.FileRefused as exc:
            raise SessionError(str(exc)) from None

    def store_model_upload(self, name: str, content: bytes) -> Path:
        """An uploaded model: a model file as it is, a ``.zip`` of a model folder unpacked
        (:func:`files.unpack_model_archive`); the archive itself is not kept."""
        stored = self.store_uploads([(name, content)])
        if not stored.name.lower().endswith(".zip"):
            return stored
        try:
            return files.unpack_model_archive(stored, self.work / "uploads")
        except files.FileRefused as exc:
            raise SessionError(str(exc)) from None
        finally:
            shutil.rmtree(stored.parent, ignore_errors=True)

    # -- the image ------------------------------------------------------------------------
    def open_image(self, path: str | os.PathLike, confirm: bool = False):
        """Read ``path`` with the engine's reader and show it; the previous image and its
        results leave the scene only once the new one has been read."""
        if self.busy:
            raise SessionError("A run is going on; cancel it or wait for it before opening another image.")
        if self.corrected and not confirm:
            raise NeedsConfirmation("The corrected segmentation has not been saved. Open the new image anyway "
                                    "and discard the corrections?")
        path = Path(path)
        try:
            loaded = imageio.read_image(path)
        except GraTaError as exc:
            raise SessionError(str(exc)) from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise SessionError(f"{path.name} cannot be opened ({exc}); check that it is a complete image file",
                               details=repr(exc)) from None
        self._opened += 1
        display = self.work / f"display-{self._opened}.nrrd"
        try:
            imageio.write_image(loaded.image, display, compress=False)
            node = self._read_volume(display, loaded.channels > 1, imageio.stem_of(path))
        except (OSError, RuntimeError) as exc:
            raise SessionError(f"{path.name} was read but cannot be shown ({exc})", details=repr(exc)) from None
        finally:
            display.unlink(missing_ok=True)
        previous = [n for n in (self.uncertainty, self.segmentation, self.image and self.image.volume_node) if n]
        previous_path = self.image.path if self.image else None
        self.uncertainty = None
        self.image = OpenedImage(path=path, name=imageio.stem_of(path), reference=_geometry_only(loaded.image),
                                 spatial_shape=loaded.spatial_shape, channels=loaded.channels, volume_node=node)
        del loaded
        self.segmentation = self.app.segmentation_editor.create_empty_segmentation_node()
        self.segmentation.SetName(self.scene.GenerateUniqueName(self.image.name + " GraTa segmentation"))
        self.app.segmentation_editor.set_active_segmentation(self.segmentation, node)
        self._baseline = self.fingerprint()
        self.show()
        for old_node in previous:  # only now: the views and the editor have let go of them
            if self.scene.IsNodePresent(old_node):
                self.scene.RemoveNode(old_node)
        if previous_path is not None and previous_path != path:
            self._remove_upload(previous_path)
        self.log(f"Opened {path.name}: {' x '.join(map(str, self.image.spatial_shape))}, "
                 f"{self.image.channels} channel(s)")
        return node

    def _remove_upload(self, path: Path) -> None:
        """An uploaded image's folder, once another image is open (uploads are the session's copies)."""
        uploads = (self.work / "uploads").resolve()
        resolved = path.resolve()
        folder = next((p for p in [resolved, *resolved.parents] if p.parent == uploads), None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _read_volume(self, path: Path, vector: bool, name: str):
        node_class = "vtkMRMLVectorVolumeNode" if vector else "vtkMRMLScalarVolumeNode"
        node = self.scene.AddNewNodeByClass(node_class, self.scene.GenerateUniqueName(name))
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            self.scene.RemoveNode(node)
            raise RuntimeError("Slicer's volume reader refused the converted image")
        node.CreateDefaultDisplayNodes()
        return node

    def show(self, uncertainty: bool = False) -> None:
        """The image in the slice views' background, the uncertainty map (when asked for and
        present) in their foreground, the views fitted."""
        manager = self.app.display_manager
        if self.image is None:
            return
        manager.show_volume_in_slice_background(self.image.volume_node)
        self.set_uncertainty_visible(uncertainty)
        manager.set_node_visible_in_group(self.image.volume_node, None)
        manager.reset_views()

    def set_uncertainty_visible(self, visible: bool) -> None:
        node = self.uncertainty if visible else None
        self.app.display_manager.show_volume_in_slice_foreground(node)
        for view in self.app.view_manager.get_slice_views():
            view.set_foreground_opacity(0.5 if node is not None else 0.0)

    # -- the run -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.run is not None and self.run.state.busy

    def start(self, params: AdaptParameters, model_id: str, model_file: str | os.PathLike | None = None,
              confirm: bool = False) -> AdaptRun:
        if self.busy:
            raise SessionError("A run is already going on; wait for it to end or cancel it.")
        if self.image is None:
            raise SessionError("Open an image first.")
        if self.corrected and not confirm:
            raise NeedsConfirmation("The segmentation has corrections that a new run would replace. Run anyway "
                                    "and discard them?")
        try:
            params = params.validated()
        except ParameterError as exc:
            raise SessionError(f"The settings cannot be run: {exc}") from None
        model = self.model_path(model_id, model_file)
        workspace = RunWorkspace(self.work)
        continual = params.mode == "continual"
        if continual and self.continual.follow((str(Path(model).resolve()), params.method)):
            self.log("Continual adaptation restarted from the source model: the model or the method changed.")
        command = adapt_command(self.python, self.image.path, workspace.output_dir, model, params,
                                save_state=self.continual.pending_path if continual else None,
                                load_state=self.continual.load_path() if continual else None)
        self.log(" ".join(command))
        self.last_failure = None
        self.workspace = workspace
        self.run = AdaptRun(command, env=self.env, on_log=self.log)
        self.run.start()
        if self.run.state is RunState.Failed:  # could not start the interpreter
            self._discard_run()
            self.last_failure = self.run.failure
        return self.run

    def cancel(self) -> None:
        if self.busy:
            self.run.cancel()

    def poll(self) -> list[Event]:
        """Drain the run's events; when it has ended, bring in its results or drop them."""
        if self.run is None or self.workspace is None:
            return []
        events = self.run.poll()
        if not self.run.state.busy:
            self._finish()
        return events

    def wait(self, timeout: float = 600.0, interval: float = 0.05, on_events: Callable | None = None) -> RunState:
        import time

        end = time.monotonic() + timeout
        while self.run is not None and self.workspace is not None and time.monotonic() < end:
            events = self.poll()
            if events and on_events is not None:
                on_events(events)
            time.sleep(interval)
        return self.run.state if self.run is not None else RunState.Idle

    def _finish(self) -> None:
        run = self.run
        try:
            if run.state is RunState.Done and run.progress.outputs:
                self._import(run.progress.outputs[-1])
                self.continual.commit()
                self.log(run.progress.status_text())
                for text in run.progress.postprocess:
                    self.log(text)
            elif run.cancelled:
                self.last_failure = "Cancelled; the scene is as it was."
                self.log(self.last_failure)
            else:
                self.last_failure = run.failure or "the run failed (see the log)"
                self.log("Failed: " + self.last_failure)
        except (OSError, RuntimeError) as exc:
            self.last_failure = f"The results could not be read ({exc})"
            self.log(self.last_failure)
        finally:
            self._discard_run()

    def _discard_run(self) -> None:
        self.continual.discard_pending()
        if self.workspace is not None:
            self.workspace.cleanup()
            self.workspace = None

    def _import(self, output: dict) -> None:
        image = self.image
        loaded_scene = slicer.vtkMRMLScene()  # read beside, then copied: no node points into the run folder
        loaded = mrml.readSegmentation(output["segmentation"], loaded_scene)
        segmentation = self.segmentation
        segmentation.GetSegmentation().DeepCopy(loaded.GetSegmentation())
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(image.volume_node)
        mrml.applyTerms(segmentation, self._segment_term)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.Modified()
        if output.get("uncertainty"):
            name = self.scene.GenerateUniqueName(image.name + " GraTa uncertainty")
            self.uncertainty = mrml.readVolume(output["uncertainty"], self.scene, self.uncertainty, name)
        if image.is_volume:
            segmentation.CreateClosedSurfaceRepresentation()
        self.app.segmentation_editor.set_active_segmentation(segmentation, image.volume_node)
        self._baseline = self.fingerprint()

    def _segment_term(self, name, _label):
        """As the Slicer module's segmentTerm: by name only (every layer's label value is 1)."""
        term = terminology.match_term(self.terms, name)
        if term is None:
            return None
        return terminology.display_name(term.name), term.color, term.terminology_entry()

    # -- segments ------------------------------------------------------------------------------
    def segment_ids(self) -> list[str]:
        if self.segmentation is None:
            return []
        segmentation = self.segmentation.GetSegmentation()
        return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]

    def segment_mask(self, segment_id: str) -> np.ndarray:
        """One segment as a 0/1 array on the input's voxel grid (numpy order: (k, j, i))."""
        ids = vtkStringArray()
        ids.InsertNextValue(segment_id)
        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__GraTaSegmenter export__")
        try:
            ok = self.app.segmentations_logic.ExportSegmentsToLabelmapNode(self.segmentation, ids, labelmap,
                                                                          self.image.volume_node)
            if not ok:
                raise RuntimeError(f"segment {segment_id} could not be exported")
            data = labelmap.GetImageData()
            i, j, k = data.GetDimensions()
            array = numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(k, j, i)
            return (array != 0).astype(np.uint8)
        finally:
            display = labelmap.GetDisplayNode()
            if display is not None:
                self.scene.RemoveNode(display)
            self.scene.RemoveNode(labelmap)

    def summary(self) -> tuple[list[dict], str]:
        """Each segment (id, name, colour, voxel count) and the fingerprint of all of them
        (names and voxels: equal before and after means nothing was corrected), from one
        export per segment."""
        rows, digest = [], hashlib.sha256()
        segmentation = self.segmentation.GetSegmentation() if self.segmentation is not None else None
        for segment_id in self.segment_ids():
            segment, mask = segmentation.GetSegment(segment_id), self.segment_mask(segment_id)
            rows.append({"id": segment_id, "name": segment.GetName(), "color": tuple(segment.GetColor()),
                         "voxels": int(mask.sum())})
            digest.update(segment.GetName().encode("utf-8", "replace") + b"\0")
            digest.update(np.packbits(mask).tobytes())
        return rows, digest.hexdigest()

    def voxel_counts(self) -> dict[str, int]:
        return {row["name"]: row["voxels"] for row in self.summary()[0]}

    def fingerprint(self) -> str:
        return self.summary()[1]

    def is_corrected(self, fingerprint: str) -> bool:
        return self.segmentation is not None and self._baseline is not None and fingerprint != self._baseline

    @property
    def corrected(self) -> bool:
        """True when the segments differ from what the last run or save left (unsaved corrections)."""
        return self.is_corrected(self.fingerprint())

    # -- saving ---------------------------------------------------------------------------------
    def _classes(self):
        segmentation = self.segmentation.GetSegmentation()
        tag_name = slicer.vtkSegment.GetTerminologyEntryTagName()
        classes, tags, used = [], [], set()
        for segment_id in self.segment_ids():
            match = re.fullmatch(r"Segment_(\d+)", segment_id)
            label = int(match.group(1)) if match and 0 < int(match.group(1)) < 256 else None
            if label is None or label in used:
                label = next(v for v in range(1, 256) if v not in used)
            used.add(label)
            segment = segmentation.GetSegment(segment_id)
            tag = _tag(segment, tag_name)
            classes.append(SavedClass(name=segment.GetName(), label=label, color=tuple(segment.GetColor())))
            tags.append(tag)
        return classes, tags

    def write_results(self, folder: Path, seg_name: str, labelmap_name: str) -> dict[Path, Path]:
        """Write the segmentation and its labelmap under temporary names in ``folder``;
        returns {temporary: final} for :func:`files.commit_files`."""
        if self.image is None or not self.segment_ids():
            raise SessionError("There is no segmentation to save yet; run Adapt & Segment or paint one.")
        classes, tags = self._classes()
        masks = np.stack([self.segment_mask(s) for s in self.segment_ids()])
        if not self.image.is_volume and masks.ndim == 4:
            masks = masks[:, 0]  # a picture: (N, H, W)
        written: dict[Path, Path] = {}
        try:
            for name, write in ((seg_name, lambda p: imageio.write_seg_nrrd(p, masks, self.image.reference,
                                                                             classes, tags)),
                                (labelmap_name, lambda p: imageio.write_image(
                                    imageio.with_geometry(imageio.labels_from_masks(masks, classes),
                                                          self.image.reference), p))):
                handle, temporary = tempfile.mkstemp(prefix=".GraTaSegmenter-save-", suffix=".nrrd", dir=folder)
                os.close(handle)
                written[Path(temporary)] = folder / name
                write(temporary)
        except OSError as exc:
            for temporary in written:
                Path(temporary).unlink(missing_ok=True)
            raise SessionError(f"Could not save into {folder}: {exc}") from None
        except BaseException:
            for temporary in written:
                Path(temporary).unlink(missing_ok=True)
            raise
        return written

    def save(self, name: str, overwrite: bool = False) -> list[Path]:
        """Into the data folder: ``NAME.seg.nrrd`` and ``NAME.labelmap.nrrd``; an existing
        name is replaced only with ``overwrite`` (raises :class:`NeedsConfirmation`)."""
        if self.data_dir is None:
            raise SessionError("This server has no data folder to save into; use Download, or start it with "
                               "--data DIR.")
        try:
            seg_name, labelmap_name = files.save_names(name)
        except files.FileRefused as exc:
            raise SessionError(str(exc)) from None
        written = self.write_results(self.data_dir, seg_name, labelmap_name)
        try:
            saved = files.commit_files(written, overwrite)
        except files.NameTaken as exc:
            raise NeedsConfirmation(str(exc)) from None
        except OSError as exc:
            raise SessionError(f"Could not save into {self.data_dir}: {exc}") from None
        self._baseline = self.fingerprint()
        self.log("Saved " + ", ".join(p.name for p in saved))
        return saved

    def export(self, kind: str = "segmentation") -> tuple[str, bytes]:
        """(file name, bytes) of the segmentation or the labelmap, for a download."""
        seg_name, labelmap_name = files.save_names(self.image.name if self.image else "segmentation")
        folder = Path(tempfile.mkdtemp(prefix="export-", dir=self.work))
        try:
            written = self.write_results(folder, seg_name, labelmap_name)
            final = {v.name: k for k, v in written.items()}
            name = seg_name if kind == "segmentation" else labelmap_name
            return name, final[name].read_bytes()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- end -------------------------------------------------------------------------------
    def close(self) -> None:
        if self.run is not None and self.run.state.busy:
            self.run.cancel_and_wait(3.0)
        self._discard_run()
        self.continual.reset()
        shutil.rmtree(self.work, ignore_errors=True)


def release_app(slicer_app) -> None:
    """Free what a SlicerApp holds in VTK while everything it refers to is still alive: the
    segment editor leaves its effect, the scene drops its nodes (observers still find their
    objects), each view's render window lets go of its OpenGL context and the views are
    removed. VTK observers that call back into Python keep these objects out of reach of
    Python's garbage collector, so without this they live until the interpreter's exit and are
    destroyed there in no particular order (the suspected cause of the test process's
    occasional segmentation fault at exit; Testing/conftest.py also ends it without that
    teardown)."""
    editor = slicer_app.segmentation_editor
    editor.deactivate_effect()
    if editor.undo_stack is not None:
        editor.undo_stack.clear()
    slicer_app.scene.Clear(0)
    manager = slicer_app.view_manager
    for view in list(manager.get_views()):
        view.finalize()
        view_node = view.get_view_node()
        if view_node is not None:
            manager.remove_view(view_node.GetSingletonTag())


def _tag(segment, tag_name: str) -> str | None:
    """A segment's tag value, or None when it has none."""
    holder = vtkReference("")
    return str(holder) or None if segment.GetTag(tag_name, holder) else None


def _geometry_only(image: sitk.Image) -> sitk.Image:
    """An image of one byte per voxel with ``image``'s size and geometry: the reference
    of every result, without keeping the pixels of a large volume in memory twice."""
    reference = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    reference.CopyInformation(image)
    return reference
