"""The Z-Image docker: settings, Generate / Cancel, progress with per-step previews, history,
and the engine section (connect, start a local engine, CURVE key files).

The engine is never waited on here: a QTimer calls Session.pump(), which only drains the
client's event queue (the socket lives on the client's own thread).
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

from krita import DockWidget, Krita
from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtGui import QImage, QPixmap
from PyQt5.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                             QGroupBox, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                             QListWidgetItem, QPlainTextEdit, QProgressBar, QPushButton,
                             QSpinBox, QVBoxLayout, QWidget)

from ..core import messages, pixels, requests
from ..core.requests import KritaSettings
from ..core.session import Session
from ..core.shared import protocol_messages
from . import canvas

SETTINGS_GROUP = "zimage_krita"
PUMP_MS = 50
PREVIEW_SIDE = 256
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
MODE_LABELS = ((requests.GENERATE, "Generate"), (requests.IMG2IMG, "Image to image"),
               (requests.INPAINT, "Inpaint selection"))
SOURCE_LABELS = ((requests.CANVAS, "Visible canvas"), (requests.LAYER, "Current layer"))
ENGINE_FIELDS = ("address", "python", "folder", "model", "server_key", "client_key")


class KritaStore:
    """Engine settings kept in kritarc between sessions."""

    def read(self, key: str, default: str = "") -> str:
        return Krita.instance().readSetting(SETTINGS_GROUP, key, default)

    def write(self, key: str, value: str) -> None:
        Krita.instance().writeSetting(SETTINGS_GROUP, key, value)


def active_document():
    return Krita.instance().activeDocument()


def _combo(items) -> QComboBox:
    box = QComboBox()
    for key, label in items:
        box.addItem(label, key)
    return box


def _select(box: QComboBox, key) -> None:
    i = box.findData(key)
    if i >= 0:
        box.setCurrentIndex(i)


class Panel(QWidget):
    """The docker's content. `document` returns the document to work on and `layer` its
    current layer (Krita's active ones; headless Krita has no view, hence no active layer,
    so tests pass their own)."""

    def __init__(self, parent=None, *, document=active_document, layer=canvas.current_layer,
                 store=None, session: Session | None = None):
        super().__init__(parent)
        self.document = document
        self.layer = layer
        self.store = store or KritaStore()
        self.session = session or Session()
        self._shown = None
        self._build()
        self._load_engine_settings()
        self.session.load_history(self.store.read("history", ""))
        self._fill_history()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zimage-krita")
        self._pending: list = []               # (job, future of its layers' pixels)
        self.timer = QTimer(self)
        self.timer.setInterval(PUMP_MS)
        self.timer.timeout.connect(self.pump)
        self.timer.start()
        self.refresh()

    # ---- layout -----------------------------------------------------------------------
    def _build(self) -> None:
        root = QVBoxLayout(self)
        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText("Prompt (English or Chinese)")
        self.prompt.setMaximumHeight(72)
        root.addWidget(self.prompt)

        form = QFormLayout()
        self.mode = _combo(MODE_LABELS)
        self.source = _combo(SOURCE_LABELS)
        form.addRow("Mode", self.mode)
        form.addRow("From", self.source)
        self.size = _combo([(requests.SIZE_CANVAS, "Canvas size")]
                           + [(k, label) for k, label, _w, _h in requests.SIZE_PRESETS]
                           + [(requests.SIZE_CUSTOM, "Custom")])
        form.addRow("Size", self.size)
        self.width_box, self.height_box = QSpinBox(), QSpinBox()
        for box in (self.width_box, self.height_box):
            box.setRange(16, 4096)
            box.setSingleStep(16)
            box.setValue(1024)
        wh = QHBoxLayout()
        wh.addWidget(self.width_box)
        wh.addWidget(QLabel("x"))
        wh.addWidget(self.height_box)
        form.addRow("", wh)
        self.steps = QSpinBox()
        self.steps.setRange(1, 50)
        self.steps.setValue(8)
        form.addRow("Steps", self.steps)
        self.seed = QSpinBox()
        self.seed.setRange(0, requests.shared.requests.MAX_SEED)
        self.seed_random = QCheckBox("Random")
        self.seed_random.setChecked(True)
        sr = QHBoxLayout()
        sr.addWidget(self.seed, 1)
        sr.addWidget(self.seed_random)
        form.addRow("Seed", sr)
        self.num_images = QSpinBox()
        self.num_images.setRange(1, 4)
        form.addRow("Images", self.num_images)
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.0, 1.0)
        self.strength.setSingleStep(0.05)
        self.strength.setValue(0.6)
        form.addRow("Strength", self.strength)
        self.seamless = QCheckBox("Seamless (tiles in x and y)")
        form.addRow("", self.seamless)
        root.addLayout(form)

        buttons = QHBoxLayout()
        self.generate_button = QPushButton("Generate")
        self.cancel_button = QPushButton("Cancel")
        buttons.addWidget(self.generate_button, 1)
        buttons.addWidget(self.cancel_button)
        root.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        root.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        self.preview = QLabel()
        self.preview.setAlignment(Qt.AlignCenter)
        self.preview.setMinimumHeight(64)
        root.addWidget(self.preview)

        hist = QGroupBox("History")
        hl = QVBoxLayout(hist)
        self.history = QListWidget()
        self.history.setMaximumHeight(110)
        self.recall_button = QPushButton("Recall")
        hl.addWidget(self.history)
        hl.addWidget(self.recall_button)
        root.addWidget(hist)

        eng = QGroupBox("Engine")
        ef = QFormLayout(eng)
        self.address = QLineEdit(DEFAULT_ADDRESS)
        ef.addRow("Address", self.address)
        self.python = QLineEdit()
        self.python.setPlaceholderText("the engine checkout's .venv/bin/python")
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("the engine checkout")
        self.model = QLineEdit("Tongyi-MAI/Z-Image-Turbo")
        ef.addRow("Python", self.python)
        ef.addRow("Folder", self.folder)
        ef.addRow("Model", self.model)
        self.server_key = QLineEdit()
        self.server_key.setPlaceholderText("server.key (studio engine)")
        self.client_key = QLineEdit()
        self.client_key.setPlaceholderText("NAME.key_secret")
        for label, edit in (("Server key", self.server_key), ("Client key", self.client_key)):
            row = QHBoxLayout()
            browse = QPushButton("...")
            browse.setMaximumWidth(28)
            browse.clicked.connect(lambda _=False, e=edit: self._browse(e))
            row.addWidget(edit, 1)
            row.addWidget(browse)
            ef.addRow(label, row)
        eb = QHBoxLayout()
        self.connect_button = QPushButton("Connect")
        self.start_button = QPushButton("Start Local Engine")
        self.stop_button = QPushButton("Stop")
        eb.addWidget(self.connect_button)
        eb.addWidget(self.start_button)
        eb.addWidget(self.stop_button)
        ef.addRow(eb)
        self.engine_status = QLabel("")
        self.engine_status.setWordWrap(True)
        ef.addRow(self.engine_status)
        root.addWidget(eng)
        root.addStretch(1)

        self.generate_button.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.recall_button.clicked.connect(self.recall)
        self.connect_button.clicked.connect(self.connect_engine)
        self.start_button.clicked.connect(self.start_engine)
        self.stop_button.clicked.connect(self.stop_engine)
        self.mode.currentIndexChanged.connect(lambda _i: self.refresh())
        self.size.currentIndexChanged.connect(lambda _i: self.refresh())
        self.seed_random.toggled.connect(lambda _b: self.refresh())

    def _browse(self, edit: QLineEdit) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "CURVE key file", edit.text())
        if path:
            edit.setText(path)

    # ---- settings -----------------------------------------------------------------------
    def _load_engine_settings(self) -> None:
        for key in ENGINE_FIELDS:
            value = self.store.read(key, "")
            if value:
                getattr(self, key).setText(value)

    def _save_engine_settings(self) -> None:
        for key in ENGINE_FIELDS:
            self.store.write(key, getattr(self, key).text().strip())

    def settings(self) -> KritaSettings:
        return KritaSettings(
            prompt=self.prompt.toPlainText(), mode=self.mode.currentData(),
            source=self.source.currentData(), size=self.size.currentData(),
            width=self.width_box.value(), height=self.height_box.value(),
            steps=self.steps.value(), seed_random=self.seed_random.isChecked(),
            seed=self.seed.value(), num_images=self.num_images.value(),
            seamless=self.seamless.isChecked(), strength=self.strength.value())

    def apply_settings(self, values: dict) -> None:
        if "prompt" in values:
            self.prompt.setPlainText(values["prompt"])
        if "mode" in values:
            _select(self.mode, values["mode"])
        if "width" in values and "height" in values:
            _select(self.size, requests.SIZE_CUSTOM)
            self.width_box.setValue(values["width"])
            self.height_box.setValue(values["height"])
        for key, box in (("steps", self.steps), ("seed", self.seed)):
            if key in values:
                box.setValue(int(values[key]))
        if "seed_random" in values:
            self.seed_random.setChecked(bool(values["seed_random"]))
        if "strength" in values:
            self.strength.setValue(float(values["strength"]))
        if "seamless" in values:
            self.seamless.setChecked(bool(values["seamless"]))
        self.refresh()

    # ---- engine -------------------------------------------------------------------------
    def _host_version(self) -> str:
        try:
            return Krita.instance().version()
        except Exception:
            return ""

    def connect_engine(self) -> None:
        self._save_engine_settings()
        self.session.connect(self.address.text().strip(), self.server_key.text().strip(),
                             self.client_key.text().strip(), self._host_version())
        self.refresh()

    def start_engine(self) -> None:
        self._save_engine_settings()
        python = self.python.text().strip()
        if not python:
            self.session.notice = messages.explain("engine_not_started").text
        else:
            log = os.path.join(tempfile.gettempdir(), "zimage_krita_engine.log")
            self.session.start_local(python, self.folder.text().strip(),
                                     self.model.text().strip(), self.address.text().strip(),
                                     log_path=log)
        self.refresh()

    def stop_engine(self) -> None:
        self.session.stop_local()
        self.session.disconnect()
        self.session.notice = "Engine stopped"
        self.refresh()

    # ---- jobs ---------------------------------------------------------------------------
    def generate(self) -> None:
        """Build the request from the docker and the document; every problem is a line in
        the docker, and the document is only read."""
        settings = self.settings()
        doc = self.document()
        try:
            canvas.check(doc)
            capture = None
            if settings.mode != requests.GENERATE:
                capture = canvas.capture(doc, settings.source,
                                         settings.mode == requests.INPAINT, self.layer(doc))
                if settings.mode == requests.INPAINT and capture.mask is None:
                    raise canvas.CanvasError("no_selection")
            request = requests.build(settings, self.session.limits(), self.session.caps(),
                                     canvas.size(doc), capture)
        except canvas.CanvasError as exc:
            self.session.notice = messages.explain(exc.code, exc.detail).text
            self.refresh()
            return
        except requests.RequestError as exc:
            self.session.notice = messages.explain(exc.code, exc.detail).text
            self.refresh()
            return
        if self.session.link is None:
            self.connect_engine()
            if self.session.link is None:
                return
        mask = capture.mask if settings.mode == requests.INPAINT else None
        self.session.submit(request, {"document": doc, "settings": settings, "mask": mask,
                                      "canvas": canvas.size(doc)})
        self._shown = None
        self.preview.clear()
        self.refresh()

    def cancel(self) -> None:
        if self.session.cancel():
            self.preview.clear()
        self.refresh()

    def recall(self) -> None:
        item = self.history.currentItem()
        entry = None
        if item is not None:
            entry = self.session.history[self.history.row(item)]
        else:
            doc = self.document()
            node = self.layer(doc) if doc is not None else None
            entry = self.session.entry_for_layer(node.name()) if node is not None else None
        if entry is not None:
            self.apply_settings(entry.recall())

    def pump(self) -> None:
        for effect in self.session.pump():
            if effect.kind == "preview":
                self._show_preview(effect.job.preview)
            elif effect.kind == "result":
                self._prepare(effect.job)
        self._apply_ready()
        if self.session.view_key() != self._shown:
            self.refresh()

    def _show_preview(self, image) -> None:
        if image is None:
            return
        if image.format == "raw":
            qimg = QImage(image.to_rgb_bytes(), image.width, image.height, image.width * 3,
                          QImage.Format_RGB888).copy()
        else:
            qimg = QImage.fromData(bytes(image.data))
        if not qimg.isNull():
            self.preview.setPixmap(QPixmap.fromImage(qimg).scaled(
                PREVIEW_SIDE, PREVIEW_SIDE, Qt.KeepAspectRatio, Qt.SmoothTransformation))

    def _prepare(self, job) -> None:
        """Result -> layer pixels on the worker thread (the bytes work of a 2048² result
        would stall the UI for tens of ms); the pump adds the layers when they are ready."""
        settings, canvas_size = job.context["settings"], job.context["canvas"]
        crop, mask = requests.crops_to_canvas(settings), job.context.get("mask")
        images = list(job.images)
        work = self._worker.submit(lambda: [(image.seed,) + pixels.layer_pixels(
            image, canvas_size, crop, mask) for image in images])
        self._pending.append((job, work))

    def _apply_ready(self) -> None:
        while self._pending and self._pending[0][1].done():
            job, work = self._pending.pop(0)
            if job.active:                    # not cancelled while converting
                self._apply(job, work)

    def _apply(self, job, work) -> None:
        """One new layer per image, named after prompt and seed."""
        doc, settings = job.context["document"], job.context["settings"]
        entries = []
        try:
            layers = work.result()
            canvas.check(doc)
            for i, (seed, w, h, bgra) in enumerate(layers):
                seed = seed if seed is not None else int(job.params["seed"]) + i
                name = requests.image_name(job.params["prompt"], seed)
                canvas.add_result_layer(doc, name, w, h, bgra)
                entries.append(self.session.record(job, settings, seed, name))
        except canvas.CanvasError as exc:
            self.session.fail(job, exc.code if exc.code != "capture_failed" else
                              "apply_failed", exc.detail)
            return
        except Exception as exc:        # bad pixels, or Krita refused the layer: say so
            self.session.fail(job, "apply_failed", str(exc))
            return
        self.session.complete(job, entries)
        self.store.write("history", self.session.history_json())
        self._fill_history()

    def _fill_history(self) -> None:
        self.history.clear()
        for entry in self.session.history:
            item = QListWidgetItem(entry.label)
            r = entry.record
            item.setToolTip(f"{r.prompt}\nseed {r.seed}, {r.steps} steps, {r.width} x "
                            f"{r.height}, {entry.mode}")
            self.history.addItem(item)

    # ---- drawing ------------------------------------------------------------------------
    def refresh(self) -> None:
        s = self.session
        self._shown = s.view_key()
        busy = s.busy
        job = s.job
        self.generate_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        done = job is not None and job.phase == protocol_messages.JobState.SUCCEEDED
        self.progress.setValue(int((job.progress if job is not None and job.active else
                                    (1.0 if done else 0)) * 1000))
        text = s.status_text()
        if text != self.status.text():
            self.status.setText(text)
        line = s.engine_line()
        if line != self.engine_status.text():
            self.engine_status.setText(line)
        mode = self.mode.currentData()
        self.source.setEnabled(mode != requests.GENERATE)
        self.size.setEnabled(mode == requests.GENERATE)
        custom = mode == requests.GENERATE and self.size.currentData() == requests.SIZE_CUSTOM
        self.width_box.setEnabled(custom)
        self.height_box.setEnabled(custom)
        self.strength.setEnabled(mode == requests.IMG2IMG)
        self.seed.setEnabled(not self.seed_random.isChecked())

    def shutdown(self) -> None:
        self.timer.stop()
        self._worker.shutdown(wait=False)
        self.session.close()


class ZImageDocker(DockWidget):
    def __init__(self):
        super().__init__()
        self.setWindowTitle("Z-Image")
        self.panel = Panel(self)
        self.setWidget(self.panel)
        from . import extension
        extension.PANELS.append(self.panel)

    def canvasChanged(self, canvas):     # noqa: N802 (Krita's name)
        pass
