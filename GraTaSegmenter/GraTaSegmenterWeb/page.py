"""The page: a trame (Vuetify 3) layout over one :class:`~.session.WebSession`.

Left, the GraTa panel (image, model, the Slicer panel's adaptation settings,
Adapt & Segment / Cancel, progress with time left, the live plot, segment
sizes, the uncertainty layer, save and download, messages and the log).
Middle, Slicer's views rendered on the server (trame-slicer's remote views):
one slice view for a picture, a slice view and a 3D view for a volume.
Right, trame-slicer's segment editor (paint, erase, scissors, draw, logical
operators, threshold, islands, smoothing, undo/redo, segment list with
visibility).

Every control calls a handler through :func:`_reported`: a :class:`SessionError`
becomes the message at the top of the panel (details in the log), a
:class:`NeedsConfirmation` opens a dialog whose Continue repeats the action
with ``confirm``. The run is polled by an asyncio task, so the page stays
responsive; state sent to the browser is only what changed.
"""

from __future__ import annotations

import asyncio
import functools
import traceback
from dataclasses import fields
from pathlib import Path

from trame.app.file_upload import ClientFile
from trame.ui.vuetify3 import VAppLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_server.utils.asynchronous import create_task
from trame_server.utils.typed_state import TypedState

from GraTaSegmenterLib.figures import plot_adaptation
from GraTaSegmenterLib.slicer_support.parameters import CHOICES, METHOD_DESCRIPTIONS, AdaptParameters
from GraTaSegmenterLib.slicer_support.process import RunState
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic.segmentation import SegmentEditorLogic
from trame_slicer.app.ui import SegmentEditorUI
from trame_slicer.app.ui.load_volume_ui import LoadVolumeButton, LoadVolumeItemsState
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from . import files
from .session import MODEL_FILE, NeedsConfirmation, SessionError, WebSession, release_app

POLL_SECONDS = 0.2
LABELS = {"method": "Method", "steps": "Steps per image", "learning_rate": "Learning rate",
          "aux_loss": "Auxiliary loss", "pseudo_loss": "Pseudo loss", "mode": "Mode", "device": "Device",
          "precision": "Precision",
          "seed": "Seed", "uncertainty": "Uncertainty map", "postprocess": "Anatomical post-processing"}
PICTURE_LAYOUT, VOLUME_LAYOUT = "picture", "volume"


def _p(name: str) -> str:
    return f"grata_p_{name}"


