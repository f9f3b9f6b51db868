"""Stand-in for PythonQt's ``qt`` module: only the names that Slicer's Python
layers (ScriptedLoadableModule, parameterNodeWrapper, util, SampleData) and
GraTaSegmenter.py reach when the Logic and the self-test run without a GUI.

Nothing here draws. Timers fire from :meth:`SlicerApplicationStandIn.processEvents`;
settings live in memory for the test session; message boxes are never
shown because ``slicer.app.testingEnabled()`` is true (Slicer's own util
then returns the testing answer without a dialog).
"""

from __future__ import annotations

import os
import time


class Qt:
    ToolTipRole = 3
    UserRole = 256
    WaitCursor = 3
    ShiftModifier = 0x02000000
    NoModifier = 0


class QObject:
    """Signals by name, as PythonQt's ``obj.connect("signal(args)", slot)``."""

    def __init__(self, *args, **kwargs):
        self._slots: dict[str, list] = {}

    def connect(self, signal, slot):
        self._slots.setdefault(signal, []).append(slot)
        return True

    def disconnect(self, signal, slot=None):
        if slot is None:
            self._slots.pop(signal, None)
        elif slot in self._slots.get(signal, []):
            self._slots[signal].remove(slot)
        return True

    def emit(self, signal, *args):
        for slot in list(self._slots.get(signal, [])):
            slot(*args)

    def deleteLater(self):
        pass


class QTimer(QObject):
    """A timer driven by ``slicer.app.processEvents()`` (the only event loop here)."""

    _pending: list = []  # (due time, callable) of singleShot calls
    _active: list = []

    def __init__(self, *args):
        super().__init__()
        self.interval = 0
        self.singleShot_ = False
        self._due = None

    def setInterval(self, msec):
        self.interval = int(msec)

    def setSingleShot(self, value):
        self.singleShot_ = bool(value)

    def start(self, msec=None):
        if msec is not None:
            self.interval = int(msec)
        self._due = time.monotonic() + self.interval / 1000.0
        if self not in QTimer._active:
            QTimer._active.append(self)

    def stop(self):
        self._due = None
        if self in QTimer._active:
            QTimer._active.remove(self)

    def isActive(self):
        return self._due is not None

    @staticmethod
    def singleShot(msec, callback):
        QTimer._pending.append((time.monotonic() + msec / 1000.0, callback))

    @classmethod
    def fire_due(cls):
        now = time.monotonic()
        due = [item for item in cls._pending if item[0] <= now]
        cls._pending = [item for item in cls._pending if item[0] > now]
        for _t, callback in due:
            callback()
        for timer in list(cls._active):
            if timer._due is not None and timer._due <= now:
                timer._due = None if timer.singleShot_ else now + timer.interval / 1000.0
                if timer.singleShot_:
                    cls._active.remove(timer)
                timer.emit("timeout()")

    @classmethod
    def reset(cls):
        cls._pending = []
        cls._active = []


class QSettings:
    """In-memory settings shared by every instance (one 'user' per test session)."""

    _store: dict = {}

    def value(self, key, default=None):
        return QSettings._store.get(key, default)

    def setValue(self, key, value):
        QSettings._store[key] = value

    def contains(self, key):
        return key in QSettings._store

    def remove(self, key):
        for k in [k for k in QSettings._store if k == key or k.startswith(key + "/")]:
            del QSettings._store[k]

    def allKeys(self):
        return list(QSettings._store)


class QMessageBox:
    Ok, Cancel, Yes, No, Retry, Close = 0x400, 0x400000, 0x4000, 0x10000, 0x80000, 0x200000
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4


class QApplication:
    """Counts override cursors, so that a test can see a wait cursor left on."""

    overrideCursors: list = []

    @staticmethod
    def setOverrideCursor(cursor):
        QApplication.overrideCursors.append(cursor)

    @staticmethod
    def restoreOverrideCursor():
        if QApplication.overrideCursors:
            QApplication.overrideCursors.pop()


class QIcon:
    def __init__(self, path=""):
        self.path = str(path)


class QUrl:
    TolerantMode = 0

    def __init__(self, url="", mode=None):
        self.url = str(url)

    @staticmethod
    def fromLocalFile(path):
        return QUrl("file://" + str(path))

    def toString(self):
        return self.url


class QDesktopServices:
    opened: list = []

    @staticmethod
    def openUrl(url):
        QDesktopServices.opened.append(url.toString())
        return True


class QDir:
    def mkpath(self, path):
        os.makedirs(path, exist_ok=True)
        return True


class QFile:
    def __init__(self, path):
        self.path = str(path)

    def remove(self):
        try:
            os.remove(self.path)
            return True
        except OSError:
            return False


class QWidget(QObject):
    """Widget classes exist only as names: Slicer's parameterNodeWrapper uses them
    in annotations and isinstance checks of its GUI connectors, which need a
    panel (not built here)."""


class QColor:
    def __init__(self, *args):
        self.args = args


# names of widget classes (see QWidget)
QLineEdit = QTextEdit = QPushButton = QLabel = QComboBox = QCheckBox = QSpinBox = QSlider = QDoubleSpinBox = \
    type("QWidgetName", (QWidget,), {})
QFormLayout = QVBoxLayout = QHBoxLayout = type("QLayoutName", (QObject,), {})
