"""Stand-in for PythonQt's ``ctk`` module.

Slicer's ScriptedLoadableModule, parameterNodeWrapper and SampleData import
``ctk`` at the top but use its widgets only when a panel is built, which
does not happen here (the Logic and the self-test run without a GUI), so the
module holds only names (below): a call that reaches a widget fails loudly.
"""

from . import qt_standin as _qt

# Names only: Slicer's parameterNodeWrapper uses these in annotations and
# isinstance checks of its GUI connectors, which need a panel (not built here).
ctkDirectoryButton = ctkColorPickerButton = ctkCheckablePushButton = ctkSliderWidget = \
    ctkRangeWidget = ctkDoubleSlider = ctkDoubleRangeSlider = ctkComboBox = ctkDoubleSpinBox = \
    ctkCollapsibleButton = ctkCheckBox = type("ctkWidgetName", (_qt.QWidget,), {})


class ctkPathLineEdit(_qt.QWidget):
    """The path edit's ``Filter`` flags, with the values of CTK's ctkPathLineEdit.h:
    the panel chooses between a file and a folder dialog with them."""

    Dirs, Files, Drives, NoSymLinks = 0x001, 0x002, 0x004, 0x008
    Readable, Writable, Executable = 0x010, 0x020, 0x040