class GraTaPage:
    def __init__(self, server, data_dir: str | Path | None = None, python: list[str] | None = None):
        self.server = server
        server.enable_module(trame_slicer_module)
        self.state, self.ctrl = server.state, server.controller
        self.app = SlicerApp()
        register_rca_factories(self.app.view_manager, server)
        # The views first: an effect's view pipelines find their view only if it exists when the
        # segment editor registers the effect (made the other way round, painting does nothing).
        self.layouts = LayoutManager(self.app.scene, self.app.view_manager, server)
        axial = ViewLayoutDefinition.axial_view()
        self.layouts.register_layout_dict({
            PICTURE_LAYOUT: Layout(LayoutDirection.Vertical, [axial]),
            VOLUME_LAYOUT: Layout(LayoutDirection.Horizontal, [axial, ViewLayoutDefinition.threed_view()]),
        })
        self.layouts.set_layout(PICTURE_LAYOUT)
        self.editor_logic = SegmentEditorLogic(server, self.app)  # before the session: it brings the undo stack
        self.session = WebSession(self.app, data_dir=data_dir, python=python)
        self._pending = None  # the action a confirmation dialog will repeat
        self._plot_points = -1
        self._warned_slow = False  # the slow-run warning of the current run was shown
        self._poller = None
        self._init_state()
        self._build()
        self.editor_logic.set_ui(self.editor_ui)
        self.app.segmentation_editor.segmentation_modified.connect(self._segments_changed)
        self.ctrl.on_server_ready.add(self._start_polling)

    # -- state ---------------------------------------------------------------------------
    def _init_state(self) -> None:
        s = self.state
        s.trame__title = "GraTa Segmenter"
        defaults = AdaptParameters()
        for f in fields(AdaptParameters):
            s[_p(f.name)] = getattr(defaults, f.name)
        s.grata_models = self.session.model_choices()
        s.grata_model_id = self.session.default_model
        s.grata_model_file = ""
        s.grata_model_entries = files.model_entries(self.session.data_dir)
        s.grata_model_card = self.session.model_card_text(s.grata_model_id)
        s.grata_data_entries = self.session.data_entries()
        s.grata_has_data = self.session.data_dir is not None
        s.grata_data_choice = None
        s.grata_image_name = ""
        s.grata_busy = False
        s.grata_progress = 0
        s.grata_status = "Open an image to start."
        s.grata_plot_svg = ""
        s.grata_plot_points = 0
        s.grata_segments = []
        s.grata_corrected = False
        s.grata_has_uncertainty = False
        s.grata_show_uncertainty = False
        s.grata_save_name = ""
        s.grata_download_names = {"segmentation": "segmentation.seg.nrrd", "labelmap": "segmentation.labelmap.nrrd"}
        s.grata_message = ""
        s.grata_message_type = "info"
        s.grata_log = ""
        s.grata_confirm_open = False
        s.grata_confirm_text = ""
        s.change("grata_show_uncertainty")(self._on_uncertainty_toggled)
        s.change("grata_model_id", "grata_model_file")(self._on_model_chosen)

    def _say(self, text: str, kind: str = "info") -> None:
        self.state.grata_message, self.state.grata_message_type = text, kind

    def _sync_log(self) -> None:
        self.state.grata_log = "\n".join(self.session.log_lines[-200:])

    # -- the layout -------------------------------------------------------------------------
    def _build(self) -> None:
        with VAppLayout(self.server, theme="dark") as self.layout:
            with v3.VAppBar(density="compact"):
                v3.VToolbarTitle("GraTa Segmenter")
                html.Div("{{ grata_image_name }}", classes="text-caption mr-4", id="grata-image-name")
            with v3.VNavigationDrawer(permanent=True, width=400, location="left"):
                with html.Div(classes="pa-3", style="overflow-y: auto;"):
                    self._message_area()
                    self._image_section()
                    self._model_section()
                    self._run_section()
                    self._result_section()
                    self._settings_section()
                    self._log_section()
            with v3.VNavigationDrawer(permanent=True, width=340, location="right"):
                self.editor_ui = SegmentEditorUI()
                with html.Div(classes="d-flex justify-center pa-2"):
                    self.editor_ui.build_undo_redo_buttons()
            with v3.VMain():
                with html.Div(style="height: calc(100vh - 48px); display: flex;", id="grata-views"):
                    self.layouts.initialize_layout_grid(self.layout)
            self._confirm_dialog()

    def _message_area(self) -> None:
        v3.VAlert(v_if=("grata_message",), text=("grata_message",), type=("grata_message_type",),
                  closable=True, density="compact", classes="mb-3", id="grata-message",
                  click_close="grata_message = ''")

    def _image_section(self) -> None:
        html.Div("Image", classes="text-subtitle-2 mb-1")
        with html.Div(classes="d-flex align-center mb-2"):
            html.Span("Upload:", classes="text-caption mr-2")
            self.upload_image = LoadVolumeButton(
                name="Upload an image (PNG, JPEG, TIFF, NRRD, NIfTI, MHA)", load_directory=False,
                icon="mdi-file-upload", typed_state=self._typed("grata_upload_file"), id="grata-upload-image")
            self.upload_folder = LoadVolumeButton(
                name="Upload a DICOM folder", load_directory=True, icon="mdi-folder-upload",
                typed_state=self._typed("grata_upload_folder"))
            self.upload_image.on_load_volume.connect(self._on_upload_image)
            self.upload_folder.on_load_volume.connect(self._on_upload_image)
        with html.Div(v_if=("grata_has_data",), classes="d-flex align-center mb-2"):
            v3.VSelect(label="From the data folder", items=("grata_data_entries",), v_model=("grata_data_choice",),
                       density="compact", hide_details=True, id="grata-data-select")
            v3.VBtn("Open", click=self._reported(self.open_data_entry), classes="ml-2", id="grata-open",
                    disabled=("!grata_data_choice || grata_busy",))

    def _typed(self, name: str) -> TypedState:
        return TypedState(self.state, LoadVolumeItemsState, namespace=name)

    def _model_section(self) -> None:
        html.Div("Model", classes="text-subtitle-2 mt-3 mb-1")
        v3.VSelect(items=("grata_models",), v_model=("grata_model_id",), density="compact", hide_details=True,
                   id="grata-model")
        with html.Div(v_if=(f"grata_model_id === '{MODEL_FILE}'",), classes="d-flex align-center mt-2"):
            v3.VSelect(label="Model file in the data folder", items=("grata_model_entries",),
                       v_model=("grata_model_file",), density="compact", hide_details=True)
            self.upload_model = LoadVolumeButton(name="Upload a model file (a model folder as .zip)",
                                                 load_directory=False, icon="mdi-upload",
                                                 typed_state=self._typed("grata_upload_model"), id="grata-upload-model")
            self.upload_model.on_load_volume.connect(self._on_upload_model)
        html.Div("{{ grata_model_card }}", v_show=("grata_model_card",), id="grata-model-card",
                 classes="text-caption mt-2 pa-1",  # a card can be long: it scrolls, the controls stay in view
                 style="white-space: pre-line; line-height: 1.3; max-height: 8.5em; overflow-y: auto; "
                       "border: 1px solid rgba(255, 255, 255, 0.15); border-radius: 4px")

    def _settings_section(self) -> None:
        with v3.VExpansionPanels(classes="mt-3", variant="accordion"):
            with v3.VExpansionPanel(title="Adaptation settings"):
                with v3.VExpansionPanelText():
                    for f in fields(AdaptParameters):
                        name, label = _p(f.name), LABELS.get(f.name, f.name)
                        if f.name in CHOICES:
                            items = [{"value": c, "title": METHOD_DESCRIPTIONS.get(c, c) if f.name == "method" else c}
                                     for c in CHOICES[f.name]]
                            v3.VSelect(label=label, items=(repr(items),), v_model=(name,), density="compact",
                                       hide_details=True, classes="mb-2", id=f"grata-{f.name}")
                        elif f.type in ("bool", bool):
                            v3.VCheckbox(label=label, v_model=(name,), density="compact", hide_details=True,
                                         id=f"grata-{f.name}")
                        else:
                            v3.VTextField(label=label, v_model=(name,), type="number", density="compact",
                                          hide_details=True, classes="mb-2", id=f"grata-{f.name}")

    def _run_section(self) -> None:
        v3.VBtn("{{ grata_busy ? 'Cancel' : 'Adapt & Segment' }}", block=True, classes="mt-3",
                color=("grata_busy ? 'error' : 'primary'",), click=self._reported(self.adapt_or_cancel),
                disabled=("!grata_image_name",), id="grata-adapt")
        v3.VProgressLinear(model_value=("grata_progress",), height=6, classes="mt-2",
                           color=("grata_busy ? 'primary' : 'success'",))
        html.Div("{{ grata_status }}", classes="text-caption mt-1", id="grata-status")
        html.Div(v_html=("grata_plot_svg",), id="grata-plot", classes="mt-2",
                 style="background: white; border-radius: 4px; line-height: 0;", v_show=("grata_plot_svg",))

    def _result_section(self) -> None:
        with html.Div(v_if=("grata_segments.length",), classes="mt-3", id="grata-segments"):
            html.Div("Segments", classes="text-subtitle-2")
            with html.Div(v_for="seg in grata_segments", key="seg.name", classes="d-flex align-center text-body-2"):
                html.Span(style=("{ background: seg.color, width: '12px', height: '12px', display: 'inline-block',"
                                 " marginRight: '6px', borderRadius: '2px' }",))
                html.Span("{{ seg.name }}", classes="mr-2")
                v3.VSpacer()
                html.Span("{{ seg.voxels }} voxels", classes="grata-voxels", raw_attrs=[':data-name="seg.name"'])
            html.Div("Corrected, not saved", v_if=("grata_corrected",), classes="text-caption text-warning")
        v3.VSwitch(label="Show the uncertainty map", v_model=("grata_show_uncertainty",),
                   disabled=("!grata_has_uncertainty",), density="compact", hide_details=True, color="primary",
                   id="grata-uncertainty")
        with html.Div(v_if=("grata_segments.length",)):
            with html.Div(v_if=("grata_has_data",), classes="d-flex align-center mt-2"):
                v3.VTextField(label="Save as (in the data folder)", v_model=("grata_save_name",),
                              density="compact", hide_details=True, id="grata-save-name")
                v3.VBtn("Save", click=self._reported(self.save), classes="ml-2", id="grata-save",
                        disabled=("grata_busy",))
            with html.Div(classes="d-flex mt-2"):
                for kind, text in (("segmentation", "Download .seg.nrrd"), ("labelmap", "Download labelmap")):
                    v3.VBtn(text, size="small", variant="tonal", classes="mr-2", id=f"grata-download-{kind}",
                            click=(f"utils.download(grata_download_names['{kind}'], "
                                   f"trigger('{self.ctrl.trigger_name(self.download)}', ['{kind}']), "
                                   f"'application/octet-stream')"))

    def _log_section(self) -> None:
        with v3.VExpansionPanels(classes="mt-3"):
            with v3.VExpansionPanel(title="Log"):
                with v3.VExpansionPanelText():
                    html.Pre("{{ grata_log }}", id="grata-log",
                             style="white-space: pre-wrap; font-size: 11px; max-height: 240px; overflow-y: auto;")

    def _confirm_dialog(self) -> None:
        with v3.VDialog(v_model=("grata_confirm_open",), max_width=480, persistent=True):
            with v3.VCard(title="Please confirm", id="grata-confirm"):
                v3.VCardText("{{ grata_confirm_text }}")
                with v3.VCardActions():
                    v3.VSpacer()
                    v3.VBtn("Keep", click=self._decline, id="grata-confirm-no")
                    v3.VBtn("Continue", color="warning", click=self._reported(self._confirm), id="grata-confirm-yes")

    # -- reporting ---------------------------------------------------------------------------
    def _reported(self, action):
        @functools.wraps(action)
        def handler(*args, **kwargs):
            try:
                return action(*args, **kwargs)
            except NeedsConfirmation as exc:
                self._pending = functools.partial(action, *args, **{**kwargs, "confirm": True})
                self.state.grata_confirm_text, self.state.grata_confirm_open = str(exc), True
            except SessionError as exc:
                self._say(str(exc), "error")
                if exc.details:
                    self.session.log(exc.details)
            except Exception as exc:  # noqa: BLE001 - shown, never a dead page
                self._say(f"Unexpected error: {exc}. Details are in the log.", "error")
                self.session.log(traceback.format_exc())
            finally:
                self._sync_log()
            return None

        return handler

    def _confirm(self) -> None:
        pending, self._pending = self._pending, None
        self.state.grata_confirm_open = False
        if pending is not None:
            pending()

    def _decline(self) -> None:
        self._pending = None
        self.state.grata_confirm_open = False
        self._say("Nothing was changed.")

    # -- actions -------------------------------------------------------------------------------
    def open_data_entry(self, confirm: bool = False) -> None:
        self.open_path(self.session.data_path(self.state.grata_data_choice), confirm=confirm)

    def open_path(self, path, confirm: bool = False) -> None:
        node = self.session.open_image(path, confirm=confirm)
        image = self.session.image
        self.layouts.set_layout(VOLUME_LAYOUT if image.is_volume else PICTURE_LAYOUT)
        self.session.show()
        self.editor_logic.on_volume_changed(node)
        self.state.grata_image_name = image.name
        self.state.grata_save_name = image.name + " GraTa"
        seg, lab = files.save_names(image.name)
        self.state.grata_download_names = {"segmentation": seg, "labelmap": lab}
        self._reset_run_view("Ready: choose the model and settings, then Adapt & Segment.")
        self._say(f"Opened {Path(path).name}.", "success")

    def _on_upload_image(self, uploads: list[dict]) -> None:
        def upload(confirm: bool = False):
            path = self.session.store_uploads([(ClientFile(f).name, ClientFile(f).content) for f in uploads])
            self.open_path(path, confirm=confirm)

        self._reported(upload)()
        self.state.flush()

    def _on_model_chosen(self, grata_model_id=None, grata_model_file=None, **_):
        try:
            chosen = self.session.model_file(grata_model_file) if grata_model_id == MODEL_FILE else None
            self.state.grata_model_card = self.session.model_card_text(grata_model_id, chosen)
        except SessionError as exc:
            self.state.grata_model_card = str(exc)

    def _on_upload_model(self, uploads: list[dict]) -> None:
        def upload():
            if not uploads:
                raise SessionError("no file was uploaded")
            upload = ClientFile(uploads[0])
            path = self.session.store_model_upload(upload.name, upload.content)
            self.state.grata_model_entries = [*files.model_entries(self.session.data_dir), str(path)]
            self.state.grata_model_file = str(path)
            what = "Model folder" if path.is_dir() else "Model file"
            self._say(f"{what} {path.name} uploaded; it is checked when the run starts.", "success")

        self._reported(upload)()
        self.state.flush()

    def parameters(self) -> AdaptParameters:
        values = {}
        for f in fields(AdaptParameters):
            raw = self.state[_p(f.name)]
            try:
                if f.type in ("int", int):
                    raw = int(float(raw))
                elif f.type in ("float", float):
                    raw = float(raw)
                elif f.type in ("bool", bool):
                    raw = bool(raw)
            except (TypeError, ValueError):
                raise SessionError(f"{LABELS.get(f.name, f.name)}: {raw!r} is not a number") from None
            values[f.name] = raw
        return AdaptParameters(**values)

    def adapt_or_cancel(self, confirm: bool = False) -> None:
        if self.session.busy:
            self.session.cancel()
            self.state.grata_status = "Cancelling..."
            return
        model_file = self.session.model_file(self.state.grata_model_file)
        self._reset_run_view("Starting (loading the model)...")
        self.session.start(self.parameters(), self.state.grata_model_id, model_file, confirm=confirm)
        self._say("")
        self._after_poll()

    def save(self, confirm: bool = False) -> None:
        saved = self.session.save(self.state.grata_save_name, overwrite=confirm)
        self.state.grata_data_entries = self.session.data_entries()
        self._segments_changed()
        self._say("Saved " + " and ".join(p.name for p in saved) + " in the data folder.", "success")

    def download(self, kind: str):
        try:
            _name, data = self.session.export(kind)
        except SessionError as exc:
            self._say(str(exc), "error")
            return None
        return self.server.protocol.addAttachment(data)

    def _on_uncertainty_toggled(self, grata_show_uncertainty=False, **_):
        self.session.set_uncertainty_visible(bool(grata_show_uncertainty))

    # -- the run, polled ---------------------------------------------------------------------------
    def _start_polling(self, **_) -> None:
        if self._poller is None:
            self._poller = create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if self.session.run is not None and self.session.workspace is not None:
                with self.state:
                    self._reported(self._poll_once)()

    def _poll_once(self) -> None:
        """One look at the run (an error here is shown, and the next look still comes)."""
        self.session.poll()
        self._after_poll()

    def _reset_run_view(self, status: str) -> None:
        self._plot_points = -1
        self._warned_slow = False
        self.state.grata_progress, self.state.grata_status = 0, status
        self.state.grata_plot_svg, self.state.grata_plot_points = "", 0

    def _after_poll(self) -> None:
        run = self.session.run
        if run is None:
            return
        progress = run.progress
        self.state.grata_busy = run.state.busy
        self.state.grata_progress = round(100 * progress.fraction)
        self.state.grata_status = "Cancelling..." if run.state is RunState.Cancelling else progress.status_text()
        warning = progress.slow_warning()
        if warning and run.state.busy and not self._warned_slow:  # once per run, above the controls
            self._warned_slow = True
            self._say(warning, "warning")
            self.session.log(warning)
        if len(progress.plot_steps) != self._plot_points:
            self._plot_points = len(progress.plot_steps)
            self.state.grata_plot_points = self._plot_points
            self.state.grata_plot_svg = _plot_svg(progress) if progress.plot_steps else ""
        if not run.state.busy and self.session.workspace is None:
            if run.state is RunState.Done:
                self._say("Done: the segmentation is in the views; correct it with the editor on the right.",
                          "success")
                self.state.grata_has_uncertainty = self.session.uncertainty is not None
                self._on_uncertainty_toggled(self.state.grata_show_uncertainty)
                self.editor_logic.on_volume_changed(self.session.image.volume_node)
                # a volume's segments as surfaces in the 3D view (the editor's Show 3D switch follows)
                self.app.segmentation_editor.set_surface_representation_enabled(self.session.image.is_volume)
                self._segments_changed()
            else:
                failure = self.session.last_failure or "the run failed"
                self.state.grata_status = failure
                self._say(failure, "info" if run.cancelled else "error")
        self._sync_log()

    def _segments_changed(self, *_) -> None:
        session = self.session
        if session.segmentation is None:
            self.state.grata_segments, self.state.grata_corrected = [], False
            return
        rows, fingerprint = session.summary()
        self.state.grata_segments = [
            {"name": row["name"], "voxels": row["voxels"],
             "color": "#%02x%02x%02x" % tuple(int(round(255 * c)) for c in row["color"])} for row in rows]
        self.state.grata_corrected = session.is_corrected(fingerprint)

    def close(self) -> None:
        """End a run, remove the session's files, release the scene and views (see
        :func:`release_app`) and take the server out of trame's registry."""
        if self._poller is not None:
            self._poller.cancel()
        self.session.close()
        release_app(self.app)
        from trame.app import core

        if core.AVAILABLE_SERVERS.get(self.server.name) is self.server:
            del core.AVAILABLE_SERVERS[self.server.name]


def _plot_svg(progress) -> str:
    import io

    records = [{"step": s, "cosine": c, "lr": lr}
               for s, c, lr in zip(progress.plot_steps, progress.plot_cosine, progress.plot_lr)]
    buffer = io.BytesIO()
    plot_adaptation(records, buffer, fmt="svg", size=(3.8, 3.0))
    text = buffer.getvalue().decode("utf-8")
    return text[text.find("<svg"):]  # the element only: v-html takes no XML prolog or doctype
