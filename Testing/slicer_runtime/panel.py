"""Stand-in for the module panel's widgets, for the widget methods that only
read and set widget state (a run's end, the buttons): one attribute holder per
widget named in the module's .ui file, so a renamed widget fails here too.

Building the real panel needs Qt (Designer's loader, CTK and MRML widgets,
parameterNodeWrapper's GUI connectors): that part runs only in Slicer."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace


class WidgetStandIn:
    def __init__(self, name, className):
        self.objectName, self.className = name, className
        self.text, self.toolTip, self.enabled, self.visible, self.checked = "", "", True, True, False
        self.value, self.currentPath, self.lines, self.items = 0, "", [], []

    def setEnabled(self, value):
        self.enabled = bool(value)

    def setText(self, text):
        self.text = text

    def appendPlainText(self, text):
        self.lines.append(text)

    def clear(self):
        self.lines = []

    # combo boxes: items are (text, data)
    def addItem(self, text, data=None):
        self.items.append((text, data))

    def findData(self, data):
        return next((i for i, item in enumerate(self.items) if item[1] == data), -1)

    def setCurrentIndex(self, index):
        self.value = index

    def setItemText(self, index, text):
        self.items[index] = (text, self.items[index][1])


def panel_from_ui(ui_file: str | Path) -> SimpleNamespace:
    root = ET.parse(ui_file).getroot()
    widgets = {w.get("name"): WidgetStandIn(w.get("name"), w.get("class")) for w in root.iter("widget")}
    return SimpleNamespace(**widgets)
