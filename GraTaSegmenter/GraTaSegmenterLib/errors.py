"""Errors the engine raises for bad input.

Every error a user can cause (a wrong file, a wrong image, a wrong option) is
one of these, with a message that says what is wrong *and what to do*. The
command line turns them into one line on stderr and a non-zero exit code, the
Slicer module into one message box; anything else is a bug.
"""


class GraTaError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class InputError(GraTaError, ValueError):
    """The image or batch given to the engine cannot be used as it is."""


class ModelFileError(GraTaError, ValueError):
    """A model file cannot be loaded (not a model, tampered, or incompatible)."""


class ConfigurationError(GraTaError, ValueError):
    """An option or a combination of options is not supported."""


class OutOfMemory(GraTaError, MemoryError):
    """The device ran out of memory; the message suggests what to change."""


def oom_advice(device: str, doing: str) -> str:
    """What to do when ``device`` ("cpu", "cuda", "mps") ran out of memory while ``doing``:
    on an accelerator a smaller batch or the CPU; on the CPU neither would help."""
    if device == "cpu":
        return (f"out of memory on the CPU while {doing}; close other programs, or downsample the image "
                f"(fewer pixels or voxels) before segmenting it.")
    shown = device.upper()
    return (f"out of memory on {shown} while {doing}. Use a smaller batch (fewer slices at once), "
            f"or run on the CPU (--device cpu), or close other programs using the {shown}.")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of every torch backend. Never imports torch: when the
    error came from a half-finished import (a signal during start-up), importing it again fails."""
    import sys

    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if isinstance(oom, type) and isinstance(exc, oom):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)
